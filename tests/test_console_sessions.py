"""Nothing lost when a console restarts; a lost MQTT session is an alarm, never a silent
loss (issue 21, high; safeguard 17).

Real parts: mosquitto with mutual TLS and persistence (``tests/fixtures/broker.py``), the
console's real ingest (in-process here, each instance its own certificate, client id and
persistent session on one database), a van of the device's real publisher, outbox and
signed audit log (``tests/fixtures/browser.py``), and ``edge console serve`` as a process
for the page, ``/metrics`` and the trail.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.console.crypto import AtRest
from edge.console.events import Hub
from edge.console.handlers import Handler
from edge.console.ingest import Ingest
from edge.console.metrics import Metrics
from edge.console.store import Store
from edge.delivery.publish import BrokerSettings
from edge.watchlist.keys import init_signing_key
from tests.fixtures.alerts import make_record
from tests.fixtures.broker import Broker
from tests.fixtures.browser import ConsoleServer, Van, csrf_of
from tests.fixtures.wait import wait_until


@dataclass
class Instance:
    """One console instance: its own store connection, handler and MQTT ingest."""

    store: Store
    handler: Handler
    ingest: Ingest

    def stop(self) -> None:
        self.ingest.stop()
        self.store.close()


def test_a_console_restarted_while_a_van_publishes_loses_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'console.db'}"
    at_rest_key = X25519PrivateKey.generate()
    keys: dict[str, Ed25519PublicKey] = {}

    def instance(n: int, client_id: str) -> Instance:
        store = Store.open(url)
        handler = Handler(store, AtRest(at_rest_key), Hub(), Metrics(), device_keys=keys)
        c = broker.console(n)  # each instance its own certificate
        ingest = Ingest(BrokerSettings(broker.host, broker.port, c.ca, c.cert, c.key), handler,
                        handler.metrics, client_id=client_id)  # fmt: skip
        ingest.start()
        assert ingest.wait_ready(10), ingest.last_error
        return Instance(store, handler, ingest)

    a = instance(1, "console-a")
    b = instance(2, "console-b")
    van = Van(broker, tmp_path / "van", "van-r", init_signing_key(tmp_path / "cr").public)
    keys[van.device_id] = van.signing_key.public_key()
    sent: list[str] = []

    def publish(n: int) -> None:  # the van's alerts and audit entries, as the daemon sends
        for _ in range(n):
            record = make_record(van.device_id)
            van.publisher.enqueue_alert(record)
            van.audit.append("alert_sent", alert_id=record.alert_id)
            sent.append(record.alert_id)

    instances = [a, b]
    try:
        van.start()
        publish(10)
        a.stop()  # maintenance, while the van's messages are in flight
        publish(10)
        instances[0] = a = instance(1, "console-a")  # back: same session
        publish(10)
        # console-b's session is lost while it is down: another client connects with its
        # identity and a clean start (what per-client certificates prevent; a broker that
        # lost its state does the same). console-a still holds every message.
        b.stop()
        publish(10)  # acknowledged by the broker (the van forgets them), queued for both
        assert wait_until(lambda: van.publisher.pending_count == 0)
        thief = broker.client("control-room-console-2")
        thief.disconnect()
        thief.loop_stop()
        publish(10)
        instances[1] = b = instance(2, "console-b")
        store = a.store
        entries = len(sent) + 1  # daemon_start and one per alert

        def complete() -> bool:
            chains = store.audit.chains()
            return len(store.alerts(limit=1000)) == len(sent) and bool(chains) \
                and chains[0]["verified_seq"] == entries
        assert wait_until(complete, 30), (len(store.alerts(limit=1000)), store.audit.chains())
        assert sorted(r["alert_id"] for r in store.alerts(limit=1000)) == sorted(sent)
        (chain,) = store.audit.chains()
        assert (chain["state"], chain["received"], chain["problem"]) == ("ok", entries, None)
        # console-a came back to its own session: no alarm; console-b's was gone: one. The
        # ingest worker handles the connection event after wait_ready: wait for its record.
        assert wait_until(lambda: any(r["event"] == "mqtt_session_lost"
                                 for r in store.console_log()))  # the last it writes
        (alarm,) = store.fleet.alarms()
        assert alarm["kind"] == "mqtt_session_lost" and "console-b" in alarm["detail"]
        trail = [json.loads(r["detail"]) for r in store.console_log()
                 if r["event"] == "mqtt_session_lost"]  # fmt: skip
        assert [t["client_id"] for t in trail] == ["console-b"]
        assert b.handler.metrics.get("console_mqtt_sessions_lost_total") == 1
        assert a.handler.metrics.get("console_mqtt_sessions_lost_total") == 0
    finally:
        van.stop()
        for inst in instances:
            with contextlib.suppress(Exception):
                inst.stop()


@pytest.fixture
def console(broker: Broker, tmp_path: Path) -> Iterator[ConsoleServer]:
    server = ConsoleServer(broker, tmp_path / "console", client_id="console-sessions")
    for name, role in (("pc-ops", "operator"), ("sgt-sup", "supervisor")):
        server.add_user(name, role)
    server.start()
    yield server
    server.stop()


def _trail(console: ConsoleServer) -> list[str]:
    """The console's own trail (what its audit page shows), newest first."""
    store = Store.open(f"sqlite:///{console.db}")
    try:
        return [r["event"] for r in store.console_log()
                if r["event"] in ("mqtt_session_lost", "alarm_cleared")]  # fmt: skip
    finally:
        store.close()


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_broker_restarted_without_its_sessions_raises_the_alarm_everywhere(
    broker: Broker, console: ConsoleServer
) -> None:
    sup, ops = console.session("sgt-sup"), console.session("pc-ops")

    def banner(client: httpx.Client, path: str = "/alerts") -> str:
        text = client.get(path).text
        return text.split('id="alarms">')[1].split("</div>")[0]

    assert "mqtt_session_lost" not in banner(ops)
    assert _metric(sup, "console_mqtt_session_lost") == 0
    # The broker restarted without persistence: every session it held is gone.
    broker.stop()
    (broker.workdir / "data" / "mosquitto.db").unlink()
    broker.start()
    assert wait_until(lambda: 'data-alarm="mqtt_session_lost"' in banner(ops), 30), banner(ops)
    assert "MQTT session lost (console-sessions)" in banner(ops)  # every role, every page
    assert 'data-alarm="mqtt_session_lost"' in banner(sup, "/fleet")
    assert "/clear" not in banner(ops)  # operators see it; a supervisor clears it
    assert _metric(sup, "console_mqtt_session_lost") == 1
    assert _metric(sup, "console_mqtt_sessions_lost_total") == 1
    assert "mqtt_session_lost" in _trail(console)
    # The supervisor has followed the runbook and clears it: off the pages, on the trail.
    (alarm_id,) = [x.split('"')[0] for x in banner(sup).split('action="/alarms/')[1:]]
    alarm_url = f"/alarms/{alarm_id.split('/')[0]}/clear"
    assert sup.post(alarm_url, data={"csrf": "forged"}).status_code == 403
    assert ops.post(alarm_url, data={"csrf": csrf_of(ops)}).status_code == 403
    assert sup.post(alarm_url, data={"csrf": csrf_of(sup)}).status_code == 303
    assert "mqtt_session_lost" not in banner(ops)
    assert _metric(sup, "console_mqtt_session_lost") == 0
    assert _trail(console)[:2] == ["alarm_cleared", "mqtt_session_lost"]


