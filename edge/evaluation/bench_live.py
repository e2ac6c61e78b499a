"""``edge bench --live``: the clip paced as a live camera, through the daemon's threads.

The plain bench runs the pipeline in one loop; live, the parts are the daemon's: a
:class:`~edge.service.capture.CaptureThread` on the clip paced at its frame rate (a
realtime source: the latest-frame slot), the :class:`~edge.recognition.pipeline.Recognizer`
on the main thread, the :class:`~edge.delivery.alert_worker.AlertWorker` storing alerts in
the encrypted outbox, the :class:`~edge.delivery.publish.Publisher` signing and publishing
them (mutual TLS, QoS 1) and a control-room subscriber. Each alert is timed at every
hand-over, so the report says where the milliseconds between a frame's capture and the
control room go (issue 20):

============  =====================================================================
frame stages   ``wait`` (captured -> taken by inference), ``detect`` ... ``decide``,
               ``process`` (all stages), ``captured_to_done``; ``alert_frame_*``: the
               same for the frames that raised an alert
alert stages   ``created`` (captured -> record built, its frame processed),
               ``queued`` (created -> the worker took it), ``build`` (JSON),
               ``commit`` (outbox encrypt + commit of its batch), ``committed``
               (captured -> durable), ``to_publish`` (committed -> handed to paho,
               ``published_at``), ``sign``, ``puback`` (published -> PUBACK),
               ``received`` (published -> the subscriber), ``captured_to_received``
============  =====================================================================

``legacy=True`` measures the path before issue 20 on the same machine and load: a
queue of ``queue_frames`` frames that drops the oldest, and alerts stored one by one on
the inference thread (``Publisher.enqueue_alert``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.delivery.outbox import Outbox
from edge.types import AlertRecord


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p95 of seconds, in ms (as :func:`edge.evaluation.bench.percentiles`; not
    imported from it, which imports this module)."""
    import numpy as np

    if not values:
        return {"p50": None, "p95": None}
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return {"p50": round(float(np.percentile(arr, 50)), 3),
            "p95": round(float(np.percentile(arr, 95)), 3)}


class TimedOutbox(Outbox):
    """The outbox, noting when each message was stored and acknowledged (bench only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stored_at: dict[str, float] = {}
        self.acked_at: dict[str, float] = {}

    def put(self, msg_id: str, topic: str, payload: bytes, retain: bool = False, *,
            now: float | None = None, reserved: bool = False) -> bool:
        added = super().put(msg_id, topic, payload, retain, now=now, reserved=reserved)
        self.stored_at.setdefault(msg_id, time.time())
        return added

    def put_many(self, items: Any, *, now: float | None = None) -> list[bool]:
        added = super().put_many(items, now=now)
        at = time.time()
        for item in items:
            self.stored_at.setdefault(item[0], at)
        return added

    def ack(self, msg_id: str) -> bool:
        at = time.time()
        done = super().ack(msg_id)
        self.acked_at.setdefault(msg_id, at)
        return done

    def ack_many(self, msg_ids: Any) -> int:
        at = time.time()
        done: int = super().ack_many(msg_ids)
        for msg_id in msg_ids:
            self.acked_at.setdefault(msg_id, at)
        return done


@dataclass(slots=True)
class LiveTimes:
    """Timestamps (``time.time()``) and durations (seconds) gathered during a live run."""

    frame: dict[str, list[float]] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)  # alert id -> record built
    taken: dict[str, float] = field(default_factory=dict)  # alert id -> worker took it
    build: dict[str, float] = field(default_factory=dict)  # alert id -> JSON seconds
    commit: dict[str, float] = field(default_factory=dict)  # alert id -> batch store seconds
    sign: list[float] = field(default_factory=list)
    first_captured: float | None = None  # the first frame's capture time
    drops: int = 0
    inference_waits: int = 0  # submits that waited for a full alert queue

    def add(self, name: str, value: float) -> None:
        self.frame.setdefault(name, []).append(value)


def timed_outgoing(publisher: Any, times: LiveTimes) -> None:
    """Wrap the publisher's stamp-and-sign step to time it (bench only)."""
    state = publisher.state
    inner: Callable[[str, bytes, float], bytes] = state.outgoing

    def outgoing(topic: str, payload: bytes, first: float) -> bytes:
        t0 = time.perf_counter()
        out = inner(topic, payload, first)
        times.sign.append(time.perf_counter() - t0)
        return out

    state.outgoing = outgoing


