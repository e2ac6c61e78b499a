"""The pages: login, the alert queue, the fleet, deployments and their report, the audit.

Server-rendered with Jinja2 (autoescaped: a device's strings are shown as text). The
``/fragments/...`` routes render one row, which the page's script fetches when an SSE
event says that row changed.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from edge.console import auth
from edge.console.app import Context, check_csrf, ctx, current_user, require
from edge.console.auth import User
from edge.delivery.alert import DEVICE_ID_RE

router = APIRouter()
Ctx = Annotated[Context, Depends(ctx)]


def _page(c: Context, request: Request, name: str, user: User | None, **data: Any) -> Response:
    broken: list[str] = []
    alarms: list[dict[str, Any]] = []
    if user is not None and not name.startswith("_"):
        alarms = c.store.alarms()  # every page, every role: alerts may be missing
        if user.may("audit"):
            broken = [ch["device_id"] for ch in c.store.chains() if ch["state"] == "broken"]
    return c.templates.TemplateResponse(request, name, {"user": user, "broken_chains": broken,
                                                        "alarms": alarms, **data})


def _id_or_none(value: str | None) -> str | None:
    if not value:
        return None
    if not DEVICE_ID_RE.match(value):
        raise HTTPException(400, "not a valid id")
    return value


# -- login ----------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, c: Ctx, error: str | None = None) -> Response:
    token = secrets.token_urlsafe(24)
    resp = _page(c, request, "login.html", None, login_csrf=token, error=error)
    resp.set_cookie(auth.LOGIN_COOKIE, token, httponly=True, samesite="strict",
                    secure=c.secure_cookies, max_age=1800)  # fmt: skip
    return resp


@router.post("/login")
def login(
    request: Request, c: Ctx, name: Annotated[str, Form()], password: Annotated[str, Form()],
    csrf: Annotated[str, Form()] = "",
) -> Response:
    if not auth.csrf_ok(request.cookies.get(auth.LOGIN_COOKIE) or "", csrf):
        raise HTTPException(403, "missing or wrong CSRF token")
    client = request.client.host if request.client else "unknown"
    try:
        token, user = auth.login(c.store, name, password, client, c.session_ttl_s)
    except auth.LoginRefused as exc:
        c.store.log(name[:64] or "-", "login_refused", client=client, reason=str(exc))
        resp = login_form(request, c, error=str(exc))
        resp.status_code = 429 if exc.limited else 401
        return resp
    c.store.log(user.name, "login", client=client, role=user.role)
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(auth.COOKIE, token, httponly=True, samesite="strict",
                    secure=c.secure_cookies, max_age=c.session_ttl_s)  # fmt: skip
    resp.delete_cookie(auth.LOGIN_COOKIE)
    return resp


@router.post("/logout")
def logout(request: Request, c: Ctx, user: Annotated[User, Depends(current_user)],
           csrf: Annotated[str, Form()] = "") -> Response:  # fmt: skip
    check_csrf(request, user, csrf)
    c.store.drop_session(user.token_hash)
    c.store.log(user.name, "logout")
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
                                        {"user": user, "alarms": c.store.alarms()})


@router.post("/alarms/{alarm_id}/clear")
def clear_alarm(request: Request, alarm_id: int, c: Ctx,
                user: Annotated[User, Depends(require("fleet"))],
                csrf: Annotated[str, Form()] = "") -> Response:  # fmt: skip
    """A supervisor has followed the runbook: the alarm leaves the pages (on the trail)."""
    check_csrf(request, user, csrf)
    row = c.store.clear_alarm(alarm_id, user.name, time.time())
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
    refs = c.store.reference_keys({r["deployment_id"] for r in rows})
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
    return _page(c, request, "alerts.html", user, alerts=rows, device=device or "",
                 deployment=deployment or "", devices=[d["device_id"] for d in c.devices()])


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
                 history=c.store.status_history(device_id, limit=100))


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
    deps = c.store.deployments()
    for d in deps:
        d["outcomes"] = c.store.alert_outcomes(d["device_id"], d["deployment_id"])
    return _page(c, request, "deployments.html", user, deployments=deps)


@router.get("/deployments/{device_id}/{deployment_id}", response_class=HTMLResponse)
def report_page(request: Request, device_id: str, deployment_id: str, c: Ctx,
                user: Annotated[User, Depends(require("deployments"))]) -> Response:  # fmt: skip
    match = [d for d in c.store.deployments()
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
    return _page(c, request, "audit.html", user, chains=c.store.chains(),
                 console_log=c.store.console_log(100), trail_verified=verified,
                 trail_problem=problem)


@router.get("/audit/{device_id}", response_class=HTMLResponse)
def audit_device(request: Request, device_id: str, c: Ctx,
                 user: Annotated[User, Depends(require("audit"))]) -> Response:  # fmt: skip
    chain = [r for r in c.store.chains() if r["device_id"] == device_id]
    if not chain:
        raise HTTPException(404, "no chain for this device")
    return _page(c, request, "audit_device.html", user, chain=chain[0],
                 entries=c.store.audit_entries(device_id))
