"""``edge bench --video CLIP [--truth truth.json] [--subjects DIR] [--realtime] --json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge.vision.defaults import DEFAULT_EMBEDDER, DLIB_EMBEDDER


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="run the real pipeline over a clip: fps, stage ms, latency, RSS, accuracy",
        description="Runs the daemon's pipeline over a clip flat out (or paced with "
        "--realtime), publishing alerts through the outbox to a local mosquitto with "
        "mutual TLS, and prints the figures. With --truth (from edge simulate) it also "
        "scores recall, false alerts and precision.",
    )
    parser.add_argument("--video", type=Path, required=True, help="the clip")
    parser.add_argument("--truth", type=Path, help="ground truth from edge simulate")
    parser.add_argument("--subjects", "--watchlist", dest="subjects", type=Path,
                        help="watchlist subjects folder (one folder per subject, subject.toml)")
    parser.add_argument("--models", type=Path, default=None, help="models directory")
    parser.add_argument("--model", choices=("int8", "float32", "float"), default="int8",
                        help="embedder precision (default int8)")
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                        help=f"embedder name (default {DEFAULT_EMBEDDER}; dlib: {DLIB_EMBEDDER})")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="flip-averaged embeddings (default: the embedder family's setting)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="match threshold, a similarity (default: the family's)")
    parser.add_argument("--realtime", action="store_true", help="pace at the clip's fps")
    parser.add_argument("--live", action="store_true",
                        help="as the daemon live: the clip paced as a camera through the "
                        "capture thread's latest-frame slot, alerts through the alert worker, "
                        "the outbox and signed publishing; prints per-stage p50/p95 from "
                        "capture to the control room")
    parser.add_argument("--legacy", action="store_true",
                        help="with --live: the path before issue 20 (a frame queue dropping "
                        "the oldest, alerts stored one by one on the inference thread)")
    parser.add_argument("--queue-frames", type=int, default=4,
                        help="with --legacy: the frame queue's size (default 4, the daemon's "
                        "old default)")
    parser.add_argument("--cooldown", type=float, default=None, metavar="S",
                        help="per-subject alert cooldown in seconds (default: the daemon's, "
                        "60; 0 alerts on every track)")
    parser.add_argument("--tiles", default="1x1", metavar="COLSxROWS",
                        help="also detect on overlapping tiles (as [detector] tiles; default 1x1)")
    parser.add_argument("--detector", default=None,
                        help="detector in the manifest (default: the daemon's, "
                        "retinaface_mnet025_int8)")
    parser.add_argument("--detector-input", default=None, metavar="WxH",
                        help="RetinaFace input size (default: the daemon's, 640x384)")
    parser.add_argument("--detect-size", default=None, metavar="WxH|full",
                        help="detect on a copy of each frame at this size, as the daemon's "
                        "lores stream (default: source.lores_size's default, 640x360); "
                        "'full' detects on the frame itself")
    parser.add_argument("--decision", choices=("template", "embedding"), default=None,
                        help="decide on track templates or single embeddings (default: the "
                        "daemon's, template)")
    parser.add_argument("--template-weight", choices=("quality", "size"), default=None,
                        help="a frame's weight in its track's template (default quality)")
    parser.add_argument("--template-min", type=int, default=None, metavar="K",
                        help="decide a track once its template holds K embeddings, or when "
                        "it ends (as [recognition] template_min_embeddings; default 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="a [quality] or [recognition] key as in edge.toml, for a policy "
                        "variant (repeatable; e.g. recognition.embeds_per_track=3)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    parser.add_argument("--peer", action="store_true",
                        help="also run the face_recognition peer on the same clip and truth")
    parser.add_argument("--peer-every", type=int, default=1,
                        help="the peer processes every Nth frame (its fps still counts frames "
                        "it processed; default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run_peer_subprocess(
    video: Path, subjects: Path | None, truth: Path | None, max_frames: int | None, every: int
) -> dict[str, Any]:
    """The face_recognition peer in its own process, so each side's peak RSS is its own."""
    import subprocess
    import sys

    from edge.errors import EdgeError

    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from edge.evaluation.peer import run_peer\n"
        "a = json.loads(sys.argv[1])\n"
        "p = lambda k: Path(a[k]) if a[k] else None\n"
        "r = run_peer(Path(a['video']), subjects=p('subjects'), truth=p('truth'),\n"
        "             max_frames=a['max_frames'], every=a['every'])\n"
        "print(json.dumps(r))\n"
    )
    spec = {"video": str(video), "subjects": str(subjects) if subjects else None,
            "truth": str(truth) if truth else None, "max_frames": max_frames, "every": every}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)],
                          stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise EdgeError(f"the face_recognition peer failed (exit {proc.returncode})")
    peer: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return peer


