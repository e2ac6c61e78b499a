"""dlib's own pipeline on the LFW open-set 1:N protocol, as a reference for ``edge eval identify``.

HOG detector (1x upsample) -> the detection nearest the image centre, or the
fixed box (67, 80)-(175, 187) when none is found (as benchmarks/dlib_pipeline.py)
-> dlib's 5-point shape predictor -> ResNet descriptor, score = 1 - distance.
Same protocol, metrics and JSON as ``edge eval identify --lfw``; ``--save-scores``
writes a score set that ``edge eval identify --scores/--plot-scores`` and
``edge eval calibrate --scores`` read.

    nice -n 10 .venv/bin/python benchmarks/dlib_identify.py \\
        --lfw ../shared/data/lfw/images --save-scores /tmp/lfw_dlib.npz --json
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

from edge.evaluation.identify import (
    DEFAULT_FPIRS,
    ScoreSet,
    format_text,
    lfw_sets,
    report,
    subject_scores,
)
from edge.progress import Progress
from edge.vision.families import similarity_matrix

FIXED_BOX = (67, 80, 175, 187)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, required=True)
    ap.add_argument("--save-scores", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    sets = lfw_sets(args.lfw)
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    rec = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
    gallery_ids = tuple(sets.gallery)
    tpl = [sets.gallery[s][0] for s in gallery_ids]
    paths = tpl + [p.path for p in sets.probes]
    emb = np.zeros((len(paths), 128), dtype=np.float32)
    no_face = 0
    t0 = time.perf_counter()
    with Progress(len(paths), "dlib") as bar:
        for i, path in enumerate(paths):
            img = dlib.load_rgb_image(str(path))
            h, w = img.shape[:2]
            rects = det(img, 1)
            if rects:
                r = min(rects, key=lambda r: (r.center().x - w / 2) ** 2
                        + (r.center().y - h / 2) ** 2)
            else:
                no_face += 1
                r = dlib.rectangle(*FIXED_BOX)
            emb[i] = np.array(rec.compute_face_descriptor(img, sp(img, r)), dtype=np.float32)
            bar.advance()
    seconds = time.perf_counter() - t0
    g = len(tpl)
    sims = similarity_matrix(emb[g:], emb[:g], "euclidean")
    ss = ScoreSet(
        scores=subject_scores(sims, np.arange(g, dtype=np.int64), g),
        mate=np.array([gallery_ids.index(p.identity) if p.identity in sets.gallery else -1
                       for p in sets.probes], dtype=np.int64),
        gallery_ids=gallery_ids,
        label="dlib reference (HOG + 5-point + ResNet)",
        metric="euclidean",
        gallery_images=g,
        info={"pipeline": "dlib HOG + shape_predictor_5 + resnet_v1", "family_threshold": "0.4"},
    )
    rep = report(ss, DEFAULT_FPIRS)
    rep["hog_no_face_fixed_box"] = no_face
    rep["seconds"] = round(seconds, 1)
    if args.save_scores:
        ss.save(args.save_scores)
    print(json.dumps(rep, indent=2) if args.json else "\n".join(format_text(rep)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
