"""Who is calling: API keys and the FastAPI dependencies that check them.

Keys come from `Authorization: Bearer KEY`. A key's access groups filter retrieval: a caller only ever
receives passages from documents without groups or sharing one of its groups; the admin key sees everything.
With no key configured the server is open, callers see documents without groups only, and the admin
endpoints are off. Keys are compared, never logged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import ConfigError
from .errors import ApiError
from .state import get_state

if TYPE_CHECKING:
    from ..config import ProjectConfig

__all__ = ["ANONYMOUS", "Caller", "bearer", "load_keys", "require_admin", "require_key"]


@dataclass(frozen=True)
class Caller:
    """A key's owner: its `name`, its access `groups` (None: sees every document) and whether it is `admin`."""

    name: str
    groups: tuple[str, ...] | None
    admin: bool = False


ANONYMOUS = Caller("anonymous", ())
bearer = HTTPBearer(auto_error=False, description="an API key from server.keys, LORADEX_API_KEY or LORADEX_ADMIN_KEY")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def load_keys(config: ProjectConfig) -> dict[str, Caller]:
    """API keys from loradex.yaml (`server.keys`, the key itself or the environment variable holding it) and
    from LORADEX_API_KEY (no groups) / LORADEX_ADMIN_KEY (admin). Raises ConfigError for a `key_env` that is
    not set."""
    keys: dict[str, Caller] = {}
    for k in config.server.keys:
        secret = k.key or (os.environ.get(k.key_env) if k.key_env else None)
        if not secret:
            raise ConfigError(f"server.keys.{k.name}: no key (set `key`, or `key_env` to a variable that is set)")
        keys[secret] = Caller(k.name, None if k.admin else tuple(k.groups), k.admin)
    if os.environ.get("LORADEX_API_KEY"):
        keys[os.environ["LORADEX_API_KEY"]] = Caller("env", ())
    if os.environ.get("LORADEX_ADMIN_KEY"):
        keys[os.environ["LORADEX_ADMIN_KEY"]] = Caller("admin", None, True)
    return keys


async def require_key(request: Request, credentials: Credentials) -> Caller:
    """FastAPI dependency: the caller of a known key (401 otherwise); anyone when no key is configured."""
    keys = get_state(request).keys
    if not keys:
        return ANONYMOUS
    who = keys.get(credentials.credentials.strip() if credentials else "")
    if who is None:
        raise ApiError(401, "missing or unknown API key: send `Authorization: Bearer KEY`",
                       "authentication_error", "invalid_api_key")
    return who


async def require_admin(request: Request, credentials: Credentials) -> Caller:
    """FastAPI dependency: the caller of an admin key; 403 when no key is configured or the key is not an admin
    key, 401 for a missing or unknown key."""
    if not get_state(request).keys:
        raise ApiError(403, "admin endpoints need an admin key: set LORADEX_ADMIN_KEY or server.keys",
                       "permission_error", "admin_disabled")
    who = await require_key(request, credentials)
    if not who.admin:
        raise ApiError(403, "this key is not an admin key", "permission_error", "not_admin")
    return who
