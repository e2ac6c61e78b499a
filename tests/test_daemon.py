"""``edge run`` as a real process: real models, a real mosquitto with mutual TLS,
a real signed bundle, real signals and a real sd_notify socket.

These are the daemon's end-to-end guarantees (issue "The daemon"):

- match alerts reach the control room, valid against the published schema, and a
  non-matching face leaves nothing behind: no crop, no embedding in the state
  directory, the log or any message the broker carried;
- alerts in the outbox survive a SIGKILL and are delivered after a restart;
- a broker stopped and restarted mid-stream loses no alert;
- READY/STATUS/WATCHDOG/STOPPING arrive on a real AF_UNIX socket, and the watchdog
  stops while the capture loop is stalled and resumes when it recovers;
- a corrupt model file is one clear line and a non-zero exit.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.commands.demo import write_deployment_toml, write_device_config
from edge.dev.clips import clip_with_gap
from tests.fixtures.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
# The demo clip and an empty stretch, looped: each loop is a new passer-by (edge.dev.clips).
CLIP = clip_with_gap(ROOT / "demo" / "clip.gif",
                     Path(tempfile.gettempdir()) / "lfr-edge-tests" / "demo-clip-gap.avi")
SUBJECTS = ROOT / "demo" / "subjects"
DEVICE = "van-t1"
ALERT_LOG = re.compile(r"alert ([0-9a-f-]{36}) queued")


def edge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge", *args]


@dataclass(frozen=True)
class Keys:
    directory: Path
    bundle: Path
    deployment_id: str

    @property
    def device_key(self) -> Path:
        return self.directory / f"{DEVICE}.key"

    @property
    def signer_pub(self) -> Path:
        return self.directory / "signing.pub"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """A control-room signing key, a device key and a signed demo bundle, made once."""
    d = tmp_path_factory.mktemp("keys")
    for extra in ([], ["--device", DEVICE]):
        subprocess.run(edge_cmd("keys", "init", "--out", str(d), *extra), check=True)
    # The deployment key the device makes in RAM; each test gets its own copy (device()).
    subprocess.run(edge_cmd("keys", "deployment-key", "--dir", str(d / "run"),
                            "--allow-persistent"), check=True, capture_output=True)
    write_deployment_toml(d / "deployment.toml", 0.5)
    subprocess.run(
        edge_cmd("watchlist", "build", "--subjects", str(SUBJECTS),
                 "--deployment", str(d / "deployment.toml"),
                 "--signing-key", str(d / "signing.key"),
                 "--recipients", f"{DEVICE}={next((d / 'run').glob('*.pub'))}",
                 "--models", str(MODELS), "--out", str(d / "watchlist.bundle")),
        check=True, capture_output=True,
    )
    from edge.compat import tomllib

    deployment = tomllib.loads((d / "deployment.toml").read_text())
    return Keys(d, d / "watchlist.bundle", deployment["deployment_id"])


class DaemonProc:
    """``edge -v run`` in a subprocess with its log in a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.log = config, log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProc:
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            edge_cmd("-v", "run", "--config", str(self.config)),
            stdout=fh, stderr=subprocess.STDOUT, env=self.env,
        )
        fh.close()
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alert_ids(self) -> list[str]:
        return ALERT_LOG.findall(self.text())

    def wait_log(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.text()):
                return True
            assert self.proc is not None
            if self.proc.poll() is not None:
                return predicate(self.text())
            time.sleep(0.2)
        return False

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"daemon did not exit in {timeout}s:\n{self.text()[-3000:]}"
            ) from None

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def device(tmp_path: Path, keys: Keys, broker: Any) -> Iterator[Callable[..., DaemonProc]]:
    """``device(source, loop=False, extra="", env=None) -> DaemonProc`` (not started)."""
    procs: list[DaemonProc] = []
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    shutil.copy(keys.bundle, state / "watchlist.bundle")
    run = tmp_path / "run"  # the device's RAM directory with this deployment's key
    shutil.copytree(keys.directory / "run", run)
    creds = broker.creds(DEVICE)

    def make(source: Path, loop: bool = False, extra: str = "",
             env: dict[str, str] | None = None, fps: float | None = None) -> DaemonProc:
        config = tmp_path / "edge.toml"
        write_device_config(
            config, device_id=DEVICE, state_dir=state, models=MODELS,
            key_file=keys.device_key, signer_file=keys.signer_pub, source=source, loop=loop,
            host=broker.host, port=broker.port, ca=broker.ca, cert=creds.cert, key=creds.key,
            fps=fps, extra=extra, deployment_keys_dir=run,
        )
        proc = DaemonProc(config, tmp_path / "daemon.log", env)
        procs.append(proc)
        return proc

    yield make
    for p in procs:
        if p.proc is not None and p.proc.poll() is None:
            p.kill()


