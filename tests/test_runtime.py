"""TFLite runtime wrapper, model manifest and embedder families (real model files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ModelError
from edge.vision.families import BUILTIN, DLIB150, score, similarity_matrix
from edge.vision.manifest import ENV_MODELS_DIR, Manifest, default_models_dir
from edge.vision.runtime import TFLiteModel, load_interpreter, shared_model


@pytest.fixture(scope="module")
def manifest(models_dir: Path) -> Manifest:
    if not (models_dir / "manifest.json").is_file():
        pytest.skip("models/manifest.json not built")
    return Manifest.load(models_dir)


def _first(manifest: Manifest, role: str) -> str:
    for name in manifest.names:
        if manifest.entry(name).role == role:
            return name
    pytest.skip(f"no {role} model in the manifest")


def test_missing_model_is_one_clear_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"missing\.tflite is missing"):
        load_interpreter(tmp_path / "missing.tflite")


def test_corrupt_model_is_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"this is not a flatbuffer" * 100)
    with pytest.raises(ModelError) as exc:
        load_interpreter(bad)
    msg = str(exc.value)
    assert "bad.tflite" in msg and "\n" not in msg


def test_embedder_io_and_quantisation(manifest: Manifest) -> None:
    name = manifest.find("embedder", precision="int8")
    model = TFLiteModel(manifest.verify(name), threads=1)
    spec = model.input
    assert spec.shape == (1, 150, 150, 3)
    x = np.full(spec.shape, 200, dtype=np.uint8)
    if spec.dtype is np.uint8:
        assert model.quantise_input(x) is x  # passthrough, no copy
    # float input is quantised with the tensor's scale / zero point and clipped
    f = np.full(spec.shape, 1e6, dtype=np.float32)
    q = model.quantise_input(f)
    assert q.dtype == spec.dtype and int(q.max()) == int(np.iinfo(q.dtype).max)
    out = model.run(x)
    assert out[0].dtype == np.float32 and out[0].shape == (1, 128)
    assert np.all(np.isfinite(out[0]))
    with pytest.raises(ValueError, match="input shape"):
        model.run(np.zeros((1, 10, 10, 3), dtype=np.uint8))


def test_models_load_once(manifest: Manifest) -> None:
    path = manifest.verify(_first(manifest, "embedder"))
    assert shared_model(path, 1) is shared_model(path, 1)


def test_manifest_verify_and_tamper(manifest: Manifest, tmp_path: Path) -> None:
    name = _first(manifest, "landmarks")
    assert manifest.verify(name).is_file()
    entry = manifest.entry(name)
    copy = tmp_path / "models"
    copy.mkdir()
    shutil.copy(manifest.directory / "manifest.json", copy / "manifest.json")
    data = bytearray((manifest.directory / entry.file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / entry.file).write_bytes(bytes(data))
    tampered = Manifest.load(copy)
    with pytest.raises(ModelError, match=entry.file.replace(".", r"\.") + ".*sha256"):
        tampered.verify(name)
    with pytest.raises(ModelError, match="no model named"):
        manifest.entry("no_such_model")


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"manifest.*missing"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "models": {"x": {}}}))
    with pytest.raises(ModelError, match=r"models\.x\.file"):
        Manifest.load(tmp_path)


def test_models_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_MODELS_DIR, str(tmp_path))
    assert default_models_dir() == tmp_path


def test_family_from_manifest_matches_builtin(manifest: Manifest) -> None:
    from edge.vision.families import EmbedderFamily

    fam = EmbedderFamily.from_spec("dlib150", manifest.family("dlib150"))
    assert fam == BUILTIN["dlib150"]


def test_scores_are_similarities() -> None:
    a = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    b = np.array([0.0, 0.6, 0.0], dtype=np.float32)
    assert score(a, a, "euclidean") == pytest.approx(1.0)
    assert score(a, b, "euclidean") == pytest.approx(1.0 - np.hypot(1.0, 0.6))
    assert score(a, b, "cosine") == pytest.approx(0.0)
    assert score(a, 2 * a, "cosine") == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8)).astype(np.float32)
    y = rng.normal(size=(3, 8)).astype(np.float32)
    for metric in ("euclidean", "cosine"):
        m = similarity_matrix(x, y, metric)  # type: ignore[arg-type]
        assert m.shape == (4, 3)
        assert m[2, 1] == pytest.approx(score(x[2], y[1], metric), abs=1e-5)  # type: ignore[arg-type]
    # The recommended 1:N threshold (measured, see edge/vision/families.py); the built-in
    # family and the manifest's must agree.
    assert DLIB150.threshold == pytest.approx(0.6)
