"""Frame selection: a track's embeddings go to its best faces, within a per-track and a
per-frame budget (issue 20, item 3), with plain numbers through the real quality score.

The walks score their faces with :meth:`QualityGate.score` (size, sharpness, pose), as
the pipeline does; the decider sees nothing else.
"""

from __future__ import annotations

import numpy as np

from edge.recognition.decide import Face, TrackDecider
from edge.types import Detection, Quality, Track
from edge.vision.quality import QualityGate

GATE = QualityGate()


def track(track_id: int = 1) -> Track:
    det = Detection((0, 0, 80, 80), np.zeros((5, 2), np.float32), 0.9)
    return Track(track_id=track_id, detection=det, first_frame=0, last_frame=0)


def face(px: float, sharpness: float = 90.0, yaw: float = 0.1) -> Quality:
    ok = px >= GATE.min_face_px and sharpness >= GATE.min_sharpness and abs(yaw) <= GATE.max_yaw
    return Quality(ok=ok, score=GATE.score(px, sharpness, yaw, 0.95), face_px=px,
                   sharpness=sharpness, yaw=yaw, reason="" if ok else "blurred")


def walk(decider: TrackDecider, faces: list[Quality]) -> list[int]:
    """The frames of a one-track walk that are embedded."""
    t = track()
    return [i for i, qual in enumerate(faces) if decider.select([(t, qual)])]


def toward_the_camera(frames: int = 50, start: float = 44.0, end: float = 110.0
                      ) -> list[Quality]:
    """A walk toward the camera: the face grows steadily from ``start`` to ``end`` px."""
    return [face(px) for px in np.linspace(start, end, frames)]


def test_a_walk_toward_the_camera_is_embedded_near_its_end() -> None:
    faces = toward_the_camera()
    d = TrackDecider(threshold=0.5)  # the defaults
    embedded = walk(d, faces)
    assert embedded[0] == 0, "the first good face is embedded at once"
    # A face better than every embedded one by the gain is embedded while budget is left,
    # so the last embedded face is within the gain of the walk's best (here the score
    # grows with the face's size): the budget is not spent on the small early frames.
    ratio = 1.0 + d.min_quality_gain
    best = max(faces[i].score for i in embedded)
    assert best * ratio >= max(f.score for f in faces)
    assert faces[embedded[-1]].face_px * ratio >= faces[-1].face_px
    assert len(embedded) < d.max_embeds_per_track, "budget to spare"


def test_the_best_face_coming_last_is_embedded_there() -> None:
    # Walking toward the camera with the head turned, then facing it in the last frame.
    faces = [face(px, yaw=0.35) for px in np.linspace(50.0, 110.0, 60)] + [face(112.0, yaw=0.0)]
    d = TrackDecider(threshold=0.5)
    embedded = walk(d, faces)
    assert embedded[-1] == len(faces) - 1, embedded
    assert len(embedded) <= d.max_embeds_per_track


def test_the_fast_path_embeds_a_track_s_first_good_face_at_once() -> None:
    d = TrackDecider(threshold=0.5)
    t = track()
    assert not d.select([(t, face(30.0))]), "too small: the gate says no"
    small_but_good = face(44.0)
    assert d.select([(t, small_but_good)]) == [(t, small_but_good)]
    assert t.embeds == 1 and t.best_quality == small_but_good.score
    assert d.ready(t), "its first embedding may alert (template_min_embeddings 1)"


def test_a_frame_s_budget_goes_to_new_tracks_first_then_the_largest_gain() -> None:
    d = TrackDecider(threshold=0.5, max_embeds_per_frame=3)
    seen = [track(i) for i in range(1, 5)]
    for t, px in zip(seen, (50.0, 50.0, 50.0, 50.0), strict=True):
        assert d.select([(t, face(px))]), "each seen track has one embedding"
    new = [track(10), track(11)]
    frame: list[Face] = [
        (seen[0], face(70.0)),  # x1.4
        (new[0], face(45.0)),
        (seen[1], face(90.0)),  # x1.8: the largest gain
        (seen[2], face(52.0)),  # x1.04, not better by the gain (0.10): not eligible
        (new[1], face(41.0)),
        (seen[3], face(66.0)),  # x1.32
    ]
    chosen = d.select(frame)
    assert [t.track_id for t, _ in chosen] == [10, 2, 11]  # in the frame's order
    assert seen[0].embeds == 1 and seen[1].embeds == 2 and new[0].embeds == 1
    # Who waited is still eligible in the next frame, as long as it is better.
    again = d.select([(seen[0], face(70.0)), (seen[3], face(66.0)), (seen[2], face(52.0))])
    assert [t.track_id for t, _ in again] == [1, 4]


def test_a_crowd_gets_every_track_a_first_embedding_without_exceeding_the_frame_budget() -> None:
    d = TrackDecider(threshold=0.5, max_embeds_per_frame=4)
    crowd = [track(i) for i in range(20)]
    rng = np.random.default_rng(7)
    per_frame = []
    for f in range(60):
        faces: list[Face] = [(t, face(float(px))) for t, px in
                             zip(crowd, 45.0 + f + rng.uniform(0, 30, len(crowd)), strict=True)]
        per_frame.append(len(d.select(faces)))
        if f == 4:
            assert all(t.embeds >= 1 for t in crowd), "20 new faces, 4 a frame: 5 frames"
    assert max(per_frame) == 4
    assert all(t.embeds <= d.max_embeds_per_track for t in crowd)
    # With budget to spare once everyone has one, tracks keep improving.
    assert sum(t.embeds for t in crowd) > len(crowd)


def test_no_frame_budget_takes_every_eligible_face() -> None:
    d = TrackDecider(threshold=0.5, max_embeds_per_frame=None)
    faces: list[Face] = [(track(i), face(60.0)) for i in range(30)]
    assert len(d.select(faces)) == 30
