"""`/admin/...`: adapter, document and router administration, for admin keys only.

Every route here depends on `require_admin` through the router itself, so none can forget the check. Writes
take the app's admin lock, one at a time.

- `GET /admin/adapters`: every registered version.
- `POST /admin/adapters/import` `{path, domain, activate}`: register a PEFT folder on the server (400 when
  refused); `POST /admin/adapters/{domain}/activate` `{version}`; `POST /admin/adapters/{domain}/rollback`.
- `POST /admin/documents/ingest` `{paths, prune}`; `DELETE /admin/documents/{doc_id}` (404 when not indexed).
- `POST /admin/router/fit`: refit the router on the domains' example queries.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..errors import AdapterError, QueryError
from .auth import require_admin
from .errors import ApiError
from .routing import GuardedRoute
from .state import ServerState, app_state

__all__ = ["ActivateBody", "ImportBody", "IngestBody", "router"]

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], route_class=GuardedRoute, tags=["admin"])
State = Annotated[ServerState, Depends(app_state)]


_STRICT = ConfigDict(extra="forbid", strict=True)  # a misspelt field or `"activate": "yes"` is a 400, not ignored


class ImportBody(BaseModel):
    """A PEFT folder on the server to register for `domain`, whether to activate it, and whether to accept a
    config naming another base model (`loradex.adapters.registry.validate`)."""

    model_config = _STRICT

    path: str = Field(..., min_length=1, description="a PEFT folder on the server")
    domain: str = Field(..., min_length=1)
    activate: bool = False
    allow_other_base: bool = False


class ActivateBody(BaseModel):
    """The version to activate: a prefix of its hash, `sha256:` optional."""

    model_config = _STRICT

    version: str = Field(..., min_length=1)


class IngestBody(BaseModel):
    """Files or folders to ingest (default: the config's sources), and whether to prune documents now gone."""

    model_config = _STRICT

    paths: list[str] | None = None
    prune: bool = False


@router.get("/adapters")
def list_adapters(state: State) -> dict[str, Any]:
    """Every registered adapter version, by domain then age."""
    return {"adapters": state.project.registry.versions()}


@router.post("/adapters/import")
def import_adapter(body: ImportBody, state: State) -> dict[str, Any]:
    """Validate and register a PEFT folder (400 `adapter_refused` with the reason when it is refused)."""
    try:
        with state.admin_lock:
            ref = state.project.registry.import_folder(Path(body.path), body.domain, activate=body.activate,
                                                           other_base=body.allow_other_base)
    except (AdapterError, OSError) as e:
        raise ApiError(400, f"adapter refused: {e}", code="adapter_refused") from None
    return {"imported": ref.label, "active": body.activate}


@router.post("/adapters/{domain}/activate")
def activate_adapter(domain: str, body: ActivateBody, state: State) -> dict[str, Any]:
    """Make a version the domain's active adapter; it serves from the next request."""
    with state.admin_lock:
        ref = state.project.registry.activate(domain, body.version)
    return {"active": ref.label}


@router.post("/adapters/{domain}/rollback")
def rollback_adapter(domain: str, state: State) -> dict[str, Any]:
    """Make the previously active version active again (`active: null`: back to the bare base model)."""
    with state.admin_lock:
        ref = state.project.registry.rollback(domain)
    return {"active": ref.label if ref else None}


@router.post("/documents/ingest")
def ingest_documents(state: State, body: IngestBody | None = None) -> dict[str, Any]:
    """Bring the index up to date with `paths` (default: the config's sources); the ingest report. A path
    outside the project folder is a 400 naming it: a key with admin rights must not index the server's own
    files for every key to read."""
    from ..ingest.ingest import ingest

    body = body or IngestBody()
    root = state.project.root.resolve()
    for i, p in enumerate(body.paths or ()):
        target = (root / p).resolve()  # an absolute `p` replaces root; `..` and links are resolved
        if target != root and root not in target.parents:
            raise ApiError(400, f"paths[{i}] ({p!r}) is outside the project folder: the server ingests only files "
                           "under it (put the documents in the project's docs/)", code="outside_project",
                           param=f"paths[{i}]")
    with state.admin_lock:
        report = ingest(state.project, body.paths or None, prune=body.prune)
    return report.to_dict()


@router.delete("/documents/{doc_id:path}")
def remove_document(doc_id: str, state: State) -> dict[str, Any]:
    """Remove a document from the index (its file stays); 404 `not_found` when it is not indexed."""
    from ..ingest.ingest import remove_documents

    try:
        with state.admin_lock:
            remove_documents(state.project, [doc_id])
    except QueryError:
        raise ApiError(404, f"document {doc_id!r} is not indexed", code="not_found") from None
    return {"removed": doc_id}


@router.post("/router/fit")
def fit_router(state: State) -> dict[str, Any]:
    """Refit the router on the domains' example queries; it routes from the next request."""
    with state.admin_lock:
        summary = state.project.refit_router().summary()
    return {k: summary[k] for k in ("domains", "examples", "calibration_accuracy", "calibrated",
                                    "uncalibrated_reason")}
