"""Scoring a deployment stream: alerts against the ground truth of ``edge simulate``.

The truth file (written by :mod:`edge.evaluation.simulate`) lists every passer-by as a
*track*: an identity, whether it is on the watchlist (and under which subject
id), the frames it is visible in and its face box in each of them. Alerts come
from whatever ran on the clip (``edge bench``, the face_recognition peer): a
frame index, a box and a subject id.

Each alert is assigned to the passer-by whose face box in that frame overlaps
the alert's box most (intersection over union, at least ``min_iou``; the
daemon's alert box is the face plus a 25 % margin, so a perfect detection has
an IoU of about 0.44 with the face box). Then:

- *true alert*: the passer-by is watchlisted and the alert names its subject;
- *false alert*: the passer-by is watchlisted but the alert names another
  subject (``wrong_subject``), the passer-by is not watchlisted
  (``not_watchlisted``), or the box overlaps no passer-by (``no_passer_by``).

Figures (see :class:`StreamScore`): track-level recall of watchlisted
passers-by (a passer-by counts as found when at least one true alert falls on
it), false alerts per 10,000 non-watchlisted passers-by (the stream analogue of
FPIR, counted per alert), the share of non-watchlisted passers-by with at least
one false alert, and alert precision (true alerts / all alerts). Precision and
false-alert counts are also given per *event* (distinct passer-by and subject),
which is what a control room sees when a system alerts on every frame rather
than once per track.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edge.errors import UsageError

Box = tuple[float, float, float, float]
"""x1, y1, x2, y2 in frame pixels."""

TRUTH_SCHEMA = 1

FalseKind = Literal["wrong_subject", "not_watchlisted", "no_passer_by"]


@dataclass(frozen=True, slots=True)
class TruthTrack:
    """One passer-by: who, whether watchlisted, and its face box per frame."""

    track: int
    identity: str
    watchlisted: bool
    subject_id: str | None
    image: str  # the picture used, relative to the images folder
    first_frame: int
    boxes: tuple[Box, ...]  # one per frame from first_frame on

    @property
    def last_frame(self) -> int:
        return self.first_frame + len(self.boxes) - 1

    def box_at(self, frame: int) -> Box | None:
        i = frame - self.first_frame
        if 0 <= i < len(self.boxes):
            return self.boxes[i]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "identity": self.identity,
            "watchlisted": self.watchlisted,
            "subject_id": self.subject_id,
            "image": self.image,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "boxes": [[round(v, 1) for v in b] for b in self.boxes],
        }


@dataclass(frozen=True, slots=True)
class WatchlistEntry:
    """A watchlisted identity, the images to enrol for it (never shown in the clip)."""

    subject_id: str
    identity: str
    category: str
    enrol: tuple[str, ...]  # relative to the images folder
    appears: bool  # whether any passer-by in the clip is this subject

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject_id": self.subject_id,
            "identity": self.identity,
            "category": self.category,
            "enrol": list(self.enrol),
            "appears": self.appears,
        }


@dataclass(frozen=True, slots=True)
class Truth:
    """The ground truth of a simulated clip."""

    fps: float
    frames: int
    size: tuple[int, int]  # width, height
    tracks: tuple[TruthTrack, ...]
    watchlist: tuple[WatchlistEntry, ...]
    images_dir: str = ""
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def watchlisted_tracks(self) -> list[TruthTrack]:
        return [t for t in self.tracks if t.watchlisted]

    @property
    def other_tracks(self) -> list[TruthTrack]:
        return [t for t in self.tracks if not t.watchlisted]

    def clipped(self, frames: int) -> Truth:
        """The truth of only the first ``frames`` frames (for runs that stop early).

        Passers-by who appear later are dropped; the others keep their boxes up
        to the last frame seen.
        """
        if frames >= self.frames:
            return self
        kept = tuple(
            replace(t, boxes=t.boxes[: frames - t.first_frame])
            for t in self.tracks
            if t.first_frame < frames
        )
        return replace(self, frames=max(0, frames), tracks=kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": TRUTH_SCHEMA,
            "generator": "edge simulate",
            "seed": self.seed,
            "size": list(self.size),
            "fps": self.fps,
            "frames": self.frames,
            "images_dir": self.images_dir,
            "params": dict(self.params),
            "watchlist": [w.to_dict() for w in self.watchlist],
            "tracks": [t.to_dict() for t in self.tracks],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    def save(self, path: Path) -> None:
        path.write_text(self.dumps(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Truth:
        try:
            if data.get("schema") != TRUTH_SCHEMA:
                raise UsageError(f"truth file: unsupported schema {data.get('schema')!r}")
            tracks = tuple(
                TruthTrack(
                    track=int(t["track"]),
                    identity=str(t["identity"]),
                    watchlisted=bool(t["watchlisted"]),
                    subject_id=None if t["subject_id"] is None else str(t["subject_id"]),
                    image=str(t.get("image", "")),
                    first_frame=int(t["first_frame"]),
                    boxes=tuple(_box(b) for b in t["boxes"]),
                )
                for t in data["tracks"]
            )
            watchlist = tuple(
                WatchlistEntry(
                    subject_id=str(w["subject_id"]),
                    identity=str(w["identity"]),
                    category=str(w["category"]),
                    enrol=tuple(str(p) for p in w["enrol"]),
                    appears=bool(w["appears"]),
                )
                for w in data["watchlist"]
            )
            size = data["size"]
            return cls(
                fps=float(data["fps"]),
                frames=int(data["frames"]),
                size=(int(size[0]), int(size[1])),
                tracks=tracks,
                watchlist=watchlist,
                images_dir=str(data.get("images_dir", "")),
                seed=int(data.get("seed", 0)),
                params=dict(data.get("params", {})),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise UsageError(f"truth file: malformed ({exc.__class__.__name__}: {exc})") from exc

    @classmethod
    def load(cls, path: Path) -> Truth:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read truth file {path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = f"truth file {path} is not JSON: {exc.msg} (line {exc.lineno})"
            raise UsageError(msg) from exc
        if not isinstance(data, dict):
            raise UsageError(f"truth file {path}: expected a JSON object")
        return cls.from_dict(data)


def _box(b: Sequence[float]) -> Box:
    if len(b) != 4:
        raise ValueError(f"a box needs 4 numbers, got {len(b)}")
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


@dataclass(frozen=True, slots=True)
class StreamAlert:
    """An alert as the scorer sees it: the frame it was raised on, a box, a subject."""

    frame: int
    box: Box  # x1, y1, x2, y2
    subject_id: str
    # The frame the alert was raised on, when later than ``frame`` (a track decided when
    # it ended, on a face seen earlier); the time to alert counts to this one.
    raised: int | None = None

    @classmethod
    def from_xywh(cls, frame: int, bbox: Sequence[float], subject_id: str,
                  raised: int | None = None) -> StreamAlert:
        """From an alert's ``bbox`` (x, y, w, h), as in :class:`edge.types.AlertRecord`."""
        x, y, w, h = (float(v) for v in bbox)
        return cls(frame, (x, y, x + w, y + h), subject_id, raised)


