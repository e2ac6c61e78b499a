"""Nothing left behind: a deleted image is unrecoverable from the console's database files.

Issue 21, medium 5: a deleted reference image's sealed blob stayed in ``console.db`` and
``console.key`` on the same host opened it. Here a reference file is imported and an
alert's crop stored through the console's real code (on SQLite in WAL mode and on a real
PostgreSQL server), then deleted as the console deletes them (the window closed; the
retention purge); the raw bytes of ``console.db``, ``-wal`` and ``-shm`` are scanned for
the plaintext JPEG, its ciphertext and the wrapped key that could decrypt it - with a
control that the same scan finds them before the deletion - and a copy of the ciphertext
taken before (a backup, a dead PostgreSQL row) no longer decrypts with anything the host
holds, the console's key included.
"""

from __future__ import annotations

import logging
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.console.crypto import AtRest, DataKeys, SealError, crop_key_name, reference_key_name
from edge.console.events import Hub
from edge.console.handlers import Handler
from edge.console.metrics import Metrics
from edge.console.service import ActionRefused, Console
from edge.console.store import Store
from edge.delivery.alert import encode_alert
from edge.delivery.alert_sign import seal_alert
from edge.watchlist.references import Reference, build_references
from tests.fixtures.alerts import make_record
from tests.fixtures.postgres import pg_url, postgres_server  # noqa: F401

DAY = 86400.0


class NoBroker:
    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> None:
        raise AssertionError("nothing is published here")


@pytest.fixture(params=["sqlite", "postgresql"])
def parts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Console, Path | None]]:
    db = tmp_path / "console.db" if request.param == "sqlite" else None
    store = Store.open(f"sqlite:///{db}" if db else request.getfixturevalue("pg_url"))
    refs = tmp_path / "refs"
    refs.mkdir()
    console = Console(store, AtRest(X25519PrivateKey.generate()), Hub(), Metrics(), NoBroker(),
                      Ed25519PrivateKey.generate(), references_dir=refs)  # fmt: skip
    yield console, db
    store.close()


def _files(db: Path) -> bytes:
    """console.db, -wal and -shm as raw bytes, as a copy of the host's disk holds them."""
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"))
                    if p.exists())  # fmt: skip


def _pieces(blob: bytes) -> list[bytes]:
    """48-byte pieces of the blob: a partial remnant is found too, and one stored across
    SQLite's overflow pages (not contiguous in the file)."""
    return [blob[i:i + 48] for i in range(0, len(blob) - 48, 400)]


def _found(blob: bytes, raw: bytes) -> bool:
    return any(p in raw for p in _pieces(blob))


def _jpeg() -> bytes:
    return b"\xff\xd8\xff\xe0" + secrets.token_bytes(2100) + b"\xff\xd9"


def test_a_deleted_reference_image_leaves_nothing_that_decrypts(
    parts: tuple[Console, Path | None],
) -> None:
    console, db = parts
    assert console.references_dir is not None
    jpeg, end = _jpeg(), time.time() + 3600
    (console.references_dir / "d.refs").write_bytes(build_references(
        console.signing_key, console.at_rest.private_key.public_key(), deployment_id="D-5",
        bundle_id="b" * 32, window_end=end, subjects=[Reference("S-1", "suspect", jpeg)]))
    assert console.housekeeping()["references_imported"] == 1
    sealed = console.store.images.reference("D-5", "S-1")
    wrapped = console.store.images.wrapped_key(reference_key_name("D-5"))
    assert sealed is not None and wrapped is not None
    assert console.reference("pc-1", "D-5", "S-1") == jpeg
    if db is not None:  # control: the scan finds what the host holds before the deletion
        raw = _files(db)
        assert _found(sealed, raw) and wrapped in raw and not _found(jpeg, raw)
    assert console.housekeeping(now=end + 1)["references_deleted"] == 1
    if db is not None:
        raw = _files(db)
        for what, blob in (("plaintext", jpeg[4:-2]), ("ciphertext", sealed),
                           ("wrapped key", wrapped)):  # fmt: skip
            assert not _found(blob, raw), f"the {what} is still in the files"
    # A copy of the ciphertext taken before (a backup; on PostgreSQL a dead row until
    # VACUUM) opens with nothing the host still holds: its key is gone from the database,
    # and the console's own key never sealed it.
    assert console.store.images.wrapped_key(reference_key_name("D-5")) is None
    assert DataKeys(console.store.images, console.at_rest).get(reference_key_name("D-5")) is None
    with pytest.raises(SealError):
        console.at_rest.open(sealed, "ref:D-5:S-1")
    with pytest.raises(ActionRefused):
        console.reference("pc-1", "D-5", "S-1")


