"""``edge bench``: the real pipeline over a clip, measured end to end.

Frames are read from the clip (flat out, or paced at its fps with
``realtime``), run through the same :class:`~edge.recognition.pipeline.Recognizer` as the
daemon, and every alert goes through the durable outbox and the real
publisher (mutual TLS, QoS 1) to a local mosquitto, where a control-room
subscriber timestamps its arrival. Figures: fps, per-stage milliseconds (p50
and p95), frame-to-control-room latency (capture time to receipt by the
subscriber, so it includes the outbox, the PUBACK round and the broker hop),
peak RSS, and, with a truth file from ``edge simulate``, recall, false alerts
and precision (:mod:`edge.evaluation.stream`).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.delivery.wire import parse_rfc3339
from edge.errors import UsageError
from edge.vision.defaults import DEFAULT_EMBEDDER

DEVICE_ID = "bench"


@dataclass(slots=True)
class _Received:
    at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    event: threading.Event = field(default_factory=threading.Event)
    expected: int = 0


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50 and p95 of ``values`` times ``scale`` (seconds to ms by default)."""
    if not values:
        return {"p50": None, "p95": None}
    arr = np.asarray(values, dtype=np.float64) * scale
    return {"p50": round(float(np.percentile(arr, 50)), 3),
            "p95": round(float(np.percentile(arr, 95)), 3)}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _progress(done: int, total: int | None, started: float) -> None:
    if not sys.stderr.isatty() and done % 100:
        return
    rate = done / max(time.monotonic() - started, 1e-6)
    of = f"/{total}" if total else ""
    sys.stderr.write(f"\rbench: frame {done}{of}  {rate:5.1f} fps")
    sys.stderr.flush()


def _collect(outcome: Any, raised: int, publisher: Any, alerts: list[dict[str, Any]]) -> None:
    """Publish ``outcome``'s alerts (unless ``publisher`` is None: stored already) and note
    each: the frame its face was seen in (to find the passer-by) and the frame it was
    raised on (for the time to alert)."""
    for alert, seen in zip(outcome.alerts, outcome.alert_frames, strict=True):
        if publisher is not None:
            publisher.enqueue_alert(alert)
        alerts.append({"alert_id": alert.alert_id, "frame": seen, "raised": raised,
                       "captured_at": alert.captured_at, "bbox": alert.bbox,
                       "subject_id": alert.subject_id, "score": alert.score,
                       "track": alert.track_id})


def _sections(
    overrides: dict[str, dict[str, Any]], decision: str | None, template_weight: str | None,
    template_min: int | None,
) -> tuple[Any, Any]:
    """``[quality]`` and ``[recognition]`` as edge.toml would give them with ``overrides``
    (the flags ``--decision``, ``--template-weight``, ``--template-min`` are recognition
    keys too). A bad key or value is one :class:`UsageError` line."""
    from pydantic import ValidationError

    from edge.service.config import QualitySettings, RecognitionSettings

    unknown = sorted(set(overrides) - {"quality", "recognition"})
    if unknown:
        raise UsageError(f"bench: --set covers [quality] and [recognition], not [{unknown[0]}]")
    rec = dict(overrides.get("recognition", {}))
    for key, value in (("decision", decision), ("template_weight", template_weight),
                       ("template_min_embeddings", template_min)):
        if value is not None:
            rec[key] = value
    built: list[Any] = []
    for name, cls, values in (("quality", QualitySettings, overrides.get("quality", {})),
                              ("recognition", RecognitionSettings, rec)):
        try:
            built.append(cls.model_validate(values))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) if first["loc"] else ""
            raise UsageError(f"bench: {name}.{where}: {first['msg']}") from None
    return built[0], built[1]


