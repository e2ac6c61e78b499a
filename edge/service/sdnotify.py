"""Tell systemd what the daemon is doing (``sd_notify``); a no-op outside systemd.

Under a ``Type=notify`` unit systemd sets ``$NOTIFY_SOCKET``; messages are
newline-separated ``KEY=value`` fields sent as one datagram to that AF_UNIX
socket (a name starting with ``@`` is in the abstract namespace). This uses
``systemd.daemon.notify`` from systemd-python when it is importable and writes
the datagram itself otherwise; both honour the same environment.

    notifier = SystemdNotifier()
    notifier.ready("disarmed: no watchlist")
    period = notifier.watchdog_period()   # seconds, or None without WatchdogSec=
    notifier.watchdog_ping()
    notifier.stopping()
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Literal

__all__ = ["SystemdNotifier"]

log = logging.getLogger(__name__)

Backend = Literal["auto", "library", "socket"]


def _library_notify() -> Callable[[str], bool] | None:
    try:
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return None
    notify: Callable[[str], bool] = daemon.notify
    return notify


class SystemdNotifier:
    """Send ``sd_notify`` messages; every method returns False (and does nothing) outside systemd.

    ``environ`` defaults to the process environment, read once here. ``backend``:
    ``"library"`` (systemd-python; it reads the process environment itself),
    ``"socket"`` (the built-in datagram writer), or ``"auto"``: the library when it
    is importable and ``environ`` is the process environment, else the socket.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, backend: Backend = "auto") -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._library: Callable[[str], bool] | None = None
        if backend == "library" or (backend == "auto" and environ is None):
            self._library = _library_notify()
            if self._library is None and backend == "library":
                raise RuntimeError("systemd-python is not installed")
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when running under a notify-aware service manager (``$NOTIFY_SOCKET`` set)."""
        return self._address is not None

    @property
    def backend(self) -> Literal["library", "socket"]:
        return "library" if self._library is not None else "socket"

    # --- messages ----------------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Start-up finished (``READY=1``), optionally with a status line."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        """A one-line free-text status (``systemctl status`` shows it)."""
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        """Shutdown has begun (``STOPPING=1``)."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """A reload has begun (``RELOADING=1``; send :meth:`ready` when done)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog_ping(self) -> bool:
        """Keep-alive for ``WatchdogSec=`` (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def watchdog_period(self) -> float | None:
        """The watchdog timeout in seconds, or None when no watchdog is armed for this process.

        From ``$WATCHDOG_USEC``; ignored when ``$WATCHDOG_PID`` names another process.
        Ping at least every half of it.
        """
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec or "")
        except ValueError:
            return None
        return usec / 1_000_000 if usec > 0 else None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields as one message; True when it was sent."""
        if self._address is None or not fields:
            return False
        message = "\n".join(fields)
        try:
            if self._library is not None:
                return bool(self._library(message))
            self._send(message.encode())
        except (OSError, ValueError) as exc:
            if not self._warned:  # once: a broken socket must not flood the log
                log.warning("cannot notify systemd at %s: %s", self._address, exc)
                self._warned = True
            return False
        return True

    def _send(self, data: bytes) -> None:
        address = self._address
        assert address is not None
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            raise ValueError(f"unsupported NOTIFY_SOCKET address {address!r}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(data)


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value field: keep a status to its one line.
    return " ".join(text.splitlines()).strip()
