"""The audit log's file on disk (split from :mod:`edge.watchlist.audit`): one fsynced
``O_APPEND`` write per line, cut back on failure, and the recovery of a torn last line
(moved aside as evidence) at open."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("edge.watchlist.audit")


def append_line(path: Path, line: bytes) -> None:
    """One write and an fsync; on failure the file is cut back to its old length."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(28, f"short write to audit log {path}")
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _suppress_oserror() -> contextlib.suppress:
    return contextlib.suppress(OSError)


def recover_torn_tail(path: Path) -> tuple[int, Path] | None:
    """Move an incomplete last line aside; returns (its length, the evidence file)."""
    try:
        with path.open("rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if not data or data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    n = 1
    while path.with_name(f"{path.name}.torn-{n}").exists():
        n += 1
    evidence = path.with_name(f"{path.name}.torn-{n}")
    try:
        evidence.write_bytes(tail)
    except OSError as exc:  # a full disk: keep its head in the audit entry instead
        log.error("cannot keep the torn audit tail aside (%s)", exc.strerror)
        with _suppress_oserror():
            evidence.unlink()
        evidence = Path("(not written: " + tail[:120].decode("ascii", "backslashreplace") + ")")
    with path.open("r+b") as fh:
        fh.truncate(cut)
        os.fsync(fh.fileno())
    log.error("audit log %s: incomplete last line (%d bytes) moved to %s",
              path, len(tail), evidence)  # fmt: skip
    return len(tail), evidence
