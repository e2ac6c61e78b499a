"""Matcher speed at deployment scale (pytest-benchmark).

Run: ``OPENBLAS_NUM_THREADS=1 .venv/bin/pytest tests/bench_match.py --benchmark-enable``
(``addopts`` disables benchmarks by default; without ``--benchmark-enable`` each
case runs once as a plain test). ms per probe = mean / probes.

``test_bench_best`` is the large watchlist (100,000 subjects, one reference each);
``test_bench_references`` is what a deployment holds, 100 and 1,000 subjects with 1, 4 or
16 references each, scored by the best reference (R = N x refs rows searched) or by the
fused one (N rows, fused once when the watchlist is built).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.recognition.match import Matcher, Reference, Watchlist

N = 100_000


@pytest.fixture(
    scope="module",
    params=[(128, "euclidean"), (192, "cosine"), (192, "euclidean")],
    ids=lambda p: f"{p[0]}d-{p[1]}",
)
def matcher(request: pytest.FixtureRequest) -> Matcher:
    dim, metric = request.param
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((N, dim), dtype=np.float32) * np.float32(0.1)
    wl = Watchlist([f"S{i}" for i in range(N)], ["wanted"] * N, emb, metric, 0.4, "")
    return Matcher(wl)


@pytest.mark.parametrize("probes", [1, 8])
def test_bench_best(benchmark, matcher: Matcher, probes: int) -> None:  # type: ignore[no-untyped-def]
    batch = (
        np.random.default_rng(1).standard_normal((probes, matcher.watchlist.dim)).astype(np.float32)
    )
    benchmark.extra_info["probes"] = probes
    benchmark.extra_info["watchlist"] = f"{N}x{matcher.watchlist.dim} {matcher.watchlist.metric}"
    result = benchmark(matcher.best, batch)
    assert len(result) == probes


@pytest.mark.parametrize("reference", ["best", "fused"])
@pytest.mark.parametrize("refs", [1, 4, 16])
@pytest.mark.parametrize("subjects", [100, 1_000])
def test_bench_references(  # type: ignore[no-untyped-def]
    benchmark, subjects: int, refs: int, reference: Reference
) -> None:
    """dlib (128-d, Euclidean), one probe: a track template each time a track is embedded."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((subjects * refs, 128), dtype=np.float32) * np.float32(0.1)
    wl = Watchlist([f"S{i}" for i in range(subjects)], ["wanted"] * subjects, emb, "euclidean",
                   0.4, "", reference_counts=[refs] * subjects, reference=reference)
    matcher = Matcher(wl)
    probe = rng.standard_normal((1, 128), dtype=np.float32) * np.float32(0.1)
    benchmark.extra_info["watchlist"] = f"{subjects} subjects x {refs} refs, {reference}"
    benchmark.extra_info["rows_searched"] = wl.rows
    result = benchmark(matcher.best, probe)
    assert len(result) == 1 and wl.rows == (subjects if reference == "fused" else subjects * refs)
