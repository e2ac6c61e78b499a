"""Strict, bounded JSON for everything that arrives from the network (one place).

:func:`loads` is the only parser for untrusted JSON (MQTT ``commands`` and
``adjudications`` on the device, alerts and status in ``edge alerts``): it refuses,
with :class:`JSONRefused` (a ``ValueError``), anything larger than ``max_bytes``
*before* decoding, anything that is not UTF-8, duplicate keys, ``NaN``/``Infinity``
(and numbers that overflow to infinity), integers longer than 100 digits, and
nesting deeper than ``max_depth``. Deep nesting is caught both ways: the C decoder's
``RecursionError`` (``b"[" * 30000``) is turned into a refusal, and the decoded value's
depth is measured iteratively, so nothing recursive runs on attacker input.

It never raises anything but :class:`JSONRefused` for ``bytes`` input.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

DEFAULT_MAX_DEPTH: Final = 8
MAX_INT_DIGITS: Final = 100


class JSONRefused(ValueError):  # noqa: N818 (a refusal, like BundleRefused)
    """Untrusted JSON was refused; the message says why in one short line."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise JSONRefused("duplicate key")
        out[k] = v
    return out


def _constant(name: str) -> Any:
    raise JSONRefused(f"{name} is not allowed")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRefused("a number overflows")
    return value


def _int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise JSONRefused("an integer is too long")
    return int(text)


def depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0, ``[]`` is 1), iteratively."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        d += 1
        deepest = max(deepest, d)
        stack.extend((c, d) for c in children)
    return deepest


def loads(data: bytes, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse untrusted JSON ``data`` within the limits; raises :class:`JSONRefused`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise JSONRefused("not bytes")
    if len(data) > max_bytes:
        raise JSONRefused(f"larger than {max_bytes} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise JSONRefused("not UTF-8") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
        )
    except JSONRefused:
        raise
    except RecursionError:
        raise JSONRefused(f"nested deeper than {max_depth}") from None
    except json.JSONDecodeError as exc:
        raise JSONRefused(f"not JSON: {exc.msg} at {exc.pos}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise JSONRefused(f"not JSON ({type(exc).__name__})") from None
    if depth(value) > max_depth:
        raise JSONRefused(f"nested deeper than {max_depth}")
    return value
