"""edge.service.sdnotify against a real AF_UNIX datagram socket standing in for systemd's.

Both backends (systemd-python's sd_notify and the built-in writer) are checked
on a path socket and an abstract one, in this process and in a subprocess whose
environment is its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.service.sdnotify import SystemdNotifier
from tests.fixtures.notify import NotifySocket, path_socket

REPO = Path(__file__).resolve().parent.parent


def _abstract_socket() -> Iterator[NotifySocket]:
    name = f"edge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)
        yield NotifySocket(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[NotifySocket]:
    maker = path_socket if request.param == "path" else _abstract_socket
    for ns in maker():
        monkeypatch.setenv("NOTIFY_SOCKET", ns.address)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield ns


@pytest.mark.parametrize("backend", ["library", "socket"])
def test_messages_arrive(notify_socket: NotifySocket, backend: str) -> None:
    notifier = SystemdNotifier(backend=backend)  # type: ignore[arg-type]
    assert notifier.enabled
    assert notifier.backend == backend
    assert notifier.ready("disarmed: no watchlist")
    assert notify_socket.recv() == "READY=1\nSTATUS=disarmed: no watchlist"
    assert notifier.status("armed, 14.8 fps")
    assert notify_socket.recv() == "STATUS=armed, 14.8 fps"
    assert notifier.watchdog_ping()
    assert notify_socket.recv() == "WATCHDOG=1"
    assert notifier.reloading()
    reload_msg = notify_socket.recv().split("\n")
    assert reload_msg[0] == "RELOADING=1"
    assert reload_msg[1].startswith("MONOTONIC_USEC=")
    assert int(reload_msg[1].split("=")[1]) > 0
    assert notifier.stopping()
    assert notify_socket.recv() == "STOPPING=1"
    assert notify_socket.pending() == []


def test_status_cannot_inject_fields(notify_socket: NotifySocket) -> None:
    notifier = SystemdNotifier(backend="socket")
    notifier.status("bad\nREADY=1\nWATCHDOG=trigger")
    assert notify_socket.recv() == "STATUS=bad READY=1 WATCHDOG=trigger"


def test_explicit_environ_uses_the_socket_writer(notify_socket: NotifySocket) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.backend == "socket"
    assert notifier.watchdog_ping()
    assert notify_socket.recv() == "WATCHDOG=1"


def test_auto_prefers_the_library(notify_socket: NotifySocket) -> None:
    assert SystemdNotifier().backend == "library"


def test_noop_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for backend in ("auto", "library", "socket"):
        notifier = SystemdNotifier(backend=backend)  # type: ignore[arg-type]
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.status("x") is False
        assert notifier.watchdog_ping() is False
        assert notifier.stopping() is False
        assert notifier.watchdog_period() is None


@pytest.mark.parametrize("backend", ["library", "socket"])
def test_dead_socket_returns_false_and_warns_once(
    tmp_path: Path, backend: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = SystemdNotifier(backend=backend)  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="edge.service.sdnotify"):
        assert notifier.watchdog_ping() is False
        assert notifier.watchdog_ping() is False
    assert len([r for r in caplog.records if r.name == "edge.service.sdnotify"]) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_period(env: dict[str, str], expected: float | None) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "/run/nothing", **env})
    assert notifier.watchdog_period() == expected


CHILD = """
import os
from edge.service.sdnotify import SystemdNotifier
n = SystemdNotifier()
print(n.backend, n.watchdog_period(), flush=True)
n.ready("starting up")
n.watchdog_ping()
n.status("armed")
n.stopping()
"""


@pytest.mark.parametrize("hide_library", [False, True])
def test_subprocess_with_its_own_environment(
    notify_socket: NotifySocket, hide_library: bool, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = notify_socket.address
    env["WATCHDOG_USEC"] = "4000000"
    code = CHILD
    if hide_library:
        # Make `import systemd.daemon` fail in the child: the built-in writer takes over.
        code = "import sys; sys.modules['systemd'] = None\n" + CHILD
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    backend = "socket" if hide_library else "library"
    assert result.stdout.split() == [backend, "4.0"]
    messages = [notify_socket.recv() for _ in range(4)]
    assert messages == ["READY=1\nSTATUS=starting up", "WATCHDOG=1", "STATUS=armed", "STOPPING=1"]


def test_subprocess_outside_systemd_sends_nothing(notify_socket: NotifySocket) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["library", "None"]
    assert notify_socket.pending() == []
