"""Device-signed audit entries checked against what the control room saw (issue 13, item 4).

Each fails on the code before signing: truncating the last lines verified, and a history
rewritten with every hash recomputed verified (and the daemon kept appending to it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import signing
from edge.cli import main
from edge.errors import AuditError
from edge.watchlist.audit import AuditLog, canonical, entry_hash, verify, verify_report

KEY = Ed25519PrivateKey.generate()


def _clock() -> object:
    t = iter(range(1_800_000_000, 1_900_000_000))
    return lambda: float(next(t))


def _log(path: Path, key: Ed25519PrivateKey | None = KEY) -> AuditLog:
    return AuditLog(path, clock=_clock(), signing_key=key)  # type: ignore[arg-type]


def _fill(log: AuditLog, n: int = 10) -> list[dict[str, object]]:
    return [log.append("purge", store="outbox", count=i, msg_ids=[]) for i in range(n)]


@pytest.fixture
def pub(tmp_path: Path) -> Path:
    """The device's public key as the control room holds it (<id>.signing.pub)."""
    path = tmp_path / "keys" / "van-1.signing.pub"
    path.parent.mkdir()
    path.write_bytes(signing.public_pem(KEY.public_key()))
    return path


def test_each_entry_is_signed_over_its_hash(tmp_path: Path, pub: Path) -> None:
    log = _log(tmp_path / "audit.log")
    entries = _fill(log, 3)
    for e in entries:
        assert signing.verify(KEY.public_key(), b"lfr-edge audit v1\x00",
                              str(e["hash"]).encode(), e["sig"])  # fmt: skip
        assert e["hash"] == entry_hash(e)  # the hash does not cover the signature
    r = verify_report(log.path, KEY.public_key())
    assert (r.entries, r.signed, r.unsigned_through) == (3, 3, 0)
    assert main(["audit", "verify", str(log.path), "--device-key", str(pub)]) == 0


def test_truncating_the_last_lines_fails_against_the_control_rooms_seq(
    tmp_path: Path, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _log(tmp_path / "audit.log")
    entries = _fill(log)
    seen_seq, seen_hash = 10, str(entries[-1]["hash"])  # what the console verified
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:7]))  # the last three lines dropped
    assert verify(log.path) == 7  # the chain alone cannot tell
    with pytest.raises(AuditError, match="ends at entry 7, but the control room received "
                       r"up to entry 10 \(truncated\)"):  # fmt: skip
        verify_report(log.path, KEY.public_key(), last_seq=seen_seq)
    capsys.readouterr()
    assert main(["audit", "verify", str(log.path), "--device-key", str(pub),
                 "--last-seq", "10"]) == 6  # fmt: skip
    assert "truncated" in capsys.readouterr().err
    export = tmp_path / "console.json"
    export.write_text(json.dumps({"verified_seq": seen_seq, "last_hash": seen_hash}))
    assert main(["audit", "verify", str(log.path), "--device-key", str(pub),
                 "--control-room", str(export)]) == 6  # fmt: skip


def _rewrite(path: Path, seq: int, sign_with: Ed25519PrivateKey | None) -> None:
    """Change entry ``seq`` and recompute every hash after it (a careful forger)."""
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    entries[seq - 1]["count"] = 999
    prev = entries[seq - 2]["hash"] if seq > 1 else "0" * 64
    for e in entries[seq - 1 :]:
        e["prev_hash"] = prev
        e.pop("sig", None)
        e["hash"] = prev = entry_hash(e)
        if sign_with is not None:
            e["sig"] = signing.sign(sign_with, b"lfr-edge audit v1\x00", e["hash"].encode())
    path.write_text("".join(canonical(e).decode() + "\n" for e in entries))


@pytest.mark.parametrize("forger", ["old signatures kept", "signatures stripped",
                                    "signed with another key"])  # fmt: skip
def test_a_recomputed_chain_without_the_key_fails(tmp_path: Path, pub: Path, forger: str) -> None:
    log = _log(tmp_path / "audit.log")
    _fill(log)
    original = [json.loads(x) for x in log.path.read_text().splitlines()]
    _rewrite(log.path, 4, Ed25519PrivateKey.generate() if forger.startswith("signed") else None)
    if forger == "old signatures kept":
        entries = [json.loads(x) for x in log.path.read_text().splitlines()]
        for e, o in zip(entries, original, strict=True):
            e["sig"] = o["sig"]
        log.path.write_text("".join(canonical(e).decode() + "\n" for e in entries))
    assert verify(log.path) == 10  # the hash chain alone is fooled
    with pytest.raises(AuditError, match=r"audit\.log:4: (signature does not verify|entry 4 "
                       "is not signed)"):  # fmt: skip
        verify_report(log.path, KEY.public_key())
    assert main(["audit", "verify", str(log.path), "--device-key", str(pub)]) == 6
    with pytest.raises(AuditError):
        _log(log.path)  # the daemon (holding the key) no longer appends to it


def test_a_wholly_unsigned_rewrite_fails_with_the_key(tmp_path: Path) -> None:
    log = _log(tmp_path / "audit.log")
    _fill(log)
    _rewrite(log.path, 1, None)  # every signature gone, every hash recomputed
    with pytest.raises(AuditError, match="none of its 10 entries is signed"):
        verify_report(log.path, KEY.public_key())


def test_a_history_rewritten_with_the_key_differs_from_the_control_rooms_copy(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path / "audit.log")
    entries = _fill(log)
    _rewrite(log.path, 4, KEY)  # e.g. an old backup of the card, re-signed by the device
    verify_report(log.path, KEY.public_key())  # signed by the right key...
    with pytest.raises(AuditError, match="entry 10 is not the one the control room received"):
        verify_report(log.path, KEY.public_key(), last_seq=10, last_hash=str(entries[-1]["hash"]))
    verify_report(log.path, KEY.public_key(), last_seq=3, last_hash=str(entries[2]["hash"]))


def test_an_old_unsigned_log_opens_and_verify_names_the_unsigned_entries(
    tmp_path: Path, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.log"
    _fill(_log(path, key=None), 3)  # written before entries were signed
    log = _log(path)  # the daemon with its key opens it and signs from now on
    assert log.last_seq == 3
    _fill(log, 2)
    r = verify_report(path, KEY.public_key())
    assert (r.entries, r.signed, r.unsigned_through) == (5, 2, 3)
    capsys.readouterr()
    assert main(["audit", "verify", str(path), "--device-key", str(pub.parent),
                 "--device", "van-1", "--last-seq", "5"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "2 signed by the device key, entries 1..3 unsigned (written before signing)" in out
    assert "holds entry 5 the control room received" in out
    # An unsigned entry after signed ones is tampering, never "legacy".
    _fill(_log(path, key=None), 1)
    with pytest.raises(AuditError, match="entry 6 is not signed, after signed entries"):
        verify_report(path, KEY.public_key())


def test_verify_usage_errors_are_one_line(
    tmp_path: Path, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _log(tmp_path / "audit.log")
    _fill(log, 2)
    for args, message in (
        (["--last-hash", "a" * 64], "--last-hash needs --last-seq"),
        (["--last-seq", "1", "--last-hash", "xyz"], "64 lower-case hex digits"),
        (["--device-key", str(tmp_path / "nope")], "no such file or directory"),
    ):
        capsys.readouterr()
        assert main(["audit", "verify", str(log.path), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
