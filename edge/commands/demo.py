"""``edge demo``: the whole appliance on a bundled clip, against a local broker.

It plays every part with the real programs: the control room makes its keys
and a signed, encrypted demo watchlist (``edge keys init``, ``edge watchlist
build``); a local mosquitto runs with mutual TLS and the control room's ACL;
the device runs ``edge run`` on ``demo/clip.gif`` (looping); and the control
room's subscriber ``edge alerts`` prints each alert it receives; and the control room's
web console (``edge console serve``) runs on loopback with a demo login, showing the
alert beside the subject's enrolled image, live, with the buttons that send a signed
adjudication back to the van. Ctrl-C, SIGTERM or SIGHUP (or ``--seconds``) stops
everything cleanly; the children are in their own process group and die with the demo
even if it is killed (:class:`edge.dev.children.ChildGroup`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.compat import UTC
from edge.dev.children import ChildGroup

DEVICE_ID = "demo-van-1"
ROOT = Path(__file__).resolve().parents[2]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the daemon on a bundled clip against a local broker and show the alerts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clip", type=Path, default=ROOT / "demo" / "clip.gif",
                        help="video, GIF or image folder to play (default: the bundled clip)")
    parser.add_argument("--subjects", type=Path, default=ROOT / "demo" / "subjects",
                        help="watchlist subjects folder (default: the bundled demo subject)")
    parser.add_argument("--models", type=Path, default=ROOT / "models",
                        help="models directory (default: the repository's models/)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where keys, bundle, state and crops go (default: a temp dir, "
                        "removed at exit)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop by itself after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the deployment's threshold, a similarity (default: the default "
                        "embedder's floor, [recognition.threshold_floor]; SFace's is 0.5, "
                        "above `edge eval calibrate`'s FPIR-0.001 threshold for one subject)")
    parser.set_defaults(func=run)


def _edge(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge", *args]


def _say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


class _Signalled(Exception):  # noqa: N818 (a request, like KeyboardInterrupt)
    """SIGTERM or SIGHUP: stop as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _check(group: ChildGroup, cmd: list[str], what: str, log: Path) -> None:
    with log.open("ab") as fh:
        returncode = group.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if returncode != 0:
        from edge.errors import EdgeError

        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise EdgeError(f"{what} failed: {' / '.join(tail) or 'exit ' + str(returncode)}")


def default_threshold(models: Path) -> float:
    """The default embedder's threshold floor: the demo deploys at the floor, which for one
    subject lies above what `edge eval calibrate` recommends at FPIR 0.001 (models/README.md)."""
    from edge.service.config_sections import RecognitionSettings
    from edge.vision.manifest import Manifest

    rec = RecognitionSettings()
    family = Manifest.load(models).entry(rec.model_name).family or ""
    return rec.floor_for(family)


