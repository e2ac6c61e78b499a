"""Issue 13 item 2, the rest: no purge on a clock below the high-water mark or a signed
bundle's ``created_at``; forward clock jumps audited and never purging what they gained;
a corrected jump does not brick the device; ``edge clock reset``.

The parts are the daemon's own (:class:`~edge.service.housekeeping.Housekeeping` over a
real encrypted :class:`~edge.delivery.outbox.Outbox`, a real hash-chained
:class:`~edge.watchlist.audit.AuditLog` and the :class:`~edge.watchlist.timeguard.TimeGuard`
on a state directory), with an injected wall clock, ``CLOCK_BOOTTIME`` and time-sync probe,
and a restart (new objects on the same state directory, as the daemon builds at boot).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from edge.delivery.outbox import Outbox
from edge.errors import UsageError
from edge.service.housekeeping import Housekeeping
from edge.watchlist.audit import AuditLog, verify
from edge.watchlist.keys import derive_key
from edge.watchlist.timeguard import CLOCK_FILE, TimeGuard, lock_state, unlock_state
from tests.bundle_kit import NOW, Clock, make_bundle, make_kit

DAY = 86400.0
HOUR = 3600.0
T0 = NOW.timestamp()
TOPIC = "lfr/van-01/alerts"


class Sync:
    """What :func:`edge.watchlist.timeguard.sync_token` answers: None while the clock is
    not synchronised, a token that changes with each new synchronisation."""

    def __init__(self) -> None:
        self.token: str | None = None

    def __call__(self) -> str | None:
        return self.token


class Device:
    """The daemon's housekeeping parts on one state directory; :meth:`start` is a boot."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.state.mkdir(parents=True)
        self.wall = Clock(T0)
        self.boot = Clock(50.0)
        self.sync = Sync()
        self.kit = make_kit()
        self.box: Outbox | None = None

    def start(self) -> Housekeeping:
        if self.box is not None:
            self.box.close()
        self.box = Outbox(self.state / "outbox.sqlite", derive_key(b"k" * 32, "outbox"))
        self.audit = AuditLog(self.state / "audit.jsonl", clock=self.wall)
        self.guard = TimeGuard(self.state, self.boot)
        return Housekeeping(self.audit, self.box, self.guard, self.kit.trusted, days=31,
                            interval_s=3600, sync_probe=self.sync)  # fmt: skip

    def advance(self, seconds: float) -> None:
        """Real time passes: both clocks move."""
        self.wall.t += seconds
        self.boot.t += seconds

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = (self.state / "audit.jsonl").read_text().splitlines()
        entries = [json.loads(x) for x in lines]
        return [e for e in entries if name is None or e["event"] == name]

    def alive(self, msg_id: str) -> bool:
        assert self.box is not None
        return self.box.get(msg_id) is not None


@pytest.fixture
def dev(tmp_path: Path):
    d = Device(tmp_path)
    yield d
    if d.box is not None:
        d.box.close()


def test_no_purge_on_a_clock_behind_the_high_water_mark(dev: Device) -> None:
    hk = dev.start()
    hk.guard.observe(dev.wall.t)
    assert dev.box is not None
    dev.box.put("alert-old", TOPIC, b"{}", now=T0 - 40 * DAY)  # from a clock once far ahead
    dev.box.put("alert-new", TOPIC, b"{}", now=T0)
    dev.advance(2 * HOUR)
    hk.guard.observe(dev.wall.t, persist=True)
    # Power off; the unit boots with the clock a day behind (fake-hwclock, no RTC).
    dev.wall.t, dev.boot.t = T0 - DAY, 5.0
    hk = dev.start()
    assert hk.purge(dev.wall.t, force=True) is None  # the daemon's purge at start: held
    for _ in range(3):  # the main loop keeps asking; audited once
        dev.advance(HOUR)
        assert hk.purge(dev.wall.t) is None
    assert dev.alive("alert-old") and dev.alive("alert-new")
    (held,) = dev.events("purge_held")
    assert held["reason"] == "clock_behind" and held["store"] == "outbox"
    assert dev.events("purge") == []
    note = hk.note()
    assert note is not None and note.startswith("purges held: the clock")
    assert "behind the latest time this device has seen" in note
    # NTP sets the clock right (the real time: the mark, the time off, three hours):
    # purges run again, audited as before.
    dev.sync.token = "kernel:0"
    dev.wall.t = T0 + 2 * HOUR + 600 + 3 * HOUR
    assert hk.purge(dev.wall.t) == 1
    assert not dev.alive("alert-old") and dev.alive("alert-new")
    assert hk.note() is None
    assert [e["event"] for e in dev.events()][-2:] == ["clock_jump", "purge"]
    assert dev.events("clock_jump")[0]["confirmed_by_sync"] is True
    assert verify(dev.audit.path) == len(dev.events())


