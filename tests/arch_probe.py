"""Run the default models on a folder of images and write what they give, for comparing
two processors (tests/test_aarch64.py runs it natively and in an arm64 root under qemu).

    python tests/arch_probe.py --images DIR --models DIR --out result.json
        [--chips chips.npz] [--save-chips chips.npz] [--no-xnnpack] [--threads N]
        [--precisions int8 float32] [--float32-only NAME ...]

"The default models" are what the daemon's configuration defaults name (``[detector]
model`` and ``input_size``, ``[recognition] embedder``), each in its int8 and float32
variant where the manifest has both, and the landmark model when the default pipeline
uses it for that embedder's template (the mesh for dlib's, none for ArcFace's). For each
precision the whole pipeline runs on every image (detector, landmarks, alignment,
embedder, the embedder's flip included): boxes, scores, the detector's five points, the
points alignment used and the embedding of every face. ``--chips`` also embeds the chips
another run saved (``--save-chips``), so the embedder is compared on identical input.

It imports only the installed ``edge`` package, numpy and OpenCV (no test code): it runs
in the device's venv. Its output holds embeddings of the demo's and LFW's faces: it is a
test artefact in a temporary directory, never anything the appliance writes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PRECISIONS = ("int8", "float32")


def default_models(models_dir: Path) -> dict[str, Any]:
    """{precision: {detector, embedder, landmarks}} for the configuration's defaults."""
    from edge.service.config_sections import DetectorSettings, RecognitionSettings
    from edge.vision.detectors import kind_of
    from edge.vision.faces import default_landmarks
    from edge.vision.families import BUILTIN, EmbedderFamily
    from edge.vision.manifest import Manifest

    manifest = Manifest.load(models_dir)
    det_default = DetectorSettings().model
    rec = RecognitionSettings()
    det_stem = det_default
    for p in PRECISIONS:
        if det_default.endswith("_" + p):
            det_stem = det_default[: -len(p) - 1]
    out: dict[str, Any] = {"input_size": list(DetectorSettings().input_size)}
    for p in PRECISIONS:
        det = f"{det_stem}_{p}" if f"{det_stem}_{p}" in manifest.names else det_default
        emb = f"{rec.embedder}_{p}"
        if emb not in manifest.names:
            continue
        fam_name = manifest.entry(emb).family or ""
        family = (
            EmbedderFamily.from_spec(fam_name, manifest.family(fam_name))
            if fam_name in manifest.doc.families
            else BUILTIN[fam_name]
        )
        landmarks = default_landmarks(kind_of(manifest, det), family.template)
        out[p] = {
            "detector": det,
            "embedder": emb,
            "landmarks": landmarks,
            "landmark_model": manifest.find("landmarks") if landmarks == "mesh" else None,
        }
    return out


def disable_xnnpack() -> None:
    """Make edge.vision.runtime load interpreters without the default XNNPACK delegate."""
    import functools

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    import edge.vision.runtime as runtime

    cls = functools.partial(
        Interpreter,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    runtime._interpreter_class = lambda: cls  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edge.vision.faces import FaceEngine

    images = sorted(p for p in args.images.iterdir() if p.suffix == ".png")
    chips_in = np.load(args.chips) if args.chips else None
    defaults = default_models(args.models)
    result: dict[str, Any] = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "xnnpack": not args.no_xnnpack,
        "defaults": defaults,
        "variants": {},
    }
    saved: dict[str, np.ndarray] = {}
    for p in args.precisions:
        if p not in defaults:
            continue
        d = defaults[p]
        t0 = time.monotonic()
        engine = FaceEngine.from_models(
            args.models, embedder=d["embedder"], precision=p, detector=d["detector"],
            landmarks=d["landmarks"], threads=args.threads,
            detector_input=tuple(defaults["input_size"]),
        )
        faces_out: dict[str, list[dict[str, Any]]] = {}
        chips: list[np.ndarray] = []
        only = args.float32_only if p == "float32" and args.float32_only else None
        for path in images:
            if only is not None and path.name not in only:
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            dets = engine.detect(image)
            points = [engine.landmarker.points(image, d, engine.family.template) for d in dets]
            face_chips = [engine.aligner.align(image, pts) for pts in points]
            embs = engine.embed(face_chips) if dets else np.zeros((0, 1))
            rows = []
            for det, pts, chip, e in zip(dets, points, face_chips, embs, strict=True):
                rows.append({
                    "box": [float(v) for v in det.box],
                    "score": float(det.score),
                    "points5": None if det.points5 is None else det.points5.tolist(),
                    "points": np.asarray(pts, dtype=np.float64).tolist(),
                    "embedding": e.tolist(),
                })
                chips.append(chip.rgb)
            faces_out[path.name] = rows
        variant: dict[str, Any] = {"models": engine.model_info, "faces": faces_out}
        if chips:
            saved[p] = np.stack(chips)
        if chips_in is not None and p in chips_in.files:
            variant["chip_embeddings"] = engine.embed(list(chips_in[p])).tolist()
        variant["seconds"] = round(time.monotonic() - t0, 1)
        result["variants"][p] = variant
    if args.save_chips:
        np.savez_compressed(args.save_chips, **saved)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of .png images")
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chips", type=Path, help="chips (npz by precision) to embed too")
    parser.add_argument("--save-chips", type=Path, help="write this run's chips (npz)")
    parser.add_argument("--no-xnnpack", action="store_true", help="TFLite's own kernels only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--float32-only", nargs="+", metavar="NAME",
                        help="run the float32 models on these images only (slow when emulated)")
    args = parser.parse_args(argv)
    if args.no_xnnpack:
        disable_xnnpack()
    args.out.write_text(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
