"""Enrolment inputs (subject.toml, deployment.toml) are validated strictly; real-engine
enrolment gives each image a verdict."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ConfigError
from edge.watchlist.enrol import load_deployment, load_subject

DEPLOYMENT = """\
deployment_id = "D-2026-0042"
location = "Example Street, Example Town"
start = 2026-11-22T10:00:00Z
end = 2026-11-22T18:00:00+01:00
authorising_officer = "Supt 1234"
approved_at = 2026-11-21T09:00:00Z
threshold = 0.45
signage_confirmed = true
max_watchlist_size = 500
sequence = 7
"""

SUBJECT = """\
category = "wanted_court"
reference = "PNC 24/123456X"
source = "custody image"
capture_date = 2024-05-01
legal_basis = "PACE Code D"
"""


def _dep(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "deployment.toml"
    p.write_text(text)
    return p


def test_valid_deployment(tmp_path: Path) -> None:
    spec = load_deployment(_dep(tmp_path, DEPLOYMENT))
    assert spec.deployment_id == "D-2026-0042"
    assert spec.start == dt.datetime(2026, 11, 22, 10, tzinfo=dt.UTC)
    assert spec.end == dt.datetime(2026, 11, 22, 17, tzinfo=dt.UTC)  # converted to UTC
    assert spec.threshold == 0.45 and spec.signage_confirmed and spec.sequence == 7


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t + 'colour = "blue"\n', "unknown key 'colour'"),
        (lambda t: t.replace("sequence = 7\n", ""), "missing sequence"),
        (lambda t: t.replace("2026-11-22T10:00:00Z", "2026-11-22T10:00:00"), "UTC offset"),
        (lambda t: t.replace("signage_confirmed = true", "signage_confirmed = false"),
         "signage_confirmed must be true"),
        (lambda t: t.replace("threshold = 0.45", "threshold = 1.5"), "threshold"),
        (lambda t: t.replace("threshold = 0.45", 'threshold = "0.45"'), "threshold"),
        (lambda t: t.replace("2026-11-22T18:00:00+01:00", "2026-11-22T09:00:00Z"),
         "end must be after start"),
        (lambda t: t.replace("max_watchlist_size = 500", "max_watchlist_size = 0"),
         "max_watchlist_size"),
        (lambda t: t.replace("sequence = 7", "sequence = -1"), "sequence"),
        (lambda t: t.replace('"D-2026-0042"', '"D 42/x"'), "deployment_id"),
        (lambda t: t.replace('"Supt 1234"', '""'), "authorising_officer"),
        (lambda t: t + "[[", "not valid TOML"),
    ],
)
def test_deployment_problems_are_named(tmp_path: Path, change, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_deployment(_dep(tmp_path, change(DEPLOYMENT)))
    assert any(problem in line for line in info.value.problems), info.value.problems


def _subject(tmp_path: Path, text: str, name: str = "S-0001") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "subject.toml").write_text(text)
    return folder


def test_valid_subject(tmp_path: Path) -> None:
    meta = load_subject(_subject(tmp_path, SUBJECT))
    assert meta.subject_id == "S-0001" and meta.category == "wanted_court"
    assert meta.capture_date == "2024-05-01"
    meta2 = load_subject(_subject(tmp_path, SUBJECT + 'id = "W-77"\n', "other"))
    assert meta2.subject_id == "W-77"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t.replace('"wanted_court"', '"gang_member"'), "not one of the permitted"),
        (lambda t: t.replace('"wanted_court"', '"Wanted by court"'), "not one of the permitted"),
        (lambda t: t + 'notes = "x"\n', "unknown key 'notes'"),
        (lambda t: t.replace('legal_basis = "PACE Code D"\n', ""), "missing legal_basis"),
        (lambda t: t.replace("2024-05-01", "2099-01-01"), "in the future"),
        (lambda t: t.replace("2024-05-01", '"last spring"'), "capture_date"),
        (lambda t: t.replace('"custody image"', '""'), "source"),
    ],
)
def test_subject_problems_are_named(tmp_path: Path, change, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_subject(_subject(tmp_path, change(SUBJECT)))
    assert any(problem in line for line in info.value.problems), info.value.problems


def test_missing_subject_toml(tmp_path: Path) -> None:
    (tmp_path / "S-9").mkdir()
    with pytest.raises(ConfigError, match=r"subject\.toml"):
        load_subject(tmp_path / "S-9")


# --- real engine --------------------------------------------------------------------------


def _engine(models_dir: Path):
    pytest.importorskip("edge.vision.faces", reason="FaceEngine not available")
    pytest.importorskip("edge.vision.quality", reason="FaceEngine not available")
    from edge.vision.faces import FaceEngine
    from edge.vision.quality import QualityGate

    return FaceEngine.from_models(models_dir, precision="int8"), QualityGate()


def test_enrol_gives_every_image_a_verdict(tmp_path: Path, photos_dir: Path,
                                           models_dir: Path) -> None:
    import cv2

    from edge.watchlist.enrol import enrol

    engine, gate = _engine(models_dir)
    tests = photos_dir / "face_recognition_tests"
    obama = cv2.imread(str(tests / "obama.jpg"))
    biden = cv2.imread(str(tests / "biden.jpg"))
    folder = _subject(tmp_path / "subjects", SUBJECT, "S-0001")
    cv2.imwrite(str(folder / "a_good.jpg"), obama)
    cv2.imwrite(str(folder / "b_second.jpg"), cv2.imread(str(tests / "obama2.jpg")))
    h = min(obama.shape[0], biden.shape[0])
    pair = np.hstack([cv2.resize(obama, (obama.shape[1] * h // obama.shape[0], h)),
                      cv2.resize(biden, (biden.shape[1] * h // biden.shape[0], h))])
    cv2.imwrite(str(folder / "c_two.jpg"), pair)
    grad = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    cv2.imwrite(str(folder / "d_none.png"), cv2.merge([grad, grad, grad]))
    (folder / "e_broken.jpg").write_bytes(b"not a jpeg")
    seen: list[int] = []
    report = enrol(tmp_path / "subjects", engine, gate, engine.family.metric, seen.append)
    verdicts = {v.file: v for v in report.verdicts}
    assert verdicts["a_good.jpg"].ok and verdicts["b_second.jpg"].ok
    assert not verdicts["c_two.jpg"].ok and verdicts["c_two.jpg"].verdict.startswith("2 faces")
    assert verdicts["d_none.png"].verdict == "no face"
    assert verdicts["e_broken.jpg"].verdict == "unreadable"
    assert len(seen) == 5
    (subject,) = report.subjects
    assert subject.images_used == 2 and subject.references == 2
    assert report.embeddings.shape == (2, engine.family.dim)
    # each good image's embedding is one reference, in file order, made as the device makes it
    used = [cv2.imread(str(folder / name)) for name in ("a_good.jpg", "b_second.jpg")]
    chips = [engine.analyse(img)[0].chip for img in used]
    np.testing.assert_allclose(report.embeddings, engine.embed(chips), atol=1e-4)
    assert report.thumbnails["S-0001"][:2] == b"\xff\xd8"
    # the console's reference images: every good image's face, the best quality first
    assert len(report.reference_images["S-0001"]) == 2
    assert all(j[:2] == b"\xff\xd8" for j in report.reference_images["S-0001"])


def test_reference_images_for_the_console_are_larger_than_thumbnails_never_upscaled() -> None:
    import cv2

    from edge.delivery.alert import jpeg_size
    from edge.types import Detection
    from edge.watchlist.enrol import REFERENCE_PX, THUMB_PX, face_image, thumbnail

    image = np.random.default_rng(0).integers(0, 255, (900, 1200, 3), dtype=np.uint8)
    points = np.zeros((5, 2), np.float32)
    big = Detection((300.0, 200.0, 700.0, 700.0), points, 0.9)  # a 500 px face
    small = Detection((100.0, 100.0, 190.0, 200.0), points, 0.9)  # a 100 px face
    assert max(jpeg_size(face_image(image, big, REFERENCE_PX))) == REFERENCE_PX == 320
    assert max(jpeg_size(thumbnail(image, big))) == THUMB_PX == 112  # the bundle's: small
    # a face smaller than REFERENCE_PX keeps its own pixels (box x 1.5), never upscaled
    assert jpeg_size(face_image(image, small, REFERENCE_PX)) == (150, 150)
    decoded = cv2.imdecode(np.frombuffer(face_image(image, small, REFERENCE_PX), np.uint8),
                           cv2.IMREAD_COLOR)  # fmt: skip
    assert decoded.shape == (150, 150, 3)


def test_more_images_than_references_is_refused_before_any_model_runs(tmp_path: Path) -> None:
    from edge.recognition.match import MAX_REFERENCES
    from edge.watchlist.enrol import enrol

    folder = _subject(tmp_path / "subjects", SUBJECT, "S-0001")
    for i in range(MAX_REFERENCES + 1):
        (folder / f"img{i:02d}.jpg").write_bytes(b"never read")
    ok = _subject(tmp_path / "subjects", SUBJECT.replace("PNC", "PNC 2"), "S-0002")
    (ok / "one.jpg").write_bytes(b"never read")

    class NoModel:  # enrolment must refuse before touching the engine or the gate
        def __getattr__(self, name: str) -> None:
            raise AssertionError(f"model used: {name}")

    with pytest.raises(ConfigError) as info:
        enrol(tmp_path / "subjects", NoModel(), NoModel(), "euclidean")  # type: ignore[arg-type]
    assert info.value.problems == [
        f"{folder}: {MAX_REFERENCES + 1} images, more than the {MAX_REFERENCES} references a "
        f"subject may have (keep the best {MAX_REFERENCES})"
    ]
