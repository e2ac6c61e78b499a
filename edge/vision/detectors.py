"""Which face detector: BlazeFace or RetinaFace, behind one ``detect`` seam.

:func:`make_detector` builds the detector a manifest entry names. The entry's
``detector_kind`` says which decoder it needs (entries without one are BlazeFace, as
every detector was before RetinaFace). Both return :class:`edge.types.Detection` in the
pixels of the image they are given; RetinaFace's also carry ``points5``.

Defaults: RetinaFace MobileNet-0.25 int8 at a 640x384 input (see ``models/README.md``
for the recall and speed figures that chose it); BlazeFace stays selectable for close
range (``blazeface_full``, ``blazeface_short``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from edge.errors import ModelError
from edge.types import Detection, ImageU8
from edge.vision.detect import Detector
from edge.vision.manifest import Manifest
from edge.vision.retinaface import DEFAULT_INPUT, RetinaFaceDetector

DEFAULT_DETECTOR = "retinaface_mnet025_int8"
ALIASES: dict[str, tuple[str, ...]] = {
    "blazeface_full": ("blazeface_full", "face_detection_full", "blazeface_full_range"),
    "blazeface_short": ("blazeface_short", "face_detection_short", "blazeface_short_range"),
    "retinaface": ("retinaface_mnet025_int8", "retinaface_mnet025"),
}


class FaceDetector(Protocol):
    """What the engine, the pipeline and the evaluations need of a detector."""

    min_score: float
    size: int

    def detect(self, image_bgr: ImageU8, min_score: float | None = None) -> list[Detection]: ...


def resolve(manifest: Manifest, wanted: str, role: str = "detector") -> str:
    """A manifest name for ``wanted``: exact, else a known alias prefix, else a prefix."""
    names = manifest.names
    if wanted in names:
        return wanted
    for prefix in ALIASES.get(wanted, (wanted,)):
        for name in names:
            if name.startswith(prefix) and manifest.entry(name).role == role:
                return name
    known = ", ".join(n for n in names if manifest.entry(n).role == role) or "none"
    raise ModelError(f"no {role} model {wanted!r} in {manifest.directory} (known: {known})")


def kind_of(manifest: Manifest, name: str) -> str:
    return manifest.entry(name).detector_kind or "blazeface"


def make_detector(
    manifest: Manifest,
    wanted: str,
    *,
    threads: int = 2,
    input_size: tuple[int, int] | None = None,
    min_score: float | None = None,
) -> tuple[str, FaceDetector]:
    """(manifest name, detector) for ``wanted``, its file sha256-checked first."""
    name = resolve(manifest, wanted)
    path: Path = manifest.verify(name)
    if kind_of(manifest, name) == "retinaface":
        try:
            return name, RetinaFaceDetector(
                path, threads=threads, input_size=input_size or DEFAULT_INPUT,
                min_score=min_score,
            )
        except ValueError as exc:
            raise ModelError(str(exc)) from None
    return name, Detector(path, threads=threads, min_score=min_score)
