"""The pages: login, the alert queue and each alert, the fleet, deployments and their
report, the audit.

Server-rendered with Jinja2 (autoescaped: a device's strings are shown as text). The
``/fragments/...`` routes render one row, one alert's panel or the new-alert banner,
which the page's script fetches when an SSE event says something changed. Every page of
a user who may see alerts carries the count of undecided alerts (the tab title, the
banner) and the stale time (``[console] alert_stale_s``).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from edge.console import auth, limits
from edge.console.alertview import alert_detail
from edge.console.app import Context, check_csrf, ctx, current_user, require
from edge.console.auth import User
from edge.console.login import MESSAGES, LoginRefused
from edge.delivery.alert import DEVICE_ID_RE

router = APIRouter()
Ctx = Annotated[Context, Depends(ctx)]
ALERT_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _page(c: Context, request: Request, name: str, user: User | None, **data: Any) -> Response:
    broken: list[str] = []
    full = not name.startswith("_")
    alarms: list[dict[str, Any]] = []
    if user is not None and full:
        alarms = c.store.fleet.alarms()  # every page, every role: alerts may be missing
        if user.may("audit"):
            broken = [ch["device_id"] for ch in c.store.audit.chains() if ch["state"] == "broken"]
    pending: dict[str, Any] = {}
    if user is not None and user.may("alerts") and (full or name == "_alert_banner.html"):
        count, newest = c.store.undecided(limit=1)
        pending = {"undecided": count, "newest": newest[0] if newest else None}
    return c.templates.TemplateResponse(request, name, {
        "user": user, "broken_chains": broken, "alarms": alarms, "stale_s": c.alert_stale_s,
        "now": time.time(), "undecided": 0, "newest": None, **pending, **data})  # fmt: skip


def _id_or_none(value: str | None) -> str | None:
    if not value:
        return None
    if not DEVICE_ID_RE.match(value):
        raise HTTPException(400, "not a valid id")
    return value


# -- login ----------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, c: Ctx, error: str | None = None) -> Response:
    """The login page; ``error`` is a code of :data:`edge.console.login.MESSAGES` (any
    other value shows nothing: the page never shows text from a request)."""
    token = secrets.token_urlsafe(24)
    resp = _page(c, request, "login.html", None, login_csrf=token,
                 error=MESSAGES.get(error or ""))  # fmt: skip
    resp.set_cookie(auth.LOGIN_COOKIE, token, httponly=True, samesite="strict",
                    secure=c.secure_cookies, max_age=1800)  # fmt: skip
    return resp


@router.post("/login")
async def login(request: Request, c: Ctx) -> Response:
    f = await limits.form(request, "name", "password", "csrf")
    if not auth.csrf_ok(request.cookies.get(auth.LOGIN_COOKIE) or "", f["csrf"]):
        raise HTTPException(403, "missing or wrong CSRF token")
    name, client = f["name"], request.client.host if request.client else "unknown"
    try:
        token, user = await c.logins.login(name, f["password"], client)
    except LoginRefused as exc:
        c.metrics.inc("console_logins_refused_total", reason=exc.code)
        count = c.logins.trail_line(exc.code, client, time.time())
        if count is not None:
            await asyncio.to_thread(c.store.log, name[:64] or "-", "login_refused",
                                    client=client, reason=exc.code, count=count)  # fmt: skip
        resp = login_form(request, c, error=exc.code)
        resp.status_code = 401 if exc.retry_after_s is None else 429
        if exc.retry_after_s is not None:
            resp.headers["Retry-After"] = str(exc.retry_after_s)
        return resp
    await asyncio.to_thread(c.store.log, user.name, "login", client=client, role=user.role)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(auth.COOKIE, token, httponly=True, samesite="strict",
                    secure=c.secure_cookies, max_age=c.session_ttl_s)  # fmt: skip
    resp.delete_cookie(auth.LOGIN_COOKIE)
    return resp


@router.post("/logout")
async def logout(request: Request, c: Ctx,
                 user: Annotated[User, Depends(current_user)]) -> Response:  # fmt: skip
    check_csrf(request, user, (await limits.form(request, "csrf"))["csrf"])
    await asyncio.to_thread(c.store.auth.drop_session, user.token_hash)
    await asyncio.to_thread(c.store.log, user.name, "logout")
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(auth.COOKIE)
    return resp


@router.get("/")
def home(user: Annotated[User, Depends(current_user)]) -> Response:
    for perm, url in (("alerts", "/alerts"), ("fleet", "/fleet"), ("audit", "/audit"),
                      ("deployments", "/deployments")):  # fmt: skip
        if user.may(perm):
            return RedirectResponse(url, status_code=303)
    raise HTTPException(403, "your role has no pages")


# -- alarms ---------------------------------------------------------------------------------


@router.get("/fragments/alarms", response_class=HTMLResponse)
def alarm_banner(request: Request, c: Ctx,
                 user: Annotated[User, Depends(current_user)]) -> Response:  # fmt: skip
    return c.templates.TemplateResponse(request, "_alarms.html",
                                        {"user": user, "alarms": c.store.fleet.alarms()})


@router.post("/alarms/{alarm_id}/clear")
async def clear_alarm(request: Request, alarm_id: int, c: Ctx,
                      user: Annotated[User, Depends(require("fleet"))]) -> Response:
    """A supervisor has followed the runbook: the alarm leaves the pages (on the trail)."""
    check_csrf(request, user, (await limits.form(request, "csrf"))["csrf"])
    row = c.store.fleet.clear_alarm(alarm_id, user.name, time.time())
    if row is None:
        raise HTTPException(404, "no such alarm, or already cleared")
    c.store.log(user.name, "alarm_cleared", alarm_id=alarm_id, kind=row["kind"],
                raised_at=row["raised_at"])  # fmt: skip
    c.hub.publish("alarm", alarm=str(row["kind"]))
    return RedirectResponse("/", status_code=303)


# -- alerts ---------------------------------------------------------------------------------


def _alert_views(c: Context, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each alert row with whether its reference image is there, and the decisions sent on
    it, each with the van's answer (recorded, or refused and why) as it arrives."""
    refs = c.store.images.reference_keys({r["deployment_id"] for r in rows})
    sent: dict[str, list[dict[str, Any]]] = {}
    for j in c.store.adjudications(alert_ids=[r["alert_id"] for r in rows]) if rows else []:
        sent.setdefault(j["alert_id"], []).append(j)
    return [{**r, "has_reference": (r["deployment_id"], r["subject_id"]) in refs,
             "decisions": sent.get(r["alert_id"], [])} for r in rows]  # fmt: skip


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, c: Ctx, user: Annotated[User, Depends(require("alerts"))],
                device: str | None = None, deployment: str | None = None) -> Response:  # fmt: skip
    device, deployment = _id_or_none(device), _id_or_none(deployment)
    rows = _alert_views(c, c.store.alerts(device_id=device, deployment_id=deployment))
    # The top of the queue: the newest undecided alert, as large as on its own page.
    first = next((r for r in rows if r["decision"] is None), None)
    focus = alert_detail(c.store, c.console, first, c.alert_stale_s) if first else None
    return _page(c, request, "alerts.html", user, alerts=rows, device=device or "",
                 deployment=deployment or "", devices=[d["device_id"] for d in c.devices()],
                 a=focus)  # fmt: skip


