"""A local mosquitto with mutual TLS and the control room's ACL, for the demo and tests.

It runs the real ``mosquitto`` binary on a loopback port with a generated
configuration: TLS only, client certificates required, the certificate's CN
used as the user name, persistence on (retained messages and persistent
sessions survive a stop/start on the same port), and the same ACL the
``control_room_broker`` Ansible role installs: a device writes only under
``lfr/<its id>/`` and reads only its own inbound topics; each control-room client
reads and writes only what its kind needs.

As in the role: the certificate's CN is also the client id
(``use_username_as_clientid``), so no certificate can take over another device's
persistent session, and two clients with one certificate take over each other. So every
control-room client has its own identity (CN) and ACL entry, of one of
:data:`CONTROL_ROOM_KINDS`, each allowed only what it needs: the console instances
(:data:`CONSOLE_CN`, ...), the end-deployment play (:data:`END_DEPLOYMENT_CN`, writes
commands only), ``edge alerts`` (:data:`ALERTS_CN`) and technicians' tools
(:data:`TECHNICIAN_CN`); :data:`CONTROL_ROOM_CLIENTS` is the role's default list
(``control_room_broker_clients``), ``tests/test_broker_identities.py`` checks the two
agree. Packets are bounded (``max_packet_size``); the in-memory database is saved after
every change (``autosave_on_changes``), so a SIGKILLed broker keeps the QoS 1 messages
it had queued.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge.dev.devpki import CertFiles, DevCA
from edge.errors import BrokerError

DEVICE_OUT_TOPICS = ("status", "alerts", "stats", "deployment", "audit")
DEVICE_IN_TOPICS = ("adjudications", "commands")
MAX_PACKET_SIZE = 512 * 1024
"""The broker's limit on any packet (an alert with its face crop is well under 100 KiB)."""


@dataclass(frozen=True, slots=True)
class ClientKind:
    """What one kind of control-room client may read and write (MQTT topic filters)."""

    read: tuple[str, ...]
    write: tuple[str, ...]


def _every_device(*kinds: str) -> tuple[str, ...]:
    return tuple(f"lfr/+/{k}" for k in kinds)


CONTROL_ROOM_KINDS: Final[Mapping[str, ClientKind]] = {
    # The web console: the fleet's messages in, the officers' signed decisions out.
    "console": ClientKind(_every_device(*DEVICE_OUT_TOPICS), _every_device("adjudications")),
    # ansible/end-deployment.yml: a signed end_deployment command, nothing else.
    "end_deployment": ClientKind((), _every_device("commands")),
    # `edge alerts` (and `edge alerts adjudicate`): alerts and status, decisions out.
    "alerts": ClientKind(
        _every_device("alerts", "status", "deployment"), _every_device("adjudications")
    ),
    # Technicians' tools: the fleet's health, no faces, no audit, nothing out.
    "technician": ClientKind(_every_device("status", "stats", "deployment"), ()),
}
"""The kinds of control-room client, as the broker role's ``_control_room_broker_kinds``."""

CONSOLE_CN: Final = "control-room-console-1"
END_DEPLOYMENT_CN: Final = "control-room-end-deployment"
ALERTS_CN: Final = "control-room-alerts"
TECHNICIAN_CN: Final = "control-room-technician"
CONTROL_ROOM_CLIENTS: Final[Mapping[str, str]] = {
    CONSOLE_CN: "console",
    END_DEPLOYMENT_CN: "end_deployment",
    ALERTS_CN: "alerts",
    TECHNICIAN_CN: "technician",
}
"""CN -> kind: the role's default ``control_room_broker_clients`` (a second console instance
gets ``control-room-console-2``, and so on)."""


def default_clients() -> dict[str, ClientKind]:
    """The default control-room clients with their rights (CN -> :class:`ClientKind`)."""
    return {cn: CONTROL_ROOM_KINDS[kind] for cn, kind in CONTROL_ROOM_CLIENTS.items()}


