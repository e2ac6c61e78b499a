"""The quality gate, on real face photos (landmarks from dlib) and on plain numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.types import Detection
from edge.vision.quality import NOSE_DEPTH, QualityGate, estimate_yaw, face_sharpness

PHOTOS = [
    "face_recognition_tests/obama.jpg",
    "face_recognition_tests/biden.jpg",
    "knn_examples/test/alex_lacamoire1.jpg",
    "knn_examples/train/kit_harington/john1.jpeg",
    "dlib_faces/Tom_Cruise_avp_2014_4.jpg",
]


@pytest.fixture(scope="module")
def landmarker() -> Any:
    dlib = pytest.importorskip("dlib")
    models = pytest.importorskip("face_recognition_models")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(models.pose_predictor_model_location())

    def find(image: np.ndarray) -> Detection:
        """The largest face as a BlazeFace-style Detection (6 keypoints from dlib's 68)."""
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        rects = detector(rgb, 0)
        assert rects, "dlib found no face"
        rect = max(rects, key=lambda r: r.width() * r.height())
        shape = predictor(rgb, rect)
        p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)
        keypoints = np.stack(
            [
                p[36:42].mean(axis=0),  # subject's right eye (image left)
                p[42:48].mean(axis=0),  # subject's left eye
                p[30],  # nose tip
                p[48:68].mean(axis=0),  # mouth centre
                p[0],  # right ear tragion (jaw start, approximately)
                p[16],  # left ear tragion
            ]
        ).astype(np.float32)
        box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
        return Detection(box=box, keypoints=keypoints, score=0.9)

    return find


@pytest.fixture(scope="module")
def faces(photos_dir: Path, landmarker: Any) -> list[tuple[str, np.ndarray, Detection]]:
    out = []
    for name in PHOTOS:
        image = cv2.imread(str(photos_dir / name), cv2.IMREAD_COLOR)
        assert image is not None, name
        out.append((name, image, landmarker(image)))
    return out


def _scaled(det: Detection, factor: float) -> Detection:
    return Detection(
        box=(det.box[0] * factor, det.box[1] * factor, det.box[2] * factor, det.box[3] * factor),
        keypoints=(det.keypoints * factor).astype(np.float32),
        score=det.score,
    )


# -- real photos -------------------------------------------------------------------


def test_sharp_frontal_photos_pass(faces: list[tuple[str, np.ndarray, Detection]]) -> None:
    gate = QualityGate()
    for name, image, det in faces:
        q = gate.assess(image, det)
        assert q.ok, (name, q)
        assert q.reason == ""
        assert abs(q.yaw) < 0.3, name
        assert q.sharpness >= gate.min_sharpness
        assert 0.0 < q.score <= 1.0


def test_blurred_photos_fail_and_rank_lower(faces: list[tuple[str, np.ndarray, Detection]]) -> None:
    gate = QualityGate()
    for name, image, det in faces:
        sigma = det.width / 20.0  # relative to the face, so the test is scale-free too
        blurred = cv2.GaussianBlur(image, (0, 0), sigma)
        sharp_q, blur_q = gate.assess(image, det), gate.assess(blurred, det)
        assert not blur_q.ok and blur_q.reason == "blurred", (name, blur_q)
        assert blur_q.sharpness < sharp_q.sharpness / 4
        assert blur_q.score < sharp_q.score


def test_sharpness_does_not_depend_on_face_pixels(
    faces: list[tuple[str, np.ndarray, Detection]],
) -> None:
    for name, image, det in faces:
        if det.width < 200:
            continue  # halving must leave more than the 64 px the measure works at
        half = cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        full_s = face_sharpness(image, det.box)
        half_s = face_sharpness(half, _scaled(det, 0.5).box)
        assert 0.5 < half_s / full_s < 2.0, name


def test_small_faces_are_too_small(faces: list[tuple[str, np.ndarray, Detection]]) -> None:
    gate = QualityGate(min_face_px=40)
    _, image, det = faces[0]
    factor = 30.0 / det.width
    small = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    q = gate.assess(small, _scaled(det, factor))
    assert not q.ok and q.reason == "too small"
    assert q.face_px < 40
    assert q.score < gate.assess(image, det).score


