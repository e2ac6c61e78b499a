"""The face_recognition peer benchmark (benchmarks/peer_face_recognition.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge.simulate import SimConfig, simulate

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peer_face_recognition as peer  # noqa: E402


def test_subjects_folder_layout(tmp_path: Path) -> None:
    (tmp_path / "S-1").mkdir()
    (tmp_path / "S-1" / "a.jpg").write_bytes(b"x")
    (tmp_path / "S-1" / "subject.toml").write_text('category = "suspect"\n')
    (tmp_path / "S-2").mkdir()  # no images: left out
    got = peer.subjects_from_folder(tmp_path)
    assert list(got) == ["S-1"] and [p.name for p in got["S-1"]] == ["a.jpg"]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = peer.main(["--video", str(tmp_path / "v.mp4"), "--truth", str(tmp_path / "t.json")])
    assert code == 2 and "cannot read truth file" in capsys.readouterr().err
    code = peer.main(["--video", "v.mp4", "--truth", "t.json", "--every", "0"])
    assert code == 2 and "--every" in capsys.readouterr().err


@pytest.mark.lfw
def test_peer_on_a_short_clip(lfw_dir: Path, tmp_path: Path) -> None:
    cfg = SimConfig(size=(640, 360), fps=10.0, seconds=2.0, faces=(2, 3), watchlisted=0.5,
                    seed=4, face_px=(100.0, 160.0), watchlist_size=3, max_enrol=2)
    clip, truth = tmp_path / "c.mp4", tmp_path / "t.json"
    simulate(lfw_dir, clip, truth, cfg, subjects_out=tmp_path / "subj", progress=False)
    res = peer.run_peer(clip, truth, subjects=tmp_path / "subj", every=4, progress=False)
    assert res["processed_frames"] == 5 and res["frames"] == 20
    assert set(res["stages_ms"]) == {"decode", "detect", "align", "embed", "match"}
    assert res["fps"] > 0 and res["faces_detected"] > 0
    assert res["enrolment"]["subjects"] == 3
    s = res["stream"]
    assert s["watchlisted_passers_by"] >= 1
    assert res["false_alerts"] == s["false_alerts"]
    assert s["true_alerts"] >= 1  # the recipe recognises a watchlisted LFW face in the clip
    # the same figures from the truth's own enrol list instead of the folder
    again = peer.run_peer(clip, truth, images=lfw_dir, every=4, progress=False)
    assert again["stream"] == s
