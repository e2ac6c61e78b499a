"""Bounds on what one request can make the console hold: its body, its form, its JSON.

Nothing the console accepts is large (a login form, a CSRF token, ``{"decision": ...}``),
so every request body is bounded before anything parses it (issue 21: a 400 MB body took
the console to 1.35 GB, a 900-field multipart login form to 1 GB):

- :class:`BodyLimit`, an ASGI middleware around the whole application: a declared
  ``Content-Length`` over :data:`MAX_BODY_BYTES` is answered 413 before a byte of the
  body is read; a body without a length (chunked) is counted as it streams in and the
  request fails with 413 as soon as it passes the bound. A 413 closes the connection.
- :func:`form`: a form of at most :data:`MAX_FORM_FIELDS` fields, no files (python-
  multipart's limits for multipart, a count for urlencoded), each name at most once.
- :func:`json_object`: the project's bounded parser (:func:`edge.boundedjson.loads`:
  depth, duplicate keys, NaN, size) and then the exact shape: one clear line, 400 when
  it is not acceptable JSON, 422 when it is JSON of the wrong shape.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.boundedjson import JSONRefused, loads

MAX_BODY_BYTES: Final = 64 * 1024
MAX_FORM_FIELDS: Final = 8
MAX_JSON_BYTES: Final = 4096
MAX_JSON_DEPTH: Final = 2
_CLOSE: Final = {"Connection": "close"}


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes", _CLOSE)


class BodyLimit:
    """ASGI middleware: no request body over ``max_bytes`` is read (see the module)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._refuse(send)
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:  # raised where no route turned it into the 413 response
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = b'{"detail":"the request body is larger than %d bytes"}' % self.max_bytes
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
            (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


async def form(request: Request, *names: str) -> dict[str, str]:
    """The request's form, of at most :data:`MAX_FORM_FIELDS` text fields, each once;
    returns ``names`` (missing ones as ``""``). 400 for anything else."""
    try:
        form_data = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS,
                                       max_part_size=MAX_BODY_BYTES)  # fmt: skip
    except ClientDisconnect:  # mid-body: nobody to answer, nothing to log as an error
        raise HTTPException(400, "the client went away") from None
    try:
        items = form_data.multi_items()
        if len(items) > MAX_FORM_FIELDS:
            raise HTTPException(400, f"a form of more than {MAX_FORM_FIELDS} fields")
        seen: dict[str, str] = {}
        for key, value in items:
            if not isinstance(value, str):
                raise HTTPException(400, "a form with a file")
            if key in seen:
                raise HTTPException(400, f"the form field {key[:40]!r} is repeated")
            seen[key] = value
    finally:
        await form_data.close()
    return {n: seen.get(n, "") for n in names}


async def json_object(request: Request, fields: dict[str, type]) -> dict[str, Any]:
    """The body as a JSON object with exactly ``fields`` (name -> type), or 400/422."""
    try:
        body = await request.body()
    except ClientDisconnect:
        raise HTTPException(400, "the client went away") from None
    try:
        value = loads(body, max_bytes=MAX_JSON_BYTES, max_depth=MAX_JSON_DEPTH)
    except JSONRefused as exc:
        raise HTTPException(400, f"the body is not acceptable JSON: {exc}") from None
    shape = "{" + ", ".join(f'"{k}": {t.__name__}' for k, t in fields.items()) + "}"
    if not isinstance(value, dict) or set(value) != set(fields):
        raise HTTPException(422, f"the body must be {shape}")
    for key, kind in fields.items():
        # bool is an int in Python: a field of one is never the other.
        if not isinstance(value[key], kind) or (kind is int and isinstance(value[key], bool)):
            raise HTTPException(422, f"the body must be {shape}")
    return value
