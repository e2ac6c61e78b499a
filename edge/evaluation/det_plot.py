"""DET plots (FNIR against FPIR, both on log axes) for one or several 1:N runs.

matplotlib (the ``eval`` extra) with the Agg backend, so it runs headless.
Points where FPIR or FNIR is zero cannot sit on a log axis: they are drawn at
half the axis' resolution and the legend says how many searches each curve
rests on; the operating points (target FPIRs) are dots, their thresholds in
the legend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import UsageError
from edge.evaluation.identify import DetCurve


def plot_det(
    curves: Sequence[DetCurve],
    out: Path,
    *,
    title: str = "Open-set 1:N identification (rank 1)",
    counts: Sequence[tuple[int, int]] | None = None,
) -> Path:
    """Draw ``curves`` into ``out`` (PNG); ``counts`` gives (mated, non-mated) per curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install 'lfr-edge[eval]')") from None
    if not curves:
        raise UsageError("nothing to plot")

    fig, ax = plt.subplots(figsize=(7.0, 5.5), dpi=120)
    floor_x = 1.0
    floor_y = 1.0
    for i, c in enumerate(curves):
        pos_x = c.fpir[c.fpir > 0]
        pos_y = c.fnir[c.fnir > 0]
        fx = (pos_x.min() if pos_x.size else 1e-4) / 2
        fy = (pos_y.min() if pos_y.size else 1e-4) / 2
        floor_x, floor_y = min(floor_x, fx), min(floor_y, fy)
        x = np.where(c.fpir > 0, c.fpir, fx)
        y = np.where(c.fnir > 0, c.fnir, fy)
        label = c.label or f"run {i + 1}"
        if counts is not None and i < len(counts):
            label += f" ({counts[i][0]} mated, {counts[i][1]} non-mated)"
        if c.points:
            label += "\n  " + ", ".join(
                f"FPIR {p.fpir_target:.2g}: T={p.threshold:.3f}, TPIR {p.tpir:.3f}"
                for p in c.points
                if p.fpir_target is not None
            )
        (line,) = ax.step(x, y, where="post", label=label, linewidth=1.4)
        for p in c.points:
            px = p.fpir if p.fpir > 0 else fx
            py = p.fnir if p.fnir > 0 else fy
            ax.plot([px], [py], marker="o", color=line.get_color(), markersize=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor_x, 1.0)
    ax.set_ylim(floor_y, 1.0)
    ax.set_xlabel("FPIR (false positive identification rate)")
    ax.set_ylabel("FNIR (false negative identification rate)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def save_figure(fig: Any, out: Path) -> Path:
    """Write ``fig`` as a PNG (making its folder) and close it; a path that cannot be
    written is one :class:`UsageError` line (the evaluation commands' ``--plot``)."""
    import matplotlib.pyplot as plt

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    except OSError as exc:
        raise UsageError(f"--plot {out}: cannot write ({exc.strerror})") from None
    finally:
        plt.close(fig)
    return out
