"""Login flood benchmark: many logins at once against the real ``edge console serve``; the
console's memory (RSS, peak), what it answered, how long it took, and how long a real
user's login took during the flood.

The console runs as its own process on SQLite with a real mosquitto (the dev broker).
The flood: ``--logins`` POSTs to ``/login``, ``--at-once`` in flight at a time, each from
its own loopback address (127.0.x.y: Linux routes 127/8 to ``lo``) with a user name
nobody has, so no rate limit stops them: only the console's bound on concurrent password
checks (``[console] login_concurrency``). Then a burst: ``--burst`` wrong guesses at once
on one real user from one address (how many were checked: at most the limit, 5). During
the flood a real user logs in (honouring ``Retry-After``) and the time it took is shown.

    nice .venv/bin/python benchmarks/console_login_flood.py --logins 200 --at-once 40 \\
        [--login-concurrency 2] [--json]

``--old`` leaves ``login_concurrency`` out of the configuration, for a console from before
it existed (e.g. ``PYTHONPATH=/path/to/old/checkout``). The peak is the kernel's
``VmHWM``, reset (``/proc/PID/clear_refs``) just before the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.dev.devbroker import CONTROL_ROOM_CN, DevBroker, free_port  # noqa: E402
from edge.watchlist.keys import init_device_key, init_signing_key  # noqa: E402

PASSWORD = "benchmark password"


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} for process {pid}")


def _console(work: Path, broker: DevBroker, args: argparse.Namespace
             ) -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    keys = work / "keys"
    signing, key = init_signing_key(keys), init_device_key(keys, "console")
    cr = broker.client(CONTROL_ROOM_CN)
    port = free_port()
    (work / "device-keys").mkdir()
    cfg = work / "console.toml"
    extra = "" if args.old else f"login_concurrency = {args.login_concurrency}\n"
    cfg.write_text(f"""[console]
database = "sqlite:///{work / 'console.db'}"
port = {port}
key_file = "{key.private}"
signing_key = "{signing.private}"
device_keys = "{work / 'device-keys'}"
{extra}
[mqtt]
host = "{broker.host}"
port = {broker.port}
ca = "{broker.ca}"
client_cert = "{cr.cert}"
client_key_file = "{cr.key}"
client_id = "bench-login"
""")
    edge = [sys.executable, "-m", "edge"]
    subprocess.run([*edge, "console", "user", "add", "pc-real", "--role", "operator",
                    "--config", str(cfg), "--password-stdin"],
                   input=(PASSWORD + "\n").encode(), check=True, capture_output=True)
    log = (work / "console.log").open("ab")
    proc = subprocess.Popen([*edge, "console", "serve", "--config", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).text == "ok":
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the console did not start; see " + str(work / "console.log"))


def _token(client: httpx.Client) -> str:
    return client.get("/login").text.split('name="csrf" value="')[1].split('"')[0]


def _one(url: str, i: int) -> int:
    source = f"127.0.{1 + i // 250}.{1 + i % 250}"
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, timeout=300, transport=transport) as client:
        r = client.post("/login", data={"name": f"ghost-{i}", "password": "guess-12345",
                                        "csrf": _token(client)})  # fmt: skip
        return r.status_code


def _real_user(url: str, started: threading.Event, out: dict[str, float]) -> None:
    started.wait()
    t0 = time.monotonic()
    tries = 0
    with httpx.Client(base_url=url, timeout=300) as client:
        while time.monotonic() - t0 < 300:
            tries += 1
            r = client.post("/login", data={"name": "pc-real", "password": PASSWORD,
                                            "csrf": _token(client)})  # fmt: skip
            if r.status_code == 303:
                break
            time.sleep(float(r.headers.get("retry-after", "1")))
    out.update(seconds=time.monotonic() - t0, tries=tries, ok=float(r.status_code == 303))


def _burst(url: str, n: int) -> Counter[int]:
    async def run() -> list[int]:
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.9",
                                             limits=httpx.Limits(max_connections=n + 1))
        async with httpx.AsyncClient(base_url=url, timeout=300, transport=transport) as c:
            page = (await c.get("/login")).text
            token = page.split('name="csrf" value="')[1].split('"')[0]
            rs = await asyncio.gather(*(c.post("/login", data={
                "name": "pc-real", "password": "wrong guess", "csrf": token})
                for _ in range(n)))  # fmt: skip
            return [r.status_code for r in rs]

    return Counter(asyncio.run(run()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logins", type=int, default=200)
    ap.add_argument("--at-once", type=int, default=40)
    ap.add_argument("--burst", type=int, default=60)
    ap.add_argument("--login-concurrency", type=int, default=2)
    ap.add_argument("--old", action="store_true", help="no login_concurrency in the config")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lfr-login-flood-"))
    broker = DevBroker(work / "broker")
    broker.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, url = _console(work, broker, args)
        result = _run(args, proc, url)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:32} {v}")
    return 0


def _run(args: argparse.Namespace, proc: subprocess.Popen[bytes], url: str) -> dict[str, Any]:
    pid = proc.pid
    time.sleep(1.0)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _kib(pid, "VmRSS")
    started, real = threading.Event(), dict[str, float]()
    waiter = threading.Thread(target=_real_user, args=(url, started, real))
    waiter.start()
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.at_once) as pool:
        futures = [pool.submit(_one, url, i) for i in range(args.logins)]
        started.set()
        codes = Counter(f.result() for f in futures)
    flood_s = time.monotonic() - t0
    waiter.join()
    peak = _kib(pid, "VmHWM")
    burst = _burst(url, args.burst)
    after = _kib(pid, "VmRSS")
    return {
        "logins": args.logins, "at_once": args.at_once,
        "login_concurrency": "(none: old)" if args.old else args.login_concurrency,
        "rss_before_MiB": round(before / 1024), "rss_peak_MiB": round(peak / 1024),
        "rss_after_MiB": round(after / 1024),
        "answers": dict(sorted(codes.items())), "flood_seconds": round(flood_s, 1),
        "real_user_login_seconds": round(real.get("seconds", -1), 1),
        "real_user_tries": int(real.get("tries", 0)),
        "burst_same_user": args.burst, "burst_checked_401": burst.get(401, 0),
        "burst_refused_429": burst.get(429, 0),
    }  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
