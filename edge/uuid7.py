"""UUIDv7 (RFC 9562, section 5.7) for alert ids: time-ordered, random, unique.

Python 3.11's :mod:`uuid` has no ``uuid7`` (it arrives in 3.14), so this is a
small generator. Layout (big-endian, 128 bits)::

    unix_ts_ms (48) | ver=0b0111 (4) | rand_a (12) | var=0b10 (2) | rand_b (62)

``rand_a``/``rand_b`` together are treated as one 74-bit random field that is
*incremented* when two ids fall in the same millisecond (RFC 9562 section 6.2,
method 2, "monotonic random"), so ids from one process sort in creation order
even if the clock stalls or steps back a little (a step back of more than
10 s is followed instead, so one bad clock reading cannot pin future ids).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid

_RAND_BITS = 74
_RAND_MASK = (1 << _RAND_BITS) - 1
_BIG_STEP_MS = 10_000
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


def _pack(ms: int, rand74: int) -> uuid.UUID:
    rand_a = rand74 >> 62  # top 12 bits
    rand_b = rand74 & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= rand_a << 64
    value |= 0b10 << 62
    value |= rand_b
    return uuid.UUID(int=value)


def uuid7(now_s: float | None = None) -> uuid.UUID:
    """A new UUIDv7; ``now_s`` (Unix seconds) is for tests, default the wall clock."""
    global _last_ms, _last_rand
    ms = int((time.time() if now_s is None else now_s) * 1000)
    with _lock:
        if ms > _last_ms or ms < _last_ms - _BIG_STEP_MS:
            # Normal case, or the clock was stepped back a lot (NTP): follow the clock.
            rand = secrets.randbits(_RAND_BITS)
        else:
            # Same (or an earlier) millisecond: keep the last timestamp and step
            # the random field forward by a random, non-zero amount.
            ms = _last_ms
            rand = _last_rand + 1 + secrets.randbits(32)
            if rand > _RAND_MASK:  # field exhausted: borrow the next millisecond
                ms += 1
                rand = secrets.randbits(_RAND_BITS)
        _last_ms, _last_rand = ms, rand
    return _pack(ms, rand)


def uuid7_str() -> str:
    """A new UUIDv7 in its canonical lower-case 36-character form."""
    return str(uuid7())


def uuid7_unix_ms(value: uuid.UUID | str) -> int:
    """The Unix millisecond timestamp embedded in a UUIDv7; ValueError if not version 7."""
    u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    if u.version != 7 or u.variant != uuid.RFC_4122:
        raise ValueError(f"not a UUIDv7: {u}")
    return u.int >> 80
