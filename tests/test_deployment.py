"""The arming state machine: arm only on a valid bundle in its window; end = wipe + shred."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import UsageError
from edge.watchlist.adjudication import AdjudicationRefused, sign_adjudication
from edge.watchlist.audit import AuditLog, verify
from edge.watchlist.deployment import DeploymentManager, shred_file
from edge.watchlist.signed_commands import CommandRefused, make_command
from tests.bundle_kit import EMBEDDER_SHA, NOW, Clock, embeddings, make_bundle, make_kit

START = NOW - dt.timedelta(hours=1)
END = NOW + dt.timedelta(hours=4)


@pytest.fixture
def env(tmp_path: Path):
    kit = make_kit()
    state = tmp_path / "state"
    clock = Clock(NOW.timestamp())
    audit = AuditLog(state / "audit.jsonl", clock=clock)
    holds: list[tuple[str, bool]] = []
    summaries: list[dict] = []
    run = kit.install(tmp_path / "run" / "deployment-keys")  # the device's RAM directory

    def hold(msg_id: str, on: bool) -> bool:
        holds.append((msg_id, on))
        return msg_id != "unknown-alert"

    def manager() -> DeploymentManager:
        return DeploymentManager(
            state, "van-01", kit.device, kit.trusted, threshold_floor=0.4, max_subjects=100,
            expected_embedder_sha256=EMBEDDER_SHA, audit=audit, clock=clock,
            on_summary=summaries.append, set_legal_hold=hold, deployment_keys_dir=run,
        )

    class Env:
        pass

    e = Env()
    e.kit, e.state, e.clock, e.audit = kit, state, clock, audit
    e.holds, e.summaries = holds, summaries
    e.manager = manager
    e.bundle_path = state / "watchlist.bundle"
    e.run = run
    state.mkdir(parents=True, exist_ok=True)
    return e


def _events(audit: AuditLog) -> list[dict]:
    return [json.loads(x) for x in audit.path.read_text().splitlines()]


def _all_state_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file())


def test_no_bundle_means_disarmed(env) -> None:
    m = env.manager()
    st = m.load(env.bundle_path)
    assert not st.armed and st.code == "no_bundle" and m.watchlist is None
    assert "no watchlist bundle" in st.line()


def test_valid_bundle_arms_and_is_audited(env) -> None:
    emb = embeddings(5)
    env.bundle_path.write_bytes(make_bundle(env.kit, emb=emb))
    m = env.manager()
    st = m.load(env.bundle_path)
    assert st.armed and st.code == "armed" and st.deployment_id == "D-2026-0042"
    wl = m.watchlist
    assert wl is not None
    assert list(wl.subject_ids) == [f"S-{i:04d}" for i in range(5)]
    np.testing.assert_allclose(np.asarray(wl.embeddings), emb, atol=1e-6)
    assert m.threshold == pytest.approx(0.45)
    events = [e["event"] for e in _events(env.audit)]
    assert events == ["watchlist_loaded", "armed"]
    armed = _events(env.audit)[1]
    assert armed["signage_confirmed"] is True and armed["threshold"] == 0.45
    assert armed["threshold_floor"] == 0.4
    state = json.loads((env.state / "deployment-state.json").read_text())
    assert state["last_sequence"] == 7
    # loading the same bundle again (SIGHUP) changes nothing
    m.counters.faces_processed = 3
    assert m.load(env.bundle_path).armed and m.counters.faces_processed == 3


@pytest.mark.parametrize(
    ("bundle_kwargs", "reason"),
    [
        ({"spec_changes": {"threshold": 0.3}}, "threshold_below_floor"),
        ({"spec_changes": {"signage_confirmed": False}}, "signage_not_confirmed"),
        ({"devices": "other"}, "not_for_device"),
        ({"n": 2, "spec_changes": {"max_watchlist_size": 1}}, None),  # build refuses
        ({"signer": "other"}, "unknown_signer"),
    ],
)
def test_refusals_stay_disarmed_with_one_line_and_audit(
    env, caplog: pytest.LogCaptureFixture, bundle_kwargs: dict, reason: str | None
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if bundle_kwargs.get("devices") == "other":
        bundle_kwargs["devices"] = [("van-09", X25519PrivateKey.generate().public_key())]
    if bundle_kwargs.get("signer") == "other":
        bundle_kwargs["signer"] = Ed25519PrivateKey.generate()
    if reason is None:
        with pytest.raises(UsageError):
            make_bundle(env.kit, **bundle_kwargs)
        return
    env.bundle_path.write_bytes(make_bundle(env.kit, **bundle_kwargs))
    m = env.manager()
    with caplog.at_level(logging.WARNING, logger="edge.watchlist.deployment"):
        st = m.load(env.bundle_path)
    assert not st.armed and st.code == reason and m.watchlist is None
    assert st.line().startswith(f"disarmed, refused ({reason}): ")
    lines = [r.getMessage() for r in caplog.records if r.name == "edge.watchlist.deployment"]
    assert len(lines) == 1 and lines[0].startswith("disarmed: ") and "\n" not in lines[0]
    (entry,) = _events(env.audit)
    assert entry["event"] == "bundle_refused" and entry["reason"] == reason
    assert env.bundle_path.exists()  # a refused (not expired) bundle is left for inspection


def test_tampered_bundle_is_refused(env) -> None:
    data = bytearray(make_bundle(env.kit))
    data[300] ^= 0x40
    env.bundle_path.write_bytes(bytes(data))
    st = env.manager().load(env.bundle_path)
    assert not st.armed and st.code == "bad_signature"


def test_pending_bundle_arms_when_the_window_opens(env) -> None:
    env.bundle_path.write_bytes(make_bundle(env.kit))
    env.clock.t = START.timestamp() - 600
    m = env.manager()
    st = m.load(env.bundle_path)
    assert not st.armed and st.code == "pending" and "has not started" in st.reason
    assert st.line().startswith("disarmed, pending: ")
    m.tick(START.timestamp() - 1)
    assert not m.armed
    m.tick(START.timestamp())
    assert m.armed


def test_end_command_cancels_a_pending_deployment(env) -> None:
    env.bundle_path.write_bytes(make_bundle(env.kit))
    env.clock.t = START.timestamp() - 600
    m = env.manager()
    assert m.load(env.bundle_path).code == "pending"
    summary = m.end(make_command(env.kit.signer, "end_deployment", "van-01", "D-2026-0042",
                                 issued_at=START - dt.timedelta(minutes=15)))
    assert summary["end_reason"] == "cancelled_before_start"
    assert not env.bundle_path.exists() and m.status.code == "ended"
    m.tick(START.timestamp() + 1)
    assert not m.armed
    assert verify(env.audit.path) == len(_events(env.audit))


def _end_of_deployment_checks(env, m: DeploymentManager, summary: dict, reason: str,
                              emb: np.ndarray, data: bytes, wl_matrix: np.ndarray) -> None:
    # RAM: the matrix the matcher used is zeroed in place; the manager holds nothing
    assert not np.asarray(wl_matrix).any()
    assert m.watchlist is None and not m.armed and m.status.code == "ended"
    # disk: no bundle, no wrapped key, no decrypted watchlist byte anywhere in the state dir
    assert not env.bundle_path.exists()
    disk = _all_state_bytes(env.state)
    for row in emb:
        assert row.tobytes()[:32] not in disk
        assert row.astype(">f4").tobytes()[:32] not in disk
    header = json.loads(data[46 : 46 + int.from_bytes(data[42:46], "big")])
    for r in header["recipients"]:
        wrapped = base64.b64decode(r["wrapped_key"])
        assert wrapped not in disk and r["wrapped_key"].encode() not in disk
    assert data[-64:] not in disk and data[1000:1064] not in disk
    assert b"S-0001" not in disk  # subject ids never reach the disk
    assert b"thumbS-0001" not in disk  # nor the reference thumbnails
    # the summary is produced, published and audited
    assert summary["end_reason"] == reason
    assert summary["deployment_id"] == "D-2026-0042"
    assert summary["location"] == "Example Street, Example Town"
    assert summary["window"] == {"start": "2026-11-22T11:00:00Z", "end": "2026-11-22T16:00:00Z"}
    assert summary["watchlist_size"] == 5
    assert env.summaries == [summary]
    events = [e["event"] for e in _events(env.audit)]
    assert events[-5:] == ["watchlist_wiped", "watchlist_shredded", "deployment_key_destroyed",
                           "disarmed", "deployment_summary"]
    destroyed = _events(env.audit)[-3]
    assert destroyed["key_id"] == env.kit.deployment_key_id
    assert destroyed["result"] == "destroyed"
    assert list(env.run.iterdir()) == []  # the deployment key is gone from the RAM directory
    assert verify(env.audit.path) == len(events)


ALERTS = [f"01937c3e-0000-7000-8000-{i:012x}" for i in range(10)]


def adjudication(env, alert_id: str, decision: str, **kw) -> bytes:
    args = {"device_id": "van-01", "alert_id": alert_id, "decision": decision,
            "officer": "PC 1", "at": NOW.timestamp() - 60, **kw}  # fmt: skip
    return sign_adjudication(kw.pop("key", env.kit.signer), **{k: v for k, v in args.items()
                                                                if k != "key"})


def test_adjudications_only_for_issued_alerts_once_per_decision_and_signed(env) -> None:
    """Issue 13 item 5 / issue 15: a forged, foreign, unknown or replayed adjudication
    is refused and audited with its reason; a real one is recorded exactly once."""
    env.bundle_path.write_bytes(make_bundle(env.kit, emb=embeddings(5)))
    m = env.manager()
    now = NOW.timestamp()
    with pytest.raises(AdjudicationRefused, match="no deployment"):
        m.handle_adjudication(adjudication(env, ALERTS[0], "confirmed"), now)
    assert m.load(env.bundle_path).armed
    m.note_alert(ALERTS[0])
    good = adjudication(env, ALERTS[0], "confirmed")
    refusals = {
        "unknown_alert": adjudication(env, ALERTS[1], "confirmed"),
        "unknown_signer": adjudication(env, ALERTS[0], "rejected",
                                       key=Ed25519PrivateKey.generate()),
        "not_for_device": adjudication(env, ALERTS[0], "rejected", device_id="van-02"),
        "unsigned": json.dumps({"alert_id": ALERTS[0], "decision": "confirmed",
                                "officer": "PC 1", "at": "2026-11-22T12:00:00.000Z"}).encode(),
        "garbled": b"[" * 3000,
        "too_large": b"{" + b" " * 5000 + b"}",
    }  # fmt: skip
    for reason, data in refusals.items():
        with pytest.raises(AdjudicationRefused) as info:
            m.handle_adjudication(data, now)
        assert info.value.reason == reason
    assert m.handle_adjudication(good, now).decision == "confirmed"
    for _ in range(3):
        with pytest.raises(AdjudicationRefused, match="recorded"):
            m.handle_adjudication(good, now)
    # The officer may revise the decision once: another decision on the same alert.
    m.handle_adjudication(adjudication(env, ALERTS[0], "not_stopped"), now)
    entries = _events(env.audit)
    recorded = [e for e in entries if e["event"] == "adjudication"]
    assert [e["decision"] for e in recorded] == ["confirmed", "not_stopped"]
    refused = [e["reason"] for e in entries if e["event"] == "adjudication_refused"]
    assert refused == ["not_armed", *refusals, "replayed", "replayed", "replayed"]
    assert all(len(json.dumps(e)) < 600 for e in entries if "adjudication" in e["event"])
    # A restart keeps what this deployment issued and recorded.
    m.tick(now)
    again = env.manager()
    assert again.load(env.bundle_path).armed
    with pytest.raises(AdjudicationRefused, match="recorded"):
        again.handle_adjudication(good, now)
    again.handle_adjudication(adjudication(env, ALERTS[0], "rejected"), now)


def test_end_of_window_wipes_shreds_and_summarises(env) -> None:
    emb = embeddings(5)
    data = make_bundle(env.kit, emb=emb)
    env.bundle_path.write_bytes(data)
    m = env.manager()
    assert m.load(env.bundle_path).armed
    wl_matrix = m.watchlist.embeddings
    m.counters.faces_processed += 1234
    m.counters.tracks += 56
    m.counters.alerts += 3
    for i, decision in enumerate(("confirmed", "rejected", "rejected")):
        m.note_alert(ALERTS[i])
        m.handle_adjudication(adjudication(env, ALERTS[i], decision), NOW.timestamp())
    # The first alert's decision changed twice: counted once, as what it ended as; going
    # back to an earlier decision is refused, and the refusal names what it refused.
    m.handle_adjudication(adjudication(env, ALERTS[0], "not_stopped"), NOW.timestamp())
    m.handle_adjudication(adjudication(env, ALERTS[0], "rejected"), NOW.timestamp())
    with pytest.raises(AdjudicationRefused, match="recorded"):
        m.handle_adjudication(adjudication(env, ALERTS[0], "confirmed", at=NOW.timestamp()),
                              NOW.timestamp())  # fmt: skip
    (refused,) = [e for e in _events(env.audit) if e["event"] == "adjudication_refused"]
    assert (refused["alert_id"], refused["decision"], refused["reason"]) == (
        ALERTS[0], "confirmed", "replayed")
    assert refused["decided_at"] == "2026-11-22T12:00:00.000Z"
    assert m.tick(END.timestamp() - 1) is None and m.armed
    summary = m.tick(END.timestamp())
    assert summary is not None
    _end_of_deployment_checks(env, m, summary, "window_ended", emb, data, wl_matrix)
    assert summary["faces_processed"] == 1234 and summary["tracks"] == 56
    assert summary["alerts"] == 3
    assert summary["adjudications"] == {"confirmed": 0, "rejected": 3, "not_stopped": 0}
    signed = [e for e in _events(env.audit) if e["event"] == "deployment_summary"]
    assert [e["summary"] for e in signed] == [summary]  # the report's source, signed
    assert m.tick(END.timestamp() + 60) is None  # nothing left to end


def test_signed_end_command_and_replay(env) -> None:
    emb = embeddings(5)
    data = make_bundle(env.kit, emb=emb)
    env.bundle_path.write_bytes(data)
    m = env.manager()
    assert m.load(env.bundle_path).armed
    wl_matrix = m.watchlist.embeddings
    issued = NOW - dt.timedelta(minutes=5)
    cmd = make_command(env.kit.signer, "end_deployment", "van-01", "D-2026-0042",
                       issued_at=issued)
    # refusals first: other deployment, other device, forged, expired
    other_dep = make_command(env.kit.signer, "end_deployment", "van-01", "D-OTHER",
                             issued_at=issued)
    with pytest.raises(CommandRefused) as info:
        m.end(other_dep)
    assert info.value.reason == "not_current" and m.armed
    with pytest.raises(CommandRefused) as info:
        m.end(make_command(env.kit.signer, "end_deployment", "van-02", "D-2026-0042",
                           issued_at=issued))
    assert info.value.reason == "not_for_device"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with pytest.raises(CommandRefused) as info:
        m.end(make_command(Ed25519PrivateKey.generate(), "end_deployment", "van-01",
                           "D-2026-0042", issued_at=issued))
    assert info.value.reason == "unknown_signer"
    forged = json.loads(cmd)
    forged["body"] = forged["body"].replace("D-2026-0042", "D-2026-0043")
    with pytest.raises(CommandRefused) as info:
        m.end(json.dumps(forged).encode())
    assert info.value.reason == "bad_signature"
    with pytest.raises(CommandRefused) as info:
        m.end(make_command(env.kit.signer, "end_deployment", "van-01", "D-2026-0042",
                           issued_at=NOW - dt.timedelta(hours=2), valid_for_s=3600))
    assert info.value.reason == "expired"
    assert m.armed
    summary = m.end(cmd)
    _end_of_deployment_checks(env, m, summary, "end_command", emb, data, wl_matrix)
    with pytest.raises(CommandRefused) as info:
        m.end(cmd)
    assert info.value.reason == "replayed"
    # a copy of the ended bundle pushed again is refused (its key is gone) and shredded
    env.bundle_path.write_bytes(data)
    st = m.load(env.bundle_path)
    assert not st.armed and st.code == "no_deployment_key" and "re-provision" in st.reason
    assert not env.bundle_path.exists()


def test_command_files_dropped_for_the_daemon(env) -> None:
    env.bundle_path.write_bytes(make_bundle(env.kit))
    m = env.manager()
    assert m.load(env.bundle_path).armed
    drop = env.state / "commands"
    drop.mkdir()
    (drop / "a-junk.json").write_text("{}")
    (drop / "b-end.json").write_bytes(
        make_command(env.kit.signer, "end_deployment", "van-01", "D-2026-0042", issued_at=NOW)
    )
    lines = m.process_command_files(drop)
    assert lines[0].startswith("a-junk.json: refused: command is garbled")
    assert lines[1] == "b-end.json: end_deployment accepted"
    assert not m.armed and not env.bundle_path.exists()
    assert not list(drop.iterdir())


def test_replay_protection_survives_a_restart(env) -> None:
    env.bundle_path.write_bytes(make_bundle(env.kit))
    m = env.manager()
    m.load(env.bundle_path)
    cmd = make_command(env.kit.signer, "legal_hold", "van-01", "D-2026-0042",
                       {"alert_ids": ["0190-a1"], "on": True}, issued_at=NOW)
    m.handle_command(cmd)
    m.close()
    with pytest.raises(CommandRefused) as info:
        env.manager().handle_command(cmd)
    assert info.value.reason == "replayed"


def test_legal_hold_command_reaches_the_outbox(env) -> None:
    m = env.manager()
    cmd = make_command(env.kit.signer, "legal_hold", "van-01", "D-2026-0042",
                       {"alert_ids": ["0190-a1", "unknown-alert"], "on": True}, issued_at=NOW)
    result = m.handle_command(cmd)
    assert env.holds == [("0190-a1", True), ("unknown-alert", True)]
    assert result["not_found"] == ["unknown-alert"]
    entry = _events(env.audit)[-1]
    assert entry["event"] == "legal_hold" and entry["alert_ids"] == ["0190-a1", "unknown-alert"]


def test_sequence_survives_restart_and_old_bundles_are_refused(env) -> None:
    env.bundle_path.write_bytes(make_bundle(env.kit, spec_changes={"sequence": 9}))
    m = env.manager()
    assert m.load(env.bundle_path).armed
    m.close()
    older = env.state / "older.bundle"
    older.write_bytes(make_bundle(env.kit, spec_changes={"sequence": 8}))
    st = env.manager().load(older)
    assert not st.armed and st.code == "old_sequence"
    # the same (current) bundle re-arms after a restart
    assert env.manager().load(env.bundle_path).armed


def test_expired_bundle_found_at_start_is_shredded(env) -> None:
    env.bundle_path.write_bytes(make_bundle(env.kit))
    env.clock.t = END.timestamp() + 3600  # the device was off when the window ended
    st = env.manager().load(env.bundle_path)
    assert not st.armed and st.code == "window_ended"
    assert not env.bundle_path.exists()
    assert [e["event"] for e in _events(env.audit)] == [
        "bundle_refused", "watchlist_shredded", "deployment_key_destroyed"]
    assert list(env.run.iterdir()) == []


def test_bad_new_bundle_does_not_disarm_a_running_deployment(env) -> None:
    env.bundle_path.write_bytes(make_bundle(env.kit))
    m = env.manager()
    assert m.load(env.bundle_path).armed
    bad = env.state / "bad.bundle"
    bad.write_bytes(make_bundle(env.kit, spec_changes={"threshold": 0.1, "sequence": 8}))
    assert m.load(bad).armed
    assert _events(env.audit)[-1]["kept_armed"] is True


def test_shred_file_overwrites_then_unlinks(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"secret" * 1000)
    assert shred_file(p) and not p.exists()
    assert not shred_file(p)


def test_a_staged_bundle_that_is_a_symlink_is_dropped_and_its_target_left_alone(env) -> None:
    """``<bundle>.new`` pointing elsewhere: followed for reading only, never overwritten
    through, removed, and the daemon goes on."""
    from edge.watchlist.deployment_keys import staged_path

    target = env.state.parent / "elsewhere.bundle"
    data = make_bundle(env.kit)
    target.write_bytes(data)
    staged_path(env.bundle_path).symlink_to(target)
    m = env.manager()
    st = m.load(env.bundle_path)
    assert not staged_path(env.bundle_path).is_symlink()
    assert target.read_bytes() == data  # not shredded through the link
    assert not env.bundle_path.exists() and st.code == "no_bundle"
    assert any(e["event"] == "bundle_refused" and "symbolic link" in e["message"]
               for e in _events(env.audit))