def test_turned_keypoints_on_a_real_face_are_profile(
    faces: list[tuple[str, np.ndarray, Detection]],
) -> None:
    gate = QualityGate(max_yaw=0.45)
    _, image, det = faces[0]
    kp = det.keypoints.copy()
    eye_dist = float(np.linalg.norm(kp[1] - kp[0]))
    kp[2] = (kp[0] + kp[1]) / 2 + np.array([NOSE_DEPTH * eye_dist * math.tan(math.radians(60)), 0])
    q = gate.assess(image, Detection(det.box, kp.astype(np.float32), det.score))
    assert not q.ok and q.reason == "profile"
    assert q.yaw == pytest.approx(60 / 90, abs=0.05)


def test_mirrored_face_mirrors_its_yaw(
    faces: list[tuple[str, np.ndarray, Detection]], landmarker: Any
) -> None:
    _, image, det = max(faces, key=lambda f: abs(estimate_yaw(f[2].keypoints)))
    mirrored = landmarker(cv2.flip(image, 1))
    yaw, yaw_m = estimate_yaw(det.keypoints), estimate_yaw(mirrored.keypoints)
    assert yaw_m == pytest.approx(-yaw, abs=0.08)


# -- plain numbers ------------------------------------------------------------------


def _kp(yaw_deg: float, roll_deg: float = 0.0, eye_dist: float = 60.0) -> np.ndarray:
    """Keypoints of a face turned by yaw (nose shifted) and rolled about the eye midpoint."""
    shift = NOSE_DEPTH * eye_dist * math.tan(math.radians(yaw_deg))
    pts = np.array(
        [[-eye_dist / 2, 0], [eye_dist / 2, 0], [shift, 35], [0, 60], [-70, 20], [70, 20]],
        np.float64,
    )
    r = math.radians(roll_deg)
    rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    return (pts @ rot.T + [200, 150]).astype(np.float32)


@pytest.mark.parametrize("yaw_deg", [-75, -45, -20, 0, 10, 30, 60])
@pytest.mark.parametrize("roll_deg", [0, 25, -40])
def test_estimate_yaw_recovers_the_angle_whatever_the_roll(yaw_deg: float, roll_deg: float) -> None:
    assert estimate_yaw(_kp(yaw_deg, roll_deg)) == pytest.approx(yaw_deg / 90, abs=1e-4)


def test_estimate_yaw_degenerate_eyes() -> None:
    kp = np.zeros((6, 2), np.float32)
    assert estimate_yaw(kp) == 0.0
    kp[2] = (5, 0)
    assert estimate_yaw(kp) == 1.0


def test_sharpness_edge_cases() -> None:
    flat = np.full((100, 100, 3), 128, np.uint8)
    assert face_sharpness(flat, (10, 10, 90, 90)) == 0.0
    assert face_sharpness(flat, (500, 500, 600, 600)) == 0.0  # outside the image
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    assert face_sharpness(noise, (-20, -20, 80, 80)) > 1000  # clipped, still measured


def test_score_orders_size_sharpness_pose_and_confidence() -> None:
    gate = QualityGate(min_sharpness=80, ideal_face_px=112)
    base = gate.score(80, 150, 0.1, 0.9)
    assert gate.score(100, 150, 0.1, 0.9) > base
    assert gate.score(80, 200, 0.1, 0.9) > base
    assert gate.score(80, 150, 0.0, 0.9) > base
    assert gate.score(80, 150, 0.1, 0.95) > base
    assert gate.score(500, 1e6, 0.0, 1.0) == 1.0  # saturates: noise cannot win
    assert gate.score(0, 0, 1.0, 0.0) == 0.0


def test_reason_order_and_parameters() -> None:
    gate = QualityGate(min_face_px=40, min_sharpness=80, max_yaw=0.45)
    flat = np.full((200, 200, 3), 128, np.uint8)  # no detail: blurred
    small_profile = Detection((0, 0, 20, 20), _kp(70, eye_dist=10), 0.9)
    assert gate.assess(flat, small_profile).reason == "too small"
    profile = Detection((0, 0, 100, 100), _kp(70), 0.9)
    assert gate.assess(flat, profile).reason == "profile"
    frontal = Detection((0, 0, 100, 100), _kp(0), 0.9)
    assert gate.assess(flat, frontal).reason == "blurred"
    with pytest.raises(ValueError):
        QualityGate(max_yaw=0)
    with pytest.raises(ValueError):
        QualityGate(min_face_px=-1)
