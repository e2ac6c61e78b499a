"""``edge eval``: offline evaluation of the device pipeline.

Subcommands (one function each): ``verify`` — 1:1 verification on LFW-format
pairs with LFW's 10-fold protocol; ``identify`` — open-set 1:N (TPIR at FPIR,
DET plot); ``calibrate`` — the threshold for a target FPIR at a watchlist size;
``demographics`` — rates per demographic group (:mod:`edge.commands.eval_demographics`);
``detect`` — detection recall by face width on a simulated clip. About 410 lines, one
function per sub-command and the search options identify and calibrate share (which
faces, how many images per probe and per gallery subject, how several are scored).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge.commands.eval_args import (
    add_model_args,
    add_search_args,
    gallery_images,
    parse_size,
    probe_images,
    references,
    score_searches,
)


def register(sub: Any) -> None:
    parser = sub.add_parser("eval", help="evaluate the face pipeline offline (LFW-format data)")
    evsub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    evsub.required = True
    register_verify(evsub)
    register_identify(evsub)
    register_calibrate(evsub)
    from edge.commands.eval_demographics import register_demographics

    register_demographics(evsub)
    register_detect(evsub)



def register_verify(evsub: Any) -> None:
    p = evsub.add_parser("verify", help="1:1 verification on LFW-format pairs (10-fold protocol)")
    p.add_argument("--images", type=Path, required=True, help="directory of <Name>/<Name>_NNNN.jpg")
    p.add_argument("--pairs", type=Path, required=True, help="LFW pairs.txt format file")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.evaluation.pairs import parse_pairs
    from edge.evaluation.verify import check_images, verify
    from edge.vision.faces import FaceEngine

    if not args.images.is_dir():
        raise UsageError(f"{args.images}: images directory not found")
    pairs = parse_pairs(args.pairs, args.images)
    check_images(pairs)  # fail on a missing image before loading any model
    precision = "float32" if args.model in ("float", "float32") else "int8"
    engine = FaceEngine.from_models(
        args.models_dir,
        embedder=args.embedder,
        precision=precision,
        detector=args.detector,
        landmarks=args.landmarks,
        threads=args.threads,
        detector_input=args.detector_input,
        flip=args.flip,
    )
    report = verify(engine, pairs, progress=not args.no_progress)
    report["precision"] = precision
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(summary_line(report))
    sys.stdout.flush()
    return 0


def summary_line(report: dict[str, Any]) -> str:
    tar = report.get("tar_at_far") or {}
    return (
        f"pairs {report['pairs']}  accuracy {100 * report['accuracy']:.2f}% "
        f"+- {100 * report['accuracy_std']:.2f}  threshold {report['threshold']:.4f}  "
        f"TAR@FAR=0.001 {tar.get('0.001')}  failed_to_detect {report['failed_to_detect']}"
    )



def register_identify(evsub: Any) -> None:
    p = evsub.add_parser(
        "identify", help="open-set 1:N identification: TPIR at FPIR, FNIR, rank-1, DET plot"
    )
    add_search_args(p)
    p.add_argument("--scores", type=Path, metavar="NPZ", nargs="+",
                   help="report (and plot) a saved score set instead of embedding images; "
                        "several: their score-level fusion (the mean), e.g. two embedders")
    p.add_argument("--fpir", default="0.001,0.000167",
                   help="comma-separated target FPIRs (default 0.001,0.000167)")
    p.add_argument("--plot", type=Path, help="write a DET plot (PNG) here")
    p.add_argument("--plot-scores", type=Path, nargs="+", default=[], metavar="NPZ",
                   help="saved score sets (--save-scores) to draw as more curves on --plot")
    p.add_argument("--save-scores", type=Path, metavar="NPZ",
                   help="save the probe x gallery scores (no embeddings) for calibrate/plots")
    p.add_argument("--label", help="curve label (default: embedder and precision)")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_identify)


def run_identify(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.evaluation.identify import ScoreSet, det_curve, format_text, parse_fpirs, report

    fpirs = parse_fpirs(args.fpir)
    ks = probe_images(args, several=True)
    extra = [ScoreSet.load(p) for p in args.plot_scores]
    if extra and args.plot is None:
        raise UsageError("--plot-scores needs --plot")
    several = (len(ks) > 1 or len(gallery_images(args, True)) > 1
               or len(references(args, True)) > 1)
    if args.save_scores is not None and several:
        raise UsageError("--save-scores takes one --probe-images K, --gallery-images K and "
                         "--reference")
    if args.scores is not None:
        if args.lfw is not None or args.gallery is not None:
            raise UsageError("use either --scores or --lfw/--gallery, not both")
        from edge.evaluation.identify_scores import fuse_score_sets

        loaded = [ScoreSet.load(p) for p in args.scores]
        ss = loaded[0] if len(loaded) == 1 else fuse_score_sets(loaded)
        runs = [(ss, report(ss, fpirs))]
    else:
        runs = score_searches(args, fpirs, ks)
    ss, rep = runs[0]
    if args.save_scores is not None:
        ss.save(args.save_scores)
        rep["scores_file"] = str(args.save_scores)
    if args.plot is not None:
        from edge.evaluation.det_plot import plot_det

        curves = [r for r, _ in runs] + extra
        plot_det([det_curve(r, fpirs) for r in curves], args.plot,
                 counts=[(r.n_mated, r.n_non_mated) for r in curves])
        rep["plot"] = str(args.plot)
    reps = [r for _, r in runs]
    if args.json:
        print(json.dumps(reps[0] if len(reps) == 1 else reps, indent=2))
    else:
        print("\n".join(line for r in reps for line in format_text(r)))
    sys.stdout.flush()
    return 0


def register_calibrate(evsub: Any) -> None:
    p = evsub.add_parser(
        "calibrate", help="threshold for a target FPIR at a watchlist size, and false alerts "
        "per 10,000 faces"
    )
    p.add_argument("--scores", type=Path, metavar="NPZ",
                   help="a score set saved by `eval identify --save-scores`")
    add_search_args(p)
    p.add_argument("--fpir", type=float, default=0.001, help="target FPIR (default 0.001)")
    p.add_argument("--watchlist-size", required=True, metavar="N[,N...]",
                   help="watchlist parse_size(s) to calibrate for")
    p.add_argument("--reps", type=int, default=20, help="random sub-galleries per size")
    p.add_argument("--seed", type=int, default=0, help="seed for the sub-galleries")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.evaluation.calibrate import calibrate, format_text, parse_sizes
    from edge.evaluation.identify import ScoreSet

    sizes = parse_sizes(args.watchlist_size)
    if args.reps < 1:
        raise UsageError("--reps must be >= 1")
    if args.scores is not None:
        if args.lfw is not None or args.gallery is not None:
            raise UsageError("use either --scores or --lfw/--gallery, not both")
        ss = ScoreSet.load(args.scores)
    else:
        ss = score_searches(args, [args.fpir], probe_images(args, several=False),
                             several=False)[0][0]
    cals = [calibrate(ss, args.fpir, n, reps=args.reps, seed=args.seed) for n in sizes]
    if args.json:
        print(json.dumps({"label": ss.label, "calibrations": [c.to_dict() for c in cals]},
                         indent=2))
    else:
        print("\n".join(format_text(cals)))
    return 0


# --- detect ----------------------------------------------------------------------------------



def register_detect(evsub: Any) -> None:
    p = evsub.add_parser(
        "detect", help="detection recall by face width on a simulated clip (edge simulate)",
        description="Run a detector over every frame of CLIP and match its boxes with the "
        "truth file's faces (IoU >= 0.3): recall overall and by face width, false "
        "detections per 1,000 frames, ms per frame.",
    )
    p.add_argument("--video", type=Path, required=True, help="the clip (edge simulate --out)")
    p.add_argument("--truth", type=Path, required=True, help="its truth JSON")
    p.add_argument("--detector", action="append", default=None, metavar="NAME[@WxH]",
                   help="detector in the manifest, optionally with RetinaFace's input size "
                   "(repeatable; default retinaface_mnet025_int8@640x384)")
    p.add_argument("--detect-size", type=parse_size, default=None, metavar="WxH",
                   help="scale each frame to this size first, as a lores stream "
                   "(default: detect on the frame as it is)")
    p.add_argument("--score", type=float, default=None,
                   help="detector score threshold (default: the detector's own)")
    p.add_argument("--models-dir", type=Path, default=None, help="models directory")
    p.add_argument("--threads", type=int, default=2, help="TFLite threads (default 2)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--plot", type=Path, default=None, help="PNG: recall against face width")
    p.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_detect)


def run_detect(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.evaluation.detect_eval import evaluate, plot_recall
    from edge.evaluation.stream import Truth
    from edge.vision.detectors import make_detector
    from edge.vision.manifest import Manifest

    if not args.video.is_file():
        raise UsageError(f"{args.video}: no such video")
    truth = Truth.load(args.truth)
    manifest = Manifest.load(args.models_dir)
    reports = []
    for spec in args.detector or ["retinaface_mnet025_int8@640x384"]:
        name, _, size_text = spec.partition("@")
        size = parse_size(size_text) if size_text else None
        resolved, det = make_detector(manifest, name, threads=args.threads, input_size=size,
                                      min_score=args.score)
        label = resolved + (f"@{size[0]}x{size[1]}" if size else "")

        def run(image: Any, det: Any = det) -> Any:
            return det.detect(image)

        rep = evaluate(label, run, args.video, truth, detect_size=args.detect_size,
                       max_frames=args.max_frames, progress=not args.no_progress)
        reports.append(rep.to_dict())
    if args.plot:
        plot_recall(reports, args.plot)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        for r in reports:
            widths = "  ".join(f"{k} {v if v is not None else '-'}"
                               for k, v in r["by_width"].items())
            print(f"{r['detector']}: recall {r['recall']}  [{widths}]  false/1000 frames "
                  f"{r['false_per_1000_frames']}  {r['ms_per_frame']} ms/frame")
    sys.stdout.flush()
    return 0
