"""Issue 13 item 2: the window does not trust the wall clock alone.

An injected wall clock and an injected ``CLOCK_BOOTTIME``, and a restart (a new
:class:`DeploymentManager` on the same state directory, as the daemon does at boot).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import ClassVar

import pytest

from edge.cli import main
from edge.errors import AuditError
from edge.watchlist.audit import AuditLog, canonical, entry_hash, verify
from edge.watchlist.deployment import DeploymentManager
from edge.watchlist.signed_commands import CommandRefused, make_command
from tests.bundle_kit import EMBEDDER_SHA, NOW, Clock, make_bundle, make_kit

HOUR = 3600.0
T0 = NOW.timestamp()
END = T0 + 4 * HOUR  # the kit's window: NOW - 1 h .. NOW + 4 h


@pytest.fixture
def env(tmp_path: Path):
    class Env:
        kit = make_kit()
        state = tmp_path / "state"
        wall = Clock(T0)
        boot = Clock(1000.0)
        holds: ClassVar[list[tuple[str, bool]]] = []

        def manager(self) -> DeploymentManager:
            """A fresh manager on the same state: what a restart of the daemon builds."""
            audit = AuditLog(self.state / "audit.jsonl", clock=self.wall)
            return DeploymentManager(
                self.state, "van-01", self.kit.device, self.kit.trusted, threshold_floor=0.4,
                max_subjects=100, expected_embedder_sha256=EMBEDDER_SHA, audit=audit,
                clock=self.wall, boottime_clock=self.boot,
                set_legal_hold=lambda a, on: self.holds.append((a, on)) is None,
                deployment_keys_dir=tmp_path / "run",
            )  # fmt: skip

    e = Env()
    e.kit.install(tmp_path / "run")  # the deployment key in the device's RAM directory
    e.state.mkdir(parents=True)
    e.bundle = e.state / "watchlist.bundle"
    e.bundle.write_bytes(make_bundle(e.kit))
    return e


def _events(state: Path) -> list[dict]:
    return [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()]


def test_clock_set_back_while_armed_still_ends_on_boottime(env) -> None:
    m = env.manager()
    assert m.load(env.bundle).armed
    env.boot.t += 2 * HOUR
    env.wall.t = T0 - 24 * HOUR  # set back a day while armed
    assert m.tick() is None and m.armed  # two of the four hours left: still armed
    env.boot.t += 2 * HOUR  # the rest of the window has elapsed on CLOCK_BOOTTIME
    summary = m.tick()
    assert summary is not None and summary["end_reason"] == "window_elapsed_on_boottime"
    assert not m.armed and not env.bundle.exists()


def test_restart_on_a_clock_behind_does_not_rearm(env) -> None:
    m = env.manager()
    assert m.load(env.bundle).armed
    env.wall.t, env.boot.t = T0 + 2 * HOUR, env.boot.t + 2 * HOUR
    m.tick()
    m.close()  # power off; the unit boots with a clock two hours behind (no RTC)
    env.wall.t, env.boot.t = T0, 5.0
    m = env.manager()
    st = m.load(env.bundle)
    assert not st.armed and st.code == "clock_behind"
    assert "behind the latest time this device has seen" in st.line()
    assert env.bundle.exists()  # the window is not over by any clock: kept for later
    assert _events(env.state)[-1]["reason"] == "clock_behind"
    env.wall.t = T0 + 2 * HOUR + 30  # once the clock is right again, it arms
    assert m.load(env.bundle).armed


def test_a_unit_off_past_its_window_shreds_at_start_even_on_a_clock_behind(env) -> None:
    m = env.manager()
    assert m.load(env.bundle).armed
    m.close()
    m = env.manager()  # a restart with the clock past the window: shredded at load
    env.wall.t = END + 60
    m.time.observe(env.wall.t, persist=True)
    m = env.manager()
    env.wall.t = T0  # and the next boot's clock is behind again
    st = m.load(env.bundle)
    assert not st.armed and st.code == "window_ended"
    assert not env.bundle.exists()
    assert [e["event"] for e in _events(env.state)][-3:] == [
        "bundle_refused", "watchlist_shredded", "deployment_key_destroyed"]


def test_clock_before_the_bundle_was_created_does_not_arm(env) -> None:
    early = {"start": NOW - dt.timedelta(hours=5)}
    env.bundle.write_bytes(make_bundle(env.kit, spec_changes=early))
    env.wall.t = T0 - 3 * HOUR  # inside the window, but before created_at (NOW - 2 h)
    st = env.manager().load(env.bundle)
    assert not st.armed and st.code == "clock_behind"
    assert "before the bundle was created" in st.reason


def test_an_old_command_stays_refused_after_the_clock_is_set_back(env) -> None:
    m = env.manager()
    assert m.load(env.bundle).armed
    off = make_command(env.kit.signer, "legal_hold", "van-01", "D-2026-0042",
                       {"alert_ids": ["a-1"], "on": False}, issued_at=NOW)  # fmt: skip
    assert m.handle_command(off)["on"] is False
    env.wall.t, env.boot.t = T0 + 2 * HOUR, env.boot.t + 2 * HOUR  # later commands prune
    m.tick()  # expired nonces
    later = make_command(env.kit.signer, "legal_hold", "van-01", "D-2026-0042",
                         {"alert_ids": ["a-2"], "on": True},
                         issued_at=NOW + dt.timedelta(hours=2))  # fmt: skip
    m.handle_command(later)
    for restart in (False, True):  # the running daemon, then after a restart
        manager = env.manager() if restart else m
        env.wall.t = T0 + 600  # set back inside the old command's validity
        with pytest.raises(CommandRefused) as info:
            manager.handle_command(off)
        assert info.value.reason == "clock_behind"
    assert env.holds == [("a-1", False), ("a-2", True)]
    # Nonces are kept until the high-water mark (less the tolerance) passes their expiry.
    env.wall.t = T0 + 2 * HOUR
    with pytest.raises(CommandRefused) as info:
        env.manager().handle_command(later)
    assert info.value.reason == "replayed"


def test_audit_times_never_go_backwards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wall = Clock(T0)
    log = AuditLog(tmp_path / "audit.jsonl", clock=wall)
    log.append("armed", deployment_id="D-1")
    wall.t = T0 - HOUR  # clock set back
    log.append("disarmed", deployment_id="D-1")
    again = AuditLog(tmp_path / "audit.jsonl", clock=wall)  # and after a restart
    again.append("armed", deployment_id="D-2")
    ats = [json.loads(x)["at"] for x in log.path.read_text().splitlines()]
    assert ats == sorted(ats) and ats[0] == ats[1] == ats[2]
    assert verify(log.path) == 3
    assert main(["audit", "verify", str(log.path)]) == 0
    assert "times non-decreasing" in capsys.readouterr().out
    # A log rewritten with a time going back and every hash recomputed is refused.
    lines = [json.loads(x) for x in log.path.read_text().splitlines()]
    lines[1]["at"] = "2026-11-22T10:00:00.000Z"
    prev = lines[0]["hash"]
    for entry in lines[1:]:
        entry["prev_hash"] = prev
        entry["hash"] = prev = entry_hash(entry)
    log.path.write_bytes(b"".join(canonical(e) + b"\n" for e in lines))
    with pytest.raises(AuditError, match="time goes backwards"):
        verify(log.path)
    assert main(["audit", "verify", str(log.path)]) == 6
    assert "audit.jsonl:2: time goes backwards" in capsys.readouterr().err
    # The daemon still opens such a log (one from before this rule) and stamps on from
    # its latest time.
    wall.t = T0 - 2 * HOUR
    assert AuditLog(log.path, clock=wall).append("daemon_start")["at"] == ats[0]


def test_no_arming_until_the_clock_is_synchronised(env) -> None:
    synced = [False]
    m = env.manager()
    m.clock_synced = lambda: synced[0]  # the daemon passes timeguard.clock_synchronised
    st = m.load(env.bundle)
    assert not st.armed and st.code == "clock_not_synchronised"
    assert st.line().startswith("disarmed, refused (clock_not_synchronised): the system clock")
    assert m.tick() is None and not m.armed  # still waiting, nothing audited again
    refusals = [e for e in _events(env.state) if e["event"] == "bundle_refused"]
    assert len(refusals) == 1 and env.bundle.exists()
    synced[0] = True
    m.tick()
    assert m.armed and m.status.code == "armed"


def test_the_kernel_clock_state_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """adjtimex(2) answers here; where it is refused, timesyncd's flag file decides."""
    import ctypes

    from edge.watchlist import timeguard

    assert isinstance(timeguard.clock_synchronised(), bool)

    class Refused:
        def adjtimex(self, buf: object) -> int:
            return -1  # EPERM under ProtectClock=yes

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: Refused())
    flag = tmp_path / "synchronized"
    monkeypatch.setattr(timeguard, "TIMESYNCD_FLAG", flag)
    assert timeguard.clock_synchronised() is False
    flag.touch()
    assert timeguard.clock_synchronised() is True


