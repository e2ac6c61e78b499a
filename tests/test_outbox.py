"""The durable outbox: order, ack, encryption at rest, tamper detection, bounds, retention."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.delivery.outbox import (
    RETENTION_S,
    Outbox,
    OutboxFull,
    OutboxKeyError,
    OutboxTampered,
)

KEY = bytes(range(32))
DAY = 86400.0


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "outbox.db", KEY)
    yield ob
    ob.close()


def test_fifo_order_ack_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, KEY) as ob:
        for i in range(5):
            assert ob.put(f"m{i}", "lfr/dev-a/alerts", f"payload {i}".encode())
        assert not ob.put("m2", "lfr/dev-a/alerts", b"again")  # idempotent re-put
        assert [i.msg_id for i in ob.pending(10)] == ["m0", "m1", "m2", "m3", "m4"]
        assert ob.pending(10)[2].payload == b"payload 2"
        assert ob.ack("m1") and not ob.ack("m1")
        assert [i.msg_id for i in ob.pending(2)] == ["m0", "m2"]
        after = ob.pending(10)[1].seq
        assert [i.msg_id for i in ob.pending(10, after_seq=after)] == ["m3", "m4"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Outbox(path, KEY) as ob:  # durable across reopen
        assert ob.count_pending() == 4
        assert ob.pending(1)[0].payload == b"payload 0"
        mode = ob._db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = ob._db.execute("PRAGMA synchronous").fetchone()[0]
        assert (mode, sync) == ("wal", 2)  # WAL, FULL


def test_no_plaintext_on_disk(tmp_path: Path) -> None:
    marker = b"SUBJECT-XQZ-" + os.urandom(8).hex().encode()
    path = tmp_path / "outbox.db"
    ob = Outbox(path, KEY)
    for i in range(20):
        ob.put(f"a{i}", "lfr/dev-a/alerts", marker * 50 + b"%d" % i)
    ob.ack("a3")
    # Check the live files (db, -wal, -shm) while open, then again after close.
    for when in ("open", "closed"):
        blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert b"a7" in blobs  # sanity: we are reading the right files
        assert marker not in blobs, when
        assert marker[:12] not in blobs, when
        if when == "open":
            ob.close()


def test_wrong_key_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, KEY) as ob:
        ob.put("m", "t/x", b"secret")
    with pytest.raises(OutboxKeyError, match="key does not open"):
        Outbox(path, bytes(32))
    with pytest.raises(OutboxKeyError, match="32 bytes"):
        Outbox(path, b"short")


def test_tampered_or_swapped_rows_fail_authentication(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, KEY) as ob:
        for m in ("m0", "m1", "m2", "m3"):
            ob.put(m, "lfr/dev-a/alerts", b"payload of " + m.encode())
    raw = sqlite3.connect(path)
    blob = bytearray(raw.execute("SELECT ciphertext FROM outbox WHERE msg_id='m1'").fetchone()[0])
    blob[20] ^= 0x01  # one bit of the ciphertext
    raw.execute("UPDATE outbox SET ciphertext=? WHERE msg_id='m1'", (bytes(blob),))
    # Moving a valid row to another id (or topic) must fail too: the AAD binds them.
    m3 = raw.execute("SELECT ciphertext FROM outbox WHERE msg_id='m3'").fetchone()[0]
    raw.execute("UPDATE outbox SET ciphertext=? WHERE msg_id='m2'", (m3,))
    raw.execute("UPDATE outbox SET topic='lfr/dev-b/alerts' WHERE msg_id='m3'")
    raw.commit()
    raw.close()
    with Outbox(path, KEY) as ob:
        assert ob.pending(1)[0].payload == b"payload of m0"
        bad = []
        while True:
            try:
                items = ob.pending(10)
                break
            except OutboxTampered as exc:
                bad.append(exc.msg_id)
                ob.mark_bad(exc.msg_id)
        assert bad == ["m1", "m2", "m3"]
        assert [i.msg_id for i in items] == ["m0"]
        assert ob.stats().bad == 3
        with pytest.raises(OutboxTampered):
            ob.get("m1")


def test_bounded_by_items_and_bytes_never_silent(tmp_path: Path) -> None:
    with Outbox(tmp_path / "a.db", KEY, max_items=3) as ob:
        for i in range(3):
            ob.put(f"m{i}", "t/x", b"x")
        with pytest.raises(OutboxFull, match="m3 not stored"):
            ob.put("m3", "t/x", b"x")
        assert ob.get("m3") is None and ob.stats().items == 3
        ob.ack("m0")
        assert ob.put("m3", "t/x", b"x")
    with Outbox(tmp_path / "b.db", KEY, max_bytes=1000) as ob:
        ob.put("big", "t/x", b"y" * 900)  # 900 + 28 bytes nonce/tag
        with pytest.raises(OutboxFull):
            ob.put("more", "t/x", b"y" * 100)
        assert ob.put("small", "t/x", b"y" * 10)


def test_purge_respects_retention_and_legal_hold(box: Outbox) -> None:
    now = 1_800_000_000.0
    box.put("old", "t/a", b"1", now=now - 40 * DAY)
    box.put("old-held", "t/a", b"2", now=now - 40 * DAY)
    box.put("recent", "t/a", b"3", now=now - 1 * DAY)
    box.put("edge", "t/a", b"4", now=now - RETENTION_S + 60)  # just inside 31 days
    assert box.set_legal_hold("old-held", True)
    assert not box.set_legal_hold("nope", True)
    result = box.purge(now=now)
    assert result.count == 1 and result.msg_ids == ("old",)
    assert [i.msg_id for i in box.pending(10)] == ["old-held", "recent", "edge"]
    assert box.purge(now=now).count == 0  # idempotent
    # Held and delivered: kept (not pending) until the hold is lifted, then purged.
    assert box.ack("old-held")
    assert box.get("old-held") is not None
    assert [i.msg_id for i in box.pending(10)] == ["recent", "edge"]
    assert box.stats().held == 1
    box.set_legal_hold("old-held", False)
    assert box.purge(now=now).msg_ids == ("old-held",)
    assert box.purge(older_than_s=0.5 * DAY, now=now).msg_ids == ("recent", "edge")
    assert box.stats().items == 0


def test_mark_sent_keeps_the_first_publish_time(box: Outbox) -> None:
    box.put("m", "t/a", b"x")
    assert box.mark_sent("m", 100.0) == 100.0
    assert box.mark_sent("m", 200.0) == 100.0
    item = box.pending(1)[0]
    assert (item.attempts, item.published_at) == (2, 100.0)
    assert box.mark_sent("gone", 1.0) is None


def test_concurrent_put_and_ack(box: Outbox) -> None:
    acked: list[str] = []
    done = threading.Event()

    def producer(n: int) -> None:
        for i in range(100):
            box.put(f"p{n}-{i}", "t/a", b"z" * 64)

    def consumer() -> None:
        while not done.is_set() or box.count_pending():
            for item in box.pending(20):
                if box.ack(item.msg_id):
                    acked.append(item.msg_id)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
    c = threading.Thread(target=consumer)
    c.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    c.join(60)
    assert not c.is_alive()
    assert len(acked) == len(set(acked)) == 400
    assert box.stats().items == 0


def test_survives_sigkill_of_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from edge.delivery.outbox import Outbox
        ob = Outbox({str(path)!r}, bytes(range(32)))
        for i in range(25):
            ob.put(f"k{{i}}", "lfr/dev-a/alerts", b"alert %d" % i)
        print("stored", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr.decode()
    assert proc.stdout.strip() == b"stored"
    with Outbox(path, KEY) as ob:
        assert [i.payload for i in ob.pending(100)] == [b"alert %d" % i for i in range(25)]


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not sqlite" * 100)
    from edge.delivery.outbox import OutboxError

    with pytest.raises(OutboxError, match="not a usable outbox"):
        Outbox(path, KEY)


def _raw_files(path: Path) -> bytes:
    """The raw bytes of the database and its -wal and -shm files, as a seized card holds them."""
    return b"".join(
        p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )


def _chunks(blob: bytes, size: int = 24) -> list[bytes]:
    """Pieces of a ciphertext: a row larger than a page is split over overflow pages."""
    return [blob[i : i + size] for i in range(0, len(blob) - size + 1, size)]


def test_deleted_rows_are_unrecoverable(tmp_path: Path) -> None:
    """Issue 13 item 6: nothing acknowledged or purged survives in the db, -wal or -shm,
    and a copy of a deleted row's ciphertext taken earlier no longer decrypts."""
    path = tmp_path / "outbox.db"
    now = 1_800_000_000.0
    old = now - 40 * DAY  # another day: its data key is destroyed with its last row
    marker = b"FACE-CROP-" + os.urandom(8).hex().encode()
    ob = Outbox(path, KEY)
    for i in range(6):
        ob.put(f"old{i}", "lfr/dev-a/alerts", marker * 40 + b"%d" % i, now=old)
    for i in range(6):
        ob.put(f"new{i}", "lfr/dev-a/alerts", marker * 40 + b"%d" % i, now=now)
    raw = sqlite3.connect(path)
    copies = dict(raw.execute("SELECT msg_id, ciphertext FROM outbox").fetchall())
    wrapped_old = [bytes(r[0]) for r in raw.execute("SELECT wrapped FROM data_keys")]
    raw.close()
    assert len(wrapped_old) == 2  # one data key per day
    # Acknowledge two of today's rows and one old one, then purge the rest of the old day.
    for mid in ("new0", "new1", "old0"):
        assert ob.ack(mid)
    blobs = _raw_files(path)  # an acknowledged row is gone at once, not at the next purge
    for mid in ("new0", "new1", "old0"):
        assert not [c for c in _chunks(copies[mid]) if c in blobs], mid
    assert ob.purge(now=now).msg_ids == tuple(f"old{i}" for i in range(1, 6))
    deleted = ["new0", "new1"] + [f"old{i}" for i in range(6)]
    kept = [f"new{i}" for i in range(2, 6)]
    for when in ("open", "closed"):
        blobs = _raw_files(path)
        assert marker not in blobs and marker[:12] not in blobs, when
        for mid in kept:  # sanity: the scan sees the rows that remain
            assert copies[mid][-24:] in blobs, (when, mid)
        for mid in deleted:
            found = [c for c in _chunks(copies[mid]) if c in blobs]
            assert not found, (when, mid, len(found))
        if when == "open":
            ob.close()
    # The crypto-shred: the old day's key is gone from the files, so a copy of its rows'
    # ciphertext kept elsewhere (a stale flash block, a backup) decrypts with nothing left.
    raw = sqlite3.connect(path)
    remaining = [bytes(r[0]) for r in raw.execute("SELECT wrapped FROM data_keys")]
    raw.close()
    assert len(remaining) == 1
    shredded = [w for w in wrapped_old if w not in remaining]
    assert len(shredded) == 1 and not [c for c in _chunks(shredded[0], 16) if c in _raw_files(path)]
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    blob = copies["old3"]
    with pytest.raises(InvalidTag):  # not under the outbox key itself
        AESGCM(KEY).decrypt(blob[:12], blob[12:], b"lfr-outbox/1\x00old3\x00lfr/dev-a/alerts\x000")
    with Outbox(path, KEY) as ob:  # what is kept still opens
        assert [i.msg_id for i in ob.pending(10)] == kept
        assert ob.get("new3") is not None and ob.get("new3").payload == marker * 40 + b"3"  # type: ignore[union-attr]


