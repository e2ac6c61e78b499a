"""Nothing lost: vans publish while the end-deployment play runs and the console restarts.

Issue 21's test. A real mosquitto with the role's ACL and identities; two vans made of
the device's real parts (:class:`tests.fixtures.browser.Van`: the real
:class:`~edge.delivery.publish.Publisher` over an encrypted outbox, signed alerts, an
:class:`~edge.watchlist.audit.AuditLog` published as the daemon does); the real console
(``edge console serve``, :class:`tests.fixtures.browser.ConsoleServer`); and the real
``ansible/end-deployment.yml`` run by ``ansible-playbook`` on localhost with
``--tags mqtt`` (its MQTT step: sign, then ``mosquitto_pub`` with the play's own
certificate). While the vans publish alerts and audit entries without pause, the play
runs once with the console up and once while it is stopped, and the console starts
again. Then every alert the vans had acknowledged by the broker (all of them: their
outboxes are empty) is in the console's store, and each van's audit chain there is
verified to its last entry with no gap.

With the set-up documented before (the console and the play on one certificate, so one
client id) the play's clean start discarded the console's session: the alerts queued in
it while the console was stopped were acknowledged to the vans and never stored.

The identities are the constants below (the role's defaults); a console with another
client identity or subscription (issue 21's console work) only needs them changed.
Cost: about 40 s on the 2-core development machine under load (two console starts, two
``ansible-playbook`` runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.dev.devbroker import CONSOLE_CN, END_DEPLOYMENT_CN
from tests.fixtures.alerts import make_record
from tests.fixtures.broker import Broker
from tests.fixtures.browser import ConsoleServer, Van
from tests.fixtures.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CONSOLE_IDENTITY = CONSOLE_CN
"""The console's certificate CN (its client id at the broker)."""
PLAY_IDENTITY = END_DEPLOYMENT_CN
"""The CN of the certificate end-deployment.yml connects with (``lfr_end_deployment_cert``)."""
VANS = ("van-e2e-1", "van-e2e-2")
DEPLOYMENT = "dep-2026-11-22"  # tests.fixtures.alerts.make_record's
WAIT = 90.0


class Traffic:
    """Each van publishes an alert every ``interval`` s and an audit entry every third."""

    def __init__(self, vans: list[Van], interval: float = 0.05) -> None:
        self.vans = vans
        self.interval = interval
        self.sent: dict[str, list[str]] = {v.device_id: [] for v in vans}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            for van in self.vans:
                record = make_record(van.device_id)
                van.publisher.enqueue_alert(record)
                self.sent[van.device_id].append(record.alert_id)
                if n % 3 == 0:
                    van.audit.append("e2e_mark", n=n)
            n += 1
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def acked(self) -> int:
        return sum(v.publisher.acked for v in self.vans)


def end_deployment_play(work: Path, broker: Broker, console: ConsoleServer) -> str:
    """Run end-deployment.yml's MQTT step for every van, as the play's own identity."""
    play = broker.creds(PLAY_IDENTITY)
    inventory = work / "hosts.yml"
    if not inventory.exists():
        host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        inventory.write_text(json.dumps({"all": {
            "children": {"edge_devices": {"hosts": {
                v: {**host, "edge_device_id": v} for v in VANS}}},
            "vars": {
                "lfr_broker_address": broker.host, "lfr_broker_port": broker.port,
                "lfr_ca_cert": str(play.ca), "lfr_end_deployment_cert": str(play.cert),
                "lfr_end_deployment_key": str(play.key),
                "lfr_signing_key": str(console.signing.private),
                "lfr_edge_cli": str(VENV_BIN / "edge"),
            }}}))  # fmt: skip
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "end-deployment.yml",
         "--tags", "mqtt", "-e", f"end_deployment_id={DEPLOYMENT}"],
        cwd=ROOT / "ansible", capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"),
             "ANSIBLE_NOCOLOR": "1", "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for van in VANS:
        assert f"{van}: end_deployment published to lfr/{van}/commands" in proc.stdout
    return proc.stdout


@pytest.fixture
def fleet(broker: Broker, tmp_path: Path) -> Iterator[tuple[ConsoleServer, list[Van]]]:
    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto_pub is missing (apt-get install mosquitto-clients)")
    console = ConsoleServer(broker, tmp_path / "console", client_id=CONSOLE_IDENTITY)
    vans = [Van(broker, tmp_path / v, v, console.signing.public) for v in VANS]
    yield console, vans
    for van in vans:
        van.stop()
    console.stop()


def test_nothing_is_lost_while_the_play_runs_and_the_console_restarts(
    fleet: tuple[ConsoleServer, list[Van]], broker: Broker, tmp_path: Path,
    record_property: Any,
) -> None:
    from edge.console.store import Store

    console, vans = fleet
    assert broker.creds(CONSOLE_IDENTITY).cn != broker.creds(PLAY_IDENTITY).cn or (
        pytest.fail("the console and the play share one identity"))  # fmt: skip
    console.start()
    for van in vans:
        van.start()
    store = Store.open(f"sqlite:///{console.db}")
    traffic = Traffic(vans)
    started = time.monotonic()
    try:
        traffic.start()
        assert wait_until(lambda: len(store.alerts(limit=1000)) >= 10, WAIT), (
            console.log.read_text())
        end_deployment_play(tmp_path, broker, console)  # the console is up
        console.stop()  # maintenance: the vans keep sending, the broker queues for it
        before = traffic.acked()
        assert wait_until(lambda: traffic.acked() >= before + 20, WAIT)
        end_deployment_play(tmp_path, broker, console)  # the console is down
        assert wait_until(lambda: traffic.acked() >= before + 40, WAIT)
        console.start()
        after = traffic.acked()
        assert wait_until(lambda: traffic.acked() >= after + 20, WAIT)
    finally:
        traffic.stop()
    try:
        # Everything the vans sent was acknowledged by the broker (so deleted from their
        # outboxes: never sent again)...
        assert wait_until(lambda: all(v.publisher.pending_count == 0 for v in vans), WAIT), [
            v.publisher.last_error for v in vans]  # fmt: skip
        sent = {a for ids in traffic.sent.values() for a in ids}
        last_seq = {v.device_id: v.audit.last_seq for v in vans}

        def stored() -> set[str]:
            return {r["alert_id"] for r in store.alerts(limit=100_000)}

        def chains() -> dict[str, tuple[int, str, int]]:
            return {r["device_id"]: (int(r["verified_seq"]), str(r["state"]), int(r["received"]))
                    for r in store.audit.chains()}  # fmt: skip

        # ... and the console stored every alert, and every van's chain has no gap.
        wait_until(lambda: stored() >= sent and all(
            chains().get(v, (0, "", 0))[0] == n for v, n in last_seq.items()), WAIT)
        lost = sent - stored()
        record_property("alerts_sent", len(sent))
        record_property("alerts_lost", len(lost))
        record_property("audit_entries", sum(last_seq.values()))
        record_property("seconds", round(time.monotonic() - started, 1))
        print(f"alerts sent and acknowledged {len(sent)}, stored {len(sent) - len(lost)}, "
              f"lost {len(lost)}; audit entries {last_seq}; chains {chains()}; "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
        assert not lost, f"{len(lost)} of {len(sent)} acknowledged alerts never stored"
        for van, n in last_seq.items():
            assert chains()[van] == (n, "ok", n), (van, chains()[van], n)
    finally:
        store.close()
