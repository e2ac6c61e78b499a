"""``edge bench``: the real pipeline, outbox, publisher and a local broker, measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "bench", *args, "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_bench_on_the_demo_clip_delivers_every_alert() -> None:
    r = bench("--video", str(ROOT / "demo" / "clip.gif"), "--subjects",
              str(ROOT / "demo" / "subjects"), "--threshold", "0.5")
    assert r["frames"] == 56 and r["fps"] > 0
    assert r["watchlist_size"] == 1
    assert r["alerts"] >= 1, "the watchlisted actor is in the clip"
    assert r["alerts_delivered"] == r["alerts"] and r["all_delivered"]
    assert r["latency_ms"]["p95"] is not None and r["latency_ms"]["p95"] > 0
    for stage in ("read", "detect", "track", "quality", "align", "embed", "match", "decide"):
        assert set(r["stage_ms"][stage]) == {"p50", "p95"}
    assert r["peak_rss_mb"] > 50
    assert r["models"]["embedder_sha256"]


def test_bench_scores_a_simulated_clip(tmp_path: Path, lfw_dir: Path) -> None:
    clip, truth, subjects = tmp_path / "c.mp4", tmp_path / "t.json", tmp_path / "s"
    subprocess.run(
        [sys.executable, "-m", "edge", "simulate", "--images", str(lfw_dir), "--out", str(clip),
         "--truth", str(truth), "--subjects-out", str(subjects), "--seconds", "4",
         "--size", "640x360", "--seed", "3"],
        check=True, capture_output=True, timeout=300,
    )
    r = bench("--video", str(clip), "--truth", str(truth), "--subjects", str(subjects))
    acc = r["accuracy"]
    assert acc["alerts"] == r["alerts"]
    assert acc["true_alerts"] + acc["false_alerts"] == acc["alerts"]
    assert 0 <= acc["watchlisted_found"] <= acc["watchlisted_passers_by"]


def test_bench_missing_video_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "bench", "--video", str(tmp_path / "nope.mp4")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "nope.mp4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_template_min_on_the_demo_clip_alerts_the_actor_only() -> None:
    r = bench("--video", str(ROOT / "demo" / "clip.gif"), "--subjects",
              str(ROOT / "demo" / "subjects"), "--threshold", "0.5", "--template-min", "2")
    assert r["template_min_embeddings"] == 2
    (alert,) = r["alert_list"]
    assert alert["subject_id"] == "DEMO-0001" and alert["score"] >= 0.5
    assert alert["raised"] >= alert["frame"]
    assert r["alerts_delivered"] == 1
    others = [t for t in r["tracks_best"] if not t["alerted"]]
    assert others and all(t["best_score"] < 0.5 for t in others), "the passer-by never alerts"


def test_bench_template_min_above_embeds_per_track_is_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "bench", "--video", str(ROOT / "demo" / "clip.gif"),
         "--set", "recognition.embeds_per_track=3", "--template-min", "9"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("INFO:")]
    assert len(lines) == 1 and "template_min_embeddings" in lines[0]


def test_time_to_alert_counts_to_the_frame_the_alert_was_raised_on() -> None:
    from edge.evaluation.stream import TRUTH_SCHEMA, StreamAlert, Truth, score_alerts

    truth = Truth.from_dict({
        "schema": TRUTH_SCHEMA, "fps": 10.0, "frames": 100, "size": [640, 360],
        "watchlist": [{"subject_id": "S1", "identity": "A", "category": "suspect",
                       "enrol": [], "appears": True}],
        "tracks": [{"track": 1, "identity": "A", "watchlisted": True, "subject_id": "S1",
                    "first_frame": 10, "boxes": [[100, 100, 180, 180]] * 30}],
    })
    seen = StreamAlert.from_xywh(10, (100, 100, 80, 80), "S1")
    later = StreamAlert.from_xywh(10, (100, 100, 80, 80), "S1", raised=42)
    assert score_alerts(truth, [seen]).median_seconds_to_alert == 0.0
    late = score_alerts(truth, [later])
    assert late.true_alerts == 1 and late.median_seconds_to_alert == pytest.approx(3.2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


def test_bench_set_runs_a_policy_variant_and_counts_embeddings() -> None:
    r = bench("--video", str(ROOT / "demo" / "clip.gif"), "--subjects",
              str(ROOT / "demo" / "subjects"), "--threshold", "0.5",
              "--set", "recognition.embeds_per_track=1", "--set", "quality.max_yaw=0.4")
    assert r["overrides"] == {"recognition": {"embeds_per_track": 1},
                              "quality": {"max_yaw": 0.4}}
    assert r["recognition"]["embeds_per_track"] == 1
    # One embedding per track at most: as many embeddings as tracks that got one.
    assert 1 <= r["tracks_embedded"] <= r["tracks"]
    assert r["embeddings"] == r["tracks_embedded"]
    assert r["max_embeddings_per_frame"] >= 1


@pytest.mark.parametrize("setting", ["recognition.no_such_key=1", "recognition.embeds_per_track",
                                     "detector.model=x", "recognition.embeds_per_track=0"])
def test_bench_bad_set_is_one_line(setting: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "bench", "--video", str(ROOT / "demo" / "clip.gif"),
         "--set", setting],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("INFO:")]
    assert len(lines) == 1, lines


def test_bench_live_paces_the_clip_as_a_camera_and_reports_every_stage() -> None:
    r = bench("--video", str(ROOT / "demo" / "clip.gif"), "--subjects",
              str(ROOT / "demo" / "subjects"), "--threshold", "0.5", "--live")
    live = r["live"]
    # The latest-frame slot: every frame read was either processed or dropped (counted).
    assert r["frames"] + live["frames_dropped"] == 56 and not live["legacy"]
    assert {"wait", "process", "detect", "embed", "captured_to_done"} <= set(live["frame_ms"])
    assert set(live["alert_ms"]) >= {"created", "queued", "build", "commit", "committed",
                                     "to_publish", "sign", "puback", "received",
                                     "captured_to_received"}
    assert live["frame_ms"]["wait"]["p95"] is not None
    assert r["alerts_delivered"] == r["alerts"] and r["all_delivered"]
    if r["alerts"]:  # the actor (a loaded machine may drop the frames that would find it)
        for stage in ("created", "commit", "sign", "received", "captured_to_received"):
            assert live["alert_ms"][stage]["p50"] is not None, stage
    assert len(r["load_average"]) == 3


def test_bench_legacy_needs_live() -> None:
    proc = subprocess.run([sys.executable, "-m", "edge", "bench", "--video",
                           str(ROOT / "demo" / "clip.gif"), "--legacy"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and "need --live" in proc.stderr
    assert "Traceback" not in proc.stderr
