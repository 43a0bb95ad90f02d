"""Every error the server answers, as an OpenAI-style body `{"error": {"message", "type", "param", "code"}}`.

`ApiError` is an error a route raises with its status on purpose. loradex's own errors (`loradex.errors`) that
reach the app are mapped to a status by the one table below, `STATUSES`; validation errors (a body that is
not JSON, not an object, or a field out of range) are 400s naming the field. Each answered error counts in
`loradex_errors_total{status}`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors as E

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["STATUSES", "ApiError", "Status", "install_handlers", "status_of"]


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


_BAD, _SERVER = "invalid_request_error", "server_error"
STATUSES: dict[type[E.LoradexError], Status] = {  # the most specific class of an error wins
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


def _validation_error(exc: RequestValidationError) -> ApiError:
    """A 400 naming the first bad field, as `invalid request: <field>: <what is wrong>`."""
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        at = f" (char {loc[1]})" if len(loc) > 1 else ""
        return ApiError(400, f"malformed JSON: {reason}{at}", code="invalid_json")
    if loc == ("body",):  # the body is null, a list, a string or a number
        return ApiError(400, "the body must be a JSON object", code="invalid_json")
    where = ".".join(str(x) for x in loc if x != "body")
    return ApiError(400, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}",
                    code="invalid_request", param=where or None)


def install_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Answer ApiError, validation errors, Starlette's HTTP errors (404, 405) and loradex errors as OpenAI error
    bodies, counting each in `metrics`."""

    def answer(e: ApiError) -> JSONResponse:
        metrics.error(e.status)
        return JSONResponse(error_body(e.status, e.message, e.type, e.code, e.param), e.status, headers=e.headers)

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return answer(exc)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return answer(_validation_error(exc))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return answer(ApiError(exc.status_code, str(exc.detail), headers=exc.headers))

    async def loradex_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, E.LoradexError)
        s = status_of(exc)
        return answer(ApiError(s.status, s.template.format(exc), s.type, s.code, headers=s.headers))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(E.LoradexError, loradex_error)