def live_loop(
    source: Any,
    recognizer: Any,
    publisher: Any,
    times: LiveTimes,
    *,
    legacy: bool,
    queue_frames: int,
    max_frames: int | None,
    collect: Callable[[Any, int], None],
) -> int:
    """Run the clip through capture thread -> recognizer -> alerts; returns frames processed.

    ``collect(outcome, frame_index)`` notes each outcome's alerts for the accuracy
    figures (it must not store them: this loop does).
    """
    from edge.delivery.alert_worker import AlertWorker
    from edge.service.capture import CaptureThread, EndOfStream, FrameQueue

    capture = CaptureThread(source, mode="latest")
    if legacy:
        capture.queue = FrameQueue(queue_frames)  # before issue 20: a queue dropping the oldest

    def on_stored(batch: list[AlertRecord], build_s: float, commit_s: float) -> None:
        now = time.time()
        for alert in batch:
            times.taken.setdefault(alert.alert_id, now - build_s - commit_s)
            times.build[alert.alert_id] = build_s / len(batch)
            times.commit[alert.alert_id] = commit_s

    worker = None if legacy else AlertWorker(publisher, on_stored=on_stored)
    if worker is not None:
        worker.start()
    frames = 0
    capture.start()
    try:
        while max_frames is None or frames < max_frames:
            item = capture.get(timeout=1.0)
            if item is None:
                continue
            if isinstance(item, EndOfStream):
                break
            taken = time.time()
            if times.first_captured is None:
                times.first_captured = item.captured_at
            times.add("wait", taken - item.captured_at)
            t0 = time.perf_counter()
            outcome = recognizer.process(item)
            times.add("process", time.perf_counter() - t0)
            for name, secs in outcome.timings.items():
                times.add(name, secs)
            done = time.time()
            times.add("captured_to_done", done - item.captured_at)
            if outcome.alerts:  # where an alert's own frame spends its time
                times.add("alert_frame_wait", taken - item.captured_at)
                for name in ("detect", "quality", "embed"):
                    times.add(f"alert_frame_{name}", outcome.timings.get(name, 0.0))
                times.add("alert_frame_process", done - taken)
            for alert in outcome.alerts:
                times.created[alert.alert_id] = done
            if worker is not None:
                worker.submit(outcome.alerts)
            else:
                for alert in outcome.alerts:
                    t1 = time.perf_counter()
                    times.taken[alert.alert_id] = time.time()
                    publisher.enqueue_alert(alert)
                    times.commit[alert.alert_id] = time.perf_counter() - t1
            collect(outcome, item.index)
            frames += 1
            del outcome, item
    finally:
        capture.stop()
        if worker is not None:
            worker.stop()
            times.inference_waits = worker.waits
        times.drops = capture.status.drops
    return frames


def live_report(times: LiveTimes, outbox: TimedOutbox, received: dict[str, float],
                published: dict[str, float], alert_ids: list[str],
                captured: dict[str, float], warmup_s: float = 5.0) -> dict[str, Any]:
    """Per-stage p50/p95 in ms (see the module doc) from a live run's timestamps;
    ``steady_captured_to_received`` leaves out alerts captured in the first ``warmup_s``
    seconds (the first frames' faces are all new: every one is embedded at once)."""
    frame = {name: percentiles(v) for name, v in times.frame.items()}
    stages: dict[str, list[float]] = {k: [] for k in (
        "created", "queued", "build", "commit", "committed", "to_publish", "sign", "puback",
        "received", "captured_to_received")}
    for aid in alert_ids:
        cap = captured[aid]
        if aid in times.created:
            stages["created"].append(times.created[aid] - cap)
            if aid in times.taken:
                stages["queued"].append(times.taken[aid] - times.created[aid])
        if aid in times.build:
            stages["build"].append(times.build[aid])
        if aid in times.commit:
            stages["commit"].append(times.commit[aid])
        stored = outbox.stored_at.get(aid)
        if stored is not None:
            stages["committed"].append(stored - cap)
        pub = published.get(aid)
        if pub is not None and stored is not None:
            stages["to_publish"].append(pub - stored)
        if pub is not None and aid in outbox.acked_at:
            stages["puback"].append(outbox.acked_at[aid] - pub)
        if pub is not None and aid in received:
            stages["received"].append(received[aid] - pub)
        if aid in received:
            stages["captured_to_received"].append(received[aid] - cap)
    stages["sign"] = list(times.sign)
    start = (times.first_captured or 0.0) + warmup_s
    stages["steady_captured_to_received"] = [
        received[aid] - captured[aid] for aid in alert_ids
        if aid in received and captured[aid] >= start]
    return {"frame_ms": frame,
            "alert_ms": {k: percentiles(v) for k, v in stages.items()},
            # Each alert's capture -> control room, in ms (numbers only), to pool runs.
            "captured_to_received_each_ms": [round(v * 1000, 1)
                                             for v in stages["captured_to_received"]],
            "frames_dropped": times.drops,
            "inference_waited_for_alert_queue": times.inference_waits}