def acl_text(clients: Mapping[str, ClientKind] | None = None) -> str:
    """The broker ACL: each control-room client's own rights; devices (CN = device id)
    confined to their own prefix."""
    lines = ["# Control-room clients: each its own identity (CN), only what it needs."]
    for user, kind in (default_clients() if clients is None else clients).items():
        lines += [f"user {user}", *(f"topic read {t}" for t in kind.read),
                  *(f"topic write {t}" for t in kind.write)]  # fmt: skip
    lines += ["", "# Devices: write only under their own prefix, read only their inbound topics."]
    lines += [f"pattern write lfr/%u/{t}" for t in DEVICE_OUT_TOPICS]
    lines += [f"pattern read lfr/%u/{t}" for t in DEVICE_IN_TOPICS]
    return "\n".join(lines) + "\n"


def parse_acl(text: str) -> set[tuple[str, str, str]]:
    """An ACL file's rules as ``(user or "%pattern", access, topic)``, ignoring layout and
    order (to compare two ACLs' meaning)."""
    rules: set[tuple[str, str, str]] = set()
    user = ""
    for raw in text.splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
        elif words[0] in ("topic", "pattern") and len(words) == 3:
            rules.add((user if words[0] == "topic" else "%pattern", words[1], words[2]))
        else:
            raise ValueError(f"unexpected ACL line: {raw!r}")
    return rules


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def find_mosquitto() -> str:
    """The mosquitto binary ($MOSQUITTO, PATH, /usr/sbin); BrokerError if absent."""
    for candidate in (os.environ.get("MOSQUITTO"), shutil.which("mosquitto"),
                      "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")


class DevBroker:
    """A mosquitto process with TLS on ``127.0.0.1:port``; start/stop may repeat."""

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path,
        *,
        authority: DevCA | None = None,
        port: int = 0,
        extra_config: Iterable[str] = (),
        clients: Mapping[str, ClientKind] | None = None,
        crl: Path | None = None,
        spawn: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    ) -> None:
        self.workdir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.authority = authority or DevCA(directory / "pki")
        self.ca: Path = self.authority.cert
        self.port = port or free_port(self.host)
        self.server = self.authority.issue("localhost", server=True, stem=f"broker-{self.port}")
        self.data_dir = directory / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.acl_path = directory / "acl"
        self.acl_path.write_text(acl_text(clients))
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawn = spawn  # e.g. edge.dev.children.ChildGroup.popen (the demo's)
        self._clients: dict[str, CertFiles] = {}
        self._lock = threading.Lock()
        self.config_path.write_text(
            "\n".join(
                [
                    "# generated by edge.dev.devbroker",
                    # As root, mosquitto would switch to its own user, which cannot
                    # read this private directory; a test/demo broker stays as is.
                    "user root" if os.geteuid() == 0 else "",
                    "per_listener_settings false",
                    "allow_anonymous false",
                    f"acl_file {self.acl_path}",
                    "persistence true",
                    f"persistence_location {self.data_dir}/",
                    "autosave_on_changes true",
                    "autosave_interval 1",
                    "max_queued_messages 10000",
                    f"max_packet_size {MAX_PACKET_SIZE}",
                    f"log_dest file {self.log_path}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "log_type subscribe",
                    "connection_messages true",
                    "log_timestamp true",
                    *extra_config,
                    f"listener {self.port} {self.host}",
                    f"cafile {self.ca}",
                    f"certfile {self.server.cert}",
                    f"keyfile {self.server.key}",
                    f"crlfile {crl}" if crl is not None else "",
                    "require_certificate true",
                    "use_identity_as_username true",
                    "use_username_as_clientid true",
                    "tls_version tlsv1.2",
                    "",
                ]
            )
        )

    @property
    def ca_cert(self) -> Path:
        return self.ca

    def client(self, cn: str) -> CertFiles:
        """A client certificate whose CN (the MQTT user name) is ``cn``; made once."""
        with self._lock:
            if cn not in self._clients:
                self._clients[cn] = self.authority.issue(cn, stem=f"client-{cn}")
            return self._clients[cn]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait (bounded) until its port accepts connections."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._proc = self._spawn(
                [find_mosquitto(), "-c", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_text().strip().splitlines()[-3:]
                raise BrokerError(f"mosquitto exited at start: {' / '.join(tail)}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((self.host, self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop(kill=True)
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop mosquitto: SIGTERM (it saves its persistence file) or SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> DevBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
