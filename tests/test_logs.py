"""edge.service.logs: the handler choice and the filter that withholds arrays and byte strings."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.service.logs import SensitiveDataFilter, setup_logging, under_systemd

REPO = Path(__file__).resolve().parent.parent
MARK = 0.123456789  # a value that would show in a printed embedding


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, SensitiveDataFilter]]:
    """A logger whose records go through the filter to a real stream handler."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    filt = SensitiveDataFilter()
    handler.addFilter(filt)
    logger = logging.getLogger("edge.test_logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream, filt
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def embedding() -> np.ndarray:
    vec = np.full(128, MARK, dtype=np.float32)
    return vec


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((embedding(),), "an array of 128 elements"),
        ((np.zeros((150, 150, 3), np.uint8),), "an array of 67500 elements"),
        ((b"K" * 32,), "32 bytes"),  # an X25519 / AES-256 key
        ((bytearray(b"K" * 17),), "17 bytes"),
        ((memoryview(b"K" * 64),), "64 bytes"),
        ((["ok", {"nested": embedding()}],), "an array of 128 elements"),
        (({"key": b"K" * 32},), "32 bytes"),
    ],
)
def test_sensitive_args_are_withheld(
    captured: tuple[logging.Logger, io.StringIO, SensitiveDataFilter],
    args: tuple[object, ...],
    reason: str,
) -> None:
    logger, stream, filt = captured
    logger.info("value: %s", *args)
    out = stream.getvalue()
    assert out.startswith("INFO log record withheld: it carried " + reason)
    assert "test_logs.py:" in out
    assert "KKKK" not in out and "0.123" not in out and "value:" not in out
    assert filt.withheld == 1


def test_dict_args_are_checked(
    captured: tuple[logging.Logger, io.StringIO, SensitiveDataFilter],
) -> None:
    logger, stream, _ = captured
    logger.info("%(emb)s", {"emb": embedding()})
    assert "withheld" in stream.getvalue() and "0.123" not in stream.getvalue()


def test_array_as_the_message_itself(
    captured: tuple[logging.Logger, io.StringIO, SensitiveDataFilter],
) -> None:
    logger, stream, _ = captured
    logger.warning(embedding())  # type: ignore[arg-type]
    assert "withheld" in stream.getvalue() and "0.123" not in stream.getvalue()


def test_extra_fields_are_checked(
    captured: tuple[logging.Logger, io.StringIO, SensitiveDataFilter],
) -> None:
    logger, _stream, _ = captured
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    keep.addFilter(SensitiveDataFilter())
    logger.addHandler(keep)
    try:
        logger.info("alert published", extra={"face_jpeg": b"\xff\xd8" * 500})
    finally:
        logger.removeHandler(keep)
    # The journal handler sends every record attribute as a field: the bytes must be gone.
    assert records[0].face_jpeg == "<withheld>"  # type: ignore[attr-defined]
    assert "1000 bytes" in records[0].getMessage()


def test_exception_arguments_are_checked(
    captured: tuple[logging.Logger, io.StringIO, SensitiveDataFilter],
) -> None:
    logger, stream, _ = captured
    try:
        raise ValueError(b"K" * 32)
    except ValueError:
        logger.exception("unwrap failed")
    out = stream.getvalue()
    assert "KKKK" not in out
    assert "Traceback" not in out
    assert "32 bytes (in ValueError)" in out


@pytest.mark.parametrize(
    "args",
    [
        ("cam-01", 3, 0.87),
        (b"short",),  # a 5-byte tag is fine
        (np.array([10, 20, 30, 40]),),  # a bbox
        (np.float32(0.5),),  # a numpy scalar
        ("x" * 10_000,),  # strings are not inspected
        ([1, 2, 3],),
    ],
)
def test_ordinary_records_pass_unchanged(
    captured: tuple[logging.Logger, io.StringIO, SensitiveDataFilter], args: tuple[object, ...]
) -> None:
    logger, stream, filt = captured
    logger.info(" ".join(["%s"] * len(args)), *args)
    expected = " ".join(str(a) for a in args)
    assert stream.getvalue() == f"INFO {expected}\n"
    assert filt.withheld == 0


def test_limits_are_configurable() -> None:
    filt = SensitiveDataFilter(max_bytes=4, max_array_elements=2)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (b"12345",), None)
    assert filt.filter(record) and "withheld" in record.getMessage()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (np.zeros(3),), None)
    assert filt.filter(record) and "withheld" in record.getMessage()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (np.zeros(2),), None)
    assert filt.filter(record) and record.getMessage() == "[0. 0.]"


def test_under_systemd() -> None:
    assert under_systemd({"INVOCATION_ID": "abc"})
    assert under_systemd({"JOURNAL_STREAM": "8:1234"})
    assert not under_systemd({})


def test_setup_logging_stream_is_filtered_and_idempotent() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        setup_logging(logging.INFO, journal=False, stream=stream)
        handler = setup_logging(logging.INFO, journal=False, stream=stream)
        assert root.handlers == [handler]
        logging.getLogger("edge.somewhere").info("key %s", b"K" * 32)
        logging.getLogger("edge.somewhere").debug("hidden")
        out = stream.getvalue()
        assert "withheld" in out and "KKKK" not in out and "hidden" not in out
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_setup_logging_picks_the_journal_under_systemd() -> None:
    code = (
        "import logging; from edge.service.logs import setup_logging; "
        "h = setup_logging(); print(type(h).__name__)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
    outside = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert outside.stdout.strip() == "StreamHandler"
    inside = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "INVOCATION_ID": "0" * 32},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert inside.stdout.strip() == "JournalHandler"
