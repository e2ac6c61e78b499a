"""Child processes that die with their parent: the demo's broker, subscriber, console and
daemon (issue 21).

``edge demo`` stopped by SIGTERM (``timeout``, a CI runner, a service manager) or SIGKILL
must not leave its children running, armed, for ever. :class:`ChildGroup` gives
``subprocess.Popen`` a ``preexec_fn`` (:meth:`ChildGroup.preexec`) that, in the child
between fork and exec, puts it in the group's own process group (so a terminal's Ctrl-C
reaches the parent alone, which stops the children in order, and :meth:`ChildGroup.kill`
can sweep the whole group) and, on Linux, asks the kernel for SIGTERM when the parent
dies (``prctl(PR_SET_PDEATHSIG)`` through :mod:`ctypes`), then checks that the parent
did not die before that request. Only for a single-threaded parent (``preexec_fn`` is
not safe with threads): the demo starts its children from its main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

PR_SET_PDEATHSIG = 1


def _prctl() -> Any:
    """libc's ``prctl``, looked up in the parent (never after fork); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


class ChildGroup:
    """One process group for a parent's children, each to die with the parent."""

    def __init__(self) -> None:
        self.parent = os.getpid()
        self.pgid: int | None = None
        self.children: list[subprocess.Popen[bytes]] = []
        self._prctl = _prctl()

    def preexec(self) -> None:
        """Runs in the child before exec: join the group, die with the parent."""
        try:
            os.setpgid(0, self.pgid or 0)
        except OSError:  # the group is gone (all its members exited): start it again
            os.setpgid(0, 0)
        if self._prctl is not None:
            self._prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != self.parent:  # the parent died before the request took
            os.kill(os.getpid(), signal.SIGKILL)

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """``subprocess.Popen(args, **kwargs)`` as a member of this group."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(args, preexec_fn=self.preexec,
                                                         **kwargs)  # fmt: skip
        with contextlib.suppress(OSError):
            self.pgid = os.getpgid(proc.pid)
        self.children.append(proc)
        return proc

    def run(self, args: Sequence[str], **kwargs: Any) -> int:
        """Run ``args`` to its end as a member of this group (killed if interrupted)."""
        proc = self.popen(args, **kwargs)
        try:
            return proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise

    def kill(self) -> None:
        """SIGKILL what is left of the group, then reap every child: the last net after
        an orderly stop. Only while a child of ours is alive (an unreaped child keeps its
        id, so the group id cannot be anyone else's)."""
        alive = [p for p in self.children if p.poll() is None]
        if alive:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(alive[0].pid), signal.SIGKILL)
        for proc in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
