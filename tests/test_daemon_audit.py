"""The real daemon puts undelivered audit entries on ``status`` (issue 13, item 4: never
dropped silently): with the control room unreachable, ``STATUS=`` (systemd's status line,
on a real notify socket) raises the audit alarm once the oldest entry waits longer than
``[outbox] audit_alarm_s``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.test_daemon import CLIP, DaemonProc, NotifySocket, device, keys  # noqa: F401


def test_undelivered_audit_entries_raise_the_alarm_on_status(
    tmp_path: Path, device: Callable[..., DaemonProc], broker: Any  # noqa: F811
) -> None:
    daemon = device(CLIP, loop=True, extra="\n[outbox]\naudit_alarm_s = 1.0\n")
    broker.stop()  # the control room is unreachable: no audit entry is acknowledged
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon.env["NOTIFY_SOCKET"] = str(notify.path)
    daemon.start()
    try:
        assert notify.wait("READY=1", 120), daemon.text()[-3000:]

        def alarm() -> str | None:
            for _t, line in list(notify.messages):
                if line.startswith("STATUS=") and " | audit: " in line:
                    return line
            return None

        deadline = time.monotonic() + 30
        while alarm() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        line = alarm()
        assert line is not None, [m for _t, m in notify.messages][-5:]
        assert "audit entries undelivered, the oldest for" in line
        assert "broker offline" in line
    finally:
        daemon.terminate()
        notify.close()