def test_a_purged_crop_leaves_nothing_that_decrypts(parts: tuple[Console, Path | None]) -> None:
    console, db = parts
    device_key = Ed25519PrivateKey.generate()
    handler = Handler(console.store, console.at_rest, console.hub, console.metrics,
                      device_keys={"van-1": device_key.public_key()})  # fmt: skip
    record = make_record("van-1")
    now = time.time()
    assert handler.handle("lfr/van-1/alerts", seal_alert(encode_alert(record), now,
                                                         device_key)) == "stored"  # fmt: skip
    crop = record.face_jpeg
    sealed = console.store.crop(record.alert_id)
    name = crop_key_name(time.time())
    wrapped = console.store.images.wrapped_key(name)
    assert sealed is not None and wrapped is not None and sealed[12:60] not in crop
    assert console.crop("pc-1", record.alert_id) == crop
    if db is not None:
        raw = _files(db)
        assert _found(sealed, raw) and wrapped in raw
    # The retention purge, 32 days on: the crop, and its day's key with its last crop.
    assert console.housekeeping(now=now + 32 * DAY)["purged"] == 1
    assert console.store.console_log()[0]["event"] == "crop_keys_destroyed"
    if db is not None:
        raw = _files(db)
        for what, blob in (("ciphertext", sealed), ("wrapped key", wrapped)):
            assert not _found(blob, raw), f"the {what} is still in the files"
    assert console.store.images.wrapped_key(name) is None
    with pytest.raises(SealError):
        console.at_rest.open(sealed, f"crop:{record.alert_id}")


def test_todays_crop_key_stays_while_it_may_still_be_used(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    keys = DataKeys(store.images, AtRest(X25519PrivateKey.generate()))
    today, yesterday = crop_key_name(time.time()), crop_key_name(time.time() - DAY)
    for name in (today, yesterday, crop_key_name(time.time() - 2 * DAY)):
        keys.get_or_create(name)
    period = int(time.time() // DAY)
    assert store.images.shred_crop_keys(period - 1) == [crop_key_name(time.time() - 2 * DAY)]
    assert keys.get(today) is not None and keys.get(yesterday) is not None
    store.close()


def test_the_database_and_key_files_are_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edge.console.config import from_dict
    from edge.errors import ConfigError

    db = tmp_path / "console.db"
    store = Store.open(f"sqlite:///{db}")
    store.auth.add_user("pc-1", "operator", "hash", 1.0)
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    store.close()
    db.chmod(0o644)  # a database made before, or by hand: repaired, and said so
    with caplog.at_level(logging.WARNING, logger="edge.console.store"):
        Store.open(f"sqlite:///{db}").close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert any("was mode 0644" in r.getMessage() and "set to 0600" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    key = tmp_path / "console.key"
    key.write_text("x")
    key.chmod(0o640)
    with pytest.raises(ConfigError) as exc:
        from_dict({"console": {"key_file": str(key), "signing_key": str(key),
                               "device_keys": str(tmp_path)}}, tmp_path)  # fmt: skip
    assert exc.value.problems == [
        f"[console] key_file: {key} is open to others (mode 0640); it holds a secret: "
        f"chmod 600 {key}",
        f"[console] signing_key: {key} is open to others (mode 0640); it holds a secret: "
        f"chmod 600 {key}",
    ]
