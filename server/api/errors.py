"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}; never a stack trace."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vreason.server.engine.types import EngineUnavailable
from vreason.server.errors import ClientError

logger = logging.getLogger("vreason.api")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 502: "upstream_error", 503: "service_unavailable_error",
          504: "timeout_error"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error body (the only place it is built): {"error": {message, type, param, code}}."""
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_fields(exc: Exception) -> tuple[int, str, str | None, str | None]:
    """(status, message, param, code) of an exception the server answers as a client or 503 error.

    ClientError (VideoError, EngineClientError and ParamError, a bad vreason option, are
    ClientErrors) and EngineUnavailable (503); anything else is an internal error (500).
    """
    if isinstance(exc, ClientError):
        return exc.status, exc.message, exc.param, exc.code
    if isinstance(exc, EngineUnavailable):
        return 503, str(exc) or "engine unavailable", None, "engine_unavailable"
    return 500, "internal server error", None, "internal_error"


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None):
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*|dict\[.*|function-.*|literal\[.*|tagged-union\[.*"
                        r"|[A-Z][A-Za-z]+(Content|Options|Kwargs)?)$")


_PART_TAGS = {"text", "video_url", "image_url"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    errors = exc.errors() or [{"msg": "invalid request", "loc": ()}]
    if any(e.get("type") == "json_invalid" for e in errors):
        return "request body is not valid JSON", None, "invalid_json"
    # Unknown fields are refused (never silently dropped): name every one of them.
    names = list(dict.fromkeys(_param(e) for e in errors if e.get("type") == "extra_forbidden"))
    if names:
        return (f"unknown field{'s' if len(names) > 1 else ''} {', '.join(names)}: not supported by this "
                f"server (see the README's list of request fields)"), names[0], "unknown_field"
    # For a union, pydantic reports one error per member; the deepest one names the real fault.
    err = max(errors, key=lambda e: len(e.get("loc", ())))
    param = _param(err)
    msg = err.get("msg", "invalid value")
    if err.get("type") == "missing":
        msg = "field required"
    elif err.get("type") == "extra_forbidden":
        msg = "unknown field"
    return (f"{param}: {msg}" if param else msg), param, "invalid_request"


def _param(err: dict) -> str | None:
    """The request path of one pydantic error, without pydantic's union-member tags."""
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    # Pydantic adds the union member's tag to the location; it means nothing to a client.
    loc = [x for x in loc if not _UNION_TAG.match(x)]
    # ...and a tagged union's tag after the list index (content.0.video_url.video_url.url).
    loc = [x for i, x in enumerate(loc) if not (i and loc[i - 1].isdigit() and x in _PART_TAGS)]
    return ".".join(loc) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param, code = _validation_message(exc)
        return error_response(400, message, param, code)

    async def _known(request: Request, exc: Exception):
        return error_response(*error_fields(exc))

    for exc_type in (ClientError, EngineUnavailable):
        app.add_exception_handler(exc_type, _known)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), None, None)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal server error", None, "internal_error")
