"""Per-stage speed of the device face pipeline (detector, landmarks, alignment, embedder).

    nice -n 10 .venv/bin/python benchmarks/face_speed.py [--models-dir DIR] [--threads 2]

Prints JSON: median milliseconds per call over ``--repeat`` calls on one photo
(../shared/data/photos/dlib_faces/2008_002506.jpg, 500x375, 3 faces, or
``--image``). Speed figures belong here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2

from edge.vision.align import Aligner
from edge.vision.detect import Detector
from edge.vision.faces import FaceEngine
from edge.vision.landmarks import BlazeFaceLandmarker, MeshLandmarker
from edge.vision.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "data" / "photos" / "dlib_faces" / "2008_002506.jpg"


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return round(statistics.median(times), 3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--image", type=Path, default=PHOTO)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    img = cv2.imread(str(args.image))
    m = Manifest.load(args.models_dir)
    out: dict[str, object] = {"image": args.image.name, "threads": args.threads}
    for name in m.names:
        if m.entry(name).role == "detector":
            det = Detector(m.verify(name), threads=args.threads)
            out[f"detect_{name}_ms"] = median_ms(lambda det=det: det.detect(img), args.repeat)
    engine = FaceEngine.from_models(args.models_dir, threads=args.threads)
    d = engine.detect(img)[0]
    mesh = MeshLandmarker(m.verify(m.find("landmarks")), threads=args.threads)
    blaze = BlazeFaceLandmarker()
    out["landmarks_mesh_ms"] = median_ms(lambda: mesh.points(img, d, "dlib5"), args.repeat)
    out["landmarks_blazeface_ms"] = median_ms(lambda: blaze.points(img, d, "dlib5"), args.repeat)
    pts = mesh.points(img, d, "dlib5")
    aligner = Aligner(engine.family)
    out["align_dlib5_ms"] = median_ms(lambda: aligner.align(img, pts), args.repeat)
    chip = aligner.align(img, pts)
    for precision in ("float32", "int8"):
        e = FaceEngine.from_models(args.models_dir, precision=precision, threads=args.threads)
        out[f"embed_{precision}_ms_per_face"] = median_ms(lambda e=e: e.embed([chip]), args.repeat)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
