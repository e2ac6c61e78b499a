"""``edge simulate`` camera effects and views: determinism per seed, each effect switchable
and changing the frames, enrolled images never shown, the truth file's format unchanged."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.evaluation.simulate import (
    CameraConfig,
    Plan,
    Renderer,
    SimConfig,
    disc_kernel,
    motion_kernel,
    plan_clip,
    simulate,
)
from edge.evaluation.stream import Truth

BASE = SimConfig(
    size=(320, 240), fps=10.0, seconds=4.0, faces=(2, 3), watchlisted=0.4,
    seed=5, face_px=(40.0, 80.0), watchlist_size=4, max_enrol=2,
)
DEGRADED = replace(BASE, views=3, camera=CameraConfig.degraded())
ONE_EACH = {
    "motion_blur": CameraConfig(motion_blur=True),
    "defocus": CameraConfig(defocus=True),
    "noise": CameraConfig(noise=True),
    "jpeg_quality": CameraConfig(jpeg_quality=30),
    "exposure": CameraConfig(exposure=True),
    "wobble": CameraConfig(wobble=True),
}


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LFW-style synthetic 250x250 'faces': 1 to 6 images per identity, each image distinct."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(1)
    for k in range(30):
        name = f"Person_{k:02d}"
        (root / name).mkdir()
        for i in range(1 + k % 6):
            img = np.full((250, 250, 3), rng.integers(30, 200, 3), np.uint8)
            skin = tuple(int(v) for v in rng.integers(90, 230, 3))
            cv2.ellipse(img, (125, 130), (50, 65), 0, 0, 360, skin, -1)
            for ex in (105, 145):
                cv2.circle(img, (ex, 115), 6, (20, 20, 20), -1)
            cv2.putText(img, str(i), (110, 175), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (40, 40, 120), 3)
            cv2.imwrite(str(root / name / f"{name}_{i + 1:04d}.png"), img)
    return root


def _sharpness(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_degraded_frames_are_deterministic_per_seed(faces_dir: Path) -> None:
    plan = plan_clip(faces_dir, DEGRADED)
    assert plan_clip(faces_dir, DEGRADED).truth.dumps() == plan.truth.dumps()
    r1, r2 = Renderer(plan), Renderer(plan)
    for f in (3, 17, 3):  # any order, again
        assert np.array_equal(r1.frame(f), r2.frame(f))
    other = Renderer(plan_clip(faces_dir, replace(DEGRADED, seed=6)))
    assert not np.array_equal(other.frame(3), r1.frame(3))
    # the same plan with the camera's seed changed: other noise and drifts
    moved = replace(plan, config=replace(plan.config, seed=99))
    assert not np.array_equal(Renderer(moved).frame(3), r1.frame(3))


def test_all_effects_off_is_the_clean_street(faces_dir: Path) -> None:
    off = plan_clip(faces_dir, replace(BASE, camera=CameraConfig()))
    assert not CameraConfig().any and CameraConfig.degraded().any
    plain = plan_clip(faces_dir, BASE)
    assert off.truth.tracks == plain.truth.tracks
    assert np.array_equal(Renderer(off).frame(9), Renderer(plain).frame(9))


@pytest.mark.parametrize("name", list(ONE_EACH))
def test_each_effect_is_switchable_and_changes_the_frames(faces_dir: Path, name: str) -> None:
    cam = ONE_EACH[name]
    assert [f.name for f in fields(cam) if getattr(cam, f.name)] == [name]
    clean_plan = plan_clip(faces_dir, BASE)
    plan = plan_clip(faces_dir, replace(BASE, camera=cam))
    if name == "motion_blur":  # make everyone cross the frame quickly (14 px a frame)
        def fast(p: Plan) -> Plan:
            return replace(p, walkers=tuple(
                replace(w, x=(40.0, 40.0 + 14.0 * (w.frames - 1))) for w in p.walkers))
        clean_plan, plan = fast(clean_plan), fast(plan)
    assert plan.truth.params["camera"][name] == getattr(cam, name)
    clean, one = Renderer(clean_plan), Renderer(plan)
    f = 12
    a, b = clean.frame(f), one.frame(f)
    assert a.shape == b.shape and b.dtype == np.uint8
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    if name == "defocus":
        assert _sharpness(b) < 0.8 * _sharpness(a)
    elif name == "noise":
        assert float(diff.std()) > 2.0
    elif name == "jpeg_quality":
        assert 0.2 < float(diff.mean()) < 10.0
    elif name == "exposure":
        means = [abs(float(one.frame(g).mean()) - float(clean.frame(g).mean()))
                 for g in range(0, 40, 5)]
        assert max(means) > 3.0
    elif name == "motion_blur":
        assert plan.truth.tracks == clean_plan.truth.tracks  # the boxes are not moved
        w = next(w for w in plan.walkers if w.first_frame <= f <= w.last_frame)
        cx, cy, width = w.at(f, BASE.fps)
        ys = slice(int(cy - width / 4), int(cy + width / 4))
        xs = slice(int(cx - width / 4), int(cx + width / 4))
        assert float(diff.max()) > 20
        # the blurred face is the clean one smeared along x (the motion), not along y
        line = np.full((1, 7), 1 / 7, np.float32)
        af = a.astype(np.float32)
        along = cv2.filter2D(af, -1, line)[ys, xs]
        across = cv2.filter2D(af, -1, line.T)[ys, xs]
        bf = b[ys, xs].astype(np.float32)
        err_along, err_across = (float(np.abs(bf - x).mean()) for x in (along, across))
        assert err_along < 0.7 * err_across
        assert float(np.abs(bf - af[ys, xs]).mean()) > 1.0
    elif name == "wobble":
        # the heads' scale wobble moves the truth boxes; the roll turns the face
        widths = [b2[2] - b2[0] for b2 in plan.truth.tracks[0].boxes]
        steps = np.sign(np.diff(widths))
        assert np.any(steps > 0) and np.any(steps < 0)
        assert plan.truth.tracks != clean_plan.truth.tracks
    assert float(diff.mean()) > 0.1


def test_kernels() -> None:
    assert motion_kernel(0.5, 0.5) is None and disc_kernel(0.3) is None
    k = motion_kernel(6.0, 0.0)
    assert k is not None and abs(float(k.sum()) - 1.0) < 1e-5
    rows = k.sum(axis=1)
    assert rows[k.shape[0] // 2] > 0.9  # a horizontal line for a horizontal motion
    d = disc_kernel(2.0)
    assert d is not None and d.shape == (5, 5) and abs(float(d.sum()) - 1.0) < 1e-5


def test_views_never_show_an_enrolled_image(faces_dir: Path) -> None:
    for seed in range(4):
        plan = plan_clip(faces_dir, replace(DEGRADED, seed=seed))
        enrol = {e.identity: set(e.enrol) for e in plan.truth.watchlist}
        listed = set(enrol)
        several = 0
        for w, t in zip(plan.walkers, plan.truth.tracks, strict=True):
            assert t.image == w.views[0]  # the truth names the first view
            assert len(set(w.views)) == len(w.views) <= 3
            assert all(v.startswith(w.identity + "/") for v in w.views)
            if w.watchlisted:
                assert not set(w.views) & enrol[w.identity]
                assert enrol[w.identity]  # still something to enrol
            else:
                assert w.identity not in listed
            several += len(w.views) > 1
            if len(w.views) > 1:  # each view is shown along the walk, in order
                shown = [w.view_at(f) for f in range(w.first_frame, w.last_frame + 1)]
                assert shown == sorted(shown)
                assert set(shown) == set(range(min(len(w.views), w.frames)))
        assert several > 0


def test_truth_format_is_unchanged(faces_dir: Path, tmp_path: Path) -> None:
    clean = simulate(faces_dir, tmp_path / "a.mp4", tmp_path / "a.json", BASE, progress=False)
    degraded = simulate(faces_dir, tmp_path / "b.mp4", tmp_path / "b.json", DEGRADED,
                        progress=False)
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a.keys() == b.keys()
    assert a["tracks"][0].keys() == b["tracks"][0].keys()
    assert a["watchlist"][0].keys() == b["watchlist"][0].keys()
    assert Truth.load(tmp_path / "b.json") == degraded
    assert Truth.load(tmp_path / "a.json") == clean
    assert b["params"]["views"] == 3 and b["params"]["camera"]["jpeg_quality"] == 30


def test_cli_degrade_and_switches(faces_dir: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    common = ["simulate", "--images", str(faces_dir), "--size", "320x240", "--fps", "10",
              "--seconds", "1", "--face-px", "40-80", "--watchlist-size", "3", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "a.mp4"), "--truth", str(tmp_path / "a.json"),
                 "--degrade", "--no-defocus", "--jpeg-quality", "50"]) == 0
    cam = json.loads(capsys.readouterr().out)["camera"]
    assert cam == {"motion_blur": True, "defocus": False, "noise": True, "jpeg_quality": 50,
                   "exposure": True, "wobble": True}
    assert main([*common, "--out", str(tmp_path / "b.mp4"), "--truth", str(tmp_path / "b.json"),
                 "--sensor-noise", "--views", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["views"] == 2 and summary["camera"]["noise"]
    assert not summary["camera"]["motion_blur"] and summary["camera"]["jpeg_quality"] == 0
    for bad, msg in ((["--jpeg-quality", "101"], "--jpeg-quality"), (["--views", "0"], "--views")):
        code = main([*common, "--out", str(tmp_path / "c.mp4"), "--truth",
                     str(tmp_path / "c.json"), *bad])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1 and msg in err
