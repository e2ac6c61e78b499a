"""Issue 13 item 2 end to end: ``edge run`` as a real process (real models, mosquitto with
mutual TLS, a signed bundle) on a clock behind its persisted time high-water mark runs no
purge, audits that once, and says so on the retained ``status`` topic; it does not arm."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.test_daemon import CLIP, DaemonProc, device, keys  # noqa: F401 (fixtures)

DEVICE = "van-t1"


def test_daemon_on_a_clock_behind_its_mark_holds_purges_and_says_so(
    device: Callable[..., DaemonProc], broker: Any, tmp_path: Path  # noqa: F811
) -> None:
    state = tmp_path / "state"
    mark = time.time() + 600  # the clock was ten minutes ahead once (inside the window)
    (state / "clock.json").write_text(json.dumps({"high_water_mark": mark}))
    recorder = broker.recorder()
    daemon = device(CLIP, loop=True).start()

    def held(ms: list[Any]) -> bool:
        for m in ms:
            if m.topic == f"lfr/{DEVICE}/status":
                body = json.loads(m.payload)
                if "purges held" in body.get("clock", ""):
                    return True
        return False

    assert recorder.wait_for(held, 120), daemon.text()[-3000:]
    # More turns of the main loop, each asking to purge: until a stats message (published
    # every stats_interval_s by the running loop) arrives after the held status.
    seen = len(recorder.messages)
    assert recorder.wait_for(lambda ms: any(m.topic.endswith("/stats") for m in ms[seen:]), 60)
    assert daemon.terminate() == 0
    status = [json.loads(m.payload) for m in recorder.on(f"lfr/{DEVICE}/status")]
    last = next(s for s in reversed(status) if "clock" in s)
    assert last["armed"] is False and last["code"] == "clock_behind", last
    assert "behind the latest time this device has seen" in last["clock"]
    events = [json.loads(x) for x in (state / "audit.log").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names.count("purge_held") == 1, names
    assert "purge" not in names
    assert "purges held" in daemon.text()
