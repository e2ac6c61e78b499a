"""``edge watchlist build|inspect|end-command|hold-command`` end to end."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.watchlist.keys import load_device_key, load_signer_public
from edge.watchlist.signed_commands import CommandVerifier

DEPLOYMENT = """\
deployment_id = "D-2026-0042"
location = "Example Street, Example Town"
start = {start}
end = {end}
authorising_officer = "Supt 1234"
approved_at = 2026-01-01T09:00:00Z
threshold = 0.45
signage_confirmed = true
max_watchlist_size = 10
sequence = 3
"""

SUBJECT = """\
category = "{category}"
reference = "PNC 24/{ref}X"
source = "custody image"
capture_date = 2024-05-01
legal_basis = "PACE Code D"
"""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    assert main(["keys", "init", "--out", str(d)]) == 0
    assert main(["keys", "init", "--out", str(d), "--device", "van-01"]) == 0
    assert main(["keys", "init", "--out", str(d), "--device", "van-02"]) == 0
    return d


def _deployment(tmp_path: Path) -> Path:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    p = tmp_path / "deployment.toml"
    p.write_text(DEPLOYMENT.format(
        start=(now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        end=(now + dt.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    ))
    return p


def _subject(root: Path, sid: str, category: str, images: dict[str, np.ndarray | bytes]) -> None:
    import cv2

    folder = root / sid
    folder.mkdir(parents=True)
    (folder / "subject.toml").write_text(SUBJECT.format(category=category, ref=sid[-4:]))
    for name, img in images.items():
        if isinstance(img, bytes):
            (folder / name).write_bytes(img)
        else:
            cv2.imwrite(str(folder / name), img)


def _faces(photos_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import cv2

    tests = photos_dir / "face_recognition_tests"
    obama = cv2.imread(str(tests / "obama.jpg"))
    biden = cv2.imread(str(tests / "biden.jpg"))
    h = min(obama.shape[0], biden.shape[0])
    two = np.hstack([cv2.resize(obama, (obama.shape[1] * h // obama.shape[0], h)),
                     cv2.resize(biden, (biden.shape[1] * h // biden.shape[0], h))])
    grad = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    return obama, two, cv2.merge([grad, grad, grad])


def _need_engine(models_dir: Path) -> None:
    pytest.importorskip("edge.vision.faces", reason="FaceEngine not available")
    pytest.importorskip("edge.vision.quality", reason="FaceEngine not available")


def test_build_names_bad_images_and_skip_bad_keeps_only_the_good(
    tmp_path: Path, keys: Path, photos_dir: Path, models_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _need_engine(models_dir)
    good, two, none = _faces(photos_dir)
    subjects = tmp_path / "subjects"
    _subject(subjects, "S-GOOD", "wanted_court", {"ref.jpg": good})
    _subject(subjects, "S-TWO", "suspect", {"group.jpg": two})
    _subject(subjects, "S-NONE", "missing_person", {"blank.png": none})
    out = tmp_path / "wl.lfrb"
    from edge.watchlist.keys import init_deployment_key

    # van-01 by its deployment key (made on the device: DEVICE_ID=PUB), van-02 by name.
    deployment = init_deployment_key(tmp_path / "run", allow_persistent=True)
    base = [
        "watchlist", "build", "--subjects", str(subjects), "--deployment",
        str(_deployment(tmp_path)), "--signing-key", str(keys / "signing.key"),
        "--recipients", f"van-01={deployment.public}", str(keys / "van-02.pub"),
        "--out", str(out), "--models", str(models_dir),
    ]
    capsys.readouterr()
    assert main(base) == 2
    cap = capsys.readouterr()
    assert "S-GOOD/ref.jpg: ok" in cap.out
    assert "S-TWO/group.jpg: rejected: 2 faces" in cap.out
    assert "S-NONE/blank.png: rejected: no face" in cap.out
    assert "S-NONE" in cap.err and "S-TWO" in cap.err and "--skip-bad" in cap.err
    assert cap.err.count("edge: ") == 1
    assert "enrolling" in cap.err  # the progress bar is on stderr
    assert not out.exists()

    assert main([*base, "--skip-bad"]) == 0
    cap = capsys.readouterr()
    assert "left out (--skip-bad): S-TWO, S-NONE" in cap.out or \
        "left out (--skip-bad): S-NONE, S-TWO" in cap.out
    assert out.exists()
    assert main(["watchlist", "inspect", str(out), "--signer-pub", str(keys / "signing.pub"),
                 "--device-key", str(keys / "van-02.key"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["signature"] == "valid"
    assert [s["id"] for s in doc["subjects"]] == ["S-GOOD"]
    assert doc["header"]["categories"] == {"wanted_court": 1}
    assert doc["header"]["embedder"]["dim"] == 128
    assert main(["watchlist", "inspect", str(out), "--device-key", str(deployment.private),
                 "--device", "van-01", "--json"]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)["subjects"]] == ["S-GOOD"]
    assert main(["watchlist", "inspect", str(out), "--device-key", str(keys / "van-01.key"),
                 "--device", "van-01"]) != 0  # not wrapped to van-01's long-lived key
    assert "does not unwrap" in capsys.readouterr().err


def _bundle_file(tmp_path: Path, keys: Path) -> tuple[Path, np.ndarray]:
    """A bundle built with the library from random embeddings (no models needed)."""
    from edge.watchlist.bundle import EmbedderInfo, Subject, build_bundle
    from edge.watchlist.enrol import load_deployment
    from edge.watchlist.keys import load_device_public, load_signing_key

    emb = np.random.default_rng(3).normal(size=(3, 128)).astype(np.float32)
    subj = [Subject(f"S-{i}", "suspect", f"ref {i}", "custody", "2024-01-01", "PACE") for i in
            range(3)]
    data = build_bundle(
        load_deployment(_deployment(tmp_path)), subj, emb,
        EmbedderInfo("dlib_resnet_v1_int8", "ab" * 32, "dlib150", "euclidean", 128),
        load_signing_key(keys / "signing.key"),
        [load_device_public(keys / "van-01.pub")],
    )
    p = tmp_path / "wl.lfrb"
    p.write_bytes(data)
    return p, emb


def test_inspect_summarises_and_never_prints_an_embedding(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, emb = _bundle_file(tmp_path, keys)
    capsys.readouterr()
    assert main(["watchlist", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "not verified" in out and "D-2026-0042" in out and "suspect 3" in out
    assert "S-0" not in out  # no subject ids without the device key
    assert main(["watchlist", "inspect", str(path), "--signer-pub", str(keys / "signing.pub"),
                 "--device-key", str(keys / "van-01.key")]) == 0
    out = capsys.readouterr().out
    assert "signature: valid" in out and "S-2 (suspect)" in out
    assert main(["watchlist", "inspect", str(path), "--json", "--signer-pub",
                 str(keys / "signing.pub"), "--device-key", str(keys / "van-01.key")]) == 0
    text = capsys.readouterr().out
    doc = json.loads(text)
    assert doc["header"]["subject_count"] == 3 and "recipients" not in doc["header"]
    for value in emb.ravel()[:20]:
        assert f"{value:.4f}" not in text and repr(float(value))[:8] not in text
    # refusals: one line, exit 4
    assert main(["watchlist", "inspect", str(path), "--signer-pub",
                 str(keys / "van-01.pub")]) == 2  # not a signing key: usage error
    other = tmp_path / "other"
    main(["keys", "init", "--out", str(other)])
    capsys.readouterr()
    assert main(["watchlist", "inspect", str(path), "--signer-pub",
                 str(other / "signing.pub")]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key" in err
    assert main(["watchlist", "inspect", str(path), "--device-key",
                 str(keys / "van-02.key")]) == 4
    assert "not for device van-02" in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[:-100])
    assert main(["watchlist", "inspect", str(path)]) == 4
    assert "truncated" in capsys.readouterr().err


def test_end_and_hold_command_files_verify_on_the_device(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    end = tmp_path / "end.json"
    hold = tmp_path / "hold.json"
    assert main(["watchlist", "end-command", "--signing-key", str(keys / "signing.key"),
                 "--device", "van-01", "--deployment", "D-2026-0042", "--out", str(end),
                 "--reason", "operation complete"]) == 0
    assert main(["watchlist", "hold-command", "--signing-key", str(keys / "signing.key"),
                 "--device", "van-01", "--deployment", "D-2026-0042", "--out", str(hold),
                 "--alert", "0190a-1", "--alert", "0190a-2"]) == 0
    verifier = CommandVerifier(tmp_path / "state", "van-01",
                               [load_signer_public(keys / "signing.pub")])
    (tmp_path / "state").mkdir()
    import time

    cmd = verifier.verify(end.read_bytes(), time.time())
    assert cmd.command == "end_deployment" and cmd.deployment_id == "D-2026-0042"
    assert cmd.args == {"reason": "operation complete"}
    cmd = verifier.verify(hold.read_bytes(), time.time())
    assert cmd.command == "legal_hold" and cmd.args == {"alert_ids": ["0190a-1", "0190a-2"],
                                                        "on": True}
    assert load_device_key(keys / "van-01.key")  # keys still intact
    capsys.readouterr()
    assert main(["watchlist", "end-command", "--signing-key", str(keys / "signing.key"),
                 "--device", "van/01", "--deployment", "D", "--out", str(end)]) == 2
    assert main(["watchlist", "end-command", "--signing-key", str(keys / "signing.key"),
                 "--device", "van-01", "--deployment", "D", "--out", str(end),
                 "--valid-for", "999999"]) == 2
