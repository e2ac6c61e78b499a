"""``edge bench --video CLIP [--truth truth.json] [--subjects DIR] [--realtime] --json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


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
    parser.add_argument("--embedder", default="dlib_resnet_v1", help="embedder name")
    parser.add_argument("--threshold", type=float, default=None,
                        help="match threshold, a similarity (default: the family's)")
    parser.add_argument("--realtime", action="store_true", help="pace at the clip's fps")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    parser.add_argument("--peer", action="store_true",
                        help="also run the face_recognition peer on the same clip and truth")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.bench import run_bench

    precision = "float32" if args.model in ("float", "float32") else "int8"
    result = run_bench(
        args.video, models_dir=args.models, precision=precision, embedder=args.embedder,
        subjects=args.subjects, truth=args.truth, threshold=args.threshold,
        realtime=args.realtime, max_frames=args.max_frames,
    )
    if args.peer:
        from edge.evaluation.peer import run_peer

        peer = run_peer(args.video, subjects=args.subjects, truth=args.truth,
                        max_frames=args.max_frames)
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
            print(f"  {stage:8s} p50 {pct['p50']} ms  p95 {pct['p95']} ms")
        if "accuracy" in edge:
            print("  accuracy " + json.dumps(edge["accuracy"]))
        if "peer" in result:
            print(f"peer fps {result['peer'].get('fps')}  ratio {result['fps_ratio']}x")
    return 0
