"""`GuardedRoute`: what every API route checks before FastAPI reads and validates its body.

1. The caller's key, when the route depends on `require_key` or `require_admin`: a caller without a valid
   key gets 401/403 and learns nothing about what the body should hold.
2. The body's size: over `server.max_body_bytes` is 413 `request_too_large`.
3. The body is read as JSON whatever its Content-Type says (`curl -d` sends form-encoded), and an empty body
   is `{}`; FastAPI then parses and validates it (malformed JSON and non-objects become 400 `invalid_json`
   in `loradex.server.errors`).
"""
from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator, MutableMapping
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from .auth import bearer, require_admin, require_key
from .errors import ApiError
from .state import get_state

__all__ = ["GuardedRoute"]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _calls(dependant: Dependant) -> Iterator[Any]:
    for d in dependant.dependencies:
        yield d.call
        yield from _calls(d)


def _json_request(request: Request, raw: bytes) -> Request:
    """`request` with `raw` as its body and a JSON content type."""
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
    sent = False

    async def receive() -> MutableMapping[str, Any]:
        nonlocal sent
        if sent:
            return await request.receive()  # after the body: wait for the client to go away
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request(scope, receive)


class GuardedRoute(APIRoute):
    """An APIRoute that checks the key and the body size before the body is parsed (see the module doc)."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        calls = set(_calls(self.dependant))
        auth = require_admin if require_admin in calls else require_key if require_key in calls else None
        has_body = self.body_field is not None

        async def guarded(request: Request) -> Response:
            if auth is not None:
                await auth(request, await bearer(request))
            if not has_body:
                return await handler(request)
            limit = get_state(request).project.config.server.max_body_bytes
            raw = await request.body()
            if len(raw) > limit:
                raise ApiError(413, f"request body over {limit} bytes", code="request_too_large")
            return await handler(_json_request(request, raw or b"{}"))

        return guarded
