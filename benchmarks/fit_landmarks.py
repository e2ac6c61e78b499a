"""Fit the BlazeFace-keypoint and face-mesh regressions onto dlib's 5-point predictor.

Training faces: one image from each LFW identity that does NOT appear in the
evaluation pairs file (so ``edge eval verify`` stays independent of the fit),
plus the photos in ../shared/data/photos. Targets: dlib's HOG detector
(1x upsample) + ``shape_predictor_5_face_landmarks``; the BlazeFace detection
overlapping dlib's box best (IoU >= 0.3) gives the keypoints and the mesh ROI.
A seeded 80/20 split reports held-out errors (per-point distance / inter-ocular
distance of dlib's eye centres). Writes edge/vision/landmark_fit.py.

    nice -n 10 .venv/bin/python benchmarks/fit_landmarks.py --detector DETECTOR.tflite \
        --mesh FACE_LANDMARK.tflite [--max-faces 1500]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import cv2
import dlib
import face_recognition_models
import numpy as np

from edge.vision.detect import Detector
from edge.vision.landmarks import (
    MESH_DLIB5,
    MeshLandmarker,
    blazeface_features,
    mesh_features,
    to_frame,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def training_images(pairs: Path, images: Path, limit: int, seed: int) -> list[Path]:
    used: set[str] = set()
    for line in pairs.read_text().splitlines()[1:]:
        tok = line.split()
        if len(tok) == 3:
            used.add(tok[0])
        elif len(tok) == 4:
            used.update((tok[0], tok[2]))
    names = sorted(p.name for p in images.iterdir() if p.is_dir() and p.name not in used)
    rng = random.Random(seed)
    rng.shuffle(names)
    out = [sorted((images / n).glob("*.jpg"))[0] for n in names[:limit]]
    photos = sorted((SHARED / "photos").rglob("*.jp*g"))
    return out + photos


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    reg = lam * np.eye(x.shape[1])
    reg[-1, -1] = 0.0  # no penalty on the bias
    return np.linalg.solve(x.T @ x + reg, x.T @ y)


def nme(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean and per-face p95 of the point error / dlib's inter-ocular distance."""
    p, t = pred.reshape(-1, 5, 2), y.reshape(-1, 5, 2)
    iod = np.linalg.norm((t[:, 0] + t[:, 1]) / 2 - (t[:, 2] + t[:, 3]) / 2, axis=1)
    e = np.linalg.norm(p - t, axis=2) / iod[:, None]
    return float(e.mean()), float(np.percentile(e.mean(axis=1), 95))


def weight_rows(w: np.ndarray) -> str:
    """A weight matrix as the Python tuple literal the generated modules hold."""
    out = "(\n"
    for r in w:
        vals = [f"{v:.9g}" for v in r]
        out += "    (\n"
        for k in range(0, len(vals), 4):
            out += "        " + ", ".join(vals[k : k + 4]) + ",\n"
        out += "    ),\n"
    return out + ")"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", type=Path, required=True)
    ap.add_argument("--mesh", type=Path, required=True)
    ap.add_argument("--images", type=Path, default=SHARED / "lfw" / "images")
    ap.add_argument("--pairs", type=Path, default=SHARED / "lfw" / "pairs.txt")
    ap.add_argument("--max-faces", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=ROOT / "edge" / "vision" / "landmark_fit.py")
    args = ap.parse_args()

    hog = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    det = Detector(args.detector, threads=1)
    mesh = MeshLandmarker(args.mesh, threads=1, regress=False)
    files = training_images(args.pairs, args.images, args.max_faces, args.seed)
    fb, fm, fmraw, tb, tm = [], [], [], [], []
    frames_m = []
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        img = cv2.imread(str(f))
        if img is None:
            continue
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        rects = hog(rgb, 1)
        dets = det.detect(img)
        for r in rects:
            box = (r.left(), r.top(), r.right(), r.bottom())
            best = max(dets, key=lambda d: iou(box, d.box), default=None)
            if best is None or iou(box, best.box) < 0.3:
                continue
            shape = sp(rgb, r)
            target = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            kps = np.asarray(best.keypoints, dtype=np.float64)
            xb, frame_b = blazeface_features(kps)
            m = mesh.mesh(img, best)
            xm, frame_m = mesh_features(m)
            fb.append(xb)
            tb.append(to_frame(target, *frame_b).ravel())
            fm.append(xm)
            tm.append(to_frame(target, *frame_m).ravel())
            fmraw.append(m[list(MESH_DLIB5)])
            frames_m.append(frame_m)
        if i % 50 == 0:
            print(f"\rfit: {i + 1}/{len(files)} images, {len(fb)} faces", end="", file=sys.stderr)
    print(file=sys.stderr)
    n = len(fb)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(n)
    ntr = int(0.8 * n)
    tr, te = perm[:ntr], perm[ntr:]
    xb_, yb_ = np.array(fb), np.array(tb)
    xm_, ym_ = np.array(fm), np.array(tm)
    wb = ridge(xb_[tr], yb_[tr], 1e-3)
    wm = ridge(xm_[tr], ym_[tr], 1e-3)

    eb = nme(xb_[te] @ wb, yb_[te])
    em = nme(xm_[te] @ wm, ym_[te])
    # the raw mesh picks (no regression), in the same frame, for comparison
    raw = np.array([to_frame(fmraw[k], *frames_m[k]).ravel() for k in te])
    er = nme(raw, ym_[te])
    figures = {
        "faces": n,
        "train": int(ntr),
        "test": int(n - ntr),
        "seed": args.seed,
        "blazeface_regression_nme": round(eb[0], 4),
        "blazeface_regression_nme_p95": round(eb[1], 4),
        "mesh_regression_nme": round(em[0], 4),
        "mesh_regression_nme_p95": round(em[1], 4),
        "mesh_direct_pick_nme": round(er[0], 4),
        "mesh_direct_pick_nme_p95": round(er[1], 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(figures, indent=2))

    args.out.write_text(
        '"""Fitted landmark regressions (written by benchmarks/fit_landmarks.py; do not edit).\n\n'
        "Maps BlazeFace keypoints / face-mesh points, in the eye-aligned frame, to dlib's\n"
        "5-point predictor outputs. Fit figures (normalised mean error, inter-ocular units,\n"
        "held-out 20%):\n\n"
        + "".join(f"    {k}: {v}\n" for k, v in figures.items())
        + '"""\n\n'
        + "FIGURES: dict[str, float] = {\n"
        + "".join(f"    {json.dumps(k)}: {v},\n" for k, v in figures.items())
        + "}\n\n"
        + f"BLAZEFACE_WEIGHTS: tuple[tuple[float, ...], ...] = {weight_rows(wb)}\n\n"
        + f"MESH_WEIGHTS: tuple[tuple[float, ...], ...] = {weight_rows(wm)}\n"
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
