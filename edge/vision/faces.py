"""The face engine: detector + landmarks + aligner + embedder, built from the manifest.

One engine serves the daemon, enrolment and evaluation, so a watchlist is
enrolled with exactly the pipeline that will match against it.

    engine = FaceEngine.from_models(models_dir, precision="int8")
    faces = engine.analyse(image_bgr)          # detections with aligned chips
    emb = engine.embed([f.chip for f in faces])  # (N, D) float32
    engine.score(emb[0], emb[1])               # similarity, higher = more alike
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError
from edge.types import Chip, Detection, ImageU8
from edge.vision.align import Aligner
from edge.vision.defaults import DEFAULT_EMBEDDER
from edge.vision.detectors import DEFAULT_DETECTOR, FaceDetector, kind_of, make_detector
from edge.vision.embed import Embedder, embedder_identity
from edge.vision.families import EmbedderFamily
from edge.vision.landmarks import (
    LANDMARKERS,
    BlazeFaceLandmarker,
    Landmarker,
    MeshLandmarker,
    RetinaLandmarker,
)
from edge.vision.manifest import Manifest

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
Precision = Literal["int8", "float32"]
DEFAULT_LANDMARKS = "mesh"
DEFAULT_LANDMARKS_BY_KIND = {"blazeface": "mesh", "retinaface": "mesh"}

# Mean BlazeFace keypoints relative to the box (x, y as fractions of w, h),
# measured on LFW deep-funneled with the full-range model; used to make a
# detection from a bare box (see FaceEngine.detection_from_box).
MEAN_KEYPOINTS = np.array(
    [
        [0.3142, 0.3232],
        [0.6951, 0.3196],
        [0.5104, 0.5497],
        [0.5126, 0.7446],
        [0.1145, 0.4246],
        [0.8983, 0.4132],
    ],
    dtype=np.float32,
)

@dataclass(frozen=True, slots=True)
class FaceResult:
    detection: Detection
    chip: Chip


def _resolve(manifest: Manifest, wanted: str, role: str) -> str:
    from edge.vision.detectors import resolve

    return resolve(manifest, wanted, role)


def default_landmarks(detector_kind: str, template: str) -> str:
    """The landmarks that measured best with a detector and template (models/README.md):
    the mesh for dlib's template; with RetinaFace, its own five points for ArcFace's."""
    if detector_kind == "retinaface" and template == "arcface5":
        return "retina"
    return DEFAULT_LANDMARKS_BY_KIND.get(detector_kind, DEFAULT_LANDMARKS)


class FaceEngine:
    def __init__(
        self,
        detector: FaceDetector,
        landmarker: Landmarker,
        embedder: Embedder,
        *,
        model_info: dict[str, str] | None = None,
    ) -> None:
        self.detector = detector
        self.landmarker = landmarker
        self.embedder = embedder
        self.family: EmbedderFamily = embedder.family
        self.aligner = Aligner(self.family)
        self.model_info = model_info or {}

    @classmethod
    def from_models(
        cls,
        models_dir: str | Path | None = None,
        *,
        embedder: str = DEFAULT_EMBEDDER,
        precision: str = "int8",
        detector: str = DEFAULT_DETECTOR,
        landmarks: str | None = None,
        threads: int = 2,
        detector_input: tuple[int, int] | None = None,
        flip: bool | None = None,
    ) -> FaceEngine:
        """Build the engine from ``models/manifest.json`` (each file sha256-checked).

        ``landmarks`` None picks the best measured for the detector (models/README.md);
        ``detector_input`` is RetinaFace's input (width, height), multiples of 32."""
        manifest = Manifest.load(models_dir)
        emb_name = embedder if embedder in manifest.names else f"{embedder}_{precision}"
        if precision not in ("int8", "float32"):
            raise ModelError(f"unknown precision {precision!r} (use int8 or float32)")
        # The embedder first: a bad embedder file is then the one line a user sees.
        emb = Embedder.from_manifest(
            manifest, _resolve(manifest, emb_name, "embedder"), threads, flip=flip
        )
        det_name, det = make_detector(
            manifest, detector, threads=threads, input_size=detector_input
        )
        kind = kind_of(manifest, det_name)
        landmarks = landmarks or default_landmarks(kind, emb.family.template)
        if landmarks not in LANDMARKERS:
            raise ModelError(
                f"unknown landmarks {landmarks!r} (use {', '.join(LANDMARKERS)})"
            )
        if landmarks == "retina" and kind != "retinaface":
            raise ModelError("landmarks 'retina' need a RetinaFace detector")
        if landmarks == "blazeface" and kind != "blazeface":
            raise ModelError("landmarks 'blazeface' need a BlazeFace detector")
        lm: Landmarker
        if landmarks == "blazeface":
            lm = BlazeFaceLandmarker()
        elif landmarks == "retina":
            lm = RetinaLandmarker()
        else:
            lm_name = manifest.find("landmarks")
            lm = MeshLandmarker(
                manifest.verify(lm_name), threads=threads, regress=landmarks == "mesh",
                for_retinaface=kind == "retinaface",
            )
        info = {
            "detector": det_name,
            "detector_input": "x".join(
                str(v) for v in getattr(det, "input_size", (det.size, det.size))
            ),
            "detector_sha256": manifest.entry(det_name).sha256,
            "landmarks": landmarks,
            "embedder": emb.name,
            # the embedder as run (file sha256, or its flip-averaged identity): what a
            # bundle must have been made with
            "embedder_sha256": embedder_identity(manifest.entry(emb.name).sha256, emb.flip),
            "family": emb.family.name,
            "flip": "on" if emb.flip else "off",
        }
        return cls(det, lm, emb, model_info=info)

    def detect(self, image_bgr: ImageU8, min_score: float | None = None) -> list[Detection]:
        return self.detector.detect(image_bgr, min_score)

    def align(self, image_bgr: ImageU8, det: Detection) -> Chip:
        pts = self.landmarker.points(image_bgr, det, self.family.template)
        return self.aligner.align(image_bgr, pts)

    def analyse(self, image_bgr: ImageU8, min_score: float | None = None) -> list[FaceResult]:
        """Every detected face with its aligned chip, best score first."""
        return [FaceResult(d, self.align(image_bgr, d)) for d in self.detect(image_bgr, min_score)]

    def embed(self, chips: list[Chip]) -> F32:
        return self.embedder.embed(chips)

    def score(self, a: F32, b: F32) -> float:
        """Similarity by the family's metric (1 - distance, or cosine)."""
        return self.family.score(a, b)

    def scores(self, a: F32, b: F32) -> F32:
        return self.family.scores(a, b)

    @staticmethod
    def detection_from_box(box: tuple[float, float, float, float]) -> Detection:
        """A detection for a bare box, keypoints at their mean positions (fallbacks)."""
        x1, y1, x2, y2 = box
        kps = (MEAN_KEYPOINTS * np.array([x2 - x1, y2 - y1], dtype=np.float32)) + np.array(
            [x1, y1], dtype=np.float32
        )
        return Detection(box=box, keypoints=kps.astype(np.float32), score=0.0)
