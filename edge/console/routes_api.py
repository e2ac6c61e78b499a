"""The API: adjudicate, images (each view audited), the SSE stream, /metrics, /healthz.

State changes are POSTs that need the session's CSRF token. A route never talks to MQTT:
it calls :class:`edge.console.service.Console`.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from edge.console.app import Context, NeedLogin, check_csrf, ctx, current_user, require
from edge.console.auth import User, session_user
from edge.console.limits import json_object
from edge.console.service import ActionRefused

router = APIRouter()
Ctx = Annotated[Context, Depends(ctx)]
KEEPALIVE_S = 15.0


def _refused(exc: ActionRefused) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


@router.post("/api/alerts/{alert_id}/adjudicate")
async def adjudicate(
    request: Request, alert_id: str, c: Ctx, user: Annotated[User, Depends(require("adjudicate"))]
) -> Response:
    check_csrf(request, user)
    decision = (await json_object(request, {"decision": str}))["decision"]
    try:
        result = await asyncio.to_thread(c.console.adjudicate, user.name, alert_id, decision)
    except ActionRefused as exc:
        return _refused(exc)
    return JSONResponse(result)


@router.post("/api/alerts/{alert_id}/hold")
async def legal_hold(
    request: Request, alert_id: str, c: Ctx, user: Annotated[User, Depends(require("fleet"))]
) -> Response:
    """A supervisor puts an alert (and its crop) on legal hold, or lifts it: kept past 31 days."""
    check_csrf(request, user)
    on = (await json_object(request, {"on": bool}))["on"]
    if not await asyncio.to_thread(c.store.set_legal_hold, alert_id, on):
        raise HTTPException(404, "no such alert")
    await asyncio.to_thread(c.store.log, user.name, "legal_hold", alert_id=alert_id, on=on)
    c.hub.publish("alert_update", alert_id=alert_id)
    return JSONResponse({"alert_id": alert_id, "legal_hold": on})


def _jpeg(data: bytes) -> Response:
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "no-store, private"})  # fmt: skip


@router.get("/images/crop/{alert_id}.jpg")
def crop(alert_id: str, c: Ctx, user: Annotated[User, Depends(require("alerts"))]) -> Response:
    try:
        return _jpeg(c.console.crop(user.name, alert_id))
    except ActionRefused as exc:
        return _refused(exc)


@router.get("/images/reference/{deployment_id}/{subject_id}.jpg")
def reference(deployment_id: str, subject_id: str, c: Ctx,
              user: Annotated[User, Depends(require("alerts"))]) -> Response:  # fmt: skip
    try:
        return _jpeg(c.console.reference(user.name, deployment_id, subject_id))
    except ActionRefused as exc:
        return _refused(exc)


@router.get("/images/reference/{deployment_id}/{subject_id}/{index}.jpg")
def reference_n(deployment_id: str, subject_id: str, index: int, c: Ctx,
                user: Annotated[User, Depends(require("alerts"))]) -> Response:  # fmt: skip
    """Reference image ``index`` of a subject (0 is the best, as the route above)."""
    try:
        return _jpeg(c.console.reference(user.name, deployment_id, subject_id, index))
    except ActionRefused as exc:
        return _refused(exc)


@router.get("/events")
async def events(request: Request, c: Ctx,
                 user: Annotated[User, Depends(current_user)]) -> Response:  # fmt: skip
    sub_id, queue = c.hub.subscribe()
    token = request.cookies.get("console_session")

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    # The session may have expired or been closed: end the stream then.
                    if await asyncio.to_thread(session_user, c.store, token) is None:
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield f"data: {message}\n\n"
        finally:
            c.hub.unsubscribe(sub_id)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


_DEVICE_FIELDS = ("device_id", "state", "stale", "silent_s", "armed", "reason", "deployment_id",
                  "window_end", "last_seen", "fps", "camera", "outbox_pending")


@router.get("/api/devices")
def devices(c: Ctx, user: Annotated[User, Depends(require("fleet"))]) -> Response:
    """The fleet as the fleet page shows it: ``state`` as the van last said (online or
    offline), ``stale`` when it is online but its heartbeat is overdue (``stale_after_s``)."""
    return JSONResponse([{k: d[k] for k in _DEVICE_FIELDS} for d in c.devices()])


@router.get("/metrics")
def metrics(request: Request, c: Ctx) -> Response:
    bearer = request.headers.get("authorization", "")
    token_ok = bool(c.metrics_token) and hmac.compare_digest(
        bearer.encode(), f"Bearer {c.metrics_token}".encode())  # fmt: skip
    if not token_ok:
        user = session_user(c.store, request.cookies.get("console_session"))
        if user is None:
            raise NeedLogin()
        if not (user.may("fleet") or user.may("audit")):
            raise HTTPException(403, "your role may not see the metrics")
    devices = c.devices()
    chains = c.store.audit.chains()
    alarms = c.store.fleet.alarms()  # not cleared yet (shared by every instance)
    gauges = {
        "console_audit_chains_broken": float(sum(1 for ch in chains if ch["state"] == "broken")),
        "console_audit_chains_with_gaps": float(sum(1 for ch in chains if ch["state"] == "gap")),
        "console_devices_online": float(sum(1 for d in devices
                                            if d["state"] == "online" and not d["stale"])),
        "console_devices_stale": float(sum(1 for d in devices if d["stale"])),
        "console_devices_known": float(len(devices)),
        "console_devices_armed": float(sum(1 for d in devices if d["armed"])),
        "console_broker_connected": 1.0 if c.ingest_connected() else 0.0,
        "console_alarms_active": float(len(alarms)),
        "console_mqtt_session_lost": float(sum(1 for a in alarms
                                               if a["kind"] == "mqtt_session_lost")),
        "console_sse_clients": float(c.hub.subscribers),
    }
    return PlainTextResponse(c.metrics.render(gauges, c.store.outcome_counts()),
                             media_type="text/plain; version=0.0.4")  # fmt: skip


@router.get("/healthz")
def healthz(c: Ctx) -> Response:
    """Liveness for the service manager: no data, no login."""
    return PlainTextResponse("ok" if c.ingest_connected() else "ok (broker offline)")
