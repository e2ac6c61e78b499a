"""The daemon with ``[recognition] template_min_embeddings = 2``: the actor still alerts, and
no crop or embedding of the passer-by leaves the process (safeguards 5 and 11), the privacy
test of ``test_daemon.py`` with decisions held back until a track's template holds two
embeddings or the track ends (its candidate crop kept in RAM meanwhile)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from tests.test_daemon import (  # noqa: F401 (fixtures)
    CLIP,
    DaemonProc,
    alert_payloads,
    assert_nothing_of_nonmatches_left,
    device,
    keys,
)

K2 = "\n[recognition]\ntemplate_min_embeddings = 2\n"


def test_with_k2_the_actor_alerts_and_nonmatch_faces_leave_nothing(
    device: Callable[..., DaemonProc], broker: Any, tmp_path: Path  # noqa: F811
) -> None:
    recorder = broker.recorder()
    daemon = device(CLIP, loop=False, extra=K2).start()
    assert daemon.wait(240) == 0, daemon.text()[-3000:]
    assert recorder.wait_for(lambda ms: any(m.topic.endswith("/alerts") for m in ms), 10)

    alerts = alert_payloads(recorder)
    width = cv2.VideoCapture(str(CLIP)).get(cv2.CAP_PROP_FRAME_WIDTH)
    assert alerts
    for alert in alerts:
        assert alert["subject_id"] == "DEMO-0001" and alert["score"] >= alert["threshold"]
        box = alert["bbox"]
        assert box["x"] + box["w"] / 2 > width / 2, "an alert on the passer-by (left half)"
    assert {a["alert_id"] for a in alerts} == set(daemon.alert_ids())

    assert_nothing_of_nonmatches_left(daemon, recorder, alerts, tmp_path / "state")


def test_a_stop_decides_the_tracks_still_waiting_for_their_template(
    device: Callable[..., DaemonProc], broker: Any  # noqa: F811
) -> None:
    """The bundled clip alone (no empty stretch, so the actor's track is still live when the
    file ends) with a template that needs more embeddings than the clip gives: only the stop
    can decide it, and it must alert rather than drop the candidate."""
    recorder = broker.recorder()
    clip = Path(__file__).resolve().parents[1] / "demo" / "clip.gif"
    k = "\n[recognition]\nembeds_per_track = 20\ntemplate_min_embeddings = 20\n"
    daemon = device(clip, loop=False, extra=k).start()
    assert daemon.wait(240) == 0, daemon.text()[-3000:]
    assert recorder.wait_for(lambda ms: any(m.topic.endswith("/alerts") for m in ms), 10), (
        daemon.text()[-3000:])
    alerts = alert_payloads(recorder)
    assert alerts and all(a["subject_id"] == "DEMO-0001" for a in alerts)
    assert {a["alert_id"] for a in alerts} == set(daemon.alert_ids())
