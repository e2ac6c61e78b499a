"""Verification metrics: LFW's 10-fold protocol and TAR at fixed FAR.

Scores are similarities (higher = more alike); a pair is accepted when
``score >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


def best_threshold(scores: FloatArray, same: BoolArray) -> tuple[float, float]:
    """The threshold maximising accuracy on (scores, same), and that accuracy.

    Candidate thresholds are midpoints between consecutive distinct scores (and
    the two ends), so the result does not sit exactly on a training score.
    """
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    y = same[order]
    n = len(s)
    # Accept everything at index >= k: true accepts = positives in s[k:], true
    # rejects = negatives in s[:k].
    pos_suffix = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    neg_prefix = np.concatenate([[0], np.cumsum(~y)])
    correct = pos_suffix + neg_prefix  # length n + 1, index k
    # Only split between distinct values.
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] != s[:-1]
    correct_valid = np.where(valid, correct, -1)
    k = int(np.argmax(correct_valid))
    if k == 0:
        thr = float(s[0]) - 1e-6
    elif k == n:
        thr = float(s[-1]) + 1e-6
    else:
        thr = float((s[k - 1] + s[k]) / 2.0)
    return thr, float(correct[k]) / n


def tar_at_far(scores: FloatArray, same: BoolArray, far: float) -> tuple[float, float]:
    """(TAR, threshold) at the loosest threshold whose FAR does not exceed ``far``.

    With ``m`` impostor pairs the smallest non-zero FAR is ``1/m``; targets
    below it are met only with zero false accepts.
    """
    neg = np.sort(scores[~same])[::-1]
    pos = scores[same]
    m = len(neg)
    if m == 0 or len(pos) == 0:
        return float("nan"), float("nan")
    allowed = int(np.floor(far * m + 1e-9))  # false accepts allowed
    # Threshold just above the (allowed+1)-th highest impostor score.
    thr = float(np.nextafter(neg[allowed], np.inf)) if allowed < m else float(neg[-1])
    return float(np.mean(pos >= thr)), thr


@dataclass(frozen=True, slots=True)
class FoldResult:
    accuracy: float
    accuracy_std: float
    threshold: float  # mean of the per-fold thresholds
    fold_accuracies: list[float]
    fold_thresholds: list[float]


def ten_fold(scores: FloatArray, same: BoolArray, folds: IntArray) -> FoldResult:
    """LFW protocol: per fold, pick the threshold on the other folds, test on it."""
    ids = sorted({int(f) for f in folds})
    if len(ids) < 2:
        thr, acc = best_threshold(scores, same)
        return FoldResult(acc, 0.0, thr, [acc], [thr])
    accs: list[float] = []
    thrs: list[float] = []
    for f in ids:
        test = folds == f
        thr, _ = best_threshold(scores[~test], same[~test])
        pred = scores[test] >= thr
        accs.append(float(np.mean(pred == same[test])))
        thrs.append(thr)
    return FoldResult(
        accuracy=float(np.mean(accs)),
        accuracy_std=float(np.std(accs)),
        threshold=float(np.mean(thrs)),
        fold_accuracies=accs,
        fold_thresholds=thrs,
    )


def verification_report(scores: FloatArray, same: BoolArray, folds: IntArray) -> dict[str, object]:
    """The JSON-ready figures shared by ``edge eval verify`` and the dlib benchmark."""
    res = ten_fold(scores, same, folds)
    tar: dict[str, float | None] = {}
    tar_thr: dict[str, float | None] = {}
    for key, far in (("0.001", 1e-3), ("0.0001", 1e-4)):
        t, th = tar_at_far(scores, same, far)
        tar[key] = None if np.isnan(t) else round(t, 6)
        tar_thr[key] = None if np.isnan(th) else round(th, 6)
    return {
        "accuracy": round(res.accuracy, 6),
        "accuracy_std": round(res.accuracy_std, 6),
        "threshold": round(res.threshold, 6),
        "fold_accuracies": [round(a, 6) for a in res.fold_accuracies],
        "fold_thresholds": [round(t, 6) for t in res.fold_thresholds],
        "tar_at_far": tar,
        "tar_at_far_threshold": tar_thr,
        "impostor_pairs": int(np.sum(~same)),
        "genuine_pairs": int(np.sum(same)),
    }
