"""Rebuild a float ``.tflite`` image model as a TensorFlow function (build extra only).

TensorFlow cannot load a ``.tflite`` back into a graph, but for common
architectures the flatbuffer's operators map one-to-one onto TF ops: this
module reads the flatbuffer with TF's generated schema reader and replays it
with the file's own weights. Supported operators: CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED, ADD, SUB, MUL, ABS, RELU, RELU6, PRELU, RESHAPE, PAD,
MAX_POOL_2D, AVERAGE_POOL_2D, MEAN, CONCATENATION, L2_NORMALIZATION, and
DEQUANTIZE of float16 constants. Anything else raises :class:`NotImplementedError`.

Two rewrites make the rebuilt graph quantise better than the file itself:

* PReLU spelt out as ``relu(y) + c * (y - abs(y))`` (how MobileFaceNet's file
  has it) is recognised (``alpha = 2c``) and written as ``relu(y) +
  depthwise_1x1(y - relu(y), alpha)``: per-channel int8 weights keep every slope,
  where TFLite's int8 PRELU would quantise all slopes of a layer with one scale;
* the batch size becomes 1 (a RESHAPE whose first dimension was the file's
  fixed batch gets -1), so one face costs one forward pass.

``quantise_rebuilt`` makes full-integer int8, ``quantise_dynamic`` dynamic-range int8
(int8 weights, float activations quantised per call). All functions here import
TensorFlow lazily; callers check that it is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np


def _tf() -> Any:
    return importlib.import_module("tensorflow")


def _fb() -> Any:
    return importlib.import_module("tensorflow.lite.python.schema_py_generated")


class _Graph:
    def __init__(self, model_bytes: bytes) -> None:
        fb = _fb()
        self.fb = fb
        self.model = fb.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
        if len(self.model.subgraphs) != 1:
            raise NotImplementedError("models with more than one subgraph")
        self.sg = self.model.subgraphs[0]
        if len(self.sg.inputs) != 1 or len(self.sg.outputs) != 1:
            raise NotImplementedError("models with more than one input or output")
        ops = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
        self.op_names = [
            ops[max(oc.builtinCode, oc.deprecatedBuiltinCode)] for oc in self.model.operatorCodes
        ]
        dtypes = {fb.TensorType.FLOAT32: np.float32, fb.TensorType.FLOAT16: np.float16,
                  fb.TensorType.INT32: np.int32, fb.TensorType.INT64: np.int64}
        self.consts: dict[int, np.ndarray[Any, Any]] = {}
        for i, t in enumerate(self.sg.tensors):
            buf = self.model.buffers[t.buffer]
            if buf.data is None or len(buf.data) == 0:
                continue
            if t.type not in dtypes:
                raise NotImplementedError(f"constant tensors of type {t.type} (quantised model?)")
            arr = np.frombuffer(bytes(bytearray(buf.data)), dtype=dtypes[t.type])
            self.consts[i] = arr.reshape(list(t.shape) if t.shape is not None else [])
        self.producer: dict[int, int] = {}
        for k, op in enumerate(self.sg.operators):
            for o in op.outputs:
                self.producer[int(o)] = k
        shape = [int(v) for v in self.sg.tensors[self.sg.inputs[0]].shape]
        self.input_shape = shape
        self.batch = shape[0]

    def name(self, k: int) -> str:
        return str(self.op_names[self.sg.operators[k].opcodeIndex])

    def const(self, i: int) -> np.ndarray[Any, Any] | None:
        if i in self.consts:
            return self.consts[i]
        k = self.producer.get(i)
        if k is not None and self.name(k) == "DEQUANTIZE":
            src = self.consts.get(int(self.sg.operators[k].inputs[0]))
            if src is not None:
                return src.astype(np.float32)
        return None

    def prelu_pattern(self, k: int) -> tuple[int, np.ndarray[Any, Any]] | None:
        """If op ``k`` is ``ADD(RELU(y), MUL(c, SUB(y, ABS(y))))``: (y, alpha = 2c)."""
        if self.name(k) != "ADD":
            return None
        a, b = (int(v) for v in self.sg.operators[k].inputs)
        for relu_t, mul_t in ((a, b), (b, a)):
            kr, km = self.producer.get(relu_t), self.producer.get(mul_t)
            if kr is None or km is None or self.name(kr) != "RELU" or self.name(km) != "MUL":
                continue
            y = int(self.sg.operators[kr].inputs[0])
            m_in = [int(v) for v in self.sg.operators[km].inputs]
            for c_t, s_t in ((m_in[0], m_in[1]), (m_in[1], m_in[0])):
                c = self.const(c_t)
                ks = self.producer.get(s_t)
                if c is None or ks is None or self.name(ks) != "SUB":
                    continue
                s0, s1 = (int(v) for v in self.sg.operators[ks].inputs)
                kabs = self.producer.get(s1)
                if s0 != y or kabs is None or self.name(kabs) != "ABS":
                    continue
                if int(self.sg.operators[kabs].inputs[0]) != y:
                    continue
                return y, (2.0 * np.asarray(c, np.float32)).reshape(-1)
        return None


def _act(tf: Any, fb: Any, x: Any, code: int) -> Any:
    if code == fb.ActivationFunctionType.NONE:
        return x
    if code == fb.ActivationFunctionType.RELU:
        return tf.nn.relu(x)
    if code == fb.ActivationFunctionType.RELU6:
        return tf.nn.relu6(x)
    raise NotImplementedError(f"fused activation {code}")


def _prelu(tf: Any, x: Any, alpha: np.ndarray[Any, Any]) -> Any:
    """PReLU in an int8-friendly form.

    For images: ``relu(x) + depthwise_1x1(x - relu(x), alpha)``. TFLite's int8 PRELU
    quantises alpha per tensor, which ruins small slopes when others are large
    (MobileFaceNet's span -9.4..8.9); a depthwise convolution has per-channel weight
    scales, and RELU, SUB, DEPTHWISE_CONV_2D and ADD all have fast int8 kernels.
    """
    rank = len(x.shape)
    if rank == 4:
        c = int(x.shape[-1])
        w = np.asarray(alpha, np.float32).reshape(1, 1, c, 1)
        r = tf.nn.relu(x)
        neg = tf.nn.depthwise_conv2d(x - r, tf.constant(w), strides=[1, 1, 1, 1],
                                     padding="VALID")
        return r + neg
    a = tf.constant(-np.asarray(alpha, np.float32).reshape(-1))
    return tf.nn.relu(x) + a * tf.nn.relu(-x)


def rebuild(model_bytes: bytes) -> tuple[Callable[[Any], Any], list[int], dict[str, int]]:
    """A TF function equivalent to the float model with batch 1, its input shape, and
    counts of what was rewritten. Raises NotImplementedError for unsupported graphs."""
    tf = _tf()
    g = _Graph(model_bytes)
    fb = g.fb
    sg = g.sg
    n_ops = len(sg.operators)
    fused: dict[int, tuple[int, np.ndarray[Any, Any]]] = {}
    for k in range(n_ops):
        p = g.prelu_pattern(k)
        if p is not None:
            fused[k] = p
    # Which ops are needed, walking back from the output (fused PReLUs skip their parts).
    needed: set[int] = set()
    stack = [int(sg.outputs[0])]
    seen: set[int] = set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        kp = g.producer.get(t)
        if kp is None or g.const(t) is not None:
            continue
        needed.add(kp)
        ins = [fused[kp][0]] if kp in fused else [int(v) for v in sg.operators[kp].inputs]
        stack.extend(i for i in ins if i >= 0)
    stats = {"ops": len(needed), "prelu_fused": len(fused)}

    def f(x: Any) -> Any:
        vals: dict[int, Any] = {int(sg.inputs[0]): x}

        def v(i: int) -> Any:
            if i in vals:
                return vals[i]
            c = g.const(i)
            if c is None:
                raise NotImplementedError(f"tensor {i} has no value")
            return c

        for k in range(n_ops):
            if k not in needed:
                continue
            op = sg.operators[k]
            name = g.name(k)
            ins = [int(i) for i in op.inputs]
            o = op.builtinOptions
            if k in fused:
                y: Any = _prelu(tf, v(fused[k][0]), fused[k][1])
            elif name == "DEQUANTIZE":
                y = v(ins[0]).astype(np.float32)
            elif name == "CONV_2D":
                w = np.transpose(np.asarray(v(ins[1]), np.float32), (1, 2, 3, 0))  # OHWI->HWIO
                y = tf.nn.conv2d(v(ins[0]), tf.constant(w),
                                 strides=[1, o.strideH, o.strideW, 1], padding=_pad(fb, o),
                                 dilations=[1, o.dilationHFactor, o.dilationWFactor, 1])
                if len(ins) > 2 and ins[2] >= 0:
                    y = tf.nn.bias_add(y, tf.constant(np.asarray(v(ins[2]), np.float32)))
                y = _act(tf, fb, y, o.fusedActivationFunction)
            elif name == "DEPTHWISE_CONV_2D":
                w = np.asarray(v(ins[1]), np.float32)  # 1 H W C*M
                cin = int(v(ins[0]).shape[-1])
                w = w[0].reshape(w.shape[1], w.shape[2], cin, w.shape[3] // cin)
                if o.dilationHFactor != 1 or o.dilationWFactor != 1:
                    raise NotImplementedError("dilated depthwise convolution")
                y = tf.nn.depthwise_conv2d(v(ins[0]), tf.constant(w),
                                           strides=[1, o.strideH, o.strideW, 1],
                                           padding=_pad(fb, o))
                if len(ins) > 2 and ins[2] >= 0:
                    y = tf.nn.bias_add(y, tf.constant(np.asarray(v(ins[2]), np.float32)))
                y = _act(tf, fb, y, o.fusedActivationFunction)
            elif name == "FULLY_CONNECTED":
                w = np.asarray(v(ins[1]), np.float32)  # [out, in]
                xin = tf.reshape(v(ins[0]), [-1, w.shape[1]])
                y = tf.matmul(xin, tf.constant(w.T))
                if len(ins) > 2 and ins[2] >= 0:
                    y = y + tf.constant(np.asarray(v(ins[2]), np.float32))
                y = _act(tf, fb, y, o.fusedActivationFunction)
            elif name in ("ADD", "SUB", "MUL"):
                fn = {"ADD": tf.add, "SUB": tf.subtract, "MUL": tf.multiply}[name]
                y = fn(v(ins[0]), v(ins[1]))
                y = _act(tf, fb, y, o.fusedActivationFunction if o is not None else 0)
            elif name == "ABS":
                y = tf.abs(v(ins[0]))
            elif name == "RELU":
                y = tf.nn.relu(v(ins[0]))
            elif name == "RELU6":
                y = tf.nn.relu6(v(ins[0]))
            elif name == "PRELU":
                y = _prelu(tf, v(ins[0]), np.asarray(v(ins[1]), np.float32).reshape(-1))
            elif name == "PAD":
                y = tf.pad(v(ins[0]), tf.constant(np.asarray(v(ins[1]), np.int32)))
            elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                pool = tf.nn.max_pool2d if name == "MAX_POOL_2D" else tf.nn.avg_pool2d
                y = pool(v(ins[0]), [o.filterHeight, o.filterWidth], [o.strideH, o.strideW],
                         _pad(fb, o))
                y = _act(tf, fb, y, o.fusedActivationFunction)
            elif name == "MEAN":
                axes = np.asarray(v(ins[1])).reshape(-1).tolist()
                y = tf.reduce_mean(v(ins[0]), axis=axes, keepdims=bool(o.keepDims))
            elif name == "RESHAPE":
                shape = (np.asarray(v(ins[1])).reshape(-1).tolist() if len(ins) > 1
                         and ins[1] >= 0 else list(o.newShape))
                if shape and shape[0] == g.batch:
                    shape[0] = -1
                y = tf.reshape(v(ins[0]), shape)
            elif name == "CONCATENATION":
                y = _act(tf, fb, tf.concat([v(i) for i in ins], axis=o.axis),
                         o.fusedActivationFunction)
            elif name == "L2_NORMALIZATION":
                y = tf.math.l2_normalize(v(ins[0]), axis=-1)
            else:
                raise NotImplementedError(f"operator {name}")
            if len(op.outputs) != 1:
                raise NotImplementedError(f"{name} with {len(op.outputs)} outputs")
            vals[int(op.outputs[0])] = y
        return vals[int(sg.outputs[0])]

    return f, [1, *g.input_shape[1:]], stats


def _pad(fb: Any, o: Any) -> str:
    return "SAME" if o.padding == fb.Padding.SAME else "VALID"


def converter(model_bytes: bytes) -> tuple[Any, dict[str, int]]:
    """A ``TFLiteConverter`` for the rebuilt graph (batch 1), and the rewrite counts."""
    tf = _tf()
    f, shape, stats = rebuild(model_bytes)

    def body(x: Any) -> Any:
        return {"embeddings": f(x)}

    model = tf.function(body, input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    cf = model.get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([cf], model), stats


def rebuild_float(model_bytes: bytes) -> bytes:
    conv, _ = converter(model_bytes)
    out: bytes = conv.convert()
    return out


def quantise_rebuilt(
    model_bytes: bytes, representative: Callable[[], Any]
) -> tuple[bytes, dict[str, int]]:
    """Full-integer int8 (per-channel weights), float32 input and output, batch 1."""
    tf = _tf()
    conv, stats = converter(model_bytes)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.float32
    conv.inference_output_type = tf.float32
    out: bytes = conv.convert()
    return out, stats


def quantise_dynamic(model_bytes: bytes) -> tuple[bytes, dict[str, int]]:
    """Dynamic-range int8: int8 weights, activations quantised on the fly (float I/O)."""
    tf = _tf()
    conv, stats = converter(model_bytes)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    out: bytes = conv.convert()
    return out, stats