def write_deployment_toml(path: Path, threshold: float) -> None:
    now = dt.datetime.now(UTC).replace(microsecond=0)

    def iso(t: dt.datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    path.write_text(
        "\n".join(
            [
                f'deployment_id = "DEMO-{now:%Y%m%d-%H%M%S}"',
                'location = "Demo: bundled sample video"',
                f"start = {iso(now - dt.timedelta(minutes=5))}",
                f"end = {iso(now + dt.timedelta(hours=2))}",
                'authorising_officer = "Demo Supt 0000"',
                f"approved_at = {iso(now - dt.timedelta(minutes=10))}",
                f"threshold = {threshold}",
                "signage_confirmed = true",
                "max_watchlist_size = 10",
                f"sequence = {int(now.timestamp())}",
                "",
            ]
        )
    )


def write_device_config(
    path: Path,
    *,
    device_id: str,
    state_dir: Path,
    models: Path,
    key_file: Path,
    signer_file: Path,
    source: Path,
    loop: bool,
    host: str,
    port: int,
    ca: Path,
    cert: Path,
    key: Path,
    fps: float | None = None,
    extra: str = "",
    deployment_keys_dir: Path | None = None,
) -> None:
    """A device config for a local run (the demo, the tests); ``extra`` is appended TOML.

    The device's signing key is ``<device_id>.signing.key`` beside ``key_file``, made
    when absent (on a real device the Ansible role makes it on the device)."""
    from edge.signing import generate

    signing_key, _ = generate(key_file.parent, device_id)
    path.write_text(
        f"""# Written by `edge demo`.
[device]
id = "{device_id}"
state_dir = "{state_dir}"
models_dir = "{models}"
key_file = "{key_file}"
signing_key_file = "{signing_key}"

[source]
kind = "{"folder" if source.is_dir() else "file"}"
uri = "{source}"
loop = {"true" if loop else "false"}
pace = "native"
{f"fps = {fps}" if fps else ""}

[watchlist]
bundle = "{state_dir / "watchlist.bundle"}"
signer_file = "{signer_file}"
{f'deployment_keys_dir = "{deployment_keys_dir}"' if deployment_keys_dir else ""}

[mqtt]
host = "{host}"
port = {port}
ca = "{ca}"
client_cert = "{cert}"
client_key_file = "{key}"
stats_interval_s = 10.0
{extra}"""
    )


def write_console_config(path: Path, *, work: Path, port: int, keys: Path, host: str,
                         broker_port: int, ca: Path, cert: Path, key: Path) -> None:
    """A console config for the demo: SQLite under ``work``, plain HTTP on loopback."""
    path.write_text(
        f"""# Written by `edge demo`.
[console]
database = "sqlite:///{work / "console.db"}"
listen = "127.0.0.1"
port = {port}
key_file = "{keys / "console.key"}"
signing_key = "{keys / "signing.key"}"
device_keys = "{keys}"
references_dir = "{work / "references"}"
stale_after_s = 30  # the demo van sends stats every 10 s

[mqtt]
host = "{host}"
port = {broker_port}
ca = "{ca}"
client_cert = "{cert}"
client_key_file = "{key}"
client_id = "demo-console"
"""
    )


def _wait_console(port: int, proc: subprocess.Popen[bytes], log: Path,
                  timeout: float = 120.0) -> None:  # fmt: skip
    """Wait (bounded) until the console answers and its MQTT subscriptions are granted, so
    it sees the van's first alert and its whole audit chain. The bound is generous: on a
    busy 2-core machine the console's start (migrations, its argon2 hashes, the broker's
    grants) took more than 30 s once."""
    import urllib.request

    from edge.errors import EdgeError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise EdgeError(f"the console stopped: {' '.join(tail) or proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.read() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise EdgeError(f"the console did not become ready within {timeout:g} s (see {log})")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)



def _ram_dir(work: Path) -> Path:
    """Where the demo device keeps its deployment key: a private directory on a RAM file
    system (/dev/shm) as on a real unit (/run/edge), else under ``work``."""
    from edge.watchlist.keys import is_ram_backed

    shm = Path("/dev/shm")  # noqa: S108 (a private mkdtemp directory inside it)
    if shm.is_dir() and is_ram_backed(shm) and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="edge-demo-run-", dir=shm)) / "deployment-keys"
    return work / "run" / "deployment-keys"


def _looping(clip: Path, work: Path) -> Path:
    """A file clip with an empty stretch after it, so each loop is a new passer-by
    (edge.dev.clips); an image folder plays as it is."""
    from edge.dev.clips import clip_with_gap

    if clip.is_dir():
        return clip.resolve()
    return clip_with_gap(clip.resolve(), work / "clip-loop.avi")

