"""The orchestrator: one frame through every stage, from pixels to alert records.

    Frame -> Detector -> IoUTracker -> QualityGate -> Landmarker/Aligner -> Embedder
          -> Matcher -> TrackDecider -> AlertRecord

This module only wires the stages (each lives in its own module behind a typed
seam) and measures them. It holds no state of its own beyond the tracker's and
the decider's, and it keeps nothing of a face that does not match: crops,
chips and embeddings are local variables of :meth:`Recognizer.process` and are
gone when it returns (safeguard 5). Only a match that the decider turns into an
alert leaves, as an :class:`~edge.types.AlertRecord` carrying the matched
face's crop and nothing else of the frame (safeguard 11).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.delivery.alert import face_bbox, face_crop_jpeg, new_alert_id
from edge.recognition.decide import TrackDecider
from edge.recognition.match import Matcher, Watchlist
from edge.recognition.track import IoUTracker
from edge.types import AlertRecord, Detection, Frame, Match, Quality, Track
from edge.vision.detect import detect_tiled
from edge.vision.faces import FaceEngine
from edge.vision.quality import QualityGate

log = logging.getLogger(__name__)

STAGES = ("detect", "track", "quality", "align", "embed", "match", "decide")

@dataclass(slots=True)
class FrameOutcome:
    """What one frame produced: alerts, counts and per-stage seconds. No pixels, no vectors."""

    alerts: list[AlertRecord]
    faces: int
    new_tracks: int
    embedded: int
    ended_tracks: int
    timings: dict[str, float] = field(default_factory=dict)
    alert_errors: list[str] = field(default_factory=list)  # alerts that could not be built
    # The frame index each alert's face was seen in (an ended track's alert: an earlier one).
    alert_frames: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Candidate:
    """An undecided track's match at or above the threshold, and its best face crop (RAM)."""

    match: Match
    quality: float
    frame_index: int
    captured_at: float
    bbox: tuple[int, int, int, int]
    face_jpeg: bytearray = field(repr=False)

    def wipe(self) -> None:
        self.face_jpeg[:] = bytes(len(self.face_jpeg))
        self.face_jpeg.clear()


@dataclass(frozen=True, slots=True)
class Armed:
    """The watchlist in force and the deployment it belongs to."""

    deployment_id: str
    matcher: Matcher
    threshold: float


def scale_detection(det: Detection, sx: float, sy: float) -> Detection:
    """Map a detection from the detect image (lores) to the full frame."""
    x1, y1, x2, y2 = det.box
    s = np.array([sx, sy], dtype=np.float32)
    kp = (det.keypoints * s).astype(np.float32)
    p5 = None if det.points5 is None else (det.points5 * s).astype(np.float32)
    return Detection((x1 * sx, y1 * sy, x2 * sx, y2 * sy), kp, det.score, p5)


