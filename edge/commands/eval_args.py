"""What the ``edge eval`` sub-commands share: the model and search-set arguments, and the
searches they score (``identify``, ``calibrate`` and ``demographics`` alike).

Split out of :mod:`edge.commands.eval` so that ``eval_demographics`` reads them without
importing the module that registers it (``tests/test_layout.py`` forbids the circle).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge.vision.defaults import DEFAULT_EMBEDDER, DLIB_EMBEDDER


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="models directory (default: EDGE_MODELS_DIR, "
        "the checkout's models/, or the installed models)",
    )
    p.add_argument(
        "--model",
        choices=("int8", "float", "float32"),
        default="int8",
        help="embedder precision (default int8)",
    )
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                   help=f"embedder name in the manifest (default {DEFAULT_EMBEDDER}; "
                   f"dlib: {DLIB_EMBEDDER})")
    p.add_argument(
        "--landmarks",
        choices=("mesh", "blazeface", "retina", "mesh_raw"),
        default=None,
        help="how the 5 alignment points are found (default: the best measured for the "
        "detector, mesh)",
    )
    p.add_argument("--detector", default="retinaface_mnet025_int8",
                   help="detector name in the manifest (default retinaface_mnet025_int8)")
    p.add_argument("--detector-input", type=parse_size, default=None, metavar="WxH",
                   help="RetinaFace input size, multiples of 32 (default 640x384)")
    p.add_argument("--threads", type=int, default=2, help="TFLite threads (default 2)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip-averaged embeddings, each chip and its mirror image "
                   "(default: the embedder family's setting)")



def engine_from_args(args: argparse.Namespace) -> tuple[Any, str]:
    """The FaceEngine the model arguments ask for, and its precision."""
    from edge.vision.faces import FaceEngine

    precision = "float32" if args.model in ("float", "float32") else "int8"
    engine = FaceEngine.from_models(
        args.models_dir, embedder=args.embedder, precision=precision,
        detector=args.detector, landmarks=args.landmarks, threads=args.threads,
        detector_input=args.detector_input, flip=args.flip,
    )
    return engine, precision



def add_search_args(p: argparse.ArgumentParser) -> None:
    """Where the gallery and probes come from (identify and calibrate)."""
    p.add_argument("--lfw", type=Path, help="LFW-style folder: gallery = first image of each "
                   "identity with >= 2 images, mated probes = its others, non-mated = the rest")
    p.add_argument("--gallery", type=Path, help="one folder of images per gallery subject")
    p.add_argument("--probes", type=Path, help="one folder per probe identity (with --gallery); "
                   "identities absent from the gallery are non-mated")
    p.add_argument("--face", choices=("centre", "largest"), default=None,
                   help="which face of an image is searched (default: centre with --lfw, "
                   "else largest)")
    p.add_argument("--no-fallback", action="store_true", help="with --lfw: an image without a "
                   "detection has no template (default: retry at a lower score, then a fixed "
                   "central box, as `eval verify` does)")
    p.add_argument("--probe-images", default=None, metavar="K[,K...]",
                   help="fuse K images of a probe identity into one template per search, as "
                   "the daemon fuses a track (default 1; identify takes several K, e.g. 1,2,3, "
                   "embedding each image once)")
    p.add_argument("--gallery-images", default=None, metavar="K[,K...]",
                   help="up to K images per gallery subject, as a watchlist holds several "
                   "references (default 1; with --lfw an identity's first min(K, n-1) images, "
                   "the probes cut at the largest K so that every K searches the same probes)")
    p.add_argument("--reference", default=None, metavar="fused|best",
                   help="score a subject with several gallery images by the best of them or "
                   "by their fused template, as the device does (default: the device's "
                   "default; identify takes both, fused,best)")
    p.add_argument("--holdout", type=float, default=None, metavar="SHARE",
                   help="with --lfw: share of the multi-image identities kept out of the "
                   "gallery as non-mated (default 0.5 with --probe-images, else 0)")



def search_set(args: argparse.Namespace) -> Any:
    from edge.errors import UsageError
    from edge.evaluation.identify import check_paths, folder_sets, lfw_sets

    if args.lfw is not None:
        if args.gallery is not None or args.probes is not None:
            raise UsageError("use either --lfw or --gallery with --probes, not both")
        holdout = args.holdout
        if holdout is None:
            holdout = 0.5 if args.probe_images is not None else 0.0
        sets = lfw_sets(args.lfw, holdout, max(gallery_images(args, several=True)))
    elif args.gallery is not None and args.probes is not None:
        if args.holdout is not None:
            raise UsageError("--holdout is for --lfw (with folders, the probes folder says "
                             "who is non-mated)")
        sets = folder_sets(args.gallery, args.probes)
    else:
        raise UsageError("say where the faces are: --lfw DIR, or --gallery DIR --probes DIR")
    check_paths([p for files in sets.gallery.values() for p in files])
    check_paths([p.path for p in sets.probes])
    return sets



def probe_images(args: argparse.Namespace, several: bool) -> list[int]:
    from edge.errors import UsageError
    from edge.evaluation.identify import parse_probe_images

    ks = parse_probe_images(args.probe_images or "1")
    if len(ks) > 1 and not several:
        raise UsageError(f"--probe-images {args.probe_images}: calibrate takes one K")
    return ks



def gallery_images(args: argparse.Namespace, several: bool) -> list[int]:
    from edge.errors import UsageError
    from edge.evaluation.identify import parse_gallery_images

    ks = parse_gallery_images(args.gallery_images or "1")
    if len(ks) > 1 and not several:
        raise UsageError(f"--gallery-images {args.gallery_images}: calibrate takes one K")
    return ks



def references(args: argparse.Namespace, several: bool) -> list[str]:
    from edge.errors import UsageError
    from edge.evaluation.identify import parse_references
    from edge.recognition.match import DEFAULT_REFERENCE

    refs = parse_references(args.reference or DEFAULT_REFERENCE)
    if len(refs) > 1 and not several:
        raise UsageError(f"--reference {args.reference}: calibrate takes one mode")
    return refs



def score_searches(
    args: argparse.Namespace, fpirs: list[float], ks: list[int], several: bool = True
) -> list[tuple[Any, dict[str, Any]]]:
    from edge.evaluation.identify import group_probes, limit_gallery, run_identify_many

    gks = gallery_images(args, several)
    refs = references(args, several)
    sets = search_set(args)  # fail on bad input before loading any model
    for k in ks:
        for gk in gks:
            group_probes(limit_gallery(sets, gk), k)
    engine, precision = engine_from_args(args)
    label = getattr(args, "label", None) or f"{args.embedder} {precision}"
    runs = run_identify_many(
        engine, sets, fpirs, label=label,
        choose=args.face or ("centre" if args.lfw is not None else "largest"),
        fallback=args.lfw is not None and not args.no_fallback,
        progress=not args.no_progress, probe_images=ks, gallery_images=gks, references=refs,
    )
    for _, rep in runs:
        rep["precision"] = precision
    return runs


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` for argparse (one usage line on a bad value)."""
    from edge.evaluation.simulate import parse_size as parse

    try:
        return parse(text)
    except Exception as exc:  # argparse turns this into one usage line
        raise argparse.ArgumentTypeError(str(exc)) from None
