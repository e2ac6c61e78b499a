"""Converge the Ansible roles on a real systemd host and check what they built.

A fresh Debian bookworm boots under ``systemd-nspawn --boot`` (systemd is PID 1;
see tests/fixtures/nspawn.py). ``ansible-playbook site.yml`` then provisions,
over SSH, both the control-room broker (mosquitto, mutual TLS, the per-device
ACL) and one edge device on it. The container shares the host's network
namespace, so the broker the role configured is on 127.0.0.1 for the device,
and for this test acting as the control room and as a second device.

Checks: the unit is active (Type=notify: active means READY=1 was sent), the
watchdog is armed, the daemon runs as the dedicated user with the hardening in
force, it publishes ``online`` on its status topic over mutual TLS, a device
cannot publish under another device's topic, the device's keys are made on the
device (no device private key on the controller), deploy-watchlist.yml makes a
deployment key in the device's RAM, builds the bundle for it and the daemon
arms, and end-deployment.yml leaves no bundle on disk and no deployment key in
/run. On failure the unit's journal is printed.

Slow (about a minute and a half once the root tarball is cached); CI runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.nspawn import NspawnHost

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
DEVICE_ID = "cam-01"
OTHER_DEVICE_ID = "cam-02"
CONTROL_ROOM = "control-room-console-1"
"""The console's identity: reads every device's messages (the role's default clients)."""
END_DEPLOYMENT = "control-room-end-deployment"
"""end-deployment.yml's own identity: may write commands and nothing else."""
CONVERGE_TIMEOUT = 600.0
MQTT_WAIT = 20.0


# ---- controller-side material -------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("LFR_EDGE_CACHE", Path.home() / ".cache" / "lfr-edge"))


def build_wheels(out: Path) -> tuple[Path, Path]:
    """The lfr-edge wheel (fresh) and a wheelhouse of its dependencies (cached by pyproject).

    The device installs with ``pip --no-index`` from these: a fleet install that needs no
    package index (and a test that does not depend on one after the first run).
    """
    import hashlib

    dist = out / "dist"
    # Build from a clean copy of the sources: setuptools' build/ directory in the
    # work tree can hold modules that no longer exist and would end up in the wheel.
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "edge", src / "edge", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [str(VENV_BIN / "pip"), "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    wheel = next(dist.glob("lfr_edge-*.whl"))
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    house = _cache_dir() / f"wheelhouse-{key}"
    if not (house / ".complete").exists():
        tmp = house.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(
            [str(VENV_BIN / "pip"), "wheel", "-q", "-w", str(tmp), str(wheel)],
            check=True,
            timeout=900,
            capture_output=True,
        )
        for own in tmp.glob("lfr_edge-*.whl"):
            own.unlink()
        (tmp / ".complete").write_text("")
        shutil.rmtree(house, ignore_errors=True)
        tmp.rename(house)
    return wheel, house


@dataclass
class Pki:
    ca: Path
    certs: dict[str, tuple[Path, Path]]  # cn -> (cert, key)


def make_pki(directory: Path) -> Pki:
    from edge.dev.devpki import DevCA

    ca = DevCA(directory)
    certs: dict[str, tuple[Path, Path]] = {}
    server = ca.issue("broker", server=True)
    certs["broker"] = (server.cert, server.key)
    for cn in (DEVICE_ID, OTHER_DEVICE_ID, CONTROL_ROOM, END_DEPLOYMENT):
        files = ca.issue(cn)
        certs[cn] = (files.cert, files.key)
    return Pki(ca=ca.cert, certs=certs)


def make_clip(path: Path, frames: int = 60) -> Path:
    """A short video with no faces in it (moving noise), for the opencv source."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(7)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (320, 240))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    writer.release()
    return path


def write_inventory(path: Path, host: NspawnHost, group: dict[str, Any]) -> None:
    conn = host.inventory_host_vars()
    inventory = {
        "all": {
            "vars": group,
            "children": {
                "control_room_brokers": {"hosts": {"broker-01": conn}},
                "edge_devices": {
                    "hosts": {DEVICE_ID: {**conn, "edge_device_id": DEVICE_ID}},
                },
            },
        }
    }
    path.write_text(json.dumps(inventory, indent=1))  # JSON is YAML


def ansible_playbook(
    inventory: Path, playbook: str, *extra: str, timeout: float = CONVERGE_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="True",
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        # Per-task timings, for finding where a slow converge spends its time.
        ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.junit",
        JUNIT_OUTPUT_DIR=str(inventory.parent / "junit"),
        JUNIT_TASK_CLASS="True",
    )
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), playbook, *extra],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def slowest_tasks(junit_dir: Path, n: int = 8) -> list[tuple[str, float]]:
    """The n slowest tasks recorded by Ansible's junit callback (newest report)."""
    import xml.etree.ElementTree as ET

    reports = sorted(junit_dir.glob("*.xml"), key=lambda p: p.stat().st_mtime)
    if not reports:
        return []
    cases = ET.parse(reports[-1]).getroot().iter("testcase")
    # Names are "[host] play: role : task args...": keep the task, drop the arguments.
    times = [(c.get("name", "?")[:90], float(c.get("time", "0"))) for c in cases]
    return sorted(times, key=lambda item: -item[1])[:n]


def play_recap(output: str) -> dict[str, dict[str, int]]:
    """``PLAY RECAP`` lines as {host: {ok: n, changed: n, failed: n, ...}}."""
    recap: dict[str, dict[str, int]] = {}
    lines = output.split("PLAY RECAP", 1)[-1].splitlines()
    for line in lines:
        if ":" not in line or "=" not in line:
            continue
        name, rest = line.split(":", 1)
        counts = {}
        for item in rest.split():
            if "=" in item:
                k, v = item.split("=", 1)
                counts[k] = int(v)
        recap[name.strip()] = counts
    return recap


# ---- MQTT on the control-room side --------------------------------------------------


class MqttClient:
    """A paho MQTT 5 client with a certificate from the test CA; bounded waits only."""

    def __init__(self, pki: Pki, cn: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.messages: list[tuple[str, bytes, bool]] = []
        self.pubacks: dict[int, int] = {}
        self.subacks: set[int] = set()
        self._cond = threading.Condition()
        self._connected: int | None = None
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-{cn}-{os.getpid()}",
            protocol=mqtt.MQTTv5,
        )
        cert, key = pki.certs[cn]
        client.tls_set(ca_certs=str(pki.ca), certfile=str(cert), keyfile=str(key))
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self.client = client
        client.connect("127.0.0.1", port, keepalive=30)
        client.loop_start()
        self._wait(lambda: self._connected is not None, "CONNACK")
        if self._connected != 0:
            raise AssertionError(f"{cn}: broker refused the connection ({self._connected})")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self._connected = int(rc.value) if hasattr(rc, "value") else int(rc)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._cond:
            self.subacks.add(mid)
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._cond:
            self.pubacks[mid] = int(rc.value) if hasattr(rc, "value") else int(rc)
            self._cond.notify_all()

    def _wait(self, pred: Any, what: str, timeout: float = MQTT_WAIT) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout:.0f}s")
                self._cond.wait(left)

    def subscribe(self, topic: str) -> None:
        """Subscribe and wait (bounded) for the broker's SUBACK."""
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == 0
        self._wait(lambda: mid in self.subacks, f"SUBACK for {topic}")

    def wait_message(self, topic: str, pred: Any = None, timeout: float = MQTT_WAIT) -> bytes:
        def found() -> bool:
            return any(t == topic and (pred is None or pred(p)) for t, p, _ in self.messages)

        self._wait(found, f"message on {topic}", timeout)
        return next(p for t, p, _ in self.messages if t == topic and (pred is None or pred(p)))

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        self._wait(lambda: info.mid in self.pubacks, f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- the converged fleet ------------------------------------------------------------


@dataclass
class Fleet:
    host: NspawnHost
    workdir: Path
    inventory: Path
    pki: Pki
    keys: Path
    device_keys: Path  # the device's public keys, fetched by the role
    broker_port: int
    converge_s: float
    converge_output: str

    def journal(self) -> str:
        return self.host.journal("edge.service")

    @property
    def device_pub(self) -> Path:
        """The device's long-lived X25519 public key (made on the device)."""
        return self.device_keys / f"{DEVICE_ID}.pub"


@contextlib.contextmanager
def journal_on_failure(fleet: Fleet) -> Iterator[None]:
    try:
        yield
    except BaseException:
        print("---- journalctl -u edge.service (in the container) ----")
        print(fleet.journal())
        print("---- journalctl -u mosquitto.service ----")
        print(fleet.host.journal("mosquitto.service", lines=40))
        raise


@pytest.fixture(scope="module")
def fleet(nspawn_host: NspawnHost) -> Fleet:
    from edge.dev.devbroker import free_port
    from edge.watchlist.keys import init_signing_key

    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto_pub is missing (apt-get install mosquitto-clients)")
    host = nspawn_host
    # Beside the container's root (removed with it), not in pytest's shared basetemp.
    work = host.workdir / "controller"
    work.mkdir()
    start = time.monotonic()
    wheel, wheelhouse = build_wheels(work)
    print(f"wheels built in {time.monotonic() - start:.1f} s")
    pki = make_pki(work / "pki")
    keys = work / "keys"
    init_signing_key(keys)
    device_keys = work / "device-keys"  # where the role fetches the device's public keys
    broker_port = free_port()
    clip = make_clip(work / "clip.avi")
    # The clip goes where the unit can read it (ProtectHome= hides /root).
    (host.root / "srv" / "edge").mkdir(parents=True, exist_ok=True)
    shutil.copy(clip, host.root / "srv" / "edge" / "clip.avi")
    (host.root / "srv" / "edge" / "clip.avi").chmod(0o644)

    group: dict[str, Any] = {
        # broker
        "control_room_broker_port": broker_port,
        "control_room_broker_bind_address": "127.0.0.1",
        "control_room_broker_ca_cert_src": str(pki.ca),
        "control_room_broker_cert_src": str(pki.certs["broker"][0]),
        "control_room_broker_key_src": str(pki.certs["broker"][1]),
        # device
        "edge_device_wheel": str(wheel),
        "edge_device_wheelhouse": str(wheelhouse),
        "edge_device_models_src": str(REPO / "models"),
        "edge_device_broker_host": "127.0.0.1",
        "edge_device_broker_port": broker_port,
        "edge_device_ca_cert_src": str(pki.ca),
        "edge_device_client_cert_src": str(pki.certs[DEVICE_ID][0]),
        "edge_device_client_key_src": str(pki.certs[DEVICE_ID][1]),
        "edge_device_public_keys_dir": str(device_keys),
        "edge_device_signer_pubkey_src": str(keys / "signing.pub"),
        "edge_device_source_kind": "opencv",
        "edge_device_source_uri": "/srv/edge/clip.avi",
        "edge_device_source_size": "320x240",
        "edge_device_source_lores_size": "320x240",
        "edge_device_source_loop": True,
        "edge_device_watchdog_sec": 30,
        # A container has no time daemon (systemd-timesyncd and systemd-time-wait-sync are
        # skipped by ConditionVirtualization=!container): the host keeps the time.
        "edge_device_require_clock_sync": False,
        # A container has no TPM2: accept credentials a copy of its storage opens (the role
        # refuses that otherwise), plain first; test_encrypted_credentials encrypts them.
        "edge_device_credentials_without_tpm2": True,
        "edge_device_credentials_encrypted": False,
        # controller side (end-deployment.yml)
        "lfr_broker_address": "127.0.0.1",
        "lfr_broker_port": broker_port,
        "lfr_ca_cert": str(pki.ca),
        "lfr_end_deployment_cert": str(pki.certs[END_DEPLOYMENT][0]),
        "lfr_end_deployment_key": str(pki.certs[END_DEPLOYMENT][1]),
        "lfr_signing_key": str(keys / "signing.key"),
        "lfr_edge_cli": str(VENV_BIN / "edge"),
    }
    inventory = work / "hosts.yml"
    write_inventory(inventory, host, group)

    start = time.monotonic()
    proc = ansible_playbook(inventory, "site.yml")
    converge_s = time.monotonic() - start
    (work / "converge.log").write_text(proc.stdout + proc.stderr)
    print(f"site.yml converge: {converge_s:.1f} s (log: {work / 'converge.log'})")
    for name, secs in slowest_tasks(work / "junit"):
        print(f"  {secs:6.1f} s  {name}")
    fleet = Fleet(
        host, work, inventory, pki, keys, device_keys, broker_port, converge_s, proc.stdout
    )
    if proc.returncode != 0:
        print(proc.stdout[-12000:])
        print(proc.stderr[-4000:])
        print("---- journalctl -u edge.service ----")
        print(fleet.journal())
        pytest.fail(f"ansible-playbook site.yml failed (exit {proc.returncode})")
    return fleet


# ---- the checks ---------------------------------------------------------------------


def test_converge_succeeds(fleet: Fleet, record_property: Any) -> None:
    record_property("converge_seconds", round(fleet.converge_s, 1))
    recap = play_recap(fleet.converge_output)
    assert recap[DEVICE_ID]["failed"] == 0 and recap[DEVICE_ID]["unreachable"] == 0
    assert recap["broker-01"]["failed"] == 0


def test_second_converge_changes_nothing(fleet: Fleet) -> None:
    """The roles are idempotent: a second site.yml run reports no change (and no restart)."""
    with journal_on_failure(fleet):
        before = fleet.host.show("edge.service", "MainPID")["MainPID"]
        proc = ansible_playbook(fleet.inventory, "site.yml")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        recap = play_recap(proc.stdout)
        changed = [line for line in proc.stdout.splitlines() if line.startswith("changed:")]
        assert recap[DEVICE_ID]["changed"] == 0, changed
        assert recap["broker-01"]["changed"] == 0, changed
        assert fleet.host.show("edge.service", "MainPID")["MainPID"] == before


def test_the_ubuntu_2204_path_in_check_mode(fleet: Fleet) -> None:
    """Issue 22 item 3: the whole edge_device role in check mode on this booted host with its
    facts saying Ubuntu 22.04 (a Jetson under JetPack 6; Debian's archive has no Ubuntu to
    boot): it loads vars/Ubuntu-22.yml, passes preflight with the OpenCV source, and would
    change neither the config nor the unit: the same unit and hardening as on Debian."""
    ubuntu = {"distribution": "Ubuntu", "distribution_version": "22.04",
              "distribution_major_version": "22", "distribution_release": "jammy"}
    play = [{
        "name": "the edge device, as Ubuntu 22.04", "hosts": "edge_devices",
        "gather_facts": True,
        "pre_tasks": [{"name": "say this host is Ubuntu 22.04 (Jetson, JetPack 6)",
                       "ansible.builtin.set_fact": {**ubuntu, "cacheable": True}}],
        "roles": [{"role": str(ANSIBLE_DIR / "roles" / "edge_device")}],
        "post_tasks": [{"name": "which distribution", "ansible.builtin.debug": {
            "msg": "OS {{ _edge_device_os.name }}, python {{ _edge_device_os.python }}"}}],
    }]  # fmt: skip
    playbook = fleet.workdir / "ubuntu-2204-check.yml"
    playbook.write_text(json.dumps(play))
    with journal_on_failure(fleet):
        before = fleet.host.show("edge.service", "MainPID")["MainPID"]
        proc = ansible_playbook(fleet.inventory, str(playbook), "--check", "--limit", DEVICE_ID)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        assert "OS Ubuntu 22.04 (Jetson, JetPack 6), python 3.10" in proc.stdout
        assert play_recap(proc.stdout)[DEVICE_ID]["failed"] == 0
        for task in ("Write the daemon configuration", "Install the systemd unit"):
            # the role is named by its path here: "TASK [<path>/edge_device : <task>]"
            after = proc.stdout.split(f"edge_device : {task}]", 1)[1].split("TASK [", 1)[0]
            assert f"ok: [{DEVICE_ID}]" in after, (task, after)
        assert fleet.host.show("edge.service", "MainPID")["MainPID"] == before


def test_unit_is_active_ready_and_watchdog_armed(fleet: Fleet) -> None:
    with journal_on_failure(fleet):
        props = fleet.host.show(
            "edge.service",
            "Type",
            "NotifyAccess",
            "ActiveState",
            "SubState",
            "MainPID",
            "WatchdogUSec",
            "WatchdogTimestampMonotonic",
            "StatusText",
            "Restart",
            "NRestarts",
        )
        assert props["Type"] == "notify"
        assert props["NotifyAccess"] == "main"
        # Type=notify: the unit leaves "activating" only after READY=1.
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        assert props["WatchdogUSec"] in ("30s", "30000000"), props["WatchdogUSec"]
        assert int(props["WatchdogTimestampMonotonic"]) > 0, "watchdog never armed"
        assert props["NRestarts"] == "0", props


def test_runs_as_dedicated_user_with_hardening(fleet: Fleet) -> None:
    with journal_on_failure(fleet):
        pid = fleet.host.show("edge.service", "MainPID")["MainPID"]
        assert pid != "0"
        status = fleet.host.run(f"cat /proc/{pid}/status", check=True).stdout
        fields = dict(
            (k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in status.splitlines())
        )
        uid = fleet.host.run("id -u edge", check=True).stdout.strip()
        assert fields["Uid"].split()[0] == uid != "0"
        assert fields["NoNewPrivs"] == "1"
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
        assert fields["Seccomp"] == "2"  # a filter is installed
        groups = fleet.host.run("id -nG edge", check=True).stdout.split()
        assert "video" in groups
        user = fleet.host.run("getent passwd edge", check=True).stdout.strip().split(":")
        assert user[6] == "/usr/sbin/nologin"
        # The credentials are root-only on disk and reach the service as credentials.
        modes = fleet.host.run(
            "stat -c '%a %U %n' /etc/credstore/edge /etc/credstore/edge/*", check=True
        ).stdout.split("\n")
        for line in filter(None, modes):
            mode, owner, _name = line.split(" ", 2)
            assert owner == "root", line
            assert mode in ("700", "600"), line
        # systemd placed them in the service's private credentials directory.
        creds = fleet.host.run("ls /run/credentials/edge.service", check=True).stdout.split()
        assert sorted(creds) == ["device-signing.key", "device.key", "mqtt-client.key",
                                 "signer.pub"]
        props = fleet.host.show("edge.service", "ProtectSystem", "PrivateTmp", "DevicePolicy")
        assert props == {"ProtectSystem": "strict", "PrivateTmp": "yes", "DevicePolicy": "closed"}


def _controller_private_keys(fleet: Fleet) -> list[bytes]:
    """The raw public keys of every X25519 or Ed25519 private key (PEM) anywhere in the
    controller's files (the TLS keys of the test PKI are of other kinds)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    found = []
    for path in fleet.workdir.rglob("*"):
        if not path.is_file() or path.stat().st_size > 1 << 16:
            continue
        data = path.read_bytes()
        if b"PRIVATE KEY-----" not in data:
            continue
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            continue
        if isinstance(key, X25519PrivateKey | Ed25519PrivateKey):
            found.append(key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    return found


def test_device_keys_are_made_on_the_device(fleet: Fleet) -> None:
    """Issue 13 item 1: the device's X25519 and Ed25519 keys are generated on the device,
    root-only 0600 credentials there; only their public halves reach the controller."""
    from cryptography.hazmat.primitives import serialization

    with journal_on_failure(fleet):
        listing = fleet.host.run(
            "stat -c '%a %U %G %n' /etc/credstore/edge/device.key "
            "/etc/credstore/edge/device-signing.key /etc/edge/device.pub "
            "/etc/edge/device-signing.pub", check=True,
        ).stdout.splitlines()  # fmt: skip
        modes = {line.split()[3]: line.split()[:3] for line in listing}
        assert modes["/etc/credstore/edge/device.key"] == ["600", "root", "root"]
        assert modes["/etc/credstore/edge/device-signing.key"] == ["600", "root", "root"]
        assert modes["/etc/edge/device.pub"][0] == "644"
        for name, fetched in (("device.pub", f"{DEVICE_ID}.pub"),
                              ("device-signing.pub", f"{DEVICE_ID}.signing.pub")):
            on_device = fleet.host.run(f"cat /etc/edge/{name}", check=True).stdout.encode()
            assert (fleet.device_keys / fetched).read_bytes() == on_device
        # The private halves are the device's: they match the public halves it kept.
        probe = (
            "from cryptography.hazmat.primitives import serialization as s\n"
            "for n in ('device.key', 'device-signing.key'):\n"
            "    k = s.load_pem_private_key(open('/etc/credstore/edge/' + n, 'rb').read(), None)\n"
            "    print(k.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw).hex())\n"
        )
        (fleet.host.root / "root" / "key-probe.py").write_text(probe)
        raw = fleet.host.run("/opt/edge/venv/bin/python /root/key-probe.py",
                             check=True).stdout.split()  # fmt: skip
        pubs = [serialization.load_pem_public_key((fleet.device_keys / f).read_bytes())
                for f in (f"{DEVICE_ID}.pub", f"{DEVICE_ID}.signing.pub")]  # fmt: skip
        assert raw == [k.public_bytes(serialization.Encoding.Raw,  # type: ignore[union-attr]
                                      serialization.PublicFormat.Raw).hex() for k in pubs]
        # No device private key anywhere in the controller's files.
        assert not {bytes.fromhex(r) for r in raw} & set(_controller_private_keys(fleet))


def test_no_core_dump_no_swap_and_a_descriptor_limit(fleet: Fleet) -> None:
    """Issue 13 item 3, issue 14: the running daemon cannot be dumped or swapped to flash."""
    with journal_on_failure(fleet):
        props = fleet.host.show(
            "edge.service", "LimitCORE", "LimitNOFILE", "MemorySwapMax", "MainPID"
        )
        assert props["LimitCORE"] == "0" and props["MemorySwapMax"] == "0", props
        assert props["LimitNOFILE"] == "4096", props
        pid = props["MainPID"]
        limits = fleet.host.run(f"cat /proc/{pid}/limits", check=True).stdout.splitlines()
        core = next(ln for ln in limits if ln.startswith("Max core file size")).split()
        assert core[4:6] == ["0", "0"]
        files = next(ln for ln in limits if ln.startswith("Max open files")).split()
        assert files[3:5] == ["4096", "4096"]
        # PR_SET_DUMPABLE 0 (edge.service.hardening): the kernel gives the process's /proc
        # files to root although it runs as edge.
        owner = fleet.host.run(f"stat -c %u /proc/{pid}/status", check=True).stdout.strip()
        assert owner == "0"
        # The role left no disk swap configured (zram would be allowed).
        fstab = fleet.host.run("cat /etc/fstab", check=False).stdout.splitlines()
        active = [ln for ln in fstab if ln.split()[2:3] == ["swap"] and not ln.startswith("#")]
        assert [ln for ln in active if not ln.startswith("/dev/zram")] == []


def test_publishes_online_over_mutual_tls(fleet: Fleet) -> None:
    with journal_on_failure(fleet):
        room = MqttClient(fleet.pki, CONTROL_ROOM, fleet.broker_port)
        try:
            room.subscribe(f"lfr/{DEVICE_ID}/status")
            payload = room.wait_message(f"lfr/{DEVICE_ID}/status", lambda p: b"online" in p)
            assert b"online" in payload
        finally:
            room.close()


def test_device_cannot_publish_under_another_devices_topic(fleet: Fleet) -> None:
    room = MqttClient(fleet.pki, CONTROL_ROOM, fleet.broker_port)
    other = MqttClient(fleet.pki, OTHER_DEVICE_ID, fleet.broker_port)
    try:
        room.subscribe("lfr/#")  # waits for the SUBACK
        forged = b'{"forged": true}'
        rc = other.publish(f"lfr/{DEVICE_ID}/alerts", forged)
        assert rc == 0x87, f"broker answered {rc:#x}, not 'not authorized'"
        # Positive control: the same client may publish under its own prefix, and the
        # control room receives that; the forged message must not have arrived before it.
        assert other.publish(f"lfr/{OTHER_DEVICE_ID}/stats", b"{}") == 0
        room.wait_message(f"lfr/{OTHER_DEVICE_ID}/stats")
        assert not any(p == forged for _, p, _ in room.messages)
    finally:
        other.close()
        room.close()


def test_encrypted_credentials(fleet: Fleet) -> None:
    """Re-converge with edge_device_credentials_encrypted: systemd-creds + LoadCredentialEncrypted=.

    The container has no TPM, so the host key (/var/lib/systemd/credential.secret) is
    used; the daemon must come back up reading the same secrets, and no plaintext copy
    may remain in the credstore. The later tests run with these credentials.
    """
    with journal_on_failure(fleet):
        proc = ansible_playbook(
            fleet.inventory,
            "site.yml",
            "--limit",
            DEVICE_ID,
            "-e",
            json.dumps(
                {"edge_device_credentials_encrypted": True, "edge_device_credentials_key": "host"}
            ),
        )
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        unit = fleet.host.run("systemctl cat edge.service", check=True).stdout
        assert "LoadCredentialEncrypted=device.key:/etc/credstore.encrypted/edge/device.key" in unit
        assert "\nLoadCredential=" not in unit
        plain = fleet.host.run("ls -A /etc/credstore/edge", check=True).stdout.split()
        assert plain == []
        enc = fleet.host.run("grep -l 'PRIVATE KEY' /etc/credstore.encrypted/edge/*")
        assert enc.stdout == "", "a credential is stored in plaintext"
        props = fleet.host.show("edge.service", "ActiveState", "SubState")
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        creds = fleet.host.run("ls /run/credentials/edge.service", check=True).stdout.split()
        assert sorted(creds) == ["device-signing.key", "device.key", "mqtt-client.key",
                                 "signer.pub"]
        room = MqttClient(fleet.pki, CONTROL_ROOM, fleet.broker_port)
        try:
            room.subscribe(f"lfr/{DEVICE_ID}/status")
            room.wait_message(f"lfr/{DEVICE_ID}/status", lambda p: b"online" in p)
        finally:
            room.close()


MODEL_SMOKE = """
import numpy as np
from edge.vision.manifest import Manifest
from edge.vision.runtime import load_interpreter
m = Manifest.load("/opt/edge/models")
for name in m.names:
    m.verify(name)
    it = load_interpreter(m.path(name), threads=2)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    print("invoked", name)
"""


def test_every_model_runs_under_the_units_sandbox(fleet: Fleet) -> None:
    """MemoryDenyWriteExecute= and the system-call filter do not break TFLite/XNNPACK.

    The daemon only runs the detector on a clip without faces, so each model of the
    manifest is invoked here in a transient service with the unit's execution sandbox.
    """
    props = [
        "User=edge",
        "Group=edge",
        "NoNewPrivileges=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        "SystemCallArchitectures=native",
        "LockPersonality=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ProtectProc=invisible",
        "CapabilityBoundingSet=",
    ]
    args = " ".join(f"-p {shlex.quote(p)}" for p in props)
    script = shlex.quote(MODEL_SMOKE)
    with journal_on_failure(fleet):
        proc = fleet.host.run(
            f"systemd-run --wait --pipe --quiet --collect {args} "
            f"/opt/edge/venv/bin/python -c {script}",
            timeout=240,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        from edge.vision.manifest import Manifest

        invoked = {ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("invoked ")}
        assert invoked == set(Manifest.load(REPO / "models").names)


def test_unit_may_reach_only_the_broker(fleet: Fleet) -> None:
    """IPAddressDeny=any + IPAddressAllow=<broker>: enforced by systemd's cgroup BPF filter.

    A probe joins edge.service's own control group, so the unit's filter applies to it:
    the broker's address connects; another loopback address (127.0.0.2, where nothing
    listens: ECONNREFUSED if allowed; EPERM or a dropped SYN if filtered) and ::1 are
    filtered. Loopback addresses only.
    """
    probe = f"""
import errno, socket
def attempt(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        return "connected"
    except TimeoutError:
        return "dropped"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        s.close()
print("broker", attempt(socket.AF_INET, ("127.0.0.1", {fleet.broker_port})))
print("other", attempt(socket.AF_INET, ("127.0.0.2", {fleet.broker_port})))
print("v6", attempt(socket.AF_INET6, ("::1", {fleet.broker_port})))
"""
    (fleet.host.root / "root" / "ip-probe.py").write_text(probe)
    # The unit's control group, as PID 1 in the container sees it, in the unified (v2)
    # hierarchy where the BPF programs are attached (under unified/ on a hybrid host).
    cmd = (
        "cg=$(systemctl show -P ControlGroup edge.service) && root=/sys/fs/cgroup && "
        "{ [ ! -d $root/unified ] || root=$root/unified; } && "
        'echo $$ > "$root$cg/cgroup.procs" && '
        "exec /opt/edge/venv/bin/python /root/ip-probe.py"
    )
    # Control: does systemd in this container enforce IPAddressDeny= at all? It needs the
    # cgroup-BPF firewall (cgroup v2 + BPF in the kernel, allowed to the container).
    control = fleet.host.run(
        "systemd-run --wait --pipe --quiet --collect -p IPAddressDeny=any "
        "/opt/edge/venv/bin/python /root/ip-probe.py",
        timeout=60,
    )
    if "broker connected" in control.stdout:
        why = fleet.host.run("journalctl -b --no-pager | grep -i -m3 bpf").stdout.strip()
        pytest.skip(
            "systemd in this container does not enforce IPAddressDeny= (no cgroup-BPF "
            f"firewall here; {why or 'no BPF message in the journal'}); the directives "
            "are checked in tests/test_systemd_unit.py"
        )
    with journal_on_failure(fleet):
        proc = fleet.host.run(cmd, timeout=60)
        diag = fleet.host.run(
            "systemctl show -P ControlGroup edge.service; cat /proc/self/cgroup; "
            "ls /sys/fs/cgroup | head"
        ).stdout
        assert proc.returncode == 0, proc.stdout + proc.stderr + diag
        result = dict(line.split() for line in proc.stdout.splitlines())
        assert result["broker"] == "connected", result
        assert result["other"] in ("EPERM", "dropped"), result
        assert result["v6"] in ("EPERM", "dropped"), result


DEPLOYMENT_ID = "op-test-1"
BUNDLE_ON_DEVICE = "/var/lib/edge/watchlist.bundle"


def make_bundle(
    fleet: Fleet, out: Path, recipient_pub: Path, sequence: int = 1,
    device_id: str = DEVICE_ID,
) -> Path:
    """A signed bundle for ``device_id`` wrapped to ``recipient_pub`` (a deployment key
    the device made, normally), window open now, with two synthetic subjects.

    The embeddings are random unit vectors (no real person's data); the daemon only
    needs a valid, signed, in-window bundle for its embedder to arm.
    """
    import datetime as dt

    import numpy as np

    from edge.vision.defaults import DEFAULT_EMBEDDER, DEFAULT_PRECISION
    from edge.vision.manifest import Manifest
    from edge.watchlist.bundle import DeploymentSpec, EmbedderInfo, Subject, build_bundle
    from edge.watchlist.keys import load_deployment_public, load_signing_key

    manifest = Manifest.load(REPO / "models")
    # The embedder the role configures (the default): a bundle for another is refused.
    embedder = f"{DEFAULT_EMBEDDER}_{DEFAULT_PRECISION}"
    entry = manifest.entry(embedder)
    assert entry.family is not None
    family = manifest.family(entry.family)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    spec = DeploymentSpec(
        deployment_id=DEPLOYMENT_ID,
        location="test range",
        start=now - dt.timedelta(minutes=5),
        end=now + dt.timedelta(hours=2),
        authorising_officer="supt-0001",
        approved_at=now - dt.timedelta(minutes=10),
        threshold=family.threshold,  # the recommended setting, above every floor
        signage_confirmed=True,
        max_watchlist_size=10,
        sequence=sequence,
    )
    subjects = [
        Subject(
            f"s{i}", "wanted_court", f"ref-{i}", "custody image", f"2024-01-0{i + 1}", "PACE s.64A"
        )
        for i in range(2)
    ]
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(2, family.embedding_size)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    from edge.vision.embed import embedder_identity

    info = EmbedderInfo(  # the embedder as the device runs it (flip-averaged or not)
        embedder, embedder_identity(entry.sha256, bool(family.flip)), str(entry.family),
        family.metric, family.embedding_size,
    )
    device_pub = load_deployment_public(recipient_pub)
    data = build_bundle(
        spec,
        subjects,
        emb,
        info,
        load_signing_key(fleet.keys / "signing.key"),
        [(device_id, device_pub)],
    )
    out.write_bytes(data)
    return out


def deployment_key_only(fleet: Fleet) -> Path:
    """Run deploy-watchlist.yml's first step: a deployment key made on the device (RAM);
    returns its public half as fetched to the controller."""
    proc = ansible_playbook(
        fleet.inventory, "deploy-watchlist.yml", "-e", "edge_device_deployment_key_only=true"
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    return fleet.device_keys / f"{DEVICE_ID}.deployment.pub"


def deployment_keys_on_device(fleet: Fleet) -> list[list[str]]:
    out = fleet.host.run(
        "find /run/edge/deployment-keys -name '*.key' -printf '%m %u %p\\n' 2>/dev/null",
    ).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def test_deploy_watchlist_refuses_a_bundle_it_cannot_or_must_not_open(fleet: Fleet) -> None:
    """The daemon refuses a bundle for another device, and one wrapped to its long-lived
    device key (a copy of its storage would open that): the play fails and says why."""
    from edge.watchlist.keys import init_device_key

    other = init_device_key(fleet.workdir / "other-keys", OTHER_DEVICE_ID)
    for name, pub, device_id, reason in (
        ("not-for-us", other.public, OTHER_DEVICE_ID, "not_for_device"),
        ("device-key", fleet.device_pub, DEVICE_ID, "device_key_bundle"),
    ):
        bundle = make_bundle(fleet, fleet.workdir / f"{name}.bundle", pub, device_id=device_id)
        with journal_on_failure(fleet):
            proc = ansible_playbook(
                fleet.inventory, "deploy-watchlist.yml", "-e", f"edge_device_bundle_src={bundle}"
            )
            assert proc.returncode != 0, proc.stdout[-4000:]
            assert f"{DEVICE_ID} did not arm with the new bundle" in proc.stdout, (
                proc.stdout[-4000:])
            status = fleet.host.show("edge.service", "StatusText", "ActiveState")
            assert status["StatusText"].startswith(f"disarmed, refused ({reason})"), status
            assert status["ActiveState"] == "active"


def write_deployment(path: Path, sequence: int) -> Path:
    import datetime as dt

    from edge.vision.manifest import Manifest

    manifest = Manifest.load(REPO / "models")
    threshold = manifest.family("dlib150").threshold
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def iso(t: dt.datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    path.write_text(
        f'deployment_id = "{DEPLOYMENT_ID}"\nlocation = "test range"\n'
        f"start = {iso(now - dt.timedelta(minutes=5))}\nend = {iso(now + dt.timedelta(hours=2))}\n"
        f'authorising_officer = "supt-0001"\napproved_at = {iso(now - dt.timedelta(minutes=10))}\n'
        f"threshold = {threshold}\nsignage_confirmed = true\n"
        f"max_watchlist_size = 10\nsequence = {sequence}\n"
    )
    return path


def test_deploy_watchlist_arms_the_device(fleet: Fleet) -> None:
    """The play makes a deployment key in the device's RAM (as the service user), builds
    the bundle for it on the controller from the subjects, delivers it and the daemon
    arms; a restart of the daemon keeps the key (RuntimeDirectoryPreserve=) and re-arms."""
    deployment = write_deployment(fleet.workdir / "op-test-1.toml", sequence=1)
    with journal_on_failure(fleet):
        proc = ansible_playbook(
            fleet.inventory, "deploy-watchlist.yml",
            "-e", f"edge_device_bundle_subjects={REPO / 'demo' / 'subjects'}",
            "-e", f"edge_device_bundle_deployment={deployment}",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        status = fleet.host.show("edge.service", "StatusText", "ActiveState", "NRestarts")
        assert status["StatusText"].startswith("armed"), status
        assert status["ActiveState"] == "active" and status["NRestarts"] == "0", status
        mode = fleet.host.run(f"stat -c '%a %U' {BUNDLE_ON_DEVICE}", check=True).stdout.split()
        assert mode == ["600", "edge"]
        # One deployment key, in RAM, the service user's, 0600; its public half on the
        # controller, its private half nowhere in the controller's files.
        keys = deployment_keys_on_device(fleet)
        assert [k[:2] for k in keys] == [["600", "edge"]], keys
        fs = fleet.host.run("stat -f -c %T /run/edge/deployment-keys", check=True).stdout
        assert fs.strip() in ("tmpfs", "ramfs"), fs
        from cryptography.hazmat.primitives import serialization

        pub = serialization.load_pem_public_key(
            (fleet.device_keys / f"{DEVICE_ID}.deployment.pub").read_bytes())
        raw = pub.public_bytes(serialization.Encoding.Raw,  # type: ignore[union-attr]
                               serialization.PublicFormat.Raw)  # fmt: skip
        assert raw not in _controller_private_keys(fleet)
        # The retained status on the broker says armed too.
        room = MqttClient(fleet.pki, CONTROL_ROOM, fleet.broker_port)
        try:
            room.subscribe(f"lfr/{DEVICE_ID}/status")
            payload = room.wait_message(
                f"lfr/{DEVICE_ID}/status", lambda p: json.loads(p).get("armed") is True
            )
            assert json.loads(payload)["deployment_id"] == DEPLOYMENT_ID
        finally:
            room.close()
        # A restart of the daemon: the RAM directory survives, the bundle opens again.
        fleet.host.run("systemctl restart edge.service", check=True, timeout=120)
        status = fleet.host.show("edge.service", "StatusText", "ActiveState")
        assert status["StatusText"].startswith("armed"), status


def test_end_deployment_leaves_no_bundle(fleet: Fleet) -> None:
    with journal_on_failure(fleet):
        proc = ansible_playbook(
            fleet.inventory, "end-deployment.yml", "-e", f"end_deployment_id={DEPLOYMENT_ID}"
        )
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        left = fleet.host.run(
            "find /var/lib/edge -name '*.bundle*' -o -name 'watchlist*'", check=True
        ).stdout.split()
        assert left == []
        assert deployment_keys_on_device(fleet) == []  # the crypto-shred
        status = fleet.host.show("edge.service", "StatusText", "ActiveState")
        assert status["StatusText"].startswith("disarmed"), status
        assert status["ActiveState"] == "active"


def test_end_deployment_falls_back_to_the_command_file_over_ssh(fleet: Fleet) -> None:
    """Issue 13 item 7: the broker path fails (a port nothing listens on), so the play
    drops the signed command file over SSH; the daemon reads it on SIGHUP and shreds,
    and the play checks the shred as root."""
    with journal_on_failure(fleet):
        pub = deployment_key_only(fleet)  # the two-step path: key first, bundle built here
        bundle = make_bundle(fleet, fleet.workdir / "op-test-2.bundle", pub, sequence=2)
        proc = ansible_playbook(
            fleet.inventory, "deploy-watchlist.yml", "-e", f"edge_device_bundle_src={bundle}"
        )
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        proc = ansible_playbook(
            fleet.inventory, "end-deployment.yml", "-e", f"end_deployment_id={DEPLOYMENT_ID}",
            "-e", "lfr_broker_port=1", "-e", "end_deployment_wait_s=20",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        assert "ended by the command file over SSH" in proc.stdout, proc.stdout[-4000:]
        assert deployment_keys_on_device(fleet) == []
        left = fleet.host.run(
            "find /var/lib/edge -name '*.bundle*' -o -name 'watchlist*' -o -name 'end-*.json'",
            check=True,
        ).stdout.split()
        assert left == []
        status = fleet.host.show("edge.service", "StatusText", "ActiveState")
        assert status["StatusText"].startswith("disarmed"), status
        assert status["ActiveState"] == "active"


def test_unit_waits_for_time_sync_and_the_config_says_whether_to(fleet: Fleet) -> None:
    """Issue 13 item 2 on the systemd host: edge.service is ordered after (and wants)
    time-sync.target, systemd-time-wait-sync is enabled with the role's bounded wait (in a
    container it and the NTP client are skipped by their conditions, so the role installs
    no NTP client here), and edge.toml carries require_clock_sync (false here, see the
    fleet's variables); the daemon started all the same. (Before the wipe, which removes
    all of it.)"""
    with journal_on_failure(fleet):
        props = fleet.host.show("edge.service", "After", "Wants", "ActiveState")
        assert "time-sync.target" in props["After"].split(), props
        assert "time-sync.target" in props["Wants"].split(), props
        assert props["ActiveState"] == "active", props
        enabled = fleet.host.run("systemctl is-enabled systemd-time-wait-sync.service")
        assert enabled.stdout.split() == ["enabled"], enabled.stdout + enabled.stderr
        wait = fleet.host.show("systemd-time-wait-sync.service", "TimeoutStartUSec",
                               "DropInPaths")  # fmt: skip
        assert wait["TimeoutStartUSec"] == "1min 30s", wait
        assert wait["DropInPaths"].endswith("systemd-time-wait-sync.service.d/edge.conf"), wait
        config = fleet.host.run("cat /etc/edge/edge.toml", check=True).stdout.splitlines()
        assert "require_clock_sync = false" in config


def test_wipe_removes_everything(fleet: Fleet) -> None:
    with journal_on_failure(fleet):
        proc = ansible_playbook(fleet.inventory, "wipe.yml", "-e", f"wipe_confirm={DEVICE_ID}")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    check = fleet.host.run(
        "ls -d /var/lib/edge /etc/credstore/edge /etc/edge /opt/edge "
        "/etc/systemd/system/edge.service 2>/dev/null; getent passwd edge; "
        "systemctl is-active edge.service",
        timeout=30,
    )
    lines = check.stdout.split()
    assert lines in (["inactive"], ["unknown"]), check.stdout
