"""Threshold calibration for a watchlist size: which threshold gives a target FPIR?

FPIR depends on the watchlist size ``N``: a passer-by who is not on the list
is compared with all ``N`` subjects and raises a false alert when the best of
those ``N`` scores reaches the threshold. If one comparison passes with
probability ``FMR(T)`` (the false match rate of single impostor pairs) and
comparisons were independent,

    FPIR_N(T) = 1 - (1 - FMR(T))^N  ~=  N * FMR(T)   for small FMR,

so for small FPIR it grows about linearly with the watchlist size, and a list
ten times longer needs a threshold whose FMR is ten times smaller for the same
false-alert rate.

Two estimates are made from a measured score set (``edge eval identify
--save-scores``, or an LFW run):

- ``subsample`` (when ``N`` is at most the measured gallery size): draw
  random ``N``-subject galleries from the measured one, take each non-mated
  probe's best score in each, and read the threshold off that distribution
  directly; mated probes are searched against their mate plus ``N - 1``
  random others for TPIR. No independence assumption. It needs enough
  non-mated searches to see ``target * searches >= 1`` false positives.
- ``extrapolated`` (larger ``N``, or a target below what the subsamples can
  resolve): the formula above with FMR measured on every impostor pair
  (probe x non-mate subject); TPIR as the mate reaching ``T`` and beating
  ``N - 1`` impostors, ``mean([s >= T] * (1 - FMR(s))^(N-1))``. The report
  says which was used, and gives the other's prediction for comparison.

The score set says how it was made (``--probe-images``: fused probes as track templates;
``--gallery-images K --reference fused|best``: subjects with several references, scored as
the bundle will have the device score them), so the threshold is for that mode; calibrate
with the mode the bundle is built with (``edge watchlist build --reference``).

Expected false alerts per 10,000 faces = FPIR x 10,000, for faces searched
once. A device that embeds a track several times and alerts on the best
match searches each passer-by several (correlated) times, so its per-passer-by
rate lies between that and ``k`` times it; ``edge bench`` on a clip measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge.errors import UsageError
from edge.evaluation.identify import ScoreSet, threshold_for_fpir

F64 = npt.NDArray[np.float64]
Method = Literal["subsample", "extrapolated"]


@dataclass(frozen=True, slots=True)
class Calibration:
    watchlist_size: int
    fpir_target: float
    threshold: float
    method: Method
    expected_fpir: float
    false_alerts_per_10k: float
    tpir: float
    fmr: float  # per-comparison false match rate at the threshold
    model_fpir: float  # 1 - (1 - FMR)^N at the threshold
    subsample_fpir: float | None  # measured on subsampled galleries (None when N > gallery)
    gallery_size: int
    non_mated_searches: int
    impostor_pairs: int
    notes: list[str] = field(default_factory=list)
    expected_is_upper_bound: bool = False  # no impostor pair reached the threshold

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None, nd: int = 7) -> float | None:
            return None if v is None or not np.isfinite(v) else round(float(v), nd)

        return {
            "watchlist_size": self.watchlist_size,
            "fpir_target": self.fpir_target,
            "threshold": r(self.threshold, 6),
            "method": self.method,
            "expected_fpir": r(self.expected_fpir),
            "expected_is_upper_bound": self.expected_is_upper_bound,
            "expected_false_alerts_per_10k_faces": r(self.false_alerts_per_10k, 3),
            "tpir": r(self.tpir, 6),
            "fmr": r(self.fmr, 9),
            "model_fpir": r(self.model_fpir),
            "subsample_fpir": r(self.subsample_fpir),
            "measured_gallery_size": self.gallery_size,
            "non_mated_searches": self.non_mated_searches,
            "impostor_pairs": self.impostor_pairs,
            "notes": list(self.notes),
        }


def impostor_scores(ss: ScoreSet) -> F64:
    """Every finite probe x non-mate-subject score, sorted ascending."""
    s = ss.scores.astype(np.float64).copy()
    mated = np.flatnonzero(ss.mate >= 0)
    s[mated, ss.mate[mated]] = -np.inf
    flat = s[np.isfinite(s)]
    return np.sort(flat)


def fmr_at(impostors_sorted: F64, threshold: float) -> float:
    n = impostors_sorted.size
    if n == 0:
        return float("nan")
    return float(n - np.searchsorted(impostors_sorted, threshold, side="left")) / n


def model_fpir(fmr: float, n: int) -> float:
    """``1 - (1 - FMR)^N``, computed stably for small FMR."""
    if not np.isfinite(fmr):
        return float("nan")
    if fmr >= 1.0:
        return 1.0
    return float(-np.expm1(n * np.log1p(-fmr)))


def _subsample_nonmated(ss: ScoreSet, n: int, reps: int, rng: np.random.Generator) -> F64:
    nm = ss.scores[ss.mate < 0].astype(np.float64)
    g = ss.scores.shape[1]
    out = np.empty((reps, nm.shape[0]), dtype=np.float64)
    for r in range(reps):
        cols = rng.choice(g, size=n, replace=False)
        out[r] = nm[:, cols].max(axis=1) if n > 0 else -np.inf
    return out.ravel()


def _subsample_tpir(
    ss: ScoreSet, n: int, threshold: float, reps: int, rng: np.random.Generator
) -> float:
    idx = np.flatnonzero(ss.mate >= 0)
    if idx.size == 0:
        return float("nan")
    rows = ss.scores[idx].astype(np.float64)
    mates = ss.mate[idx]
    mate_score = rows[np.arange(idx.size), mates]
    g = ss.scores.shape[1]
    hits = 0.0
    for _ in range(reps):
        # N - 1 random non-mates per probe: a random permutation per row, skipping the mate.
        keys = rng.random((idx.size, g))
        keys[np.arange(idx.size), mates] = np.inf
        others = np.argsort(keys, axis=1)[:, : max(0, n - 1)]
        best_other = (
            np.take_along_axis(rows, others, axis=1).max(axis=1)
            if n > 1
            else np.full(idx.size, -np.inf)
        )
        ok = (mate_score >= threshold) & (mate_score >= best_other) & np.isfinite(mate_score)
        hits += float(np.mean(ok))
    return hits / reps


def _extrapolated_tpir(ss: ScoreSet, imp: F64, n: int, threshold: float) -> float:
    idx = np.flatnonzero(ss.mate >= 0)
    if idx.size == 0 or imp.size == 0:
        return float("nan")
    s = ss.scores[idx, ss.mate[idx]].astype(np.float64)
    passed = np.isfinite(s) & (s >= threshold)
    fmr_s = (imp.size - np.searchsorted(imp, np.where(np.isfinite(s), s, np.inf))) / imp.size
    beat_all = np.exp((n - 1) * np.log1p(-np.minimum(fmr_s, 1.0 - 1e-15)))
    return float(np.mean(np.where(passed, beat_all, 0.0)))


def calibrate(
    ss: ScoreSet,
    fpir: float,
    watchlist_size: int,
    *,
    reps: int = 20,
    seed: int = 0,
) -> Calibration:
    """The threshold for ``fpir`` at ``watchlist_size`` subjects (see the module docstring)."""
    if not (0.0 < fpir < 1.0):
        raise UsageError(f"--fpir {fpir}: must be between 0 and 1")
    if watchlist_size < 1:
        raise UsageError(f"--watchlist-size {watchlist_size}: must be at least 1")
    g = ss.scores.shape[1]
    n_nm = ss.n_non_mated
    if n_nm == 0 or g == 0:
        raise UsageError("the score set has no non-mated searches or no gallery")
    imp = impostor_scores(ss)
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    method: Method
    subsample_fpir: float | None = None
    upper_bound = False
    # Subsamples of N out of G are close to independent only when N is small next to G.
    effective = n_nm * max(1, min(reps, g // watchlist_size)) if watchlist_size <= g else 0
    if watchlist_size <= g and fpir * effective >= 1.0:
        method = "subsample"
        sub: F64 = _subsample_nonmated(ss, watchlist_size, reps, rng)
        threshold = threshold_for_fpir(sub, fpir)
        expected = float(np.mean(sub >= threshold))
        subsample_fpir = expected
        tpir = _subsample_tpir(ss, watchlist_size, threshold, reps, rng)
    else:
        method = "extrapolated"
        if watchlist_size > g:
            notes.append(
                f"watchlist size {watchlist_size} exceeds the measured gallery ({g}): "
                "extrapolated with FPIR = 1 - (1 - FMR)^N"
            )
        else:
            notes.append(
                f"{n_nm} non-mated searches cannot resolve FPIR {fpir:g} by subsampling: "
                "extrapolated with FPIR = 1 - (1 - FMR)^N"
            )
        target_fmr = float(-np.expm1(np.log1p(-fpir) / watchlist_size))
        if target_fmr * imp.size < 1.0:
            notes.append(
                f"the target FMR {target_fmr:.3g} is below 1/{imp.size} impostor pairs: the "
                "threshold is just above the highest impostor score and the FPIR is only "
                "bounded, not measured (more data needed)"
            )
        threshold = threshold_for_fpir(imp, target_fmr)
        expected = model_fpir(fmr_at(imp, threshold), watchlist_size)
        if expected == 0.0:
            # No impostor pair reaches the threshold: FMR < ~1/pairs, so this is a bound.
            expected = model_fpir(1.0 / imp.size, watchlist_size)
            upper_bound = True
        tpir = _extrapolated_tpir(ss, imp, watchlist_size, threshold)
        if watchlist_size <= g:
            subsample_fpir = float(
                np.mean(_subsample_nonmated(ss, watchlist_size, reps, rng) >= threshold)
            )
    fmr = fmr_at(imp, threshold)
    notes.append(
        "per face searched once; a device embedding a track k times sees between 1x and kx "
        "this per passer-by"
    )
    return Calibration(
        watchlist_size=watchlist_size,
        fpir_target=fpir,
        threshold=threshold,
        method=method,
        expected_fpir=expected,
        false_alerts_per_10k=expected * 10_000.0,
        tpir=tpir,
        fmr=fmr,
        model_fpir=model_fpir(fmr, watchlist_size),
        subsample_fpir=subsample_fpir,
        gallery_size=g,
        non_mated_searches=n_nm,
        impostor_pairs=int(imp.size),
        notes=notes,
        expected_is_upper_bound=upper_bound,
    )


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--watchlist-size {text!r}: expected N or N,N,...") from None
    if not sizes or any(s < 1 for s in sizes):
        raise UsageError(f"--watchlist-size {text!r}: sizes must be >= 1")
    return sizes


def format_text(cals: Sequence[Calibration]) -> list[str]:
    lines = []
    for c in cals:
        bound = "at most " if c.expected_is_upper_bound else ""
        lines.append(
            f"N={c.watchlist_size}: threshold {c.threshold:.4f} for FPIR {c.fpir_target:g} "
            f"({c.method}); expected FPIR {bound}{c.expected_fpir:.3g} = "
            f"{c.false_alerts_per_10k:.2f} false alerts per 10,000 faces; TPIR {c.tpir:.4f}"
        )
        for n in c.notes:
            lines.append(f"  note: {n}")
    return lines
