"""Stream scoring (edge.evaluation.stream) with hand-made truth and alerts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.errors import UsageError
from edge.evaluation.stream import (
    StreamAlert,
    Truth,
    TruthTrack,
    WatchlistEntry,
    assign,
    frame_of,
    iou,
    score_alerts,
)

LEFT = (10.0, 10.0, 30.0, 30.0)
LOW = (60.0, 60.0, 80.0, 80.0)
RIGHT = (60.0, 10.0, 80.0, 30.0)


def track(n: int, first: int, last: int, box: tuple[float, float, float, float],
          subject: str | None) -> TruthTrack:
    return TruthTrack(
        track=n,
        identity=f"person{n}",
        watchlisted=subject is not None,
        subject_id=subject,
        image=f"person{n}/person{n}_0001.jpg",
        first_frame=first,
        boxes=tuple(box for _ in range(first, last + 1)),
    )


@pytest.fixture
def truth() -> Truth:
    return Truth(
        fps=10.0,
        frames=10,
        size=(100, 100),
        tracks=(
            track(0, 0, 4, LEFT, "A"),
            track(1, 2, 9, LOW, None),
            track(2, 5, 9, LEFT, "B"),
            track(3, 0, 9, RIGHT, None),
        ),
        watchlist=(
            WatchlistEntry("A", "person0", "suspect", ("person0/person0_0002.jpg",), True),
            WatchlistEntry("B", "person2", "missing_person", ("person2/person2_0002.jpg",), True),
            WatchlistEntry("C", "person9", "wanted_court", ("person9/person9_0001.jpg",), False),
        ),
    )


def test_iou_plain_numbers() -> None:
    assert iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # touching edges
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_score_counts_every_kind(truth: Truth) -> None:
    alerts = [
        StreamAlert(1, LEFT, "A"),  # true, passer-by 0
        StreamAlert(3, (12, 12, 32, 32), "A"),  # true again (same passer-by)
        StreamAlert(3, LOW, "A"),  # passer-by 1 is not watchlisted
        StreamAlert(6, LEFT, "A"),  # passer-by 2 is B: wrong subject
        StreamAlert(6, (40, 40, 50, 50), "B"),  # nobody there
        StreamAlert(8, LOW, "B"),  # passer-by 1 again, another subject
    ]
    s = score_alerts(truth, alerts)
    assert s.watchlisted_passers_by == 2
    assert s.watchlisted_found == 1
    assert s.recall == 0.5
    assert s.missed == [2]
    assert s.other_passers_by == 2
    assert (s.alerts, s.true_alerts, s.false_alerts) == (6, 2, 4)
    assert s.false_alerts_by_kind == {
        "wrong_subject": 1, "not_watchlisted": 2, "no_passer_by": 1,
    }
    assert s.false_alerts_per_10k == pytest.approx(4 / 2 * 10_000)
    assert s.passers_by_falsely_alerted == 1
    assert s.passer_by_fpir == 0.5
    assert s.precision == pytest.approx(2 / 6)
    assert s.true_events == 1
    assert s.false_events == 4  # (1, A), (2, A), (1, B) and the stray alert
    assert s.event_precision == pytest.approx(1 / 5)
    assert s.median_seconds_to_alert == pytest.approx(0.1)
    assert [v.track for v in s.verdicts] == [0, 0, 1, 2, None, 1]
    d = s.to_dict()
    assert d["recall"] == 0.5 and d["missed_tracks"] == [2]
    json.dumps(d)


def test_no_alerts_and_empty_denominators(truth: Truth) -> None:
    s = score_alerts(truth, [])
    assert s.recall == 0.0
    assert s.precision is None and s.event_precision is None
    assert s.false_alerts_per_10k == 0.0
    assert s.median_seconds_to_alert is None
    empty = Truth(fps=10.0, frames=1, size=(10, 10), tracks=(), watchlist=())
    e = score_alerts(empty, [StreamAlert(0, (0, 0, 5, 5), "A")])
    assert e.recall is None and e.false_alerts_per_10k is None
    assert e.precision == 0.0 and e.false_alerts == 1


def test_perfect_run_is_recall_one_precision_one(truth: Truth) -> None:
    s = score_alerts(truth, [StreamAlert(4, LEFT, "A"), StreamAlert(9, LEFT, "B")])
    assert s.recall == 1.0 and s.precision == 1.0 and s.false_alerts == 0
    assert s.median_seconds_to_alert == pytest.approx((0.4 + 0.4) / 2)


def test_best_overlap_wins_and_min_iou(truth: Truth) -> None:
    # At frame 3 passers-by 0 (LEFT) and 3 (RIGHT) are in view; a box between them, nearer
    # LEFT, goes to passer-by 0.
    near_left = (20.0, 10.0, 40.0, 30.0)
    t, v = assign(truth, StreamAlert(3, near_left, "A"))
    assert t is not None and t.track == 0 and v == pytest.approx(1 / 3)
    # A box that barely touches a face is no passer-by at min_iou 0.1 ...
    sliver = (29.0, 10.0, 49.0, 30.0)
    t, v = assign(truth, StreamAlert(3, sliver, "A"))
    assert t is None and 0 < v < 0.1
    # ... but counts with a looser rule.
    t, _ = assign(truth, StreamAlert(3, sliver, "A"), min_iou=0.01)
    assert t is not None and t.track == 0


def test_frame_tolerance(truth: Truth) -> None:
    # Passer-by 3 (RIGHT) is in every frame; passer-by 0 ends at frame 4.
    late = StreamAlert(5, LEFT, "A")
    # Frame 5 has passer-by 2 at LEFT (subject B): a wrong-subject alert.
    assert score_alerts(truth, [late]).false_alerts_by_kind["wrong_subject"] == 1
    gone = Truth(fps=10.0, frames=10, size=(100, 100), tracks=(truth.tracks[0],), watchlist=())
    assert assign(gone, late)[0] is None
    hit, _ = assign(gone, late, frame_tolerance=1)
    assert hit is not None and hit.track == 0


def test_alert_helpers() -> None:
    a = StreamAlert.from_xywh(7, (10, 20, 30, 40), "S-1")
    assert a.box == (10.0, 20.0, 40.0, 60.0)
    assert frame_of(100.0 + 7 / 25, 25.0, start=100.0) == 7
    assert frame_of(0.0, 25.0) == 0


def test_truth_round_trip(truth: Truth, tmp_path: Path) -> None:
    p = tmp_path / "truth.json"
    truth.save(p)
    back = Truth.load(p)
    assert back.to_dict() == truth.to_dict()
    assert back.tracks[1].box_at(2) == LOW
    assert back.tracks[1].box_at(1) is None
    assert back.tracks[1].last_frame == 9
    assert [w.subject_id for w in back.watchlist] == ["A", "B", "C"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"schema": 99}', "unsupported schema"),
        ('{"schema": 1, "tracks": []}', "malformed"),
    ],
)
def test_bad_truth_files(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "t.json"
    p.write_text(text)
    with pytest.raises(UsageError, match=message):
        Truth.load(p)


def test_missing_truth_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read truth file"):
        Truth.load(tmp_path / "absent.json")


def test_clipped_truth_for_runs_that_stop_early(truth: Truth) -> None:
    short = truth.clipped(3)
    assert [t.track for t in short.tracks] == [0, 1, 3]  # passer-by 2 starts at frame 5
    assert short.tracks[0].last_frame == 2 and short.tracks[1].last_frame == 2
    assert truth.clipped(99) is truth
    s = score_alerts(truth, [StreamAlert(1, LEFT, "A")], frames=3)
    assert s.watchlisted_passers_by == 1 and s.recall == 1.0 and s.other_passers_by == 2
