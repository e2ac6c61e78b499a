"""The arming state machine (safeguards 1, 3, 6, 8, 9, 12, 13, 14, 15).

The daemon is **disarmed** unless a valid bundle for this device is loaded and the
current time is inside its window. :class:`DeploymentManager` owns that decision:

- :meth:`~DeploymentManager.load` verifies and decrypts a bundle
  (:func:`edge.watchlist.bundle.open_bundle`) and arms; every refusal leaves it disarmed
  with one log line, a status reason and an
  audit entry. A bundle whose window has not opened yet is kept pending and armed by
  :meth:`~DeploymentManager.tick` when it opens; one whose window has already ended is
  shredded.
- :meth:`~DeploymentManager.tick` disarms at the end of the window;
  :meth:`~DeploymentManager.handle_command` takes signed ``end_deployment`` and
  ``legal_hold`` commands (:mod:`edge.watchlist.signed_commands`).
- Ending a deployment zeroes the decrypted watchlist matrix in place, overwrites and
  unlinks the bundle file and destroys the deployment key it was wrapped to (held only in
  RAM, :mod:`edge.watchlist.deployment_keys`), audits each step and returns the
  end-of-deployment summary. With the key gone, no copy of the bundle (its blocks left on
  flash, a replaced bundle, the controller's copy) can be decrypted: the crypto-shred.
- A bundle delivered to ``<bundle>.new`` replaces the current one only once it is accepted,
  and only after the old deployment has ended (old file shredded, old key destroyed,
  audited ``bundle_replaced``).

Limits, stated plainly: Python cannot promise that no other copy of a decrypted byte
remains in freed memory, and on flash storage an overwrite may not reach the original
blocks; the bundle is only ever stored encrypted, under a key that lived only in RAM and
is destroyed at the end.

The last accepted sequence number and the ids of ended bundles are kept in
``<state_dir>/deployment-state.json``, replaced atomically. A disk that refuses the write
never stops the daemon: the state stays in memory, :attr:`DeploymentManager.state_error`
says so (``status``), and :meth:`~DeploymentManager.tick` writes it once the disk takes it.

Adjudications (:meth:`~DeploymentManager.handle_adjudication`) must be signed by a trusted
control-room key (:mod:`edge.watchlist.adjudication`), name an alert this deployment
issued (:meth:`~DeploymentManager.note_alert`), and are recorded once per alert id and
decision; every refusal is audited with its reason, never with the payload.

The state machine is one class under one lock, written in one module per stage:

- :mod:`~edge.watchlist.deployment_status`: the status and the internal records;
- :mod:`~edge.watchlist.deployment_files`: the state file, bounded bundle reads, shredding;
- :mod:`~edge.watchlist.deployment_core`: the shared state, its persistence, what the
  daemon reads;
- :mod:`~edge.watchlist.deployment_end`: every end of a deployment (wipe, shred, destroy
  the key, persist, audit, summarise, in that order) and the summary;
- :mod:`~edge.watchlist.deployment_load`: loading, arming, staged replacement, the window;
- :mod:`~edge.watchlist.deployment_commands`: signed commands and adjudications.

This module puts them together and keeps every name importable from here. The parts
without the manager's state are beside it (:mod:`~edge.watchlist.adjudication`,
:mod:`~edge.watchlist.statefile`, :mod:`~edge.watchlist.signed_commands`,
:mod:`~edge.watchlist.deployment_keys`, :mod:`~edge.watchlist.timeguard`).
"""

from __future__ import annotations

from edge.errors import BundleRefused
from edge.recognition.match import Watchlist
from edge.watchlist.adjudication import Adjudication, AdjudicationRefused
from edge.watchlist.bundle import BundleHeader
from edge.watchlist.deployment_commands import (
    COMMANDS_DIR,
    MAX_COMMAND_FILE,
    DeploymentCommands,
)
from edge.watchlist.deployment_core import LEDGER_FILE, log
from edge.watchlist.deployment_files import (
    MAX_BUNDLE_READ,
    STATE_FILE,
    discard,
    fsync_dir,
    header_or_none,
    key_id_of_file,
)
from edge.watchlist.deployment_load import DeploymentLoading
from edge.watchlist.deployment_status import (
    DECISIONS,
    Active,
    Counters,
    DeploymentStatus,
    Opened,
    Refusal,
    iso,
)
from edge.watchlist.signed_commands import CommandRefused
from edge.watchlist.statefile import shred_file, write_atomic

# What callers import from here: the manager, its constants and types, and what its
# methods raise and return.
__all__ = [
    "COMMANDS_DIR",
    "DECISIONS",
    "LEDGER_FILE",
    "MAX_BUNDLE_READ",
    "MAX_COMMAND_FILE",
    "STATE_FILE",
    "Adjudication",
    "AdjudicationRefused",
    "BundleHeader",
    "BundleRefused",
    "CommandRefused",
    "Counters",
    "DeploymentManager",
    "DeploymentStatus",
    "Watchlist",
    "log",
    "shred_file",
    "write_atomic",
]

# The names these had when they were defined here.
_Active, _Refusal, _Opened = Active, Refusal, Opened
_header_or_none, _key_id_of_file, _discard = header_or_none, key_id_of_file, discard
_fsync_dir, _iso = fsync_dir, iso


class DeploymentManager(DeploymentCommands, DeploymentLoading):
    """Decides whether the device is armed, and ends deployments cleanly.

    The daemon increments :attr:`counters` (frames, faces processed, tracks, alerts)
    while armed; they are reset at each arming and reported in the summary.
    """
