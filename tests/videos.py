"""Small media files written by tests (never committed): a video whose frames say their index."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

STEP = 20  # brightness step between frames


def write_video(
    path: Path, frames: int = 10, size: tuple[int, int] = (64, 48), fps: float = 10.0
) -> Path:
    """An MJPG AVI whose frame i is a flat grey of level ``10 + STEP * i``."""
    if 10 + STEP * (frames - 1) > 255:
        raise ValueError("too many frames for distinct grey levels")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise RuntimeError("this OpenCV build cannot write MJPG")
    try:
        for i in range(frames):
            writer.write(np.full((size[1], size[0], 3), 10 + STEP * i, np.uint8))
    finally:
        writer.release()
    return path


def frame_number(image: np.ndarray, first_level: float) -> int:
    """Which frame of :func:`write_video` ``image`` is, given frame 0's mean level."""
    return round((float(image.mean()) - first_level) / STEP)
