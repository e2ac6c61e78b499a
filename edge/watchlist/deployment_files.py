"""The deployment's files on disk (part of :mod:`edge.watchlist.deployment`).

Owns reading and checking ``<state_dir>/deployment-state.json`` (the last accepted
sequence number and bundle id, the ids of ended bundles; written atomically by
:class:`~edge.watchlist.deployment_state.DeploymentState`,
:mod:`edge.watchlist.statefile`), reading a bundle file boundedly, and the helpers that
shred a file without ever raising. No state of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from edge.errors import BundleRefused, UsageError
from edge.watchlist.bundle import BundleHeader, read_header_unverified
from edge.watchlist.deployment_keys import key_id_in
from edge.watchlist.statefile import shred_file

STATE_FILE = "deployment-state.json"
MAX_BUNDLE_READ = 300 << 20


def read_state(path: Path) -> dict[str, Any]:
    """The persisted deployment state, or a fresh one if there is none yet.

    Raises :class:`UsageError` (one line) if the file is unreadable or malformed."""
    try:
        raw = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {"last_sequence": None, "last_bundle_id": None, "ended": []}
    except (OSError, ValueError) as exc:
        raise UsageError(f"deployment state {path} is unreadable: {exc}") from None
    ok = (
        isinstance(raw, dict)
        and (raw.get("last_sequence") is None or type(raw.get("last_sequence")) is int)
        and (raw.get("last_bundle_id") is None or isinstance(raw.get("last_bundle_id"), str))
        and isinstance(raw.get("ended"), list)
    )
    if not ok:
        raise UsageError(f"deployment state {path} is malformed")
    state: dict[str, Any] = raw
    return state


def read_bundle(path: Path) -> bytes:
    """The bytes of a bundle file, at most :data:`MAX_BUNDLE_READ`; raises
    :class:`BundleRefused` (``no_bundle``, ``unreadable``, ``garbled``)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BUNDLE_READ + 1)
    except FileNotFoundError:
        raise BundleRefused("no_bundle", f"no watchlist bundle at {path}") from None
    except OSError as exc:
        msg = f"cannot read bundle {path}: {exc.strerror}"
        raise BundleRefused("unreadable", msg) from None
    if len(data) > MAX_BUNDLE_READ:
        raise BundleRefused("garbled", f"bundle {path} is too large")
    return data


def header_or_none(data: bytes) -> BundleHeader | None:
    """The bundle's header, unverified (for audit fields only), or None."""
    try:
        return read_header_unverified(data)[1]
    except BundleRefused:
        return None


def key_id_of_file(path: Path, device_id: str) -> str | None:
    """The id of the deployment key the bundle at ``path`` is wrapped to, or None."""
    try:
        with path.open("rb") as fh:
            return key_id_in(fh.read(MAX_BUNDLE_READ + 1), device_id)
    except OSError:
        return None


def discard(path: Path) -> bool:
    """Shred ``path`` (True if a file was removed); a symlink or an unwritable file is
    unlinked instead. Never raises."""
    try:
        return shred_file(path)
    except OSError:
        try:
            path.unlink()
        except OSError:
            return False
        return True


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; a failure is ignored."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
