"""The model build's fidelity proofs: the .dat parser, and the TFLite embedders against dlib-bin.

dlib-bin's ``compute_face_descriptor`` on ready-made chips is the reference. Chips are
made with dlib (HOG detector, 5-point predictor, ``get_face_chip(150, 0.25)``) from
../shared/data in memory; nothing is cached in the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from models.build import chips, dlib_dat
from models.build.common import Embedder, fidelity

MODELS = Path(__file__).resolve().parents[1] / "models"
N_LFW = 500

Chips = list[npt.NDArray[np.uint8]]


@pytest.fixture(scope="module")
def dat_bytes() -> bytes:
    return dlib_dat.default_dat_path().read_bytes()


@pytest.fixture(scope="module")
def net(dat_bytes: bytes) -> dlib_dat.DlibNet:
    return dlib_dat.parse(dat_bytes)


@pytest.fixture(scope="module")
def tools() -> chips.DlibTools:
    return chips.dlib_tools()


# ---------------------------------------------------------------- parser


def test_parser_consumes_the_whole_file(dat_bytes: bytes, net: dlib_dat.DlibNet) -> None:
    assert len(dat_bytes) == dlib_dat.DAT_BYTES
    assert net.nbytes == len(dat_bytes)
    assert net.n_params() == 5_614_592
    assert net.counts == {"con": 29, "affine": 29, "relu": 29, "max": 1, "tag|skip": 22,
                          "add": 14, "avg": 4, "gavg": 1, "fc": 1}
    assert net.loss[0] == "loss_metric_2"
    assert net.loss[2] == pytest.approx(0.6)
    assert net.input.nr == net.input.nc == 150
    assert net.input.means == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    fc = net.layers[-1]
    assert isinstance(fc, dlib_dat.FC) and fc.weight.shape == (256, 128)


@pytest.mark.parametrize("cut", [1, 4, 1000, dlib_dat.DAT_BYTES // 2])
def test_parser_rejects_a_truncated_file(dat_bytes: bytes, cut: int) -> None:
    with pytest.raises(dlib_dat.DatError, match="end of file"):
        dlib_dat.parse(dat_bytes[:-cut])


@pytest.mark.parametrize("extra", [b"\x00", b"\x01\x02", b"trailing garbage" * 10])
def test_parser_rejects_an_extended_file(dat_bytes: bytes, extra: bytes) -> None:
    with pytest.raises(dlib_dat.DatError, match="bytes unread"):
        dlib_dat.parse(dat_bytes + extra)


def test_parser_rejects_a_wrong_architecture(dat_bytes: bytes) -> None:
    # Turn the first "relu_" record into "relu?" : an unknown layer.
    i = dat_bytes.index(b"relu_")
    bad = dat_bytes[:i] + b"relu?" + dat_bytes[i + 5 :]
    with pytest.raises(dlib_dat.DatError, match="unknown layer record"):
        dlib_dat.parse(bad)


def test_add_prev_pads_the_smaller_tensor_at_the_end() -> None:
    a = np.ones((3, 3, 4), np.float32)
    b = np.full((4, 4, 2), 2.0, np.float32)
    out = dlib_dat.add_prev(a, b)
    assert out.shape == (4, 4, 4)
    assert np.all(out[:3, :3, :2] == 3.0)
    assert np.all(out[:3, :3, 2:] == 1.0)
    assert np.all(out[3, :, :2] == 2.0) and np.all(out[:, 3, 2:] == 0.0)


# ---------------------------------------------------------------- chips and references


@pytest.fixture(scope="module")
def photo_chips(tools: chips.DlibTools, photos_dir: Path) -> Chips:
    out = list(chips.photo_chips(tools, photos_dir))
    assert len(out) >= 20, "expected faces in the shared photos"
    return out


@pytest.fixture(scope="module")
def photo_ref(tools: chips.DlibTools, photo_chips: Chips) -> npt.NDArray[np.float32]:
    return chips.dlib_descriptors(tools, photo_chips)


@pytest.fixture(scope="module")
def lfw_chips(tools: chips.DlibTools, lfw_dir: Path) -> Chips:
    paths = chips.lfw_evaluation(lfw_dir, N_LFW)
    out = list(chips.lfw_chips(tools, paths))
    assert len(out) == N_LFW
    return out


@pytest.fixture(scope="module")
def lfw_ref(tools: chips.DlibTools, lfw_chips: Chips) -> npt.NDArray[np.float32]:
    return chips.dlib_descriptors(tools, lfw_chips)


def test_calibration_and_evaluation_subsets_are_disjoint_and_stable(lfw_dir: Path) -> None:
    calib = chips.lfw_calibration(lfw_dir)
    ev = chips.lfw_evaluation(lfw_dir, N_LFW)
    assert len(calib) == chips.CALIB_LFW and len(ev) == N_LFW
    assert not set(calib) & set(ev)
    assert chips.lfw_evaluation(lfw_dir, N_LFW) == ev


def test_numpy_forward_matches_dlib(
    net: dlib_dat.DlibNet, tools: chips.DlibTools, photo_chips: Chips
) -> None:
    sel = photo_chips[:10]
    ref = chips.dlib_descriptors(tools, sel)
    ours = np.stack([dlib_dat.forward(net, c) for c in sel])
    assert np.abs(ours - ref).max() <= 1e-5


def test_float_tflite_matches_dlib_on_photos(
    photo_chips: Chips, photo_ref: npt.NDArray[np.float32]
) -> None:
    ref = photo_ref
    emb = Embedder(MODELS / "dlib_resnet_v1_float32.tflite").many(photo_chips)
    assert emb.shape == ref.shape == (len(photo_chips), 128)
    assert np.abs(emb - ref).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.lfw
def test_float_tflite_matches_dlib_on_lfw(
    lfw_chips: Chips, lfw_ref: npt.NDArray[np.float32]
) -> None:
    emb = Embedder(MODELS / "dlib_resnet_v1_float32.tflite", threads=2).many(lfw_chips)
    assert np.abs(emb - lfw_ref).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.lfw
def test_int8_tflite_agrees_with_dlib_on_500_lfw_chips(
    lfw_chips: Chips, lfw_ref: npt.NDArray[np.float32], record_property: Any
) -> None:
    emb = Embedder(MODELS / "dlib_resnet_v1_int8.tflite", threads=2).many(lfw_chips)
    fid = fidelity(emb, lfw_ref)
    for k, v in fid.items():
        record_property(k, v)
    print(f"int8 vs dlib on {fid['n']} LFW chips: cosine min {fid['cosine_min']:.4f} "
          f"mean {fid['cosine_mean']:.4f}; Euclidean drift mean "
          f"{fid['euclidean_drift_mean']:.4f} max {fid['euclidean_drift_max']:.4f}")
    assert fid["n"] >= 500
    assert fid["cosine_mean"] >= 0.99
    assert fid["cosine_min"] >= 0.98
    # Drift well under dlib's 0.6 decision distance.
    assert fid["euclidean_drift_max"] < 0.15


def test_int8_tflite_agrees_with_dlib_on_photos(
    photo_chips: Chips, photo_ref: npt.NDArray[np.float32]
) -> None:
    """Photos are also calibration data; the LFW test above is the disjoint proof."""
    ref = photo_ref
    emb = Embedder(MODELS / "dlib_resnet_v1_int8.tflite").many(photo_chips)
    assert fidelity(emb, ref)["cosine_mean"] >= 0.99


# ---------------------------------------------------------------- detectors


@pytest.mark.parametrize("kind", ["full", "short"])
def test_int8_detector_agrees_with_float_on_clips(clips_dir: Path, kind: str) -> None:
    """Every 3rd clip frame: the int8 detector finds what the float one finds, in place."""
    from models.build import detector_eval

    frames = detector_eval.frames(clips_dir.parent, photos=False)[::3]
    cmp = detector_eval.compare(
        MODELS / f"blazeface_{kind}_float32.tflite", MODELS / f"blazeface_{kind}_int8.tflite",
        kind, frames,
    )
    assert cmp["detections_float"] >= 20
    assert cmp["recall_vs_float"] >= 0.9
    assert cmp["extra_int8_detections"] <= 0.1 * cmp["detections_float"]
    assert cmp["mean_iou"] >= 0.85
    assert cmp["mean_keypoint_diff_over_box_width"] <= 0.06
