"""Every control-room client is its own identity with only what it needs (issue 21, High).

The broker makes a certificate's CN the client id (``use_username_as_clientid``), so
clients sharing one certificate take over each other's session: the end-deployment play's
clean-start ``mosquitto_pub`` discarded the console's persistent session and every alert
queued in it. Here, against a real mosquitto with the ACL **rendered by the broker role's
own template** (``ansible`` runs it), each kind of control-room client (console,
end-deployment play, ``edge alerts``, technician) is checked to read and write exactly what
it needs; the play's identity cannot take the console's session, nor receive its
messages; and the role's ACL means the same as the dev broker's (the demo's and tests').
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.dev.devbroker import (
    CONSOLE_CN,
    CONTROL_ROOM_CLIENTS,
    CONTROL_ROOM_KINDS,
    DEVICE_IN_TOPICS,
    DEVICE_OUT_TOPICS,
    END_DEPLOYMENT_CN,
    acl_text,
    parse_acl,
)
from tests.fixtures.broker import Broker, Pki

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "ansible" / "roles" / "control_room_broker"
VENV_BIN = Path(sys.executable).parent
VAN = "van-1"
WAIT = 10.0


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def render_role_templates(out: Path, renders: dict[str, tuple[str, dict[str, Any]]]
                          ) -> dict[str, str]:  # fmt: skip
    """Render the role's templates with Ansible itself (one ``ansible-playbook`` run on
    localhost), each ``{name: (template, extra vars)}`` with the role's defaults and vars."""
    import json

    role_vars = {**_yaml(ROLE / "defaults" / "main.yml"), **_yaml(ROLE / "vars" / "main.yml")}
    tasks = [{"ansible.builtin.template": {"src": str(ROLE / "templates" / src),
                                           "dest": str(out / name)},
              "vars": {**role_vars, **extra}} for name, (src, extra) in renders.items()]
    play = out / "render.yml"
    play.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False,
                                 "tasks": tasks}]))  # fmt: skip
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-c", "local", "-i", "localhost,",
         "-e", f"ansible_python_interpreter={sys.executable}", str(play)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"),
             "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return {name: (out / name).read_text() for name in renders}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The role's ACL, and its listener configuration with and without a CRL."""
    return render_role_templates(tmp_path_factory.mktemp("role"), {
        "acl": ("acl.j2", {}),
        "lfr.conf": ("lfr.conf.j2", {"control_room_broker_crl_src": "/secrets/crl.pem"}),
        "lfr-no-crl.conf": ("lfr.conf.j2", {}),
    })  # fmt: skip


@pytest.fixture(scope="module")
def role_acl(rendered: dict[str, str]) -> str:
    return rendered["acl"]


def test_the_role_and_the_dev_broker_grant_the_same_rights(role_acl: str) -> None:
    """One definition in two languages: the role's defaults and kinds are the dev broker's
    (the demo's and the tests'), and the rendered ACLs mean the same."""
    defaults = _yaml(ROLE / "defaults" / "main.yml")
    assert {c["cn"]: c["kind"] for c in defaults["control_room_broker_clients"]} == dict(
        CONTROL_ROOM_CLIENTS
    )
    kinds = _yaml(ROLE / "vars" / "main.yml")["_control_room_broker_kinds"]
    assert set(kinds) == set(CONTROL_ROOM_KINDS)
    for name, kind in CONTROL_ROOM_KINDS.items():
        assert [f"lfr/+/{k}" for k in kinds[name]["read"]] == list(kind.read), name
        assert [f"lfr/+/{k}" for k in kinds[name]["write"]] == list(kind.write), name
    assert parse_acl(role_acl) == parse_acl(acl_text())
    # No control-room identity is shared, and none may read or write everything.
    rules = parse_acl(role_acl)
    assert not [r for r in rules if r[2] in ("#", "lfr/#")]
    assert len(set(CONTROL_ROOM_CLIENTS)) == len(CONTROL_ROOM_CLIENTS) >= 4


@pytest.fixture
def role_broker(broker_factory: Any, role_acl: str) -> Broker:
    """A real mosquitto with exactly the ACL the role installs."""
    b: Broker = broker_factory(start=False)
    b.acl_path.write_text(role_acl)
    b.start()
    return b


