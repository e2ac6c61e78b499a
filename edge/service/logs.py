"""Logging set-up: the journal under systemd, else stderr; never an embedding, a key, a face.

:func:`setup_logging` puts one handler on the root logger: a
``systemd.journal.JournalHandler`` when the process runs under systemd
(``$JOURNAL_STREAM`` or ``$INVOCATION_ID`` set) and systemd-python is
importable, else a stream handler on stderr. The handler carries a
:class:`SensitiveDataFilter`: defence in depth behind the rule that no code
logs an embedding, a key, a face crop or a frame. A record whose arguments
(or ``extra`` fields, or exception arguments) hold a numpy array with more
than a few elements, or bytes longer than a few bytes, is not emitted as
written: its message is replaced by a line saying what was withheld and where
from, and its arguments are dropped.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["SensitiveDataFilter", "setup_logging", "under_systemd"]

STREAM_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"  # the journal adds time, level and pid

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)

_HANDLER_MARK = "_edge_handler"


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """True when started by systemd (its stdout/stderr go to the journal)."""
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


class SensitiveDataFilter(logging.Filter):
    """Withholds records carrying arrays or byte strings (embeddings, keys, images).

    Flags a numpy array (any ``ndarray``-like object with ``size``/``shape``/``dtype``)
    with more than ``max_array_elements`` elements, and ``bytes``/``bytearray``/
    ``memoryview`` longer than ``max_bytes``, in ``record.msg``, ``record.args``,
    ``extra`` fields and the logged exception's arguments, looking inside lists,
    tuples, sets and dicts (a few levels deep). Attach it to handlers: a filter on
    a logger does not see records propagated from child loggers.
    """

    def __init__(self, max_bytes: int = 16, max_array_elements: int = 8) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.max_array_elements = max_array_elements
        self.withheld = 0

    def filter(self, record: logging.LogRecord) -> bool:
        reason = self._find(record.msg, 0) or self._find(record.args, 0)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        bad_extras = [k for k, v in extras.items() if self._find(v, 0)]
        if reason is None and bad_extras:
            reason = self._find(extras[bad_extras[0]], 0)
        exc = record.exc_info[1] if record.exc_info else None
        exc_reason = self._find(exc.args, 0) if exc is not None else None
        if reason is None and exc_reason is None:
            return True
        self.withheld += 1
        for key in bad_extras:
            setattr(record, key, "<withheld>")
        if exc_reason is not None:
            record.exc_info = None
            record.exc_text = None
            reason = reason or f"{exc_reason} (in {type(exc).__name__})"
        record.msg = "log record withheld: it carried %s (logged at %s:%d)"
        record.args = (reason, Path(record.pathname).name, record.lineno)
        return True

    def _find(self, value: object, depth: int) -> str | None:
        if isinstance(value, bytes | bytearray | memoryview):
            size = value.nbytes if isinstance(value, memoryview) else len(value)
            return f"{size} bytes" if size > self.max_bytes else None
        if _is_array(value):
            size = int(getattr(value, "size", 0))
            if size > self.max_array_elements:
                return f"an array of {size} elements"
            return None
        if depth >= 3 or isinstance(value, str):
            return None
        items: Any
        if isinstance(value, Mapping):
            items = list(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            items = value
        else:
            return None
        for item in items:
            found = self._find(item, depth + 1)
            if found:
                return found
        return None


def _is_array(value: object) -> bool:
    cls = type(value)
    if cls.__module__.startswith("numpy") and hasattr(value, "dtype"):
        return hasattr(value, "shape")  # ndarray, matrix, memmap (not numpy scalars: shape ())
    return False


def setup_logging(
    level: int = logging.INFO,
    *,
    journal: bool | None = None,
    stream: TextIO | None = None,
    identifier: str = "edge",
) -> logging.Handler:
    """Route all logging through one filtered handler on the root logger; returns it.

    ``journal``: None chooses by :func:`under_systemd`; True forces the journal
    (falls back to ``stream`` if systemd-python is missing). Replaces handlers
    already on the root logger (including ``logging.basicConfig``'s), so calling
    it twice leaves one handler.
    """
    use_journal = under_systemd() if journal is None else journal
    handler: logging.Handler | None = None
    if use_journal:
        try:
            from systemd.journal import JournalHandler
        except ImportError:
            handler = None
        else:
            handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
            handler.setFormatter(logging.Formatter(JOURNAL_FORMAT))
    if handler is None:
        handler = logging.StreamHandler(sys.stderr if stream is None else stream)
        handler.setFormatter(logging.Formatter(STREAM_FORMAT))
    handler.addFilter(SensitiveDataFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if getattr(old, _HANDLER_MARK, False):
            old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
