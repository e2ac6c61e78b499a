"""Open-set 1:N figures from a :class:`ScoreSet` (pure): rank-1, FPIR/FNIR/TPIR at a
threshold or a target FPIR, DET curves, and the report ``edge eval identify`` prints.

The measures and their edge cases are described in :mod:`edge.evaluation.identify`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import UsageError
from edge.evaluation.identify_scores import ScoreSet

F64 = npt.NDArray[np.float64]

DEFAULT_FPIRS: tuple[float, ...] = (0.001, 1 / 6000)


def top_scores(ss: ScoreSet) -> F64:
    """Each probe's best gallery score (``-inf`` without a template)."""
    if ss.scores.shape[1] == 0:
        return np.full(ss.scores.shape[0], -np.inf)
    return np.asarray(ss.scores.max(axis=1), dtype=np.float64)


def nonmated_top(ss: ScoreSet) -> F64:
    return top_scores(ss)[ss.mate < 0]


def mated_rank1(ss: ScoreSet) -> F64:
    """For each mated probe: its mate's score if the mate is the top candidate, else -inf."""
    m = ss.mate >= 0
    rows = ss.scores[m].astype(np.float64)
    mates = ss.mate[m]
    mate_score = rows[np.arange(rows.shape[0]), mates]
    top = rows.max(axis=1) if rows.shape[1] else np.full(rows.shape[0], -np.inf)
    rank1 = (mate_score >= top) & np.isfinite(mate_score)
    return np.where(rank1, mate_score, -np.inf)


def mated_wrong_top(ss: ScoreSet) -> F64:
    """For each mated probe: the top score if a *non-mate* is the top candidate, else -inf."""
    m = ss.mate >= 0
    rows = ss.scores[m].astype(np.float64)
    if rows.shape[0] == 0:
        return np.zeros(0)
    mates = ss.mate[m]
    mate_score = rows[np.arange(rows.shape[0]), mates]
    masked = rows.copy()
    masked[np.arange(rows.shape[0]), mates] = -np.inf
    other = masked.max(axis=1) if rows.shape[1] > 1 else np.full(rows.shape[0], -np.inf)
    return np.where(other > mate_score, other, -np.inf)


def rank1_rate(ss: ScoreSet) -> float | None:
    r = mated_rank1(ss)
    return float(np.mean(np.isfinite(r))) if r.size else None


def fpir_at(nonmated: F64, threshold: float) -> float:
    return float(np.mean(nonmated >= threshold)) if nonmated.size else float("nan")


def fnir_at(rank1: F64, threshold: float) -> float:
    return float(np.mean(rank1 < threshold)) if rank1.size else float("nan")


def threshold_for_fpir(nonmated: F64, target: float) -> float:
    """The lowest threshold letting through at most ``floor(target * n)`` non-mated searches."""
    finite = np.sort(nonmated[np.isfinite(nonmated)])[::-1]
    n = nonmated.size
    if n == 0:
        raise ValueError("no non-mated searches")
    allowed = int(np.floor(target * n + 1e-9))
    if allowed >= finite.size:
        # Everything that has a template may pass: any threshold at or below the lowest.
        return float(finite[-1]) if finite.size else float("-inf")
    return float(np.nextafter(finite[allowed], np.inf))


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    fpir_target: float | None  # None for a point at a given threshold
    threshold: float
    fpir: float
    false_positives: int
    tpir: float
    fnir: float
    mated_wrong_subject: float  # mated searches whose top candidate is another subject >= T
    below_resolution: bool  # target < 1/n: met only as "no false positive at all"

    def to_dict(self) -> dict[str, Any]:
        return {
            "fpir_target": self.fpir_target,
            "threshold": _r(self.threshold),
            "fpir": _r(self.fpir, 7),
            "false_positives": self.false_positives,
            "tpir": _r(self.tpir),
            "fnir": _r(self.fnir),
            "mated_wrong_subject": _r(self.mated_wrong_subject),
            "below_resolution": self.below_resolution,
        }


def _r(v: float, nd: int = 6) -> float | None:
    return None if not np.isfinite(v) else round(float(v), nd)


def point_at(ss: ScoreSet, threshold: float, target: float | None = None) -> OperatingPoint:
    nm = nonmated_top(ss)
    r1 = mated_rank1(ss)
    wrong = mated_wrong_top(ss)
    n = nm.size
    return OperatingPoint(
        fpir_target=target,
        threshold=threshold,
        fpir=fpir_at(nm, threshold),
        false_positives=int(np.sum(nm >= threshold)),
        tpir=1.0 - fnir_at(r1, threshold),
        fnir=fnir_at(r1, threshold),
        mated_wrong_subject=float(np.mean(wrong >= threshold)) if wrong.size else float("nan"),
        below_resolution=target is not None and n > 0 and target * n < 1.0,
    )


