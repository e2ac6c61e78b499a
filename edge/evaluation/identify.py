"""Open-set 1:N identification: TPIR at fixed FPIR, FNIR, rank-1 and DET curves.

The measures follow NIST's FRVT 1:N reports (NISTIR 8271), with a candidate
list of length one, which is what an alerting system does:

- a *mated* search (the probe's identity is in the gallery) succeeds at
  threshold T when its mate is the top candidate **and** scores >= T;
  FNIR(T) is the share that fail, TPIR(T) = 1 - FNIR(T);
- a *non-mated* search (identity absent) is a false positive at T when its
  top candidate scores >= T; FPIR(T) is the share of non-mated searches that
  are false positives;
- rank-1 rate: the share of mated searches whose mate is the top candidate,
  whatever the score (closed-set accuracy).

Scores are similarities (higher = more alike; ``1 - distance`` for dlib). A
gallery subject with several images scores the best of them. An image in
which no face is found has no template: a mated probe without one is a miss,
a non-mated one cannot be a false positive (it still counts as a search), a
subject without one cannot be found.

With ``n`` non-mated searches the smallest non-zero FPIR is ``1/n``. The
threshold for a target FPIR is the lowest that lets through at most
``floor(target * n)`` non-mated searches; a target below ``1/n`` gets the
threshold just above the highest non-mated score, and the report says so
(``resolution``). LFW here has about 2,000 non-mated probes, so FPIR 1/6000
is really "no false positive among them".

LFW protocol (``lfw_sets``): every identity with at least two images gives a
gallery subject (its first image) and mated probes (its other images); every
image of the other identities is a non-mated probe.

Multi-image probes (``--probe-images K``, :func:`group_probes`): K images of an identity
fused into one template, the way the daemon fuses a track's frames; with ``--lfw`` a
share of the multi-image identities is then held out as non-mated (``holdout``), so
that non-mated searches have K images too.

The code is split by seam: :mod:`identify_sets` (what is searched),
:mod:`identify_scores` (embedding, fusion, the score matrix), :mod:`identify_metrics`
(the figures and the report); every name is importable from here as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge.errors import UsageError
from edge.evaluation.identify_metrics import (
    DEFAULT_FPIRS,
    DetCurve,
    OperatingPoint,
    det_curve,
    fnir_at,
    format_text,
    fpir_at,
    mated_rank1,
    mated_wrong_top,
    nonmated_top,
    operating_points,
    point_at,
    rank1_rate,
    report,
    threshold_for_fpir,
    top_scores,
)
from edge.evaluation.identify_scores import (
    Choice,
    EmbedStats,
    ScoreSet,
    check_paths,
    embed_images,
    pick_detection,
    probe_templates,
    read_image,
    score_search,
    score_searches,
    subject_scores,
)
from edge.evaluation.identify_sets import (
    IMAGE_SUFFIXES,
    Probe,
    SearchSet,
    folder_sets,
    group_probes,
    lfw_sets,
    limit_gallery,
    ungroup,
)
from edge.recognition.match import DEFAULT_REFERENCE, REFERENCES

if TYPE_CHECKING:
    from edge.vision.faces import FaceEngine

__all__ = [
    "DEFAULT_FPIRS", "IMAGE_SUFFIXES", "Choice", "DetCurve", "EmbedStats", "OperatingPoint",
    "Probe", "ScoreSet", "SearchSet", "check_paths", "det_curve", "embed_images", "fnir_at",
    "folder_sets", "format_text", "fpir_at", "group_probes", "lfw_sets", "limit_gallery",
    "mated_rank1", "mated_wrong_top", "nonmated_top", "operating_points", "parse_fpirs",
    "parse_gallery_images", "parse_probe_images", "parse_references",
    "pick_detection", "point_at", "probe_templates", "rank1_rate", "read_image", "report",
    "run_identify", "run_identify_many", "score_search", "score_searches", "subject_scores",
    "threshold_for_fpir", "top_scores", "ungroup",
]


def run_identify(
    engine: FaceEngine,
    sets: SearchSet,
    fpirs: Sequence[float],
    *,
    label: str,
    choose: Choice = "centre",
    fallback: bool = False,
    progress: bool = True,
    probe_images: int = 1,
    gallery_images: int = 1,
    reference: str = DEFAULT_REFERENCE,
) -> tuple[ScoreSet, dict[str, Any]]:
    """Score the search set and report (the CLI's body)."""
    return run_identify_many(
        engine, sets, fpirs, label=label, choose=choose, fallback=fallback, progress=progress,
        probe_images=[probe_images], gallery_images=[gallery_images], references=[reference],
    )[0]


def run_identify_many(
    engine: FaceEngine,
    sets: SearchSet,
    fpirs: Sequence[float],
    *,
    label: str,
    choose: Choice = "centre",
    fallback: bool = False,
    progress: bool = True,
    probe_images: Sequence[int] = (1,),
    gallery_images: Sequence[int] = (1,),
    references: Sequence[str] = (DEFAULT_REFERENCE,),
) -> list[tuple[ScoreSet, dict[str, Any]]]:
    """One (score set, report) per gallery K, reference mode and probe K (in that nesting),
    every image embedded once. ``sets`` must hold the largest gallery K
    (:func:`lfw_sets` ``gallery_images``); smaller ones take each subject's first K."""
    combos = [(gk, ref, pk) for gk in gallery_images for ref in references
              for pk in probe_images]
    grouped = [group_probes(limit_gallery(sets, gk), pk) for gk, _, pk in combos]
    several = len(gallery_images) > 1 or max(gallery_images) > 1 or len(references) > 1

    def name(gk: int, ref: str, pk: int) -> str:
        parts = [label] + ([f"{gk} gallery images, {ref}"] if several else [])
        return ", ".join(parts + ([f"{pk} images"] if pk > 1 else []))

    labels = [name(*c) for c in combos]
    # For K > 1, the same images searched one by one: the gain of fusing, population alike.
    singles = [(ungroup(g), c) for g, c in zip(grouped, combos, strict=True) if c[2] > 1]
    stats = EmbedStats()
    scored = score_searches(
        engine, [*grouped, *(g for g, _ in singles)],
        labels=[*labels, *(f"{name(*c)}, single" for _, c in singles)],
        choose=choose, fallback=fallback, progress=progress, stats=stats,
        references=[*(c[1] for c in combos), *(c[1] for _, c in singles)],
    )
    baselines = iter(scored[len(grouped):])
    out: list[tuple[ScoreSet, dict[str, Any]]] = []
    for ss, g, (gk, ref, k) in zip(scored[: len(grouped)], grouped, combos, strict=True):
        rep = report(ss, fpirs, family_threshold=engine.family.threshold)
        rep["gallery_images"] = gk
        rep["reference"] = ref
        if k > 1:
            base = report(next(baselines), fpirs)
            rep["same_images_one_by_one"] = {
                key: base[key] for key in ("counts", "rank1", "fpir_resolution",
                                           "operating_points")
            }
        rep["protocol"] = g.protocol
        rep["face_choice"] = choose
        rep["detection"] = {
            "no_face_at_operating_threshold": stats.no_face,
            "fallback": fallback,
            "fallback_low_score": stats.fallback_low_score,
            "fallback_fixed_box": stats.fallback_fixed_box,
        }
        rep["images_embedded"] = stats.images
        rep["ms_per_image"] = round(1000 * stats.seconds / max(1, stats.images), 2)
        rep["seconds"] = round(stats.seconds, 1)
        out.append((ss, rep))
    return out


def parse_fpirs(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--fpir {text!r}: expected numbers like 0.001,0.000167") from None
    if not vals or any(not (0.0 < v < 1.0) for v in vals):
        raise UsageError(f"--fpir {text!r}: each FPIR must be between 0 and 1")
    return vals


def parse_probe_images(text: str) -> list[int]:
    """``--probe-images K[,K...]``: distinct K >= 1, in the order given."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--probe-images {text!r}: expected K or K,K,... like 1,2,3") from None
    if not vals or any(not (1 <= v <= 50) for v in vals) or len(set(vals)) != len(vals):
        raise UsageError(f"--probe-images {text!r}: each K must be 1-50, each once")
    return vals


def parse_gallery_images(text: str) -> list[int]:
    """``--gallery-images K[,K...]``: distinct K from 1 to MAX_REFERENCES, in the order given."""
    from edge.recognition.match import MAX_REFERENCES

    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--gallery-images {text!r}: expected K or K,K,... like 1,2,3") from None
    if not vals or any(not (1 <= v <= MAX_REFERENCES) for v in vals) or len(set(vals)) != len(vals):
        raise UsageError(f"--gallery-images {text!r}: each K must be 1-{MAX_REFERENCES}, each once")
    return vals


def parse_references(text: str) -> list[str]:
    """``--reference fused|best[,...]``."""
    vals = [v.strip() for v in text.split(",") if v.strip()]
    if not vals or any(v not in REFERENCES for v in vals) or len(set(vals)) != len(vals):
        raise UsageError(f"--reference {text!r}: fused, best or both (fused,best)")
    return vals
