"""A looping clip the way a street is: the demo's clip with an empty stretch after it.

A file source that loops jumps from its last frame to its first. With a detector that
sees the demo's actor in every frame (RetinaFace), the tracker then follows one person
for ever and the once-per-track rule allows one alert in all: true to the rules, but not
what a demo or a durability test wants to see. Appending ``gap_frames`` frames of the
clip's background-free black (longer than the tracker's ``max_missed``) makes each loop a
new passer-by, as people on a street come and go.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

GAP_FRAMES = 15  # > IoUTracker's default max_missed (10)


def clip_with_gap(src: Path, out: Path, gap_frames: int = GAP_FRAMES) -> Path:
    """Write ``src`` followed by ``gap_frames`` black frames to ``out`` (MJPG AVI), once."""
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise ValueError(f"{src}: cannot open the clip")
    fps = cap.get(cv2.CAP_PROP_FPS) or 12.5
    frames: list[np.ndarray] = []
    while len(frames) < 100_000:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(frame[:, :, :3]))
    cap.release()
    if not frames:
        raise ValueError(f"{src}: no frames")
    h, w = frames[0].shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise ValueError("this OpenCV build cannot write MJPG")
    try:
        for f in frames:
            writer.write(f)
        black = np.zeros((h, w, 3), np.uint8)
        for _ in range(gap_frames):
            writer.write(black)
    finally:
        writer.release()
    tmp.replace(out)
    return out
