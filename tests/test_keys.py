"""Key files: modes, no overwrite without --force, never printed; HKDF derivation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge.cli import main
from edge.errors import UsageError
from edge.watchlist.keys import (
    derive_key,
    init_device_key,
    init_signing_key,
    load_device_key,
    load_device_public,
    load_signer_public,
    load_signing_key,
    raw_private_bytes,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_signing_key_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0)  # even with a permissive umask the private key is 0600
    try:
        assert main(["keys", "init", "--out", str(tmp_path / "cr")]) == 0
    finally:
        os.umask(old)
    out = capsys.readouterr().out
    priv, pub = tmp_path / "cr" / "signing.key", tmp_path / "cr" / "signing.pub"
    assert _mode(priv) == 0o600
    assert _mode(pub) == 0o644
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    key = load_signing_key(priv)
    assert load_signer_public(pub).public_bytes_raw() == key.public_key().public_bytes_raw()
    # the private key never reaches the terminal
    body = b"".join(priv.read_bytes().splitlines()[1:-1]).decode()
    assert body not in out and "PRIVATE" not in out
    assert not list((tmp_path / "cr").glob(".*tmp"))


def test_device_key_pair_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", "--out", str(tmp_path), "--device", "van-01"]) == 0
    priv, pub = tmp_path / "van-01.key", tmp_path / "van-01.pub"
    assert _mode(priv) == 0o600
    key = load_device_key(priv)
    dev_id, pub_key = load_device_public(pub)
    assert dev_id == "van-01"
    assert pub_key.public_bytes_raw() == key.public_key().public_bytes_raw()
    before = priv.read_bytes()
    capsys.readouterr()
    # no silent overwrite
    assert main(["keys", "init", "--out", str(tmp_path), "--device", "van-01"]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and err.count("\n") == 1
    assert priv.read_bytes() == before
    assert main(["keys", "init", "--out", str(tmp_path), "--device", "van-01", "--force"]) == 0
    assert priv.read_bytes() != before
    assert _mode(priv) == 0o600
    # wrong kinds of key are refused with one line
    with pytest.raises(UsageError, match="not an Ed25519 signing key"):
        load_signing_key(priv)
    with pytest.raises(UsageError, match="not an X25519"):
        load_device_key(init_signing_key(tmp_path / "cr").private)
    with pytest.raises(UsageError, match="does not exist"):
        load_device_key(tmp_path / "nope.key")
    (tmp_path / "junk.key").write_text("hello")
    with pytest.raises(UsageError, match="not an unencrypted PEM"):
        load_device_key(tmp_path / "junk.key")
    with pytest.raises(UsageError, match="invalid device id"):
        init_device_key(tmp_path, "../evil")


def test_derive_key_is_deterministic_and_purpose_bound(tmp_path: Path) -> None:
    files = init_device_key(tmp_path, "van-02")
    raw = raw_private_bytes(load_device_key(files.private))
    a = derive_key(raw, "outbox-at-rest")
    assert len(a) == 32
    assert derive_key(raw, "outbox-at-rest") == a
    assert derive_key(raw, "something-else") != a
    assert a != raw
    with pytest.raises(ValueError):
        derive_key(b"short", "x")
