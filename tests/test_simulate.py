"""``edge simulate``: plan invariants, determinism, the MP4, the subjects folder, CLI errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.errors import UsageError
from edge.evaluation.simulate import (
    Renderer,
    SimConfig,
    check_clip,
    frames_with_faces,
    plan_clip,
    simulate,
    write_subjects,
)
from edge.evaluation.stream import StreamAlert, Truth, score_alerts
from edge.watchlist.bundle import CATEGORIES
from edge.watchlist.enrol import load_subject

SMALL = SimConfig(
    size=(320, 240), fps=10.0, seconds=4.0, faces=(1, 3), watchlisted=0.3,
    seed=7, face_px=(40.0, 80.0), watchlist_size=4, max_enrol=2,
)


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LFW-style folder of synthetic 250x250 'faces' (an oval with eyes), no data needed."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for k in range(24):
        name = f"Person_{k:02d}"
        (root / name).mkdir()
        for i in range(1 + k % 3):  # 1, 2 or 3 images
            img = np.full((250, 250, 3), rng.integers(30, 200, 3), np.uint8)
            skin = tuple(int(v) for v in rng.integers(90, 230, 3))
            cv2.ellipse(img, (125, 130), (50, 65), 0, 0, 360, skin, -1)
            for ex in (105, 145):
                cv2.circle(img, (ex, 115), 6, (20, 20, 20), -1)
            cv2.line(img, (110, 160), (140, 160 + i), (40, 40, 120), 3)
            cv2.imwrite(str(root / name / f"{name}_{i + 1:04d}.jpg"), img)
    return root


def test_plan_invariants(faces_dir: Path) -> None:
    plan = plan_clip(faces_dir, SMALL)
    truth = plan.truth
    w, h = SMALL.size
    assert truth.frames == 40 and truth.size == (w, h)
    counts = frames_with_faces(truth)
    assert min(counts) >= 1 and max(counts) <= 3
    n = len(truth.tracks)
    assert len(truth.watchlisted_tracks) == round(0.3 * n)
    listed = {e.identity: e for e in truth.watchlist}
    assert len(listed) == max(4, len(truth.watchlisted_tracks))
    for t in truth.tracks:
        assert len(t.boxes) == t.last_frame - t.first_frame + 1
        assert 0 <= t.first_frame <= t.last_frame < truth.frames
        for x1, y1, x2, y2 in t.boxes:
            assert -0.1 <= x1 < x2 <= w + 0.1 and -0.1 <= y1 < y2 <= h + 0.1
            assert 40 - 0.1 <= x2 - x1 <= 80 + 0.1
        assert (faces_dir / t.image).is_file()
        if t.watchlisted:
            entry = listed[t.identity]
            assert t.subject_id == entry.subject_id and entry.appears
            assert t.image not in entry.enrol  # enrolled images are never the one shown
            assert 1 <= len(entry.enrol) <= 2
        else:
            assert t.identity not in listed and t.subject_id is None
    for e in truth.watchlist:
        assert e.category in CATEGORIES
        assert len(list((faces_dir / e.identity).iterdir())) >= 2


def test_enrol_check_keeps_only_accepted_images(faces_dir: Path) -> None:
    def ok(path: Path) -> bool:  # stands in for the device's enrolment verdict
        return not path.name.endswith("_0002.jpg")

    plan = plan_clip(faces_dir, SMALL, enrol_ok=ok)
    for e in plan.truth.watchlist:
        assert e.enrol and all(ok(faces_dir / r) for r in e.enrol)
    assert plan.truth.params["enrolment_checked"] is True
    assert plan.truth.params["identities_without_enrollable_image"] >= 0
    with pytest.raises(UsageError, match="enrollable image"):
        plan_clip(faces_dir, SMALL, enrol_ok=lambda p: False)


def test_same_seed_same_plan_other_seed_other_plan(faces_dir: Path) -> None:
    a = plan_clip(faces_dir, SMALL).truth.dumps()
    assert plan_clip(faces_dir, SMALL).truth.dumps() == a
    assert plan_clip(faces_dir, replace(SMALL, seed=8)).truth.dumps() != a


def test_frames_are_deterministic_and_move(faces_dir: Path) -> None:
    plan = plan_clip(faces_dir, SMALL)
    r1, r2 = Renderer(plan), Renderer(plan)
    f5 = r1.frame(5)
    assert f5.shape == (240, 320, 3) and f5.dtype == np.uint8
    assert np.array_equal(f5, r2.frame(5))
    assert np.array_equal(r1.frame(30), r2.frame(30))  # any order
    assert not np.array_equal(f5, r1.frame(6))
    # a face box's pixels differ from the empty background there
    t = plan.truth.tracks[0]
    x1, y1, x2, y2 = (int(v) for v in t.box_at(t.first_frame) or (0, 0, 0, 0))
    bg = Renderer(plan).bg[y1:y2, x1:x2]
    face = r1.frame(t.first_frame)[y1:y2, x1:x2].astype(np.float32)
    assert float(np.abs(face - bg).mean()) > 10.0


def test_clip_and_truth_written_and_identical_twice(faces_dir: Path, tmp_path: Path) -> None:
    outs = []
    for k in range(2):
        clip, truth = tmp_path / f"c{k}.mp4", tmp_path / f"t{k}.json"
        simulate(faces_dir, clip, truth, SMALL, progress=False)
        outs.append((clip, truth))
    (c0, t0), (c1, t1) = outs
    assert t0.read_bytes() == t1.read_bytes()
    check_clip(c0, 40, (320, 240))
    cap0, cap1 = cv2.VideoCapture(str(c0)), cv2.VideoCapture(str(c1))
    n = 0
    while True:
        ok0, f0 = cap0.read()
        ok1, f1 = cap1.read()
        assert ok0 == ok1
        if not ok0:
            break
        assert np.array_equal(f0, f1)
        n += 1
    assert n == 40
    with pytest.raises(UsageError, match="has 40 frames, expected 41"):
        check_clip(c0, 41, (320, 240))


def test_truth_scores_itself_perfectly(faces_dir: Path) -> None:
    truth = plan_clip(faces_dir, SMALL).truth
    alerts = [
        StreamAlert(t.first_frame + 1, t.boxes[1], t.subject_id or "")
        for t in truth.watchlisted_tracks
    ]
    s = score_alerts(truth, alerts)
    assert s.recall == 1.0 and s.precision == 1.0 and s.false_alerts == 0


def test_subjects_folder_is_what_watchlist_build_reads(faces_dir: Path, tmp_path: Path) -> None:
    truth = plan_clip(faces_dir, SMALL).truth
    made = write_subjects(truth, faces_dir, tmp_path / "subjects")
    assert [p.name for p in made] == [e.subject_id for e in truth.watchlist]
    for entry, folder in zip(truth.watchlist, made, strict=True):
        meta = load_subject(folder)  # the real parser: unknown keys or bad values raise
        assert meta.subject_id == entry.subject_id and meta.category == entry.category
        images = sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg")
        assert images == sorted(Path(r).name for r in entry.enrol)
        assert all((folder / n).is_symlink() for n in images)
    # again, copying: replaces the folders
    write_subjects(truth, faces_dir, tmp_path / "subjects", copy=True)
    first = made[0]
    assert not any(p.is_symlink() for p in first.iterdir())


def test_cli_writes_everything(faces_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main([
        "simulate", "--images", str(faces_dir), "--out", str(tmp_path / "c.mp4"),
        "--truth", str(tmp_path / "t.json"), "--size", "320x240", "--fps", "10",
        "--seconds", "2", "--faces-per-frame", "1-2", "--face-px", "40-80",
        "--watchlist-size", "3", "--subjects-out", str(tmp_path / "subj"), "--quiet",
    ])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert summary["frames"] == 20 and summary["faces_per_frame"]["max"] <= 2
    truth = Truth.load(tmp_path / "t.json")
    assert len(truth.tracks) == summary["passers_by"]
    assert len(list((tmp_path / "subj").iterdir())) == summary["watchlist_subjects"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "big"], "expected WIDTHxHEIGHT"),
        (["--size", "321x240"], "must be even"),
        (["--faces-per-frame", "3-1"], "need 1 <= min <= max"),
        (["--watchlisted", "1.5"], "between 0 and 1"),
        (["--watchlist-size", "999"], "identities have >= 2 images"),
        (["--face-px", "40-200"], "do not fit"),
        (["--fps", "0"], "--fps"),
    ],
)
def test_cli_errors_are_one_line(faces_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str],
                                 extra: list[str], message: str) -> None:
    code = main([
        "simulate", "--images", str(faces_dir), "--out", str(tmp_path / "c.mp4"),
        "--truth", str(tmp_path / "t.json"), "--size", "320x240", "--seconds", "1",
        "--face-px", "40-80", "--quiet", *extra,
    ])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "t.json").exists()


def test_cli_missing_images_and_bad_out(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--images", str(tmp_path / "none"), "--out", str(tmp_path / "c.mp4"),
                 "--truth", str(tmp_path / "t.json")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["simulate", "--images", str(tmp_path), "--out", str(tmp_path / "c.avi"),
                 "--truth", str(tmp_path / "t.json")]) == 2
    assert "must end in .mp4" in capsys.readouterr().err


@pytest.mark.lfw
def test_lfw_clip_faces_are_found_by_blazeface(lfw_dir: Path, models_dir: Path) -> None:
    """Faces in a simulated 1280x720 clip are detectable: most boxes >= 100 px are found."""
    from edge.errors import ModelError
    from edge.evaluation.stream import iou
    from edge.vision.detect import Detector
    from edge.vision.manifest import Manifest

    try:
        m = Manifest.load(models_dir)
        name = next(n for n in m.names if n.startswith("blazeface_full")
                    or n.startswith("face_detection_full"))
        det = Detector(m.verify(name), threads=1)
    except (ModelError, StopIteration):
        pytest.skip("BlazeFace full-range model not built")
    cfg = SimConfig(seconds=3.0, seed=11, faces=(2, 4))
    plan = plan_clip(lfw_dir, cfg)
    r = Renderer(plan)
    found: list[float] = []
    for f in range(0, cfg.frames, 5):
        dets = det.detect(r.frame(f))
        for t in plan.truth.tracks:
            b = t.box_at(f)
            if b is not None and b[2] - b[0] >= 100:
                found.append(max((iou(b, d.box) for d in dets), default=0.0))
    assert len(found) >= 10
    assert float(np.mean(np.array(found) >= 0.3)) >= 0.8