def test_a_forward_jump_ends_the_deployment_is_audited_and_does_not_brick(env, tmp_path) -> None:
    """A clock set a month ahead while armed ends the deployment (the safe side), audited
    as a clock jump before the end; once the clock is set right, the next deployment arms
    (the mark never took the month)."""
    from edge.delivery.outbox import Outbox
    from edge.service.housekeeping import Housekeeping
    from edge.watchlist.keys import derive_key

    m = env.manager()
    box = Outbox(tmp_path / "outbox.sqlite", derive_key(b"k" * 32, "outbox"))
    Housekeeping(m.audit, box, m.time, env.kit.trusted, days=31, interval_s=3600,
                 sync_probe=lambda: None)  # the daemon's wiring  # fmt: skip
    assert m.load(env.bundle).armed
    env.wall.t, env.boot.t = env.wall.t + 30 * 24 * HOUR + 60, env.boot.t + 60
    summary = m.tick()
    assert summary is not None and summary["end_reason"] == "window_ended"
    names = [e["event"] for e in _events(env.state)]
    assert names.index("clock_jump") < names.index("disarmed")
    (jump,) = [e for e in _events(env.state) if e["event"] == "clock_jump"]
    assert jump["size_s"] == 30 * 24 * HOUR
    env.wall.t, env.boot.t = T0 + 600, env.boot.t + 540  # set right
    m.tick()
    assert not m.time.behind(env.wall.t)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    env.kit.deployment = X25519PrivateKey.generate()  # the next deployment's key
    env.kit.install(tmp_path / "run")
    nxt = {"deployment_id": "D-2026-0043", "sequence": 8}
    env.bundle.write_bytes(make_bundle(env.kit, spec_changes=nxt))
    st = m.load(env.bundle)
    assert st.armed, st.line()
    assert [e["event"] for e in _events(env.state)].count("clock_jump_corrected") == 1
    box.close()
