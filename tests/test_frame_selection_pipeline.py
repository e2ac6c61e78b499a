"""Frame selection through the real pipeline (RetinaFace, the quality gate, SFace int8 as
the daemon runs them): a synthetic walk toward the camera, made of the demo actor's frame
scaled up around the face, frame by frame, so the face grows from ~45 to ~110 px. Its
first good face is embedded at once and its embeddings reach the end of the walk, not only
its small early frames (issue 20, item 3)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.recognition.decide import TrackDecider
from edge.recognition.match import Watchlist
from edge.recognition.pipeline import Recognizer
from edge.recognition.track import IoUTracker
from edge.types import Frame, Match, Track
from edge.vision.faces import FaceEngine
from edge.vision.quality import QualityGate

ROOT = Path(__file__).resolve().parents[1]
ACTOR = ROOT / "demo" / "subjects" / "DEMO-0001" / "frame00.jpg"
CANVAS = (400, 640)  # rows, columns
NEVER = 1.5  # a similarity no match reaches: this test is about embeddings, not alerts


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> FaceEngine:
    return FaceEngine.from_models(models_dir, threads=1)


def walk_toward_the_camera(engine: FaceEngine, frames: int = 40) -> list[np.ndarray]:
    read = cv2.imread(str(ACTOR))
    if read is None:
        pytest.skip(f"{ACTOR} is absent")
    image = np.asarray(read, dtype=np.uint8)
    (det,) = engine.detect(image)
    cx, cy = (det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2
    h, w = CANVAS
    out = []
    for s in np.linspace(0.6, 1.5, frames):  # the actor's face is ~72 px wide
        m = np.array([[s, 0, w / 2 - s * cx], [0, s, h / 2 - s * cy]], dtype=np.float32)
        out.append(cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(96, 96, 96)))
    return out


def test_a_walk_toward_the_camera_is_embedded_at_its_best_frames(engine: FaceEngine) -> None:
    decider = TrackDecider(threshold=1.0)  # the defaults, as [recognition] gives them
    rec = Recognizer(engine, IoUTracker(max_missed=2), QualityGate(), decider,
                     device_id="cam-walk")
    wl = Watchlist(["S1"], ["wanted_police"], np.ones((1, engine.family.dim), np.float32),
                   engine.family.metric, threshold=NEVER, embedder_sha256="0" * 64)
    rec.arm(wl, "DEP-WALK")
    embedded: list[tuple[int, int, float]] = []  # frame, track, face width
    index = 0

    def on_score(track: Track, match: Match) -> None:
        embedded.append((index, track.track_id, track.detection.width))

    rec.on_score = on_score
    widths: list[float] = []
    frames = walk_toward_the_camera(engine)
    for index, image in enumerate(frames):
        out = rec.process(Frame(index=index, image=image, captured_at=index / 25.0))
        assert out.faces == 1 and out.alerts == []
        widths.append(max(t.detection.width for t in rec.tracker.tracks))
    assert {t for _, t, _ in embedded} == {embedded[0][1]}, "one track"
    assert widths[0] < 0.5 * widths[-1], "the face grows along the walk"
    assert embedded[0][0] == 0, "the first good face is embedded at once (the fast path)"
    assert len(embedded) <= decider.max_embeds_per_track
    # The embeddings reach the end of the walk: the largest face embedded is within the
    # gain (x1.25 in score, and the score grows with the face's size) of the largest seen.
    largest = max(width for _, _, width in embedded)
    assert largest * (1 + decider.min_quality_gain) >= max(widths), (embedded, widths)
