"""The figures of ``edge eval demographics``: the rates at one operating point, the ratios
between groups, and the sweep that answers NPL's question (from which threshold are the
differences in false match rate no longer significant?).

**Ratios** (max/min across the groups with enough identities for an interval): the groups
are the highest and lowest at the point estimate, and the interval is the percentile
bootstrap over identities of *that* pair's ratio (so it can reach below 1). A difference
is **significant** when the 95 % interval excludes 1. Where the lowest group has no event
(FMR 0), the ratio is undefined (infinite): only a lower bound is given, the bootstrap's
2.5 % bound of the highest group over the Clopper-Pearson 97.5 % upper bound of the zero
group, and the difference is significant only if that bound exceeds 1. Where no group has
an event the ratio cannot be measured at all (not significant, and not evidence of
equality either: say how many pairs there were).

**Sweep**: ``not_significant_from`` is the lowest swept threshold from which *no* higher
swept threshold shows a significant FMR difference; ``lowest_not_significant`` the lowest
single threshold whose interval covers 1 (it can lie below a threshold that is
significant again); ``ratio_at_most_1_5_from`` the lowest from which every ratio is at most
1.5 (or no group has a false match). As the threshold rises the counts fall and the
intervals widen: "not significant" there also means "too few false matches to tell", which
is why each point keeps its counts and interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.evaluation.demographics import Measured, Measurement, Population, Rate, rate_at
from edge.evaluation.intervals import LEVEL, clopper_pearson, percentile

INTERVALS = {
    "level": LEVEL,
    "fmr_fnmr": "percentile bootstrap over identities, stratified by group (a pair weighs "
                "the product of its two identities' draws); a zero count: Clopper-Pearson "
                "upper bound over the pairs",
    "fpir_fnir": "Clopper-Pearson (exact binomial; each search one trial)",
    "ratios": "percentile bootstrap over identities of the ratio of the groups that are "
              "highest and lowest at the point estimate; significant when the interval "
              "excludes 1",
}


def _r(v: float | None, nd: int = 8) -> float | None:
    if v is None or not np.isfinite(v):
        return None
    return float(f"{v:.{nd}g}")


def rate_dict(r: Rate) -> dict[str, Any]:
    d: dict[str, Any] = {
        "rate": _r(r.rate), "count": r.count, "n": r.units, "identities": r.identities,
        "interval": None if r.interval is None else [_r(r.interval[0]), _r(r.interval[1])],
        "interval_method": r.method or None,
    }
    if r.note:
        d["note"] = r.note
    return d


def ratio_at(meas: Measurement, kind: str, t: int, min_identities: int) -> dict[str, Any]:
    """Max/min of ``kind`` ("fmr": within-group FMR, "fnir") across the groups at
    threshold index ``t`` (see the module docstring)."""
    pop = meas.pop
    per: dict[int, Measured] = (
        {g: meas.fmr[(g, g)] for g in range(len(pop.groups))} if kind == "fmr" else meas.fnir
    )
    ok = [g for g, m in per.items() if m.units and m.identities >= min_identities]
    left_out = [pop.groups[g] for g in per if g not in ok]
    out: dict[str, Any] = {"ratio": None, "max_group": None, "min_group": None,
                           "interval": None, "significant": False}
    if left_out:
        out["left_out"] = left_out
    if len(ok) < 2:
        out["note"] = (f"fewer than two groups with at least {min_identities} identities: "
                       "no ratio")
        return out
    rates = {g: per[g].counts[t] / per[g].units for g in ok}
    gmax = max(ok, key=lambda g: (rates[g], -g))
    gmin = min(ok, key=lambda g: (rates[g], g))
    kmax, kmin = int(per[gmax].counts[t]), int(per[gmin].counts[t])
    out.update(max_group=pop.groups[gmax], min_group=pop.groups[gmin])
    bmax, bmin = per[gmax].boot, per[gmin].boot
    if kmax == 0:
        out["note"] = (f"no group has an event: the ratio cannot be measured (each rate is "
                       f"below its upper bound, e.g. {pop.groups[gmin]} < "
                       f"{clopper_pearson(0, per[gmin].units)[1]:.3g})")
        return out
    if bmax is None or bmin is None:
        return out
    if kmin == 0:
        upper_min = clopper_pearson(0, per[gmin].units)[1]
        lo_max = percentile(bmax[:, t][np.isfinite(bmax[:, t])])[0]
        lo = lo_max / upper_min
        out.update(interval=[_r(lo), None], significant=bool(lo > 1.0),
                   note=f"{pop.groups[gmin]} has no event among {per[gmin].units} units: the "
                   "ratio is undefined (infinite); the interval's lower bound is the "
                   f"{pop.groups[gmax]} rate's bootstrap lower bound over "
                   f"{pop.groups[gmin]}'s Clopper-Pearson upper bound, its upper bound none")
        return out
    a, b = bmax[:, t], bmin[:, t]
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = np.where(b > 0, a / b, np.where(a > 0, np.inf, 1.0))
    reps = reps[~np.isnan(reps)]
    lo, hi = percentile(reps)
    out.update(ratio=_r(rates[gmax] / rates[gmin], 6), interval=[_r(lo, 6), _r(hi, 6)],
               significant=bool(lo > 1.0 or hi < 1.0))
    return out


def _sweep(meas: Measurement, sweep: Sequence[float], min_identities: int) -> dict[str, Any]:
    pop = meas.pop
    idx = [int(np.searchsorted(meas.thresholds, t)) for t in sweep]
    points: list[dict[str, Any]] = []
    for t, i in zip(sweep, idx, strict=True):
        ratio = ratio_at(meas, "fmr", i, min_identities)
        points.append({
            "threshold": _r(t, 6),
            "fmr": {g: rate_dict(rate_at(meas.fmr[(k, k)], i, method="bootstrap",
                                         min_identities=min_identities))
                    for k, g in enumerate(pop.groups)},
            "fnir": {g: rate_dict(rate_at(meas.fnir[k], i, method="clopper-pearson",
                                          min_identities=min_identities))
                     for k, g in enumerate(pop.groups)},
            "fmr_ratio": ratio,
            "fnir_ratio": ratio_at(meas, "fnir", i, min_identities),
        })

    def tail_from(ok: list[bool]) -> float | None:
        """The lowest swept threshold from which every higher one is ``ok``."""
        if not ok or not ok[-1]:
            return None
        k = len(ok) - 1
        while k > 0 and ok[k - 1]:
            k -= 1
        return _r(sweep[k], 6)

    not_sig = [not p["fmr_ratio"]["significant"] for p in points]
    small = []
    for p in points:
        r = p["fmr_ratio"]
        none = all(v["count"] == 0 for v in p["fmr"].values())
        small.append(none or (r["ratio"] is not None and r["ratio"] <= 1.5))
    zero_from = {g: tail_from([p["fmr"][g]["count"] == 0 for p in points]) for g in pop.groups}
    out: dict[str, Any] = {
        "thresholds": [_r(t, 6) for t in sweep],
        "not_significant_from": tail_from(not_sig),
        "lowest_not_significant": next((_r(t, 6) for t, ok in zip(sweep, not_sig, strict=True)
                                        if ok), None),
        "ratio_at_most_1_5_from": tail_from(small),
        "fmr_zero_from": zero_from,
        "points": points,
    }
    nsf = out["not_significant_from"]
    if nsf is None:
        out["note"] = ("the FMR difference is significant at the highest swept threshold: "
                       "sweep higher (--sweep)")
    elif not_sig[0]:
        out["note"] = ("no swept threshold shows a significant FMR difference: sweep lower "
                       "(--sweep) to see where differences start")
    return out


def report(
    meas: Measurement,
    threshold: float,
    sweep: Sequence[float],
    *,
    min_identities: int,
    seed: int,
    operating: dict[str, Any],
    labels_file: str,
) -> dict[str, Any]:
    """The JSON report of ``edge eval demographics``."""
    pop = meas.pop
    t = int(np.searchsorted(meas.thresholds, threshold))

    def rate(m: Measured, method: str) -> dict[str, Any]:
        return rate_dict(rate_at(m, t, method=method, min_identities=min_identities))

    groups = {}
    for k, g in enumerate(pop.groups):
        groups[g] = {
            "identities": int(np.sum(pop.group_of == k)),
            "gallery_subjects": int(np.sum(pop.group_of[pop.subject_id] == k)),
            "probes": int(np.sum(pop.group_of[pop.probe_id] == k)),
            "fmr": rate(meas.fmr[(k, k)], "bootstrap"),
            "fnmr": rate(meas.fnmr[k], "bootstrap"),
            "fpir": rate(meas.fpir[k], "clopper-pearson"),
            "fnir": rate(meas.fnir[k], "clopper-pearson"),
        }
    matrix = {g1: {g2: rate(meas.fmr[(a, b)], "bootstrap") for b, g2 in enumerate(pop.groups)}
              for a, g1 in enumerate(pop.groups)}
    out: dict[str, Any] = {
        "label": pop.ss.label,
        "model": dict(pop.ss.info),
        "labels": {
            "file": labels_file,
            "groups": sorted(pop.groups),
            "unlabelled_identities_left_out": pop.unlabelled_identities,
            "unlabelled_probes_left_out": pop.unlabelled_probes,
            "unlabelled_gallery_subjects_left_out": pop.unlabelled_subjects,
            "labels_not_in_the_data": pop.labels_not_in_data,
        },
        "operating_point": {"threshold": _r(threshold, 6), **operating,
                            "searches_against_gallery_subjects": len(pop.ss.gallery_ids)},
        "intervals": {**INTERVALS, "bootstrap_replicates": meas.reps, "seed": seed,
                      "min_identities": min_identities},
        "groups": groups,
        "fmr_matrix": {"rows": "probe group", "columns": "gallery group", "cells": matrix},
        "ratios": {"fmr": ratio_at(meas, "fmr", t, min_identities),
                   "fnir": ratio_at(meas, "fnir", t, min_identities)},
        "sweep": _sweep(meas, sweep, min_identities),
    }
    nsf = out["sweep"]["not_significant_from"]
    if nsf is not None:
        out["operating_point"]["at_or_above_not_significant_from"] = bool(threshold >= nsf)
    return out


def population_line(pop: Population) -> str:
    parts = [f"{g} {int(np.sum(pop.group_of == k))}" for k, g in enumerate(pop.groups)]
    return f"identities: {', '.join(parts)}"


# --- the sweep's thresholds ------------------------------------------------------------------


def auto_sweep(pop: Population, step: float = 0.01, max_points: int = 100) -> list[float]:
    """From the threshold where the pooled FMR of the labelled pairs is 1 % (rounded down
    to ``step``) to one step above the highest impostor score (every FMR 0 there)."""
    from edge.evaluation.calibrate import impostor_scores
    from edge.evaluation.identify_metrics import threshold_for_fpir

    imp = impostor_scores(pop.ss)
    if imp.size == 0:
        return []
    lo = float(np.floor(threshold_for_fpir(imp, 0.01) / step) * step)
    hi = float(np.ceil(float(imp[-1]) / step) * step + step)
    n = round((hi - lo) / step) + 1
    if n > max_points:
        step = (hi - lo) / (max_points - 1)
        n = max_points
    return [round(float(lo + i * step), 6) for i in range(n)]


def parse_sweep(text: str) -> list[float]:
    """``FROM:TO:STEP`` (similarities, FROM < TO, at most 500 points)."""
    from edge.errors import UsageError

    try:
        lo, hi, step = (float(v) for v in text.split(":"))
    except ValueError:
        raise UsageError(f"--sweep {text!r}: expected FROM:TO:STEP like 0.4:0.8:0.01") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or not lo < hi or not step > 0:
        raise UsageError(f"--sweep {text!r}: needs FROM < TO and STEP > 0")
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    if n > 500:
        raise UsageError(f"--sweep {text!r}: {n} thresholds, at most 500")
    return [round(lo + i * step, 9) for i in range(n)]


# --- text -----------------------------------------------------------------------------------


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _rate_text(d: dict[str, Any], unit: str) -> str:
    iv = d["interval"]
    inter = f" [{_g(iv[0])}, {_g(iv[1])}]" if iv is not None else ""
    note = ""
    if iv is None and d.get("note"):
        note = f"; {d['note']}"
    return f"{_g(d['rate'])}{inter} ({d['count']:,} of {d['n']:,} {unit}{note})"


def _ratio_text(name: str, r: dict[str, Any]) -> str:
    if r["max_group"] is None or (r["ratio"] is None and r["interval"] is None):
        return f"  {name} ratio: none ({r.get('note', 'no groups')})"
    iv = r["interval"]
    sig = "significant" if r["significant"] else "not significant"
    if r["ratio"] is None:
        return (f"  {name} ratio {r['max_group']}/{r['min_group']} undefined (no event in "
                f"{r['min_group']}), at least {_g(iv[0])}: {sig}")
    inter = f"[{_g(iv[0])}, {_g(iv[1]) if iv[1] is not None else 'inf'}]"
    return f"  {name} ratio {r['max_group']}/{r['min_group']} {_g(r['ratio'])} {inter}: {sig}"


def format_text(rep: dict[str, Any]) -> list[str]:
    lab = rep["labels"]
    op = rep["operating_point"]
    src = op.get("source", "")
    if src == "calibrated":
        c = op["calibration"]
        how = (f"calibrated: FPIR {c['fpir_target']:g} for {c['watchlist_size']} subjects, "
               f"{c['method']}")
    else:
        how = "given"
    groups = ", ".join(f"{g} {v['identities']:,} identities ({v['gallery_subjects']:,} in "
                       f"the gallery, {v['probes']:,} probes)" for g, v in rep["groups"].items())
    lines = [
        f"{rep['label'] or 'demographics'}: {groups}",
        f"  left out, no label: {lab['unlabelled_identities_left_out']} identities "
        f"({lab['unlabelled_probes_left_out']} probes, "
        f"{lab['unlabelled_gallery_subjects_left_out']} gallery subjects)",
        f"  operating point: threshold {op['threshold']} ({how}); FPIR and FNIR are of "
        f"searches against the whole gallery ({op['searches_against_gallery_subjects']:,} "
        "subjects)",
        f"  95 % intervals: FMR, FNMR and ratios by a bootstrap over identities "
        f"({rep['intervals']['bootstrap_replicates']} replicates); FPIR, FNIR by "
        "Clopper-Pearson",
    ]
    for g, v in rep["groups"].items():
        lines.append(f"  {g}: FMR {_rate_text(v['fmr'], 'impostor pairs within the group')}; "
                     f"FNMR {_rate_text(v['fnmr'], 'genuine pairs')}")
        lines.append(f"  {' ' * len(g)}  FPIR {_rate_text(v['fpir'], 'non-mated searches')}; "
                     f"FNIR {_rate_text(v['fnir'], 'mated searches')}")
    cells = rep["fmr_matrix"]["cells"]
    lines.append("  FMR, probe group x gallery group: " + "; ".join(
        f"{a} x {b} {_g(c['rate'])} ({c['count']:,}/{c['n']:,})"
        for a, row in cells.items() for b, c in row.items()))
    lines.append(_ratio_text("FMR", rep["ratios"]["fmr"]))
    lines.append(_ratio_text("FNIR", rep["ratios"]["fnir"]))
    sw = rep["sweep"]
    if sw["thresholds"]:
        zero = ", ".join(f"{g} {_g(t)}" for g, t in sw["fmr_zero_from"].items())
        lines.append(
            f"  sweep {sw['thresholds'][0]:g}..{sw['thresholds'][-1]:g}: FMR differences not "
            f"significant from {_g(sw['not_significant_from'])} (lowest single threshold "
            f"{_g(sw['lowest_not_significant'])}); ratio <= 1.5 from "
            f"{_g(sw['ratio_at_most_1_5_from'])}; FMR 0 from: {zero}")
        if sw.get("note"):
            lines.append(f"  note: {sw['note']}")
        for p in sw["points"]:
            per = "  ".join(f"{g} {_g(v['rate'])} ({v['count']:,})" for g, v in p["fmr"].items())
            r = p["fmr_ratio"]
            mark = " *" if r["significant"] else ""
            iv = r["interval"]
            if iv is None:
                ratio = "ratio -"
            elif r["ratio"] is None:
                ratio = f"ratio undefined (no false match in {r['min_group']}), >= {_g(iv[0])}"
            else:
                ratio = (f"ratio {_g(r['ratio'])} [{_g(iv[0])}, "
                         f"{_g(iv[1]) if iv[1] is not None else 'inf'}]")
            lines.append(f"    {p['threshold']:.4f}  {per}  {ratio}{mark}")
        lines.append("    (* the FMR difference is significant: its 95 % interval excludes 1)")
    return lines
