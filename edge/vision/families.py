"""Embedder families: what a chip must look like for an embedder, and how to compare.

A family (``dlib150``, later ``arcface112``) is defined in the manifest's
``families`` section; this module gives it a typed, code-side form and holds
the score convention: **scores are similarities**. Euclidean families score
``1 - distance``; cosine families score the cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge.types import Metric
from edge.vision.manifest import FamilySpec

Template = Literal["dlib5", "arcface5"]


@dataclass(frozen=True, slots=True)
class EmbedderFamily:
    name: str
    input_size: int
    colour: Literal["RGB", "BGR"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    template: Template
    padding: float
    dim: int
    metric: Metric
    threshold: float  # recommended similarity
    flip: bool = False  # flip-averaged embeddings by default (see models/README.md)

    @classmethod
    def from_spec(cls, name: str, spec: FamilySpec) -> EmbedderFamily:
        return cls(
            name=name,
            input_size=spec.input_size,
            colour=spec.colour,
            mean=spec.normalisation.mean,
            std=spec.normalisation.std,
            template=spec.template,
            padding=spec.padding,
            dim=spec.embedding_size,
            metric=spec.metric,
            threshold=spec.threshold,
            flip=spec.flip,
        )

    def normalise(self, chips_rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """(N, S, S, 3) uint8 RGB chips -> float32 in the family's colour and scale."""
        x = chips_rgb.astype(np.float32)
        if self.colour == "BGR":
            x = x[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((x - mean) / std).astype(np.float32)

    def scores(
        self, a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Similarity of rows of ``a`` (N, D) against rows of ``b`` (M, D) -> (N, M)."""
        return similarity_matrix(a, b, self.metric)

    def score(self, a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
        return score(a, b, self.metric)


# Built-in definitions, used when a manifest has no ``families`` entry for them.
DLIB150 = EmbedderFamily(
    name="dlib150",
    input_size=150,
    colour="RGB",
    mean=(122.782, 117.001, 104.298),
    std=(256.0, 256.0, 256.0),
    template="dlib5",
    padding=0.25,
    dim=128,
    metric="euclidean",
    # Measured on LFW 1:N (860 subjects): FPIR 0.001 at 0.604; dlib's 1:1 setting (0.4,
    # distance 0.6) falsely matched 86 % of strangers. Calibrate per watchlist size.
    threshold=0.6,
    # Flip-averaged: LFW 1:N TPIR at FPIR 0.001 0.316 against 0.262 (models/README.md).
    flip=True,
)
ARCFACE112 = EmbedderFamily(
    name="arcface112",
    input_size=112,
    colour="RGB",
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
    template="arcface5",
    padding=0.0,
    dim=512,
    metric="cosine",
    threshold=0.35,
    # Flip-averaged: MobileFaceNet on LFW 1:N, TPIR at FPIR 0.001 0.794 against 0.760.
    flip=True,
)
BUILTIN: dict[str, EmbedderFamily] = {f.name: f for f in (DLIB150, ARCFACE112)}


def score(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], metric: Metric) -> float:
    """Similarity of two 1-D embeddings (higher = more alike)."""
    a64 = np.asarray(a, dtype=np.float64).ravel()
    b64 = np.asarray(b, dtype=np.float64).ravel()
    if metric == "euclidean":
        return float(1.0 - np.linalg.norm(a64 - b64))
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a64, b64) / (na * nb))


def similarity_matrix(
    a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], metric: Metric
) -> npt.NDArray[np.float32]:
    """(N, D) x (M, D) -> (N, M) similarities."""
    a2 = np.atleast_2d(np.asarray(a, dtype=np.float32))
    b2 = np.atleast_2d(np.asarray(b, dtype=np.float32))
    if metric == "euclidean":
        d2 = np.sum(a2 * a2, axis=1)[:, None] + np.sum(b2 * b2, axis=1)[None, :] - 2.0 * (a2 @ b2.T)
        dist: npt.NDArray[np.float32] = (1.0 - np.sqrt(np.maximum(d2, 0.0))).astype(np.float32)
        return dist
    an = a2 / np.maximum(np.linalg.norm(a2, axis=1, keepdims=True), 1e-12)
    bn = b2 / np.maximum(np.linalg.norm(b2, axis=1, keepdims=True), 1e-12)
    cos: npt.NDArray[np.float32] = (an @ bn.T).astype(np.float32)
    return cos
