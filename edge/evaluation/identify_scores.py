"""Scores of ``edge eval identify``: embed each image once, fuse K-image probes, score.

:class:`ScoreSet` holds probe x gallery-subject similarities only (never an embedding),
and saves to / loads from a compressed ``.npz`` for ``edge eval calibrate`` and plots.
A gallery subject with several images is scored as the device scores a subject with several
references (``reference``): by the best of its images (``"best"``) or by one template fused
from them (``"fused"``, :func:`edge.vision.fusion.fuse`, as the watchlist fuses them); a
K-image probe is one template fused from its images' embeddings, from those of its images in
which a face was found.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from edge.errors import UsageError
from edge.evaluation.identify_sets import SearchSet
from edge.progress import Progress
from edge.vision.fusion import fuse

if TYPE_CHECKING:
    from edge.types import Detection, ImageU8, Metric
    from edge.vision.faces import FaceEngine

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

Choice = Literal["centre", "largest"]

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
    probe_ids: tuple[str, ...] = ()  # each probe's identity (empty in files saved before it)

    def __post_init__(self) -> None:
        if self.scores.ndim != 2 or self.scores.shape[0] != self.mate.shape[0]:
            raise ValueError(f"scores {self.scores.shape} do not fit mates {self.mate.shape}")
        if self.scores.shape[1] != len(self.gallery_ids):
            raise ValueError("one score column per gallery subject")
        if self.probe_ids and len(self.probe_ids) != self.scores.shape[0]:
            raise ValueError("one probe identity per score row")
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
                probe_ids=np.array(self.probe_ids, dtype=str),
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
                    probe_ids=tuple(str(s) for s in z["probe_ids"]) if "probe_ids" in z else (),
                )
        except FileNotFoundError:
            raise UsageError(f"scores file {path} does not exist") from None
        except (OSError, KeyError, ValueError) as exc:
            raise UsageError(f"scores file {path} is not a saved score set ({exc})") from None


def fuse_score_sets(sets: Sequence[ScoreSet]) -> ScoreSet:
    """Score-level fusion: the mean of several embedders' similarities for the same
    searches (same probes, gallery and mates, e.g. two ``--save-scores`` runs that differ
    only in ``--embedder``). A probe or subject without a template in any set has none."""
    first = sets[0]
    for other in sets[1:]:
        if (other.gallery_ids != first.gallery_ids or not np.array_equal(other.mate, first.mate)
                or other.probe_ids != first.probe_ids):
            raise UsageError("fused score sets must search the same probes in the same gallery")
    scores = np.mean(np.stack([s.scores for s in sets]), axis=0).astype(np.float32)
    return ScoreSet(
        scores=scores, mate=first.mate, gallery_ids=first.gallery_ids,
        label=" + ".join(s.label for s in sets) + " (mean)", metric="fused-mean",
        probe_failures=max(s.probe_failures for s in sets),
        gallery_failures=max(s.gallery_failures for s in sets),
        gallery_images=first.gallery_images,
        info={"fusion": "mean of " + ", ".join(s.label for s in sets)},
        probe_ids=first.probe_ids,
    )


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
    return score_searches(
        engine, [sets], labels=[label], choose=choose, fallback=fallback, progress=progress,
        stats=stats,
    )[0]


def score_searches(
    engine: FaceEngine,
    sets_list: Sequence[SearchSet],
    *,
    labels: Sequence[str],
    choose: Choice = "centre",
    fallback: bool = False,
    progress: bool = True,
    stats: EmbedStats | None = None,
    references: Sequence[str] | None = None,
) -> list[ScoreSet]:
    """:func:`score_search` for several search sets (e.g. K = 1, 2, 3 of one gallery), each
    image of any of them embedded once; ``references[i]`` scores set ``i``'s subjects by
    their ``"best"`` image (default) or their ``"fused"`` one."""
    paths = [x for sets in sets_list for x in _all_paths(sets)]
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    where = {p: k for k, p in enumerate(unique)}
    check_paths(unique)
    emb, ok = embed_images(
        engine, unique, choose=choose, fallback=fallback, progress=progress, stats=stats
    )
    refs = list(references) if references is not None else ["best"] * len(sets_list)
    out = [_scores(engine, sets, emb, ok, where, label, ref)
           for sets, label, ref in zip(sets_list, labels, refs, strict=True)]
    del emb
    return out


def _all_paths(sets: SearchSet) -> list[Path]:
    return [*(p for s in sets.gallery.values() for p in s),
            *(x for p in sets.probes for x in p.paths)]


def _scores(
    engine: FaceEngine, sets: SearchSet, emb: F32, ok: npt.NDArray[np.bool_],
    where: dict[Path, int], label: str, reference: str = "best",
) -> ScoreSet:
    if reference not in ("best", "fused"):
        raise UsageError(f"--reference {reference!r}: fused or best")
    gallery_ids = tuple(sets.gallery)
    index = {s: j for j, s in enumerate(gallery_ids)}
    tpl_paths = [p for s in gallery_ids for p in sets.gallery[s]]
    metric = engine.family.metric
    if reference == "fused":  # one fused template per subject, as the watchlist fuses them
        tpl, t_ok = probe_templates(
            emb, ok, [[where[p.resolve()] for p in sets.gallery[s]] for s in gallery_ids], metric
        )
        tpl_subject = np.arange(len(gallery_ids), dtype=np.int64)
    else:
        tpl_subject = np.array([index[s] for s in gallery_ids for _ in sets.gallery[s]],
                               dtype=np.int64)
        t_rows = np.array([where[p.resolve()] for p in tpl_paths], dtype=np.int64)
        tpl, t_ok = emb[t_rows], ok[t_rows]
    groups = [[where[x.resolve()] for x in p.paths] for p in sets.probes]
    probes, p_ok = probe_templates(emb, ok, groups, metric)
    sims = np.asarray(engine.scores(probes, tpl), dtype=np.float32)
    del probes, tpl
    sims[~p_ok, :] = -np.inf
    sims[:, ~t_ok] = -np.inf
    subj = subject_scores(sims, tpl_subject, len(gallery_ids))
    mate = np.array([index.get(p.identity, -1) for p in sets.probes], dtype=np.int64)
    has_template = np.zeros(len(gallery_ids), dtype=bool)
    has_template[tpl_subject[t_ok]] = True
    info = {**engine.model_info, "family_threshold": repr(engine.family.threshold)}
    info["probe_images"] = str(sets.probe_images)
    info["gallery_images"] = str(max((len(v) for v in sets.gallery.values()), default=0))
    info["reference"] = reference
    return ScoreSet(
        scores=subj,
        mate=mate,
        gallery_ids=gallery_ids,
        label=label,
        metric=engine.family.metric,
        probe_failures=int(np.sum(~p_ok)),
        gallery_failures=int(np.sum(~has_template)),
        gallery_images=len(tpl_paths),
        info=info,
        probe_ids=tuple(p.identity for p in sets.probes),
    )


def probe_templates(
    emb: F32, ok: npt.NDArray[np.bool_], groups: Sequence[Sequence[int]], metric: Metric
) -> tuple[F32, npt.NDArray[np.bool_]]:
    """One template per probe: the embedding row of a one-image probe as it is, the fusion of
    the rows with a face of a K-image probe. Returns (templates (P, D), has_template (P,))."""
    out = np.zeros((len(groups), emb.shape[1]), dtype=np.float32)
    has = np.zeros(len(groups), dtype=bool)
    for i, rows in enumerate(groups):
        good = [r for r in rows if ok[r]]
        if not good:
            continue
        out[i] = emb[good[0]] if len(good) == 1 else fuse(emb[good], metric)
        has[i] = True
    return out, has
