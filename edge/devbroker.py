"""A local mosquitto with mutual TLS and the control room's ACL, for the demo and tests.

It runs the real ``mosquitto`` binary on a loopback port with a generated
configuration: TLS only, client certificates required, the certificate's CN
used as the user name, and the same ACL the ``control_room_broker`` Ansible
role installs (a device writes only under ``lfr/<its id>/``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge.devpki import CertFiles, DevCA
from edge.errors import BrokerError

CONTROL_ROOM_CN = "control-room"

ACL_TEMPLATE = """\
# Devices: write only under their own prefix, read their own inbound topics.
pattern write lfr/%u/status
pattern write lfr/%u/alerts
pattern write lfr/%u/stats
pattern write lfr/%u/deployment
pattern write lfr/%u/audit
pattern read lfr/%u/adjudications
pattern read lfr/%u/commands

# The control room reads everything and writes adjudications and commands.
user {control_room}
topic read lfr/#
topic write lfr/+/adjudications
topic write lfr/+/commands
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")


@dataclass
class DevBroker:
    """A mosquitto process with TLS on ``127.0.0.1:port``; ``start()``/``stop()`` may repeat."""

    directory: Path
    port: int = 0
    host: str = "127.0.0.1"
    ca: DevCA | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _clients: dict[str, CertFiles] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.ca is None:
            self.ca = DevCA(self.directory / "pki")
        if not self.port:
            self.port = free_port(self.host)
        self.server = self.ca.issue("broker", server=True)
        (self.directory / "data").mkdir(exist_ok=True)
        (self.directory / "acl").write_text(ACL_TEMPLATE.format(control_room=CONTROL_ROOM_CN))
        self.config = self.directory / "mosquitto.conf"
        self.log = self.directory / "mosquitto.log"
        self.config.write_text(
            "\n".join(
                [
                    # As root, mosquitto would switch to its own user, which cannot
                    # read this private directory; a test/demo broker stays as is.
                    "user root" if os.geteuid() == 0 else "",
                    "per_listener_settings false",
                    "persistence true",
                    f"persistence_location {self.directory / 'data'}/",
                    "autosave_interval 1",
                    f"log_dest file {self.log}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "allow_anonymous false",
                    f"acl_file {self.directory / 'acl'}",
                    f"listener {self.port} {self.host}",
                    f"cafile {self.ca.cert}",
                    f"certfile {self.server.cert}",
                    f"keyfile {self.server.key}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    "tls_version tlsv1.2",
                    "",
                ]
            )
        )

    @property
    def ca_cert(self) -> Path:
        assert self.ca is not None
        return self.ca.cert

    def client(self, cn: str) -> CertFiles:
        """A client certificate whose CN (the MQTT user name) is ``cn``; made once."""
        assert self.ca is not None
        if cn not in self._clients:
            self._clients[cn] = self.ca.issue(cn)
        return self._clients[cn]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace")
                tail = self.log.read_text(errors="replace")[-400:] if self.log.exists() else ""
                raise BrokerError(f"mosquitto exited at start: {err.strip() or tail.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> DevBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