def _open_with_every_key_left(path: Path, blob: bytes, aad: bytes) -> list[int]:
    """What a seized card gives (the outbox key is on it too): every data key still in
    the files, unwrapped; the ids of those that open ``blob``."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = sqlite3.connect(path)
    rows = [(int(r[0]), bytes(r[-1])) for r in raw.execute("SELECT * FROM data_keys")]
    raw.close()
    opened = []
    for key_id, wrapped in rows:
        key = AESGCM(KEY).decrypt(wrapped[:12], wrapped[12:],
                                  b"lfr-outbox/2 data-key\x00" + str(key_id).encode())
        try:
            AESGCM(key).decrypt(blob[:12], blob[12:], aad)
            opened.append(key_id)
        except InvalidTag:
            pass
    return opened


def test_a_key_dies_with_its_last_row_the_same_day(tmp_path: Path) -> None:
    """Issue 21: a copy of a pending alert's ciphertext (taken from the card while it
    waited) opens with nothing left on the card once the alert is acknowledged, a minute
    later on the same day; the next alert gets a fresh key, which lives while any of its
    rows does."""
    path = tmp_path / "outbox.db"
    now = time.time()  # today: the current period, whose key used to live all day
    if DAY - now % DAY < 120:  # stay inside today (the puts below span 61 s)
        now -= 300

    def aad(mid: str) -> bytes:
        return b"lfr-outbox/1\x00" + mid.encode() + b"\x00lfr/dev-a/alerts\x000"

    def ciphertext(mid: str) -> bytes:
        raw = sqlite3.connect(path)
        row = raw.execute("SELECT ciphertext FROM outbox WHERE msg_id = ?", (mid,)).fetchone()
        raw.close()
        return bytes(row[0])

    with Outbox(path, KEY) as ob:
        ob.put("a1", "lfr/dev-a/alerts", b"FACE-1", now=now)
        copy = ciphertext("a1")
        (first,) = _open_with_every_key_left(path, copy, aad("a1"))  # it opens while pending
        assert ob.ack("a1")
        assert _open_with_every_key_left(path, copy, aad("a1")) == []  # the key died with it
        ob.put("a2", "lfr/dev-a/alerts", b"FACE-2", now=now + 60)  # same day: a new key
        ob.put("a3", "lfr/dev-a/alerts", b"FACE-3", now=now + 61)  # shares a2's
        (second,) = _open_with_every_key_left(path, ciphertext("a2"), aad("a2"))
        assert second != first
        assert _open_with_every_key_left(path, ciphertext("a3"), aad("a3")) == [second]
        assert _open_with_every_key_left(path, copy, aad("a1")) == []
        copy2 = ciphertext("a2")
        assert ob.ack("a2")  # a3 still needs the key
        assert _open_with_every_key_left(path, copy2, aad("a2")) == [second]
        assert ob.ack("a3")
        assert _open_with_every_key_left(path, copy2, aad("a2")) == []
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT COUNT(*) FROM data_keys").fetchone()[0] == 0
    raw.close()
    assert copy[12:40] not in _raw_files(path)


def test_a_format_2_file_is_migrated_and_its_keys_still_open(tmp_path: Path) -> None:
    """A file of the previous format (one key per period, keyed by the period) keeps its
    pending rows, and their key dies with the last of them."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    path = tmp_path / "outbox.db"
    with Outbox(path, KEY):
        pass
    period = 20_833
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(KEY).encrypt(nonce, key,
                                          b"lfr-outbox/2 data-key\x00" + str(period).encode())
    nonce = os.urandom(12)
    blob = nonce + AESGCM(key).encrypt(nonce, b"pending", b"lfr-outbox/1\x00P\x00t/a\x000")
    raw = sqlite3.connect(path)  # rewrite it as format 2 wrote it
    raw.executescript("""
        DROP TABLE data_keys;
        CREATE TABLE data_keys (period INTEGER PRIMARY KEY, wrapped BLOB NOT NULL);
        DROP INDEX outbox_key_id;
        ALTER TABLE outbox RENAME COLUMN key_id TO key_period;
        CREATE INDEX outbox_key_period ON outbox (key_period);
        UPDATE meta SET value = x'32' WHERE key = 'format';
    """)
    raw.execute("INSERT INTO data_keys VALUES (?, ?)", (period, wrapped))
    raw.execute("INSERT INTO outbox (msg_id, topic, retain, created_at, ciphertext, key_period) "
                "VALUES ('P', 't/a', 0, ?, ?, ?)", (period * DAY, blob, period))  # fmt: skip
    raw.commit()
    raw.close()
    with Outbox(path, KEY) as ob:
        assert [i.payload for i in ob.pending(10)] == [b"pending"]
        ob.put("n", "t/a", b"new", now=period * DAY + 10)  # the same period: its live key
        assert [i.payload for i in ob.pending(10)] == [b"pending", b"new"]
        assert ob.ack("P") and ob.ack("n")
        raw = sqlite3.connect(path)
        assert raw.execute("SELECT COUNT(*) FROM data_keys").fetchone()[0] == 0  # died with n
        ob.put("m", "t/a", b"next", now=period * DAY + 20)
        assert [r[0] for r in raw.execute("SELECT id FROM data_keys")] == [period + 1]  # fresh
        assert raw.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0] == b"3"
        raw.close()
        assert [i.payload for i in ob.pending(10)] == [b"next"]


