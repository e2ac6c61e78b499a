"""``edge simulate``: a synthetic deployment clip with ground truth (and its watchlist).

    edge simulate --images ../shared/data/lfw/images --out clip.mp4 --truth truth.json \\
        [--size 1280x720] [--fps 25] [--seconds 60] [--faces-per-frame 1-5] \\
        [--watchlisted 0.1] [--watchlist-size 20] [--seed N] [--subjects-out DIR] \\
        [--degrade] [--motion-blur] [--defocus] [--sensor-noise] [--exposure-drift] \\
        [--wobble] [--jpeg-quality Q] [--views N]

Writes the MP4 (mp4v), the truth JSON (every passer-by: identity, watchlisted
or not, frames, face box per frame; the watchlist and the images to enrol) and,
with ``--subjects-out``, one folder per subject in the layout
``edge watchlist build`` reads. Same seed, same clip. ``--degrade`` turns on every
camera effect (see :mod:`edge.evaluation.simulate_camera`); each has its own flag.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="make a synthetic deployment clip with ground truth",
        description="Compose passers-by (faces from an LFW-style folder) walking past a "
        "camera into an MP4, with a ground-truth JSON and optionally the watchlist's "
        "subject folders. Deterministic for a seed.",
    )
    p.add_argument("--images", type=Path, required=True,
                   help="LFW-style folder: one sub-folder of images per identity")
    p.add_argument("--out", type=Path, required=True, help="the MP4 to write")
    p.add_argument("--truth", type=Path, required=True, help="the ground-truth JSON to write")
    p.add_argument("--size", default="1280x720", help="frame size WxH (default 1280x720)")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second (default 25)")
    p.add_argument("--seconds", type=float, default=60.0, help="clip length (default 60)")
    p.add_argument("--faces-per-frame", default="1-5", metavar="MIN-MAX",
                   help="passers-by in view at once (default 1-5)")
    p.add_argument("--watchlisted", type=float, default=0.1,
                   help="share of passers-by who are on the watchlist (default 0.1)")
    p.add_argument("--watchlist-size", type=int, default=20,
                   help="subjects on the watchlist, including ones who never appear "
                   "(default 20; raised to cover every watchlisted passer-by)")
    p.add_argument("--max-enrol", type=int, default=3,
                   help="images enrolled per subject (default 3)")
    p.add_argument("--face-px", default="60-160", metavar="MIN-MAX",
                   help="face width range in pixels (default 60-160)")
    p.add_argument("--mask", choices=("ellipse", "tile"), default="ellipse",
                   help="cut faces out with a soft head ellipse, or show the whole tile")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--subjects-out", type=Path,
                   help="also write one folder per watchlist subject (enrol images + "
                   "subject.toml) for `edge watchlist build`")
    p.add_argument("--copy", action="store_true",
                   help="copy enrol images into --subjects-out instead of symlinking")
    p.add_argument("--check-enrolment", action="store_true",
                   help="enrol only reference images the device's enrolment accepts (one face, "
                   "quality gate), skipping identities left without one; needs the models")
    p.add_argument("--models", type=Path, default=None, help="models directory (with "
                   "--check-enrolment)")
    p.add_argument("--model", choices=("int8", "float32"), default="int8",
                   help="embedder precision for --check-enrolment (default int8)")
    g = p.add_argument_group("camera effects (all off unless --degrade or given; "
                             "--no-X turns one off under --degrade)")
    g.add_argument("--degrade", action="store_true",
                   help="a street that looks like one: every effect below on, --views 3, "
                   "--jpeg-quality 30")
    bool_opt = argparse.BooleanOptionalAction
    g.add_argument("--motion-blur", action=bool_opt, default=None,
                   help="blur each face along its motion (shutter 1/50 s)")
    g.add_argument("--defocus", action=bool_opt, default=None,
                   help="disc blur of the whole frame, focus drifting")
    g.add_argument("--sensor-noise", action=bool_opt, default=None,
                   help="shot and read noise, brightness-dependent")
    g.add_argument("--exposure-drift", action=bool_opt, default=None,
                   help="brightness and gamma drift (auto-exposure)")
    g.add_argument("--wobble", action=bool_opt, default=None,
                   help="slight in-plane rotation and scale wobble of each head")
    g.add_argument("--jpeg-quality", type=int, default=None, metavar="Q",
                   help="JPEG-encode/decode each frame at quality Q (1-100; 0 = off; "
                   "--degrade: 30, about what a 2 Mbit/s H.264 stream keeps), before "
                   "the MP4 writer's own compression")
    g.add_argument("--views", type=int, default=None,
                   help="distinct images of its identity a passer-by shows along the walk, "
                   "never an enrolled one (default 1; --degrade: 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.evaluation.simulate import (
        CameraConfig,
        SimConfig,
        enrolment_checker,
        frames_with_faces,
        parse_range,
        parse_size,
        simulate,
    )

    fmin, fmax = parse_range(args.face_px, "--face-px")
    if args.out.suffix.lower() != ".mp4":
        raise UsageError(f"--out {args.out}: must end in .mp4")
    cfg = SimConfig(
        size=parse_size(args.size),
        fps=args.fps,
        seconds=args.seconds,
        faces=parse_range(args.faces_per_frame, "--faces-per-frame"),
        watchlisted=args.watchlisted,
        seed=args.seed,
        face_px=(float(fmin), float(fmax)),
        watchlist_size=args.watchlist_size,
        max_enrol=args.max_enrol,
        mask=args.mask,
        views=args.views if args.views is not None else (3 if args.degrade else 1),
        camera=camera_config(args, CameraConfig),
    )
    cfg.check()
    enrol_ok = enrolment_checker(args.models, args.model) if args.check_enrolment else None
    truth = simulate(
        args.images, args.out, args.truth, cfg,
        subjects_out=args.subjects_out, copy=args.copy, progress=not args.quiet,
        enrol_ok=enrol_ok,
    )
    counts = frames_with_faces(truth)
    summary = {
        "clip": str(args.out),
        "truth": str(args.truth),
        "subjects": None if args.subjects_out is None else str(args.subjects_out),
        "frames": truth.frames,
        "fps": truth.fps,
        "size": list(truth.size),
        "passers_by": len(truth.tracks),
        "watchlisted_passers_by": len(truth.watchlisted_tracks),
        "watchlist_subjects": len(truth.watchlist),
        "faces_per_frame": {"min": min(counts), "max": max(counts),
                            "mean": round(sum(counts) / len(counts), 2)},
        "seed": truth.seed,
        "views": cfg.views,
        "camera": cfg.camera.to_dict(),
    }
    print(json.dumps(summary))
    return 0


def camera_config(args: argparse.Namespace, cls: Any) -> Any:
    """The CameraConfig the flags ask for: --degrade's defaults, each flag overriding."""
    on = bool(args.degrade)

    def pick(v: bool | None) -> bool:
        return on if v is None else bool(v)

    jpeg = args.jpeg_quality if args.jpeg_quality is not None else (30 if on else 0)
    return cls(
        motion_blur=pick(args.motion_blur), defocus=pick(args.defocus),
        noise=pick(args.sensor_noise), jpeg_quality=jpeg,
        exposure=pick(args.exposure_drift), wobble=pick(args.wobble),
    )
