"""Pure-ASGI middleware: request ids and access logs, API-key auth, request body size limit.

Written as ASGI callables (not BaseHTTPMiddleware) so streaming responses pass straight
through and a body over the limit is cut off while it is being received.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import time
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("vreason.access")
OPEN_PATHS = ("/health", "/ping", "/metrics")


async def _send_error(send, status: int, message: str, code: str, headers: list | None = None) -> None:
    from .errors import error_body

    body = json.dumps(error_body(status, message, None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())] + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class RequestContext:
    """Assigns each request an id (X-Request-Id, or a new one), echoes it, logs one access line."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:128]
        rid = given or uuid.uuid4().hex
        token = request_id_var.set(rid)
        status, t0 = 500, time.perf_counter()

        async def send_with_id(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg = {**msg, "headers": list(msg.get("headers", [])) + [(b"x-request-id", rid.encode())]}
            await send(msg)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status,
                            (time.perf_counter() - t0) * 1e3,
                            extra={"status": status, "path": scope["path"], "method": scope["method"]})
            request_id_var.reset(token)


class APIKeyAuth:
    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        auth = dict(scope["headers"]).get(b"authorization", b"")
        if not (auth.startswith(b"Bearer ") and hmac.compare_digest(auth[7:].strip(), self.key)):
            return await _send_error(send, 401, "invalid or missing API key (Authorization: Bearer <key>)",
                                     "invalid_api_key", [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class _BodyTooLarge(BaseException):
    """Raised from receive(); a BaseException so that FastAPI's body parsing, which turns any
    Exception into a 400, lets it through to BodyLimit."""


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body larger than {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_error(send, 413, message, "body_too_large")
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return msg

        async def tracking_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, 413, message, "body_too_large")
