"""``edge check-config [--config F] [--values-only]``: validate the configuration.

Prints ``ok`` and a short summary and exits 0, or prints one line per problem,
each naming the offending key, and exits 78 (``EX_CONFIG``). Unless ``--values-only``, the
summary ends with the camera sources this host can open (picamera2, ``/dev/video*``
through OpenCV): information, never a problem (a camera may be plugged in later).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from edge.commands import add_config_option
from edge.errors import ConfigError

if TYPE_CHECKING:
    from edge.service.config import Settings


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config",
        help="validate the configuration (exit 0, or 78 with one line per problem)",
        description="Validate the configuration file, EDGE_ environment variables and the "
        "files and credentials they name.",
    )
    add_config_option(parser)
    parser.add_argument(
        "--values-only",
        action="store_true",
        help="check values only, not that the referenced files and credentials exist",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.service.config import check_files, config_path, load_settings

    path = config_path(args.config)
    settings = load_settings(path)
    if not args.values_only:
        problems = check_files(settings)
        if problems:
            raise ConfigError(problems)
    lines = summary(settings, str(path))
    if not args.values_only:
        lines += cameras(settings.source.kind)
    for line in lines:
        print(line)
    return 0


def cameras(kind: str) -> list[str]:
    """The camera sources this host can open, and whether the configured kind is among them."""
    from edge.service.sources.probe import camera_report

    report = camera_report()
    lines = [f"  {'cameras' if i == 0 else '':<12} {line}" for i, line in enumerate(report)]
    if kind == "picamera2" and not report[0].startswith("picamera2: importable"):
        lines.append("  note         source.kind is picamera2, which cannot be opened here")
    return lines


def summary(settings: Settings, path: str) -> list[str]:
    """A few lines describing the settings; nothing secret (credentials by name only)."""
    s = settings
    src = s.source
    size = f"{src.size[0]}x{src.size[1]}"
    lores = f", detect on {src.lores_size[0]}x{src.lores_size[1]}" if src.lores_size else ""
    floors = ", ".join(f"{k} >= {v:.2f}" for k, v in sorted(s.recognition.threshold_floor.items()))
    tls = "mutual TLS" if s.mqtt.tls else "NO TLS (loopback only)"
    return [
        "ok",
        f"  config       {path}",
        f"  device       {s.device.id}, state {s.device.state_dir}, models {s.device.models_dir}",
        f"  source       {src.kind} {src.uri}, {size} @ {src.fps:g} fps{lores}",
        f"  detector     {s.detector.model}, score >= {s.detector.score_threshold:g}, "
        f"faces >= {s.detector.min_face_px} px",
        f"  recognition  {s.recognition.embedder} ({s.recognition.precision}), "
        f"{s.recognition.embeds_per_track} embeddings/track "
        f"(gain {s.recognition.min_quality_gain}, {s.recognition.embeds_per_frame}/frame), "
        f"floors {floors}",
        f"  watchlist    {s.bundle_path}, at most {s.watchlist.max_subjects} subjects",
        f"  mqtt         {s.mqtt.host}:{s.mqtt.port}, {tls}, topics {s.topic_root}/...",
        f"  retention    {s.retention.days} days",
    ]