def run(args: argparse.Namespace) -> int:
    from edge.dev.devbroker import ALERTS_CN, CONSOLE_CN, DevBroker, free_port
    from edge.errors import UsageError

    for what, path in (("clip", args.clip), ("subjects", args.subjects),
                       ("models", args.models)):
        if not path.exists():
            raise UsageError(f"demo {what} {path} does not exist")
    own_workdir = args.workdir is None
    work: Path = args.workdir or Path(tempfile.mkdtemp(prefix="edge-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "state").mkdir(exist_ok=True, mode=0o700)
    log = work / "demo.log"
    group = ChildGroup()  # every child in one process group, each dying with the demo
    broker = DevBroker(work / "broker", spawn=group.popen)
    daemon: subprocess.Popen[bytes] | None = None
    alerts: subprocess.Popen[bytes] | None = None
    console: subprocess.Popen[bytes] | None = None
    interrupted = ""
    run_dir: Path | None = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping:  # once: the orderly stop below is not interrupted again
            raise _Signalled(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _say(f"working in {work}")
        _say("control room: signing key and device key (edge keys init)")
        _check(group, _edge("keys", "init", "--out", str(work / "keys")), "edge keys init", log)
        _check(group, _edge("keys", "init", "--out", str(work / "keys"), "--device", DEVICE_ID),
               "edge keys init --device", log)
        _check(group, _edge("keys", "init", "--out", str(work / "keys"), "--device", "console"),
               "edge keys init --device console", log)
        _say("device: this deployment's key, in RAM (edge keys deployment-key)")
        from edge.watchlist.keys import is_ram_backed

        run_dir = _ram_dir(work)
        _check(group, _edge("keys", "deployment-key", "--dir", str(run_dir),
                     *([] if is_ram_backed(run_dir) else ["--allow-persistent"])),
               "edge keys deployment-key", log)
        deployment_pub = next(run_dir.glob("*.pub"))
        (work / "console" / "references").mkdir(parents=True, exist_ok=True)
        _say("control room: signed, encrypted demo watchlist (edge watchlist build)")
        threshold = args.threshold if args.threshold is not None else default_threshold(
            args.models)
        write_deployment_toml(work / "deployment.toml", threshold)
        _check(
            group,
            _edge(
                "watchlist", "build",
                "--subjects", str(args.subjects),
                "--deployment", str(work / "deployment.toml"),
                "--signing-key", str(work / "keys" / "signing.key"),
                "--recipients", f"{DEVICE_ID}={deployment_pub}",
                "--models", str(args.models),
                "--out", str(work / "state" / "watchlist.bundle"),
                "--console-pub", str(work / "keys" / "console.pub"),
                "--references-out", str(work / "console" / "references" / "demo.refs"),
            ),
            "edge watchlist build",
            log,
        )
        _say("local mosquitto with mutual TLS on 127.0.0.1")
        broker.start()
        cr = broker.client(CONSOLE_CN)  # each control-room client its own identity
        dev = broker.client(DEVICE_ID)
        write_device_config(
            work / "edge.toml", device_id=DEVICE_ID, state_dir=work / "state",
            models=args.models.resolve(), key_file=work / "keys" / f"{DEVICE_ID}.key",
            signer_file=work / "keys" / "signing.pub", source=_looping(args.clip, work), loop=True,
            host=broker.host, port=broker.port, ca=broker.ca_cert, cert=dev.cert, key=dev.key,
            extra="\n[recognition]\ncooldown_s = 20.0\nembeds_per_track = 6\n",
            deployment_keys_dir=run_dir,
        )
        _say(f"control room subscriber (edge alerts); crops go to {work / 'crops'}")
        sub = broker.client(ALERTS_CN)
        alerts = group.popen(
            _edge("alerts", "--host", broker.host, "--port", str(broker.port),
                  "--ca", str(broker.ca_cert), "--cert", str(sub.cert), "--key", str(sub.key),
                  "--device", "+", "--save-crops", str(work / "crops"),
                  "--device-keys", str(work / "keys")),
        )
        port = free_port()
        write_console_config(
            work / "console.toml", work=work / "console", port=port, keys=work / "keys",
            host=broker.host, broker_port=broker.port, ca=broker.ca_cert, cert=cr.cert,
            key=cr.key,
        )
        password = secrets.token_urlsafe(12)
        with log.open("ab") as fh:
            add = group.popen(
                _edge("console", "user", "add", "demo", "--role", "supervisor", "--config",
                      str(work / "console.toml"), "--password-stdin"),
                stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT,
            )
            add.communicate((password + "\n").encode())
        if add.returncode != 0:
            from edge.errors import EdgeError

            raise EdgeError("edge console user add failed (see demo.log)")
        with (work / "console.log").open("ab") as clog:
            console = group.popen(
                _edge("console", "serve", "--config", str(work / "console.toml")),
                stdout=clog, stderr=subprocess.STDOUT,
            )
        _wait_console(port, console, work / "console.log")
        _say(f"control room web console: http://127.0.0.1:{port}/  "
             f"(login: demo / {password}; its log: {work / 'console.log'})")
        _say(f"device: edge run on {args.clip.name} (looping); its log: {work / 'daemon.log'}")
        with (work / "daemon.log").open("ab") as dlog:
            daemon = group.popen(
                _edge("-v", "run", "--config", str(work / "edge.toml")),
                stdout=dlog, stderr=subprocess.STDOUT,
                env={**os.environ, "EDGE_CONFIG": str(work / "edge.toml")},
            )
        _say("running; Ctrl-C stops" + (f" (or after {args.seconds:g} s)" if args.seconds else ""))
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            if daemon.poll() is not None:
                tail = (work / "daemon.log").read_text(errors="replace").strip().splitlines()
                _say("the daemon stopped: " + (tail[-1] if tail else f"exit {daemon.returncode}"))
                return 1
            if alerts.poll() is not None:
                _say(f"the control-room subscriber stopped (exit {alerts.returncode})")
                return 1
            if console.poll() is not None:
                tail = (work / "console.log").read_text(errors="replace").strip().splitlines()
                _say("the console stopped: " + (tail[-1] if tail else f"exit {console.returncode}"))
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = "Ctrl-C"
    except _Signalled as exc:
        interrupted = str(exc)
    finally:
        stopping = True
        _stop(daemon)
        _stop(alerts)
        _stop(console)
        broker.stop()
        group.kill()  # anything left (a child that ignored SIGTERM), then reaped
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if run_dir is not None:  # the deployment key goes with the demo
            shutil.rmtree(run_dir.parent if run_dir.parent.name.startswith("edge-demo-run-")
                          else run_dir, ignore_errors=True)  # fmt: skip
        if own_workdir:
            shutil.rmtree(work, ignore_errors=True)
    _say("stopped" + (f" ({interrupted})" if interrupted else ""))
    return 0
