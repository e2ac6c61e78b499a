"""Which camera sources this host can open: for ``edge check-config`` (issue 22, item 3).

A Raspberry Pi reads its camera with picamera2 (libcamera, from Raspberry Pi OS's apt); a
Jetson running JetPack 6 (Ubuntu 22.04) has no picamera2 and reads USB/UVC cameras, or
CSI cameras that its kernel exposes as V4L2 devices, through OpenCV. ``camera_report``
says, one line each, whether picamera2 imports (and which cameras libcamera sees) and
which ``/dev/video*`` devices OpenCV's V4L2 backend opens. It only looks: nothing here is
a configuration problem (a camera may be plugged in later; the capture loop reopens), and
a device held by a running daemon is reported as not opening, with that as the likely
reason.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEV = Path("/dev")
_VIDEO_RE = re.compile(r"^video\d+$")


def picamera2_report(importer: Callable[[str], Any] = importlib.import_module) -> str:
    """``picamera2: ...``: importable or not (with the reason), and the cameras it lists."""
    try:
        module = importer("picamera2")
    except Exception as exc:  # an ImportError, or libcamera failing as it loads
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"picamera2: not importable ({reason})"
    try:
        cameras = list(module.Picamera2.global_camera_info())
    except Exception as exc:  # libcamera present but unusable here
        return f"picamera2: importable, but listing cameras failed ({type(exc).__name__})"
    if not cameras:
        return "picamera2: importable, no camera found by libcamera"
    names = ", ".join(
        f"{i}: {c.get('Model', '?')}" for i, c in enumerate(cameras) if isinstance(c, dict)
    )
    return f"picamera2: importable, {len(cameras)} camera(s) ({names})"


def video_devices(dev: Path = DEV) -> list[Path]:
    """``/dev/video*`` in numeric order."""
    try:
        found = [p for p in dev.iterdir() if _VIDEO_RE.match(p.name)]
    except OSError:
        return []
    return sorted(found, key=lambda p: int(p.name[5:]))


def v4l2_report(dev: Path = DEV) -> list[str]:
    """One line per ``/dev/video*``: whether OpenCV's V4L2 backend opens it (and its size)."""
    devices = video_devices(dev)
    if not devices:
        return [f"V4L2: no {dev}/video* device"]
    import cv2

    lines = []
    for path in devices:
        cap = cv2.VideoCapture(str(path), cv2.CAP_V4L2)
        try:
            if cap.isOpened():
                w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
                h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                lines.append(f"V4L2: {path} opens with OpenCV ({w}x{h})")
            else:
                lines.append(
                    f"V4L2: {path} does not open with OpenCV (not a capture device, "
                    "no permission, or in use)"
                )
        finally:
            cap.release()
    return lines


def camera_report(
    dev: Path = DEV, importer: Callable[[str], Any] = importlib.import_module
) -> list[str]:
    """Every camera source this host can (or cannot) open, one line each."""
    return [picamera2_report(importer), *v4l2_report(dev)]
