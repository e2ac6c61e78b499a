"""Detection recall on a simulated clip: ``edge eval detect``.

Each frame of the clip is read as the daemon would see it (optionally first scaled to the
detect size, like a lores stream), the detector runs, and its boxes are matched one to one
with the truth file's face boxes, highest IoU first, a pair counting at IoU >= 0.3 (the
truth box is LFW's HOG face box, tighter than either detector's). Recall is given overall
and by the truth face's width; a detection matching no truth face is a false detection.
Milliseconds per frame cover the detector call (and the scaling to the detect size).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import UsageError
from edge.evaluation.stream import Box, Truth
from edge.progress import Progress
from edge.types import Detection, ImageU8

MATCH_IOU = 0.3
BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("<45", 0.0, 45.0),
    ("45-60", 45.0, 60.0),
    ("60-80", 60.0, 80.0),
    ("80-100", 80.0, 100.0),
    ("100-130", 100.0, 130.0),
    (">=130", 130.0, math.inf),
)

DetectFn = Callable[[ImageU8], list[Detection]]


def bucket_of(width: float) -> str:
    for name, lo, hi in BUCKETS:
        if lo <= width < hi:
            return name
    return BUCKETS[-1][0]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(truth: Sequence[Box], found: Sequence[Box]) -> tuple[list[bool], int]:
    """Which truth boxes were found (one-to-one, best IoU first), and the unmatched count."""
    pairs = sorted(
        ((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)),
        reverse=True,
    )
    hit = [False] * len(truth)
    used = [False] * len(found)
    for v, i, j in pairs:
        if v < MATCH_IOU:
            break
        if not hit[i] and not used[j]:
            hit[i] = used[j] = True
    return hit, used.count(False)


@dataclass
class DetectReport:
    detector: str
    frames: int = 0
    faces: int = 0
    found: int = 0
    false: int = 0
    seconds: float = 0.0
    by_width: dict[str, list[int]] = field(
        default_factory=lambda: {name: [0, 0] for name, _, _ in BUCKETS}
    )  # bucket -> [found, total]
    band_40_60: list[int] = field(default_factory=lambda: [0, 0])  # the 40-60 px target

    def add(self, widths: Sequence[float], hit: Sequence[bool], false: int, dt: float) -> None:
        self.frames += 1
        self.faces += len(widths)
        self.found += sum(hit)
        self.false += false
        self.seconds += dt
        for w, h in zip(widths, hit, strict=True):
            b = self.by_width[bucket_of(w)]
            b[0] += int(h)
            b[1] += 1
            if 40.0 <= w < 60.0:
                self.band_40_60[0] += int(h)
                self.band_40_60[1] += 1

    def _recall_from(self, lo: float) -> float | None:
        found = sum(f for (name, b_lo, _), (f, _n) in zip(BUCKETS, self.by_width.values(),
                                                          strict=True) if b_lo >= lo)
        total = sum(n for (name, b_lo, _), (_f, n) in zip(BUCKETS, self.by_width.values(),
                                                          strict=True) if b_lo >= lo)
        return round(found / total, 4) if total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "recall": round(self.found / self.faces, 4) if self.faces else None,
            "by_width": {k: (round(f / n, 4) if n else None) for k, (f, n) in
                         self.by_width.items()},
            "recall_40_60": (round(self.band_40_60[0] / self.band_40_60[1], 4)
                             if self.band_40_60[1] else None),
            "recall_ge_60": self._recall_from(60.0),
            "false_per_1000_frames": round(1000.0 * self.false / max(self.frames, 1), 3),
            "ms_per_frame": round(1000.0 * self.seconds / max(self.frames, 1), 2),
            "frames": self.frames,
            "faces": self.faces,
            "false_detections": self.false,
            "faces_by_width": {k: n for k, (_, n) in self.by_width.items()},
        }


def evaluate(
    name: str,
    detect: DetectFn,
    video: Path,
    truth: Truth,
    *,
    detect_size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    progress: bool = True,
) -> DetectReport:
    """Run ``detect`` over every frame of ``video`` and score it against ``truth``."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise UsageError(f"{video}: cannot open the video")
    total = truth.frames if max_frames is None else min(truth.frames, max_frames)
    report = DetectReport(name)
    try:
        with Progress(total, f"detect {name}", enabled=progress) as bar:
            for f in range(total):
                ok, frame = cap.read()
                if not ok:
                    break
                image = np.ascontiguousarray(frame, dtype=np.uint8)
                t0 = time.perf_counter()
                if detect_size is not None and detect_size != image.shape[1::-1]:
                    small = cv2.resize(image, detect_size, interpolation=cv2.INTER_AREA)
                    sx, sy = image.shape[1] / detect_size[0], image.shape[0] / detect_size[1]
                    dets = detect(np.asarray(small, dtype=np.uint8))
                    boxes = [(d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy)
                             for d in dets]
                else:
                    boxes = [d.box for d in detect(image)]
                dt = time.perf_counter() - t0
                gt = [b for t in truth.tracks if (b := t.box_at(f)) is not None]
                hit, false = match(gt, boxes)
                report.add([b[2] - b[0] for b in gt], hit, false, dt)
                bar.advance()
    finally:
        cap.release()
    if report.frames == 0:
        raise UsageError(f"{video}: no frames could be read")
    return report


def plot_recall(reports: Sequence[dict[str, Any]], out: Path) -> Path:
    """Recall against face width, one line per detector (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install 'lfr-edge[eval]')") from None
    names = [b for b, _, _ in BUCKETS]
    fig, ax = plt.subplots(figsize=(7.0, 4.5), dpi=120)
    for r in reports:
        ys = [r["by_width"][b] if r["by_width"][b] is not None else np.nan for b in names]
        ax.plot(range(len(names)), ys, marker="o",
                label=f"{r['detector']} ({r['ms_per_frame']:.1f} ms/frame)")
    ax.set_xticks(range(len(names)), [f"{b} px" for b in names])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("face width in the 1280x720 frame")
    ax.set_ylabel("recall (IoU >= 0.3)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Detection recall by face width")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
