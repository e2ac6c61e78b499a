"""Tiled detection: small faces in wide frames, no duplicates across tile borders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.detect import Detector, detect_tiled, tile_rects
from edge.vision.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]


def test_tiles_cover_the_frame_with_overlap() -> None:
    rects = tile_rects(1280, 720, 2, 2, 0.25)
    assert len(rects) == 4
    assert rects[0][:2] == (0, 0) and rects[-1][2:] == (1280, 720)
    (ax1, _, ax2, _), (bx1, _, _, _) = rects[0], rects[1]
    assert bx1 < ax2 and (ax2 - bx1) == pytest.approx(0.25 * (ax2 - ax1), abs=2)
    with pytest.raises(ValueError):
        tile_rects(100, 100, 0, 1)


@pytest.fixture(scope="module")
def detector() -> Detector:
    manifest = Manifest.load(ROOT / "models")
    return Detector(manifest.verify("blazeface_full_float32"))


def face_image() -> np.ndarray:
    """The demo actor's face (CC-BY, shipped in demo/)."""
    img = cv2.imread(str(ROOT / "demo" / "subjects" / "DEMO-0001" / "frame00.jpg"))
    assert img is not None
    return img


def test_a_small_face_is_found_only_with_tiles(detector: Detector) -> None:
    face = face_image()
    # the face region of the frame, scaled so the face is ~48 px wide in 1280x720
    dets = detector.detect(face)
    assert len(dets) == 1
    x1, y1, x2, y2 = (int(v) for v in dets[0].box)
    crop = face[max(0, y1 - 40):y2 + 40, max(0, x1 - 40):x2 + 40]
    scale = 48 / (x2 - x1)
    small = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((720, 1280, 3), 120, np.uint8)
    canvas[300:300 + small.shape[0], 900:900 + small.shape[1]] = small
    assert detector.detect(canvas) == [], "the full frame alone misses a 48 px face"
    found = detect_tiled(detector, canvas, (2, 2))
    assert len(found) == 1
    fx1, fy1, fx2, fy2 = found[0].box
    assert 890 < fx1 < fx2 < 900 + small.shape[1] + 10 and 290 < fy1 < fy2 < 720


def test_a_large_face_across_tile_borders_is_one_detection(detector: Detector) -> None:
    face = face_image()
    big = cv2.resize(face, (1280, 720))  # the face straddles the tile borders
    plain = detector.detect(big)
    tiled = detect_tiled(detector, big, (2, 2))
    assert len(plain) == 1 and len(tiled) == 1
