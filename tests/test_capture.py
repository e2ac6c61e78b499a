"""The capture thread: bounded queue, drops, end of stream, reopen with backoff, check-ins."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.service.capture import (
    END_OF_STREAM,
    CaptureStatus,
    CaptureThread,
    EndOfStream,
    FrameQueue,
)
from edge.service.sources.base import SourceError
from edge.service.sources.opencv_source import OpenCVSource
from edge.service.sources.picamera2_source import Picamera2Options, Picamera2Source
from edge.types import Frame
from tests.fakes import picamera2_stack
from tests.videos import frame_number, write_video

WAIT = 20.0  # generous upper bound for a condition to become true (never asserted on)


class Recorder:
    """Collects status callbacks and check-ins; lets a test wait for a condition."""

    def __init__(self) -> None:
        self.statuses: list[CaptureStatus] = []
        self.checkins = 0
        self._cond = threading.Condition()

    def on_status(self, status: CaptureStatus) -> None:
        with self._cond:
            self.statuses.append(status)
            self._cond.notify_all()

    def on_checkin(self) -> None:
        with self._cond:
            self.checkins += 1
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, WAIT), "condition not reached"

    def states(self) -> list[str]:
        with self._cond:
            return [s.state for s in self.statuses]


def _drain(capture: CaptureThread) -> list[Frame]:
    frames: list[Frame] = []
    for _ in range(10_000):
        item = capture.get(timeout=WAIT)
        assert item is not None, "capture stalled"
        if isinstance(item, EndOfStream):
            return frames
        frames.append(item)
    raise AssertionError("stream did not end")


def test_frame_queue_drops_oldest_and_keeps_the_end_marker() -> None:
    q = FrameQueue(2)
    frames = [Frame(index=i, captured_at=0.0, image=None) for i in range(5)]  # type: ignore[arg-type]
    assert [q.put(f) for f in frames] == [True, True, False, False, False]
    assert q.drops == 3 and len(q) == 2
    assert q.get(0) is frames[3]
    q.end()
    assert q.put(frames[0]) is True and len(q) == 1  # nothing accepted after the end
    assert q.get(0) is frames[4]
    assert q.get(0) is END_OF_STREAM
    assert q.get(0) is END_OF_STREAM  # sticky
    assert FrameQueue(1).get(timeout=0.01) is None
    with pytest.raises(ValueError):
        FrameQueue(0)


def test_file_streams_every_frame_then_ends(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.avi", frames=10)
    rec = Recorder()
    capture = CaptureThread(
        OpenCVSource(clip), maxsize=100, on_checkin=rec.on_checkin, on_status=rec.on_status
    )
    capture.start()
    frames = _drain(capture)
    assert capture.stop()
    assert [f.index for f in frames] == list(range(10))
    first = float(frames[0].image.mean())
    assert [frame_number(f.image, first) for f in frames] == list(range(10))
    status = capture.status
    assert (status.state, status.frames, status.drops, status.attempts) == ("ended", 10, 0, 0)
    assert rec.states()[0] == "opening" and rec.states()[-1] == "ended"
    assert rec.checkins >= 11  # every read, including the one that found the end
    assert not capture.source.is_open


def test_a_flat_file_keeps_every_frame_when_inference_lags(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.avi", frames=10)
    rec = Recorder()
    capture = CaptureThread(OpenCVSource(clip), maxsize=3, on_checkin=rec.on_checkin,
                            on_status=rec.on_status)  # fmt: skip
    assert capture.mode == "every"
    capture.start()
    rec.wait_for(lambda: len(capture.queue) == 3)  # nobody consumes: the capture waits
    checkins = rec.checkins
    rec.wait_for(lambda: rec.checkins > checkins)  # ... and keeps checking in meanwhile
    assert "ended" not in rec.states() and capture.status.frames == 4  # one in hand
    frames = _drain(capture)
    assert [f.index for f in frames] == list(range(10))  # every frame, in order
    assert capture.status.drops == 0


def test_a_realtime_source_hands_over_the_newest_frame_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    clip = write_video(tmp_path / "clip.avi", frames=10, fps=200.0)
    rec = Recorder()
    source = OpenCVSource(clip, pace=True)  # a file paced as a camera: realtime
    capture = CaptureThread(source, maxsize=4, on_status=rec.on_status)
    assert source.realtime and capture.mode == "latest" and capture.queue.maxsize == 1
    capture.start()
    rec.wait_for(lambda: "ended" in rec.states())  # nobody consumed anything meanwhile
    frames = _drain(capture)
    assert [f.index for f in frames] == [9]  # the newest, not a backlog
    assert capture.status.drops == 9 and capture.status.frames == 10


def test_the_latest_frame_slot_drops_the_old_frame_and_counts_it() -> None:
    q = FrameQueue(1)
    frames = [Frame(index=i, captured_at=0.0, image=None) for i in range(3)]  # type: ignore[arg-type]
    assert q.put(frames[0]) is True
    assert q.put(frames[1]) is False and q.put(frames[2]) is False
    assert q.drops == 2 and q.get(0) is frames[2] and q.get(0.01) is None


def test_waiting_for_room_ends_at_stop_without_queueing_or_dropping() -> None:
    q = FrameQueue(1)
    frames = [Frame(index=i, captured_at=0.0, image=None) for i in range(2)]  # type: ignore[arg-type]
    stop = threading.Event()
    assert q.put_wait(frames[0], stop)
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(q.put_wait(frames[1], stop, 0.01)))
    waiter.start()
    stop.set()
    waiter.join(WAIT)
    assert result == [False] and len(q) == 1 and q.drops == 0
    assert q.get(0) is frames[0]


def test_missing_source_is_retried_with_backoff_until_it_appears(tmp_path: Path) -> None:
    target = tmp_path / "late.avi"
    rec = Recorder()
    capture = CaptureThread(
        OpenCVSource(target),
        maxsize=100,
        on_checkin=rec.on_checkin,
        on_status=rec.on_status,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    capture.start()
    rec.wait_for(lambda: any(s.attempts >= 3 for s in rec.statuses))
    assert capture.running
    failing = [s for s in rec.statuses if s.state == "reopening"]
    assert [s.attempts for s in failing[:3]] == [1, 2, 3]
    assert all("no such file" in s.last_error for s in failing)
    assert [s.next_retry_s for s in failing[:3]] == [0.01, 0.02, 0.04]
    # The file appears (atomically): the same thread recovers and streams it.
    write_video(tmp_path / "staging.avi", frames=5)
    os.replace(tmp_path / "staging.avi", target)
    frames = _drain(capture)
    assert capture.stop()
    assert [f.index for f in frames] == list(range(5))
    ok = [s for s in rec.statuses if s.state == "ok"]
    assert ok and ok[0].attempts == 0
    assert capture.status.state == "ended"


def test_backoff_is_exponential_and_capped() -> None:
    capture = CaptureThread(OpenCVSource("unused.avi"), backoff_initial=0.5, backoff_max=30.0)
    assert [capture.backoff_delay(n) for n in range(1, 10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
        30.0,
    ]
    assert capture.backoff_delay(10_000) == 30.0
    with pytest.raises(ValueError):
        CaptureThread(OpenCVSource("x.avi"), backoff_initial=0)


def test_gives_up_after_max_attempts_and_ends_the_stream(tmp_path: Path) -> None:
    rec = Recorder()
    capture = CaptureThread(
        OpenCVSource(tmp_path / "never.avi"),
        on_status=rec.on_status,
        backoff_initial=0.01,
        backoff_max=0.01,
        max_attempts=3,
    )
    capture.start()
    assert _drain(capture) == []
    assert capture.stop()
    status = capture.status
    assert (status.state, status.attempts) == ("failed", 3)
    assert "no such file" in status.last_error


def test_checks_in_while_backing_off_and_stops_promptly(tmp_path: Path) -> None:
    rec = Recorder()
    capture = CaptureThread(
        OpenCVSource(tmp_path / "never.avi"),
        on_checkin=rec.on_checkin,
        on_status=rec.on_status,
        backoff_initial=60.0,  # one long backoff: only check-ins can happen meanwhile
        backoff_max=60.0,
        checkin_interval_s=0.01,
    )
    capture.start()
    rec.wait_for(lambda: rec.checkins >= 5)
    status = capture.status
    assert (status.state, status.attempts, status.next_retry_s) == ("reopening", 1, 60.0)
    assert capture.stop(timeout=WAIT)  # the stop event cuts the backoff short
    assert capture.status.state == "stopped"
    assert capture.get(timeout=0) is END_OF_STREAM


def test_stop_before_start_still_ends_the_stream(tmp_path: Path) -> None:
    capture = CaptureThread(OpenCVSource(tmp_path / "x.avi"))
    assert capture.stop()
    assert capture.get(timeout=None) is END_OF_STREAM
    assert capture.status.state == "stopped"


def test_stop_ends_a_looping_stream(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.avi", frames=4)
    source = OpenCVSource(clip, loop=True)
    capture = CaptureThread(source, maxsize=2)
    capture.start()
    first = capture.get(timeout=WAIT)
    assert isinstance(first, Frame)
    assert capture.stop(timeout=WAIT)
    assert not capture.running and not source.is_open
    _drain(capture)  # remaining frames, then the end marker
    assert capture.status.state == "stopped"


# -- picamera2's own code over the stand-in libcamera (tests/fakes/picamera2_stack.py) ------


@pytest.fixture()
def camera_rig() -> Iterator[Any]:
    picamera2_stack.load()
    sensor = picamera2_stack.sensor()
    yield sensor.reset("imx708")
    gc.collect()
    sensor.reset("imx708")


@pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning")
def test_lost_camera_is_reopened_and_frames_resume(camera_rig: Any) -> None:
    sensor = picamera2_stack.sensor()
    rec = Recorder()
    source = Picamera2Source(main_size=(320, 240), lores_size=(160, 120), timeout_s=0.3)
    capture = CaptureThread(
        source,
        maxsize=2,
        on_status=rec.on_status,
        backoff_initial=0.01,
        backoff_max=0.02,
    )
    capture.start()
    before = capture.get(timeout=WAIT)
    assert isinstance(before, Frame)
    sensor.unplug(0)  # the ribbon is pulled: frames stop, start() fails
    rec.wait_for(lambda: any(s.state == "reopening" and s.attempts >= 2 for s in rec.statuses))
    reopening = [s for s in rec.statuses if s.state == "reopening"]
    assert "lost: TimeoutError" in reopening[0].last_error  # the read timed out ...
    assert "Failed to start camera" in reopening[-1].last_error  # ... then the reopen failed
    sensor.plug(0)
    rec.wait_for(lambda: rec.statuses[-1].state == "ok")
    capture.queue.clear()  # "ok" is reported before the first new frame is queued
    after = capture.get(timeout=WAIT)
    assert capture.stop(timeout=WAIT)
    assert isinstance(after, Frame) and after.detect_image is not None
    assert after.index > before.index
    assert capture.status.reopens == 1
    assert sensor.camera(0).owner is None  # the thread closed the camera


class SimulatedHour(CaptureThread):
    """A capture thread whose backoff sleeps advance a simulated clock: an hour, no waiting."""

    def __init__(self, source: Picamera2Source, hours: float = 1.0) -> None:
        super().__init__(source, backoff_initial=0.5, backoff_max=30.0)
        self.simulated_s = 0.0
        self.limit_s = hours * 3600

    def _sleep(self, delay: float) -> None:
        self.simulated_s += delay
        if self.simulated_s >= self.limit_s:
            self.stop_event.set()


@pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning")
@pytest.mark.parametrize("fault", ["no camera", "busy"])
def test_an_hour_of_failed_opens_leaves_the_descriptor_count_flat(
    camera_rig: Any, fault: str
) -> None:
    sensor = picamera2_stack.sensor()
    if fault == "no camera":
        sensor.reset()
    else:
        sensor.hold(0)
    warm = Picamera2Source(lores_size=None, options=Picamera2Options(busy_limit=10**6))
    with pytest.raises(SourceError):
        warm.open()  # picamera2's camera manager opens its eventfd once
    gc.collect()
    before = picamera2_stack.open_fds()
    capture = SimulatedHour(Picamera2Source(options=Picamera2Options(busy_limit=10**6)))
    capture.start()
    capture._thread.join(120)
    assert not capture.running
    gc.collect()
    assert picamera2_stack.open_fds() == before
    assert capture.simulated_s >= 3600
    assert capture.status.attempts > 100  # an open every 30 s once the backoff is capped
    assert ("no such camera" if fault == "no camera" else "camera busy") in (
        capture.status.last_error
    )