def test_no_purge_on_a_clock_before_a_signed_bundles_creation(dev: Device) -> None:
    hk = dev.start()
    bundle = dev.state / "watchlist.bundle"
    bundle.write_bytes(make_bundle(dev.kit))  # created_at = NOW - 2 h
    dev.wall.t = T0 - 30 * DAY  # a fresh device (no mark yet) whose clock is a month behind
    hk.note_bundle(bundle)  # what the daemon does before each load
    assert hk.purge(dev.wall.t, force=True) is None
    (held,) = dev.events("purge_held")
    assert held["reason"] == "clock_before_bundle"
    assert "before a signed bundle was created" in (hk.note() or "")
    later = {"deployment_id": "D-2026-0099", "sequence": 9}
    staged = dev.state / "watchlist.bundle.new"  # delivered beside it: its time counts too
    staged.write_bytes(make_bundle(dev.kit, spec_changes=later))
    bundle.unlink()
    dev.guard.signed_floor = 0.0
    hk.note_bundle(bundle)
    assert dev.guard.signed_floor == (NOW.timestamp() - 2 * HOUR)
    forged = dev.state / "forged.bundle"  # an unsigned time is no floor
    forged.write_bytes(make_bundle(dev.kit, signer=make_kit().signer))
    fresh = Device(dev.state.parent / "other")
    hk2 = fresh.start()
    fresh.wall.t = T0 - 30 * DAY
    hk2.note_bundle(forged)
    assert hk2.purge(fresh.wall.t, force=True) == 0
    assert fresh.box is not None
    fresh.box.close()


def test_a_forward_jump_is_audited_and_purges_nothing_it_gained(dev: Device) -> None:
    hk = dev.start()
    assert dev.box is not None
    dev.box.put("alert-1", TOPIC, b"{}", now=T0)  # undelivered: the broker is unreachable
    dev.box.put("summary-1", "lfr/van-01/deployment", b"{}", now=T0)
    assert hk.purge(dev.wall.t, force=True) == 0
    dev.advance(60)
    dev.wall.t += 40 * DAY  # set ahead by hand (or a bad NTP answer): 40 days in a second
    assert hk.purge(dev.wall.t, force=True) == 0
    assert dev.alive("alert-1") and dev.alive("summary-1")
    (jump,) = dev.events("clock_jump")
    assert jump["direction"] == "forward" and jump["size_s"] == pytest.approx(40 * DAY, abs=1)
    assert jump["synchronised"] is False
    purge = dev.events("purge")[-1]
    assert purge["judged_at"] < jump["clock"]  # judged on the mark, not the jumped clock
    assert "jumped 3456000 s forward" in (hk.note() or "")
    # A restart does not take the jumped clock as the time the unit was off.
    dev.advance(HOUR)
    hk = dev.start()
    assert hk.purge(dev.wall.t, force=True) == 0 and dev.alive("alert-1")
    assert "not confirmed by time sync" in (hk.note() or "")
    # Retention still runs on the time that really elapses (CLOCK_BOOTTIME).
    for _ in range(32):
        dev.advance(DAY)
        hk.purge(dev.wall.t)
    assert not dev.alive("alert-1") and not dev.alive("summary-1")
    assert len(dev.events("clock_jump")) == 1
    assert verify(dev.audit.path) == len(dev.events())


def test_a_jump_confirmed_by_time_sync_counts(dev: Device) -> None:
    hk = dev.start()
    assert dev.box is not None
    dev.box.put("alert-1", TOPIC, b"{}", now=T0)
    dev.sync.token = "timesyncd:1"
    hk.purge(dev.wall.t, force=True)
    dev.advance(1)
    dev.wall.t += 40 * DAY  # the kernel clock is stepped ...
    hk.purge(dev.wall.t, force=True)
    assert dev.alive("alert-1") and dev.events("clock_jump")[0]["synchronised"] is True
    dev.advance(64)  # ... and NTP's next answer agrees with it
    dev.sync.token = "timesyncd:2"
    assert hk.purge(dev.wall.t, force=True) == 1
    (confirmed,) = dev.events("clock_jump_confirmed")
    assert confirmed["mark_raised_s"] == pytest.approx(40 * DAY, abs=1)
    assert hk.note() is None and hk.guard.hwm == dev.wall.t


