"""Embedders from the manifest against dlib's own descriptors; the face engine end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ModelError
from edge.vision.embed import Embedder
from edge.vision.faces import FaceEngine
from edge.vision.manifest import Manifest

dlib = pytest.importorskip("dlib")
frm = pytest.importorskip("face_recognition_models")


@pytest.fixture(scope="module")
def manifest(models_dir: Path) -> Manifest:
    if not (models_dir / "manifest.json").is_file():
        pytest.skip("models/manifest.json not built")
    return Manifest.load(models_dir)


def _embedder(manifest: Manifest, precision: str) -> Embedder:
    try:
        name = manifest.find("embedder", family="dlib150", precision=precision)
    except ModelError:
        pytest.skip(f"no {precision} dlib150 embedder in the manifest")
    # the model itself (its fidelity to dlib), not the flip-averaged pipeline
    return Embedder.from_manifest(manifest, name, threads=1, flip=False)


@pytest.fixture(scope="module")
def dlib_chips(photos_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(dlib chip, dlib descriptor) for a few faces of the photos set."""
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    out = []
    for rel in (
        "face_recognition_tests/obama.jpg",
        "face_recognition_tests/biden.jpg",
        "knn_examples/train/kit_harington/john1.jpeg",
        "dlib_faces/2008_002506.jpg",
    ):
        img = dlib.load_rgb_image(str(photos_dir / rel))
        for r in det(img, 1)[:2]:
            chip = dlib.get_face_chip(img, sp(img, r), 150, 0.25)
            out.append((chip, np.array(rec.compute_face_descriptor(chip), dtype=np.float32)))
    return out


def test_float32_embedder_reproduces_dlib(manifest: Manifest, dlib_chips: list) -> None:
    emb = _embedder(manifest, "float32")
    assert emb.family.name == "dlib150" and emb.family.metric == "euclidean"
    got = emb.embed([c for c, _ in dlib_chips])
    ref = np.stack([d for _, d in dlib_chips])
    assert got.shape == (len(dlib_chips), 128) and got.dtype == np.float32
    assert float(np.abs(got - ref).max()) < 1e-4


def test_int8_embedder_close_to_dlib(manifest: Manifest, dlib_chips: list) -> None:
    emb = _embedder(manifest, "int8")
    got = emb.embed([c for c, _ in dlib_chips])
    ref = np.stack([d for _, d in dlib_chips])
    dist = np.linalg.norm(got - ref, axis=1)
    assert float(dist.max()) < 0.1  # measured ~0.05 against dlib's 0.6 distance threshold
    # quantisation must not reorder who is closest to whom
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=2)
    d_got = np.linalg.norm(got[:, None] - got[None], axis=2)
    np.fill_diagonal(d_ref, np.inf)
    np.fill_diagonal(d_got, np.inf)
    assert np.array_equal(d_ref.argmin(axis=1), d_got.argmin(axis=1))


def test_embedder_rejects_wrong_chip(manifest: Manifest) -> None:
    emb = _embedder(manifest, "int8")
    with pytest.raises(ValueError, match="150, 150, 3"):
        emb.embed([np.zeros((112, 112, 3), dtype=np.uint8)])
    assert emb.embed([]).shape == (0, 128)


def _engine(models_dir: Path, **kw: str) -> FaceEngine:
    try:
        return FaceEngine.from_models(models_dir, threads=1, **kw)  # type: ignore[arg-type]
    except ModelError as exc:
        pytest.skip(f"models incomplete: {exc}")


@pytest.mark.parametrize(
    ("embedder", "detector", "landmarks"),
    [("dlib_resnet_v1", "retinaface", "mesh"), ("dlib_resnet_v1", "retinaface", "retina"),
     ("dlib_resnet_v1", "blazeface_full", "mesh"),
     ("dlib_resnet_v1", "blazeface_full", "blazeface"),
     ("sface_2021dec", "retinaface", "retina"), ("sface_2021dec", "retinaface", "mesh"),
     ("sface_2021dec", "blazeface_full", "mesh")],
)
def test_face_engine_same_and_different_people(
    models_dir: Path, photos_dir: Path, embedder: str, detector: str, landmarks: str
) -> None:
    engine = _engine(models_dir, embedder=embedder, detector=detector, landmarks=landmarks)
    size = engine.family.input_size

    def one(rel: str) -> np.ndarray:
        faces = engine.analyse(cv2.imread(str(photos_dir / rel)))
        assert len(faces) == 1
        assert faces[0].chip.rgb.shape == (size, size, 3)
        return engine.embed([faces[0].chip])[0]

    obama1 = one("knn_examples/train/obama/obama.jpg")
    obama2 = one("knn_examples/train/obama/obama2.jpg")
    biden = one("knn_examples/train/biden/biden.jpg")
    thr = engine.family.threshold
    assert engine.score(obama1, obama2) > thr
    assert engine.score(obama1, biden) < thr
    assert engine.score(obama1, obama2) > engine.score(obama1, biden) + 0.1


def test_face_engine_unknown_names(models_dir: Path) -> None:
    if not (models_dir / "manifest.json").is_file():
        pytest.skip("models/manifest.json not built")
    with pytest.raises(ModelError, match="unknown landmarks"):
        FaceEngine.from_models(models_dir, landmarks="nose", threads=1)
    with pytest.raises(ModelError, match="need a BlazeFace detector"):
        FaceEngine.from_models(models_dir, detector="retinaface", landmarks="blazeface")
    with pytest.raises(ModelError, match="need a RetinaFace detector"):
        FaceEngine.from_models(models_dir, detector="blazeface_full", landmarks="retina")
    with pytest.raises(ModelError, match="multiples of 32"):
        FaceEngine.from_models(models_dir, detector_input=(640, 360))
    with pytest.raises(ModelError):
        FaceEngine.from_models(models_dir, embedder="no_such_embedder", threads=1)
