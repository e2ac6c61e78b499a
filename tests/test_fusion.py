"""edge.vision.fusion: the one way several embeddings become a template."""

from __future__ import annotations

import numpy as np
import pytest

from edge.vision.fusion import fuse


def test_one_embedding_is_itself() -> None:
    e = np.array([[3.0, 4.0]], np.float32)
    assert np.allclose(fuse(e, "euclidean"), e[0])
    assert np.allclose(fuse(e, "cosine"), [0.6, 0.8])


def test_mean_of_unit_vectors_at_the_family_scale() -> None:
    e = np.array([[2.0, 0.0], [0.0, 4.0]], np.float32)
    c = fuse(e, "cosine")
    assert np.allclose(c, [2 ** -0.5, 2 ** -0.5]) and c.dtype == np.float32
    d = fuse(e, "euclidean")
    assert np.allclose(np.linalg.norm(d), 3.0) and np.allclose(d[0], d[1])  # mean norm 3


def test_weights_pull_towards_the_better_frame() -> None:
    e = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    t = fuse(e, "cosine", weights=[3.0, 1.0])
    assert t[0] > t[1] > 0
    assert np.allclose(fuse(e, "cosine", weights=[1.0, 0.0]), [1.0, 0.0])


@pytest.mark.parametrize(
    ("emb", "weights"),
    [(np.zeros((0, 4)), None), (np.zeros((2, 4)), None), (np.ones(4), None),
     (np.ones((2, 4)), [1.0]), (np.ones((2, 4)), [-1.0, 2.0]), (np.ones((2, 4)), [0.0, 0.0]),
     (np.array([[1.0, 0.0], [-1.0, 0.0]]), None), (np.array([[np.nan, 1.0]]), None)],
)
def test_bad_input_is_refused(emb: np.ndarray, weights: list[float] | None) -> None:
    with pytest.raises(ValueError):
        fuse(emb, "cosine", weights)
