"""What the officer's alert view shows, gathered for the templates (``_alert_panel.html``).

The matched crop and every reference image of the subject are shown large enough to
compare: the shorter side at :data:`FACE_PX` CSS pixels at least :data:`MIN_FACE_PX`,
with their own pixel size under each. An image smaller than that is enlarged to
:data:`FACE_PX` and its caption says "enlarged ×k" (a crop is never shown larger than its
pixels without saying so); one at least :data:`MIN_FACE_PX` is never enlarged. The
sizes go into the ``<img>``'s ``width``/``height`` attributes (no inline style: the
Content-Security-Policy forbids it).

Reading a crop's or a reference's pixel size decrypts it but shows nothing: not a view.
Every image itself is fetched through ``/images/...``, each view audited.
"""

from __future__ import annotations

import time
from typing import Any, Final
from urllib.parse import quote

from edge.console.service import Console
from edge.console.store import Store

FACE_PX: Final = 288
MIN_FACE_PX: Final = 256
MAX_LONG_PX: Final = 432
NEAR_THRESHOLD: Final = 0.03
"""A score within this of the threshold is called "near the threshold" (in words too)."""


def display_size(natural: tuple[int, int] | None) -> tuple[int, int, float]:
    """(width, height, scale) to show an image of ``natural`` pixels; scale > 1: enlarged."""
    if natural is None or min(natural) <= 0:
        return FACE_PX, FACE_PX, 1.0
    w, h = natural
    short, long_ = min(w, h), max(w, h)
    if short >= MIN_FACE_PX:
        scale = min(1.0, MAX_LONG_PX / long_)
        scale = max(scale, MIN_FACE_PX / short)  # a long thin image stays >= MIN_FACE_PX
    else:
        scale = FACE_PX / short
    return round(w * scale), round(h * scale), scale


def face(src: str, alt: str, what: str, natural: tuple[int, int] | None) -> dict[str, Any]:
    width, height, scale = display_size(natural)
    if natural is None:
        caption = f"{what}: pixel size unknown"
    else:
        caption = f"{what}: {natural[0]} × {natural[1]} px"
        if scale > 1.005:
            caption += f", shown enlarged ×{scale:.1f}"
    return {"src": src, "alt": alt, "caption": caption, "width": width, "height": height,
            "natural": natural, "enlarged": scale > 1.005}  # fmt: skip


def alert_detail(store: Store, console: Console, row: dict[str, Any],
                 stale_s: int) -> dict[str, Any]:  # fmt: skip
    """The alert ``row`` (from the store) with everything its panel shows."""
    a = dict(row)
    alert_id, dep, subject = str(a["alert_id"]), str(a["deployment_id"]), str(a["subject_id"])
    now = time.time()
    a["age_s"] = max(0.0, now - float(a["captured_at"]))
    a["stale"] = a["decision"] is None and a["age_s"] > stale_s
    a["margin"] = float(a["score"]) - float(a["threshold"])
    a["near"] = a["margin"] < NEAR_THRESHOLD
    a["crop"] = None
    if a.get("has_crop"):
        a["crop"] = face(f"/images/crop/{alert_id}.jpg",
                         "Matched face: the crop from the van's camera", "Matched face",
                         console.crop_size(alert_id))  # fmt: skip
    info = console.reference_info(dep, subject)
    a["references"] = []
    a["provenance"] = None
    if info is not None:
        sizes: list[tuple[int, int] | None] = info["sizes"]  # type: ignore[assignment]
        n = len(sizes)
        base = f"/images/reference/{quote(dep, safe='')}/{quote(subject, safe='')}"
        a["references"] = [
            face(f"{base}.jpg" if i == 0 else f"{base}/{i}.jpg",
                 f"Watchlist reference image {i + 1} of {n} of the subject",
                 f"Reference {i + 1} of {n}", size)
            for i, size in enumerate(sizes)
        ]  # fmt: skip
        a["provenance"] = {"source": info["source"], "capture_date": info["capture_date"]}
    a["deployment"] = next((d for d in store.fleet.deployments() if d["device_id"] == a["device_id"]
                            and d["deployment_id"] == dep), None)  # fmt: skip
    sent = store.adjudications(alert_id)
    a["sent_state"] = sent[-1]["state"] if sent else None
    return a
