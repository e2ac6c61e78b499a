"""What differs between the Pythons the appliance runs on, in one place.

Jetson Orin boards run JetPack 6 (Ubuntu 22.04) with Python 3.10; Raspberry Pi OS
bookworm and the control room have 3.11 or newer. The code is written for 3.10 and
takes from here the three things 3.11 added that it uses: ``UTC``, ``tomllib`` (the
``tomli`` backport on 3.10) and an RFC 3339 reader that accepts a trailing ``Z``
(``datetime.fromisoformat`` learnt that only in 3.11).
"""

from __future__ import annotations

import datetime as _dt
import re
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

__all__ = ["UTC", "fromisoformat", "tomllib"]

UTC = _dt.timezone.utc


_FRACTION = re.compile(r"(T\d{2}:\d{2}:\d{2})\.(\d{1,6})(?=[+-]\d{2}:\d{2}$|$)")


def fromisoformat(text: str) -> _dt.datetime:
    """``datetime.fromisoformat`` as Python 3.11 reads it for RFC 3339 times: ``Z`` is UTC,
    and a fraction of any length up to 6 digits (3.10 takes exactly 3 or 6)."""
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = _FRACTION.sub(lambda m: f"{m.group(1)}.{m.group(2).ljust(6, '0')}", text, count=1)
    return _dt.datetime.fromisoformat(text)
