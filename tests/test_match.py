"""The watchlist matrix and the matcher: exactness against brute force, no copies, wipe."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.recognition.match import Matcher, Watchlist, WatchlistError
from edge.types import Metric


def make_watchlist(
    n: int, dim: int = 128, metric: Metric = "euclidean", seed: int = 0, scale: float = 0.1
) -> Watchlist:
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((n, dim)) * scale).astype(np.float32)
    return Watchlist(
        subject_ids=[f"S{i:06d}" for i in range(n)],
        categories=["wanted" if i % 2 else "missing" for i in range(n)],
        embeddings=emb,
        metric=metric,
        threshold=0.4,
        embedder_sha256="0" * 64,
    )


def brute_force(
    wl_emb: np.ndarray, probes: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    e = wl_emb.astype(np.float64)
    p = probes.astype(np.float64)
    if metric == "cosine":
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        s = p @ e.T
        return s.argmax(axis=1), s.max(axis=1)
    d = np.sqrt(((p[:, None, :] - e[None, :, :]) ** 2).sum(axis=2))
    return d.argmin(axis=1), 1.0 - d.min(axis=1)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_best_equals_brute_force(metric: Metric) -> None:
    wl = make_watchlist(500, 128, metric)
    original = wl.embeddings.copy()
    rng = np.random.default_rng(1)
    probes = (rng.standard_normal((20, 128)) * 0.1).astype(np.float32)
    probes[:5] = original[[3, 99, 250, 499, 0]] + 0.001  # near-duplicates of subjects
    idx, score = brute_force(original, probes, metric)
    matches = Matcher(wl).best(probes)
    assert [m.subject_index for m in matches] == idx.tolist()
    assert [m.score for m in matches] == pytest.approx(score.tolist(), abs=1e-5)
    assert [m.subject_id for m in matches[:5]] == [
        "S000003",
        "S000099",
        "S000250",
        "S000499",
        "S000000",
    ]
    assert matches[1].category == "wanted" and matches[2].category == "missing"


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    m=st.integers(1, 6),
    dim=st.integers(1, 16),
    metric=st.sampled_from(["euclidean", "cosine"]),
    seed=st.integers(0, 10_000),
)
def test_best_equals_brute_force_property(
    n: int, m: int, dim: int, metric: Metric, seed: int
) -> None:
    wl = make_watchlist(n, dim, metric, seed, scale=1.0)
    original = wl.embeddings.copy()
    probes = np.random.default_rng(seed + 1).standard_normal((m, dim)).astype(np.float32)
    _, score = brute_force(original, probes, metric)
    matches = Matcher(wl).best(probes)
    # Ties may pick either index; the best score is unique.
    assert [x.score for x in matches] == pytest.approx(score.tolist(), abs=1e-4)


def test_scores_are_similarities_in_dlib_convention() -> None:
    emb = np.zeros((2, 4), np.float32)
    emb[1, 0] = 1.0
    wl = Watchlist(["a", "b"], ["x", "x"], emb, "euclidean", 0.4, "")
    (match,) = Matcher(wl).best(np.array([0.6, 0, 0, 0], np.float32))  # one probe, 1-D
    # distance 0.4 to b, 0.6 to a: b wins with score 0.6; a's distance 0.6 is score 0.4
    assert (match.subject_id, match.score) == ("b", pytest.approx(0.6))
    (far,) = Matcher(wl).best(np.array([-0.6, 0, 0, 0], np.float32))
    assert (far.subject_id, far.score) == ("a", pytest.approx(0.4))


def test_cosine_zero_probe_scores_zero_and_references_are_normalised_in_place() -> None:
    emb = np.array([[3.0, 4.0], [0.0, 2.0]], np.float32)
    wl = Watchlist(["a", "b"], ["x", "y"], emb, "cosine", 0.5, "")
    assert wl.embeddings is emb  # no copy of the biometric data
    assert np.allclose(emb, [[0.6, 0.8], [0.0, 1.0]])
    matches = Matcher(wl).best(np.array([[0.0, 0.0], [0.0, 5.0]], np.float32))
    assert matches[0].score == 0.0
    assert (matches[1].subject_id, matches[1].score) == ("b", pytest.approx(1.0))


def test_empty_inputs_and_bad_probes() -> None:
    wl = make_watchlist(10, 8)
    matcher = Matcher(wl)
    assert matcher.best(np.zeros((0, 8), np.float32)) == []
    with pytest.raises(ValueError, match="dimension"):
        matcher.best(np.zeros((1, 9), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        matcher.best(np.full((1, 8), np.nan, np.float32))
    empty = Watchlist([], [], np.zeros((0, 8), np.float32), "euclidean", 0.4, "")
    assert len(empty) == 0 and Matcher(empty).best(np.zeros((3, 8), np.float32)) == []


def test_invalid_watchlists_are_refused() -> None:
    emb = np.zeros((2, 4), np.float32)
    with pytest.raises(WatchlistError, match="2 embeddings but 1 ids"):
        Watchlist(["a"], ["x", "x"], emb, "euclidean", 0.4, "")
    with pytest.raises(WatchlistError, match="unique"):
        Watchlist(["a", "a"], ["x", "x"], emb, "euclidean", 0.4, "")
    with pytest.raises(WatchlistError, match="2-D"):
        Watchlist(["a"], ["x"], np.zeros(4, np.float32), "euclidean", 0.4, "")
    with pytest.raises(WatchlistError, match="NaN"):
        Watchlist(["a", "b"], ["x", "x"], np.full((2, 4), np.inf, np.float32), "euclidean", 0.4, "")
    with pytest.raises(WatchlistError, match="zero embedding"):
        Watchlist(["a", "b"], ["x", "x"], emb, "cosine", 0.4, "")
    with pytest.raises(WatchlistError, match="metric"):
        Watchlist(["a", "b"], ["x", "x"], emb, "manhattan", 0.4, "")  # type: ignore[arg-type]
    with pytest.raises(WatchlistError, match="threshold"):
        Watchlist(["a", "b"], ["x", "x"], emb, "euclidean", float("nan"), "")
    assert WatchlistError("x").exit_code == 4


def test_float64_input_is_converted_once() -> None:
    emb64 = np.random.default_rng(0).standard_normal((5, 3))
    wl = Watchlist(list("abcde"), ["x"] * 5, emb64, "euclidean", 0.4, "")  # type: ignore[arg-type]
    assert wl.embeddings.dtype == np.float32 and wl.embeddings.flags.c_contiguous


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_matcher_never_copies_the_matrix(metric: Metric) -> None:
    wl = make_watchlist(20_000, 128, metric)  # a 10 MB matrix
    matrix = wl.embeddings
    matcher = Matcher(wl)
    probes = np.random.default_rng(2).standard_normal((4, 128)).astype(np.float32)
    matcher.best(probes)  # sizes the score buffer
    tracemalloc.start()
    try:
        for _ in range(3):
            matcher.best(probes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < matrix.nbytes / 20  # scores, indices and small temporaries only
    assert wl.embeddings is matrix


def test_wipe_zeroes_in_place_and_matches_nothing() -> None:
    wl = make_watchlist(100, 16, "cosine")
    matrix, norms = wl.embeddings, wl.sq_norms
    matcher = Matcher(wl)
    assert len(matcher.best(matrix[:2])) == 2
    wl.wipe()
    assert not matrix.any() and not norms.any()  # the old buffers hold zeros now
    assert len(wl) == 0 and wl.subject_ids == [] and wl.categories == []
    assert wl.embeddings.shape == (0, 16)
    assert matcher.best(np.ones((2, 16), np.float32)) == []
    matcher.release()


def test_real_dlib_embeddings_identify_the_right_person(photos_dir: Path) -> None:
    dlib = pytest.importorskip("dlib")
    models = pytest.importorskip("face_recognition_models")
    import cv2

    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
    net = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def embed(rel: str) -> np.ndarray:
        bgr = cv2.imread(str(photos_dir / rel))
        scale = min(1.0, 480 / max(bgr.shape[:2]))  # faces stay large; detection is quick
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rect = max(detector(rgb, 0), key=lambda r: r.area())
        return np.array(net.compute_face_descriptor(rgb, shapes(rgb, rect)), np.float32)

    gallery = [
        "knn_examples/train/obama/obama.jpg",
        "knn_examples/train/biden/biden.jpg",
        "knn_examples/train/alex_lacamoire/img1.jpg",
    ]
    wl = Watchlist(
        ["obama", "biden", "alex"],
        ["wanted"] * 3,
        np.stack([embed(p) for p in gallery]),
        "euclidean",
        0.4,
        "dlib",
    )
    probes = np.stack(
        [
            embed("face_recognition_tests/obama2.jpg"),
            embed("knn_examples/train/biden/biden2.jpg"),
            embed("knn_examples/test/alex_lacamoire1.jpg"),
        ]
    )
    matches = Matcher(wl).best(probes)
    assert [m.subject_id for m in matches] == ["obama", "biden", "alex"]
    assert all(m.score >= 0.4 for m in matches)  # dlib distance <= 0.6