def test_a_corrected_jump_leaves_the_device_usable(dev: Device) -> None:
    """A clock set a year ahead and then set right: the mark never took the year, so the
    device is not behind it (it would refuse to arm or take a command for a year)."""
    hk = dev.start()
    hk.purge(dev.wall.t, force=True)
    dev.advance(1)
    dev.wall.t += 365 * DAY
    hk.purge(dev.wall.t, force=True)
    assert hk.guard.effective(dev.wall.t) >= T0 + 365 * DAY  # a window ends (the safe side)
    dev.advance(HOUR)
    hk = dev.start()  # a restart in between
    dev.advance(HOUR)
    dev.wall.t -= 365 * DAY  # set right
    hk.purge(dev.wall.t)
    assert not hk.guard.behind(dev.wall.t)
    assert abs(hk.guard.hwm - dev.wall.t) < 5  # the mark is the real time
    (fixed,) = dev.events("clock_jump_corrected")
    assert fixed["size_s"] == pytest.approx(365 * DAY, abs=2)
    assert hk.note() is None
    again = TimeGuard(dev.state, dev.boot)  # and it is persisted
    assert again.jump is None and not again.behind(dev.wall.t)


def test_a_clock_set_back_then_right_again_is_no_jump(dev: Device) -> None:
    hk = dev.start()
    hk.purge(dev.wall.t, force=True)
    dev.advance(1)
    dev.wall.t -= DAY
    assert hk.purge(dev.wall.t) is None  # held: behind
    dev.advance(1)
    dev.wall.t += DAY
    assert hk.purge(dev.wall.t, force=True) == 0
    assert dev.events("clock_jump") == [] and hk.guard.jump is None


def test_edge_clock_reset_is_the_technicians_one_command(
    dev: Device, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mark that is wrong (a clock set a year ahead while the unit was off, taken at
    start): after the clock is set right, ``edge clock reset`` (daemon stopped) is all it
    takes; the daemon audits it at its next start. Refused while a daemon runs."""
    import time

    config = tmp_path / "edge.toml"
    config.write_text(
        f'[device]\nid = "van-01"\nstate_dir = "{dev.state}"\n'
        '[mqtt]\nhost = "127.0.0.1"\ntls = false\n'
    )
    now = time.time()
    ahead = TimeGuard(dev.state)
    ahead.observe(now + 365 * DAY, persist=True)  # the mark a year ahead
    assert TimeGuard(dev.state).behind(now)
    assert main(["clock", "show", "--config", str(config)]) == 0
    assert "the clock is behind it" in capsys.readouterr().out
    fd = lock_state(dev.state)  # a running daemon holds the state directory
    try:
        assert main(["clock", "reset", "--config", str(config)]) != 0
        assert "an edge daemon is running" in capsys.readouterr().err
        with pytest.raises(UsageError):
            lock_state(dev.state)
    finally:
        unlock_state(fd)
    if os.geteuid() == 0:  # a technician's root shell: the files stay the daemon user's
        os.chown(dev.state, 65534, 65534)
    assert main(["clock", "reset", "--config", str(config)]) == 0
    assert "mark reset from" in capsys.readouterr().out
    if os.geteuid() == 0:
        for name in (CLOCK_FILE, "daemon.lock"):
            assert (dev.state / name).stat().st_uid == 65534, name
    assert not TimeGuard(dev.state).behind(time.time())
    record = json.loads((dev.state / CLOCK_FILE).read_text())
    assert record["reset_from"] == pytest.approx(now + 365 * DAY)
    dev.wall.t = time.time()
    dev.start()  # the next daemon start audits the reset, once
    (entry,) = dev.events("clock_mark_reset")
    assert entry["previous_mark"] > entry["mark"]
    dev.start()
    assert len(dev.events("clock_mark_reset")) == 1
    monkeypatch.setenv("EDGE_CONFIG", str(config))
    assert main(["clock", "show"]) == 0
    assert "none pending" in capsys.readouterr().out