def operating_points(ss: ScoreSet, fpirs: Sequence[float]) -> list[OperatingPoint]:
    """One point per target FPIR; none when there are no non-mated searches to measure it."""
    nm = nonmated_top(ss)
    if nm.size == 0:
        return []
    return [point_at(ss, threshold_for_fpir(nm, f), f) for f in fpirs]


@dataclass(frozen=True, slots=True)
class DetCurve:
    """FNIR against FPIR over every threshold (descending FPIR)."""

    label: str
    thresholds: F64
    fpir: F64
    fnir: F64
    points: tuple[OperatingPoint, ...] = ()


def det_curve(ss: ScoreSet, fpirs: Sequence[float] = ()) -> DetCurve:
    nm = np.sort(nonmated_top(ss))
    r1 = np.sort(mated_rank1(ss))
    cand = np.concatenate([nm, r1])
    thr = np.unique(cand[np.isfinite(cand)])
    if nm.size == 0 or r1.size == 0:
        raise UsageError(
            f"{ss.label or 'this run'}: a DET curve needs both mated and non-mated probes"
        )
    fpir = (nm.size - np.searchsorted(nm, thr, side="left")) / nm.size
    fnir = np.searchsorted(r1, thr, side="left") / r1.size
    return DetCurve(
        label=ss.label,
        thresholds=thr.astype(np.float64),
        fpir=fpir.astype(np.float64),
        fnir=fnir.astype(np.float64),
        points=tuple(operating_points(ss, fpirs)),
    )


def report(
    ss: ScoreSet,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    *,
    family_threshold: float | None = None,
) -> dict[str, Any]:
    """The JSON figures of ``edge eval identify``."""
    if family_threshold is None and "family_threshold" in ss.info:
        family_threshold = float(ss.info["family_threshold"])
    nm = nonmated_top(ss)
    out: dict[str, Any] = {
        "label": ss.label,
        "metric": ss.metric,
        "model": {k: v for k, v in ss.info.items() if k != "probe_images"},
        "probe_images": int(k) if (k := ss.info.get("probe_images", "1")).isdigit() else None,
        "counts": {
            "gallery_subjects": len(ss.gallery_ids),
            "gallery_images": ss.gallery_images,
            "gallery_without_template": ss.gallery_failures,
            "mated_probes": ss.n_mated,
            "non_mated_probes": ss.n_non_mated,
            "probes_without_face": ss.probe_failures,
        },
        "rank1": None if (r1 := rank1_rate(ss)) is None else _r(r1),
        "fpir_resolution": _r(1.0 / nm.size, 7) if nm.size else None,
        "operating_points": [p.to_dict() for p in operating_points(ss, fpirs)],
        "candidate_list": 1,
    }
    if nm.size == 0:
        out["note"] = "no non-mated probes: FPIR and its thresholds cannot be measured"
    elif ss.n_mated == 0:
        out["note"] = "no mated probes: TPIR, FNIR and rank-1 cannot be measured"
    if family_threshold is not None and nm.size:
        out["at_family_threshold"] = point_at(ss, family_threshold).to_dict()
    return out


def format_text(rep: dict[str, Any]) -> list[str]:
    c = rep["counts"]
    lines = [
        f"{rep['label'] or 'identify'}: gallery {c['gallery_subjects']} subjects "
        f"({c['gallery_images']} images, {c['gallery_without_template']} without a face), "
        f"{c['mated_probes']} mated and {c['non_mated_probes']} non-mated probes"
        f"{_k_images(rep)} "
        f"({c['probes_without_face']} without a face)",
        f"  rank-1 {rep['rank1']}",
    ]
    if "note" in rep:
        lines.append(f"  note: {rep['note']}")
    for p in rep["operating_points"]:
        note = "  (below resolution: no false positive at all)" if p["below_resolution"] else ""
        lines.append(
            f"  FPIR {p['fpir_target']:.6g}: threshold {p['threshold']}, TPIR {p['tpir']}, "
            f"FNIR {p['fnir']}, measured FPIR {p['fpir']} ({p['false_positives']} false "
            f"positives){note}"
        )
    base = rep.get("same_images_one_by_one")
    if base:
        pts = ", ".join(f"TPIR {p['tpir']} at FPIR {p['fpir_target']:.6g}"
                        for p in base["operating_points"])
        lines.append(f"  the same images one by one ({base['counts']['mated_probes']} mated, "
                     f"{base['counts']['non_mated_probes']} non-mated): rank-1 {base['rank1']}"
                     f"{', ' + pts if pts else ''}")
    fam = rep.get("at_family_threshold")
    if fam:
        lines.append(
            f"  at the family threshold {fam['threshold']}: FPIR {fam['fpir']}, TPIR {fam['tpir']}"
        )
    return lines


def _k_images(rep: dict[str, Any]) -> str:
    k = rep.get("probe_images")
    return f" of {k} images each (fused)" if isinstance(k, int) and k > 1 else ""
