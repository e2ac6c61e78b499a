"""What ``edge alerts`` prints: one escaped line (or one JSON object) per message.

Every string printed from a message is escaped (:func:`safe`): a ``subject_id`` with
control characters cannot forge a line, a terminal escape cannot reach the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def safe(value: object, limit: int = 120) -> str:
    """``value`` as one printable line: control and non-printable characters escaped."""
    text = str(value)
    out = "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
                  for c in text[:limit])  # fmt: skip
    return out + ("..." if len(text) > limit else "")


def alert_line(alert: dict[str, Any], crop: Path | None) -> str:
    line = (
        f"{safe(alert['captured_at'])} ALERT device={safe(alert['device_id'])} "
        f"subject={safe(alert['subject_id'])} category={safe(alert['category'])} "
        f"score={float(alert['score']):.4f} threshold={float(alert['threshold']):.4f} "
        f"alert_id={safe(alert['alert_id'])}"
    )
    return line + (f" crop={crop}" if crop else "")


def print_other(kind: str, device: str, payload: bytes, retained: bool, as_json: bool) -> None:
    from edge import boundedjson

    try:
        body = boundedjson.loads(payload, max_bytes=64 * 1024) if payload else None
    except boundedjson.JSONRefused:
        body = None
    kind = safe(kind, 32)
    if as_json:
        print(json.dumps({"type": kind, "device_id": device, "retained": retained,
                          "payload": body}, sort_keys=True), flush=True)  # fmt: skip
        return
    if kind == "status" and isinstance(body, dict):
        armed = "yes" if body.get("armed") else "no"
        print(
            f"{safe(body.get('at', '-'))} STATUS device={device} state={safe(body.get('state'))} "
            f"armed={armed} reason={json.dumps(safe(body.get('reason', ''), 200))}"
            + (" (retained)" if retained else ""),
            flush=True,
        )
    elif isinstance(body, dict):
        keys = ", ".join(safe(k, 32) for k in sorted(body)[:8])
        print(f"- {kind.upper()} device={device} fields: {keys}", flush=True)
    elif payload:
        print(f"- {kind.upper()} device={device} ({len(payload)} bytes, not JSON)", flush=True)
