"""How much work each model is: multiply-accumulates and parameters, from the .tflite graph.

    .venv/bin/python -m models.build.sizing [--models DIR] [--input-size 640x384] [--json]

For every model in the manifest (or those named with ``--only``), the graph is loaded with
the TFLite runtime (without delegates, so every operator of the file is listed) at its
input size — RetinaFace's dynamic input resized to ``--input-size``, the daemon's default
640x384 — and each operator's multiply-accumulates are counted from its tensor shapes:

- ``CONV_2D``: output H x W x C_out x (k_h x k_w x C_in) per batch item;
- ``DEPTHWISE_CONV_2D``: output H x W x C_out x (k_h x k_w);
- ``FULLY_CONNECTED`` and ``BATCH_MATMUL``: output elements x the reduced dimension;
- ``TRANSPOSE_CONV``: input H x W x C_in x (k_h x k_w x C_out);
- element-wise arithmetic, pooling, resizing, activations: counted apart as "other
  operations" (one per output element; MUL/ADD/... and pools), small next to the above.

Parameters are the elements of the file's constant tensors (weights, biases; float16
weights once, not again after their DEQUANTIZE). Batch-fixed models (a file that takes two
chips at once) are reported per chip.

Then the per-frame work of the default pipeline (the configuration's defaults: the
detector at its input size on every frame; for each face the decider embeds, the landmark
model when the embedder's template uses it and the embedder, twice when the family
flip-averages). Prints a Markdown table (``--json`` for the numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]

CONV = "CONV_2D"
DEPTHWISE = "DEPTHWISE_CONV_2D"
MATMULS = ("FULLY_CONNECTED", "BATCH_MATMUL")
TRANSPOSE_CONV = "TRANSPOSE_CONV"
OTHER_ARITHMETIC = (
    "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE",
    "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "SUM", "L2_NORMALIZATION", "SOFTMAX",
    "LOGISTIC", "TANH", "PRELU", "LEAKY_RELU", "RELU", "RELU6", "HARD_SWISH",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "ABS", "EXP", "RSQRT", "SQRT",
)


@dataclass(frozen=True)
class Work:
    name: str
    input: str
    macs: int
    other_ops: int
    params: int
    per: str  # "call" or "chip" (batch-fixed files are divided by their batch)
    by_op: dict[str, int]


def _elements(shape: Any) -> int:
    return int(np.prod([int(v) for v in shape])) if len(shape) else 1


def constant_tensors(path: Path) -> set[int]:
    """Indices of the tensors whose data is in the file (weights, biases, constants)."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    sg = model.subgraphs[0]
    out = set()
    for i, t in enumerate(sg.tensors):
        buf = model.buffers[t.buffer]
        if (buf.data is not None and len(buf.data) > 0) or (buf.size or 0) > 0:
            out.add(i)
    return out