def test_a_format_1_file_is_migrated_and_its_rows_still_open(tmp_path: Path) -> None:
    """A file written before data keys (rows under the outbox key) keeps working."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    path = tmp_path / "outbox.db"
    with Outbox(path, KEY) as ob:
        ob.put("m", "t/a", b"x")
    raw = sqlite3.connect(path)  # rewrite it as format 1 wrote it
    raw.execute("DROP INDEX outbox_key_id")
    raw.execute("ALTER TABLE outbox DROP COLUMN key_id")
    raw.execute("DELETE FROM outbox")
    nonce = os.urandom(12)
    blob = nonce + AESGCM(KEY).encrypt(nonce, b"legacy", b"lfr-outbox/1\x00L\x00t/a\x000")
    raw.execute(
        "INSERT INTO outbox (msg_id, topic, retain, created_at, ciphertext) "
        "VALUES ('L', 't/a', 0, 1.0, ?)", (blob,),
    )  # fmt: skip
    raw.commit()
    raw.close()
    with Outbox(path, KEY) as ob:
        assert [i.payload for i in ob.pending(10)] == [b"legacy"]
        ob.put("n", "t/a", b"new")
        assert [i.payload for i in ob.pending(10)] == [b"legacy", b"new"]
        assert ob.ack("L")
