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


def test_device_signing_key_pair_is_made_with_the_device_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the Ansible role runs on the device: both key pairs, private halves 0600."""
    from edge.signing import private_from_pem

    assert main(["keys", "init", "--out", str(tmp_path), "--device", "van-01", "--signing"]) == 0
    out = capsys.readouterr().out
    assert _mode(tmp_path / "van-01.key") == 0o600
    assert _mode(tmp_path / "van-01.signing.key") == 0o600
    signing = private_from_pem((tmp_path / "van-01.signing.key").read_bytes())
    pub = load_signer_public(tmp_path / "van-01.signing.pub")
    assert pub.public_bytes_raw() == signing.public_key().public_bytes_raw()
    assert "PRIVATE" not in out
    assert main(["keys", "init", "--out", str(tmp_path / "x"), "--signing"]) == 2
    assert "--signing needs --device" in capsys.readouterr().err


def test_deployment_key_only_on_a_ram_file_system(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``edge keys deployment-key`` refuses a directory on persistent storage (one line,
    exit 2); on tmpfs it makes <key id>.key 0600 and prints the .pub path last."""
    from edge.watchlist.keys import (
        deployment_key_path,
        destroy_deployment_key,
        filesystem_type,
        load_deployment_key,
        load_deployment_public,
    )

    disk = tmp_path / "keys"
    if filesystem_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("the test directory is itself on tmpfs")
    assert main(["keys", "deployment-key", "--dir", str(disk)]) == 2
    err = capsys.readouterr().err
    assert "not on a RAM file system" in err and err.count("\n") == 1
    assert not list(disk.glob("*.key"))
    shm = Path("/dev/shm")
    if filesystem_type(shm) != "tmpfs" or not os.access(shm, os.W_OK):
        pytest.skip("no writable tmpfs at /dev/shm")
    import tempfile

    ram = Path(tempfile.mkdtemp(dir=shm)) / "deployment-keys"
    try:
        assert main(["keys", "deployment-key", "--dir", str(ram)]) == 0
        out = capsys.readouterr().out.splitlines()
        pub_path = Path(out[-1])
        (priv,) = ram.glob("*.key")
        assert _mode(priv) == 0o600 and pub_path == priv.with_suffix(".pub")
        kid = priv.stem
        key = load_deployment_key(ram, kid)
        assert key is not None
        assert load_deployment_public(pub_path).public_bytes_raw() == (
            key.public_key().public_bytes_raw())
        assert "PRIVATE" not in "\n".join(out)
        assert destroy_deployment_key(ram, kid) is True
        assert load_deployment_key(ram, kid) is None and not pub_path.exists()
        assert destroy_deployment_key(ram, kid) is False
        with pytest.raises(ValueError):
            deployment_key_path(ram, "../../etc/passwd")
    finally:
        import shutil

        shutil.rmtree(ram.parent)


def test_filesystem_type_takes_the_longest_mount_point(tmp_path: Path) -> None:
    from edge.watchlist.keys import filesystem_type

    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n"
        "25 22 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755\n"
        "26 25 0:24 / /run/edge/x rw - ext4 /dev/sdb1 rw\n"
        "27 22 0:25 / /runner rw - xfs /dev/sdc1 rw\n"
    )
    assert filesystem_type(Path("/run/edge/deployment-keys"), info) == "tmpfs"
    assert filesystem_type(Path("/run/edge/x/y"), info) == "ext4"
    assert filesystem_type(Path("/runner/k"), info) == "xfs"
    assert filesystem_type(Path("/var/lib/edge"), info) == "ext4"
    assert filesystem_type(Path("/x"), tmp_path / "absent") is None