def measure(path: Path, name: str, input_size: tuple[int, int] | None = None) -> Work:
    """Multiply-accumulates and parameters of one .tflite file (see the module doc)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    inp = interp.get_input_details()[0]
    sig = [int(v) for v in inp.get("shape_signature", inp["shape"])]
    if input_size is not None and len(sig) == 4 and -1 in sig[1:3]:
        w, h = input_size
        interp.resize_tensor_input(inp["index"], [1, h, w, sig[3]])
    interp.allocate_tensors()
    shapes = {int(t["index"]): [int(v) for v in t["shape"]] for t in interp.get_tensor_details()}
    in_shape = shapes[int(inp["index"])]
    batch = max(1, in_shape[0])
    by_op: dict[str, int] = {}
    other = 0
    for op in interp._get_ops_details():
        kind = str(op["op_name"])
        ins = [int(i) for i in op["inputs"] if int(i) >= 0]
        outs = [int(i) for i in op["outputs"]]
        out = shapes[outs[0]] if outs else []
        macs = 0
        if kind == CONV:
            kh, kw, cin = shapes[ins[1]][1:4]
            macs = _elements(out) * kh * kw * cin
        elif kind == DEPTHWISE:
            kh, kw = shapes[ins[1]][1:3]
            macs = _elements(out) * kh * kw
        elif kind in MATMULS:
            reduced = shapes[ins[1]][-1] if kind == "FULLY_CONNECTED" else shapes[ins[0]][-1]
            macs = _elements(out) * reduced
        elif kind == TRANSPOSE_CONV:
            kh, kw = shapes[ins[1]][1:3]
            cout = shapes[ins[1]][0]
            macs = _elements(shapes[ins[2]]) * kh * kw * cout
        elif kind in OTHER_ARITHMETIC:
            other += _elements(out)
        if macs:
            by_op[kind] = by_op.get(kind, 0) + macs
    consts = constant_tensors(path)
    params = sum(_elements(shapes[i]) for i in consts if i in shapes)
    total = sum(by_op.values())
    size = "x".join(str(v) for v in (in_shape[2], in_shape[1])) if len(in_shape) == 4 else str(
        in_shape)
    return Work(
        name=name,
        input=size,
        macs=total // batch,
        other_ops=other // batch,
        params=params,
        per="chip" if batch > 1 else "call",
        by_op={k: v // batch for k, v in by_op.items()},
    )


def pipeline(models_dir: Path, works: dict[str, Work]) -> dict[str, Any]:
    """The default pipeline's work: detector per frame, landmarks + embedder per face."""
    from edge.service.config_sections import DetectorSettings, RecognitionSettings
    from edge.vision.detectors import kind_of
    from edge.vision.faces import default_landmarks
    from edge.vision.families import BUILTIN, EmbedderFamily
    from edge.vision.manifest import Manifest

    manifest = Manifest.load(models_dir)
    det, rec = DetectorSettings(), RecognitionSettings()
    emb = f"{rec.embedder}_{rec.precision}"
    fam_name = manifest.entry(emb).family or ""
    family = (EmbedderFamily.from_spec(fam_name, manifest.family(fam_name))
              if fam_name in manifest.doc.families else BUILTIN[fam_name])
    landmarks = default_landmarks(kind_of(manifest, det.model), family.template)
    mesh = manifest.find("landmarks") if landmarks == "mesh" else None
    calls = 2 if family.flip else 1
    per_face = (works[mesh].macs if mesh else 0) + calls * works[emb].macs
    return {
        "detector": det.model,
        "detector_input": "x".join(str(v) for v in det.input_size),
        "detector_macs": works[det.model].macs,
        "landmarks": landmarks,
        "landmark_model": mesh,
        "embedder": emb,
        "embedder_calls_per_face": calls,
        "macs_per_embedded_face": per_face,
    }


def _g(n: int) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e8 else f"{n / 1e6:.1f} M"


def markdown(works: list[Work], pipe: dict[str, Any]) -> str:
    lines = [
        "| model | input | multiply-accumulates | other operations | parameters |",
        "|---|---|---|---|---|",
    ]
    for w in works:
        per = " per chip" if w.per == "chip" else ""
        lines.append(
            f"| `{w.name}` | {w.input} | {_g(w.macs)}{per} | {_g(w.other_ops)} "
            f"| {w.params / 1e6:.2f} M |"
        )
    d, f = pipe["detector_macs"], pipe["macs_per_embedded_face"]
    lines += [
        "",
        f"Default pipeline: `{pipe['detector']}` at {pipe['detector_input']} on every frame "
        f"({_g(d)}); per embedded face "
        + (f"`{pipe['landmark_model']}` + " if pipe["landmark_model"] else "")
        + f"{pipe['embedder_calls_per_face']} x `{pipe['embedder']}` ({_g(f)}).",
        f"A frame with N faces being embedded: {_g(d)} + N x {_g(f)} "
        f"(e.g. 2 faces: {_g(d + 2 * f)}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--input-size", default="640x384",
                        help="input WIDTHxHEIGHT for models with a dynamic input (RetinaFace)")
    parser.add_argument("--only", nargs="*", help="manifest names (default: every model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from edge.vision.manifest import Manifest

    w, h = (int(v) for v in args.input_size.lower().split("x"))
    manifest = Manifest.load(args.models)
    names = args.only or manifest.names
    works = {n: measure(manifest.verify(n), n, (w, h)) for n in names}
    pipe = pipeline(args.models, works) if not args.only else {}
    if args.json:
        print(json.dumps({"models": [asdict(v) for v in works.values()], "pipeline": pipe},
                         indent=1))
    elif pipe:
        print(markdown(list(works.values()), pipe))
    else:
        print(markdown(list(works.values()), {"detector": "", "detector_input": "",
                                              "detector_macs": 0, "landmark_model": None,
                                              "embedder_calls_per_face": 0, "embedder": "",
                                              "macs_per_embedded_face": 0}).split("\n\n")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