def alert_payloads(recorder: Any) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in recorder.on(f"lfr/{DEVICE}/alerts")]


# --- alerts and privacy -------------------------------------------------------------


def clip_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(CLIP))
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    return frames


def nonmatch_needles() -> list[bytes]:
    """Byte patterns of every embedding of the passer-by (the woman, left half of the
    clip) computed the way the daemon does: raw float32/float64 and base64 of them."""
    from edge.vision.faces import FaceEngine

    engine = FaceEngine.from_models(MODELS, precision="int8")
    needles: list[bytes] = []
    for frame in clip_frames():
        width = frame.shape[1]
        for face in engine.analyse(frame):
            x1, _, x2, _ = face.detection.box
            if (x1 + x2) / 2 < width / 2:
                emb = engine.embed([face.chip])[0]
                for raw in (emb.astype(np.float32).tobytes()[:16],
                            emb.astype(np.float64).tobytes()[:24]):
                    needles += [raw, base64.b64encode(raw)[:16]]
    assert needles, "the passer-by was never detected: the test would prove nothing"
    return needles


def test_alerts_arrive_and_nonmatch_faces_leave_nothing(
    device: Callable[..., DaemonProc], broker: Any, tmp_path: Path
) -> None:
    import jsonschema

    recorder = broker.recorder()
    daemon = device(CLIP, loop=False).start()
    assert daemon.wait(240) == 0, daemon.text()[-3000:]
    assert recorder.wait_for(lambda ms: any(m.topic.endswith("/alerts") for m in ms), 10)

    alerts = alert_payloads(recorder)
    schema = json.loads((ROOT / "edge" / "schemas" / "alert.v1.json").read_text())
    width = cv2.VideoCapture(str(CLIP)).get(cv2.CAP_PROP_FRAME_WIDTH)
    for alert in alerts:
        jsonschema.validate(alert, schema)
        assert alert["subject_id"] == "DEMO-0001"
        box = alert["bbox"]
        assert box["x"] + box["w"] / 2 > width / 2, "an alert on the passer-by (left half)"
    assert {a["alert_id"] for a in alerts} == set(daemon.alert_ids())
    assert_nothing_of_nonmatches_left(daemon, recorder, alerts, tmp_path / "state")


def assert_nothing_of_nonmatches_left(
    daemon: DaemonProc, recorder: Any, alerts: list[dict[str, Any]], state_dir: Path
) -> None:
    """No JPEG and no non-match embedding in the log, in anything the broker carried
    (except the matched face in the alerts) or in the state files."""
    carried = [m.payload for m in recorder.messages if not m.topic.endswith("/alerts")]
    carried += [json.dumps({k: v for k, v in a.items() if k != "face_jpeg_b64"}).encode()
                for a in alerts]
    state_files = [p.read_bytes() for p in state_dir.rglob("*") if p.is_file()]
    blobs = {"log": daemon.text().encode(), **{f"message {i}": b for i, b in enumerate(carried)},
             **{f"state file {i}": b for i, b in enumerate(state_files)}}
    for name, blob in blobs.items():
        assert b"\xff\xd8\xff" not in blob, f"a JPEG in {name}"
        assert b"/9j/" not in blob, f"a base64 JPEG in {name}"
    for needle in nonmatch_needles():
        for name, blob in blobs.items():
            assert needle not in blob, f"a non-match embedding in {name}"


# --- durability ----------------------------------------------------------------------


def test_alerts_in_the_outbox_survive_sigkill(
    device: Callable[..., DaemonProc], broker: Any
) -> None:
    broker.stop()
    daemon = device(CLIP, loop=True, extra="\n[recognition]\ncooldown_s = 0.0\n").start()
    assert daemon.wait_log(lambda t: len(ALERT_LOG.findall(t)) >= 2, 180), daemon.text()[-3000:]
    daemon.kill()
    queued = set(daemon.alert_ids())

    broker.start()
    recorder = broker.recorder()
    daemon.start()
    delivered = recorder.wait_for(
        lambda ms: queued <= {json.loads(m.payload)["alert_id"]
                              for m in ms if m.topic.endswith("/alerts")}, 120)
    assert daemon.terminate() == 0
    got = {a["alert_id"] for a in alert_payloads(recorder)}
    assert delivered, f"missing after restart: {queued - got}"


def blinking_folder(directory: Path) -> Path:
    """Frames of the clip separated by empty frames, so each appearance is a new track."""
    directory.mkdir()
    frames = clip_frames()
    blank = np.full_like(frames[0], 128)
    n = 0
    for i in range(0, len(frames), 8):
        for img in [frames[i], frames[i + 1 if i + 1 < len(frames) else i]] + [blank] * 12:
            cv2.imwrite(str(directory / f"{n:05d}.png"), img)
            n += 1
    return directory


