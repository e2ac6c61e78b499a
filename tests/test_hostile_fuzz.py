"""Hypothesis fuzz of the control-room message path (issue 15): 2 x 5,000 generated
messages on ``commands`` and ``adjudications`` through the real handlers, in the order
the daemon runs them: paho's ``on_message`` callback of a real :class:`Publisher`
(its :class:`InboundGate`), then the daemon's :func:`apply_inbound` on a real, armed
:class:`DeploymentManager` with a real audit log.

Nothing may escape (no exception from either stage, no ``inbound_failed``), and nothing
may be wrongly accepted: an accepted adjudication or command must be one the control
room's key really signed, and each only once.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.delivery.inbound import Inbound, InboundGate
from edge.delivery.outbox import Outbox
from edge.delivery.publish import BrokerSettings, Publisher
from edge.service.daemon import apply_inbound
from edge.watchlist.adjudication import sign_adjudication
from edge.watchlist.audit import AuditLog
from edge.watchlist.deployment import DeploymentManager
from edge.watchlist.signed_commands import make_command
from tests.bundle_kit import EMBEDDER_SHA, NOW, embeddings, make_bundle, make_kit

DEVICE = "van-01"
EXAMPLES = 5_000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])  # fmt: skip
ALERTS = [f"01937c3e-0000-7000-8000-{i:012x}" for i in range(4)]
KIT = make_kit()
T0 = NOW.timestamp()
GENUINE_ADJUDICATION = sign_adjudication(KIT.signer, device_id=DEVICE, alert_id=ALERTS[0],
                                         decision="confirmed", officer="PC 1", at=T0 - 5)
GENUINE_COMMAND = make_command(KIT.signer, "legal_hold", DEVICE, "D-2026-0042",
                               args={"alert_ids": ALERTS[:1], "on": True},
                               issued_at=dt.datetime.fromtimestamp(T0 - 5, dt.UTC))


class World:
    """The device side: publisher (not connected) -> gate -> inbox -> deployment."""

    def __init__(self, state: Path) -> None:
        self.kit = KIT
        self.now = T0
        self.audit = AuditLog(state / "audit.log", clock=lambda: self.now)
        self.deployment = DeploymentManager(
            state, DEVICE, self.kit.device, self.kit.trusted, threshold_floor=0.4,
            max_subjects=100, expected_embedder_sha256=EMBEDDER_SHA, audit=self.audit,
            clock=lambda: self.now, set_legal_hold=lambda _a, _on: True,
            deployment_keys_dir=self.kit.install(state / "run"),
        )  # fmt: skip
        (state / "watchlist.bundle").write_bytes(make_bundle(self.kit, emb=embeddings(5)))
        assert self.deployment.load(state / "watchlist.bundle").armed
        for a in ALERTS:
            self.deployment.note_alert(a)
        self.outbox = Outbox(state / "outbox.db", os.urandom(32))
        self.publisher = Publisher(DEVICE, BrokerSettings("127.0.0.1", 1, None, None, None),
                                   self.outbox)  # fmt: skip
        self.inbox: list[Inbound] = []
        ticks = iter(range(10**9))
        # The real gate, on a clock that moves a second per message: no rate limit here.
        self.publisher.state.gate = InboundGate(self._deliver, clock=lambda: float(next(ticks)))
        self.outcomes: dict[str, int] = {}
        self.signed_adjudications = {(ALERTS[0], "confirmed")}
        self.signed_nonces = {json.loads(json.loads(GENUINE_COMMAND)["body"])["nonce"]}
        self.accepted: list[tuple[str, Any]] = []

    def _deliver(self, msg: Inbound) -> bool:
        if len(self.inbox) >= 64:
            return False
        self.inbox.append(msg)
        return True

    def receive(self, kind: str, payload: bytes, retain: bool) -> None:
        msg = mqtt.MQTTMessage(topic=f"lfr/{DEVICE}/{kind}".encode())
        msg.payload = payload
        msg.retain = retain
        self.publisher.clients.on_message(self.publisher.client, None, msg)  # never raises
        while self.inbox:
            item = self.inbox.pop(0)
            before = self.audit.last_seq
            outcome = apply_inbound(self.deployment, self.audit, item, self.now)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            if outcome == "accepted":
                self.accepted.append((item.kind, self._last_accepted(before)))

    def _last_accepted(self, before: int) -> Any:
        lines = self.audit.path.read_text().splitlines()[before:]
        entries = [json.loads(x) for x in lines]
        return [e for e in entries if e["event"] in ("adjudication", "command_accepted",
                                                     "legal_hold")]  # fmt: skip


@pytest.fixture
def world() -> Iterator[World]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None  # fsync-free, fast
    with tempfile.TemporaryDirectory(dir=base) as d:
        w = World(Path(d))
        logging.getLogger("edge").setLevel(logging.ERROR)
        try:
            yield w
        finally:
            logging.getLogger("edge").setLevel(logging.NOTSET)
            w.outbox.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for pos, value in edits:
        b[pos % len(b)] = value
    return bytes(b)


def _reshape(data: bytes, key: str, value: Any) -> bytes:
    doc = json.loads(data)
    doc[key] = value
    return json.dumps(doc).encode()


def _resign_body(data: bytes, body_key: str, value: Any) -> bytes:
    """Change one body field and keep the old signature (a forgery)."""
    doc = json.loads(data)
    body = json.loads(doc["body"])
    body[body_key] = value
    doc["body"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return json.dumps(doc).encode()


ADJ, CMD = GENUINE_ADJUDICATION, GENUINE_COMMAND
BASE = st.sampled_from([ADJ, CMD])
MESSAGES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n, c: bytes([c]) * n, st.integers(4000, 70_000), st.integers(0, 255)),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.integers(1, 40_000).map(lambda n: b"[" * n),
    st.integers(1, 3_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.tuples(BASE, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                             min_size=1, max_size=6)).map(lambda t: _mutate(*t)),
    st.tuples(BASE, st.sampled_from(["format", "signer", "body", "signature", "extra"]),
              json_values).map(lambda t: _reshape(*t)),
    st.tuples(st.just(ADJ), st.sampled_from(["alert_id", "decision", "device_id", "officer",
                                             "at"]), json_values).map(lambda t: _resign_body(*t)),
    st.tuples(st.just(CMD), st.sampled_from(["command", "device_id", "nonce", "args",
                                             "expires_at"]), json_values).map(
        lambda t: _resign_body(*t)),
    BASE,  # the genuine ones, replayed: accepted at most once
    st.just(base64.b64encode(ADJ)),
)  # fmt: skip


def _fuzz(world: World, kind: str) -> None:
    seen = {"n": 0}

    @FUZZ
    @given(payload=MESSAGES, retain=st.sampled_from([False, False, False, True]))
    def run(payload: bytes, retain: bool) -> None:
        world.receive(kind, payload, retain)
        seen["n"] += 1

    run()
    assert seen["n"] >= EXAMPLES - 100
    assert world.outcomes.get("failed", 0) == 0, world.outcomes
    assert world.outcomes.get("refused", 0) > EXAMPLES // 2, world.outcomes


def test_fuzzed_adjudications_never_escape_and_only_real_ones_are_recorded(
    world: World,
) -> None:
    _fuzz(world, "adjudications")
    recorded = [(e["alert_id"], e["decision"]) for kind, es in world.accepted for e in es
                if kind == "adjudications"]  # fmt: skip
    assert recorded, "the genuine adjudication was never accepted: the test proves little"
    assert len(recorded) == len(set(recorded)), "an adjudication recorded twice"
    assert set(recorded) <= world.signed_adjudications


def test_fuzzed_commands_never_escape_and_only_real_ones_are_accepted(world: World) -> None:
    _fuzz(world, "commands")
    nonces = [e["nonce"] for kind, es in world.accepted for e in es if kind == "commands"]
    assert nonces, "the genuine command was never accepted: the test proves little"
    assert len(nonces) == len(set(nonces)), "a command accepted twice"
    assert set(nonces) <= world.signed_nonces
