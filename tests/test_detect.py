"""BlazeFace detection: anchors, NMS, and faces found where expected on real photos/clips."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.detect import FULL_RANGE, SHORT_RANGE, Detector, non_max_suppression, ssd_anchors
from edge.vision.manifest import Manifest


def _detector(models_dir: Path, variant: str, precision: str = "float32") -> Detector:
    if not (models_dir / "manifest.json").is_file():
        pytest.skip("models/manifest.json not built")
    m = Manifest.load(models_dir)
    for name in m.names:
        e = m.entry(name)
        if e.role == "detector" and variant in name and e.precision == precision:
            return Detector(m.verify(name), threads=1)
    pytest.skip(f"no {precision} {variant}-range detector in the manifest")


@pytest.fixture(scope="module")
def full(models_dir: Path) -> Detector:
    return _detector(models_dir, "full")


@pytest.fixture(scope="module", params=["float32", "int8"])
def full_any(models_dir: Path, request: pytest.FixtureRequest) -> Detector:
    return _detector(models_dir, "full", request.param)


@pytest.fixture(scope="module")
def short(models_dir: Path) -> Detector:
    return _detector(models_dir, "short")


def test_anchor_layouts_match_mediapipe() -> None:
    s = ssd_anchors(SHORT_RANGE.anchors)
    f = ssd_anchors(FULL_RANGE.anchors)
    assert s.shape == (896, 2) and f.shape == (2304, 2)
    # short range: 16x16 cells x 2 anchors, then 8x8 cells x 6 anchors
    assert np.allclose(s[0], s[1]) and np.allclose(s[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(s[2], [1.5 / 16, 0.5 / 16])
    assert np.allclose(s[512], [0.5 / 8, 0.5 / 8]) and np.allclose(s[512:518], s[512])
    assert np.allclose(s[-1], [7.5 / 8, 7.5 / 8])
    # full range: one anchor per cell of a 48x48 grid, row-major
    assert np.allclose(f[0], [0.5 / 48, 0.5 / 48]) and np.allclose(f[1], [1.5 / 48, 0.5 / 48])
    assert np.allclose(f[48], [0.5 / 48, 1.5 / 48])


def test_weighted_nms_merges_and_plain_nms_drops() -> None:
    boxes = np.array(
        [[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [5.0, 5.0, 6.0, 6.0]], dtype=np.float32
    )
    kps = np.zeros((3, 6, 2), dtype=np.float32)
    kps[1] += 1.0
    scores = np.array([0.9, 0.6, 0.8], dtype=np.float32)
    w = non_max_suppression(boxes, kps, scores, 0.3, "weighted")
    assert len(w) == 2
    box, kp, sc = w[0]
    assert sc == pytest.approx(0.9)
    assert box[0] == pytest.approx(0.6 * 0.1 / 1.5)  # score-weighted mean
    assert kp[0, 0] == pytest.approx(0.6 / 1.5)
    p = non_max_suppression(boxes, kps, scores, 0.3, "plain")
    assert len(p) == 2 and p[0][0][0] == 0.0 and p[1][2] == pytest.approx(0.8)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize(
    ("photo", "n"),
    [
        ("dlib_faces/2008_002506.jpg", 3),
        ("dlib_faces/2008_001322.jpg", 3),
        ("dlib_faces/2009_004587.jpg", 2),
        ("dlib_faces/2008_004176.jpg", 7),
        ("face_recognition_tests/obama.jpg", 1),
        ("knn_examples/test/kit_with_rose.jpg", 2),
        ("dlib_faces/dogs.jpg", 0),
    ],
)
def test_full_range_finds_the_faces_dlib_finds(
    full_any: Detector, photos_dir: Path, photo: str, n: int
) -> None:
    import dlib

    img = cv2.imread(str(photos_dir / photo))
    dets = full_any.detect(img)
    assert len(dets) == n
    hog = dlib.get_frontal_face_detector()(np.ascontiguousarray(img[:, :, ::-1]), 1)
    for r in hog:
        box = (r.left(), r.top(), r.right(), r.bottom())
        assert max(_iou(box, d.box) for d in dets) > 0.5
    for d in dets:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
        eyes = d.keypoints[:2]
        assert np.all((eyes[:, 0] > x1) & (eyes[:, 0] < x2) & (eyes[:, 1] > y1) & (eyes[:, 1] < y2))
        assert eyes[0, 0] < eyes[1, 0]  # subject's right eye is on the image's left
        assert eyes[:, 1].max() < d.keypoints[3, 1]  # eyes above the mouth
        assert d.keypoints.shape == (6, 2) and d.keypoints.dtype == np.float32


def test_detections_follow_the_image_scale(full: Detector, photos_dir: Path) -> None:
    img = cv2.imread(str(photos_dir / "dlib_faces/2008_002506.jpg"))
    big = cv2.resize(img, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    padded = cv2.copyMakeBorder(
        img, 0, 200, 0, 0, cv2.BORDER_CONSTANT, value=0
    )  # letterbox changes
    a = sorted(full.detect(img), key=lambda d: d.box[0])
    b = sorted(full.detect(big), key=lambda d: d.box[0])
    c = sorted(full.detect(padded), key=lambda d: d.box[0])
    assert len(a) == len(b) == len(c) == 3
    for da, db, dc in zip(a, b, c, strict=True):
        assert _iou(tuple(2 * v for v in da.box), db.box) > 0.8
        assert _iou(da.box, dc.box) > 0.7


def test_short_range_on_close_faces(short: Detector, photos_dir: Path) -> None:
    img = cv2.imread(str(photos_dir / "face_recognition_tests/obama.jpg"))
    dets = short.detect(img)
    assert len(dets) == 1 and dets[0].width > 200


def test_clips_faces_where_expected(full: Detector, clips_dir: Path) -> None:
    def counts(name: str, frames: int = 40) -> list[int]:
        cap = cv2.VideoCapture(str(clips_dir / name))
        out = []
        try:
            for i in range(frames):
                ok, frame = cap.read()
                if not ok:
                    break
                if i % 5 == 0:
                    out.append(len(full.detect(frame)))
        finally:
            cap.release()
        return out

    two = counts("intel_head-pose-face-detection-female-and-male.gif")
    assert two and all(n == 2 for n in two)
    assert max(counts("opencv_vtest.avi")) == 0  # overhead pedestrians: faces too small


def test_rejects_non_images(full: Detector) -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        full.detect(np.zeros((10, 10), dtype=np.uint8))
    assert full.detect(np.zeros((240, 320, 3), dtype=np.uint8)) == []
