"""edge/compat.py: what the code takes instead of Python 3.11's additions (Jetson has 3.10)."""

from __future__ import annotations

import datetime as dt

import pytest

from edge.compat import UTC, fromisoformat, tomllib


def test_utc_is_the_utc_timezone() -> None:
    assert UTC is dt.timezone.utc
    assert dt.datetime(2026, 12, 6, tzinfo=UTC).utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-06T10:00:00Z", dt.datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)),
        ("2026-12-06T10:00:00.123Z", dt.datetime(2026, 12, 6, 10, 0, 0, 123000, tzinfo=UTC)),
        ("2026-12-06T11:00:00+01:00", dt.datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)),
    ],
)
def test_fromisoformat_reads_rfc3339_with_z(text: str, expected: dt.datetime) -> None:
    assert fromisoformat(text) == expected


def test_fromisoformat_still_refuses_what_is_not_a_time() -> None:
    with pytest.raises(ValueError):
        fromisoformat("yesterday")


def test_tomllib_reads_offset_datetimes() -> None:
    doc = tomllib.loads('start = 2026-12-06T10:00:00Z\n')
    assert doc["start"] == dt.datetime(2026, 12, 6, 10, tzinfo=UTC)


@pytest.mark.parametrize("digits", ["1", "12", "1234", "12345"])
def test_fromisoformat_takes_any_fraction_length_as_311_does(digits: str) -> None:
    """Python 3.10's own fromisoformat takes 3 or 6 digits only."""
    got = fromisoformat(f"2026-12-06T10:00:00.{digits}Z")
    assert got.microsecond == int(digits.ljust(6, "0"))
    assert fromisoformat(f"2026-12-06T11:00:00.{digits}+01:00") == got
