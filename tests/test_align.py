"""Alignment: the dlib5 chip must equal dlib.get_face_chip; ArcFace template warp."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge.vision.align import (
    ARCFACE5_TEMPLATE,
    Aligner,
    arcface_chip,
    dlib_face_chip,
    face_chip_details,
    pyramid_down2,
    umeyama,
)
from edge.vision.families import ARCFACE112, DLIB150

dlib = pytest.importorskip("dlib")
frm = pytest.importorskip("face_recognition_models")


@pytest.fixture(scope="module")
def dlib_models() -> tuple[object, object, object]:
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    return det, sp, rec


def _faces(photos_dir: Path, lfw: Path | None) -> list[Path]:
    files = [
        photos_dir / "face_recognition_tests/obama.jpg",  # large face: pyramid level used
        photos_dir / "face_recognition_tests/obama_partial_face.jpg",  # crop leaves the image
        photos_dir / "dlib_faces/Tom_Cruise_avp_2014_4.jpg",
        photos_dir / "dlib_faces/2008_002506.jpg",
        photos_dir / "dlib_faces/2007_007763.jpg",  # small faces
    ]
    if lfw is not None:
        files += sorted(lfw.glob("*/*.jpg"))[::800][:8]
    return files


def test_umeyama_recovers_a_similarity() -> None:
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 100, size=(5, 2))
    ang, s, t = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    dst = src @ (s * rot).T + t
    m, tt = umeyama(src, dst)
    assert np.allclose(m, s * rot) and np.allclose(tt, t)


def test_chip_details_scale_and_angle() -> None:
    from edge.vision.align import DLIB5_TEMPLATE

    chip_pts = (0.25 + DLIB5_TEMPLATE) / 1.5 * 150
    det = face_chip_details(chip_pts * 2.0 + 10.0)  # image = 2x chip + shift, no rotation
    assert det.angle == pytest.approx(0.0, abs=1e-9)
    assert det.right - det.left == pytest.approx(150 * 2.0 - 1.0)  # centered_drect's -1
    assert (det.left + det.right) / 2 == pytest.approx(75 * 2.0 + 10.0)


def test_pyramid_down_matches_dlib(photos_dir: Path) -> None:
    img = dlib.load_rgb_image(str(photos_dir / "face_recognition_tests/obama.jpg"))
    ref = np.asarray(dlib.pyramid_down(2)(img))
    assert np.array_equal(pyramid_down2(img), ref)


def test_dlib5_chip_equals_dlib_get_face_chip(
    dlib_models: tuple[object, object, object], photos_dir: Path, lfw_dir: Path
) -> None:
    det, sp, rec = dlib_models
    n = 0
    max_diff = 0
    desc_diff = []
    for f in _faces(photos_dir, lfw_dir):
        img = dlib.load_rgb_image(str(f))
        for r in det(img, 1)[:2]:  # type: ignore[operator]
            shape = sp(img, r)  # type: ignore[operator]
            ref = dlib.get_face_chip(img, shape, 150, 0.25)
            pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            mine = dlib_face_chip(img, pts, 150, 0.25)
            assert mine.shape == (150, 150, 3) and mine.dtype == np.uint8
            max_diff = max(max_diff, int(np.abs(mine.astype(int) - ref.astype(int)).max()))
            if n < 6:
                a = np.array(rec.compute_face_descriptor(mine))  # type: ignore[attr-defined]
                b = np.array(rec.compute_face_descriptor(ref))  # type: ignore[attr-defined]
                desc_diff.append(float(np.linalg.norm(a - b)))
            n += 1
    assert n >= 10
    assert max_diff <= 1  # measured: 0 (bit-exact), including pyramid and border cases
    assert max(desc_diff) < 0.01


def test_aligner_takes_bgr_and_returns_rgb_chip(
    photos_dir: Path, dlib_models: tuple[object, object, object]
) -> None:
    det, sp, _ = dlib_models
    img = dlib.load_rgb_image(str(photos_dir / "face_recognition_tests/obama.jpg"))
    shape = sp(img, det(img, 1)[0])  # type: ignore[operator]
    pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
    chip = Aligner(DLIB150).align(np.ascontiguousarray(img[:, :, ::-1]), pts)
    assert np.array_equal(chip.rgb, dlib.get_face_chip(img, shape, 150, 0.25))
    assert np.array_equal(chip.landmarks, pts)


def test_arcface_chip_puts_points_on_the_template() -> None:
    # Draw five dots, warp them with a known similarity, align back: dots land on the template.
    ang, s, t = -0.2, 2.5, np.array([40.0, 30.0])
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    pts = ARCFACE5_TEMPLATE @ (s * rot).T + t
    img = np.zeros((400, 400, 3), dtype=np.uint8)
    for x, y in np.rint(pts).astype(int):
        img[y - 3 : y + 4, x - 3 : x + 4] = 255
    chip = arcface_chip(img, pts.astype(np.float32))
    assert chip.shape == (112, 112, 3)
    for x, y in np.rint(ARCFACE5_TEMPLATE).astype(int):
        assert chip[y, x].min() > 200
    c = Aligner(ARCFACE112).align(img, pts.astype(np.float32))
    assert c.rgb.shape == (112, 112, 3)


def test_device_landmarks_approximate_dlibs_predictor(
    models_dir: Path, photos_dir: Path, lfw_dir: Path, dlib_models: tuple[object, object, object]
) -> None:
    """Both landmark options land near dlib's 5-point predictor (inter-ocular units)."""
    import cv2

    from edge.errors import ModelError
    from edge.vision.detect import Detector
    from edge.vision.landmarks import BlazeFaceLandmarker, MeshLandmarker
    from edge.vision.manifest import Manifest

    if not (models_dir / "manifest.json").is_file():
        pytest.skip("models/manifest.json not built")
    m = Manifest.load(models_dir)
    try:
        det = Detector(
            m.verify(m.find("detector", family="blazeface_full", precision="float32")), threads=1
        )
        mesh = MeshLandmarker(m.verify(m.find("landmarks")), threads=1)
    except ModelError as exc:
        pytest.skip(f"models incomplete: {exc}")
    blaze = BlazeFaceLandmarker()
    hog, sp, _ = dlib_models
    errs: dict[str, list[float]] = {"mesh": [], "blazeface": []}
    for f in _faces(photos_dir, lfw_dir):
        bgr = cv2.imread(str(f))
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        dets = det.detect(bgr)
        for r in hog(rgb, 1)[:2]:  # type: ignore[operator]
            c = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
            d = min(
                dets,
                key=lambda d: float(
                    np.hypot(*(np.array(d.box[:2]) / 2 + np.array(d.box[2:]) / 2 - c))
                ),
            )
            ref = np.array([[p.x, p.y] for p in sp(rgb, r).parts()])  # type: ignore[operator]
            iod = np.linalg.norm((ref[0] + ref[1]) / 2 - (ref[2] + ref[3]) / 2)
            for name, lm in (("mesh", mesh), ("blazeface", blaze)):
                pts = lm.points(bgr, d, "dlib5")
                assert pts.shape == (5, 2) and pts.dtype == np.float32
                errs[name].append(float(np.linalg.norm(pts - ref, axis=1).mean() / iod))
            a5 = mesh.points(bgr, d, "arcface5")
            assert a5[0, 0] < a5[1, 0] and a5[3, 0] < a5[4, 0]  # left/right order
            assert a5[:2, 1].max() < a5[2, 1] < a5[3:, 1].min()  # eyes, nose, mouth
    assert len(errs["mesh"]) >= 10
    assert float(np.median(errs["mesh"])) < 0.08  # held-out fit: 0.035 mean
    assert float(np.median(errs["blazeface"])) < 0.10  # held-out fit: 0.054 mean
