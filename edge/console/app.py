"""The FastAPI application: one context, the auth dependencies, the routers.

:func:`create_app` takes the parts already built (store, service, hub, metrics) and the
routers (:mod:`edge.console.routes_pages`, :mod:`edge.console.routes_api`, which only read
the store and call the service; they import this module's dependencies, so this module
never imports them: ``edge console serve`` hands them in). Every response carries a strict
Content-Security-Policy (no inline script, no third-party origin), ``nosniff`` and
``no-referrer``. No request body over :data:`edge.console.limits.MAX_BODY_BYTES` is read
(:class:`~edge.console.limits.BodyLimit`, outermost).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.compat import UTC
from edge.console import auth
from edge.console.events import Hub
from edge.console.limits import BodyLimit
from edge.console.login import Logins
from edge.console.metrics import Metrics
from edge.console.service import Console
from edge.console.store import Store

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


@dataclass
class Context:
    store: Store
    console: Console
    hub: Hub
    metrics: Metrics
    templates: Jinja2Templates
    session_ttl_s: int
    secure_cookies: bool
    logins: Logins
    metrics_token: str | None = None
    ingest_connected: Callable[[], bool] = lambda: False
    stale_after_s: float = 180.0
    alert_stale_s: int = 120

    def devices(self) -> list[dict[str, Any]]:
        """The fleet, each van marked ``stale`` when its heartbeat is overdue."""
        return self.store.fleet.devices(self.stale_after_s)


class NeedLogin(Exception):  # noqa: N818 (control flow)
    pass


def ctx(request: Request) -> Context:
    c: Context = request.app.state.ctx
    return c


def current_user(request: Request) -> auth.User:
    user = auth.session_user(ctx(request).store, request.cookies.get(auth.COOKIE))
    if user is None:
        raise NeedLogin()
    return user


def require(permission: str) -> Callable[[Request], auth.User]:
    def dep(request: Request) -> auth.User:
        user = current_user(request)
        if not user.may(permission):
            raise HTTPException(403, f"your role ({user.role}) may not see this")
        return user

    return dep


def check_csrf(request: Request, user: auth.User, form_token: str | None = None) -> None:
    given = form_token or request.headers.get("x-csrf-token")
    if not auth.csrf_ok(user.csrf, given):
        raise HTTPException(403, "missing or wrong CSRF token")


def _fmt_time(ts: Any) -> str:
    if ts is None:
        return "–"
    try:
        return dt.datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return "–"


def ago(seconds: Any) -> str:
    """An age in words, as the page's script writes it live: "42 s ago", "3 min ago"."""
    try:
        s = max(0, int(float(seconds)))
    except (TypeError, ValueError, OverflowError):
        return "–"
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.autoescape = True
    t.env.filters["utc"] = _fmt_time
    t.env.filters["ago"] = ago
    t.env.filters["duration"] = lambda s: ago(s).removesuffix(" ago")
    t.env.filters["words"] = lambda v: str(v).replace("_", " ")
    return t


def create_app(context: Context, routers: Sequence[APIRouter]) -> FastAPI:
    app = FastAPI(title="edge console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = context
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for router in routers:
        app.include_router(router)

    @app.exception_handler(NeedLogin)
    async def _need_login(request: Request, _exc: NeedLogin) -> Response:
        if request.url.path.startswith(("/api/", "/events", "/fragments/", "/images/", "/metrics")):
            return JSONResponse({"detail": "login required"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit)  # added last: the outermost, before anything reads a body
    return app


class SecurityHeaders:
    """ASGI middleware: the headers of every response (plain ASGI, not Starlette's
    ``BaseHTTPMiddleware``: a route's errors, a 413 among them, pass through unwrapped)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = raw = list(message.get("headers", []))
                headers = MutableHeaders(raw=raw)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, with_headers)
