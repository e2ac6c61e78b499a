"""A threshold with five decimals (what ``edge eval calibrate`` prints) and a match just
above it: the alert is built on the very score the decision was taken on (issue 15).

Real models, the real :class:`Recognizer` and decider, the demo subject's photo. The
watchlist vector is placed at a chosen distance from the face's own embedding, so the
match score is 0.612345..., above the threshold 0.61234 but 0.6123 once rounded to four
decimals: before the fix the pipeline rounded the score first and ``encode_alert``
refused the alert (the daemon crashed on it).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edge.delivery.alert import encode_alert
from edge.recognition.decide import TrackDecider
from edge.recognition.match import Watchlist
from edge.recognition.pipeline import Recognizer
from edge.recognition.track import IoUTracker
from edge.types import Frame
from edge.vision.faces import FaceEngine
from edge.vision.quality import QualityGate

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.61234
SCORE = 0.612345


def test_a_near_match_on_a_five_decimal_threshold_becomes_an_alert() -> None:
    # dlib: the test places the watchlist vector at a Euclidean distance from the face's own
    engine = FaceEngine.from_models(ROOT / "models", embedder="dlib_resnet_v1", precision="int8")
    image = cv2.imread(str(sorted((ROOT / "demo" / "subjects").rglob("frame00.jpg"))[0]))
    assert engine.family.metric == "euclidean"
    recognizer = Recognizer(engine, IoUTracker(), QualityGate(0, 0.0, 1.0),
                            TrackDecider(threshold=THRESHOLD, cooldown_s=0.0),
                            device_id="van-01")  # fmt: skip
    frame = Frame(0, 1_800_000_000.0, image)
    [det] = recognizer._detect(frame)
    own = engine.embed([engine.align(image, det)])[0].astype(np.float64)
    direction = np.random.default_rng(7).normal(size=own.shape)
    direction /= np.linalg.norm(direction)
    target = (own + (1.0 - SCORE) * direction).astype(np.float32)[None, :]
    watchlist = Watchlist(subject_ids=["S-0001"], categories=["missing_person"],
                          embeddings=target, metric="euclidean", threshold=THRESHOLD,
                          embedder_sha256=engine.model_info["embedder_sha256"])  # fmt: skip
    recognizer.arm(watchlist, "D-1")
    alerts = []
    for i in range(3):
        outcome = recognizer.process(Frame(i, 1_800_000_000.0 + i, image))
        assert outcome.alert_errors == []
        alerts += outcome.alerts
    assert alerts, "no decision: the test would prove nothing"
    alert = alerts[0]
    assert THRESHOLD <= alert.score < THRESHOLD + 1e-5
    assert round(alert.score, 4) < THRESHOLD  # what the old pipeline would have sent
    body = json.loads(encode_alert(alert))  # refused before the fix
    assert body["score"] >= body["threshold"] == THRESHOLD