def frame_of(captured_at: float, fps: float, start: float = 0.0) -> int:
    """The frame index of a capture time, for a clip read from ``start`` at ``fps``."""
    return round((captured_at - start) * fps)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when either is empty."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True, slots=True)
class AlertVerdict:
    """How one alert was judged."""

    alert: StreamAlert
    track: int | None  # the passer-by it was assigned to, if any
    iou: float
    true: bool
    kind: FalseKind | None  # why it is false; None when true


@dataclass(frozen=True, slots=True)
class StreamScore:
    """Stream figures; ``None`` where a ratio has a zero denominator."""

    watchlisted_passers_by: int
    watchlisted_found: int
    recall: float | None
    other_passers_by: int
    alerts: int
    true_alerts: int
    false_alerts: int
    false_alerts_by_kind: dict[str, int]
    false_alerts_per_10k: float | None  # per 10,000 non-watchlisted passers-by
    passers_by_falsely_alerted: int  # non-watchlisted passers-by with >= 1 false alert
    passer_by_fpir: float | None  # that, over all non-watchlisted passers-by
    precision: float | None  # true alerts / alerts
    true_events: int  # distinct (passer-by, subject) among true alerts
    false_events: int  # distinct (passer-by, subject) among false alerts; each stray alert is one
    event_precision: float | None
    median_seconds_to_alert: float | None  # first appearance -> first true alert
    missed: list[int]  # track numbers of watchlisted passers-by never found
    verdicts: list[AlertVerdict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "watchlisted_passers_by": self.watchlisted_passers_by,
            "watchlisted_found": self.watchlisted_found,
            "recall": _r(self.recall),
            "other_passers_by": self.other_passers_by,
            "alerts": self.alerts,
            "true_alerts": self.true_alerts,
            "false_alerts": self.false_alerts,
            "false_alerts_by_kind": dict(self.false_alerts_by_kind),
            "false_alerts_per_10k": _r(self.false_alerts_per_10k),
            "passers_by_falsely_alerted": self.passers_by_falsely_alerted,
            "passer_by_fpir": _r(self.passer_by_fpir),
            "precision": _r(self.precision),
            "true_events": self.true_events,
            "false_events": self.false_events,
            "event_precision": _r(self.event_precision),
            "median_seconds_to_alert": _r(self.median_seconds_to_alert),
            "missed_tracks": list(self.missed),
        }


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def assign(
    truth: Truth, alert: StreamAlert, *, min_iou: float = 0.1, frame_tolerance: int = 0
) -> tuple[TruthTrack | None, float]:
    """The passer-by whose face box overlaps ``alert.box`` most (IoU >= ``min_iou``).

    ``frame_tolerance`` also looks that many frames either side (for alerts
    whose frame index is only approximately known), keeping the best IoU.
    """
    best: TruthTrack | None = None
    best_iou = 0.0
    for track in truth.tracks:
        if not (
            track.first_frame - frame_tolerance <= alert.frame <= track.last_frame + frame_tolerance
        ):
            continue
        for f in range(alert.frame - frame_tolerance, alert.frame + frame_tolerance + 1):
            box = track.box_at(f)
            if box is None:
                continue
            v = iou(alert.box, box)
            if v > best_iou:
                best, best_iou = track, v
    if best is None or best_iou < min_iou:
        return None, best_iou
    return best, best_iou


