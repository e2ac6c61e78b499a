"""models/build/sizing.py: multiply-accumulates and parameters from the .tflite graphs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.build.sizing import measure, pipeline

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def test_float_and_int8_files_of_a_model_do_the_same_work() -> None:
    for stem in ("retinaface_mnet025", "dlib_resnet_v1", "blazeface_full", "sface_2021dec"):
        f = measure(MODELS / f"{stem}_float32.tflite", stem, (640, 384))
        q = measure(MODELS / f"{stem}_int8.tflite", stem, (640, 384))
        assert f.macs == q.macs > 0 and f.params == pytest.approx(q.params, rel=0.01)


def test_retinaface_work_scales_with_its_input_and_dlib_is_its_known_size() -> None:
    small = measure(MODELS / "retinaface_mnet025_int8.tflite", "r", (640, 384))
    large = measure(MODELS / "retinaface_mnet025_int8.tflite", "r", (1280, 736))
    assert (small.input, large.input) == ("640x384", "1280x736")
    assert large.macs / small.macs == pytest.approx(1280 * 736 / (640 * 384), rel=0.01)
    assert large.params == small.params
    dlib = measure(MODELS / "dlib_resnet_v1_float32.tflite", "d")
    # dlib's first layer alone: 7x7 conv, 3 -> 32 channels, stride 2, VALID: 72x72 out
    assert dlib.by_op["CONV_2D"] > 72 * 72 * 32 * 7 * 7 * 3
    # 128 x 256 weights of the final FC, and about 5.6 M parameters in all (dlib's ResNet)
    assert dlib.by_op["FULLY_CONNECTED"] == 128 * 256
    assert 5.5e6 < dlib.params < 5.7e6


def test_the_default_pipeline_is_the_detector_plus_the_per_face_models() -> None:
    from edge.service.config_sections import DetectorSettings, RecognitionSettings
    from edge.vision.manifest import Manifest

    manifest = Manifest.load(MODELS)
    rec = RecognitionSettings()
    names = [DetectorSettings().model, manifest.find("landmarks"),
             f"{rec.embedder}_{rec.precision}"]
    works = {n: measure(manifest.verify(n), n, (640, 384)) for n in names}
    pipe = pipeline(MODELS, works)
    assert pipe["detector"] == DetectorSettings().model
    assert pipe["embedder"].startswith(RecognitionSettings().embedder)
    mesh = works[names[1]].macs if pipe["landmark_model"] else 0
    calls = pipe["embedder_calls_per_face"]
    assert pipe["macs_per_embedded_face"] == mesh + calls * works[pipe["embedder"]].macs


def test_the_command_covers_every_model_of_the_manifest() -> None:
    proc = subprocess.run([sys.executable, "-m", "models.build.sizing", "--json"],
                          capture_output=True, text=True, cwd=REPO, check=True, timeout=300)
    data = json.loads(proc.stdout)
    manifest = json.loads((MODELS / "manifest.json").read_text())
    assert {m["name"] for m in data["models"]} == set(manifest["models"])
    assert all(m["macs"] > 0 and m["params"] > 0 for m in data["models"])