def _detail(c: Context, alert_id: str) -> dict[str, Any]:
    row = c.store.alert(alert_id) if ALERT_ID_RE.match(alert_id) else None
    if row is None:
        raise HTTPException(404, "no such alert")
    return alert_detail(c.store, c.console, row, c.alert_stale_s)


@router.get("/alerts/{alert_id}", response_class=HTMLResponse)
def alert_page(request: Request, alert_id: str, c: Ctx,
               user: Annotated[User, Depends(require("alerts"))]) -> Response:  # fmt: skip
    """One alert, judged at a glance: both faces large, the score, the three decisions."""
    return _page(c, request, "alert.html", user, a=_detail(c, alert_id))


@router.get("/fragments/alert-panel/{alert_id}", response_class=HTMLResponse)
def alert_panel(request: Request, alert_id: str, c: Ctx,
                user: Annotated[User, Depends(require("alerts"))]) -> Response:  # fmt: skip
    return _page(c, request, "_alert_panel.html", user, a=_detail(c, alert_id))


@router.get("/fragments/alert-banner", response_class=HTMLResponse)
def alert_banner(request: Request, c: Ctx, user: Annotated[User, Depends(require("alerts"))],
                 new: str | None = None) -> Response:  # fmt: skip
    """The banner every page shows while alerts wait for a decision (``new``: just raised)."""
    return _page(c, request, "_alert_banner.html", user, raised=bool(new))


@router.get("/fragments/alerts", response_class=HTMLResponse)
def alert_rows(request: Request, c: Ctx, user: Annotated[User, Depends(require("alerts"))],
               device: str | None = None, deployment: str | None = None) -> Response:  # fmt: skip
    """The queue's rows, for a page whose live stream (re)connects: nothing is missed."""
    device, deployment = _id_or_none(device), _id_or_none(deployment)
    rows = _alert_views(c, c.store.alerts(device_id=device, deployment_id=deployment))
    return _page(c, request, "_alert_rows.html", user, alerts=rows)


