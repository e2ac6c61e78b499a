"""The officer's alert view without a browser: image display sizes (never enlarged without
saying so), a subject's reference set as the console keeps it, ages, the stale setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.console.alertview import FACE_PX, MIN_FACE_PX, display_size, face
from edge.console.app import ago
from edge.console.refimages import ReferenceBlobError, pack, unpack
from edge.watchlist.references import Reference


@pytest.mark.parametrize(("natural", "shown", "enlarged"), [
    ((320, 320), (320, 320), False),   # large enough: its own pixels
    ((260, 320), (260, 320), False),
    ((256, 256), (256, 256), False),
    ((640, 640), (432, 432), False),   # very large: shown smaller, never below 256
    ((300, 900), (256, 768), False),   # long and thin: the short side stays >= 256
    ((85, 120), (FACE_PX, 407), True),  # the demo's crop: enlarged to compare, and said so
    ((142, 143), (FACE_PX, 290), True),
    ((255, 400), (FACE_PX, 452), True),
])  # fmt: skip
def test_faces_are_shown_at_least_256_px_and_enlarging_is_said(
    natural: tuple[int, int], shown: tuple[int, int], enlarged: bool
) -> None:
    w, h, scale = display_size(natural)
    assert (w, h) == shown and min(w, h) >= MIN_FACE_PX
    assert (scale > 1.005) is enlarged
    f = face("/x.jpg", "Matched face", "Matched face", natural)
    assert f["enlarged"] is enlarged
    assert ("shown enlarged" in f["caption"]) is enlarged
    assert f["caption"].startswith(f"Matched face: {natural[0]} × {natural[1]} px")


def test_an_image_of_unknown_size_is_shown_at_the_face_size() -> None:
    assert display_size(None)[:2] == (FACE_PX, FACE_PX)
    assert face("/x.jpg", "a", "Reference 1 of 1", None)["caption"] == \
        "Reference 1 of 1: pixel size unknown"  # fmt: skip


JPEGS = (b"\xff\xd8first\xff\xd9", b"\xff\xd8second\xff\xd9", b"\xff\xd8third\xff\xd9")


def test_a_reference_set_round_trips_and_a_bare_jpeg_still_reads() -> None:
    ref = Reference("S-1", "suspect", JPEGS[0], JPEGS[1:], "custody image", "2024-05-01")
    got = unpack(pack(ref))
    assert (got.images, got.source, got.capture_date) == (JPEGS, "custody image", "2024-05-01")
    assert unpack(JPEGS[0]).images == (JPEGS[0],)  # sealed before sets existed
    assert got.sizes() == [None, None, None]  # no frame header in these stand-ins


@pytest.mark.parametrize("blob", [
    b"PNG....", b"LFR-REFS/1\n{not json}\n", b"LFR-REFS/1\n" + b"x" * 5000,
    b'LFR-REFS/1\n{"lengths":[5]}\nabc',  # lengths do not add up
    b'LFR-REFS/1\n{"lengths":[0]}\n',
    b'LFR-REFS/1\n{"lengths":' + str([1] * 17).encode() + b"}\n" + b"x" * 17,
])  # fmt: skip
def test_a_garbled_reference_set_is_refused(blob: bytes) -> None:
    with pytest.raises(ReferenceBlobError):
        unpack(blob)


def test_ages_read_as_the_page_writes_them() -> None:
    assert [ago(s) for s in (0, 42.9, 119, 120, 3599, 7200, 200_000, -5, "x")] == [
        "0 s ago", "42 s ago", "119 s ago", "2 min ago", "59 min ago", "2 h ago",
        "2 days ago", "0 s ago", "–"]


def test_alert_stale_s_is_configured_and_bounded(tmp_path: Path) -> None:
    from edge.console.config import from_dict
    from edge.errors import ConfigError

    key = tmp_path / "k"
    key.write_text("x")
    key.chmod(0o600)  # a secret: the console refuses it wider
    base = {"key_file": str(key), "signing_key": str(key), "device_keys": str(tmp_path)}
    assert from_dict({"console": base}, tmp_path).alert_stale_s == 120
    assert from_dict({"console": {**base, "alert_stale_s": 45}}, tmp_path).alert_stale_s == 45
    for bad in (0, 5, 100_000, "2 min", True):
        with pytest.raises(ConfigError, match=r"alert_stale_s: must be an integer in 10\.\.86400"):
            from_dict({"console": {**base, "alert_stale_s": bad}}, tmp_path)
