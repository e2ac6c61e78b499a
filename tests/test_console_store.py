"""The console's store, the same tests against SQLite (WAL) and a real PostgreSQL server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.console import migrate
from edge.console.messages import parse_alert_message, parse_audit_entry
from edge.console.store import Store
from edge.console.tables import metadata
from edge.delivery.alert import encode_alert
from edge.delivery.alert_sign import seal_alert
from edge.watchlist.audit import AuditLog
from tests.fixtures.alerts import make_record
from tests.fixtures.postgres import pg_url, postgres_server  # noqa: F401

DEVICE_KEY = Ed25519PrivateKey.generate()  # signs the test alerts (issue 13, item 9)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'console.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store.open(url)
    yield s
    s.close()


def _alert(device: str = "van-1", **kw: object) -> dict[str, object]:
    payload = seal_alert(encode_alert(make_record(device, **kw)), time.time(), DEVICE_KEY)  # type: ignore[arg-type]
    return parse_alert_message(device, payload, {device: DEVICE_KEY.public_key()})


def test_the_migrated_schema_is_the_tables_and_sqlite_runs_in_wal(store: Store) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        if store.engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert diff == []
    assert migrate.current(store.engine) == migrate.head()
    migrate.upgrade(store.engine)  # idempotent


def test_alerts_are_deduplicated_filtered_and_newest_first(store: Store) -> None:
    a1, a2, b1 = _alert("van-1"), _alert("van-1"), _alert("van-2")
    assert store.add_alert(a1, b"sealed-1", 100.0) == "new"
    assert store.add_alert(a1, b"sealed-1", 101.0) == "duplicate"  # a redelivery
    assert store.add_alert(a2, b"sealed-2", 102.0) == "new"
    assert store.add_alert(b1, b"sealed-3", 103.0) == "new"
    assert [r["alert_id"] for r in store.alerts()] == [b1["alert_id"], a2["alert_id"],
                                                       a1["alert_id"]]
    assert [r["alert_id"] for r in store.alerts(device_id="van-1")] == [a2["alert_id"],
                                                                        a1["alert_id"]]
    assert store.alerts(deployment_id="nope") == []
    assert store.crop(str(a1["alert_id"])) == b"sealed-1"
    row = store.alert(str(a1["alert_id"]))
    assert row is not None and "crop" not in row and row["has_crop"]


def test_purge_keeps_alerts_on_legal_hold(store: Store) -> None:
    old, held, new = _alert(), _alert(), _alert()
    store.add_alert(old, b"x", 10.0)
    store.add_alert(held, b"y", 10.0)
    store.add_alert(new, b"z", time.time())
    assert store.set_legal_hold(str(held["alert_id"]), True)
    assert store.purge_alerts(older_than=500.0, now=600.0) == [old["alert_id"]]
    left = {r["alert_id"] for r in store.alerts()}
    assert left == {held["alert_id"], new["alert_id"]}
    # Its tombstone refuses it again (kept while its capture is within the retention).
    assert store.add_alert(old, b"x", 700.0) == "purged"
    assert [r["alert_id"] for r in store.tombstones()] == [old["alert_id"]]


def _chain(tmp_path: Path, n: int) -> list[bytes]:
    sent: list[bytes] = []
    log = AuditLog(tmp_path / "audit.log",
                   publish=lambda e: sent.append(json.dumps(e, sort_keys=True).encode()))
    for i in range(n):
        log.append("adjudication" if i == 1 else "tick", alert_id=f"a{i}", decision="confirmed",
                   officer="PC 1")
    return sent


def _feed(store: Store, payload: bytes, device: str = "van-1") -> tuple[str, str, list[int]]:
    outcome, state, verified = store.audit.add_entry(
        device, parse_audit_entry(device, payload), time.time())
    return outcome, state.state, verified


def test_a_real_chain_verifies_and_a_gap_closes_when_the_entry_arrives(
    store: Store, tmp_path: Path
) -> None:
    e = _chain(tmp_path, 5)
    assert _feed(store, e[0]) == ("new", "ok", [1])
    assert _feed(store, e[0]) == ("duplicate", "ok", [])
    assert _feed(store, e[2]) == ("new", "gap", [])
    assert store.audit.chains()[0]["problem"] == "entries 2 not received"
    assert _feed(store, e[3]) == ("new", "gap", [])
    assert _feed(store, e[1]) == ("new", "ok", [2, 3, 4])
    assert _feed(store, e[4]) == ("new", "ok", [5])
    row = store.audit.chains()[0]
    assert (row["verified_seq"], row["state"], row["received"]) == (5, "ok", 5)


def test_a_duplicate_is_judged_by_the_signed_content_not_the_bytes(
    store: Store, tmp_path: Path
) -> None:
    """A resend whose bytes differ but whose signed content (the hash) is the same is a
    duplicate, never a conflict that would break the chain for ever."""
    e = _chain(tmp_path, 2)
    assert _feed(store, e[0])[:2] == ("new", "ok")
    respelt = {**json.loads(e[0]), "sig": "not the same bytes"}
    assert _feed(store, json.dumps(respelt, indent=1).encode()) == ("duplicate", "ok", [])
    assert _feed(store, e[1]) == ("new", "ok", [2])


@pytest.mark.parametrize("tamper", ["field", "prev_hash", "time", "conflict"])
def test_a_modified_reordered_or_conflicting_entry_breaks_the_chain(
    store: Store, tmp_path: Path, tamper: str
) -> None:
    e = _chain(tmp_path, 3)
    _feed(store, e[0])
    bad = json.loads(e[1])
    if tamper == "field":
        bad["officer"] = "someone else"
    elif tamper == "prev_hash":
        bad["prev_hash"] = "1" * 64
    elif tamper == "time":
        from edge.watchlist.audit import entry_hash

        bad["at"] = "2000-01-01T00:00:00.000Z"
        bad["hash"] = entry_hash(bad)  # a consistent entry, but earlier than entry 1
    if tamper == "conflict":
        from edge.watchlist.audit import entry_hash

        _feed(store, e[1])
        bad["officer"] = "someone else"
        bad["hash"] = entry_hash(bad)  # another signed history for seq 2 (the device's key)
        outcome, state, _ = _feed(store, json.dumps(bad).encode())
        assert (outcome, state) == ("conflict", "broken")
        assert "two different entries with seq 2" in store.audit.chains()[0]["problem"]
        return
    outcome, state, verified = _feed(store, json.dumps(bad).encode())
    assert (outcome, state, verified) == ("new", "broken", [])
    assert "entry 2" in store.audit.chains()[0]["problem"]
    # Final: later good entries are stored but never verified.
    assert _feed(store, e[2])[1:] == ("broken", [])
    assert store.audit.chains()[0]["verified_seq"] == 1


def test_users_sessions_and_login_attempts(store: Store) -> None:
    store.auth.add_user("pc-1", "operator", "hash", 1.0)
    with pytest.raises(sa.exc.IntegrityError):
        store.auth.add_user("pc-1", "auditor", "hash", 1.0)
    user = store.auth.user_by_name("pc-1")
    assert user is not None and user["role"] == "operator"
    store.auth.add_session("t" * 64, user["id"], "c" * 64, now=10.0, expires_at=20.0)
    live = store.auth.session("t" * 64, now=15.0)
    assert live is not None and (live["name"], live["csrf"]) == ("pc-1", "c" * 64)
    assert store.auth.session("t" * 64, now=21.0) is None
    limits = [("user:pc-1", 2), ("addr:1.2.3.4", 3)]
    first = store.auth.begin_login_attempt(limits, 5.0, since=0.0)
    assert len(first.ids) == 2 and first.limited_by is None
    assert store.auth.begin_login_attempt(limits, 6.0, since=0.0).limited_by is None
    third = store.auth.begin_login_attempt(limits, 7.0, since=0.0)
    assert (third.ids, third.limited_by, third.retry_after_s) == ((), "user:pc-1", 5.0)
    assert store.auth.login_failures("user:pc-1", since=0.0) == 2  # the refused one: not recorded
    assert store.auth.begin_login_attempt(limits, 8.0, since=5.5).limited_by is None  # window moved
    store.auth.end_login_attempt(first.ids, clear_key="user:pc-1")  # a success forgets them
    assert store.auth.login_failures("user:pc-1", since=0.0) == 0
    assert store.auth.login_failures("addr:1.2.3.4", since=0.0) == 2
    assert store.auth.purge_login_attempts(before=6.5) == 1
    # A new password or role, disabling and removing end the user's sessions at once.
    for token in ("a", "b"):  # (the first also deletes the expired session)
        store.auth.add_session(token * 64, user["id"], "c" * 64, now=30.0, expires_at=1e12)
    assert store.auth.set_password("pc-1", "auditor", "hash2") == 2
    assert store.auth.session("a" * 64, now=31.0) is None
    store.auth.add_session("d" * 64, user["id"], "c" * 64, now=10.0, expires_at=1e12)
    assert store.auth.set_disabled("pc-1", True) == 1
    assert store.auth.set_disabled("pc-1", False) == 0
    store.auth.add_session("e" * 64, user["id"], "c" * 64, now=10.0, expires_at=1e12)
    assert store.auth.remove_user("pc-1") == 1 and store.auth.user_by_name("pc-1") is None
    assert store.auth.set_password("pc-1", "auditor", "h") is None
    assert store.auth.remove_user("x") is None


def test_concurrent_login_attempts_are_counted_atomically(store: Store) -> None:
    """40 attempts on one name at once, across threads (and on PostgreSQL, connections):
    exactly the limit are recorded; every other one is refused unrecorded."""
    import threading

    now = time.time()
    results: list[bool] = []
    gate = threading.Barrier(40)

    def attempt() -> None:
        gate.wait()
        results.append(store.auth.begin_login_attempt([("user:pc-9", 5)], now, now - 900)
                       .limited_by is None)  # fmt: skip

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert (results.count(True), len(results)) == (5, 40)
    assert store.auth.login_failures("user:pc-9", since=0.0) == 5


def test_devices_deployments_and_references(store: Store) -> None:
    status = {"state": "online", "armed": True, "reason": "armed", "deployment_id": "D-1",
              "window_end": None, "status_at": 1.0}
    store.fleet.record_status("van-1", status, 5.0, retained=False)
    store.fleet.record_stats("van-1", {"fps": 12.5, "camera": "ok", "outbox_pending": 0,
                                 "faces_seen": 3, "stats_at": None}, 6.0)
    store.fleet.record_status("van-1", {**status, "state": "offline", "armed": False}, 7.0,
                        retained=True)
    (dev,) = store.fleet.devices()
    assert (dev["state"], dev["fps"], dev["last_seen"]) == ("offline", 12.5, 6.0)
    assert [h["state"] for h in store.fleet.status_history("van-1")] == ["offline", "online"]
    assert [d["stale"] for d in store.fleet.devices(stale_after_s=10.0, now=16.5)] == [False]
    store.fleet.record_status("van-1", {**status, "status_at": 2.0}, 8.0, retained=False)
    store.fleet.record_status("van-1", {**status, "status_at": 2.0}, 8.5, retained=True)  # again
    assert [h["state"] for h in store.fleet.status_history("van-1")] == ["online", "offline",
                                                                   "online"]  # fmt: skip
    assert [d["stale"] for d in store.fleet.devices(stale_after_s=10.0, now=18.6)] == [True]
    armed = {"state": "armed", "deployment_id": "D-1", "location": "x",
             "window_start": "s", "window_end": "e", "window_end_ts": 50.0, "threshold": 0.6}
    store.fleet.record_deployment("van-1", armed, 8.0, seq=3)
    store.fleet.record_deployment("van-1", {"deployment_id": "D-1", "bundle_id": "b",
                                      "watchlist_size": 2}, 8.0, seq=4)
    store.fleet.record_deployment("van-1", {**armed, "state": "ended", "ended_at_ts": 40.0,
                                      "summary": {"faces_processed": 9}}, 9.0, seq=9)
    store.fleet.record_deployment("van-1", armed, 10.0, seq=11)  # armed again: the report stays
    (row,) = store.fleet.deployments()
    assert (row["state"], row["summary"], row["summary_seq"]) == ("ended",
                                                                  {"faces_processed": 9}, 9)
    assert (row["bundle_id"], row["watchlist_size"]) == ("b", 2)
    assert store.fleet.deployment_ended_at("van-1", "D-1") == 40.0
    assert store.fleet.deployment_ended_at("van-2", "D-1") is None
    store.images.put_reference("D-1", "S-1", "suspect", b"sealed", 50.0, bundle_id="b")
    store.images.put_reference("D-1", "S-2", "suspect", b"sealed", 50.0, bundle_id="c")
    assert store.images.reference("D-1", "S-1") == b"sealed"
    assert store.images.reference_deployments() == {"D-1": (2, 50.0)}
    assert store.images.delete_references("D-1", "b") == 1
    assert store.images.reference("D-1", "S-1") is None and store.images.reference("D-1", "S-2")
    assert store.images.delete_references("D-1") == 1


def test_the_console_trail_is_hash_chained_and_cannot_fork(store: Store) -> None:
    import threading

    def write(who: str) -> None:
        for i in range(15):
            store.log(who, "crop_viewed", alert_id=f"a-{i}")

    threads = [threading.Thread(target=write, args=(f"pc-{n}",)) for n in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.verify_log() == (45, None)
    with store.tx() as conn:
        # the 7th row by id: ids need not be 1..45 (a PostgreSQL sequence keeps the values
        # of inserts that lost a race and retried)
        seventh = conn.execute(sa.text(
            "SELECT id FROM console_audit ORDER BY id LIMIT 1 OFFSET 6")).scalar_one()
        conn.execute(sa.text("UPDATE console_audit SET actor = 'nobody' WHERE id = :i"),
                     {"i": seventh})
    assert store.verify_log() == (6, f"console trail broken at row {seventh}: its hash does "
                                     "not match (modified)")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0002_chains_the_rows_written_before_it(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    from edge.console.store import make_engine

    url = (f"sqlite:///{tmp_path / 'old.db'}" if kind == "sqlite"
           else request.getfixturevalue("pg_url"))
    engine = make_engine(url)
    migrate.upgrade(engine, "0001")
    with engine.begin() as conn:
        for i in range(3):
            conn.execute(sa.text(
                "INSERT INTO console_audit (at, actor, event, detail) VALUES (:at, 'pc', "
                "'login', '{}')"), {"at": 1000.0 + i})  # fmt: skip
    migrate.upgrade(engine)
    store = Store(engine)
    assert migrate.current(engine) == migrate.head()
    assert store.verify_log() == (3, None)
    store.log("pc", "logout")
    assert store.verify_log() == (4, None)
    store.close()
