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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from edge.errors import UsageError
from edge.progress import Progress

if TYPE_CHECKING:
    from edge.types import Detection, ImageU8
    from edge.vision.faces import FaceEngine

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_FPIRS: tuple[float, ...] = (0.001, 1 / 6000)
Choice = Literal["centre", "largest"]


# --- what to search ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    path: Path
    identity: str


@dataclass(frozen=True, slots=True)
class SearchSet:
    """A gallery (subject -> images) and the probes searched against it."""

    gallery: dict[str, list[Path]]
    probes: list[Probe]
    protocol: str

    @property
    def mated(self) -> int:
        return sum(1 for p in self.probes if p.identity in self.gallery)

    @property
    def non_mated(self) -> int:
        return len(self.probes) - self.mated


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _identity_folders(root: Path, option: str) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise UsageError(f"{option} {root}: not a folder")
    out = {d.name: _images(d) for d in sorted(root.iterdir()) if d.is_dir()}
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise UsageError(f"{option} {root}: no sub-folders with images (one folder per identity)")
    return out


def lfw_sets(lfw_dir: Path) -> SearchSet:
    """LFW protocol: first image of each identity with >= 2 images is its gallery entry."""
    ids = _identity_folders(lfw_dir, "--lfw")
    gallery: dict[str, list[Path]] = {}
    probes: list[Probe] = []
    for name, files in ids.items():
        if len(files) >= 2:
            gallery[name] = files[:1]
            probes.extend(Probe(f, name) for f in files[1:])
        else:
            probes.extend(Probe(f, name) for f in files)
    if not gallery:
        raise UsageError(f"--lfw {lfw_dir}: no identity has two images, so nothing is mated")
    return SearchSet(gallery, probes, "lfw")


def folder_sets(gallery_dir: Path, probes_dir: Path) -> SearchSet:
    """Gallery and probes as folders of identity folders; probe names absent from the gallery
    are non-mated."""
    gallery = _identity_folders(gallery_dir, "--gallery")
    probes = [
        Probe(f, name)
        for name, files in _identity_folders(probes_dir, "--probes").items()
        for f in files
    ]
    return SearchSet(gallery, probes, "folders")


# --- scores --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoreSet:
    """Probe x gallery-subject similarities and which subject (if any) is each probe's mate.

    ``scores[i, j]`` is ``-inf`` when probe ``i`` or subject ``j`` has no template.
    No embedding is kept: scores only.
    """

    scores: F32  # (P, G)
    mate: I64  # (P,), -1 for non-mated
    gallery_ids: tuple[str, ...]
    label: str = ""
    metric: str = ""
    probe_failures: int = 0  # probes without a face
    gallery_failures: int = 0  # subjects without a template
    gallery_images: int = 0
    info: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scores.ndim != 2 or self.scores.shape[0] != self.mate.shape[0]:
            raise ValueError(f"scores {self.scores.shape} do not fit mates {self.mate.shape}")
        if self.scores.shape[1] != len(self.gallery_ids):
            raise ValueError("one score column per gallery subject")
        if np.any(self.mate >= len(self.gallery_ids)) or np.any(self.mate < -1):
            raise ValueError("mate index out of range")

    @property
    def mated_mask(self) -> npt.NDArray[np.bool_]:
        return np.asarray(self.mate >= 0)

    @property
    def n_mated(self) -> int:
        return int(np.sum(self.mate >= 0))

    @property
    def n_non_mated(self) -> int:
        return int(np.sum(self.mate < 0))

    def save(self, path: Path) -> None:
        """Scores and labels only (never embeddings), as a compressed .npz."""
        with path.open("wb") as f:
            np.savez_compressed(
                f,
                scores=self.scores,
                mate=self.mate,
                gallery_ids=np.array(self.gallery_ids, dtype=str),
                label=np.array(self.label),
                metric=np.array(self.metric),
                counts=np.array(
                    [self.probe_failures, self.gallery_failures, self.gallery_images],
                    dtype=np.int64,
                ),
                info_keys=np.array(list(self.info), dtype=str),
                info_values=np.array(list(self.info.values()), dtype=str),
            )

    @classmethod
    def load(cls, path: Path) -> ScoreSet:
        try:
            with np.load(path, allow_pickle=False) as z:
                counts = z["counts"]
                return cls(
                    scores=np.asarray(z["scores"], dtype=np.float32),
                    mate=np.asarray(z["mate"], dtype=np.int64),
                    gallery_ids=tuple(str(s) for s in z["gallery_ids"]),
                    label=str(z["label"]),
                    metric=str(z["metric"]),
                    probe_failures=int(counts[0]),
                    gallery_failures=int(counts[1]),
                    gallery_images=int(counts[2]),
                    info=dict(
                        zip(
                            (str(k) for k in z["info_keys"]),
                            (str(v) for v in z["info_values"]),
                            strict=True,
                        )
                    ),
                )
        except FileNotFoundError:
            raise UsageError(f"scores file {path} does not exist") from None
        except (OSError, KeyError, ValueError) as exc:
            raise UsageError(f"scores file {path} is not a saved score set ({exc})") from None


