"""Track templates: decisions on the fusion of a track's best embeddings, wiped with the track.

The decider with plain numbers; then the real pipeline (RetinaFace, mesh, dlib int8) on
the demo actor's frames: the template lives on the track while it is seen and is zeroed
and dropped when the track ends or the recognizer disarms.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.recognition.decide import TrackDecider
from edge.recognition.match import Matcher, Watchlist
from edge.types import Detection, Frame, Quality, Track
from edge.vision.fusion import fuse

ROOT = Path(__file__).resolve().parents[1]
FRAMES = sorted((ROOT / "demo" / "subjects" / "DEMO-0001").glob("*.jpg"))


def track(width: float = 80.0) -> Track:
    det = Detection((0, 0, width, width), np.zeros((5, 2), np.float32), 0.9)
    return Track(track_id=1, detection=det, first_frame=0, last_frame=0)


def q(score: float) -> Quality:
    return Quality(ok=True, score=score, face_px=80, sharpness=200, yaw=0.0)


def unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle), 0.0], np.float32)


def test_template_is_the_weighted_fusion_of_the_best_frames() -> None:
    d = TrackDecider(threshold=0.5, max_embeds_per_track=2, metric="cosine")
    t = track()
    first = d.probe(t, unit(0.0), q(0.9))
    assert np.allclose(first, unit(0.0))  # a template of one: the fast path
    second = d.probe(t, unit(np.pi / 2), q(0.3))
    assert np.allclose(second, fuse(np.stack([unit(0.0), unit(np.pi / 2)]), "cosine", [0.9, 0.3]))
    kept = t.frame_embeddings[1]
    third = d.probe(t, unit(np.pi / 4), q(0.6))  # the weakest frame (0.3) goes, zeroed
    assert len(t.frame_embeddings) == 2 and t.frame_weights == [0.9, 0.6]
    assert not kept.any()
    assert np.allclose(third, fuse(np.stack([unit(0.0), unit(np.pi / 4)]), "cosine", [0.9, 0.6]))


def test_size_weights_and_the_per_embedding_mode() -> None:
    d = TrackDecider(threshold=0.5, metric="cosine", weight="size")
    t = track(width=120.0)
    d.probe(t, unit(0.0), q(0.1))
    assert t.frame_weights == [120.0]
    single = TrackDecider(threshold=0.5, metric="cosine", decision="embedding")
    t2 = track()
    e = unit(1.0)
    assert single.probe(t2, e, q(0.5)) is e and t2.frame_embeddings == []
    with pytest.raises(ValueError):
        TrackDecider(threshold=0.5, decision="best")  # type: ignore[arg-type]


def test_a_strangers_lucky_frame_is_outvoted() -> None:
    """Per embedding, one frame over the threshold alerts; on the template it does not."""
    ref = unit(0.0)
    wl = Watchlist(["S1"], ["wanted"], ref[None].copy(), "cosine", threshold=0.8,
                   embedder_sha256="0" * 64)
    matcher = Matcher(wl)
    frames = [(unit(1.2), 0.8), (unit(1.1), 0.8), (unit(0.3), 0.5)]  # last: cos 0.955 > 0.8
    outcome = {}
    for mode in ("embedding", "template"):
        d = TrackDecider(threshold=0.8, max_embeds_per_track=3, metric="cosine",
                         decision=mode)  # type: ignore[arg-type]
        t = track()
        alerts = 0
        for emb, quality in frames:
            (match,) = matcher.best(d.probe(t, emb, q(quality))[None])
            alerts += d.on_match(t, match, now=0.0)
        outcome[mode] = alerts
    assert outcome == {"embedding": 1, "template": 0}


def test_forget_wipes_in_place() -> None:
    d = TrackDecider(threshold=0.5, metric="cosine")
    t = track()
    d.probe(t, unit(0.2), q(0.5))
    d.probe(t, unit(0.4), q(0.7))
    held = list(t.frame_embeddings)
    TrackDecider.forget(t)
    assert t.frame_embeddings == [] and t.frame_weights == []
    assert all(not e.any() for e in held)


def test_no_template_outlives_its_track_in_the_pipeline(models_dir: Path) -> None:
    from edge.recognition.pipeline import Recognizer
    from edge.recognition.track import IoUTracker
    from edge.vision.faces import FaceEngine
    from edge.vision.quality import QualityGate

    engine = FaceEngine.from_models(models_dir, threads=1)
    dim = engine.family.dim
    wl = Watchlist(["S1"], ["wanted"], np.full((1, dim), 9.0, np.float32), engine.family.metric,
                   threshold=0.99, embedder_sha256="0" * 64)  # matches nothing
    tracker = IoUTracker(max_missed=2)
    rec = Recognizer(engine, tracker, QualityGate(), TrackDecider(threshold=1.0),
                     device_id="cam-t")
    rec.arm(wl, "DEP-1")
    images = [cv2.imread(str(p)) for p in FRAMES]
    blank = np.zeros_like(images[0])

    def frame(i: int, img: np.ndarray) -> Frame:
        return Frame(index=i, image=img, captured_at=float(i))

    for i, img in enumerate(images):
        rec.process(frame(i, img))
    (t,) = tracker.tracks
    assert t.frame_embeddings, "the track holds its template while it is seen"
    held = list(t.frame_embeddings)
    for i in range(len(images), len(images) + 4):  # the face leaves: the track ends
        rec.process(frame(i, blank))
    assert tracker.tracks == []
    assert t.frame_embeddings == [] and all(not e.any() for e in held)

    for i, img in enumerate(images, start=100):  # and a disarm wipes live tracks too
        rec.process(frame(i, img))
    (t2,) = tracker.tracks
    held2 = list(t2.frame_embeddings)
    assert held2
    rec.disarm()
    assert t2.frame_embeddings == [] and all(not e.any() for e in held2)
