"""Each device's audit chain, verified as its entries arrive.

The device's log is :mod:`edge.watchlist.audit`: ``seq`` from 1 without gaps, ``prev_hash``
the previous entry's ``hash`` (64 zeros first), ``hash`` SHA-256 over the canonical entry.
The console keeps, per device, the highest ``seq`` up to which the chain is proven
(:class:`ChainState`) and walks forward over what it has received:

- the next entry links (``seq`` + 1, ``prev_hash`` matches, its hash recomputes, its
  time is not before the previous one): it is verified;
- the next entry is missing but later ones are there: state ``gap`` (entries may still
  arrive: QoS 1 redelivery after a reconnect; the gap closes when they do);
- anything else is a ``break`` and is final: the chain is not trusted past that point.
  A second, different entry for a ``seq`` already stored is a break too.

Every entry reaching the store carries the device's valid signature over its hash
(:func:`edge.console.messages.verify_audit_entry`, before storage): a forger without the
device's key cannot make a gap, a conflict or a break; a break now means the device's own
key signed a history that does not link (e.g. a card restored from an old copy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from edge.watchlist.audit import GENESIS, entry_hash


@dataclass(frozen=True, slots=True)
class ChainState:
    verified_seq: int = 0
    last_hash: str = GENESIS
    last_at: float = 0.0
    state: str = "ok"  # ok | gap | broken
    problem: str | None = None

    @property
    def broken(self) -> bool:
        return self.state == "broken"


@dataclass(frozen=True, slots=True)
class Received:
    """One stored entry: the object as sent and its parsed time."""

    entry: Mapping[str, Any]
    at: float


def _hash_ok(entry: Mapping[str, Any]) -> bool:
    try:
        return entry_hash(entry) == entry.get("hash")
    except (ValueError, TypeError):
        return False


def advance(state: ChainState, later: Mapping[int, Received]) -> tuple[ChainState, list[int]]:
    """Walk from ``state`` over ``later`` (seq -> entry, seqs > verified_seq).

    Returns the new state and the seqs verified by this walk, in order.
    """
    if state.broken:
        return state, []
    verified: list[int] = []
    seq, last_hash, last_at = state.verified_seq, state.last_hash, state.last_at
    while seq + 1 in later:
        got = later[seq + 1]
        entry = got.entry
        where = f"entry {seq + 1}"
        problem = None
        if entry.get("prev_hash") != last_hash:
            problem = f"chain broken at {where}: prev_hash does not match entry {seq}"
        elif not _hash_ok(entry):
            problem = f"chain broken at {where}: its hash does not match (modified)"
        elif got.at < last_at:
            problem = f"chain broken at {where}: time goes backwards"
        if problem is not None:
            return ChainState(seq, last_hash, last_at, "broken", problem), verified
        seq, last_hash, last_at = seq + 1, str(entry["hash"]), got.at
        verified.append(seq)
    ahead = [s for s in later if s > seq]
    if ahead:
        missing_to = min(ahead) - 1
        span = f"{seq + 1}" if missing_to == seq + 1 else f"{seq + 1}..{missing_to}"
        return ChainState(seq, last_hash, last_at, "gap", f"entries {span} not received"), verified
    return replace(state, verified_seq=seq, last_hash=last_hash, last_at=last_at,
                   state="ok", problem=None), verified  # fmt: skip


def conflict(state: ChainState, seq: int) -> ChainState:
    """A second, different entry for ``seq``: the chain is broken there."""
    return replace(state, state="broken",
                   problem=f"chain broken: two different entries with seq {seq}")  # fmt: skip
