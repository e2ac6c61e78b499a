"""The watchlist matrix and the matcher: exactness against brute force, no copies, wipe."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.recognition.match import MAX_REFERENCES, Matcher, Reference, Watchlist, WatchlistError
from edge.types import Metric
from edge.vision.fusion import fuse


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
    with pytest.raises(WatchlistError, match="1 ids but 2 categories"):
        Watchlist(["a"], ["x", "x"], emb, "euclidean", 0.4, "")
    with pytest.raises(WatchlistError, match="2 embeddings but 1 subjects"):
        Watchlist(["a"], ["x"], emb, "euclidean", 0.4, "")
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


# --- several references per subject ------------------------------------------------------


def brute_force_subjects(
    rows: np.ndarray, counts: list[int], probes: np.ndarray, metric: Metric, reference: Reference
) -> np.ndarray:
    """(probes, subjects) scores, computed the slow way from first principles."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_subject = np.empty((len(probes), len(counts)))
    for j, (a, c) in enumerate(zip(starts, counts, strict=True)):
        refs = rows[a : a + c].astype(np.float64)
        if reference == "fused":
            refs = fuse(refs, metric)[None].astype(np.float64)
        for i, p in enumerate(probes.astype(np.float64)):
            if metric == "cosine":
                sims = [p @ r / np.linalg.norm(p) / np.linalg.norm(r) for r in refs]
            else:
                sims = [1.0 - np.linalg.norm(p - r) for r in refs]
            per_subject[i, j] = max(sims)
    return per_subject


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 5), min_size=1, max_size=12),
    m=st.integers(1, 5),
    dim=st.integers(2, 12),
    metric=st.sampled_from(["euclidean", "cosine"]),
    reference=st.sampled_from(["fused", "best"]),
    seed=st.integers(0, 10_000),
)
def test_several_references_equal_brute_force(
    counts: list[int], m: int, dim: int, metric: Metric, reference: Reference, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((sum(counts), dim)).astype(np.float32)
    original = rows.copy()
    probes = rng.standard_normal((m, dim)).astype(np.float32)
    n = len(counts)
    wl = Watchlist([f"S{i}" for i in range(n)], ["x"] * n, rows, metric, 0.4, "",
                   reference_counts=counts, reference=reference)
    assert len(wl) == n and wl.rows == (n if reference == "fused" else sum(counts))
    expected = brute_force_subjects(original, counts, probes, metric, reference)
    matches = Matcher(wl).best(probes)
    assert [x.score for x in matches] == pytest.approx(expected.max(axis=1).tolist(), abs=1e-4)
    for x, row in zip(matches, expected, strict=True):
        assert row[x.subject_index] == pytest.approx(row.max(), abs=1e-4)  # a tie may pick either
        assert x.subject_id == f"S{x.subject_index}"


def test_best_and_fused_references_differ_where_they_should() -> None:
    # Subject A: two references at right angles (a frontal and a profile, say);
    # subject B: one reference between them, a little off. A probe equal to A's first
    # reference is A's by its best reference (score 1) but B's by the fused one: A's
    # fused reference points half-way, and B is nearer the probe than that.
    a1, a2 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    b = [0.9, 0.3, 0.3]
    rows = np.array([a1, a2, b], np.float32)
    probe = np.array([1.0, 0.0, 0.0], np.float32)
    found = {}
    for reference in ("best", "fused"):
        wl = Watchlist(["A", "B"], ["x", "x"], rows.copy(), "cosine", 0.5, "",
                       reference_counts=[2, 1], reference=reference)  # type: ignore[arg-type]
        (match,) = Matcher(wl).best(probe)
        found[reference] = (match.subject_id, round(match.score, 4))
    assert found["best"] == ("A", 1.0)
    fused_a = float(np.dot(probe, fuse(np.array([a1, a2]), "cosine")))  # 0.7071
    score_b = float(np.dot(probe, b) / np.linalg.norm(b))  # 0.9045
    assert fused_a < score_b
    assert found["fused"] == ("B", round(score_b, 4))


@pytest.mark.parametrize("reference", ["fused", "best"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_wipe_zeroes_every_reference_row_and_the_fused_matrix(
    metric: Metric, reference: Reference
) -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((7, 16)).astype(np.float32)
    wl = Watchlist(["a", "b", "c"], ["x"] * 3, rows, metric, 0.4, "",
                   reference_counts=[3, 1, 3], reference=reference)
    refs, searched, norms = wl.references, wl.embeddings, wl.sq_norms
    assert refs is rows and refs.shape == (7, 16)  # the bundle's matrix, not a copy
    assert searched.shape == ((3, 16) if reference == "fused" else (7, 16))
    matcher = Matcher(wl)
    assert len(matcher.best(rows[:2])) == 2
    wl.wipe()
    assert not rows.any() and not searched.any() and not norms.any()
    assert len(wl) == 0 and wl.references.shape == (0, 16) and wl.embeddings.shape == (0, 16)
    assert matcher.best(np.ones((2, 16), np.float32)) == []
    matcher.release()


def test_reference_counts_are_checked() -> None:
    rows = np.ones((MAX_REFERENCES + 1, 4), np.float32)
    with pytest.raises(WatchlistError, match=f"more than {MAX_REFERENCES}"):
        Watchlist(["a"], ["x"], rows, "euclidean", 0.4, "", reference_counts=[MAX_REFERENCES + 1])
    with pytest.raises(WatchlistError, match="no reference"):
        Watchlist(["a", "b"], ["x"] * 2, rows[:2], "euclidean", 0.4, "", reference_counts=[2, 0])
    with pytest.raises(WatchlistError, match="3 embeddings but 2 subjects with 4 references"):
        Watchlist(["a", "b"], ["x"] * 2, rows[:3], "euclidean", 0.4, "", reference_counts=[2, 2])
    with pytest.raises(WatchlistError, match="reference mode"):
        Watchlist(["a"], ["x"], rows[:1], "euclidean", 0.4, "", reference="mean")  # type: ignore[arg-type]
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32)
    with pytest.raises(WatchlistError, match="cancel out"):
        Watchlist(["a"], ["x"], opposite, "cosine", 0.4, "", reference_counts=[2],
                  reference="fused")
