"""``edge alerts --save-crops DIR``: face crops kept as the rest of the system keeps them.

A matched face is personal data of the most sensitive kind; the console keeps crops
encrypted, audits every view and deletes them after 31 days. A technician's ``edge
alerts`` writing them to a directory must not be a way around that (issue 21), so the
crop directory is:

- **private**: created 0700, each crop written 0600 (``O_EXCL``, then renamed into
  place); an existing directory that others can read or enter is refused, one line;
- **audited**: each saved crop and each purge is an entry in ``DIR/crops-audit.log``, a
  hash-chained audit log of the device's format (:class:`edge.watchlist.audit.AuditLog`;
  ``edge audit verify DIR/crops-audit.log`` checks it) with the alert and device ids,
  never the face;
- **purged by the same retention**: crops older than 31 days (by their file time) are
  deleted when the listener starts and every hour while it runs, and the purge is
  audited.

Chosen over refusing ``--save-crops`` outside the demo: a control room without the
console (commissioning, a broken console) still sees the faces an officer must judge,
and what it keeps is protected, traced and deleted as everywhere else.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from edge.delivery.outbox import RETENTION_S
from edge.errors import UsageError
from edge.watchlist.audit import AuditLog

AUDIT_FILE: Final = "crops-audit.log"
PURGE_EVERY_S: Final = 3600.0


class CropStore:
    """The private, audited, purged directory of ``--save-crops``."""

    def __init__(self, directory: Path, *, retention_s: float = RETENTION_S,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.directory = directory
        self.retention_s = retention_s
        self._clock = clock
        if directory.exists():
            mode = stat.S_IMODE(directory.stat().st_mode)
            if not directory.is_dir():
                raise UsageError(f"--save-crops {directory} is not a directory")
            if mode & 0o077:
                raise UsageError(
                    f"--save-crops {directory} is open to others (mode {mode:04o}): face "
                    f"crops go only into a private directory (chmod 700 it, or name a new one)"
                )
        else:
            directory.mkdir(parents=True, mode=0o700)
        self.audit = AuditLog(directory / AUDIT_FILE, clock=clock)
        self._next_purge = 0.0

    def save(self, alert_id: str, device_id: str, jpeg: bytes) -> Path:
        """Write one crop (0600) and audit it; returns its path."""
        path = self.directory / f"{alert_id}.jpg"
        tmp = path.with_suffix(".jpg.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(jpeg)
        tmp.replace(path)
        self.audit.append("crop_saved", alert_id=alert_id, device_id=device_id,
                          bytes=len(jpeg))  # fmt: skip
        return path

    def purge(self, force: bool = False) -> list[str]:
        """Delete the crops older than the retention (at most every hour unless
        ``force``); audited when any went. Returns their alert ids."""
        now = self._clock()
        if not force and now < self._next_purge:
            return []
        self._next_purge = now + PURGE_EVERY_S
        cutoff = now - self.retention_s
        gone: list[str] = []
        for path in sorted(self.directory.glob("*.jpg")):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    gone.append(path.stem)
            except FileNotFoundError:
                continue
        if gone:
            self.audit.append("crops_purged", count=len(gone), alert_ids=gone[:500],
                              retention_days=round(self.retention_s / 86400))  # fmt: skip
        return gone
