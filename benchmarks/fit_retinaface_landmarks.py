"""Fit RetinaFace's five points onto dlib's 5-point predictor; compare with the mesh.

The same training faces as ``benchmarks/fit_landmarks.py`` (one image of each LFW
identity that is not in the evaluation pairs, plus the shared photos), the same targets
(dlib HOG 1x + ``shape_predictor_5_face_landmarks``), the same seeded 80/20 split and
error (per-point distance / dlib's inter-ocular distance). RetinaFace's detection that
overlaps dlib's box best (IoU >= 0.3) gives the five points and the mesh ROI. Reports,
held out: the ridge regression from RetinaFace's points, and the face mesh (with its
existing regression, ``edge/vision/landmark_fit.py``) run on the RetinaFace detection.
Writes ``edge/vision/landmark_fit_retina.py``.

    nice -n 10 .venv/bin/python -m benchmarks.fit_retinaface_landmarks \
        --detector models/retinaface_mnet025_float32.tflite \
        --mesh models/face_landmark_float32.tflite
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import dlib
import face_recognition_models
import numpy as np

from benchmarks.fit_landmarks import SHARED, iou, nme, ridge, training_images, weight_rows
from edge.vision import landmark_fit
from edge.vision.landmarks import (
    MeshLandmarker,
    _weights,
    eye_frame,
    from_frame,
    mesh_features,
    to_frame,
)
from edge.vision.retinaface import RetinaFaceDetector

ROOT = Path(__file__).resolve().parents[1]


def retina_features(p5: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, float]]:
    frame = eye_frame(p5[0], p5[1])
    return np.concatenate([to_frame(p5, *frame).ravel(), [1.0]]), frame


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", type=Path, required=True)
    ap.add_argument("--mesh", type=Path, required=True)
    ap.add_argument("--input", default="640x384")
    ap.add_argument("--images", type=Path, default=SHARED / "lfw" / "images")
    ap.add_argument("--pairs", type=Path, default=SHARED / "lfw" / "pairs.txt")
    ap.add_argument("--mesh-scale", type=float, default=MeshLandmarker.SCALE,
                    help="side of the mesh's square crop / the detection's longer side")
    ap.add_argument("--max-faces", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path,
                    default=ROOT / "edge" / "vision" / "landmark_fit_retina.py")
    args = ap.parse_args()
    w_in, h_in = (int(v) for v in args.input.split("x"))

    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    det = RetinaFaceDetector(args.detector, threads=2, input_size=(w_in, h_in))
    mesh = MeshLandmarker(args.mesh, threads=1, regress=True)
    mesh.scale = args.mesh_scale
    wmesh = _weights(landmark_fit.MESH_WEIGHTS, 37)
    files = training_images(args.pairs, args.images, args.max_faces, args.seed)
    fr, tr_, mesh_pred, fm, tm = [], [], [], [], []
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        img = cv2.imread(str(f))
        if img is None:
            continue
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        dets = det.detect(img)
        for r in hog(rgb, 1):
            box = (r.left(), r.top(), r.right(), r.bottom())
            best = max(dets, key=lambda d: iou(box, d.box), default=None)
            if best is None or iou(box, best.box) < 0.3 or best.points5 is None:
                continue
            target = np.array([[p.x, p.y] for p in sp(rgb, r).parts()], dtype=np.float64)
            x, frame = retina_features(np.asarray(best.points5, np.float64))
            fr.append(x)
            tr_.append(to_frame(target, *frame).ravel())
            m = mesh.mesh(img, best)
            xm, frame_m = mesh_features(m)
            pm = (xm @ wmesh).reshape(-1, 2)
            img_pts = from_frame(pm, *frame_m)  # the mesh's dlib points, image px
            fm.append(xm)
            tm.append(to_frame(target, *frame_m).ravel())
            mesh_pred.append(to_frame(img_pts, *frame).ravel())
        if i % 50 == 0:
            print(f"\rfit: {i + 1}/{len(files)} images, {len(fr)} faces", end="", file=sys.stderr)
    print(file=sys.stderr)
    n = len(fr)
    perm = np.random.default_rng(args.seed).permutation(n)
    ntr = int(0.8 * n)
    tr, te = perm[:ntr], perm[ntr:]
    x_, y_ = np.array(fr), np.array(tr_)
    w = ridge(x_[tr], y_[tr], 1e-3)

    er = nme(x_[te] @ w, y_[te])
    em = nme(np.array(mesh_pred)[te], y_[te])
    xm_, ym_ = np.array(fm), np.array(tm)
    wm = ridge(xm_[tr], ym_[tr], 1e-3)
    emr = nme(xm_[te] @ wm, ym_[te])
    figures = {
        "faces": n, "train": int(ntr), "test": int(n - ntr), "seed": args.seed,
        "input": args.input,
        "retina_regression_nme": round(er[0], 4),
        "retina_regression_nme_p95": round(er[1], 4),
        "mesh_on_retina_box_nme": round(em[0], 4),
        "mesh_on_retina_box_nme_p95": round(em[1], 4),
        "mesh_scale": args.mesh_scale,
        "mesh_refit_on_retina_box_nme": round(emr[0], 4),
        "mesh_refit_on_retina_box_nme_p95": round(emr[1], 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(figures, indent=2))

    args.out.write_text(
        '"""Fitted regression from RetinaFace\'s five points to dlib\'s five (written by\n'
        "benchmarks/fit_retinaface_landmarks.py; do not edit). Figures (normalised mean error,\n"
        "inter-ocular units, held-out 20%):\n\n"
        + "".join(f"    {k}: {v}\n" for k, v in figures.items())
        + '"""\n\n'
        + "FIGURES: dict[str, float | str] = {\n"
        + "".join(f"    {json.dumps(k)}: {json.dumps(v)},\n" for k, v in figures.items())
        + "}\n\n"
        + f"RETINA_WEIGHTS: tuple[tuple[float, ...], ...] = {weight_rows(w)}\n\n"
        + f"MESH_SCALE = {args.mesh_scale}\n\n"
        + f"MESH_ON_RETINA_WEIGHTS: tuple[tuple[float, ...], ...] = {weight_rows(wm)}\n"
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