def run_bench(
    video: Path,
    *,
    models_dir: Path | None,
    precision: str = "int8",
    embedder: str = DEFAULT_EMBEDDER,
    subjects: Path | None = None,
    truth: Path | None = None,
    threshold: float | None = None,
    realtime: bool = False,
    max_frames: int | None = None,
    tiles: tuple[int, int] = (1, 1),
    detector: str | None = None,
    detector_input: tuple[int, int] | None = None,
    detect_size: tuple[int, int] | str | None = "default",
    decision: str | None = None,
    template_weight: str | None = None,
    template_min: int | None = None,
    flip: bool | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    live: bool = False,
    legacy: bool = False,
    queue_frames: int = 4,
    cooldown_s: float | None = None,
) -> dict[str, Any]:
    """Run the pipeline over ``video`` and return the figures (see the module doc).

    ``overrides`` sets keys of the ``[quality]`` and ``[recognition]`` sections (a policy
    variant, validated as edge.toml is: ``{"recognition": {"embeds_per_track": 6}}``);
    ``cooldown_s`` is ``[recognition] cooldown_s``. ``live``: through the daemon's threads,
    paced as a camera, with per-stage timings (:mod:`edge.evaluation.bench_live`;
    ``legacy`` measures the path before issue 20).
    """
    from edge.delivery.outbox import Outbox
    from edge.delivery.publish import BrokerSettings, Publisher, new_client
    from edge.dev.devbroker import ALERTS_CN, DevBroker
    from edge.recognition.match import Watchlist
    from edge.recognition.pipeline import STAGES, Recognizer
    from edge.recognition.track import IoUTracker
    from edge.service.sources import make_source
    from edge.service.startup import make_decider, make_gate
    from edge.vision.faces import FaceEngine
    from edge.watchlist.enrol import enrol

    if not video.exists():
        raise UsageError(f"video {video} does not exist")
    truth_obj = None
    if truth is not None:
        from edge.evaluation.stream import Truth

        truth_obj = Truth.load(truth)
        if subjects is None:
            raise UsageError("--truth needs --subjects (the watchlist the truth refers to)")

    from edge.service.config import DetectorSettings, SourceSettings

    defaults = DetectorSettings()  # the daemon's defaults
    engine = FaceEngine.from_models(
        models_dir, embedder=embedder, precision=precision,
        detector=detector or defaults.model,
        detector_input=detector_input or defaults.input_size, flip=flip,
    )
    # As the daemon: detect on a copy at the lores size (source.lores_size's default).
    lores = SourceSettings().lores_size if detect_size == "default" else detect_size
    family = engine.family
    overrides = dict(overrides or {})
    if cooldown_s is not None:
        overrides["recognition"] = {**overrides.get("recognition", {}), "cooldown_s": cooldown_s}
    sections = _sections(overrides, decision, template_weight, template_min)
    gate = make_gate(sections[0])
    watchlist: Watchlist | None = None
    enrol_failed: list[str] = []
    if subjects is not None:
        report = enrol(subjects, engine, gate, family.metric)
        enrol_failed = [sid for sid, _ in report.failed]
        if enrol_failed:  # as `edge watchlist build --skip-bad` would: listed, left out
            sys.stderr.write(f"bench: no usable image for {', '.join(enrol_failed)}; left out\n")
        if not report.subjects:
            raise UsageError(f"no subject in {subjects} could be enrolled")
        sha = engine.model_info["embedder_sha256"]
        watchlist = Watchlist(
            subject_ids=[s.subject_id for s in report.subjects],
            categories=[s.category for s in report.subjects],
            embeddings=report.embeddings,
            metric=family.metric,
            threshold=family.threshold if threshold is None else threshold,
            embedder_sha256=sha,
            reference_counts=[s.references for s in report.subjects],
        )
    rec = sections[1]
    decider = make_decider(rec)
    recognizer = Recognizer(
        engine, IoUTracker(), gate, decider, device_id=DEVICE_ID,
        min_score=defaults.score_threshold, min_face_px=defaults.min_face_px, tiles=tiles,
    )
    # Each track's best score per subject (numbers only, offline): the demo's passer-by.
    track_best: dict[int, tuple[float, str]] = {}

    def on_score(track: Any, match: Any) -> None:
        prev = track_best.get(track.track_id)
        if prev is None or match.score > prev[0]:
            track_best[track.track_id] = (float(match.score), match.subject_id)

    recognizer.on_score = on_score
    if watchlist is not None:
        recognizer.arm(watchlist, "BENCH")
    else:
        # No watchlist: measure detection/tracking/quality/embedding with an empty gallery
        # that can never match (every score is below an impossible threshold).
        dim = family.dim
        recognizer.arm(
            Watchlist(["none"], ["suspect"], np.zeros((1, dim), np.float32), family.metric,
                      threshold=1.0, embedder_sha256="0" * 64),
            "BENCH",
        )

    received = _Received()
    alerts: list[dict[str, Any]] = []
    stage_s: dict[str, list[float]] = {name: [] for name in ("read", *STAGES)}
    frame_s: list[float] = []
    counts = {"tracks": 0, "embeddings": 0, "max_embeddings_per_frame": 0}
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        broker = DevBroker(Path(tmp) / "broker")
        broker.start()
        dev, cr = broker.client(DEVICE_ID), broker.client(ALERTS_CN)
        from edge.evaluation.bench_live import LiveTimes, TimedOutbox, timed_outgoing

        outbox = (TimedOutbox if live else Outbox)(Path(tmp) / "outbox.sqlite", os.urandom(32))
        signing_key = None
        if live:  # as the daemon: every alert signed as it is published
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            signing_key = Ed25519PrivateKey.generate()
        publisher = Publisher(
            DEVICE_ID, BrokerSettings(broker.host, broker.port, broker.ca_cert, dev.cert, dev.key),
            outbox, drain_interval_s=0.05, signing_key=signing_key,
        )
        times = LiveTimes()
        published: dict[str, float] = {}
        if live:
            timed_outgoing(publisher, times)
        sub = new_client("bench-control-room",
                         BrokerSettings(broker.host, broker.port, broker.ca_cert, cr.cert, cr.key))

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            now = time.time()
            try:
                body = json.loads(msg.payload)
                alert_id = body["alert_id"]
                sent = parse_rfc3339(body["published_at"]) if live else None
            except (ValueError, KeyError, TypeError):
                return
            with received.lock:
                if sent is not None:
                    published.setdefault(alert_id, sent)
                received.at.setdefault(alert_id, now)
                if len(received.at) >= received.expected:
                    received.event.set()

        subscribed = threading.Event()
        sub.on_message = on_message
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.on_connect = lambda c, *a: c.subscribe(f"lfr/{DEVICE_ID}/alerts", qos=1)
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        publisher.start()
        try:
            if not (subscribed.wait(10) and publisher.wait_connected(10)):
                raise UsageError("the local broker did not accept the bench clients")
            source = make_source("file", video, loop=False, pace=realtime or live,
                                 detect_size=lores if isinstance(lores, tuple) else None)
            source.open()
            clip_fps = source.fps or 25.0
            total = None if max_frames is None else max_frames
            started = time.monotonic()
            frames = 0
            try:
                if live:
                    from edge.evaluation.bench_live import live_loop

                    def note(outcome: Any, index: int) -> None:
                        _collect(outcome, index, None, alerts)

                    frames = live_loop(source, recognizer, publisher, times, legacy=legacy,
                                       queue_frames=queue_frames, max_frames=max_frames,
                                       collect=note)
                while not live and (max_frames is None or frames < max_frames):
                    t0 = time.perf_counter()
                    frame = source.read()
                    t1 = time.perf_counter()
                    if frame is None:
                        break
                    # Media time, not wall time: cooldowns then mean what they mean live.
                    outcome = recognizer.process(frame, now=frame.index / clip_fps)
                    frame_s.append(time.perf_counter() - t0)
                    stage_s["read"].append(t1 - t0)
                    for name, secs in outcome.timings.items():
                        stage_s[name].append(secs)
                    counts["tracks"] += outcome.new_tracks
                    counts["embeddings"] += outcome.embedded
                    counts["max_embeddings_per_frame"] = max(
                        counts["max_embeddings_per_frame"], outcome.embedded)
                    _collect(outcome, frame.index, publisher, alerts)
                    frames += 1
                    _progress(frames, total, started)
                # The clip ends: tracks still live are decided as if they ended here.
                _collect(recognizer.finish(frames / clip_fps), frames, publisher, alerts)
            finally:
                source.close()
            elapsed = time.monotonic() - started
            sys.stderr.write("\n")
            with received.lock:
                received.expected = len(alerts)
                if len(received.at) >= received.expected:
                    received.event.set()
            delivered = received.event.wait(15.0)
        finally:
            publisher.stop(flush_timeout=2.0)
            sub.loop_stop()
            sub.disconnect()
            outbox.close()
            broker.stop()

    latencies = [received.at[a["alert_id"]] - a["captured_at"]
                 for a in alerts if a["alert_id"] in received.at
                 and (not live or a["alert_id"] in times.created)]  # not those of the end
    result: dict[str, Any] = {
        "video": str(video),
        "frames": frames,
        "seconds": round(elapsed, 3),
        "fps": round(frames / elapsed, 2) if elapsed > 0 else None,
        "realtime": realtime,
        "tiles": f"{tiles[0]}x{tiles[1]}",
        "decision": rec.decision,
        "template_weight": rec.template_weight,
        "template_min_embeddings": rec.template_min_embeddings,
        "overrides": overrides or {},
        "recognition": rec.model_dump(exclude={"threshold_floor"}),
        "models": engine.model_info,
        "precision": precision,
        "watchlist_size": len(watchlist) if watchlist is not None else 0,
        "enrol_failed": enrol_failed,
        "threshold": watchlist.threshold if watchlist is not None else None,
        "stage_ms": {name: percentiles(v) for name, v in stage_s.items()},
        "frame_ms": percentiles(frame_s),
        "alerts": len(alerts),
        "alert_list": [{k: a[k] for k in ("frame", "raised", "subject_id", "score")}
                       for a in alerts[:200]],
        "alerts_delivered": len(latencies),
        "all_delivered": delivered,
        "latency_ms": percentiles(latencies),
        "peak_rss_mb": peak_rss_mb(),
        **counts,
        "tracks_embedded": len(track_best),  # tracks with at least one embedding
        "tracks_best": [
            {"track": tid, "best_score": round(sc, 4), "subject_id": sid,
             "alerted": any(a["track"] == tid for a in alerts)}
            for tid, (sc, sid) in sorted(track_best.items())[:200]],
    }
    if live:
        from edge.evaluation.bench_live import live_report

        assert isinstance(outbox, TimedOutbox)
        ids = [a["alert_id"] for a in alerts if a["alert_id"] in times.created]
        result["live"] = {"legacy": legacy, "queue_frames": queue_frames if legacy else 1,
                          "alerts_per_minute": round(len(ids) / elapsed * 60, 1)
                          if elapsed > 0 else None,
                          **live_report(times, outbox, received.at, published, ids,
                                        {a["alert_id"]: a["captured_at"] for a in alerts})}
        result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    if truth_obj is not None:
        from edge.evaluation.stream import StreamAlert, score_alerts

        scored = score_alerts(
            truth_obj,
            [StreamAlert.from_xywh(a["frame"], a["bbox"], a["subject_id"], raised=a["raised"])
             for a in alerts],
            frames=frames,
        )
        result["accuracy"] = scored.to_dict()
    return result
