"""``template_min_embeddings`` (k): a track is decided once its template holds k embeddings,
or when it ends with fewer, with its best face crop; the real pipeline on the demo frames.

The demo actor's subject frames (RetinaFace, mesh, dlib int8, as the daemon runs them) make
one track; the watchlist reference is the embedding of the track's first embedded frame, so
its first frame scores about 1 and the fused template less: a threshold between the two is
cleared by the first frame alone, not by the template. Thresholds come from the scores the
pipeline itself reports (``Recognizer.on_score``), never from hard-coded figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.recognition.decide import TrackDecider
from edge.recognition.match import Watchlist
from edge.recognition.pipeline import FrameOutcome, Recognizer
from edge.recognition.track import IoUTracker
from edge.types import AlertRecord, Frame, Match, Track
from edge.vision.faces import FaceEngine
from edge.vision.quality import QualityGate

ROOT = Path(__file__).resolve().parents[1]
FRAMES = sorted((ROOT / "demo" / "subjects" / "DEMO-0001").glob("*.jpg"))
BLANK_AFTER = 4  # frames without a face: the track (max_missed=2) ends
NEVER = 1.5  # a similarity no match reaches (scores are at most 1)


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> FaceEngine:
    return FaceEngine.from_models(models_dir, threads=1)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    if not FRAMES:
        pytest.skip("demo/subjects/DEMO-0001 has no frames")
    # Reversed: the face's quality rises along the track, so it is embedded more than once.
    return [np.asarray(cv2.imread(str(p)), dtype=np.uint8) for p in reversed(FRAMES)]


def embedding_of(engine: FaceEngine, image: np.ndarray) -> np.ndarray:
    (det,) = engine.detect(image)
    return np.asarray(engine.embed([engine.align(image, det)])[0], np.float32)


class Run:
    """A recognizer armed with one subject whose reference is ``ref``; records every match."""

    def __init__(self, engine: FaceEngine, ref: np.ndarray, threshold: float, k: int, *,
                 gain: float = 0.05, cooldown_s: float = 60.0) -> None:
        wl = Watchlist(["S1"], ["wanted_police"], ref[None].copy(), engine.family.metric,
                       threshold=threshold, embedder_sha256="0" * 64)
        self.tracker = IoUTracker(max_missed=2)
        self.decider = TrackDecider(threshold=1.0, min_embeddings=k, min_quality_gain=gain,
                                    cooldown_s=cooldown_s)
        self.rec = Recognizer(engine, self.tracker, QualityGate(), self.decider,
                              device_id="cam-k")
        self.scores: list[float] = []
        self.rec.on_score = self._score
        self.rec.arm(wl, "DEP-K")
        self.index = 0
        self.alerts: list[AlertRecord] = []
        self.alert_frames: list[int] = []
        self.raised: list[int] = []
        self.shape: tuple[int, ...] = (270, 480, 3)

    def _score(self, track: Track, match: Match) -> None:
        self.scores.append(float(match.score))

    def _take(self, out: FrameOutcome) -> FrameOutcome:
        assert out.alert_errors == []
        self.alerts += out.alerts
        self.alert_frames += out.alert_frames
        self.raised += [self.index] * len(out.alerts)
        return out

    def feed(self, imgs: Sequence[np.ndarray]) -> None:
        for img in imgs:
            self.shape = img.shape
            self._take(self.rec.process(Frame(index=self.index, image=img,
                                              captured_at=float(self.index))))
            self.index += 1

    def blank(self, n: int = BLANK_AFTER) -> None:
        """Frames without a face (the size of the last one fed): the track ends."""
        self.feed([np.zeros(self.shape, np.uint8)] * n)


def scores_of(engine: FaceEngine, ref: np.ndarray, imgs: list[np.ndarray], gain: float
              ) -> list[float]:
    """Each template score of the track (k=1, a threshold nothing clears)."""
    run = Run(engine, ref, NEVER, 1, gain=gain)
    run.feed(imgs)
    assert run.alerts == []
    return run.scores


def test_first_frame_alone_clears_but_the_template_does_not(
        engine: FaceEngine, images: list[np.ndarray]) -> None:
    ref = embedding_of(engine, images[0])
    scores = scores_of(engine, ref, images, gain=0.05)
    assert len(scores) >= 2 and scores[0] > scores[1], scores
    threshold = (scores[0] + scores[1]) / 2

    fast = Run(engine, ref, threshold, 1)
    fast.feed(images)
    fast.blank()
    assert [a.score for a in fast.alerts] == [scores[0]] and fast.alert_frames == [0]

    k2 = Run(engine, ref, threshold, 2)
    k2.feed(images[:1])
    (cand,) = k2.rec._candidates.values()  # above the threshold: a candidate, with its crop
    crop = cand.face_jpeg
    assert bytes(crop[:2]) == b"\xff\xd8"
    k2.feed(images[1:])
    assert k2.rec._candidates == {}, "the template fell below: nothing of the face is kept"
    assert len(crop) == 0
    k2.blank()
    assert k2.alerts == [] and k2.tracker.tracks == []


def test_a_one_embedding_track_that_ends_above_the_threshold_still_alerts(
        engine: FaceEngine, images: list[np.ndarray]) -> None:
    one = images[:1] * 6  # the same face six times: embedded once (no quality gain)
    ref = embedding_of(engine, one[0])
    (score,) = scores_of(engine, ref, one, gain=0.05)
    threshold = score - 0.05

    k2 = Run(engine, ref, threshold, 2)
    k2.feed(one)
    assert k2.alerts == [], "not decided while the track is seen with one embedding"
    (cand,) = k2.rec._candidates.values()
    crop = cand.face_jpeg
    k2.blank()
    (alert,) = k2.alerts
    assert alert.subject_id == "S1" and alert.score == score >= threshold
    assert k2.alert_frames == [0] and alert.captured_at == 0.0  # the face's frame ...
    assert k2.raised == [len(one) + 2]  # ... raised when the track ended (max_missed=2)
    crop_img = cv2.imdecode(np.frombuffer(alert.face_jpeg, np.uint8), cv2.IMREAD_COLOR)
    h, w = one[0].shape[:2]
    assert crop_img is not None and crop_img.shape[0] < h and crop_img.shape[1] < w
    assert alert.bbox[2] < w and alert.bbox[3] < h
    assert k2.rec._candidates == {} and len(crop) == 0, "the kept crop is wiped once used"

    live = Run(engine, ref, threshold, 2)  # the clip ends (bench) with the track still live
    live.feed(one)
    out = live.rec.finish(now=float(live.index))
    assert [a.score for a in out.alerts] == [score] and out.alert_frames == [0]
    assert live.tracker.tracks == [] and live.rec._candidates == {}


def test_a_below_threshold_track_keeps_nothing_and_disarm_drops_candidates(
        engine: FaceEngine, images: list[np.ndarray]) -> None:
    ref = embedding_of(engine, images[0])
    stranger = Run(engine, ref, NEVER, 2)  # a non-match throughout
    stranger.feed(images[:1])
    assert stranger.rec._candidates == {}
    stranger.blank()
    assert stranger.alerts == []

    armed = Run(engine, ref, 0.5, 2)
    armed.feed(images[:1])
    (cand,) = armed.rec._candidates.values()
    crop = cand.face_jpeg
    armed.rec.disarm()
    assert armed.rec._candidates == {} and len(crop) == 0 and armed.alerts == []


def test_once_per_track_and_the_cooldown_with_k2(
        engine: FaceEngine, images: list[np.ndarray]) -> None:
    ref = embedding_of(engine, images[-1])
    scores = scores_of(engine, ref, images, gain=0.0)
    assert len(scores) >= 3, scores  # three embeddings, every one above 0.5
    run = Run(engine, ref, 0.5, 2, gain=0.0)
    run.feed(images)
    assert [a.score for a in run.alerts] == [scores[1]], "decided on the 2nd embedding, once"
    run.blank()
    assert len(run.alerts) == 1, "not again on a later embedding nor when the track ends"

    # The same person again within the cooldown, a new track: decided at its end, held back
    # (a match not stronger than the alert that started the cooldown).
    one = images[:1] * 3
    again = Run(engine, ref, 0.5, 2, cooldown_s=60.0)
    again.feed(one)
    again.blank()
    assert len(again.alerts) == 1
    again.feed(one)
    again.blank()
    assert len(again.alerts) == 1 and again.decider.suppressed == 1
    later = Run(engine, ref, 0.5, 2, cooldown_s=0.0)  # no cooldown: the new track alerts
    later.feed(one)
    later.blank()
    later.feed(one)
    later.blank()
    assert len(later.alerts) == 2 and later.decider.suppressed == 0


def test_the_daemons_recognizer_takes_template_min_embeddings(engine: FaceEngine) -> None:
    from edge.errors import ConfigError
    from edge.service.config import load_settings
    from edge.service.startup import make_recognizer

    example = ROOT / "examples" / "edge.toml"
    settings = load_settings(example, overrides={"recognition": {"template_min_embeddings": 2}})
    assert make_recognizer(settings, engine).decider.min_embeddings == 2
    assert make_recognizer(load_settings(example), engine).decider.min_embeddings == \
        load_settings(example).recognition.template_min_embeddings
    above = load_settings(example).recognition.embeds_per_track + 1
    with pytest.raises(ConfigError) as info:
        load_settings(example, overrides={"recognition": {"template_min_embeddings": above}})
    (line,) = info.value.problems
    assert "template_min_embeddings" in line and "embeds_per_track" in line