def subject_scores(template_scores: F32, template_subject: I64, n_subjects: int) -> F32:
    """(P, T) template similarities -> (P, G) best per subject; ``-inf`` for no template."""
    p = template_scores.shape[0]
    out = np.full((p, n_subjects), -np.inf, dtype=np.float32)
    for j in range(n_subjects):
        cols = np.flatnonzero(template_subject == j)
        if cols.size:
            out[:, j] = template_scores[:, cols].max(axis=1)
    return out


def pick_detection(dets: Sequence[Detection], shape: tuple[int, ...], how: Choice) -> Detection:
    """The labelled face of an image: nearest the centre (LFW), or the largest."""
    if how == "largest":
        return max(dets, key=lambda d: d.width * d.height)
    h, w = shape[:2]

    def dist(d: Detection) -> float:
        x1, y1, x2, y2 = d.box
        return ((x1 + x2) / 2 - w / 2) ** 2 + ((y1 + y2) / 2 - h / 2) ** 2

    return min(dets, key=dist)


def read_image(path: Path) -> ImageU8:
    import cv2

    if not path.is_file():
        raise UsageError(f"image {path} does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise UsageError(f"image {path} cannot be read as an image")
    return np.asarray(img, dtype=np.uint8)


def check_paths(paths: Sequence[Path]) -> None:
    """Fail before any model work on the first missing image or non-image file.

    Only the file's signature is checked here (cheap); a file that passes but
    does not decode fails when it is read.
    """
    import cv2

    for p in paths:
        if not p.is_file():
            raise UsageError(f"image {p} does not exist")
        if not cv2.haveImageReader(str(p)):
            raise UsageError(f"image {p} cannot be read as an image")


@dataclass(slots=True)
class EmbedStats:
    images: int = 0
    no_face: int = 0  # nothing at the detector's operating threshold
    fallback_low_score: int = 0
    fallback_fixed_box: int = 0
    seconds: float = 0.0


def embed_images(
    engine: FaceEngine,
    paths: Sequence[Path],
    *,
    choose: Choice = "centre",
    fallback: bool = False,
    fallback_min_score: float = 0.3,
    progress: bool = True,
    stats: EmbedStats | None = None,
) -> tuple[F32, npt.NDArray[np.bool_]]:
    """One embedding per image (the chosen face); rows of images without a face are zero.

    Each image is read and embedded once. Without a detection the image has no
    template, unless ``fallback`` (LFW, as ``edge eval verify`` does): retry at
    ``fallback_min_score``, then a fixed central box. Returns (embeddings (N, D),
    has_template (N,)).
    """
    from edge.evaluation.verify import FIXED_BOX
    from edge.vision.faces import FaceEngine as _Engine

    st = stats if stats is not None else EmbedStats()
    t0 = time.perf_counter()
    out = np.zeros((len(paths), engine.family.dim), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    with Progress(len(paths), "embedding", enabled=progress) as bar:
        for i, path in enumerate(paths):
            img = read_image(path)
            h, w = img.shape[:2]
            dets = engine.detect(img)
            det: Detection | None = None
            if dets:
                det = pick_detection(dets, img.shape, choose)
            else:
                st.no_face += 1
                if fallback:
                    low = engine.detect(img, fallback_min_score)
                    if low:
                        st.fallback_low_score += 1
                        det = pick_detection(low, img.shape, choose)
                    else:
                        st.fallback_fixed_box += 1
                        fx0, fy0, fx1, fy1 = FIXED_BOX
                        det = _Engine.detection_from_box((fx0 * w, fy0 * h, fx1 * w, fy1 * h))
            if det is not None:
                out[i] = engine.embed([engine.align(img, det)])[0]
                ok[i] = True
            st.images += 1
            bar.advance()
    st.seconds += time.perf_counter() - t0
    return out, ok


def score_search(
    engine: FaceEngine,
    sets: SearchSet,
    *,
    label: str = "",
    choose: Choice = "centre",
    fallback: bool = False,
    progress: bool = True,
    stats: EmbedStats | None = None,
) -> ScoreSet:
    """Embed every gallery and probe image once and score each probe against each subject."""
    gallery_ids = tuple(sets.gallery)
    index = {s: j for j, s in enumerate(gallery_ids)}
    tpl_paths = [p for s in gallery_ids for p in sets.gallery[s]]
    tpl_subject = np.array([index[s] for s in gallery_ids for _ in sets.gallery[s]], dtype=np.int64)
    probe_paths = [p.path for p in sets.probes]
    unique = list(dict.fromkeys(p.resolve() for p in [*tpl_paths, *probe_paths]))
    where = {p: k for k, p in enumerate(unique)}
    check_paths(unique)
    emb, ok = embed_images(
        engine, unique, choose=choose, fallback=fallback, progress=progress, stats=stats
    )
    t_rows = np.array([where[p.resolve()] for p in tpl_paths], dtype=np.int64)
    p_rows = np.array([where[p.resolve()] for p in probe_paths], dtype=np.int64)
    t_ok, p_ok = ok[t_rows], ok[p_rows]
    sims = np.asarray(engine.scores(emb[p_rows], emb[t_rows]), dtype=np.float32)
    sims[~p_ok, :] = -np.inf
    sims[:, ~t_ok] = -np.inf
    del emb
    subj = subject_scores(sims, tpl_subject, len(gallery_ids))
    mate = np.array([index.get(p.identity, -1) for p in sets.probes], dtype=np.int64)
    has_template = np.zeros(len(gallery_ids), dtype=bool)
    has_template[tpl_subject[t_ok]] = True
    return ScoreSet(
        scores=subj,
        mate=mate,
        gallery_ids=gallery_ids,
        label=label,
        metric=engine.family.metric,
        probe_failures=int(np.sum(~p_ok)),
        gallery_failures=int(np.sum(~has_template)),
        gallery_images=len(tpl_paths),
        info={**engine.model_info, "family_threshold": repr(engine.family.threshold)},
    )


# --- metrics (pure) ------------------------------------------------------------------------


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
        "model": dict(ss.info),
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
        f"{c['mated_probes']} mated and {c['non_mated_probes']} non-mated probes "
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
    fam = rep.get("at_family_threshold")
    if fam:
        lines.append(
            f"  at the family threshold {fam['threshold']}: FPIR {fam['fpir']}, TPIR {fam['tpir']}"
        )
    return lines


def run_identify(
    engine: FaceEngine,
    sets: SearchSet,
    fpirs: Sequence[float],
    *,
    label: str,
    choose: Choice = "centre",
    fallback: bool = False,
    progress: bool = True,
) -> tuple[ScoreSet, dict[str, Any]]:
    """Score the search set and report (the CLI's body)."""
    stats = EmbedStats()
    ss = score_search(
        engine, sets, label=label, choose=choose, fallback=fallback, progress=progress,
        stats=stats,
    )
    rep = report(ss, fpirs, family_threshold=engine.family.threshold)
    rep["protocol"] = sets.protocol
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
    return ss, rep


def parse_fpirs(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--fpir {text!r}: expected numbers like 0.001,0.000167") from None
    if not vals or any(not (0.0 < v < 1.0) for v in vals):
        raise UsageError(f"--fpir {text!r}: each FPIR must be between 0 and 1")
    return vals
