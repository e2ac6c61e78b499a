"""The fleet in the console's database, the Store's ``fleet`` part: devices, deployments,
alarms and the console's own MQTT sessions.

- devices: what the vans' *unsigned* status and stats say, shown as state only (online,
  armed, fps...; never a record); a van whose heartbeat (status or stats) is overdue is
  marked ``stale`` (:meth:`FleetStore.devices`): a van cut off for less than its MQTT
  keepalive leaves no will and would otherwise show online;
- deployments: from the vans' *signed, verified* audit entries only (``armed``,
  ``watchlist_loaded``, ``deployment_summary``: :func:`edge.console.messages.
  deployment_record`), each row tied to the van whose key signed it;
- alarms: conditions shown on every page until a supervisor clears them;
- MQTT sessions: each console instance's session as it last knew it
  (:mod:`edge.console.mqtt_session`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from edge.console import tables as t
from edge.console.db import Row, rows, upsert


class FleetStore:
    """Devices, deployments, alarms and MQTT sessions over ``engine`` (``store.fleet``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    # -- devices (unsigned: state to show, never a record) ----------------------------------

    def record_status(self, device_id: str, status: Mapping[str, Any], received_at: float,
                      retained: bool) -> None:  # fmt: skip
        h = t.status_history
        with self._engine.begin() as conn:
            values = {k: status[k] for k in ("state", "armed", "reason", "deployment_id",
                                             "window_end", "status_at")}  # fmt: skip
            if status["state"] == "online" or not retained:
                values["last_seen"] = received_at
            upsert(conn, t.devices, {"device_id": device_id}, values)
            if status["status_at"] is not None:  # the same status again (another console
                # instance, a reconnect's retained copy): one line of history
                q = sa.select(h.c.id).where(h.c.device_id == device_id,
                                            h.c.status_at == status["status_at"],
                                            h.c.state == status["state"]).limit(1)  # fmt: skip
                if conn.execute(q).first() is not None:
                    return
            conn.execute(sa.insert(h).values(
                device_id=device_id, received_at=received_at, state=status["state"],
                armed=status["armed"], reason=status["reason"], retained=retained,
                status_at=status["status_at"]))  # fmt: skip

    def record_stats(self, device_id: str, stats: Mapping[str, Any], received_at: float) -> None:
        with self._engine.begin() as conn:
            values = {k: v for k, v in stats.items() if v is not None}
            upsert(conn, t.devices, {"device_id": device_id},
                   {**values, "last_seen": received_at})  # fmt: skip

    def devices(self, stale_after_s: float | None = None, now: float | None = None) -> list[Row]:
        """Every device, each with ``stale``: online, but no status or stats for more than
        ``stale_after_s`` (never with None)."""
        now = time.time() if now is None else now
        with self._engine.connect() as conn:
            out = rows(conn.execute(sa.select(t.devices).order_by(t.devices.c.device_id)))
        for d in out:
            seen = d["last_seen"]
            d["stale"] = bool(stale_after_s is not None and d["state"] == "online"
                              and (seen is None or now - float(seen) > stale_after_s))
            d["silent_s"] = None if seen is None else max(0.0, now - float(seen))
        return out

    def status_history(self, device_id: str, limit: int = 50) -> list[Row]:
        with self._engine.connect() as conn:
            q = (sa.select(t.status_history).where(t.status_history.c.device_id == device_id)
                 .order_by(t.status_history.c.id.desc()).limit(limit))  # fmt: skip
            return rows(conn.execute(q))

    # -- deployments (signed: from the vans' verified audit entries) ------------------------

    def record_deployment(self, device_id: str, rec: Mapping[str, Any], now: float,
                          seq: int) -> None:  # fmt: skip
        """Merge one :func:`~edge.console.messages.deployment_record` from ``device_id``'s
        verified audit entry ``seq``. A summary ends the deployment for good: a later
        ``armed`` entry of the same id (a new bundle) does not reopen its report."""
        d = t.deployments
        keys = {"deployment_id": rec["deployment_id"], "device_id": device_id}
        values = {k: v for k, v in rec.items() if k != "deployment_id" and v is not None}
        if "summary" in values:
            values["summary"] = json.dumps(values["summary"], sort_keys=True)
            values["summary_seq"] = seq
        with self._engine.begin() as conn:
            q = sa.select(d.c.state).where(*(d.c[k] == v for k, v in keys.items()))
            known = conn.execute(q).first()
            if known is not None and known[0] == "ended" and rec.get("state") != "ended":
                values.pop("state", None)
            upsert(conn, d, keys, {**values, "updated_at": now},
                   create={"location": "", "state": "armed"})  # fmt: skip

    def deployments(self) -> list[Row]:
        q = sa.select(t.deployments).order_by(t.deployments.c.updated_at.desc())
        with self._engine.connect() as conn:
            out = rows(conn.execute(q))
        for r in out:
            r["summary"] = json.loads(r["summary"]) if r["summary"] else None
        return out

    def deployment_ended_at(self, device_id: str, deployment_id: str) -> float | None:
        """When the van's signed summary says the deployment ended, or None."""
        d = t.deployments
        q = sa.select(d.c.ended_at_ts).where(d.c.device_id == device_id,
                                             d.c.deployment_id == deployment_id)  # fmt: skip
        with self._engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None or row[0] is None else float(row[0])

    # -- alarms -----------------------------------------------------------------------------

    def raise_alarm(self, kind: str, detail: str, now: float) -> int:
        with self._engine.begin() as conn:
            res = conn.execute(sa.insert(t.alarms).values(kind=kind[:32], detail=detail[:500],
                                                          raised_at=now))  # fmt: skip
            pk = res.inserted_primary_key
            return int(pk[0]) if pk else 0

    def alarms(self) -> list[Row]:
        """The alarms not yet cleared, newest first."""
        a = t.alarms
        q = sa.select(a).where(a.c.cleared_at.is_(None)).order_by(a.c.id.desc()).limit(20)
        with self._engine.connect() as conn:
            return rows(conn.execute(q))

    def clear_alarm(self, alarm_id: int, by: str, now: float) -> Row | None:
        a = t.alarms
        with self._engine.begin() as conn:
            q = sa.update(a).where(a.c.id == alarm_id, a.c.cleared_at.is_(None))
            if conn.execute(q.values(cleared_at=now, cleared_by=by[:64])).rowcount == 0:
                return None
            row = conn.execute(sa.select(a).where(a.c.id == alarm_id)).first()
            return None if row is None else dict(row._mapping)

    # -- this console's MQTT sessions -------------------------------------------------------

    def mqtt_session(self, client_id: str) -> Row | None:
        s = t.mqtt_sessions
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(s).where(s.c.client_id == client_id)).first()
            return None if row is None else dict(row._mapping)

    def mqtt_session_alive(self, client_id: str, now: float, expiry_s: int) -> None:
        with self._engine.begin() as conn:
            upsert(conn, t.mqtt_sessions, {"client_id": client_id},
                   {"alive_at": now, "expiry_s": expiry_s})  # fmt: skip