def score_alerts(
    truth: Truth,
    alerts: Iterable[StreamAlert],
    *,
    min_iou: float = 0.1,
    frame_tolerance: int = 0,
    frames: int | None = None,
) -> StreamScore:
    """Judge ``alerts`` against ``truth`` (see the module docstring for the rules).

    ``frames``: how many frames the run processed, when it stopped before the
    end of the clip; passers-by it never saw are then left out.
    """
    if frames is not None:
        truth = truth.clipped(frames)
    verdicts: list[AlertVerdict] = []
    found_at: dict[int, int] = {}  # track -> first frame with a true alert
    true_events: set[tuple[int, str]] = set()
    false_events: set[tuple[int, str]] = set()
    stray = 0
    falsely_alerted: set[int] = set()
    kinds: dict[str, int] = {"wrong_subject": 0, "not_watchlisted": 0, "no_passer_by": 0}
    for alert in alerts:
        track, v = assign(truth, alert, min_iou=min_iou, frame_tolerance=frame_tolerance)
        kind: FalseKind | None
        if track is None:
            kind = "no_passer_by"
            stray += 1
        elif track.watchlisted and alert.subject_id == track.subject_id:
            kind = None
            true_events.add((track.track, alert.subject_id))
            prev = found_at.get(track.track)
            at = alert.frame if alert.raised is None else max(alert.frame, alert.raised)
            found_at[track.track] = at if prev is None else min(prev, at)
        else:
            kind = "wrong_subject" if track.watchlisted else "not_watchlisted"
            false_events.add((track.track, alert.subject_id))
            if not track.watchlisted:
                falsely_alerted.add(track.track)
        if kind is not None:
            kinds[kind] += 1
        verdicts.append(
            AlertVerdict(alert, None if track is None else track.track, v, kind is None, kind)
        )

    watch = truth.watchlisted_tracks
    others = truth.other_tracks
    n_alerts = len(verdicts)
    n_true = sum(1 for v in verdicts if v.true)
    n_false = n_alerts - n_true
    delays = sorted(
        (found_at[t.track] - t.first_frame) / truth.fps for t in watch if t.track in found_at
    )
    median: float | None = None
    if delays:
        mid = len(delays) // 2
        median = delays[mid] if len(delays) % 2 else (delays[mid - 1] + delays[mid]) / 2
    n_false_events = len(false_events) + stray
    fa10k = _ratio(n_false * 10_000.0, len(others))
    return StreamScore(
        watchlisted_passers_by=len(watch),
        watchlisted_found=len(found_at),
        recall=_ratio(len(found_at), len(watch)),
        other_passers_by=len(others),
        alerts=n_alerts,
        true_alerts=n_true,
        false_alerts=n_false,
        false_alerts_by_kind=kinds,
        false_alerts_per_10k=fa10k,
        passers_by_falsely_alerted=len(falsely_alerted),
        passer_by_fpir=_ratio(len(falsely_alerted), len(others)),
        precision=_ratio(n_true, n_alerts),
        true_events=len(true_events),
        false_events=n_false_events,
        event_precision=_ratio(len(true_events), len(true_events) + n_false_events),
        median_seconds_to_alert=None if median is None or math.isnan(median) else median,
        missed=[t.track for t in watch if t.track not in found_at],
        verdicts=verdicts,
    )
