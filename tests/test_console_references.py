"""Reference images for the console, and the console's retention (each step audited)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.console.crypto import AtRest
from edge.console.events import Hub
from edge.console.handlers import Handler
from edge.console.metrics import Metrics
from edge.console.service import ActionRefused, Console
from edge.console.store import Store
from edge.delivery.alert import jpeg_size
from edge.errors import UsageError
from edge.watchlist.references import (
    Reference,
    ReferencesRefused,
    build_references,
    open_references,
)

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


class NoBroker:
    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> None:
        from edge.console.service import PublishFailed

        raise PublishFailed("the console is not connected to the broker")


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Console, Ed25519PrivateKey, X25519PrivateKey]]:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    key, signing = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    refs = tmp_path / "refs"
    refs.mkdir()
    console = Console(store, AtRest(key), Hub(), Metrics(), NoBroker(), signing,
                      references_dir=refs)
    yield console, signing, key
    store.close()


def _refs(signing: Ed25519PrivateKey, key: X25519PrivateKey, end: float,
          dep: str = "D-1") -> bytes:  # fmt: skip
    return build_references(signing, key.public_key(), deployment_id=dep, bundle_id="b" * 32,
                            window_end=end, subjects=[Reference("S-1", "suspect", JPEG)])


def test_a_reference_file_opens_only_with_the_console_key_and_the_signer() -> None:
    key, signing = X25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    data = _refs(signing, key, time.time() + 60)
    refs = open_references(data, key, signing.public_key())
    assert (refs.deployment_id, refs.subjects[0].jpeg) == ("D-1", JPEG)
    with pytest.raises(ReferencesRefused, match="does not unwrap"):
        open_references(data, X25519PrivateKey.generate(), signing.public_key())
    with pytest.raises(ReferencesRefused, match="signature"):
        open_references(data, key, Ed25519PrivateKey.generate().public_key())
    doc = json.loads(data)
    doc["header"] = doc["header"].replace("D-1", "D-2")
    with pytest.raises(ReferencesRefused, match="signature"):
        open_references(json.dumps(doc).encode(), key, signing.public_key())
    with pytest.raises(ReferencesRefused, match=r"garbled|not a reference"):
        open_references(b"[1,2", key, signing.public_key())


def test_imported_then_deleted_when_the_window_closes_each_step_audited(
    parts: tuple[Console, Ed25519PrivateKey, X25519PrivateKey], tmp_path: Path
) -> None:
    console, signing, key = parts
    end = time.time() + 3600
    (tmp_path / "refs" / "d1.refs").write_bytes(_refs(signing, key, end))
    (tmp_path / "refs" / "bad.refs").write_bytes(b"not a file")
    done = console.housekeeping()
    assert done["references_imported"] == 1
    assert not (tmp_path / "refs" / "d1.refs").exists()  # the plaintext-free file is consumed
    assert (tmp_path / "refs" / "bad.refused").exists()
    assert console.reference("pc-1", "D-1", "S-1") == JPEG
    assert console.store.images.reference("D-1", "S-1") != JPEG  # encrypted at rest
    assert console.housekeeping(now=end + 1)["references_deleted"] == 1
    with pytest.raises(ActionRefused):
        console.reference("pc-1", "D-1", "S-1")
    events = [e["event"] for e in console.store.console_log()]
    assert events == ["references_deleted", "reference_viewed", "references_imported",
                      "references_refused"]


def _raw_refs(signing: Ed25519PrivateKey, key: X25519PrivateKey, items: list[dict[str, object]],
              dep: str = "D-1") -> bytes:  # fmt: skip
    """A reference file with these payload items as they are (an older writer, or a hostile
    one holding the control room's key), encrypted and signed as the format says."""
    import base64
    import secrets

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from edge.watchlist.bundle import wrap_content_key
    from edge.watchlist.references import FORMAT, SIG_CONTEXT, _canon

    header = _canon({"deployment_id": dep, "bundle_id": "b" * 32,
                     "window_end": time.time() + 3600, "count": len(items)})  # fmt: skip
    content = AESGCM.generate_key(bit_length=256)
    recipient = wrap_content_key(content, "b" * 32, "console", key.public_key())
    nonce = secrets.token_bytes(12)
    payload = base64.b64encode(nonce + AESGCM(content).encrypt(
        nonce, _canon(items).encode(), header.encode())).decode()  # fmt: skip
    sig = signing.sign(SIG_CONTEXT + header.encode() + payload.encode())
    return _canon({"format": FORMAT, "header": header, "recipient": recipient.to_json(),
                   "payload": payload, "signature": base64.b64encode(sig).decode()}).encode()


def test_every_reference_image_and_its_provenance_travel_to_the_console(
    parts: tuple[Console, Ed25519PrivateKey, X25519PrivateKey], tmp_path: Path
) -> None:
    import base64

    from edge.recognition.match import MAX_REFERENCES

    console, signing, key = parts
    images = (JPEG, JPEG + b"2", JPEG + b"3")
    data = build_references(signing, key.public_key(), deployment_id="D-1", bundle_id="b" * 32,
                            window_end=time.time() + 3600, subjects=[Reference(
                                "S-1", "suspect", images[0], images[1:], "custody image",
                                "2024-05-01")])  # fmt: skip
    (ref,) = open_references(data, key, signing.public_key()).subjects
    assert (ref.images, ref.source, ref.capture_date) == (images, "custody image", "2024-05-01")
    (tmp_path / "refs" / "d1.refs").write_bytes(data)
    assert console.housekeeping()["references_imported"] == 1
    assert [console.reference("pc-1", "D-1", "S-1", i) for i in range(3)] == list(images)
    with pytest.raises(ActionRefused, match="no such reference image"):
        console.reference("pc-1", "D-1", "S-1", 3)
    info = console.reference_info("D-1", "S-1")
    assert info == {"source": "custody image", "capture_date": "2024-05-01",
                    "sizes": [None, None, None]}  # these stand-in JPEGs have no frame header
    details = [json.loads(e["detail"]) for e in console.store.console_log()
               if e["event"] == "reference_viewed"]  # fmt: skip
    assert sorted(int(d["image"]) for d in details) == [0, 1, 2]  # each image's view audited
    # A file from before "more" and provenance existed still opens: one image, no provenance.
    b64 = base64.b64encode(JPEG).decode()
    old = _raw_refs(signing, key, [{"subject_id": "S-2", "category": "suspect", "jpeg": b64}])
    (ref,) = open_references(old, key, signing.public_key()).subjects
    assert (ref.images, ref.source, ref.capture_date) == ((JPEG,), "", "")
    # More images than a subject may have, or an oversized or garbled provenance: refused.
    for bad in ({"more": [b64] * MAX_REFERENCES}, {"source": "x" * 201},
                {"capture_date": "2024\n05"}, {"more": "not a list"}):  # fmt: skip
        item = {"subject_id": "S-3", "category": "suspect", "jpeg": b64, **bad}
        with pytest.raises(ReferencesRefused):
            open_references(_raw_refs(signing, key, [item]), key, signing.public_key())
    with pytest.raises(UsageError, match="at most 16 images"):
        build_references(signing, key.public_key(), deployment_id="D-1", bundle_id="b" * 32,
                         window_end=time.time() + 60,
                         subjects=[Reference("S-1", "suspect", JPEG, (JPEG,) * 16)])  # fmt: skip


def test_a_reference_stored_before_reference_sets_is_still_shown(
    parts: tuple[Console, Ed25519PrivateKey, X25519PrivateKey],
) -> None:
    console, _signing, _key = parts
    # as the console stored it before: the bare JPEG, sealed
    console.store.images.put_reference("D-1", "S-1", "suspect",
                                       console.at_rest.seal(JPEG, "ref:D-1:S-1"),
                                       time.time() + 60)  # fmt: skip
    assert console.reference("pc-1", "D-1", "S-1") == JPEG
    assert console.reference_info("D-1", "S-1") == {"source": "", "capture_date": "",
                                                     "sizes": [None]}  # fmt: skip


def test_references_are_deleted_when_the_vans_signed_summary_arrives(
    parts: tuple[Console, Ed25519PrivateKey, X25519PrivateKey], tmp_path: Path
) -> None:
    from edge.watchlist.audit import AuditLog, canonical

    console, signing, key = parts
    path = console.references_dir
    assert path is not None
    (path / "d1.refs").write_bytes(_refs(signing, key, time.time() + 3600))
    console.housekeeping()
    van_key = Ed25519PrivateKey.generate()
    handler = Handler(console.store, console.at_rest, console.hub, console.metrics,
                      device_keys={"van-1": van_key.public_key()})  # fmt: skip
    log = AuditLog(tmp_path / "audit.log", signing_key=van_key,
                   publish=lambda e: handler.handle("lfr/van-1/audit", canonical(e)))
    summary = {"deployment_id": "D-1", "bundle_id": "b" * 32, "device_id": "van-1",
               "location": "x", "window": {"start": "2026-11-22T09:00:00Z",
                                           "end": "2026-11-22T17:00:00Z"},
               "armed_at": None, "ended_at": "2026-11-22T17:00:00Z",
               "end_reason": "end_command", "watchlist_size": 1, "threshold": 0.6,
               "frames": 9, "faces_processed": 40, "tracks": 3, "alerts": 2,
               "adjudications": {"confirmed": 1, "rejected": 1, "not_stopped": 0}}
    log.append("deployment_summary", summary={**summary, "bundle_id": "c" * 32})
    assert console.store.images.reference("D-1", "S-1") is not None  # another bundle's summary
    log.append("deployment_summary", summary=summary)
    assert console.store.images.reference("D-1", "S-1") is None
    entry = console.store.console_log()[0]
    assert entry["event"] == "references_deleted" and "signed summary" in entry["detail"]


def test_retention_purges_old_alerts_and_crops_but_not_held_ones_and_audits_it(
    parts: tuple[Console, Ed25519PrivateKey, X25519PrivateKey],
) -> None:
    from tests.test_console_store import _alert

    console, _, _ = parts
    now = time.time()
    old, held = _alert(), _alert()
    console.store.add_alert(old, b"x", now - 32 * 86400)
    console.store.add_alert(held, b"y", now - 32 * 86400)
    console.store.set_legal_hold(str(held["alert_id"]), True)
    assert console.housekeeping(now)["purged"] == 1
    assert [a["alert_id"] for a in console.store.alerts()] == [held["alert_id"]]
    entry = console.store.console_log()[0]
    assert entry["event"] == "alerts_purged" and str(old["alert_id"]) in entry["detail"]


def test_an_adjudication_that_cannot_be_sent_says_so_and_is_recorded(
    parts: tuple[Console, Ed25519PrivateKey, X25519PrivateKey],
) -> None:
    from tests.test_console_store import _alert

    console, _, _ = parts
    a = _alert()
    console.store.add_alert(a, b"x", time.time())
    with pytest.raises(ActionRefused, match="not connected") as exc:
        console.adjudicate("pc-1", str(a["alert_id"]), "confirmed")
    assert exc.value.status == 503
    assert console.store.adjudications()[0]["state"] == "not_sent"
    with pytest.raises(ActionRefused, match="decision"):
        console.adjudicate("pc-1", str(a["alert_id"]), "arrest")


def test_watchlist_build_writes_the_console_reference_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    from edge.commands.demo import ROOT, write_deployment_toml
    from edge.watchlist.keys import load_device_key, load_signer_public

    def edge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                              text=True, timeout=120, check=False)

    keys = tmp_path / "keys"
    for extra in ((), ("--device", "van-1"), ("--device", "console")):
        assert edge("keys", "init", "--out", str(keys), *extra).returncode == 0
    write_deployment_toml(tmp_path / "dep.toml", 0.5)
    r = edge("watchlist", "build", "--subjects", str(ROOT / "demo" / "subjects"),
             "--deployment", str(tmp_path / "dep.toml"), "--signing-key",
             str(keys / "signing.key"), "--recipients", str(keys / "van-1.pub"),
             "--out", str(tmp_path / "w.bundle"), "--console-pub", str(keys / "console.pub"),
             "--no-progress")
    assert r.returncode == 0, r.stderr
    refs = open_references((tmp_path / "w.refs").read_bytes(),
                           load_device_key(keys / "console.key"),
                           load_signer_public(keys / "signing.pub"))
    assert [s.subject_id for s in refs.subjects] == ["DEMO-0001"]
    assert refs.subjects[0].jpeg[:2] == b"\xff\xd8" and refs.deployment_id.startswith("DEMO-")
    # Every one of the demo subject's sixteen images, at its own size (the faces in these
    # 480x270 frames are ~95 px: ~142 px with the margin, above the bundle's 112 px
    # thumbnail, under the 320 px cap), with the provenance from its subject.toml.
    (demo,) = refs.subjects
    assert len(demo.images) == 16
    sizes = [jpeg_size(j) for j in demo.images]
    assert all(112 < max(s) <= 320 for s in sizes), sizes
    assert demo.source.startswith("Intel sample video") and demo.capture_date == "2018-01-01"
    assert refs.window_end > time.time()
    r = edge("watchlist", "build", "--subjects", str(ROOT / "demo" / "subjects"),
             "--deployment", str(tmp_path / "dep.toml"), "--signing-key",
             str(keys / "signing.key"), "--recipients", str(keys / "van-1.pub"),
             "--out", str(tmp_path / "x.bundle"), "--references-out", str(tmp_path / "x.refs"))
    assert r.returncode == 2 and r.stderr.strip() == "edge: --references-out needs --console-pub"
