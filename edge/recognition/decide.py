"""Per-track decisions: when to embed a face, and when a match becomes an alert.

Pure logic over :class:`~edge.types.Track`, :class:`~edge.types.Quality` and
:class:`~edge.types.Match`; no clocks, no I/O (the caller passes ``now``,
preferably ``time.monotonic()``).

Embedding (``select``): embeddings are expensive (SFace int8: 7-15 ms a face on a 2-core
machine), so each track's are spent on its best faces, not its first. A face is
*eligible* when it passes the quality gate (and the track has ``min_hits``), its track
has had fewer than ``max_embeds_per_track`` embeddings, and it is better than every face
of the track embedded so far: its quality score (face size, sharpness, frontal pose from
the five points; :mod:`edge.vision.quality`) is at least ``1 + min_quality_gain`` times
the track's best embedded score. A track's first good face is always eligible and is
embedded at once (the fast path: a clearly matching first face alerts without waiting
for a better one). The gain is relative because the score is a product (a face 10 %
wider scores 10 % more), so the budget covers a walk toward the camera in steps of equal
ratio to its end instead of being spent on the small early frames: with the defaults (12
per track, gain 0.10) a walk whose score grows up to 2.8x ends with an embedding within
10 % of its best face. Per frame at most ``max_embeds_per_frame`` faces are embedded (a
crowd): the eligible faces are ranked by the track's embeddings so far (fewest first:
every new face gets its first embedding before anyone's second), then by their gain over
the track's best (largest first); the rest wait for a later frame and stay eligible
while they are better than what was embedded, so a busy street degrades to fewer
embeddings per track instead of falling behind the camera. A face chosen is counted on
its track (``track.embeds``, ``track.best_quality``). ``wants_embedding`` is the same
decision for one face.

Alerting (``on_match``): a match raises an alert when its score (a
similarity) is at least ``threshold``, at most once per track and subject,
and not within ``cooldown_s`` of an alert for the same subject on any track
(a person who walks out of view and back, or whose track breaks, is not
re-alerted every few seconds) -- unless the new match is stronger than the
alert that started the cooldown: measured on simulated streams, a weak false
alert for subject X on a stranger otherwise hid the real X who walked past
seconds later. A cooled-down match still marks the track, so the same track
does not alert later either.

Track templates (``decision="template"``, the default): each embedding of a track is
kept, in RAM and on the track only, with a weight (its quality score, or its face
width with ``weight="size"``); the track is matched on the fusion of its best
``max_embeds_per_track`` embeddings (:func:`edge.vision.fusion.fuse`), so a
stranger's lucky single frame counts for less and a sharp frame for more than a blurred
one. The first embedding is a template of one (the fast path: an alert is not delayed).
:meth:`TrackDecider.forget` wipes a track's embeddings when it ends; nothing of a
template is logged or kept anywhere else. ``decision="embedding"`` decides on each
embedding alone, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge.types import Match, Metric, Quality, Track
from edge.vision.fusion import fuse

Decision = Literal["template", "embedding"]
Weight = Literal["quality", "size"]
F32 = npt.NDArray[np.float32]
Face = tuple[Track, Quality]
"""A face of a frame that may be embedded: its track and its quality verdict."""


class TrackDecider:
    """Decides when to embed a track and when a match is an alert."""

    def __init__(
        self,
        threshold: float,
        max_embeds_per_track: int = 12,
        cooldown_s: float = 60.0,
        *,
        min_quality_gain: float = 0.10,
        max_embeds_per_frame: int | None = 2,
        min_hits: int = 1,
        max_remembered: int = 10_000,
        decision: Decision = "template",
        weight: Weight = "quality",
        metric: Metric = "euclidean",
        min_embeddings: int = 1,
    ) -> None:
        if not math.isfinite(threshold):
            raise ValueError("threshold must be a finite similarity")
        if max_embeds_per_track < 1:
            raise ValueError("max_embeds_per_track must be >= 1")
        if cooldown_s < 0 or min_quality_gain < 0 or min_hits < 1 or max_remembered < 1:
            raise ValueError("cooldown_s, min_quality_gain >= 0; min_hits, max_remembered >= 1")
        if max_embeds_per_frame is not None and max_embeds_per_frame < 1:
            raise ValueError("max_embeds_per_frame must be >= 1 (None: no limit)")
        if not 1 <= min_embeddings <= max_embeds_per_track:
            raise ValueError("min_embeddings must be between 1 and max_embeds_per_track")
        self.min_embeddings = min_embeddings
        self.threshold = threshold
        self.max_embeds_per_track = max_embeds_per_track
        self.cooldown_s = cooldown_s
        self.min_quality_gain = min_quality_gain
        self.max_embeds_per_frame = max_embeds_per_frame
        self.min_hits = min_hits
        self.max_remembered = max_remembered
        if decision not in ("template", "embedding") or weight not in ("quality", "size"):
            raise ValueError("decision is 'template' or 'embedding'; weight 'quality' or 'size'")
        self.decision: Decision = decision
        self.weight: Weight = weight
        self.metric: Metric = metric  # set from the watchlist when the recognizer arms
        # subject id -> (time, score) of the alert that started its cooldown
        self._last_alert: dict[str, tuple[float, float]] = {}
        self.alerts = 0
        self.suppressed = 0  # matches over threshold held back by the cooldown

    # -- embedding -----------------------------------------------------------

    def eligible(self, track: Track, quality: Quality) -> bool:
        """True when this face may be embedded: a good face of a track with budget left,
        its first or one better than every face of the track embedded so far."""
        if not quality.ok or track.hits < self.min_hits:
            return False
        if track.embeds >= self.max_embeds_per_track:
            return False
        return track.embeds == 0 or \
            quality.score >= track.best_quality * (1.0 + self.min_quality_gain)

    @staticmethod
    def gain(track: Track, quality: Quality) -> float:
        """How much better this face is than the track's best embedded one (a ratio;
        infinite for a track's first embedding)."""
        if track.embeds == 0 or track.best_quality <= 0.0:
            return math.inf
        return quality.score / track.best_quality

    def select(self, faces: Sequence[Face], budget: int | None = None) -> list[Face]:
        """The faces of one frame to embed, in their given order, each counted on its track.

        Eligible faces (:meth:`eligible`) are ranked by their track's embeddings so far
        (fewest first), then by :meth:`gain` (largest first), then by quality score, and
        at most ``budget`` are taken (by default ``max_embeds_per_frame``, which may be
        None: no limit).
        """
        limit = self.max_embeds_per_frame if budget is None else budget
        if limit is not None and limit < 1:
            return []
        order = [i for i, (track, quality) in enumerate(faces) if self.eligible(track, quality)]
        order.sort(key=lambda i: (faces[i][0].embeds, -self.gain(*faces[i]),
                                  -faces[i][1].score, faces[i][0].track_id))
        taken = sorted(order if limit is None else order[:limit])
        for i in taken:
            track, quality = faces[i]
            track.embeds += 1
            track.best_quality = max(track.best_quality, quality.score)
        return [faces[i] for i in taken]

    def wants_embedding(self, track: Track, quality: Quality) -> bool:
        """True (and counted on ``track``) when this face, alone in its frame, should be
        embedded (:meth:`select` of one face)."""
        return bool(self.select([(track, quality)], budget=1))

    # -- track templates -------------------------------------------------------

    def probe(self, track: Track, embedding: F32, quality: Quality) -> F32:
        """What to match for ``track`` after this new ``embedding``: the embedding itself
        (``decision="embedding"``) or the track's fused template."""
        if self.decision == "embedding":
            return embedding
        w = max(float(quality.score), 1e-6) if self.weight == "quality" else max(
            float(track.detection.width), 1.0)
        track.frame_embeddings.append(np.array(embedding, dtype=np.float32, copy=True))
        track.frame_weights.append(w)
        if len(track.frame_embeddings) > self.max_embeds_per_track:
            worst = int(np.argmin(track.frame_weights))
            track.frame_embeddings.pop(worst).fill(0.0)
            track.frame_weights.pop(worst)
        return fuse(np.stack(track.frame_embeddings), self.metric, track.frame_weights)

    def ready(self, track: Track) -> bool:
        """True when ``track`` is decided on its latest match now; False while its template
        holds fewer than ``min_embeddings`` embeddings (then it is decided when it ends)."""
        return self.decision == "embedding" or track.embeds >= self.min_embeddings

    @staticmethod
    def forget(track: Track) -> None:
        """Wipe a track's embeddings (zeros in place) and drop them: the track has ended."""
        for e in track.frame_embeddings:
            e.fill(0.0)
        track.frame_embeddings.clear()
        track.frame_weights.clear()

    # -- alerting --------------------------------------------------------------

    def on_match(self, track: Track, match: Match, now: float) -> bool:
        """True when ``match`` on ``track`` at time ``now`` must raise an alert."""
        if not match.score >= self.threshold:  # also False for NaN
            return False
        subject = match.subject_id
        if subject in track.alerted_subjects:
            return False
        track.alerted_subjects.add(subject)
        held = self._last_alert.get(subject)
        if held is not None:
            last, last_score = held
            if now < last:
                # The clock went backwards: hold this one back and restart the cooldown now.
                self._last_alert[subject] = (now, last_score)
                self.suppressed += 1
                return False
            if now < last + self.cooldown_s and match.score <= last_score:
                # Within the cooldown only a stronger match alerts again, so a weak (possibly
                # false) alert for a subject cannot hide the real person behind it.
                self.suppressed += 1
                return False
        self._remember(subject, now, match.score)
        self.alerts += 1
        return True

    def in_cooldown(self, subject_id: str, now: float) -> bool:
        held = self._last_alert.get(subject_id)
        return held is not None and now < held[0] + self.cooldown_s

    def reset(self) -> None:
        """Forget every cooldown (a new deployment or watchlist)."""
        self._last_alert.clear()

    def _remember(self, subject: str, now: float, score: float) -> None:
        self._last_alert[subject] = (now, score)
        if len(self._last_alert) > self.max_remembered:
            expired = [s for s, (t, _) in self._last_alert.items() if now - t >= self.cooldown_s]
            for s in expired:
                del self._last_alert[s]
            while len(self._last_alert) > self.max_remembered:  # all still cooling: oldest go
                del self._last_alert[min(self._last_alert, key=lambda k: self._last_alert[k][0])]
