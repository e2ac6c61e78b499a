"""An IoU tracker: follows faces across frames so that each face is embedded a
few times and alerted once, not once per frame.

Each frame, detections are matched to live tracks greedily by intersection
over union (highest IoU first, at least ``min_iou``). Greedy matching is what
SORT-style trackers without a motion model do in practice; at the handful of
faces per frame an edge camera sees it gives the same pairs as the Hungarian
method except in contrived ties, and needs no SciPy.

- ``update(dets, frame_index)`` returns the tracks seen in this frame (matched
  ones with ``detection``, ``last_frame`` and ``hits`` updated, plus new ones).
- ``expire(frame_index)`` removes and returns the tracks not seen for more than
  ``max_missed`` frames, so the caller can count them and drop whatever it
  kept per track (RAM only, safeguard 5).

Track ids are positive, increase by one and are never reused by a tracker.
The number of live tracks is bounded (``max_tracks``); when a new face would
exceed it, the least recently seen track is evicted and returned by the next
``expire``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge.types import Detection, Track


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), as (N, M).

    Boxes are ``(x1, y1, x2, y2)``; empty or inverted boxes have IoU 0.
    """
    boxes_a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    boxes_b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    y1 = np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    x2 = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
    y2 = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(boxes_a[:, 2] - boxes_a[:, 0], 0, None) * np.clip(
        boxes_a[:, 3] - boxes_a[:, 1], 0, None
    )
    area_b = np.clip(boxes_b[:, 2] - boxes_b[:, 0], 0, None) * np.clip(
        boxes_b[:, 3] - boxes_b[:, 1], 0, None
    )
    union = area_a[:, None] + area_b[None, :] - inter
    out: npt.NDArray[np.float64] = np.zeros(inter.shape, np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def greedy_pairs(scores: npt.NDArray[np.float64], minimum: float) -> list[tuple[int, int]]:
    """(row, col) pairs, best score first, each row and column used once, score >= minimum."""
    if scores.size == 0:
        return []
    rows, cols = np.nonzero(scores >= minimum)
    order = np.argsort(-scores[rows, cols], kind="stable")
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_rows or c in used_cols:
            continue
        used_rows.add(r)
        used_cols.add(c)
        pairs.append((r, c))
    return pairs


class IoUTracker:
    """Greedy IoU tracker over :class:`~edge.types.Detection` boxes."""

    def __init__(self, min_iou: float = 0.3, max_missed: int = 10, max_tracks: int = 64) -> None:
        if not 0.0 < min_iou <= 1.0:
            raise ValueError("min_iou must be in (0, 1]")
        if max_missed < 0:
            raise ValueError("max_missed must be >= 0")
        if max_tracks < 1:
            raise ValueError("max_tracks must be >= 1")
        self.min_iou = min_iou
        self.max_missed = max_missed
        self.max_tracks = max_tracks
        self._tracks: dict[int, Track] = {}  # insertion order = creation order
        self._evicted: list[Track] = []
        self._next_id = 1
        self.created = 0  # tracks ever started (a counter for stats)

    @property
    def tracks(self) -> list[Track]:
        """The live tracks, oldest first."""
        return list(self._tracks.values())

    def __len__(self) -> int:
        return len(self._tracks)

    def update(self, detections: Sequence[Detection], frame_index: int) -> list[Track]:
        """Match this frame's detections to tracks; returns the tracks seen in this frame.

        The result follows the order of ``detections`` (one track per detection).
        """
        live = list(self._tracks.values())
        result: list[Track | None] = [None] * len(detections)
        if live and detections:
            scores = iou_matrix([t.detection.box for t in live], [d.box for d in detections])
            for ti, di in greedy_pairs(scores, self.min_iou):
                track = live[ti]
                track.detection = detections[di]
                track.last_frame = frame_index
                track.hits += 1
                result[di] = track
        for di, det in enumerate(detections):
            if result[di] is None:
                result[di] = self._start(det, frame_index)
        return [t for t in result if t is not None]

    def expire(self, frame_index: int) -> list[Track]:
        """Remove and return tracks unseen for more than ``max_missed`` frames (and evictions)."""
        gone = self._evicted
        self._evicted = []
        for track_id, track in list(self._tracks.items()):
            if frame_index - track.last_frame > self.max_missed:
                gone.append(self._tracks.pop(track_id))
        return gone

    def clear(self) -> list[Track]:
        """Remove and return every track (disarm, watchlist reload, shutdown)."""
        gone = self._evicted + list(self._tracks.values())
        self._evicted = []
        self._tracks.clear()
        return gone

    def _start(self, det: Detection, frame_index: int) -> Track:
        if len(self._tracks) >= self.max_tracks:
            stalest = min(self._tracks.values(), key=lambda t: (t.last_frame, t.track_id))
            self._evicted.append(self._tracks.pop(stalest.track_id))
        track = Track(
            track_id=self._next_id,
            detection=det,
            first_frame=frame_index,
            last_frame=frame_index,
        )
        self._next_id += 1
        self.created += 1
        self._tracks[track.track_id] = track
        return track