class Recognizer:
    """Runs the stages over frames; armed with a watchlist, or disarmed (does nothing)."""

    def __init__(
        self,
        engine: FaceEngine,
        tracker: IoUTracker,
        gate: QualityGate,
        decider: TrackDecider,
        *,
        device_id: str,
        min_score: float | None = None,
        min_face_px: float = 0.0,
        tiles: tuple[int, int] = (1, 1),
    ) -> None:
        self.engine = engine
        self.min_score = min_score
        self.min_face_px = min_face_px
        self.tiles = tiles
        self.tracker = tracker
        self.gate = gate
        self.decider = decider
        self.device_id = device_id
        self._armed: Armed | None = None
        self.model_info = dict(engine.model_info)
        self._candidates: dict[int, Candidate] = {}  # track id -> undecided match (RAM)
        # Offline evaluation only (edge bench): told every track's latest match; None live.
        self.on_score: Callable[[Track, Match], None] | None = None

    @property
    def armed(self) -> bool:
        return self._armed is not None

    @property
    def deployment_id(self) -> str | None:
        return self._armed.deployment_id if self._armed is not None else None

    def arm(self, watchlist: Watchlist, deployment_id: str) -> None:
        """Start matching against ``watchlist`` (built once; the matcher never copies it)."""
        self._drop_candidates()
        self._armed = Armed(deployment_id, Matcher(watchlist), watchlist.threshold)
        self.decider.threshold = watchlist.threshold
        self.decider.metric = watchlist.metric

    def disarm(self) -> None:
        """Stop matching and forget every track (the caller wipes the watchlist)."""
        self._armed = None
        self._drop_candidates()
        for track in self.tracker.clear():
            self.decider.forget(track)
        self.decider.reset()

    def _drop_candidates(self) -> None:
        for cand in self._candidates.values():
            cand.wipe()
        self._candidates.clear()

    def finish(self, now: float) -> FrameOutcome:
        """End every live track (the end of a clip, a stop): their candidates are decided
        at ``now`` as when a track expires, then everything of them is forgotten."""
        armed = self._armed
        ended = self.tracker.clear()
        alerts: list[AlertRecord] = []
        frames: list[int] = []
        errors: list[str] = []
        for gone in ended:
            if armed is not None:
                self._end_track(armed, gone, now, alerts, frames, errors)
            self.decider.forget(gone)
        self._drop_candidates()
        return FrameOutcome(alerts=alerts, faces=0, new_tracks=0, embedded=0,
                            ended_tracks=len(ended), alert_errors=errors, alert_frames=frames)

    def _end_track(self, armed: Armed, track: Track, now: float, alerts: list[AlertRecord],
                   frames: list[int], errors: list[str]) -> None:
        """Decide an ended track's candidate, if it has one (then the candidate is wiped)."""
        cand = self._candidates.pop(track.track_id, None)
        if cand is None:
            return
        try:
            if self.decider.on_match(track, cand.match, now):
                try:
                    alerts.append(self._record(armed, track, cand.match, cand.captured_at,
                                               cand.bbox, bytes(cand.face_jpeg)))
                    frames.append(cand.frame_index)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            cand.wipe()

    def _hold(self, track: Track, match: Match, quality: Quality, frame: Frame) -> None:
        """An undecided track's latest match: kept (with the best crop) only at or above the
        threshold; below it, whatever was kept for the track is wiped at once."""
        held = self._candidates.get(track.track_id)
        if not match.score >= self.decider.threshold or match.subject_id in \
                track.alerted_subjects:
            if held is not None:
                self._candidates.pop(track.track_id).wipe()
            return
        if held is not None and held.match.subject_id == match.subject_id \
                and held.quality >= quality.score:
            held.match = match  # the latest template decides; the better crop stays
            return
        crop = bytearray(face_crop_jpeg(frame.image, track.detection.box))
        if held is not None:
            held.wipe()
        self._candidates[track.track_id] = Candidate(
            match, quality.score, frame.index, frame.captured_at,
            face_bbox(track.detection.box, frame.size), crop)

    def _detect(self, frame: Frame) -> list[Detection]:
        """Faces in the frame, in full-frame pixels, at least ``min_face_px`` wide."""
        image = frame.detect_image if frame.detect_image is not None else frame.image
        if self.tiles != (1, 1):
            dets = detect_tiled(self.engine.detector, image, self.tiles, min_score=self.min_score)
        else:
            dets = self.engine.detect(image, self.min_score)
        if frame.detect_image is not None:
            dh, dw = frame.detect_image.shape[:2]
            h, w = frame.image.shape[:2]
            dets = [scale_detection(d, w / dw, h / dh) for d in dets]
        return [d for d in dets if d.width >= self.min_face_px]

    def process(self, frame: Frame, now: float | None = None) -> FrameOutcome:
        """Run every stage on ``frame``. Decisions (cooldowns) use ``now``, by default the
        frame's capture time, so a clip replayed flat out behaves as it would live."""
        armed = self._armed
        if armed is None:
            return FrameOutcome(alerts=[], faces=0, new_tracks=0, embedded=0, ended_tracks=0)
        t: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        image = frame.image

        t0 = time.perf_counter()
        dets = self._detect(frame)
        t1 = time.perf_counter()
        t["detect"] = t1 - t0

        tracks = self.tracker.update(dets, frame.index)
        ended = self.tracker.expire(frame.index)
        t2 = time.perf_counter()
        t["track"] = t2 - t1

        when = frame.captured_at if now is None else now
        alerts: list[AlertRecord] = []
        alert_frames: list[int] = []
        alert_errors: list[str] = []
        for gone in ended:  # a track's candidate is decided; its template never outlives it
            self._end_track(armed, gone, when, alerts, alert_frames, alert_errors)
            self.decider.forget(gone)
        # The frame's faces worth embedding, within the decider's per-frame budget.
        selected = self.decider.select(
            [(track, self.gate.assess(image, track.detection)) for track in tracks])
        chosen: list[Track] = [track for track, _ in selected]
        qualities: list[Quality] = [quality for _, quality in selected]
        del selected
        t3 = time.perf_counter()
        t["quality"] = t3 - t2

        if chosen:
            chips = [self.engine.align(image, track.detection) for track in chosen]
            t4 = time.perf_counter()
            t["align"] = t4 - t3
            embeddings = self.engine.embed(chips)
            del chips
            t5 = time.perf_counter()
            t["embed"] = t5 - t4
            probes = np.stack([self.decider.probe(track, emb, q) for track, emb, q in
                               zip(chosen, embeddings, qualities, strict=True)])
            embeddings.fill(0.0)
            del embeddings
            matches = armed.matcher.best(probes)
            probes.fill(0.0)
            del probes
            t6 = time.perf_counter()
            t["match"] = t6 - t5
            for track, match, quality in zip(chosen, matches, qualities, strict=True):
                if self.on_score is not None:
                    self.on_score(track, match)
                if not self.decider.ready(track):
                    try:
                        self._hold(track, match, quality, frame)
                    except Exception as exc:  # a crop that cannot be encoded: as an alert's
                        alert_errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                held = self._candidates.pop(track.track_id, None)
                if held is not None:
                    held.wipe()  # decided now, on the full template
                if self.decider.on_match(track, match, when):
                    # One failing alert (a crop that cannot be encoded, ...) is reported
                    # in the outcome and never ends the loop; the daemon audits it.
                    try:
                        alerts.append(self._alert(armed, frame, track, match))
                        alert_frames.append(frame.index)
                    except Exception as exc:
                        alert_errors.append(f"{type(exc).__name__}: {exc}"[:200])
            del matches
            t["decide"] = time.perf_counter() - t6
        return FrameOutcome(
            alerts=alerts,
            faces=len(dets),
            new_tracks=sum(1 for track in tracks if track.first_frame == frame.index),
            embedded=len(chosen),
            ended_tracks=len(ended),
            timings=t,
            alert_errors=alert_errors,
            alert_frames=alert_frames,
        )

    def _alert(self, armed: Armed, frame: Frame, track: Track, match: Match) -> AlertRecord:
        """The alert record for a decided match. The score is the value the decision was
        taken on, unrounded: rounding it first could put it below a threshold with more
        decimals (``edge eval calibrate`` prints five) and the alert would be refused."""
        return self._record(armed, track, match, frame.captured_at,
                            face_bbox(track.detection.box, frame.size),
                            face_crop_jpeg(frame.image, track.detection.box))

    def _record(self, armed: Armed, track: Track, match: Match, captured_at: float,
                bbox: tuple[int, int, int, int], face_jpeg: bytes) -> AlertRecord:
        return AlertRecord(
            alert_id=new_alert_id(),
            device_id=self.device_id,
            deployment_id=armed.deployment_id,
            captured_at=captured_at,
            subject_id=match.subject_id,
            category=match.category,
            score=float(match.score),
            threshold=armed.threshold,
            track_id=track.track_id,
            bbox=bbox,
            face_jpeg=face_jpeg,
            model=self.model_info,
        )