def test_broker_restart_mid_stream_loses_no_alert(
    device: Callable[..., DaemonProc], broker: Any, tmp_path: Path
) -> None:
    source = blinking_folder(tmp_path / "frames")
    recorder = broker.recorder()
    daemon = device(source, loop=True, fps=25.0,
                    extra="\n[recognition]\ncooldown_s = 0.0\n").start()
    assert recorder.wait_for(lambda ms: len(alert_payloads(recorder)) >= 2, 180), (
        daemon.text()[-3000:]
    )
    broker.stop()
    before = len(daemon.alert_ids())
    assert daemon.wait_log(lambda t: len(ALERT_LOG.findall(t)) >= before + 2, 120)
    broker.start()
    target = len(daemon.alert_ids()) + 2
    assert daemon.wait_log(lambda t: len(ALERT_LOG.findall(t)) >= target, 120)
    assert daemon.terminate() == 0  # SIGTERM flushes the outbox
    produced = set(daemon.alert_ids())
    assert recorder.wait_for(
        lambda ms: produced <= {a["alert_id"] for a in alert_payloads(recorder)}, 30
    )
    ids = [a["alert_id"] for a in alert_payloads(recorder)]
    assert set(ids) == produced, "every alert arrives, and nothing that was not produced"
    # Redelivery may repeat a message; deduplication by alert_id makes it exact.
    assert len(set(ids)) == len(produced)


def test_signed_end_command_disarms_shreds_and_publishes_summary(
    device: Callable[..., DaemonProc], broker: Any, keys: Keys, tmp_path: Path
) -> None:
    recorder = broker.recorder()
    daemon = device(CLIP, loop=True).start()
    state = tmp_path / "state"

    def armed(ms: list[Any]) -> bool:
        return any(m.topic.endswith("/status") and json.loads(m.payload).get("armed") is True
                   for m in ms)

    assert recorder.wait_for(armed, 120), daemon.text()[-3000:]
    # An officer adjudicates the first alert (safeguard 8: a human decides).
    assert recorder.wait_for(lambda ms: bool(alert_payloads(recorder)), 120), daemon.text()[-3000:]
    alert_id = alert_payloads(recorder)[0]["alert_id"]
    cr = broker.control_room
    subprocess.run(
        edge_cmd("alerts", "adjudicate", "--host", broker.host, "--port", str(broker.port),
                 "--ca", str(cr.ca), "--cert", str(cr.cert), "--key", str(cr.key),
                 "--alert-id", alert_id, "--device", DEVICE, "--decision", "confirmed",
                 "--officer", "PC 4242", "--signing-key", str(keys.directory / "signing.key")),
        check=True, capture_output=True, timeout=60,
    )
    # The device records it in its audit log, which it also publishes.
    assert recorder.wait_for(
        lambda ms: any(m.topic.endswith("/audit")
                       and json.loads(m.payload)["event"] == "adjudication"
                       for m in ms), 30), daemon.text()[-3000:]
    command = tmp_path / "end.json"
    subprocess.run(
        edge_cmd("watchlist", "end-command", "--signing-key", str(keys.directory / "signing.key"),
                 "--device", DEVICE, "--deployment", keys.deployment_id, "--out", str(command)),
        check=True, capture_output=True,
    )
    control = broker.client("control-room")
    control.publish(f"lfr/{DEVICE}/commands", command.read_bytes(), qos=1).wait_for_publish(10)

    def ended(ms: list[Any]) -> bool:
        return any(m.topic.endswith("/deployment") and json.loads(m.payload).get("state") == "ended"
                   for m in ms)

    assert recorder.wait_for(ended, 60), daemon.text()[-3000:]
    summary = next(json.loads(m.payload) for m in recorder.messages
                   if m.topic.endswith("/deployment") and b'"ended"' in m.payload)
    for key in ("deployment_id", "location", "watchlist_size", "faces_processed", "alerts",
                "adjudications"):
        assert key in json.dumps(summary), f"summary lacks {key}: {summary}"
    assert '"confirmed": 1' in json.dumps(summary), f"adjudication not counted: {summary}"
    # Disarmed now: the device's current status (its latest) says so. (Not "among the last
    # N messages": under load the summary, stats and audit entries can come after it.)
    def disarmed(ms: list[Any]) -> bool:
        statuses = [m for m in ms if m.topic.endswith("/status")]
        return bool(statuses) and json.loads(statuses[-1].payload).get("armed") is False

    assert recorder.wait_for(disarmed, 30), daemon.text()[-3000:]
    assert not (state / "watchlist.bundle").exists(), "the bundle was not shredded"
    assert daemon.terminate() == 0
    audit = subprocess.run(edge_cmd("audit", "verify", str(state / "audit.log")),
                           capture_output=True, text=True, check=False)
    assert audit.returncode == 0, audit.stderr