class Client:
    """A paho client as ``cn`` that records what it receives and each PUBACK's code."""

    def __init__(self, broker: Broker, cn: str, *, client_id: str | None = None,
                 clean_start: bool = True, expiry: int = 0) -> None:  # fmt: skip
        self.cn = cn
        self.got: list[tuple[str, bytes]] = []
        self.session_present: bool | None = None
        self._cond = threading.Condition()
        self._subacks = 0
        self.client = broker.make_client(cn, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = expiry
        self.client.connect(broker.host, broker.port, keepalive=10, clean_start=clean_start,
                            properties=props)  # fmt: skip
        self.client.loop_start()
        assert self.wait(lambda: self.session_present is not None), f"{cn}: no CONNACK"

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        with self._cond:
            self.session_present = bool(flags.session_present) if not rc.is_failure else False
            self._cond.notify_all()

    def _on_subscribe(self, *_a: Any) -> None:
        with self._cond:
            self._subacks += 1
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.got.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait(self, predicate: Any, timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def subscribe(self, *topics: str) -> None:
        before = self._subacks
        self.client.subscribe([(t, 1) for t in topics])
        assert self.wait(lambda: self._subacks > before), f"{self.cn}: no SUBACK"

    def publish(self, topic: str, payload: bytes) -> bool:
        """QoS 1; True if the broker's PUBACK says it took the message."""
        codes: list[Any] = []
        done = threading.Event()

        def on_publish(_c: Any, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
            codes.append(rc)
            done.set()

        self.client.on_publish = on_publish
        self.client.publish(topic, payload, qos=1)
        assert done.wait(WAIT), f"{self.cn}: no PUBACK on {topic}"
        return not codes[0].is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def test_each_control_room_client_reads_and_writes_only_what_it_needs(
    role_broker: Broker, clients: list[Client]
) -> None:
    def open_(cn: str, **kw: Any) -> Client:
        clients.append(Client(role_broker, cn, **kw))
        return clients[-1]

    room = {cn: open_(cn) for cn in CONTROL_ROOM_CLIENTS}
    for c in room.values():
        c.subscribe("lfr/#")
    van = open_(VAN)
    van.subscribe(*(f"lfr/{VAN}/{k}" for k in DEVICE_IN_TOPICS))
    for kind in DEVICE_OUT_TOPICS:
        assert van.publish(f"lfr/{VAN}/{kind}", kind.encode())
    # What each client may send to the van (the van is the witness of what got through).
    for cn, c in room.items():
        for kind in (*DEVICE_IN_TOPICS, "alerts"):
            allowed = f"lfr/+/{kind}" in CONTROL_ROOM_KINDS[CONTROL_ROOM_CLIENTS[cn]].write
            assert c.publish(f"lfr/{VAN}/{kind}", cn.encode()) is allowed, (cn, kind)
    wanted_by_van = sorted(
        (f"lfr/{VAN}/{k}", cn.encode()) for cn in room for k in DEVICE_IN_TOPICS
        if f"lfr/+/{k}" in CONTROL_ROOM_KINDS[CONTROL_ROOM_CLIENTS[cn]].write
    )
    assert van.wait(lambda: len(van.got) >= len(wanted_by_van))
    for cn, c in room.items():  # what each may read of the van's messages
        kind = CONTROL_ROOM_KINDS[CONTROL_ROOM_CLIENTS[cn]]
        wanted = [(f"lfr/{VAN}/{k}", k.encode()) for k in DEVICE_OUT_TOPICS
                  if f"lfr/+/{k}" in kind.read]  # fmt: skip
        assert c.wait(lambda c=c, wanted=wanted: c.got[: len(wanted)] == wanted), (cn, c.got)
    # Flush: one more message every reader may read, then nothing else has arrived.
    assert van.publish(f"lfr/{VAN}/status", b"last")
    for cn, c in room.items():
        readers = CONTROL_ROOM_KINDS[CONTROL_ROOM_CLIENTS[cn]].read
        if "lfr/+/status" in readers:
            assert c.wait(lambda c=c: (f"lfr/{VAN}/status", b"last") in c.got), cn
            wanted = [(f"lfr/{VAN}/{k}", k.encode()) for k in DEVICE_OUT_TOPICS
                      if f"lfr/+/{k}" in readers]  # fmt: skip
            assert c.got == [*wanted, (f"lfr/{VAN}/status", b"last")], cn
        else:
            assert c.got == [], cn  # the end-deployment play reads nothing at all
    assert sorted(van.got) == wanted_by_van


def test_the_play_cannot_take_the_consoles_session(
    role_broker: Broker, clients: list[Client]
) -> None:
    """The console is away (its persistent session holds what the vans send); the
    end-deployment play connects with a clean start, even asking for the console's client
    id: the broker gives it its own, so the console comes back to its session and every
    alert queued in it."""
    console = Client(role_broker, CONSOLE_CN, clean_start=False, expiry=3600)
    console.subscribe("lfr/+/alerts", "lfr/+/audit")
    console.close()
    van = Client(role_broker, VAN)
    clients.append(van)
    sent = [b"alert-%d" % i for i in range(5)]
    for payload in sent:
        assert van.publish(f"lfr/{VAN}/alerts", payload)
    play = Client(role_broker, END_DEPLOYMENT_CN, client_id=CONSOLE_CN, clean_start=True)
    clients.append(play)
    play.subscribe("$share/console/lfr/+/alerts", "lfr/#")
    assert play.publish(f"lfr/{VAN}/commands", b"end")
    assert van.publish(f"lfr/{VAN}/alerts", b"alert-5")
    sent.append(b"alert-5")
    back = Client(role_broker, CONSOLE_CN, clean_start=False, expiry=3600)
    clients.append(back)
    assert back.session_present is True
    assert back.wait(lambda: len(back.got) >= len(sent))
    assert [p for _t, p in back.got] == sent
    assert play.got == []


def test_no_other_identity_can_take_a_share_of_the_consoles_messages(
    role_broker: Broker, clients: list[Client]
) -> None:
    """mosquitto 2.0 grants every SUBSCRIBE whatever the ACL file says and round-robins a
    shared subscription's messages over its members, dropping those the chosen member may
    not read: any client of the fleet CA joining ``$share/<group>/...`` would take a share
    of the alerts and lose it. So the console holds a plain subscription of its own
    (edge/console/ingest.py): thieves joining any share group or subscribing the same
    topics get nothing, and the console gets every alert."""
    console = Client(role_broker, CONSOLE_CN)
    clients.append(console)
    console.subscribe("lfr/+/alerts")
    thieves = []
    for thief in (END_DEPLOYMENT_CN, "van-2"):
        for topic in ("$share/console/lfr/+/alerts", "lfr/+/alerts"):
            thieves.append(Client(role_broker, thief))
            clients.append(thieves[-1])
            thieves[-1].subscribe(topic)
    van = Client(role_broker, VAN)
    clients.append(van)
    sent = [b"alert-%d" % i for i in range(6)]
    for payload in sent:
        assert van.publish(f"lfr/{VAN}/alerts", payload)
    assert console.wait(lambda: len(console.got) >= len(sent), timeout=10)
    assert [p for _t, p in console.got] == sent
    assert all(t.got == [] for t in thieves)


def can_connect(broker: Broker, cn: str, timeout: float = 5.0) -> bool:
    """Whether ``cn``'s certificate gets a successful CONNACK (a revoked one fails the TLS
    handshake: no CONNACK at all)."""
    got: list[Any] = []
    done = threading.Event()
    client = broker.make_client(cn)
    client.on_connect = lambda _c, _u, _f, rc, _p: (got.append(rc), done.set())
    client.on_disconnect = lambda *_a: done.set()  # the handshake failed
    client.on_connect_fail = lambda *_a: done.set()
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except OSError:
        return False
    client.loop_start()
    try:
        done.wait(timeout)
        return bool(got) and not got[0].is_failure
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_revoked_certificate_is_refused_and_the_runbook_cuts_it_off(
    broker_factory: Any, pki: Pki, tmp_path: Path, rendered: dict[str, str]
) -> None:
    """The broker role's CRL (``control_room_broker_crl_src`` -> ``crlfile``) on a real
    mosquitto: a revoked van is refused; revoking a console instance that is connected
    (ansible/README.md, "Revoking a certificate": a new CRL, then the role restarts
    mosquitto, since a reload only checks new connections) cuts it off for good."""
    assert "crlfile /etc/mosquitto/lfr/crl.pem" in rendered["lfr.conf"].splitlines()
    assert "crlfile" not in rendered["lfr-no-crl.conf"]
    stolen, console2 = "van-stolen", "control-room-console-2"
    crl = tmp_path / "crl.pem"
    pki.authority.revocation_list([pki.client(stolen).cert], crl)
    broker = broker_factory(crl=crl)
    assert can_connect(broker, VAN)
    assert not can_connect(broker, stolen)
    assert "certificate verify failed" in broker.log_text()
    live = Client(broker, console2)  # a console instance whose certificate was lost
    try:
        # A probe is revoked with it: waiting on the reload by connecting as console2 itself
        # would take the live client's id (use_username_as_clientid) until the CRL applied.
        probe = "van-lost"
        pki.authority.revocation_list(
            [pki.client(stolen).cert, pki.client(console2).cert, pki.client(probe).cert], crl)
        assert broker._proc is not None
        broker._proc.send_signal(signal.SIGHUP)  # a reload reads the CRL for new connections
        deadline = time.monotonic() + WAIT
        while can_connect(broker, probe) and time.monotonic() < deadline:
            pass  # (each attempt is bounded)
        assert not can_connect(broker, probe)
        assert not can_connect(broker, console2)
        assert live.client.is_connected()  # ... but the one already connected stays
        broker.restart()  # what the role's handler does: every connection checked again
        assert live.wait(lambda: not live.client.is_connected(), timeout=WAIT)
        assert not can_connect(broker, console2)
        assert can_connect(broker, VAN) and can_connect(broker, CONSOLE_CN)
    finally:
        live.close()
