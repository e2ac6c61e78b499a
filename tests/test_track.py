"""The IoU tracker, with plain numbers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.recognition.track import IoUTracker, greedy_pairs, iou_matrix
from edge.types import Detection


def det(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Detection:
    return Detection(box=(x1, y1, x2, y2), keypoints=np.zeros((6, 2), np.float32), score=score)


def test_iou_matrix_values() -> None:
    a = [(0, 0, 10, 10), (100, 100, 110, 110)]
    b = [(0, 0, 10, 10), (5, 0, 15, 10), (20, 20, 30, 30), (3, 3, 3, 3)]
    m = iou_matrix(a, b)
    assert m.shape == (2, 4)
    assert m[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0, 0.0])
    assert m[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert iou_matrix([], b).shape == (0, 4)


box = st.tuples(st.floats(0, 500), st.floats(0, 500), st.floats(1, 200), st.floats(1, 200)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
)


@given(st.lists(box, min_size=1, max_size=5), st.lists(box, min_size=1, max_size=5))
def test_iou_is_symmetric_and_bounded(
    a: list[tuple[float, ...]], b: list[tuple[float, ...]]
) -> None:
    m = iou_matrix(a, b)
    assert np.all(m >= 0) and np.all(m <= 1 + 1e-9)
    assert np.allclose(m, iou_matrix(b, a).T)
    assert np.allclose(np.diag(iou_matrix(a, a)), 1.0)


def test_greedy_pairs_takes_best_first_and_respects_minimum() -> None:
    scores = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert greedy_pairs(scores, 0.3) == [(0, 0)]  # row 1's only good column is taken
    assert sorted(greedy_pairs(np.array([[0.5, 0.9], [0.8, 0.2]]), 0.3)) == [(0, 1), (1, 0)]
    assert greedy_pairs(np.array([[0.2]]), 0.3) == []
    assert greedy_pairs(np.zeros((0, 3)), 0.3) == []


def test_moving_faces_keep_their_ids() -> None:
    tracker = IoUTracker(min_iou=0.3, max_missed=2)
    first = tracker.update([det(0, 0, 100, 100), det(300, 0, 400, 100)], 0)
    assert [t.track_id for t in first] == [1, 2]
    # Both move 10 px; given in the other order: ids follow the boxes, not the order.
    second = tracker.update([det(310, 5, 410, 105), det(10, 5, 110, 105)], 1)
    assert [t.track_id for t in second] == [2, 1]
    assert second[1].detection.box == (10, 5, 110, 105)
    assert [(t.hits, t.first_frame, t.last_frame) for t in second] == [(2, 0, 1), (2, 0, 1)]
    assert len(tracker) == 2 and tracker.created == 2


def test_unmatched_detection_starts_a_new_track() -> None:
    tracker = IoUTracker(min_iou=0.5)
    tracker.update([det(0, 0, 100, 100)], 0)
    # IoU 1/3 < 0.5: a different face (or a jump) gets a new id.
    seen = tracker.update([det(50, 0, 150, 100)], 1)
    assert [t.track_id for t in seen] == [2]
    assert len(tracker) == 2


def test_missed_frames_then_expiry() -> None:
    tracker = IoUTracker(max_missed=2)
    (track,) = tracker.update([det(0, 0, 50, 50)], 10)
    assert tracker.update([], 11) == []
    assert tracker.expire(12) == []  # missed 2 frames: still alive
    (again,) = tracker.update([det(2, 2, 52, 52)], 12)  # re-found within max_missed
    assert again is track and track.hits == 2
    assert tracker.expire(14) == []
    gone = tracker.expire(15)  # 3 frames since last seen
    assert gone == [track] and len(tracker) == 0
    assert tracker.expire(100) == []  # reported once
    (fresh,) = tracker.update([det(0, 0, 50, 50)], 101)
    assert fresh.track_id == 2  # ids are never reused


def test_track_count_is_bounded_and_evictions_are_reported() -> None:
    tracker = IoUTracker(max_tracks=3, max_missed=1000)
    for i in range(5):
        tracker.update([det(i * 100, 0, i * 100 + 50, 50)], i)
    assert len(tracker) == 3
    assert [t.track_id for t in tracker.tracks] == [3, 4, 5]
    evicted = tracker.expire(5)
    assert [t.track_id for t in evicted] == [1, 2]
    assert [t.track_id for t in tracker.clear()] == [3, 4, 5]
    assert len(tracker) == 0


def test_one_detection_never_feeds_two_tracks() -> None:
    tracker = IoUTracker(min_iou=0.1)
    tracker.update([det(0, 0, 100, 100), det(20, 0, 120, 100)], 0)
    seen = tracker.update([det(10, 0, 110, 100)], 1)
    assert len(seen) == 1
    assert sorted(t.hits for t in tracker.tracks) == [1, 2]


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        IoUTracker(min_iou=0)
    with pytest.raises(ValueError):
        IoUTracker(max_missed=-1)
    with pytest.raises(ValueError):
        IoUTracker(max_tracks=0)
