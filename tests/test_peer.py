"""The face_recognition peer (edge.evaluation.peer, benchmarks/peer_face_recognition.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from edge.errors import UsageError
from edge.evaluation.peer import run_peer, subjects_from_folder
from edge.evaluation.simulate import SimConfig, simulate

ROOT = Path(__file__).resolve().parents[1]


def cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "peer_face_recognition", ROOT / "benchmarks" / "peer_face_recognition.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_subjects_folder_layout(tmp_path: Path) -> None:
    (tmp_path / "S-1").mkdir()
    (tmp_path / "S-1" / "a.jpg").write_bytes(b"x")
    (tmp_path / "S-1" / "subject.toml").write_text('category = "suspect"\n')
    (tmp_path / "S-2").mkdir()  # no images: left out
    got = subjects_from_folder(tmp_path)
    assert list(got) == ["S-1"] and [p.name for p in got["S-1"]] == ["a.jpg"]
    with pytest.raises(UsageError, match="not a folder"):
        subjects_from_folder(tmp_path / "absent")


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    with pytest.raises(UsageError, match="needs --subjects or a truth"):
        run_peer(video)
    with pytest.raises(UsageError, match="does not exist"):
        run_peer(tmp_path / "none.mp4", subjects=tmp_path)
    main = cli().main
    assert main(["--video", str(video), "--truth", str(tmp_path / "t.json")]) == 2
    assert "cannot read truth file" in capsys.readouterr().err
    assert main(["--video", str(video), "--every", "0"]) == 2
    assert "--every" in capsys.readouterr().err


@pytest.mark.lfw
def test_peer_on_a_short_clip(lfw_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    cfg = SimConfig(size=(640, 360), fps=10.0, seconds=2.0, faces=(2, 3), watchlisted=0.5,
                    seed=4, face_px=(100.0, 160.0), watchlist_size=3, max_enrol=2)
    clip, truth = tmp_path / "c.mp4", tmp_path / "t.json"
    simulate(lfw_dir, clip, truth, cfg, subjects_out=tmp_path / "subj", progress=False)
    res = run_peer(clip, truth=truth, subjects=tmp_path / "subj", every=4, progress=False)
    # the keys edge bench prints
    assert res["frames"] == 5 and res["fps"] > 0
    assert set(res["stage_ms"]) == {"read", "detect", "align", "embed", "match"}
    assert res["stage_ms"]["detect"]["p50"] > 0 and res["peak_rss_mb"] > 0
    assert res["faces_detected"] > 0 and res["watchlist_size"] == 3
    acc = res["accuracy"]
    assert acc["watchlisted_passers_by"] >= 1 and acc["alerts"] == res["alerts"]
    assert acc["true_alerts"] >= 1  # the recipe recognises a watchlisted LFW face in the clip
    # the same alerts from the truth's own enrol list instead of the folder
    again = run_peer(clip, truth=truth, images=lfw_dir, every=4, progress=False)
    assert again["accuracy"] == acc
