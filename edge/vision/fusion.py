"""Fusing several embeddings of one face into one template.

The daemon's track templates, flip-averaged embeddings (a chip and its mirror image)
and the multi-image probes of ``edge eval identify --probe-images K`` all fuse the same way:
each embedding is L2-normalised, the normalised vectors are averaged (weighted when
weights are given: a quality score or a face size), and the mean is brought back to the
family's scale: unit length for cosine families, the inputs' mean norm for Euclidean ones
(dlib's descriptors are compared by distance, and their norms carry no identity).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge.types import Metric

F32 = npt.NDArray[np.float32]


def fuse(embeddings: npt.ArrayLike, metric: Metric, weights: npt.ArrayLike | None = None) -> F32:
    """One (D,) float32 template from (N, D) embeddings (N >= 1)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 1:
        raise ValueError(f"need (N, D) embeddings with N >= 1, got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1)
    if np.any(norms <= 0) or not np.all(np.isfinite(norms)):
        raise ValueError("embeddings must be finite and non-zero")
    unit = e / norms[:, None]
    if weights is None:
        w = np.ones(len(e))
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (len(e),) or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
            raise ValueError("weights must be N finite non-negative numbers, not all zero")
    mean = (unit * w[:, None]).sum(axis=0) / w.sum()
    length = float(np.linalg.norm(mean))
    if length <= 0:
        raise ValueError("the embeddings cancel out")
    scale = 1.0 if metric == "cosine" else float(norms.mean())
    out: F32 = (mean / length * scale).astype(np.float32)
    return out
