"""The watchlist matrix and the 1:N matcher.

:class:`Watchlist` holds the decrypted watchlist in RAM: subject ids,
categories and one (R, D) float32 matrix of reference embeddings, each subject
owning ``reference_counts[i]`` consecutive rows (one per enrolled image, at most
:data:`MAX_REFERENCES`). :class:`Matcher` finds, for each probe embedding, the most
similar subject, scoring a subject one of two ways (``reference``):

- ``"best"``: its best reference, the maximum over its rows (one matrix product over
  all R rows, each row's winner mapped to its subject);
- ``"fused"``: its fused reference, the subject's rows fused once at load by
  :func:`edge.vision.fusion.fuse`, the fusion the daemon's track templates use, so a
  reference and a template are built alike (the search is then over N rows).

Which one a deployment uses is signed into its bundle with its threshold (the
threshold is calibrated for one of them); ``docs/design.md`` says which won.

Scores are similarities (higher = more alike), whatever the family:

- ``"euclidean"`` (dlib): ``score = 1 - ||a - b||``, so dlib's classic
  distance threshold 0.6 is a score of 0.4. Squared distances come from
  ``||a||^2 + ||b||^2 - 2 a.b`` with the reference norms computed once, so a
  search is one matrix product.
- ``"cosine"``: the references are L2-normalised **in place** when the
  watchlist is built (no second copy of biometric data); probes are
  normalised per call; ``score = a.b``.

The matcher never copies the watchlist matrix: ``probes @ embeddings.T``
uses the transposed view, and the (M, N) score buffer is reused between
calls. 100,000 x 128 on one core is a few milliseconds per probe
(``tests/bench_match.py``).

``Watchlist.wipe()`` overwrites every reference row, the fused matrix and the
derived norms with zeros in place and clears the ids, for the end of a deployment
or a reload; a wiped watchlist is empty and matches nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge.errors import EdgeError
from edge.types import Match, Metric
from edge.vision.fusion import fuse

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

Reference = Literal["fused", "best"]
REFERENCES: tuple[Reference, ...] = ("fused", "best")
DEFAULT_REFERENCE: Reference = "fused"
"""How a subject with several references is scored unless a bundle says otherwise: fused
won on LFW (``docs/design.md``, "Several references per subject")."""
MAX_REFERENCES = 16
"""References (enrolled images) per subject, at most."""


class WatchlistError(EdgeError):
    """A watchlist whose parts do not fit together (counts, shapes, values)."""

    exit_code = 4


@dataclass(eq=False)
class Watchlist:
    """Subjects and their reference embeddings, in RAM only.

    ``embeddings`` must be (R, D) float32, the rows of subject ``i`` consecutive and
    ``reference_counts[i]`` of them (default: one row per subject); a C-contiguous
    float32 array is used as it is (no copy), anything else is converted once.
    After construction ``references`` is that (R, D) matrix and ``embeddings`` the one
    the matcher searches: the same array for ``"best"`` (or when every subject has one
    reference), the (N, D) fused references for ``"fused"``; ``row_subject`` maps a
    searched row to its subject. ``threshold`` is the deployment's similarity threshold
    (checked against the floor by the bundle and config code, not here).
    """

    subject_ids: list[str]
    categories: list[str]
    embeddings: F32
    metric: Metric
    threshold: float
    embedder_sha256: str
    reference_counts: Sequence[int] | None = None
    reference: Reference = DEFAULT_REFERENCE
    references: F32 = field(init=False, repr=False)
    row_subject: I64 = field(init=False, repr=False)
    sq_norms: F32 = field(init=False, repr=False)

    def __post_init__(self) -> None:
        emb = self.embeddings
        if not isinstance(emb, np.ndarray) or emb.ndim != 2:
            raise WatchlistError("watchlist embeddings must be a 2-D array (subjects x dims)")
        if emb.dtype != np.float32 or not emb.flags.c_contiguous:
            emb = np.ascontiguousarray(emb, dtype=np.float32)
        rows, dim = emb.shape
        n = len(self.subject_ids)
        counts = [1] * n if self.reference_counts is None else list(self.reference_counts)
        if len(self.categories) != n or len(counts) != n:
            raise WatchlistError(
                f"watchlist has {n} ids but {len(self.categories)} categories "
                f"and {len(counts)} reference counts"
            )
        if any(type(c) is not int or not 1 <= c <= MAX_REFERENCES for c in counts):
            raise WatchlistError(f"a subject has no reference or more than {MAX_REFERENCES}")
        if sum(counts) != rows:
            raise WatchlistError(
                f"watchlist has {rows} embeddings but {n} subjects with {sum(counts)} references"
            )
        if rows and dim == 0:
            raise WatchlistError("watchlist embeddings have no dimensions")
        if len(set(self.subject_ids)) != n:
            raise WatchlistError("watchlist subject ids are not unique")
        if self.metric not in ("euclidean", "cosine"):
            raise WatchlistError(f"unknown metric {self.metric!r}")
        if self.reference not in REFERENCES:
            raise WatchlistError(f"unknown reference mode {self.reference!r}")
        if not np.isfinite(self.threshold):
            raise WatchlistError("watchlist threshold is not a number")
        if rows and not np.isfinite(emb).all():
            raise WatchlistError("watchlist embeddings contain NaN or infinity")
        if self.metric == "cosine":
            norms = np.linalg.norm(emb, axis=1)
            if rows and (norms <= 1e-12).any():
                raise WatchlistError("watchlist has a zero embedding (cosine metric)")
            emb /= norms[:, None].astype(np.float32)  # in place: no second copy
        self.references = emb
        self.reference_counts = counts
        owner = np.repeat(np.arange(n, dtype=np.int64), counts)
        if self.reference == "fused" and rows > n:
            self.embeddings = self._fused(emb, counts)
            self.row_subject = np.arange(n, dtype=np.int64)
        else:
            self.embeddings = emb
            self.row_subject = owner
        self.sq_norms = np.einsum("ij,ij->i", self.embeddings, self.embeddings).astype(np.float32)

    def _fused(self, emb: F32, counts: list[int]) -> F32:
        out = np.empty((len(counts), emb.shape[1]), np.float32)
        start = 0
        try:
            for i, c in enumerate(counts):
                out[i] = emb[start] if c == 1 else fuse(emb[start : start + c], self.metric)
                start += c
        except ValueError:
            out.fill(0.0)
            raise WatchlistError("a subject's references cancel out") from None
        return out

    def __len__(self) -> int:
        return len(self.subject_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def rows(self) -> int:
        """Rows searched per probe (R for ``"best"``, N for ``"fused"``)."""
        return int(self.embeddings.shape[0])

    def wipe(self) -> None:
        """Zero every reference, the fused matrix and the norms in place; forget every
        subject."""
        self.references.fill(0.0)
        self.embeddings.fill(0.0)
        self.sq_norms.fill(0.0)
        self.subject_ids.clear()
        self.categories.clear()
        dim = self.embeddings.shape[1]
        self.reference_counts = []
        self.references = np.empty((0, dim), np.float32)
        self.embeddings = self.references
        self.row_subject = np.empty(0, np.int64)
        self.sq_norms = np.empty(0, np.float32)


class Matcher:
    """Best watchlist subject per probe embedding (vectorised, no per-call copies).

    Safe to share between threads (calls are serialised: the score buffer is
    reused). The watchlist is read through the reference each call, so a
    wiped watchlist matches nothing.
    """

    def __init__(self, watchlist: Watchlist) -> None:
        self.watchlist = watchlist
        self._buffer: F32 = np.empty(0, np.float32)
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float:
        return self.watchlist.threshold

    def best(self, embeddings: npt.ArrayLike) -> list[Match]:
        """For each probe (M, D) or one probe (D,), the most similar subject.

        Returns one :class:`Match` per probe in probe order, or ``[]`` when the
        watchlist is empty. Raises ``ValueError`` for a dimension mismatch or
        non-finite probes (a bug upstream, not a user error).
        """
        wl = self.watchlist
        probes = np.asarray(embeddings, dtype=np.float32)
        if probes.ndim == 1:
            probes = probes[None, :]
        if probes.ndim != 2:
            raise ValueError("probes must be (M, D) or (D,)")
        m = probes.shape[0]
        n = wl.rows
        if m == 0 or len(wl) == 0:
            return []
        if probes.shape[1] != wl.dim:
            raise ValueError(f"probe dimension {probes.shape[1]} != watchlist dimension {wl.dim}")
        if not np.isfinite(probes).all():
            raise ValueError("probe embeddings contain NaN or infinity")
        with self._lock:
            scores = self._scores_buffer(m, n)
            if wl.metric == "cosine":
                norms = np.linalg.norm(probes, axis=1, keepdims=True)
                unit = probes / np.maximum(norms, np.float32(1e-12))
                np.matmul(unit, wl.embeddings.T, out=scores)
                best = np.argmax(scores, axis=1)
                values = scores[np.arange(m), best].astype(np.float64)
                values[norms[:, 0] <= 1e-12] = 0.0  # a zero probe is like nothing
            else:
                # argmin ||a-b||^2 = argmin (||b||^2 - 2 a.b); add ||a||^2 for the value.
                np.matmul(probes, wl.embeddings.T, out=scores)
                scores *= np.float32(-2.0)
                scores += wl.sq_norms
                best = np.argmin(scores, axis=1)
                # The expansion loses precision near 0; the winners' distances are exact.
                diff = probes.astype(np.float64) - wl.embeddings[best].astype(np.float64)
                values = 1.0 - np.sqrt(np.einsum("ij,ij->i", diff, diff))
        owners = wl.row_subject[best]
        return [
            Match(
                subject_index=int(i),
                subject_id=wl.subject_ids[int(i)],
                category=wl.categories[int(i)],
                score=float(v),
            )
            for i, v in zip(owners, values, strict=True)
        ]

    def _scores_buffer(self, m: int, n: int) -> F32:
        need = m * n
        if self._buffer.size < need:
            self._buffer = np.empty(need, np.float32)
        return self._buffer[:need].reshape(m, n)

    def release(self) -> None:
        """Zero and drop the score buffer (it holds similarities to watchlist subjects)."""
        with self._lock:
            self._buffer.fill(0.0)
            self._buffer = np.empty(0, np.float32)
