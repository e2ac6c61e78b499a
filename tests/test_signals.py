"""edge.service.signals: real signals to this process and to a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from edge.service.signals import Request, SignalRequests

REPO = Path(__file__).resolve().parent.parent


def test_signals_become_requests_in_order() -> None:
    before = signal.getsignal(signal.SIGHUP)
    with SignalRequests() as requests:
        assert requests.poll() is None
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        assert requests.wait(timeout=10) is Request.RELOAD
        assert requests.stop_requested.is_set()
        assert requests.wait(timeout=10) is Request.STOP
        assert requests.wait(timeout=0.01) is None
        requests.put(Request.RELOAD)
        assert requests.poll() is Request.RELOAD
    assert signal.getsignal(signal.SIGHUP) == before


CHILD = """
import sys
from edge.service.signals import Request, SignalRequests
with SignalRequests() as requests:
    print("ready", flush=True)
    reloads = 0
    while True:
        request = requests.wait(timeout=60)
        if request is None:
            sys.exit(3)
        if request is Request.RELOAD:
            reloads += 1
            print("reloaded", reloads, flush=True)
        if request is Request.STOP:
            print("stopping", flush=True)
            sys.exit(0)
"""


def test_child_reloads_on_hup_and_exits_0_on_term() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGHUP)
        assert child.stdout.readline().strip() == "reloaded 1"
        child.send_signal(signal.SIGTERM)
        assert child.stdout.readline().strip() == "stopping"
        assert child.wait(timeout=30) == 0
