"""Process hardening the daemon applies to itself at start: no core dumps.

A core dump is the process's memory written to disk: frames, face crops, embeddings and the
watchlist key would reach flash (safeguard 5; issue 13, item 3). The unit already sets
``LimitCORE=0`` (and ``MemorySwapMax=0`` against swap); :func:`forbid_core_dumps` makes the
process itself refuse, whoever starts it (``edge run`` by hand, another service manager):

- ``RLIMIT_CORE`` 0 (soft and hard): the kernel writes no core file;
- ``prctl(PR_SET_DUMPABLE, 0)``: no core even through a ``core_pattern`` pipe such as
  systemd-coredump (which ignores RLIMIT_CORE), and no ptrace attach by other processes of
  the same user; ``/proc/<pid>`` files become root-owned.

``dumpable()`` reads the flag back (``PR_GET_DUMPABLE``), for ``status`` and the tests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import sys

log = logging.getLogger(__name__)

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    result = int(libc.prctl(option, arg, 0, 0, 0))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")
    return result


def forbid_core_dumps() -> None:
    """No core dump of this process: ``RLIMIT_CORE`` 0 and ``PR_SET_DUMPABLE`` 0 (Linux)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform == "linux":
        _prctl(PR_SET_DUMPABLE, 0)
    log.debug("core dumps forbidden (RLIMIT_CORE 0, not dumpable)")


def dumpable() -> bool:
    """True when this process may be core-dumped or ptrace-attached (``PR_GET_DUMPABLE``)."""
    if sys.platform != "linux":
        return resource.getrlimit(resource.RLIMIT_CORE)[0] != 0
    return _prctl(PR_GET_DUMPABLE) != 0
