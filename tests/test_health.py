"""edge.service.health: loop check-ins gate the systemd watchdog. Real threads, a real AF_UNIX
datagram socket as systemd's notify socket; stalls are made with a fake clock and observed
through the pinger's tick count, never through sleeps."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.service.health import HealthMonitor, WatchdogPinger
from edge.service.sdnotify import SystemdNotifier
from tests.fixtures.notify import NotifySocket, path_socket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def receiver() -> Iterator[NotifySocket]:
    yield from path_socket("hlt")


def notifier_for(receiver: NotifySocket, watchdog_usec: int | None = None) -> SystemdNotifier:
    env = {"NOTIFY_SOCKET": receiver.address}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return SystemdNotifier(env)


# --- HealthMonitor -----------------------------------------------------------------------------


def test_monitor_with_fake_clock() -> None:
    clock = FakeClock()
    monitor = HealthMonitor(clock)
    assert monitor.healthy() and monitor.stale() == []  # nothing registered
    monitor.register("capture", 5.0)
    monitor.register("inference", 10.0)
    assert monitor.healthy()
    clock.advance(5.0)
    assert monitor.stale() == []  # exactly max age is still fresh
    clock.advance(0.5)
    assert monitor.stale() == ["capture"]
    assert not monitor.healthy()
    monitor.checkin("capture")
    assert monitor.healthy()
    clock.advance(10.1)
    assert monitor.stale() == ["capture", "inference"]
    assert monitor.ages() == {"capture": pytest.approx(10.1), "inference": pytest.approx(15.6)}
    assert monitor.stale(now=clock() - 10.0) == []  # an explicit time is honoured
    monitor.unregister("inference")
    monitor.unregister("inference")  # twice is fine
    assert monitor.stale() == ["capture"]


def test_monitor_rejects_unknown_loop_and_bad_age() -> None:
    monitor = HealthMonitor(FakeClock())
    with pytest.raises(KeyError):
        monitor.checkin("nobody")
    with pytest.raises(ValueError, match="positive"):
        monitor.register("capture", 0)


def test_monitor_checkins_from_many_threads() -> None:
    clock = FakeClock()
    monitor = HealthMonitor(clock)
    names = [f"loop{i}" for i in range(8)]
    for name in names:
        monitor.register(name, 1.0)
    clock.advance(2.0)
    assert monitor.stale() == names

    def work(name: str) -> None:
        for _ in range(1000):
            monitor.checkin(name)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert monitor.healthy()


# --- WatchdogPinger, one tick at a time --------------------------------------------------------


def test_tick_pings_only_while_healthy_and_logs_a_stall_once(
    receiver: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    monitor = HealthMonitor(clock)
    monitor.register("capture", 5.0)
    monitor.register("publisher", 5.0)
    pinger = WatchdogPinger(monitor, notifier_for(receiver), interval_s=1.0)
    with caplog.at_level(logging.WARNING, logger="edge.service.health"):
        assert pinger.tick() is True
        assert receiver.recv() == "WATCHDOG=1"
        clock.advance(6.0)
        monitor.checkin("publisher")  # capture stays silent
        for _ in range(5):
            assert pinger.tick() is False
        assert receiver.pending() == []
        assert pinger.stalled == ["capture"]
        stall_logs = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(stall_logs) == 1
        assert "capture (6.0 s)" in stall_logs[0].getMessage()
        assert "publisher" not in stall_logs[0].getMessage()
        monitor.checkin("capture")
        assert pinger.tick() is True
        assert receiver.recv() == "WATCHDOG=1"
        assert pinger.stalled == []
        recovered = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(recovered) == 1
    assert pinger.ticks == 7
    assert pinger.pings == 2


def test_interval_from_watchdog_usec(receiver: NotifySocket) -> None:
    monitor = HealthMonitor()
    pinger = WatchdogPinger(monitor, notifier_for(receiver, watchdog_usec=3_000_000))
    assert pinger.enabled
    assert pinger.interval_s == 1.5


def test_no_watchdog_no_thread(receiver: NotifySocket) -> None:
    pinger = WatchdogPinger(HealthMonitor(), notifier_for(receiver))
    assert not pinger.enabled
    pinger.start()
    pinger.join(timeout=10)
    assert not pinger.is_alive()
    assert pinger.ticks == 0
    assert receiver.pending() == []


# --- WatchdogPinger as a thread, with real loop threads ----------------------------------------


class Loop(threading.Thread):
    """A stand-in for a daemon loop: checks in until paused or stopped."""

    def __init__(self, monitor: HealthMonitor, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.monitor = monitor
        self.loop_name = name
        self.running = threading.Event()
        self.running.set()
        self.paused = threading.Event()  # set once it has seen `running` cleared
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if self.running.is_set():
                self.paused.clear()
                self.monitor.checkin(self.loop_name)
            else:
                self.paused.set()
            self.done.wait(0.002)

    def pause(self) -> None:
        self.running.clear()
        assert self.paused.wait(timeout=10)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


def test_pings_arrive_while_real_loops_check_in(receiver: NotifySocket) -> None:
    monitor = HealthMonitor()  # the real monotonic clock; generous max age
    loops = [Loop(monitor, n) for n in ("capture", "inference", "publisher")]
    for loop in loops:
        monitor.register(loop.loop_name, 60.0)
        loop.start()
    # WATCHDOG_USEC=20 ms -> a ping every 10 ms
    pinger = WatchdogPinger(monitor, notifier_for(receiver, watchdog_usec=20_000))
    pinger.start()
    try:
        assert [receiver.recv() for _ in range(5)] == ["WATCHDOG=1"] * 5
    finally:
        pinger.stop()
        for loop in loops:
            loop.stop()
    assert not pinger.is_alive()


def test_pings_stop_when_a_loop_stalls_and_resume_when_it_recovers(
    receiver: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    monitor = HealthMonitor(clock)
    loops = {n: Loop(monitor, n) for n in ("capture", "inference", "publisher")}
    for loop in loops.values():
        # Only inference can go stale when the clock jumps: the others' check-ins cannot
        # race the jump.
        monitor.register(loop.loop_name, 5.0 if loop.loop_name == "inference" else 1e6)
        loop.start()
    pinger = WatchdogPinger(monitor, notifier_for(receiver), interval_s=0.005)
    caplog.set_level(logging.WARNING, logger="edge.service.health")
    pinger.start()
    try:
        assert [receiver.recv() for _ in range(3)] == ["WATCHDOG=1"] * 3

        # Inference stalls: it stops checking in, and time moves past its max age while
        # the other loops keep checking in.
        loops["inference"].pause()
        clock.advance(10.0)
        # Every tick that *starts* after this point sees the stall: wait until two more
        # ticks have completed, then nothing new may arrive over many further ticks.
        assert pinger.wait_ticks(pinger.ticks + 2, timeout=30)
        receiver.pending()
        pings_before = pinger.pings
        assert pinger.wait_ticks(pinger.ticks + 20, timeout=30)
        assert receiver.pending() == []
        assert pinger.pings == pings_before
        assert pinger.stalled == ["inference"]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1  # once, however many ticks
        assert "inference" in errors[0].getMessage()
        assert "capture" not in errors[0].getMessage()

        # It recovers: pings resume.
        loops["inference"].running.set()
        assert receiver.recv() == "WATCHDOG=1"
    finally:
        pinger.stop()
        for loop in loops.values():
            loop.stop()
    assert not pinger.is_alive()


def test_stop_ends_the_thread_promptly(receiver: NotifySocket) -> None:
    monitor = HealthMonitor()
    # A long interval: stop() must not wait for it.
    pinger = WatchdogPinger(monitor, notifier_for(receiver), interval_s=3600.0)
    pinger.start()
    assert receiver.recv() == "WATCHDOG=1"  # the first tick is immediate
    pinger.stop(timeout=30)
    assert not pinger.is_alive()


def test_socket_path_of_notifier_is_used(receiver: NotifySocket) -> None:
    # Guard against a notifier silently disabled (every other test would then see no pings
    # for the wrong reason).
    assert notifier_for(receiver).enabled
    assert Path(receiver.address).is_socket()