@router.get("/fragments/alert/{alert_id}", response_class=HTMLResponse)
def alert_row(request: Request, alert_id: str, c: Ctx,
              user: Annotated[User, Depends(require("alerts"))]) -> Response:  # fmt: skip
    row = c.store.alert(alert_id)
    if row is None:
        raise HTTPException(404, "no such alert")
    return _page(c, request, "_alert_row.html", user, a=_alert_views(c, [row])[0])


# -- fleet ----------------------------------------------------------------------------------


def _fleet_order(d: dict[str, Any]) -> tuple[bool, bool, str]:
    """Vans that need a look first: offline, then stale, then the rest, each by id."""
    return d["state"] == "online", not d["stale"], d["device_id"]



@router.get("/fleet", response_class=HTMLResponse)
def fleet_page(request: Request, c: Ctx,
               user: Annotated[User, Depends(require("fleet"))]) -> Response:  # fmt: skip
    devices = sorted(c.devices(), key=_fleet_order)
    return _page(c, request, "fleet.html", user, devices=devices)


@router.get("/fleet/{device_id}", response_class=HTMLResponse)
def device_page(request: Request, device_id: str, c: Ctx,
                user: Annotated[User, Depends(require("fleet"))]) -> Response:  # fmt: skip
    rows = [d for d in c.devices() if d["device_id"] == device_id]
    if not rows:
        raise HTTPException(404, "no such device")
    return _page(c, request, "device.html", user, d=rows[0],
                 history=c.store.fleet.status_history(device_id, limit=100))


@router.get("/fragments/fleet", response_class=HTMLResponse)
def fleet_rows(request: Request, c: Ctx,
               user: Annotated[User, Depends(require("fleet"))]) -> Response:  # fmt: skip
    devices = sorted(c.devices(), key=_fleet_order)
    return _page(c, request, "_device_rows.html", user, devices=devices)


@router.get("/fragments/device/{device_id}", response_class=HTMLResponse)
def device_row(request: Request, device_id: str, c: Ctx,
               user: Annotated[User, Depends(require("fleet"))]) -> Response:  # fmt: skip
    rows = [d for d in c.devices() if d["device_id"] == device_id]
    if not rows:
        raise HTTPException(404, "no such device")
    return _page(c, request, "_device_row.html", user, d=rows[0])


# -- deployments ----------------------------------------------------------------------------


@router.get("/deployments", response_class=HTMLResponse)
def deployments_page(
    request: Request, c: Ctx, user: Annotated[User, Depends(require("deployments"))]
) -> Response:
    deps = c.store.fleet.deployments()
    for d in deps:
        d["outcomes"] = c.store.alert_outcomes(d["device_id"], d["deployment_id"])
    return _page(c, request, "deployments.html", user, deployments=deps)


@router.get("/deployments/{device_id}/{deployment_id}", response_class=HTMLResponse)
def report_page(request: Request, device_id: str, deployment_id: str, c: Ctx,
                user: Annotated[User, Depends(require("deployments"))]) -> Response:  # fmt: skip
    match = [d for d in c.store.fleet.deployments()
             if d["device_id"] == device_id and d["deployment_id"] == deployment_id]
    if not match:
        raise HTTPException(404, "no such deployment")
    d = match[0]
    s = d["summary"] or {}
    adj = s.get("adjudications", {})
    bars = [("alerts", int(s.get("alerts", 0))), ("confirmed", int(adj.get("confirmed", 0))),
            ("rejected", int(adj.get("rejected", 0))),
            ("not stopped", int(adj.get("not_stopped", 0)))]  # fmt: skip
    top = max([v for _, v in bars] + [1])
    return _page(c, request, "report.html", user, d=d, s=s, bars=bars, top=top,
                 outcomes=c.store.alert_outcomes(device_id, deployment_id))


# -- audit ----------------------------------------------------------------------------------


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, c: Ctx,
               user: Annotated[User, Depends(require("audit"))]) -> Response:  # fmt: skip
    verified, problem = c.store.verify_log()
    return _page(c, request, "audit.html", user, chains=c.store.audit.chains(),
                 console_log=c.store.console_log(100), trail_verified=verified,
                 trail_problem=problem)


@router.get("/audit/{device_id}", response_class=HTMLResponse)
def audit_device(request: Request, device_id: str, c: Ctx,
                 user: Annotated[User, Depends(require("audit"))]) -> Response:  # fmt: skip
    chain = [r for r in c.store.audit.chains() if r["device_id"] == device_id]
    if not chain:
        raise HTTPException(404, "no chain for this device")
    return _page(c, request, "audit_device.html", user, chain=chain[0],
                 entries=c.store.audit.entries(device_id))
