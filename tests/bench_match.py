"""Matcher speed at deployment scale (pytest-benchmark).

Run: ``OPENBLAS_NUM_THREADS=1 .venv/bin/pytest tests/bench_match.py --benchmark-enable``
(``addopts`` disables benchmarks by default; without ``--benchmark-enable`` each
case runs once as a plain test). ms per probe = mean / probes.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.recognition.match import Matcher, Watchlist

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
