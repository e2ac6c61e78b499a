"""Several references per subject: through a signed bundle, old bundles, limits, the wipe."""

from __future__ import annotations

import datetime as dt
import inspect
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.errors import BundleRefused, UsageError
from edge.recognition.match import DEFAULT_REFERENCE, MAX_REFERENCES, Matcher, Reference
from edge.watchlist import bundle as B
from edge.watchlist import bundle_format
from edge.watchlist.audit import AuditLog
from edge.watchlist.deployment import DeploymentManager
from tests.bundle_kit import (
    EMBEDDER,
    EMBEDDER_SHA,
    NOW,
    embeddings,
    make_kit,
    open_args,
    spec,
    subjects,
)

COUNTS = [3, 1, 2, MAX_REFERENCES]


def _subjects(counts: list[int]) -> list[B.Subject]:
    return [replace(s, images_used=c, references=c)
            for s, c in zip(subjects(len(counts)), counts, strict=True)]


def _device_key(kit: Any) -> Any:
    """The key bundles are wrapped to: the deployment's key where the kit has one."""
    return getattr(kit, "deployment", kit.device)


def _build(kit: Any, subj: list[B.Subject], emb: np.ndarray, **kw: Any) -> bytes:
    return B.build_bundle(
        spec(), subj, emb, EMBEDDER, kit.signer,
        [(kit.device_id, _device_key(kit).public_key())],
        thumbnails={s.subject_id: b"\xff\xd8" + s.subject_id.encode() for s in subj},
        created_at=NOW - dt.timedelta(hours=2), **kw,
    )


@pytest.mark.parametrize("reference", ["fused", "best"])
def test_several_references_round_trip_through_a_signed_bundle(reference: Reference) -> None:
    kit = make_kit()
    subj = _subjects(COUNTS)
    emb = embeddings(sum(COUNTS))
    data = _build(kit, subj, emb, reference=reference)
    assert emb.tobytes()[:64] not in data  # encrypted
    opened = B.open_bundle(data, **open_args(kit))
    assert opened.subjects == tuple(subj)
    assert opened.reference_counts == COUNTS and opened.reference == reference
    np.testing.assert_array_equal(opened.embeddings, emb)
    assert opened.header.subject_count == len(COUNTS)  # subjects, not rows
    assert opened.thumbnails["S-0003"] == b"\xff\xd8S-0003"  # still one thumbnail each
    opened.wipe()
    assert not opened.embeddings.any()


