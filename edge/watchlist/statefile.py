"""Atomic state files: write a temporary file, fsync it, rename it over the old one,
fsync the directory. A crash or a full disk leaves either the old file or the new one,
never a torn one; a failed write removes its temporary file and raises ``OSError``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically (raises OSError, old file intact)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def shred_file(path: Path) -> bool:
    """Overwrite a file with zeros, fsync, unlink, fsync its directory. False if absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        chunk = bytes(min(size, 1 << 20))
        left = size
        while left > 0:
            n = os.write(fd, chunk[: min(left, len(chunk))])
            left -= n
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return True
