"""The alert worker and the outbox's batches (issue 20): order, nothing lost, bounded.

A real outbox, a real publisher and, where delivery is checked, a real mosquitto with
mutual TLS (tests/fixtures/broker.py). No fixed sleeps: every wait is on a condition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.delivery.alert import parse_alert
from edge.delivery.alert_worker import AlertWorker, AlertWorkerStopped
from edge.delivery.held import HeldQueue
from edge.delivery.outbox import Outbox, OutboxFull
from edge.delivery.publish import Publisher
from tests.fixtures.alerts import make_record
from tests.fixtures.broker import Broker, Received
from tests.fixtures.publishers import OUTBOX_KEY
from tests.fixtures.wait import wait_until

WAIT = 20.0


@pytest.fixture
def rig(broker: Broker, make_publisher: Callable[..., Publisher]) -> Callable[..., Publisher]:
    """A publisher on ``broker`` over an outbox made with ``outbox_kw``; RAM holds 2."""

    def make(**outbox_kw: object) -> Publisher:
        return make_publisher(broker, "dev-a", outbox_kw=outbox_kw, held=HeldQueue(max_items=2))

    return make


def test_stop_stores_every_submitted_alert_in_order(rig: Callable[..., Publisher]) -> None:
    pub = rig()  # not started: nothing is delivered, so the outbox shows what was stored
    worker = AlertWorker(pub, maxsize=8, batch=5)
    worker.start()
    records = [make_record(track_id=i) for i in range(60)]
    for i in range(0, 60, 3):
        worker.submit(records[i : i + 3])  # as the inference loop: a frame's alerts
    assert worker.stop(timeout=WAIT)
    stored = [item.msg_id for item in pub.outbox.pending(limit=100)]
    assert stored == [r.alert_id for r in records]  # nothing lost, in order
    assert worker.stored == 60 and worker.pending == 0 and not worker.take_failures()
    with pytest.raises(AlertWorkerStopped):
        worker.submit([make_record()])


def test_a_full_queue_makes_the_submitter_wait_and_drops_nothing(
    rig: Callable[..., Publisher],
) -> None:
    pub = rig()
    worker = AlertWorker(pub, maxsize=2)  # not started yet: nothing leaves the queue
    records = [make_record(track_id=i) for i in range(3)]
    worker.submit(records[:2])
    done = threading.Event()
    def submit_third() -> None:
        worker.submit(records[2:])
        done.set()

    submitter = threading.Thread(target=submit_third)
    submitter.start()
    assert wait_until(lambda: worker.waits == 1)  # the third waits for room ...
    assert not done.is_set() and worker.pending == 2
    worker.start()  # ... and goes in once the worker takes the first ones
    assert done.wait(WAIT)
    submitter.join(WAIT)
    assert worker.stop(timeout=WAIT)
    assert [i.msg_id for i in pub.outbox.pending(10)] == [r.alert_id for r in records]


def test_a_batch_the_outbox_refuses_is_stored_one_by_one_and_the_rest_reported(
    rig: Callable[..., Publisher],
) -> None:
    pub = rig(max_items=3)  # the outbox takes 3, RAM holds 2 more, the 6th is refused
    worker = AlertWorker(pub, batch=6)
    records = [make_record(track_id=i) for i in range(6)]
    worker.submit(records)
    worker.start()
    assert worker.stop(timeout=WAIT)
    assert [i.msg_id for i in pub.outbox.pending(10)] == [r.alert_id for r in records[:3]]
    assert [i.msg_id for i in pub.held.items()] == [r.alert_id for r in records[3:5]]
    failures = worker.take_failures()
    assert [(f[0], f[1]) for f in failures] == [(records[5].alert_id, "outbox_full")]
    assert worker.stored == 5


def test_alerts_through_the_worker_reach_the_control_room_in_order_and_leave_the_outbox(
    broker: Broker, rig: Callable[..., Publisher],
) -> None:  # fmt: skip
    rec = broker.recorder(topics=["lfr/dev-a/alerts"])
    pub = rig()
    pub.start()
    assert pub.wait_connected(WAIT), pub.last_error
    worker = AlertWorker(pub)
    worker.start()
    records = [make_record(track_id=i) for i in range(40)]
    for i in range(0, 40, 4):
        worker.submit(records[i : i + 4])
    assert worker.stop(timeout=WAIT)
    want = [r.alert_id for r in records]

    def got(messages: list[Received]) -> list[str]:
        return [parse_alert(m.payload)["alert_id"] for m in messages]

    assert rec.wait_for(lambda m: got(m) == want, WAIT), got(rec.messages)
    assert wait_until(lambda: pub.pending_count == 0)  # every PUBACKed row deleted
    assert pub.acked == 40


def test_put_many_is_all_or_nothing_and_flags_duplicates(tmp_path: Path) -> None:
    with Outbox(tmp_path / "ob.db", OUTBOX_KEY, max_items=4) as ob:
        assert ob.put("a", "t/alerts", b"1")
        assert ob.put_many([("b", "t/alerts", b"2", False), ("a", "t/alerts", b"x", False),
                            ("b", "t/alerts", b"y", False)]) == [True, False, False]
        with pytest.raises(OutboxFull):
            ob.put_many([("c", "t/alerts", b"3", False), ("d", "t/alerts", b"4", False),
                         ("e", "t/alerts", b"5", False)])  # fmt: skip
        assert [(i.msg_id, i.payload) for i in ob.pending()] == [("a", b"1"), ("b", b"2")]


def test_ack_many_deletes_all_but_a_held_row_and_mark_sent_many_keeps_first_times(
    tmp_path: Path,
) -> None:
    with Outbox(tmp_path / "ob.db", OUTBOX_KEY) as ob:
        ob.put_many([(m, "t/alerts", m.encode(), False) for m in ("a", "b", "c")])
        assert ob.mark_sent_many(["a", "b", "gone"], 100.0) == [100.0, 100.0, None]
        assert ob.mark_sent_many(["a", "c"], 200.0) == [100.0, 200.0]  # the first stays
        assert ob.set_legal_hold("b", True)
        assert ob.ack_many(["a", "b", "gone"]) == 2
        assert [i.msg_id for i in ob.pending()] == ["c"]
        assert ob.get("a") is None and ob.get("b") is not None  # held: kept, delivered
        assert ob.stats().pending == 1