def _old_format_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make build_bundle write the payload meta exactly as before several references:
    no ``reference`` and no per-subject ``references``."""
    real = B.canonical_json

    def old(obj: object) -> bytes:
        if isinstance(obj, dict) and "subjects" in obj:
            obj = {"subjects": [{k: v for k, v in s.items() if k != "references"}
                                for s in obj["subjects"]]}
        return real(obj)

    monkeypatch.setattr(B, "canonical_json", old)


def test_a_bundle_from_before_several_references_still_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kit = make_kit()
    subj = subjects(4)  # images_used=2 each, averaged into one row by the old enrolment
    emb = embeddings(4)
    with monkeypatch.context() as m:
        _old_format_meta(m)
        data = _build(kit, subj, emb)
    opened = B.open_bundle(data, **open_args(kit))
    assert opened.reference_counts == [1, 1, 1, 1] and opened.reference == DEFAULT_REFERENCE
    assert [s.images_used for s in opened.subjects] == [2, 2, 2, 2]
    np.testing.assert_array_equal(opened.embeddings, emb)


def test_too_many_references_are_refused_at_build_and_at_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kit = make_kit()
    subj = _subjects([2, MAX_REFERENCES + 1])
    with pytest.raises(UsageError) as info:
        _build(kit, subj, embeddings(MAX_REFERENCES + 3))
    assert str(info.value) == (
        f"subject S-0001 has {MAX_REFERENCES + 1} references; a subject has 1 to "
        f"{MAX_REFERENCES}"
    )
    with pytest.raises(UsageError, match="does not match 2 subjects with 5 references"):
        _build(kit, _subjects([2, 3]), embeddings(4))
    with pytest.raises(UsageError, match="reference 'mean'"):
        _build(kit, _subjects([1]), embeddings(1), reference="mean")
    # A signer that skips the check (or a forged payload) is still refused by the device.
    real = bundle_format.Subject.to_json

    def lying(self: B.Subject) -> dict[str, Any]:
        d = real(self)
        d["references"] = MAX_REFERENCES + 1 if self.subject_id == "S-0001" else d["references"]
        return d

    monkeypatch.setattr(bundle_format.Subject, "to_json", lying)
    data = _build(kit, _subjects([1, MAX_REFERENCES]), embeddings(MAX_REFERENCES + 1))
    with pytest.raises(BundleRefused) as refused:
        B.open_bundle(data, **open_args(kit))
    assert refused.value.reason == "garbled"
    assert "subjects[1].references is not an integer in [1, 16]" in str(refused.value)


@pytest.mark.parametrize("reference", ["fused", "best"])
def test_the_end_of_a_deployment_wipes_every_reference_row(
    tmp_path: Path, reference: Reference
) -> None:
    kit = make_kit()
    counts = [3, 1, 4]
    emb = embeddings(sum(counts))
    data = _build(kit, _subjects(counts), emb, reference=reference)
    state = tmp_path / "state"
    state.mkdir()
    path = state / "watchlist.bundle"
    path.write_bytes(data)
    keys: dict[str, Any] = {}
    if "deployment_keys_dir" in inspect.signature(DeploymentManager).parameters:
        keys["deployment_keys_dir"] = kit.install(tmp_path / "keys")
    m = DeploymentManager(
        state, kit.device_id, kit.device, kit.trusted, threshold_floor=0.4, max_subjects=100,
        expected_embedder_sha256=EMBEDDER_SHA, audit=AuditLog(state / "audit.jsonl"),
        clock=lambda: NOW.timestamp(), **keys,
    )
    assert m.load(path).armed
    wl = m.watchlist
    assert wl is not None and len(wl) == 3 and wl.reference == reference
    refs, searched = wl.references, wl.embeddings
    assert refs.shape == (8, 128)
    assert searched.shape == ((3, 128) if reference == "fused" else (8, 128))
    # every reference row is searched: a probe equal to S-0002's last row finds S-0002
    (match,) = Matcher(wl).best(emb[7])
    assert match.subject_id == "S-0002"
    if reference == "best":
        assert match.score == pytest.approx(1.0)
    loaded = [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()
              if '"watchlist_loaded"' in x]
    assert [(e["references"], e["reference"]) for e in loaded] == [(8, reference)]
    m.close()
    assert not refs.any() and not searched.any()
    assert m.watchlist is None
    disk = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file() and p != path)
    for row in emb:
        assert row.tobytes()[:32] not in disk


def test_watchlist_build_enrols_each_image_and_signs_the_mode(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys
    import time

    from edge.commands.demo import ROOT, write_deployment_toml
    from edge.watchlist.keys import load_device_key, load_signer_public

    def edge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                              text=True, timeout=120, check=False)

    keys = tmp_path / "keys"
    for extra in ((), ("--device", "van-1")):
        assert edge("keys", "init", "--out", str(keys), *extra).returncode == 0
    write_deployment_toml(tmp_path / "dep.toml", 0.5)
    subjects = ROOT / "demo" / "subjects"
    build = ("watchlist", "build", "--deployment", str(tmp_path / "dep.toml"), "--signing-key",
             str(keys / "signing.key"), "--recipients", str(keys / "van-1.pub"), "--no-progress")
    r = edge(*build, "--subjects", str(subjects), "--out", str(tmp_path / "w.bundle"),
             "--reference", "best")
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "w.bundle").read_bytes()
    _, header = B.read_header_unverified(data)
    opened = B.open_bundle(
        data, device_id="van-1", device_private_key=load_device_key(keys / "van-1.key"),
        trusted_signers=[load_signer_public(keys / "signing.pub")],
        expected_embedder_sha256=header.embedder.sha256, threshold_floor=0.5, max_subjects=10,
        last_sequence=None, now=time.time(),
    )
    images = len(list((subjects / "DEMO-0001").glob("*.jpg")))
    assert opened.reference == "best" and opened.reference_counts == [images] == [MAX_REFERENCES]
    assert opened.embeddings.shape == (images, header.embedder.dim)
    assert len({row.tobytes() for row in opened.embeddings}) == images  # one row per image
    opened.wipe()
    r = edge("watchlist", "inspect", str(tmp_path / "w.bundle"), "--device-key",
             str(keys / "van-1.key"))
    assert r.returncode == 0, r.stderr
    assert "scored by its best reference" in r.stdout
    assert f"DEMO-0001 (missing_person): {images} references" in r.stdout
    # one image more than a subject may have: one line, before any model runs
    many = tmp_path / "many"
    shutil.copytree(subjects, many)
    shutil.copy(many / "DEMO-0001" / "frame00.jpg", many / "DEMO-0001" / "frame99.jpg")
    r = edge(*build, "--subjects", str(many), "--out", str(tmp_path / "x.bundle"))
    assert r.returncode == 78 and not (tmp_path / "x.bundle").exists()
    assert r.stderr.strip().splitlines() == [
        f"edge: {many / 'DEMO-0001'}: {MAX_REFERENCES + 1} images, more than the "
        f"{MAX_REFERENCES} references a subject may have (keep the best {MAX_REFERENCES})"
    ]
