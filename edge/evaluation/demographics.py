"""Error rates per demographic group from an identify score set (``edge eval demographics``).

The score set is the one ``edge eval identify`` makes (probe x gallery-subject
similarities, each image embedded once), with each probe's identity; a label file
(``identity<TAB>group``) puts identities into groups. Identities without a label are left
out entirely (their probes and their gallery subjects), and counted.

What is measured at a threshold T, per group (the units and their interval):

- **FMR** over impostor pairs (a probe x a gallery subject of another identity) whose
  two identities are in the group, and the group x group matrix of probe group x
  gallery group, as NIST's FRTE demographic reports give it; **FNMR** over genuine pairs
  (a mated probe x its own subject). Pairs are not independent trials, so their 95 %
  intervals come from a **bootstrap over identities**, stratified by group
  (:mod:`edge.evaluation.intervals`); a zero count cannot be bootstrapped and gets the
  Clopper-Pearson upper bound over its pairs instead, said so.
- **FPIR** over the group's non-mated searches (top candidate >= T) and **FNIR** over its
  mated searches (mate not the top candidate at >= T): each search is one trial, so the
  interval is **Clopper-Pearson**. The gallery is everyone's (as a watchlist is).

A cell or group whose units come from fewer than ``min_identities`` identities (on
either side of a pair) gets its counts but no interval (it says so) and stays out of the
ratios (:mod:`edge.evaluation.demographics_report`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.errors import UsageError
from edge.evaluation.identify_metrics import mated_rank1, top_scores
from edge.evaluation.identify_scores import ScoreSet
from edge.evaluation.intervals import LEVEL, clopper_pearson, identity_weights, percentile

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]

MIN_IDENTITIES = 10
MAX_LABEL_BYTES = 64 << 20
_CHUNK = 4096


def load_labels(path: Path) -> dict[str, str]:
    """``identity<TAB>group`` per line; blank lines and lines starting with ``#`` skipped."""
    try:
        if path.stat().st_size > MAX_LABEL_BYTES:
            raise UsageError(f"--labels {path}: larger than {MAX_LABEL_BYTES >> 20} MiB")
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark too
    except FileNotFoundError:
        raise UsageError(f"--labels {path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--labels {path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"--labels {path}: cannot read ({exc.strerror})") from None
    out: dict[str, str] = {}
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, tab, group = line.partition("\t")
        name, group = name.strip(), group.strip()
        if not tab or not name or not group or "\t" in group:
            raise UsageError(f"--labels {path}:{no}: expected 'identity<TAB>group'")
        if out.get(name, group) != group:
            raise UsageError(f"--labels {path}:{no}: {name} is labelled twice "
                             f"({out[name]} and {group})")
        out[name] = group
    if not out:
        raise UsageError(f"--labels {path}: no labels")
    return out


@dataclass(frozen=True, slots=True)
class Population:
    """The labelled part of a score set, identities numbered and grouped."""

    ss: ScoreSet
    groups: tuple[str, ...]
    names: tuple[str, ...]  # identity index -> name
    group_of: I64  # identity index -> group index
    probe_id: I64  # probe row -> identity index
    subject_id: I64  # gallery column -> identity index
    unlabelled_identities: int
    unlabelled_probes: int
    unlabelled_subjects: int
    labels_not_in_data: int


def population(ss: ScoreSet, labels: dict[str, str]) -> Population:
    if not ss.probe_ids:
        raise UsageError("the score set has no probe identities (saved before they were "
                         "recorded): re-run `edge eval identify --save-scores`")
    data = set(ss.probe_ids) | set(ss.gallery_ids)
    unlabelled = data - set(labels)
    rows = np.array([p in labels for p in ss.probe_ids], dtype=bool)
    cols = np.array([s in labels for s in ss.gallery_ids], dtype=bool)
    if not rows.any() or not cols.any():
        raise UsageError("no labelled identity among the probes or in the gallery: do the "
                         "label file's names match the folder names?")
    new_col = np.cumsum(cols) - 1
    mate = ss.mate[rows]
    mate = np.where(mate >= 0, new_col[np.maximum(mate, 0)], -1).astype(np.int64)
    kept = ScoreSet(
        scores=ss.scores[np.ix_(rows, cols)], mate=mate,
        gallery_ids=tuple(s for s, c in zip(ss.gallery_ids, cols, strict=True) if c),
        label=ss.label, metric=ss.metric, info=dict(ss.info),
        probe_ids=tuple(p for p, r in zip(ss.probe_ids, rows, strict=True) if r),
    )
    names = tuple(sorted(data - unlabelled))
    index = {n: i for i, n in enumerate(names)}
    groups = tuple(sorted({labels[n] for n in names}))
    gidx = {g: i for i, g in enumerate(groups)}
    return Population(
        ss=kept, groups=groups, names=names,
        group_of=np.array([gidx[labels[n]] for n in names], dtype=np.int64),
        probe_id=np.array([index[p] for p in kept.probe_ids], dtype=np.int64),
        subject_id=np.array([index[s] for s in kept.gallery_ids], dtype=np.int64),
        unlabelled_identities=len(unlabelled),
        unlabelled_probes=int(np.sum(~rows)),
        unlabelled_subjects=int(np.sum(~cols)),
        labels_not_in_data=len(set(labels) - data),
    )


@dataclass(frozen=True, slots=True)
class Rate:
    """Events among units at one threshold, with a 95 % interval or why there is none."""

    count: int
    units: int
    identities: int  # distinct identities behind the units (the smaller side of a pair)
    interval: tuple[float, float] | None
    method: str  # "bootstrap" | "clopper-pearson" | "clopper-pearson (zero count)" | ""
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.units if self.units else float("nan")


class Units:
    """Units (pairs or searches) of one group or cell: which counts as an event at T, and
    the bootstrap replicates of its rate (units weighted by their identities' draws)."""

    def __init__(self, values: F64, first: I64, second: I64 | None, *, below: bool,
                 n_identities: int) -> None:
        order = np.argsort(-values, kind="stable")
        self.values = values[order]  # descending
        self.first = first[order]
        self.second = None if second is None else second[order]
        self.below = below  # event = value < T (misses), else value >= T
        self.n = int(values.size)
        self.identities = n_identities
        self.denominators: F64 | None = None

    def counts(self, thresholds: F64) -> I64:
        above = np.searchsorted(-self.values, -thresholds, side="right")  # values >= t
        return np.asarray(self.n - above if self.below else above, dtype=np.int64)

    def weighted(self, w: F64, thresholds: F64) -> tuple[F64, F64]:
        """(numerators (R, T), denominators (R,)) of the bootstrap replicates."""
        reps = w.shape[0]
        if self.denominators is None:
            self.denominators = self._sum(w, 0, self.n)
        ends = np.searchsorted(-self.values, -thresholds, side="right")
        num = np.zeros((reps, thresholds.size), dtype=np.float64)
        order = np.argsort(ends)
        running = np.zeros(reps, dtype=np.float64)
        start = 0
        for t in order:  # cumulative sums over the descending values, up to each end
            end = int(ends[t])
            if end > start:
                running = running + self._sum(w, start, end)
                start = end
            num[:, t] = running
        if self.below:
            num = self.denominators[:, None] - num
        return num, self.denominators

    def _sum(self, w: F64, start: int, end: int) -> F64:
        out = np.zeros(w.shape[0], dtype=np.float64)
        for s in range(start, end, _CHUNK):
            e = min(end, s + _CHUNK)
            prod = w[:, self.first[s:e]]
            if self.second is not None:
                prod = prod * w[:, self.second[s:e]]
            out += prod.sum(axis=1)
        return out


class PairCell(Units):
    """Impostor pairs of probe group x gallery group. Only pairs scoring at least
    ``floor`` are kept one by one; the denominators of the replicates come from the
    pair counts per (probe identity, subject) instead, so no pair is dropped from them."""

    def __init__(self, pop: Population, g_probe: int, g_subject: int, floor: float) -> None:
        ss = pop.ss
        rows = np.flatnonzero(pop.group_of[pop.probe_id] == g_probe)
        cols = np.flatnonzero(pop.group_of[pop.subject_id] == g_subject)
        sub = ss.scores[np.ix_(rows, cols)].astype(np.float64)
        where = {int(c): k for k, c in enumerate(cols)}
        for k, r in enumerate(rows):  # a probe's own subject is a genuine pair
            j = where.get(int(ss.mate[r]), -1)
            if j >= 0:
                sub[k, j] = -np.inf
        finite = np.isfinite(sub)
        self.all_values = np.sort(sub[finite])[::-1]
        hi_r, hi_c = np.nonzero(sub >= floor)
        a, b = pop.probe_id[rows], pop.subject_id[cols]
        super().__init__(sub[hi_r, hi_c], a[hi_r], b[hi_c], below=False, n_identities=0)
        self.n = int(self.all_values.size)
        has = finite.any(axis=1)
        self.probe_identities = int(np.unique(a[has]).size)
        self.subject_identities = int(np.unique(b[finite.any(axis=0)]).size)
        self.identities = min(self.probe_identities, self.subject_identities)
        # pairs per (probe identity, subject), for the replicates' denominators
        order = np.argsort(a, kind="stable")
        self._agg_ids, first = np.unique(a[order], return_index=True)
        self._agg: F64 = (np.add.reduceat(finite[order].astype(np.float64), first, axis=0)
                          if rows.size and cols.size else np.zeros((0, cols.size)))
        self._subjects = b

    def counts(self, thresholds: F64) -> I64:
        return np.asarray(np.searchsorted(-self.all_values, -thresholds, side="right"),
                          dtype=np.int64)

    def weighted(self, w: F64, thresholds: F64) -> tuple[F64, F64]:
        if self.denominators is None:
            self.denominators = ((w[:, self._agg_ids] @ self._agg) * w[:, self._subjects]).sum(1)
        return super().weighted(w, thresholds)


def search_units(pop: Population, group: int, *, mated: bool) -> Units:
    """The group's mated searches (event: a miss, rank-1 score < T) or non-mated ones
    (event: a false positive, top score >= T)."""
    ss = pop.ss
    rows = pop.group_of[pop.probe_id] == group
    if mated:
        sel = rows[ss.mate >= 0]
        values = mated_rank1(ss)[sel]
        ids = pop.probe_id[ss.mate >= 0][sel]
    else:
        sel = rows & (ss.mate < 0)
        values = top_scores(ss)[sel]
        ids = pop.probe_id[sel]
    return Units(values, ids, None, below=mated, n_identities=int(np.unique(ids).size))


def genuine_units(pop: Population, group: int) -> Units:
    """The group's genuine pairs (a mated probe and its own subject; event: score < T)."""
    ss = pop.ss
    m = np.flatnonzero((ss.mate >= 0) & (pop.group_of[pop.probe_id] == group))
    values = ss.scores[m, ss.mate[m]].astype(np.float64)
    ids = pop.probe_id[m]
    return Units(values, ids, None, below=True, n_identities=int(np.unique(ids).size))


@dataclass(frozen=True, slots=True)
class Measured:
    """Rates of a set of units over thresholds, and their bootstrap replicates."""

    counts: I64  # (T,)
    units: int
    identities: int
    boot: F64 | None  # (R, T) replicate rates, None without a bootstrap


def measure(units: Units, thresholds: F64, w: F64 | None) -> Measured:
    boot = None
    if w is not None and units.n:
        num, den = units.weighted(w, thresholds)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.where(den[:, None] > 0, num / den[:, None], np.nan)
    return Measured(units.counts(thresholds), units.n, units.identities, boot)


def rate_at(m: Measured, t: int, *, method: str, min_identities: int,
            level: float = LEVEL) -> Rate:
    """The rate at threshold index ``t`` with its interval (``method``: "bootstrap" or
    "clopper-pearson"), or a note saying why there is none."""
    k = int(m.counts[t])
    if m.units == 0:
        return Rate(k, 0, m.identities, None, "", "no units")
    if m.identities < min_identities:
        return Rate(k, m.units, m.identities, None, "",
                    f"too small for an interval: {m.identities} identities, at least "
                    f"{min_identities} needed")
    if method == "bootstrap" and k == 0:
        return Rate(k, m.units, m.identities, clopper_pearson(0, m.units, level),
                    "clopper-pearson (zero count)",
                    "no event: upper bound by Clopper-Pearson over the units (a zero count "
                    "cannot be bootstrapped); it treats them as independent")
    if method == "bootstrap" and m.boot is not None:
        vals = m.boot[:, t]
        vals = vals[np.isfinite(vals)]
        return Rate(k, m.units, m.identities, percentile(vals, level), "bootstrap")
    return Rate(k, m.units, m.identities, clopper_pearson(k, m.units, level),
                "clopper-pearson")


@dataclass(frozen=True, slots=True)
class Measurement:
    """Everything measured over thresholds, before it is summarised."""

    pop: Population
    thresholds: F64  # ascending
    fmr: dict[tuple[int, int], Measured]  # (probe group, gallery group)
    fnmr: dict[int, Measured]
    fpir: dict[int, Measured]
    fnir: dict[int, Measured]
    reps: int


def measure_all(pop: Population, thresholds: Sequence[float], *, reps: int = 1000,
                seed: int = 0, progress: Callable[[], object] | None = None) -> Measurement:
    """Every rate at every threshold; ``progress()`` after each of the
    ``groups**2 + 3 * groups`` sets of units."""
    thr = np.unique(np.asarray(thresholds, dtype=np.float64))
    w = identity_weights(pop.group_of, reps, seed) if reps > 0 else None
    ng = len(pop.groups)

    def done(m: Measured) -> Measured:
        if progress is not None:
            progress()
        return m

    fmr = {(a, b): done(measure(PairCell(pop, a, b, float(thr[0])), thr, w))
           for a in range(ng) for b in range(ng)}
    return Measurement(
        pop=pop, thresholds=thr, fmr=fmr,
        fnmr={g: done(measure(genuine_units(pop, g), thr, w)) for g in range(ng)},
        fpir={g: done(measure(search_units(pop, g, mated=False), thr, None))
              for g in range(ng)},
        fnir={g: done(measure(search_units(pop, g, mated=True), thr, w)) for g in range(ng)},
        reps=reps,
    )
