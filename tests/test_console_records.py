"""The control room's records under attack (issue 21: medium 3, replay after purge; medium
4, unsigned device messages steer the record; low, the summary's decisions and the van's
answer).

Real parts: the console's store on SQLite and on a PostgreSQL server (the fixture), its
handler and service, and vans made of the device's own :class:`DeploymentManager` with a
signed :class:`AuditLog` (``tests/bundle_kit.py``): every audit entry the console takes
here is one the device's code wrote and signed, handed over as the broker would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.console.app import templates
from edge.console.crypto import AtRest
from edge.console.events import Hub
from edge.console.handlers import Handler
from edge.console.metrics import Metrics
from edge.console.routes_pages import _alert_views
from edge.console.service import ActionRefused, Console
from edge.console.store import Store
from edge.delivery.alert import encode_alert
from edge.delivery.alert_sign import seal_alert
from edge.watchlist.adjudication import AdjudicationRefused
from edge.watchlist.audit import AuditLog, canonical
from edge.watchlist.bundle import read_header
from edge.watchlist.deployment import DeploymentManager
from edge.watchlist.references import Reference, build_references
from tests.bundle_kit import EMBEDDER_SHA, NOW, Clock, Kit, make_bundle, make_kit
from tests.fixtures.alerts import make_record
from tests.fixtures.postgres import pg_url, postgres_server  # noqa: F401

DAY = 86400.0
DEP = "D-2026-0042"
END = (NOW + dt.timedelta(hours=4)).timestamp()
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (f"sqlite:///{tmp_path / 'console.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))  # fmt: skip
    s = Store.open(url)
    yield s
    s.close()


SQLITE_ONLY = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


class Radio:
    """The console's publisher: hands each signed adjudication to the van it is for, whose
    real DeploymentManager verifies and records (or refuses) it."""

    def __init__(self) -> None:
        self.vans: dict[str, Van] = {}

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> None:
        van = self.vans[topic.split("/")[1]]
        with contextlib.suppress(AdjudicationRefused):  # the van audits its refusal
            van.manager.handle_adjudication(payload, van.clock())


@dataclasses.dataclass
class Desk:
    store: Store
    handler: Handler
    console: Console
    keys: dict[str, Ed25519PublicKey]
    radio: Radio
    console_key: X25519PrivateKey


@pytest.fixture
def clock() -> Clock:
    """The vans' and the console's clock (the bundles' window is around ``NOW``)."""
    return Clock(NOW.timestamp())


@pytest.fixture
def desk(store: Store, tmp_path: Path, clock: Clock) -> Desk:
    keys: dict[str, Ed25519PublicKey] = {}
    at_rest, hub, metrics = AtRest(X25519PrivateKey.generate()), Hub(), Metrics()
    radio = Radio()
    handler = Handler(store, at_rest, hub, metrics, device_keys=keys)
    (tmp_path / "refs").mkdir()
    console = Console(store, at_rest, hub, metrics, radio, CONTROL_ROOM.signer,
                      references_dir=tmp_path / "refs", clock=clock)  # fmt: skip
    return Desk(store, handler, console, keys, radio, at_rest.private_key)


CONTROL_ROOM = make_kit()  # the control room's signing key signs every bundle here


class Van:
    """A van of the device's own parts: its DeploymentManager, its signed audit log (each
    entry handed to the console's handler as the broker would), its alerts signed."""

    def __init__(self, desk: Desk, tmp_path: Path, device_id: str, clock: Clock) -> None:
        self.device_id, self.clock, self.desk = device_id, clock, desk
        self.kit = Kit(CONTROL_ROOM.signer, X25519PrivateKey.generate(),
                       X25519PrivateKey.generate(), device_id=device_id)  # fmt: skip
        self.key = Ed25519PrivateKey.generate()
        desk.keys[device_id] = self.key.public_key()
        state = tmp_path / device_id
        self.audit = AuditLog(state / "audit.jsonl", publish=self._send, clock=clock,
                              signing_key=self.key)  # fmt: skip
        self.manager = DeploymentManager(
            state, device_id, self.kit.device, self.kit.trusted, threshold_floor=0.4,
            max_subjects=100, expected_embedder_sha256=EMBEDDER_SHA, audit=self.audit,
            clock=clock, deployment_keys_dir=self.kit.install(tmp_path / f"{device_id}-run"))
        self.bundle = make_bundle(self.kit, devices=[(device_id, self.kit.deployment.public_key())])
        self.bundle_id = read_header(self.bundle, self.kit.trusted).bundle_id
        desk.radio.vans[device_id] = self

    def _send(self, entry: dict[str, Any]) -> None:
        self.desk.handler.handle(f"lfr/{self.device_id}/audit", canonical(entry),
                                 received_at=self.clock())  # fmt: skip

    def arm(self) -> None:
        path = self.manager.state_dir / "watchlist.bundle"
        path.write_bytes(self.bundle)
        assert self.manager.load(path).armed

    def alert(self, captured_at: float | None = None) -> tuple[str, bytes]:
        record = dataclasses.replace(make_record(self.device_id, captured_at=captured_at
                                                 or self.clock()), deployment_id=DEP)
        self.manager.note_alert(record.alert_id)
        self.manager.counters.alerts += 1
        return record.alert_id, seal_alert(encode_alert(record), self.clock(), self.key)

    def send(self, payload: bytes, kind: str = "alerts") -> str:
        return self.desk.handler.handle(f"lfr/{self.device_id}/{kind}", payload,
                                        received_at=self.clock())  # fmt: skip

    def end(self) -> None:
        self.clock.t = END
        assert self.manager.tick(END) is not None


@pytest.fixture
def fleet(desk: Desk, tmp_path: Path, clock: Clock) -> tuple[Desk, Van, Van, str]:
    """Two vans armed for the same deployment, each with its own bundle; van-01's reference
    images imported; van-01's first alert stored."""
    van_a, van_b = (Van(desk, tmp_path, d, clock) for d in ("van-01", "van-02"))
    for van in (van_a, van_b):
        van.arm()
    assert desk.console.references_dir is not None
    (desk.console.references_dir / "a.refs").write_bytes(build_references(
        CONTROL_ROOM.signer, desk.console_key.public_key(), deployment_id=DEP,
        bundle_id=van_a.bundle_id, window_end=END + DAY,
        subjects=[Reference("S-0001", "wanted_police", JPEG)]))  # fmt: skip
    assert desk.console.housekeeping(now=clock())["references_imported"] == 1
    alert_id, payload = van_a.alert()
    assert van_a.send(payload) == "stored"
    return desk, van_a, van_b, alert_id


def _deployment(store: Store, device: str) -> dict[str, Any]:
    (row,) = [d for d in store.fleet.deployments() if d["device_id"] == device]
    return row


@SQLITE_ONLY
def test_another_vans_messages_never_change_or_delete_this_vans_records(
    fleet: tuple[Desk, Van, Van, str],
) -> None:
    desk, van_a, van_b, alert_id = fleet
    store = desk.store
    assert _deployment(store, "van-01")["state"] == "armed"
    # van-02's unsigned "deployment ended" for the deployment, with a forged summary: the
    # console takes no such topic, and its status only shows state.
    forged = {"state": "ended", "deployment_id": DEP, "device_id": "van-02", "alerts": 1000,
              "adjudications": {"confirmed": 1000}, "faces_processed": 1}  # fmt: skip
    assert van_b.send(json.dumps(forged).encode(), "deployment") == "refused"
    assert van_b.send(json.dumps({**forged, "device_id": "van-01"}).encode(),
                      "deployment") == "refused"  # fmt: skip
    offline = {"state": "offline", "armed": False, "deployment_id": DEP, "reason": "ended"}
    assert van_b.send(json.dumps(offline).encode(), "status") == "stored"
    assert store.images.reference(DEP, "S-0001") is not None
    assert [d["summary"] for d in store.fleet.deployments()] == [None, None]
    # van-02 signs (with its own key) a decision on van-01's alert: verified on van-02's
    # chain, but it marks nothing on another van's alert.
    van_b.audit.append("adjudication", alert_id=alert_id, decision="confirmed",
                       officer="PC Evil", decided_at="2026-11-22T12:00:00.000Z",
                       signer="00" * 32, deployment_id=DEP)  # fmt: skip
    row = store.alert(alert_id)
    assert row is not None and row["device_decision"] is None
    # van-02 signs a summary naming van-01: not a record.
    van_b.audit.append("deployment_summary", summary={**forged, "device_id": "van-01",
                                                      "bundle_id": van_a.bundle_id})
    assert _deployment(store, "van-01")["summary"] is None
    # van-02's genuine end of its own bundle for the same deployment id: its own report,
    # and van-01's reference images (another bundle) stay.
    van_b.end()
    b = _deployment(store, "van-02")
    assert b["state"] == "ended" and b["summary"]["alerts"] == 0
    assert _deployment(store, "van-01")["state"] == "armed"
    assert store.images.reference(DEP, "S-0001") is not None
    assert [c["state"] for c in store.audit.chains()] == ["ok", "ok"]  # nothing forged got in
    assert desk.handler.metrics.get("console_records_refused_total",
                                    event="deployment_summary") == 1  # fmt: skip


def test_the_report_counts_each_alert_once_and_each_decision_shows_the_vans_answer(
    fleet: tuple[Desk, Van, Van, str],
) -> None:
    desk, van_a, _, alert_id = fleet
    store, console = desk.store, desk.console
    van_a.clock.t += 60
    for decision in ("confirmed", "rejected", "confirmed"):  # back to an earlier decision
        console.adjudicate("pc-1", alert_id, decision)
        van_a.clock.t += 1
    answers = [(j["decision"], j["answer"]) for j in store.adjudications(alert_id)]
    assert answers == [("confirmed", "recorded"), ("rejected", "recorded"),
                       ("confirmed", "refused: replayed")]  # fmt: skip
    (view,) = _alert_views(SimpleNamespace(store=store), [store.alert(alert_id)])  # type: ignore[arg-type]
    html = templates().get_template("_alert_row.html").render(a=view, user=None)
    assert "van: refused: replayed" in html and html.count("van: recorded") == 2
    assert "device recorded: <b>rejected</b>" in html
    assert store.outcome_counts() == {"rejected": 1}
    # A late alert captured before the end is still taken after the signed summary; one
    # captured after it is refused (counted, on the trail).
    late_id, late = van_a.alert(captured_at=END - 30)
    after_id, after = van_a.alert(captured_at=END + 60)
    van_a.end()
    a = _deployment(store, "van-01")
    assert a["state"] == "ended" and a["summary_seq"] is not None
    assert a["summary"]["alerts"] == 3
    assert a["summary"]["adjudications"] == {"confirmed": 0, "rejected": 1, "not_stopped": 0}
    assert a["bundle_id"] == van_a.bundle_id and a["ended_at_ts"] == END
    assert store.images.reference(DEP, "S-0001") is None  # the van's signed summary deleted them
    deleted = [json.loads(r["detail"]) for r in store.console_log()
               if r["event"] == "references_deleted"]  # fmt: skip
    assert deleted == [{"audit_seq": a["summary_seq"], "bundle_id": van_a.bundle_id,
                        "count": 1, "deployment_id": DEP, "device_id": "van-01",
                        "reason": "the van's signed summary"}]  # fmt: skip
    van_a.clock.t = END + 120
    assert van_a.send(late) == "stored"
    assert van_a.send(after) == "refused"
    assert store.alert(after_id) is None and store.alert(late_id) is not None
    assert desk.handler.metrics.get("console_messages_stale_total", kind="alerts",
                                    reason="deployment_ended") == 1  # fmt: skip
    assert [json.loads(r["detail"])["reason"] for r in store.console_log()
            if r["event"] == "stale_refused"] == ["deployment_ended"]  # fmt: skip


def test_a_replayed_alert_after_the_purge_is_refused_and_its_crop_stays_gone(
    desk: Desk,
) -> None:
    """The van's clock ran three days ahead: the alert's capture time is within the
    retention when the purge is replayed, so only its tombstone refuses it."""
    key = Ed25519PrivateKey.generate()
    desk.keys["van-01"] = key.public_key()
    t0 = desk.console.clock()
    record = make_record("van-01", captured_at=t0 + 3 * DAY)
    payload = seal_alert(encode_alert(record), t0, key)
    handler, store, console = desk.handler, desk.store, desk.console
    assert handler.handle("lfr/van-01/alerts", payload, received_at=t0) == "stored"
    assert console.housekeeping(now=t0 + 32 * DAY)["purged"] == 1
    (tomb,) = store.tombstones()
    assert tomb == {"alert_id": record.alert_id, "captured_at": pytest.approx(t0 + 3 * DAY),
                    "purged_at": t0 + 32 * DAY}  # the id and two times: nothing personal
    assert handler.handle("lfr/van-01/alerts", payload, received_at=t0 + 32 * DAY) == "refused"
    assert store.alerts() == [] and store.crop(record.alert_id) is None
    with pytest.raises(ActionRefused) as exc:
        console.crop("pc-1", record.alert_id)
    assert exc.value.status == 404
    m = handler.metrics
    assert m.get("console_messages_stale_total", kind="alerts", reason="purged") == 1
    # Once the capture itself is older than the retention, the tombstone goes: the age
    # alone refuses it.
    console.housekeeping(now=t0 + 35 * DAY)
    assert store.tombstones() == []
    assert handler.handle("lfr/van-01/alerts", payload, received_at=t0 + 35 * DAY) == "refused"
    assert m.get("console_messages_stale_total", kind="alerts", reason="expired") == 1
    assert store.alerts() == []
    trail = [json.loads(r["detail"])["reason"] for r in store.console_log()
             if r["event"] == "stale_refused"]  # fmt: skip
    assert trail == ["expired", "purged"]
