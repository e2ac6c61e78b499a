"""The daemon itself, live: ``edge run`` on a clip paced as a camera, timed at the control room.

    PYTHONPATH=. python benchmarks/daemon_live.py --clip CLIP --subjects DIR \\
        [--models models] [--cooldown 0] [--edge-path TREE] [--json]

Builds what a deployment needs with the real programs (control-room keys, the device's
keys, a deployment key, a signed and encrypted watchlist of ``--subjects``), starts a
local mosquitto with mutual TLS (:class:`edge.dev.devbroker.DevBroker`), runs ``edge run``
on the clip (``pace = "native"``, not looping: it exits at the end of the clip) and
subscribes as the control room (:data:`~edge.dev.devbroker.ALERTS_CN`). For each alert:
capture -> received (``captured_at`` to arrival), capture -> published (``published_at``,
stamped as the publisher hands it to MQTT) and published -> received, for every alert and
for those after ``--warmup`` seconds (the steady state). ``--edge-path``
runs another tree's ``edge`` (e.g. ``main``) on the same clip, load and machine, for a
before/after comparison. Prints p50/p95 in ms and the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DEVICE = "van-live"


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    arr = np.asarray(values) * 1000.0
    return {"p50": round(float(np.percentile(arr, 50)), 1),
            "p95": round(float(np.percentile(arr, 95)), 1)}


def _deployment(path: Path, threshold: float, subjects: int) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    def iso(t: dt.datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    path.write_text("\n".join([
        f'deployment_id = "LIVE-{now:%Y%m%d-%H%M%S}"', 'location = "Latency bench"',
        f"start = {iso(now - dt.timedelta(minutes=5))}",
        f"end = {iso(now + dt.timedelta(hours=2))}",
        'authorising_officer = "Bench 0000"',
        f"approved_at = {iso(now - dt.timedelta(minutes=10))}",
        f"threshold = {threshold}", "signage_confirmed = true",
        f"max_watchlist_size = {subjects}", f"sequence = {int(now.timestamp())}", ""]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", type=Path, required=True)
    ap.add_argument("--subjects", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--cooldown", type=float, default=0.0)
    ap.add_argument("--edge-path", type=Path, default=None,
                    help="the tree whose edge runs as the daemon (default: this one)")
    ap.add_argument("--warmup", type=float, default=5.0, metavar="S",
                    help="also report alerts captured after the clip's first S seconds "
                    "(steady state: the daemon's arming reconnect and the first frame's "
                    "all-new faces are start-up; default 5)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from edge.commands.demo import default_threshold, write_device_config
    from edge.dev.devbroker import ALERTS_CN, DevBroker
    from edge.watchlist.keys import is_ram_backed

    tree = (args.edge_path or Path(__file__).resolve().parents[1]).resolve()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    py = [sys.executable, "-m", "edge"]
    work = Path(tempfile.mkdtemp(prefix="edge-live-"))
    (work / "state").mkdir(mode=0o700)
    log = (work / "setup.log").open("ab")

    def edge(*a: str) -> None:
        subprocess.run([*py, *a], check=True, env=env, stdout=log, stderr=log, cwd=tree)

    edge("keys", "init", "--out", str(work / "keys"))
    edge("keys", "init", "--out", str(work / "keys"), "--device", DEVICE)
    run_dir = Path(tempfile.mkdtemp(prefix="edge-live-run-", dir="/dev/shm"
                                    if Path("/dev/shm").is_dir() else None))
    edge("keys", "deployment-key", "--dir", str(run_dir),
         *([] if is_ram_backed(run_dir) else ["--allow-persistent"]))
    n_subjects = sum(1 for p in args.subjects.iterdir() if p.is_dir())
    _deployment(work / "deployment.toml", default_threshold(args.models), n_subjects)
    edge("watchlist", "build", "--subjects", str(args.subjects),
         "--deployment", str(work / "deployment.toml"),
         "--signing-key", str(work / "keys" / "signing.key"),
         "--recipients", f"{DEVICE}={next(run_dir.glob('*.pub'))}",
         "--models", str(args.models), "--out", str(work / "state" / "watchlist.bundle"))
    broker = DevBroker(work / "broker")
    broker.start()
    received: dict[str, tuple[float, float, float]] = {}
    lock = threading.Lock()
    try:
        dev, cr = broker.client(DEVICE), broker.client(ALERTS_CN)
        write_device_config(
            work / "edge.toml", device_id=DEVICE, state_dir=work / "state",
            models=args.models.resolve(), key_file=work / "keys" / f"{DEVICE}.key",
            signer_file=work / "keys" / "signing.pub", source=args.clip.resolve(), loop=False,
            host=broker.host, port=broker.port, ca=broker.ca_cert, cert=dev.cert, key=dev.key,
            extra=f"\n[recognition]\ncooldown_s = {args.cooldown}\n",
            deployment_keys_dir=run_dir)
        from edge.delivery.publish import BrokerSettings, new_client
        from edge.delivery.wire import parse_rfc3339

        sub = new_client(f"{ALERTS_CN}-bench", BrokerSettings(
            broker.host, broker.port, broker.ca_cert, cr.cert, cr.key))

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            now = time.time()
            try:
                body = json.loads(msg.payload)
                item = (parse_rfc3339(body["captured_at"]), parse_rfc3339(body["published_at"]),
                        now)
            except (ValueError, KeyError, TypeError):
                return
            with lock:
                received.setdefault(body["alert_id"], item)

        ready = threading.Event()
        sub.on_message = on_message
        sub.on_subscribe = lambda *a: ready.set()
        sub.on_connect = lambda c, *a: c.subscribe(f"lfr/{DEVICE}/alerts", qos=1)
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        if not ready.wait(15):
            raise SystemExit("the control-room subscriber could not subscribe")
        started = time.monotonic()
        with (work / "daemon.log").open("ab") as dlog:
            proc = subprocess.run([*py, "run", "--config", str(work / "edge.toml")], env=env,
                                  stdout=dlog, stderr=dlog, cwd=tree, timeout=600, check=False)
        elapsed = time.monotonic() - started
        load = os.getloadavg()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the daemon flushed before it exited
            time.sleep(0.2)
            with lock:
                n = len(received)
            time.sleep(0.3)
            with lock:
                if len(received) == n:
                    break
        sub.loop_stop()
        sub.disconnect()
    finally:
        broker.stop()
    items = list(received.values())
    (work / "alerts.json").write_text(json.dumps(sorted(items)))  # (captured, published, received)
    first = min((c for c, _, _ in items), default=0.0)
    steady = [x for x in items if x[0] >= first + args.warmup]
    result = {
        "tree": str(tree), "exit": proc.returncode, "seconds": round(elapsed, 1),
        "alerts": len(items), "alerts_per_minute": round(len(items) / elapsed * 60, 1),
        "load_average": [round(v, 2) for v in load],
        "captured_to_received_ms": _pct([r - c for c, _, r in items]),
        "captured_to_published_ms": _pct([p - c for c, p, _ in items]),
        "published_to_received_ms": _pct([r - p for _, p, r in items]),
        "steady_alerts": len(steady),
        "steady_captured_to_received_ms": _pct([r - c for c, _, r in steady]),
        "steady_captured_to_published_ms": _pct([p - c for c, p, _ in steady]),
        "steady_published_to_received_ms": _pct([r - p for _, p, r in steady]),
        "workdir": str(work),
    }
    print(json.dumps(result, indent=None if not args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
