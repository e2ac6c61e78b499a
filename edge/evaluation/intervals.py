"""Confidence intervals for error rates: Clopper-Pearson and a bootstrap over identities.

- :func:`clopper_pearson`: the exact binomial interval for ``k`` events in ``n``
  independent trials (no scipy: the beta quantile by bisection on the regularised
  incomplete beta, :func:`betainc`, Numerical Recipes' continued fraction). Right for
  open-set searches, where each search is one trial.
- :func:`identity_weights`: a bootstrap over identities, stratified by group. Pairs of
  images are not independent trials (one identity is in thousands of impostor pairs, and
  a "lamb" that resembles many others puts many false matches into one group), so
  FMR/FNMR intervals resample *identities*: each replicate draws every group's
  identities with replacement (its size kept), and a pair counts with the product of its
  two identities' draws. :func:`percentile` reads the interval off the replicates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

LEVEL = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta ``I_x(a, b)`` (a, b > 0, 0 <= x <= 1)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def _beta_quantile(q: float, a: float, b: float) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15 * max(hi, 1e-300):
            break
    return (lo + hi) / 2.0


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval for ``k`` events in ``n`` trials."""
    if n <= 0 or not (0 <= k <= n):
        raise ValueError(f"clopper_pearson({k}, {n}): need 0 <= k <= n, n > 0")
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else (
        (alpha / 2.0) ** (1.0 / n) if k == n else _beta_quantile(alpha / 2.0, k, n - k + 1)
    )
    hi = 1.0 if k == n else (
        -math.expm1(math.log(alpha / 2.0) / n) if k == 0
        else _beta_quantile(1.0 - alpha / 2.0, k + 1, n - k)
    )
    return lo, hi


def identity_weights(
    groups: Sequence[int] | npt.NDArray[np.int64], reps: int, seed: int = 0
) -> F64:
    """``(reps, n_identities)`` bootstrap draw counts: in each replicate, each group's
    identities drawn with replacement as many times as the group has identities."""
    g = np.asarray(groups, dtype=np.int64)
    rng = np.random.default_rng(seed)
    out = np.zeros((reps, g.size), dtype=np.float64)
    for grp in np.unique(g):
        idx = np.flatnonzero(g == grp)
        out[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=reps)
    return out


def percentile(values: F64, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (which may hold +-inf: no
    interpolation, so an infinite replicate gives an infinite bound, not a NaN)."""
    alpha = 1.0 - level
    v = np.asarray(values, dtype=np.float64)
    lo, hi = np.quantile(v, [alpha / 2.0, 1.0 - alpha / 2.0], method="inverted_cdf")
    return float(lo), float(hi)
