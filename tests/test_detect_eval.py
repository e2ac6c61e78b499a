"""`edge eval detect`: one-to-one matching, width buckets, false detections, the CLI and plot.

The clip is the demo actor's frame (committed, CC-BY) written as a short video, its truth
box measured by hand; the detector is the real RetinaFace model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import UsageError
from edge.evaluation.detect_eval import BUCKETS, bucket_of, evaluate, match, plot_recall
from edge.evaluation.stream import Truth, TruthTrack
from edge.types import Detection
from edge.vision.detectors import make_detector
from edge.vision.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
FRAME = ROOT / "demo" / "subjects" / "DEMO-0001" / "frame28.jpg"
FACE = (221.0, 60.0, 279.0, 130.0)  # the actor's face (tighter than the detector's box)


def test_buckets_cover_every_width() -> None:
    assert [bucket_of(w) for w in (30, 45, 59.9, 60, 99, 100, 129, 130, 400)] == [
        "<45", "45-60", "45-60", "60-80", "80-100", "100-130", "100-130", ">=130", ">=130"]
    assert BUCKETS[0][0] == "<45"


def test_match_is_one_to_one_best_first() -> None:
    truth = [(0.0, 0.0, 10.0, 10.0), (100.0, 0.0, 110.0, 10.0)]
    found = [(1.0, 1.0, 11.0, 11.0), (0.0, 0.0, 10.0, 10.0), (300.0, 0.0, 310.0, 10.0)]
    hit, false = match(truth, found)
    assert hit == [True, False] and false == 2  # the exact box wins, the near copy is false
    assert match([], found) == ([], 3)
    assert match(truth, []) == ([False, False], 0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    img = cv2.imread(str(FRAME))
    h, w = img.shape[:2]
    path = tmp_path_factory.mktemp("clip") / "actor.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (w, h))
    for _ in range(6):
        writer.write(img)
    writer.release()
    track = TruthTrack(track=0, identity="actor", watchlisted=False, subject_id=None,
                       image="frame30.jpg", first_frame=0, boxes=(FACE,) * 6)
    truth = Truth(fps=10.0, frames=6, size=(w, h), tracks=(track,), watchlist=())
    return path, truth


def test_real_detector_finds_the_face(clip: tuple[Path, Truth], models_dir: Path) -> None:
    path, truth = clip
    _, det = make_detector(Manifest.load(models_dir), "retinaface_mnet025_int8", threads=1)
    rep = evaluate("rf", det.detect, path, truth, progress=False).to_dict()
    assert rep["recall"] == 1.0 and rep["frames"] == 6 and rep["faces"] == 6
    assert rep["by_width"]["45-60"] == 1.0 and rep["by_width"]["<45"] is None
    assert rep["false_per_1000_frames"] == 0.0 and rep["ms_per_frame"] > 0
    # on a half-size copy (a lores stream) the boxes are scaled back to the frame
    half = evaluate("rf", det.detect, path, truth, detect_size=(240, 136),
                    progress=False).to_dict()
    assert half["recall"] == 1.0


def test_misses_and_false_detections_are_counted(clip: tuple[Path, Truth]) -> None:
    path, truth = clip
    calls = iter(range(100))

    def every_other(image: np.ndarray) -> list[Detection]:
        i = next(calls)
        ghost = Detection((0.0, 0.0, 20.0, 20.0), np.zeros((5, 2), np.float32), 0.9)
        face = Detection((215.0, 45.0, 285.0, 140.0), np.zeros((5, 2), np.float32), 0.9)
        return [face, ghost] if i % 2 == 0 else [ghost]

    rep = evaluate("fake", every_other, path, truth, progress=False).to_dict()
    assert rep["recall"] == 0.5 and rep["false_detections"] == 6
    assert rep["false_per_1000_frames"] == 1000.0


def test_plot_and_cli(clip: tuple[Path, Truth], tmp_path: Path) -> None:
    path, truth = clip
    truth_file = tmp_path / "truth.json"
    truth.save(truth_file)
    png = tmp_path / "recall.png"
    out = subprocess.run(
        [sys.executable, "-m", "edge", "eval", "detect", "--video", str(path), "--truth",
         str(truth_file), "--detector", "retinaface_mnet025_int8@640x384", "--detector",
         "blazeface_full_float32", "--json", "--no-progress", "--plot", str(png)],
        capture_output=True, text=True, timeout=120, check=True)
    reports = json.loads(out.stdout)
    assert [r["detector"] for r in reports] == ["retinaface_mnet025_int8@640x384",
                                                 "blazeface_full_float32"]
    assert set(reports[0]) >= {"detector", "recall", "by_width", "false_per_1000_frames",
                               "ms_per_frame"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(
        [sys.executable, "-m", "edge", "eval", "detect", "--video", str(tmp_path / "none.mp4"),
         "--truth", str(truth_file)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="cannot open"):
        evaluate("x", lambda im: [], tmp_path / "none.mp4", truth, progress=False)
    plot_recall(reports, tmp_path / "again.png")
