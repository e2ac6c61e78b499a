"""The fault-injection soak behind issue 15's figures (slow; run on demand).

    HOSTILE_SOAK_S=240 .venv/bin/pytest -q -s -m slow tests/test_hostile_soak.py

One daemon process, a real mosquitto, a persistent-session subscriber counting every
``alert_id``, the state directory on an 8 MiB tmpfs. For ``HOSTILE_SOAK_S`` seconds:
a poison or replayed message on ``commands``/``adjudications`` every 0.5 s, the state
disk filled for 10 s every 40 s, the broker SIGKILLed and restarted every 60 s. Then
SIGTERM, and every alert the daemon logged as queued must have reached the subscriber;
the daemon must never have exited. Prints the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.watchlist.adjudication import sign_adjudication
from tests import test_daemon as td
from tests import test_hostile_daemon as thd
from tests.fixtures.smalldisk import mounted

keys = td.keys
device = td.device
SOAK_S = float(os.environ.get("HOSTILE_SOAK_S", "0"))


@pytest.mark.slow
@pytest.mark.skipif(SOAK_S <= 0, reason="set HOSTILE_SOAK_S=<seconds> to run the soak")
def test_soak_under_every_fault_at_once(
    device: Callable[..., td.DaemonProc], broker: Any, keys: td.Keys, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    notify = td.NotifySocket(tmp_path / "notify.sock")
    with mounted(state, "8m") as disk:
        shutil.copy(keys.bundle, state / "watchlist.bundle")
        recorder = broker.recorder(client_id="soak-recorder", session_expiry=3600)
        daemon = device(td.blinking_folder(tmp_path / "frames"), loop=True, fps=25.0,
                        extra=thd.COOLDOWN, env={"NOTIFY_SOCKET": str(notify.path),
                                                 "WATCHDOG_USEC": "5000000"})  # fmt: skip
        daemon.start()
        key = thd._signer(keys)
        counts = {"poison": 0, "replays": 0, "disk_fills": 0, "broker_kills": 0}
        try:
            assert daemon.wait_log(lambda t: "alert " in t and "queued" in t, 180)
            control = broker.client("control-room-tools")
            start = time.monotonic()
            next_fill, next_kill, i = start + 40, start + 60, 0
            while time.monotonic() - start < SOAK_S:
                now = time.monotonic()
                if now >= next_fill:
                    disk.fill()
                    counts["disk_fills"] += 1
                    time.sleep(10)
                    disk.free()
                    next_fill = time.monotonic() + 40
                if now >= next_kill:
                    broker.stop(kill=True)
                    counts["broker_kills"] += 1
                    time.sleep(3)
                    broker.start()
                    control = broker.client("control-room-tools")
                    next_kill = time.monotonic() + 60
                kind = ("commands", "adjudications")[i % 2]
                ids = daemon.alert_ids()
                if i % 10 == 9 and ids:
                    payload = sign_adjudication(key, device_id=td.DEVICE, alert_id=ids[0],
                                                decision="confirmed", officer="PC 1",
                                                at=time.time())  # fmt: skip
                    kind, counts["replays"] = "adjudications", counts["replays"] + 1
                else:
                    payload = thd.POISON[i % len(thd.POISON)]
                    counts["poison"] += 1
                with contextlib.suppress(Exception):  # the broker may be down right now
                    control.publish(f"lfr/{td.DEVICE}/{kind}", payload, qos=1)
                i += 1
                time.sleep(0.5)
            assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon exited"
            assert daemon.terminate(60) == 0
            produced = set(daemon.alert_ids())
            recorder.wait_for(lambda ms: produced <= {
                a["alert_id"] for a in td.alert_payloads(recorder)}, 120)
            received = [a["alert_id"] for a in td.alert_payloads(recorder)]
            entries = [json.loads(x) for x in (state / "audit.log").read_text().splitlines()]
            recorded = [e for e in entries if e["event"] == "adjudication"]
            starts = [e for e in entries if e["event"] == "daemon_start"]
            print(f"\nsoak {SOAK_S:g} s: {counts}; alerts produced {len(produced)}, "
                  f"received {len(set(received))}, lost {len(produced - set(received))}, "
                  f"duplicate deliveries {len(received) - len(set(received))} "
                  f"(0 after dedup), daemon starts {len(starts)} (restarts "
                  f"{len(starts) - 1}), adjudications recorded {len(recorded)}, "
                  f"client rebuilds {daemon.text().count('MQTT client rebuilt')}, "
                  f"disk-full periods audited "
                  f"{sum(e['event'] == 'disk_writable_again' for e in entries)}")
            assert produced <= set(received), f"lost: {produced - set(received)}"
            assert set(received) <= produced
            assert len(starts) == 1 and len(recorded) == 1
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.kill()
            notify.close()
