"""The plot of ``edge eval demographics --plot``: FMR (within each group, log scale) and
FNIR per group against the threshold, with their 95 % intervals as bands, the operating
point and the threshold from which FMR differences are no longer significant marked.

matplotlib (the ``eval`` extra), Agg backend. A zero FMR cannot sit on a log axis: it is
drawn as a downward triangle at its upper bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import UsageError
from edge.evaluation.det_plot import save_figure


def plot_demographics(rep: dict[str, Any], out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install 'lfr-edge[eval]')") from None
    points = rep["sweep"]["points"]
    if not points:
        raise UsageError("--plot: no thresholds were swept")
    t = np.array([p["threshold"] for p in points], dtype=np.float64)
    fig, (ax_fmr, ax_fnir) = plt.subplots(1, 2, figsize=(11.0, 4.6), dpi=120)
    for g in rep["groups"]:
        for ax, key, log in ((ax_fmr, "fmr", True), (ax_fnir, "fnir", False)):
            rows = [p[key][g] for p in points]
            rate = np.array([np.nan if r["rate"] is None else r["rate"] for r in rows])
            lo = np.array([np.nan if r["interval"] is None else r["interval"][0] for r in rows])
            hi = np.array([np.nan if r["interval"] is None else r["interval"][1] for r in rows])
            zero = rate == 0
            shown = np.where(zero & log, np.nan, rate)
            (line,) = ax.plot(t, shown, marker=".", linewidth=1.4,
                              label=f"{g} ({rep['groups'][g]['identities']:,} identities)")
            positive = rate[np.isfinite(rate) & (rate > 0)]
            floor = positive.min() / 10 if positive.size else 1e-7
            band_lo = np.where(log & (lo <= 0), floor, lo)  # a lower bound of 0, on a log axis
            ax.fill_between(t, band_lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)
            if log and zero.any():
                ax.plot(t[zero], hi[zero], linestyle="none", marker="v",
                        color=line.get_color(), markersize=5)
    op = rep["operating_point"]["threshold"]
    nsf = rep["sweep"]["not_significant_from"]
    for ax in (ax_fmr, ax_fnir):
        ax.axvline(op, color="black", linewidth=1.0, label=f"operating point {op:.3f}")
        if nsf is not None:
            ax.axvline(nsf, color="grey", linestyle="--", linewidth=1.0,
                       label=f"FMR differences not significant from {nsf:.3f}")
        ax.set_xlabel("threshold (similarity)")
        ax.grid(True, which="both", alpha=0.3)
    ax_fmr.set_yscale("log")
    ax_fmr.set_ylabel("FMR within the group (impostor pairs)")
    ax_fmr.set_title("False match rate (bands: bootstrap over identities)", fontsize=9)
    ax_fnir.set_ylabel("FNIR (mated searches)")
    ax_fnir.set_title("False negative identification rate (bands: Clopper-Pearson)", fontsize=9)
    ax_fmr.legend(loc="lower left", fontsize=7)
    ax_fnir.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"{rep['label'] or 'demographics'}: error rates per group "
                 "(v: no false match, drawn at its upper bound)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)
