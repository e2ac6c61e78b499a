"""The audit log's hash chain verifies, and any change to a line is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.errors import AuditError
from edge.watchlist.audit import AuditLog, verify


def _log(tmp_path: Path, published: list[dict] | None = None) -> AuditLog:
    t = iter(range(1_800_000_000, 1_900_000_000))
    return AuditLog(
        tmp_path / "audit.jsonl",
        publish=published.append if published is not None else None,
        clock=lambda: float(next(t)),
    )


def _fill(log: AuditLog) -> None:
    log.append("armed", deployment_id="D-1", threshold=0.45, signage_confirmed=True)
    log.append("adjudication", alert_id="0190-aaaa", decision="rejected", officer="PC 1")
    log.append("purge", store="outbox", count=0, msg_ids=[])
    log.append("disarmed", deployment_id="D-1", reason="window_ended")


def test_chain_verifies_and_is_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published: list[dict] = []
    log = _log(tmp_path, published)
    _fill(log)
    assert verify(log.path) == 4
    assert [e["seq"] for e in published] == [1, 2, 3, 4]
    lines = [json.loads(x) for x in log.path.read_text().splitlines()]
    assert lines == published
    assert lines[0]["prev_hash"] == "0" * 64
    assert all(lines[i]["prev_hash"] == lines[i - 1]["hash"] for i in range(1, 4))
    assert main(["audit", "verify", str(log.path)]) == 0
    assert "4 entries" in capsys.readouterr().out
    # reopening continues the chain
    again = _log(tmp_path)
    assert again.last_seq == 4
    again.append("armed", deployment_id="D-2")
    assert verify(log.path) == 5


@pytest.mark.parametrize(
    "tamper",
    [
        lambda ls: ls.__setitem__(1, ls[1].replace('"rejected"', '"confirmed"')),
        lambda ls: ls.__delitem__(1),
        lambda ls: ls.insert(2, ls[1]),
        lambda ls: ls.__setitem__(2, ls[2].replace('"count":0', '"count":7')),
        lambda ls: ls.reverse(),
    ],
    ids=["edit", "delete", "duplicate", "edit-count", "reorder"],
)
def test_a_modified_line_fails_verification(
    tmp_path: Path, tamper, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _log(tmp_path)
    _fill(log)
    lines = log.path.read_text().splitlines()
    tamper(lines)
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditError, match=r"audit\.jsonl:\d+"):
        verify(log.path)
    assert main(["audit", "verify", str(log.path)]) == 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "audit.jsonl:" in err
    with pytest.raises(AuditError):
        _log(tmp_path)  # a tampered log is noticed when the daemon opens it


def test_recomputed_hash_on_an_edited_line_still_breaks_the_next(tmp_path: Path) -> None:
    from edge.watchlist.audit import canonical, entry_hash

    log = _log(tmp_path)
    _fill(log)
    lines = [json.loads(x) for x in log.path.read_text().splitlines()]
    lines[1]["decision"] = "confirmed"
    lines[1]["hash"] = entry_hash(lines[1])  # a careful forger fixes this line's hash...
    log.path.write_text("".join(canonical(e).decode() + "\n" for e in lines))
    with pytest.raises(AuditError, match=r"audit\.jsonl:3: chain broken"):
        verify(log.path)  # ...but the next line still points at the old one


def test_truncated_last_line_is_reported(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _fill(log)
    data = log.path.read_bytes()
    log.path.write_bytes(data[:-20])
    with pytest.raises(AuditError, match=r":4: incomplete last line"):
        verify(log.path)


def test_never_records_embeddings_faces_or_keys(tmp_path: Path) -> None:
    log = _log(tmp_path)
    with pytest.raises(ValueError):
        log.append("alert", embedding=[0.1, 0.2])
    with pytest.raises(ValueError):
        log.append("alert", face_jpeg="...")
    with pytest.raises(ValueError):
        log.append("alert", data=b"\x00\x01")
    with pytest.raises(ValueError):
        log.append("alert", data=np.zeros(4, np.float32))
    with pytest.raises(ValueError):
        log.append("alert", summary={"key": "x"})
    with pytest.raises(ValueError):
        log.append("alert", seq=3)
    assert not log.path.exists() or log.path.read_bytes() == b""


def test_a_failing_publisher_does_not_lose_the_entry(tmp_path: Path) -> None:
    def boom(entry: dict) -> None:
        raise RuntimeError("broker down")

    log = AuditLog(tmp_path / "a.jsonl", publish=boom)
    log.append("armed", deployment_id="D-1")
    assert verify(log.path) == 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="does not exist"):
        verify(tmp_path / "none.jsonl")