def test_sighup_loads_a_bundle_copied_in_later(
    device: Callable[..., DaemonProc], broker: Any, keys: Keys, tmp_path: Path
) -> None:
    bundle = tmp_path / "state" / "watchlist.bundle"
    bundle.unlink()  # start with no watchlist: disarmed, frames dropped unread
    recorder = broker.recorder()
    daemon = device(CLIP, loop=True).start()

    def status(armed: bool) -> Callable[[list[Any]], bool]:
        return lambda ms: any(m.topic.endswith("/status")
                              and json.loads(m.payload).get("armed") is armed
                              and json.loads(m.payload).get("state") == "online" for m in ms)

    assert recorder.wait_for(status(False), 120), daemon.text()[-3000:]
    # The clip plays on while disarmed (a stats message with frames flowing, unread), and
    # no alert comes of it: a condition, not a fixed sleep that a busy machine outruns.
    assert recorder.wait_for(lambda ms: any(
        m.topic.endswith("/stats") and json.loads(m.payload).get("armed") is False
        and json.loads(m.payload).get("fps", 0) > 0 for m in ms), 60), daemon.text()[-3000:]
    assert not alert_payloads(recorder), "an alert while disarmed"
    shutil.copy(keys.bundle, bundle)  # what deploy-watchlist.yml does, then reloads
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    assert recorder.wait_for(status(True), 60), daemon.text()[-3000:]
    assert recorder.wait_for(lambda ms: bool(alert_payloads(recorder)), 120)
    assert daemon.terminate() == 0


# --- systemd -------------------------------------------------------------------------


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def seen(self, prefix: str) -> list[float]:
        return [t for t, m in list(self.messages) if m.startswith(prefix)]

    def wait(self, prefix: str, timeout: float, after: float = 0.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(t > after for t in self.seen(prefix)):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_sd_notify_and_watchdog_follow_the_capture_loop(
    device: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    fifo = tmp_path / "camera.gif"
    os.mkfifo(fifo)  # opening it blocks until a writer comes: a camera that hangs
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        daemon = device(fifo, loop=False, extra="\n[health]\nmax_age_s = 2.0\n",
                        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
        daemon.start()
        assert notify.wait("READY=1", 120), daemon.text()[-3000:]
        assert notify.seen("STATUS=")
        # The capture thread is stuck in open(): once its check-in is older than
        # max_age_s the pings stop, while the process and its other loops run on.
        def quiet_for(seconds: float) -> bool:
            pings = notify.seen("WATCHDOG=1")
            return bool(pings) and time.monotonic() - pings[-1] > seconds

        assert wait_until(lambda: quiet_for(1.0), 60), "the pings never stopped"  # 5 periods
        stalled_at = time.monotonic()
        time.sleep(2.0)  # the observation window itself: no ping in it
        assert not [t for t in notify.seen("WATCHDOG=1") if t > stalled_at], "pinged while stalled"
        assert daemon.proc is not None and daemon.proc.poll() is None
        # The camera comes back: frames flow, check-ins resume, and so do the pings.
        recovered_at = time.monotonic()
        with fifo.open("wb") as w:
            w.write(CLIP.read_bytes())
        assert notify.wait("WATCHDOG=1", 30, after=recovered_at), daemon.text()[-3000:]
        assert daemon.wait(120) == 0  # a non-looping source ends the run cleanly
        assert notify.seen("STOPPING=1")
        assert "stalled" in daemon.text() or "stale" in daemon.text()
    finally:
        notify.close()


# --- user errors ---------------------------------------------------------------------


def test_corrupt_model_is_one_clear_line(
    device: Callable[..., DaemonProc], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("build", "*.py"))
    target = models / "sface_2021dec_int8.tflite"  # the default embedder's file
    target.write_bytes(target.read_bytes()[:1000])
    daemon = device(CLIP)
    daemon.config.write_text(daemon.config.read_text().replace(str(MODELS), str(models)))
    proc = subprocess.run(edge_cmd("run", "--config", str(daemon.config)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "sface_2021dec_int8.tflite" in lines[0]


def test_a_camera_that_cannot_work_exits_non_zero(device: Callable[..., DaemonProc]) -> None:
    """A fatal source error (here: picamera2 without libcamera) ends the run with the
    source's exit code, so systemd's Restart=on-failure restarts or reports the unit."""
    env = {"EDGE_SOURCE__KIND": "picamera2", "EDGE_SOURCE__URI": "0"}
    daemon = device(CLIP, env=env).start()
    code = daemon.wait(120)
    assert code == 7, daemon.text()[-3000:]
    assert "camera failed" in daemon.text()
