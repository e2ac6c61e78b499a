"""``edge eval demographics``: false match and miss rates per demographic group.

Registered by :mod:`edge.commands.eval`, whose search and model options it shares: the
faces are embedded once and scored as ``edge eval identify`` scores them (or a score set it
saved is read), then :mod:`edge.evaluation.demographics` measures the rates per group of a
label file at one operating point and over a sweep of thresholds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from edge.commands.eval import (
    _add_model_args,
    _add_search_args,
    _probe_images,
    _score_searches,
)


def register_demographics(evsub: Any) -> None:
    p = evsub.add_parser(
        "demographics",
        help="false match and miss rates per demographic group, with intervals, and the "
        "threshold from which the differences are no longer significant",
        description="Per group of a label file (identity<TAB>group): FMR within and across "
        "groups, FNMR, FPIR and FNIR at one threshold with 95 % intervals (a bootstrap over "
        "identities for pairs, Clopper-Pearson for searches), the max/min ratios, and a "
        "sweep of thresholds (docs/fairness.md).",
    )
    p.add_argument("--labels", type=Path, required=True, metavar="FILE",
                   help="identity<TAB>group per line (# comments); identities without a "
                   "label are left out and counted")
    p.add_argument("--scores", type=Path, metavar="NPZ",
                   help="a score set saved by `eval identify --save-scores` or "
                   "--save-scores here, instead of embedding images")
    p.add_argument("--save-scores", type=Path, metavar="NPZ",
                   help="save the probe x gallery scores (no embeddings) to re-run quickly")
    _add_search_args(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="the operating threshold (similarity)")
    p.add_argument("--watchlist-size", type=int, default=None, metavar="N",
                   help="or the threshold `edge eval calibrate` gives for N subjects at --fpir")
    p.add_argument("--fpir", type=float, default=0.001,
                   help="target FPIR with --watchlist-size (default 0.001)")
    p.add_argument("--sweep", default=None, metavar="FROM:TO:STEP",
                   help="thresholds to sweep (default: from a pooled FMR of 1%% to above the "
                   "highest impostor score, in steps of 0.01)")
    p.add_argument("--reps", type=int, default=1000,
                   help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--min-identities", type=int, default=10, metavar="K",
                   help="a group (or a side of a pair cell) from fewer identities gets no "
                   "interval and stays out of the ratios (default 10)")
    p.add_argument("--plot", type=Path, help="PNG: FMR and FNIR per group against threshold")
    p.add_argument("--record-manifest", action="store_true",
                   help="write the figures into the embedder's manifest entry "
                   "(measured.demographics; `edge watchlist build` warns below them)")
    p.add_argument("--label", help="run label (default: embedder and precision)")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_demographics)


def _check_args(args: argparse.Namespace) -> None:
    from edge.errors import UsageError

    if (args.threshold is None) == (args.watchlist_size is None):
        raise UsageError("say the operating point: --threshold T, or --watchlist-size N "
                         "(with --fpir F, default 0.001)")
    if args.watchlist_size is not None and args.watchlist_size < 1:
        raise UsageError("--watchlist-size must be at least 1")
    if not 0.0 < args.fpir < 1.0:
        raise UsageError(f"--fpir {args.fpir}: must be between 0 and 1")
    if args.reps < 100:
        raise UsageError("--reps must be at least 100 for a 95 % bootstrap interval")
    if args.min_identities < 2:
        raise UsageError("--min-identities must be at least 2")
    if args.scores is not None and (args.lfw is not None or args.gallery is not None):
        raise UsageError("use either --scores or --lfw/--gallery, not both")
    if args.scores is not None and args.save_scores is not None:
        raise UsageError("--save-scores is for a run that embeds images (not with --scores)")


def run_demographics(args: argparse.Namespace) -> int:
    from edge.evaluation.demographics import load_labels, measure_all, population
    from edge.evaluation.demographics_report import auto_sweep, format_text, parse_sweep, report
    from edge.evaluation.identify import ScoreSet, point_at
    from edge.progress import Progress

    _check_args(args)
    labels = load_labels(args.labels)
    sweep = parse_sweep(args.sweep) if args.sweep else None
    protocol = ""
    if args.scores is not None:
        ss = ScoreSet.load(args.scores)
        protocol = f"scores {args.scores}"
    else:
        ss, rep = _score_searches(args, [args.fpir], _probe_images(args, several=False),
                                  several=False)[0]
        protocol = rep["protocol"]
        if args.save_scores is not None:
            ss.save(args.save_scores)
    pop = population(ss, labels)  # before the calibration: fails fast on bad labels
    operating: dict[str, Any]
    if args.threshold is not None:
        threshold = float(args.threshold)
        operating = {"source": "given"}
    else:
        from edge.evaluation.calibrate import calibrate

        cal = calibrate(ss, args.fpir, args.watchlist_size)
        threshold = cal.threshold
        operating = {"source": "calibrated", "calibration": cal.to_dict()}
    if ss.n_non_mated:
        operating["everyone"] = point_at(ss, threshold).to_dict()
    if sweep is None:
        sweep = auto_sweep(pop)
    cells = len(pop.groups) ** 2 + 3 * len(pop.groups)
    with Progress(cells, "bootstrap", enabled=not args.no_progress) as bar:
        meas = measure_all(pop, [*sweep, threshold], reps=args.reps, seed=args.seed,
                           progress=bar.advance)
    out = report(meas, threshold, sweep, min_identities=args.min_identities, seed=args.seed,
                 operating=operating, labels_file=str(args.labels))
    out["protocol"] = protocol
    if args.save_scores is not None:
        out["scores_file"] = str(args.save_scores)
    if args.plot is not None:
        from edge.evaluation.demographics_plot import plot_demographics

        plot_demographics(out, args.plot)
        out["plot"] = str(args.plot)
    if args.record_manifest:
        out["manifest"] = str(_record(args, out))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(format_text(out)))
        if "manifest" in out:
            print(f"recorded in {out['manifest']} "
                  f"({out['model'].get('embedder', '?')}: measured.demographics)")
    sys.stdout.flush()
    return 0


def _command_line(args: argparse.Namespace, flip: bool) -> str:
    """The command as it could be re-run: the options that were given, and the embedder,
    its precision and flip always (defaults change; the record must not)."""
    parts = ["edge eval demographics", f"--labels {args.labels}"]
    for opt in ("scores", "lfw", "gallery", "probes", "face", "probe_images", "gallery_images",
                "reference", "holdout", "threshold", "watchlist_size", "sweep",
                "models_dir", "embedder", "landmarks", "detector", "detector_input"):
        v = getattr(args, opt, None)
        if v is not None:
            if isinstance(v, tuple):
                v = "x".join(str(x) for x in v)
            parts.append(f"--{opt.replace('_', '-')} {v}")
    if args.watchlist_size is not None:
        parts.append(f"--fpir {args.fpir:g}")
    parts.append(f"--model {args.model}")
    parts.append("--flip" if flip else "--no-flip")
    if args.no_fallback:
        parts.append("--no-fallback")
    for opt, default in (("reps", 1000), ("seed", 0), ("min_identities", 10)):
        if getattr(args, opt) != default:
            parts.append(f"--{opt.replace('_', '-')} {getattr(args, opt)}")
    return " ".join([*parts, "--record-manifest"])


def _data(args: argparse.Namespace, protocol: str) -> str:
    if args.lfw is not None:
        return f"{protocol}: {args.lfw}"
    if args.gallery is not None:
        return f"{protocol}: gallery {args.gallery}, probes {args.probes}"
    return protocol


def _record(args: argparse.Namespace, out: dict[str, Any]) -> Path:
    """``measured.demographics`` of the embedder that made the scores."""
    from edge.errors import UsageError
    from edge.vision.embed import embedder_identity
    from edge.vision.manifest import Manifest, record_measurement

    model = out["model"]
    name = model.get("embedder")
    if not name:
        raise UsageError("--record-manifest: the score set does not say which embedder made it")
    entry = Manifest.load(args.models_dir).entry(name)
    flip = model.get("flip") == "on"
    if model.get("embedder_sha256") != embedder_identity(entry.sha256, flip):
        raise UsageError(f"--record-manifest: the scores were made with another {name} file "
                         "than the one in this manifest")
    sw, op = out["sweep"], out["operating_point"]
    record = {
        "threshold_free_of_significant_differences": sw["not_significant_from"],
        "lowest_threshold_not_significant": sw["lowest_not_significant"],
        "ratio_at_most_1_5_from": sw["ratio_at_most_1_5_from"],
        "swept": [sw["thresholds"][0], sw["thresholds"][-1]] if sw["thresholds"] else None,
        "embedder_sha256": model["embedder_sha256"],
        "flip": flip,
        "labels": str(args.labels),
        "groups": {g: v["identities"] for g, v in out["groups"].items()},
        "data": _data(args, out["protocol"]),
        "operating_point": {
            "threshold": op["threshold"],
            "source": op["source"],
            **({"watchlist_size": op["calibration"]["watchlist_size"],
                "fpir_target": op["calibration"]["fpir_target"]}
               if op["source"] == "calibrated" else {}),
            "fmr": {g: v["fmr"]["rate"] for g, v in out["groups"].items()},
            "fnir": {g: v["fnir"]["rate"] for g, v in out["groups"].items()},
            "fmr_ratio": out["ratios"]["fmr"],
            "fnir_ratio": out["ratios"]["fnir"],
        },
        "intervals": "95 %: bootstrap over identities (FMR, FNMR, ratios), Clopper-Pearson "
                     "(FPIR, FNIR); docs/fairness.md",
        "command": _command_line(args, flip),
        "date": dt.date.today().isoformat(),
    }
    if sw.get("note"):
        record["note"] = sw["note"]
    return record_measurement(args.models_dir, name, "demographics", record)
