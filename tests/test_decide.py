"""Per-track embed and alert decisions, with plain numbers."""

from __future__ import annotations

import numpy as np
import pytest

from edge.recognition.decide import TrackDecider
from edge.types import Detection, Match, Quality, Track


def track(track_id: int = 1, hits: int = 1) -> Track:
    det = Detection((0, 0, 80, 80), np.zeros((6, 2), np.float32), 0.9)
    return Track(track_id=track_id, detection=det, first_frame=0, last_frame=0, hits=hits)


def q(score: float, ok: bool = True) -> Quality:
    return Quality(
        ok=ok, score=score, face_px=80, sharpness=200, yaw=0.0, reason="" if ok else "blurred"
    )


def m(subject: str, score: float) -> Match:
    return Match(subject_index=0, subject_id=subject, category="wanted", score=score)


def test_embeds_first_good_frame_then_only_better_ones_up_to_the_limit() -> None:
    d = TrackDecider(threshold=0.4, max_embeds_per_track=3, min_quality_gain=0.25)
    t = track()
    decisions = [d.wants_embedding(t, q(s)) for s in [0.30, 0.36, 0.375, 0.20, 0.50, 0.90, 0.99]]
    #                                                 yes   <x1.25 yes   worse  yes   limit limit
    assert decisions == [True, False, True, False, True, False, False]
    assert t.embeds == 3 and t.best_quality == 0.50


def test_failed_quality_and_young_tracks_are_not_embedded() -> None:
    d = TrackDecider(threshold=0.4, min_hits=2)
    assert not d.wants_embedding(track(hits=1), q(0.9))
    assert not d.wants_embedding(track(hits=5), q(0.9, ok=False))
    t = track(hits=2)
    assert d.wants_embedding(t, q(0.1))
    assert t.embeds == 1


def test_alert_needs_the_threshold_inclusive() -> None:
    d = TrackDecider(threshold=0.4)
    assert not d.on_match(track(1), m("A", 0.3999), now=0.0)
    assert d.on_match(track(2), m("A", 0.4), now=0.0)  # score >= threshold
    assert not d.on_match(track(3), m("B", float("nan")), now=0.0)


def test_once_per_track_and_subject() -> None:
    d = TrackDecider(threshold=0.4, cooldown_s=0.0)
    t = track()
    assert d.on_match(t, m("A", 0.5), now=0.0)
    assert not d.on_match(t, m("A", 0.9), now=100.0)  # same track, same subject: never again
    assert d.on_match(t, m("B", 0.6), now=100.0)  # another subject on the same track
    assert t.alerted_subjects == {"A", "B"}
    assert d.alerts == 2


def test_cooldown_per_subject_across_tracks() -> None:
    d = TrackDecider(threshold=0.4, cooldown_s=60.0)
    assert d.on_match(track(1), m("A", 0.5), now=1000.0)
    second = track(2)
    assert not d.on_match(second, m("A", 0.5), now=1030.0)  # a new track within the cooldown
    assert d.suppressed == 1
    assert d.in_cooldown("A", 1059.9) and not d.in_cooldown("A", 1060.0)
    assert not d.on_match(second, m("A", 0.9), now=2000.0)  # that track was covered
    assert d.on_match(track(3), m("B", 0.5), now=1030.0)  # other subjects are not held back
    assert d.on_match(track(4), m("A", 0.5), now=1060.0)  # cooldown over
    assert d.alerts == 3


def test_a_stronger_match_breaks_through_the_cooldown() -> None:
    d = TrackDecider(threshold=0.4, cooldown_s=60.0)
    assert d.on_match(track(1), m("A", 0.45), now=1000.0)  # weak: perhaps a stranger
    assert not d.on_match(track(2), m("A", 0.45), now=1010.0)  # no stronger: held back
    assert d.on_match(track(3), m("A", 0.7), now=1020.0)  # stronger: the operator sees it
    assert not d.on_match(track(4), m("A", 0.65), now=1030.0)  # cooldown restarted at 0.7
    assert d.alerts == 2 and d.suppressed == 2


def test_clock_going_backwards_does_not_re_alert() -> None:
    d = TrackDecider(threshold=0.4, cooldown_s=10.0)
    assert d.on_match(track(1), m("A", 0.5), now=500.0)
    assert not d.on_match(track(2), m("A", 0.5), now=100.0)
    assert not d.on_match(track(3), m("A", 0.5), now=105.0)  # cooldown restarted at 100
    assert d.on_match(track(4), m("A", 0.5), now=110.0)


def test_reset_and_bounded_memory() -> None:
    d = TrackDecider(threshold=0.4, cooldown_s=60.0, max_remembered=3)
    for i in range(5):
        assert d.on_match(track(i), m(f"S{i}", 0.5), now=float(i))
    assert len(d._last_alert) == 3  # the oldest cooling subjects were forgotten
    d.reset()
    assert d.on_match(track(10), m("S4", 0.5), now=5.0)


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        TrackDecider(threshold=float("nan"))
    with pytest.raises(ValueError):
        TrackDecider(threshold=0.4, max_embeds_per_track=0)
    with pytest.raises(ValueError):
        TrackDecider(threshold=0.4, cooldown_s=-1)
    with pytest.raises(ValueError):
        TrackDecider(threshold=0.4, max_embeds_per_frame=0)


def test_min_embeddings_says_when_a_template_is_decided() -> None:
    d = TrackDecider(threshold=0.4, max_embeds_per_track=3, min_embeddings=2,
                     min_quality_gain=0.0)
    t = track()
    assert d.wants_embedding(t, q(0.5)) and not d.ready(t)
    assert d.wants_embedding(t, q(0.6)) and d.ready(t)
    fast, t1 = TrackDecider(threshold=0.4), track()
    assert fast.wants_embedding(t1, q(0.5)) and fast.ready(t1)  # k = 1: the first may alert
    per_embedding = TrackDecider(threshold=0.4, min_embeddings=3, decision="embedding")
    assert per_embedding.ready(track())  # per embedding there is no template to wait for
    for bad in (0, 4):
        with pytest.raises(ValueError):
            TrackDecider(threshold=0.4, max_embeds_per_track=3, min_embeddings=bad)


def test_template_min_embeddings_above_embeds_per_track_is_one_config_line() -> None:
    from edge.errors import ConfigError
    from edge.service.config import RecognitionSettings

    assert RecognitionSettings().template_min_embeddings == 1
    assert RecognitionSettings(template_min_embeddings=3).template_min_embeddings == 3
    with pytest.raises((ConfigError, ValueError)) as info:
        RecognitionSettings(template_min_embeddings=4, embeds_per_track=3)
    assert "template_min_embeddings" in str(info.value)
