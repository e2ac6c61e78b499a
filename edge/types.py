"""The typed seams between pipeline stages.

Data flows one way: FrameSource -> Detector -> Tracker -> QualityGate ->
Aligner -> Embedder -> Matcher -> TrackDecision -> Alert -> Outbox -> Publisher.
Each stage takes and returns these types only. Arrays of face pixels and
embeddings live in RAM and are dropped after the frame unless they become an
alert (safeguard 5); none of these types is ever logged or serialised except
:class:`AlertRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

ImageU8 = npt.NDArray[np.uint8]
"""An HxWx3 uint8 image in BGR order (OpenCV's), unless a name says RGB."""

Vector = npt.NDArray[np.float32]
"""A 1-D float32 embedding."""

Points = npt.NDArray[np.float32]
"""An Nx2 float32 array of (x, y) pixel coordinates."""

Metric = Literal["euclidean", "cosine"]

CATEGORIES: tuple[str, ...] = (
    "wanted_court",
    "wanted_police",
    "suspect",
    "missing_person",
    "vulnerable_person",
    "risk_to_others",
)
"""The only permitted watchlist categories (safeguard 2): what a bundle may list and an
alert may carry."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame.

    ``image`` is the full-resolution BGR frame that crops are taken from.
    ``detect_image`` is an optional smaller BGR copy (picamera2's ``lores``
    stream) that the detector runs on; ``None`` means detect on ``image``.
    Both are views of the same instant.
    """

    index: int
    captured_at: float  # Unix time, seconds
    image: ImageU8
    detect_image: ImageU8 | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the full image."""
        h, w = self.image.shape[:2]
        return w, h


@dataclass(frozen=True, slots=True)
class Detection:
    """A face found by the detector, in pixel coordinates of ``Frame.image``.

    ``keypoints`` are the detector's own points: BlazeFace's six in its order (right
    eye, left eye — the subject's —, nose tip, mouth centre, right ear tragion, left
    ear tragion), or RetinaFace's five. ``points5``, when the detector gives them, are
    five landmarks in ArcFace's order: the subject's right eye, left eye (image left to
    right), nose tip, right and left mouth corners.
    """

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    keypoints: Points  # shape (6, 2) for BlazeFace, (5, 2) for RetinaFace
    score: float
    points5: Points | None = None  # shape (5, 2), ArcFace order

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


@dataclass(frozen=True, slots=True)
class Quality:
    """A quality verdict for one detection; ``score`` orders frames best-first."""

    ok: bool
    score: float
    face_px: float
    sharpness: float
    yaw: float  # rough, from keypoints, -1..1 (0 = frontal)
    reason: str = ""  # empty when ok, else e.g. "too small", "blurred", "profile"


@dataclass(frozen=True, slots=True)
class Chip:
    """An aligned face chip ready for an embedder (RGB, square, the family's size)."""

    rgb: ImageU8
    landmarks: Points  # the points it was aligned from, in Frame.image pixels


@dataclass(frozen=True, slots=True)
class Match:
    """The best watchlist candidate for one embedding.

    ``score`` is a similarity (higher = more alike) in the embedder family's
    convention: cosine similarity, or ``1 - distance`` for Euclidean families.
    """

    subject_index: int
    subject_id: str
    category: str
    score: float


@dataclass(slots=True)
class Track:
    """A face followed across frames by the tracker (mutable, RAM only)."""

    track_id: int
    detection: Detection
    first_frame: int
    last_frame: int
    hits: int = 1
    embeds: int = 0
    best_quality: float = -1.0
    alerted_subjects: set[str] = field(default_factory=set)
    # Track template (RAM only, wiped when the track ends): the embeddings of its best
    # frames and their weights, fused into one template by the decider.
    frame_embeddings: list[npt.NDArray[np.float32]] = field(default_factory=list, repr=False)
    frame_weights: list[float] = field(default_factory=list, repr=False)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """What becomes an alert: a watchlist match on a track, with the matched face only."""

    alert_id: str  # UUIDv7
    device_id: str
    deployment_id: str
    captured_at: float
    subject_id: str
    category: str
    score: float
    threshold: float
    track_id: int
    bbox: tuple[int, int, int, int]  # x, y, w, h in the full frame
    face_jpeg: bytes
    model: dict[str, str]
