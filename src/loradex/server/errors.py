"""Every error the server answers, as an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`.

`ApiError` is an error a route raises with its status on purpose. loradex's own errors (`loradex.errors`) that
reach the app are mapped to a status by the one table below, `STATUSES`; validation errors (a body that is
not JSON, not an object, an unknown field, or a field out of range) are 400s naming the field in `param`
(`messages[0].role`); a path with no route is a 404 and a wrong method a 405 saying what is served; any
other exception (a bug, or an engine failing one request of a batch) is a 500 `server_error` naming its
class, with the traceback in the server log. `api_error` is the one mapping, used by the handlers and by a
stream that fails after its first chunk (sent as a `data: {"error": ...}` event, as OpenAI does). Each
answered error counts in `loradex_errors_total{status}`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors as E

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["STATUSES", "ApiError", "Status", "api_error", "error_body", "error_event", "install_handlers", "status_of"]

log = logging.getLogger("loradex.server")


class ApiError(Exception):
    """An error answered as it is: HTTP `status`, `message`, OpenAI error `type`, `code` (the status when
    None), the request field it is about (`param`) and extra response `headers`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.headers = param, headers


class Status(NamedTuple):
    """How a loradex error class is answered; `template` formats the error's message."""

    status: int
    type: str
    code: str
    template: str = "{}"
    headers: dict[str, str] | None = None
    param: str | None = None


_BAD, _SERVER = "invalid_request_error", "server_error"
STATUSES: dict[type[E.LoradexError], Status] = {  # the most specific class of an error wins
    E.InputTooLong: Status(413, _BAD, "context_length_exceeded", param="messages"),
    E.AdapterError: Status(400, _BAD, "adapter_refused"),
    E.QueryError: Status(400, _BAD, "invalid_request"),
    E.DataError: Status(400, _BAD, "invalid_request"),
    E.ParseError: Status(400, _BAD, "invalid_request"),
    E.RouterError: Status(400, _BAD, "router_error"),
    E.QueueFull: Status(429, "rate_limit_error", "queue_full", "server busy: {}; retry shortly", {"Retry-After": "1"}),
    E.ConfigError: Status(500, _SERVER, "config_error"),
    E.ModelNotFound: Status(500, _SERVER, "config_error"),
    E.EmbedderNotFound: Status(500, _SERVER, "config_error"),
    E.StoreError: Status(500, _SERVER, "store_error"),
    E.EngineError: Status(500, _SERVER, "engine_error"),
    E.LoradexError: Status(500, _SERVER, "server_error"),
}


def status_of(exc: E.LoradexError) -> Status:
    """The table's entry for `exc`'s class or its nearest ancestor."""
    for cls in type(exc).__mro__:
        if cls in STATUSES:
            return STATUSES[cls]
    return STATUSES[E.LoradexError]


def error_body(status: int, message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code or str(status)}}


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _param(loc: tuple) -> str:
    """A validation error's location as OpenAI writes `param`: `messages[0].content`; union member tags
    (`str`, `list[ContentPart]`) left out."""
    out = ""
    for x in loc:
        if isinstance(x, int):
            out += f"[{x}]"
        elif x != "body" and "[" not in str(x) and str(x) not in _TYPE_TAGS:
            out += f".{x}" if out else str(x)
    return out


def _validation_error(exc: RequestValidationError, openai: bool = True) -> ApiError:
    """A 400 naming the first bad field: `unknown field`, `missing field`, or `invalid request: <field>: <why>`;
    `openai`: the body is an OpenAI request (the unknown-field message says where loradex's own options go)."""
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    loc, kind = tuple(first.get("loc", ())), first.get("type")
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        at = f" (char {loc[1]})" if len(loc) > 1 else ""
        return ApiError(400, f"malformed JSON: {reason}{at}", code="invalid_json")
    if loc == ("body",):  # the body is null, a list, a string or a number
        return ApiError(400, "the body must be a JSON object", code="invalid_json")
    where = _param(loc) or None
    if kind == "extra_forbidden":
        why = ("it is not part of the OpenAI request loradex serves; remove it (loradex's own options go under "
               "'loradex')") if openai else "this endpoint does not take it; remove it"
        return ApiError(400, f"unknown field {where}: {why}", code="unknown_parameter", param=where)
    if kind == "missing":
        return ApiError(400, f"missing field {where}: it is required", code="missing_required_parameter", param=where)
    return ApiError(400, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}",
                    code="invalid_request", param=where)


def _http_error(request: Request, exc: StarletteHTTPException) -> ApiError:
    """Starlette's own 404 (no route) and 405 (wrong method) say what is served; other HTTP errors pass as
    they are."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404 and exc.detail == "Not Found":
        return ApiError(404, f"no route for {where}; the API serves POST /v1/chat/completions and GET /v1/models",
                        code="not_found")
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "another method")
        return ApiError(405, f"{where} is not allowed; this path takes {allowed}", code="method_not_allowed",
                        headers=exc.headers)
    return ApiError(exc.status_code, str(exc.detail), headers=exc.headers)


def api_error(request: Request, exc: BaseException) -> ApiError:
    """Any exception as the ApiError the client gets (see the module doc); a bug is logged with its traceback."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc, openai=request.url.path.startswith("/v1/"))
    if isinstance(exc, StarletteHTTPException):
        return _http_error(request, exc)
    if isinstance(exc, E.LoradexError):
        st = status_of(exc)
        return ApiError(st.status, st.template.format(exc), st.type, st.code, param=st.param, headers=st.headers)
    return ApiError(500, f"internal server error ({type(exc).__name__}); the server log has the details, "
                    "retry or report it", _SERVER, "server_error")


def error_event(request: Request, exc: BaseException, metrics: Metrics) -> str:
    """The server-sent event for a stream that failed after its first chunk (the status is already 200):
    `data: {"error": {...}}`, which the official client raises as an APIError. Counts the error; logs a bug
    with its traceback."""
    e = api_error(request, exc)
    if not isinstance(exc, (ApiError, E.LoradexError)):
        log.error("%s %s failed while streaming", request.method, request.url.path, exc_info=exc)
    metrics.error(e.status)
    return f"data: {json.dumps(error_body(e.status, e.message, e.type, e.code, e.param), ensure_ascii=False)}\n\n"


def install_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Answer every exception (ApiError, validation errors, Starlette's 404 and 405, loradex errors, and any other
    as a 500) as an OpenAI error body, counting each in `metrics`."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        e = api_error(request, exc)
        metrics.error(e.status)
        return JSONResponse(error_body(e.status, e.message, e.type, e.code, e.param), e.status, headers=e.headers)

    for cls in (ApiError, RequestValidationError, StarletteHTTPException, E.LoradexError, Exception):
        app.add_exception_handler(cls, handle)
