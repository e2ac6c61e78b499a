"""``edge eval verify``: 1:1 verification on LFW-format pairs with the device pipeline.

Each distinct image is read and embedded once (cached by path in memory).
Face choice on an image (LFW's labelled face is the centred one):

1. detections at the detector's operating threshold: the one whose box centre
   is nearest the image centre;
2. none: counted in ``failed_to_detect``; retry at ``fallback_min_score``
   (0.3) and take the most central;
3. still none: a fixed central box (the median LFW detection box, scaled to
   the image) with mean keypoints, then the usual landmarks and alignment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
import numpy.typing as npt

from edge.errors import UsageError
from edge.evaluation.metrics import verification_report
from edge.evaluation.pairs import PairList
from edge.progress import Progress
from edge.types import Detection, ImageU8
from edge.vision.faces import FaceEngine

METRIC_NAMES = {
    "euclidean": "similarity = 1 - euclidean distance",
    "cosine": "similarity = cosine",
}

# Median full-range BlazeFace box on 250x250 LFW deep-funneled, as fractions.
FIXED_BOX = (0.2748, 0.3096, 0.724, 0.7548)


@dataclass(slots=True)
class Timings:
    detect: float = 0.0
    align: float = 0.0
    embed: float = 0.0
    images: int = 0

    def as_ms(self) -> dict[str, float]:
        n = max(1, self.images)
        return {
            "detect_ms": round(1000 * self.detect / n, 2),
            "landmarks_align_ms": round(1000 * self.align / n, 2),
            "embed_ms": round(1000 * self.embed / n, 2),
        }


def _central(dets: list[Detection], w: int, h: int) -> Detection:
    cx, cy = w / 2.0, h / 2.0
    return min(
        dets,
        key=lambda d: ((d.box[0] + d.box[2]) / 2 - cx) ** 2 + ((d.box[1] + d.box[3]) / 2 - cy) ** 2,
    )


def read_image(path: Path, where: str = "") -> ImageU8:
    """BGR image or a UsageError naming the file (and the pairs line)."""
    suffix = f" ({where})" if where else ""
    if not path.is_file():
        raise UsageError(f"{path}: image not found{suffix}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise UsageError(f"{path}: cannot decode image{suffix}")
    return np.asarray(img, dtype=np.uint8)


class VerifyRun:
    """Embeds images through a FaceEngine with the fallback policy above."""

    def __init__(self, engine: FaceEngine, fallback_min_score: float = 0.3) -> None:
        self.engine = engine
        self.fallback_min_score = fallback_min_score
        self.cache: dict[Path, npt.NDArray[np.float32]] = {}
        self.failed_to_detect = 0
        self.fallback_low_score = 0
        self.fallback_fixed_box = 0
        self.timings = Timings()

    def embedding(self, path: Path, where: str = "") -> npt.NDArray[np.float32]:
        hit = self.cache.get(path)
        if hit is not None:
            return hit
        img = read_image(path, where)
        h, w = img.shape[:2]
        t0 = time.perf_counter()
        dets = self.engine.detect(img)
        if not dets:
            self.failed_to_detect += 1
            dets = self.engine.detect(img, self.fallback_min_score)
            if dets:
                self.fallback_low_score += 1
        if dets:
            det = _central(dets, w, h)
        else:
            self.fallback_fixed_box += 1
            fx0, fy0, fx1, fy1 = FIXED_BOX
            det = FaceEngine.detection_from_box((fx0 * w, fy0 * h, fx1 * w, fy1 * h))
        t1 = time.perf_counter()
        chip = self.engine.align(img, det)
        t2 = time.perf_counter()
        emb: npt.NDArray[np.float32] = self.engine.embed([chip])[0]
        t3 = time.perf_counter()
        self.timings.detect += t1 - t0
        self.timings.align += t2 - t1
        self.timings.embed += t3 - t2
        self.timings.images += 1
        self.cache[path] = emb
        return emb


def check_images(pairs: PairList) -> None:
    """Fail fast, before any model work, on the first missing image."""
    for p in pairs.pairs:
        for img in (p.a, p.b):
            if not img.is_file():
                raise UsageError(f"{img}: image not found (pairs line {p.line})")


def verify(
    engine: FaceEngine, pairs: PairList, *, progress: bool = True, stream: TextIO | None = None
) -> dict[str, object]:
    check_images(pairs)
    run = VerifyRun(engine)
    images = pairs.images()
    where: dict[Path, str] = {}
    for p in pairs.pairs:
        where.setdefault(p.a, f"pairs line {p.line}")
        where.setdefault(p.b, f"pairs line {p.line}")
    t0 = time.perf_counter()
    with Progress(len(images), "verify", stream=stream, enabled=progress) as bar:
        for path in images:
            run.embedding(path, where[path])
            bar.advance()
    elapsed = time.perf_counter() - t0
    scores = np.array(
        [engine.score(run.cache[p.a], run.cache[p.b]) for p in pairs.pairs], dtype=np.float64
    )
    same = np.array([p.same for p in pairs.pairs], dtype=bool)
    folds = np.array([p.fold for p in pairs.pairs], dtype=np.int64)
    report = verification_report(scores, same, folds)
    fam = engine.family
    report.update(
        {
            "pairs": len(pairs.pairs),
            "images": len(images),
            "failed_to_detect": run.failed_to_detect,
            "fallback_low_score": run.fallback_low_score,
            "fallback_fixed_box": run.fallback_fixed_box,
            f"accuracy_at_{fam.threshold}": round(
                float(np.mean((scores >= fam.threshold) == same)), 6
            ),
            "metric": METRIC_NAMES[fam.metric],
            "models": dict(engine.model_info),
            "seconds": round(elapsed, 1),
            **run.timings.as_ms(),
        }
    )
    return report