def _grid(text: str) -> tuple[int, int]:
    from edge.errors import UsageError

    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--tiles must look like 2x2, not {text!r}") from None
    if not (1 <= cols <= 4 and 1 <= rows <= 3):
        raise UsageError("--tiles: 1-4 columns by 1-3 rows")
    return cols, rows


def _wxh(text: str | None, flag: str) -> tuple[int, int] | None:
    from edge.errors import UsageError
    from edge.evaluation.simulate import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except Exception:
        raise UsageError(f"{flag} must look like 640x384, not {text!r}") from None


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["recognition.embeds_per_track=6", ...]`` as sections of keys; values are read as
    TOML values (``6``, ``0.25``, ``"size"``), a bare word as a string."""
    from edge.compat import tomllib
    from edge.errors import UsageError

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, text = item.partition("=")
        section, dot, key = target.strip().partition(".")
        if not (sep and dot and section and key):
            raise UsageError(f"--set must look like section.key=value, not {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out.setdefault(section, {})[key.strip()] = value
    return out


def run(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.evaluation.bench import run_bench

    if (args.legacy or args.queue_frames != 4) and not args.live:
        raise UsageError("--legacy and --queue-frames need --live")
    if not 1 <= args.queue_frames <= 64:
        raise UsageError("--queue-frames: 1 to 64")

    precision = "float32" if args.model in ("float", "float32") else "int8"
    detect_size: tuple[int, int] | str | None = "default"
    if args.detect_size == "full":
        detect_size = None
    elif args.detect_size is not None:
        detect_size = _wxh(args.detect_size, "--detect-size")
    result = run_bench(
        args.video, models_dir=args.models, precision=precision, embedder=args.embedder,
        subjects=args.subjects, truth=args.truth, threshold=args.threshold,
        realtime=args.realtime, max_frames=args.max_frames, tiles=_grid(args.tiles),
        detector=args.detector, detector_input=_wxh(args.detector_input, "--detector-input"),
        detect_size=detect_size, decision=args.decision, template_weight=args.template_weight,
        template_min=args.template_min, flip=args.flip,
        overrides=parse_overrides(args.overrides), live=args.live, legacy=args.legacy,
        queue_frames=args.queue_frames, cooldown_s=args.cooldown,
    )
    if args.peer:
        peer = run_peer_subprocess(args.video, args.subjects, args.truth, args.max_frames,
                                   args.peer_every)
        result = {"edge": result, "peer": peer,
                  "fps_ratio": round(result["fps"] / peer["fps"], 2)
                  if result.get("fps") and peer.get("fps") else None}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        edge = result.get("edge", result)
        print(f"fps {edge['fps']}  frames {edge['frames']}  alerts {edge['alerts']}  "
              f"latency p95 {edge['latency_ms']['p95']} ms  peak RSS {edge['peak_rss_mb']} MB")
        for stage, pct in edge["stage_ms"].items():
            if pct["p50"] is not None:
                print(f"  {stage:8s} p50 {pct['p50']} ms  p95 {pct['p95']} ms")
        if "live" in edge:
            lv = edge["live"]
            print(f"  live{' (legacy)' if lv['legacy'] else ''}: "
                  f"{lv['alerts_per_minute']} alerts/min, frames dropped "
                  f"{lv['frames_dropped']}, load {edge['load_average']}")
            for group in ("frame_ms", "alert_ms"):
                for stage, pct in lv[group].items():
                    print(f"    {stage:20s} p50 {pct['p50']} ms  p95 {pct['p95']} ms")
        if "accuracy" in edge:
            print("  accuracy " + json.dumps(edge["accuracy"]))
        if "peer" in result:
            print(f"peer fps {result['peer'].get('fps')}  ratio {result['fps_ratio']}x")
    return 0
