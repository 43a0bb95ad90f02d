"""A project: a folder with `loradex.yaml` and the state folder `.loradex/` (index, manifest, router, adapters).

Owns where things live, the document manifest and its lock, the metadata and id policies, and which
backends serve the project. Backends are built on first use from `loradex.backends` (so commands that need
no model stay fast) or injected: `open_project(root, embedder=, engine=, store=)`. It does not ingest,
search or answer: those are plain functions that take a project.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatch
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_text
from .config import CONFIG_NAME, STATE_DIR, ProjectConfig, load_config
from .config_starter import starter_text
from .errors import ConfigError, RouterError
from .types import DocMeta, Route

if TYPE_CHECKING:
    from .adapters.registry import Registry
    from .embed import Embedder
    from .engine import Engine
    from .route import Router
    from .store import Store

__all__ = ["Project", "init_project", "open_project"]

SCOPE_PASSAGES = 300  # per domain, for the router's scope (embedded at each refit)


class Project:
    """The project at `root` with its parsed `config`; `embedder`, `engine` and `store` replace the configured
    backends when given (tests pass fakes)."""

    def __init__(self, root: Path, config: ProjectConfig, *, embedder: Embedder | None = None,
                 engine: Engine | None = None, store: Store | None = None):
        self.root = Path(root)
        self.config = config
        self._embedder, self._engine, self._store = embedder, engine, store
        self._router: Router | None = None
        self._router_checked = False

    # ---- where things live ---------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "documents.json"

    @property
    def store_uri(self) -> str:
        return self.config.store.uri or str(self.state_dir / "lancedb")

    # ---- backends, built on first use ----------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from .embed import load_embedder

            self._embedder = load_embedder(self.config.embedder, self.root)
        return self._embedder

    @property
    def engine(self) -> Engine:
        """The configured generation engine (the local one loads the base model now)."""
        if self._engine is None:
            from .backends import ENGINES, load

            self._engine = load(ENGINES, self.config.engine, "engine")(self)
        return self._engine

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _open_store(self, reset: bool = False) -> Store:
        from .store import open_store

        cfg = self.config.store
        return open_store(cfg.backend, self.store_uri, self.embedder.dim, reset=reset, password_env=cfg.password_env)

    @cached_property
    def base_model_dir(self) -> Path:
        from .models import resolve_model

        return resolve_model(self.config.model, self.root)

    @cached_property
    def registry(self) -> Registry:
        """The adapter registry, bound to the base model's identity and layer shapes."""
        from .adapters.registry import Registry
        from .models import base_identity, weight_shapes

        return Registry(self.state_dir / "adapters", base_identity(self.base_model_dir),
                        weight_shapes(self.base_model_dir), base_dir=self.base_model_dir)

    def load(self) -> None:
        """Build the embedder, store, router and engine now (a server does this before its first request)."""
        _ = self.embedder, self.store, self.router, self.engine

    def reset_index(self) -> None:
        """Drop every indexed chunk and the manifest (for a new embedder or a clean start)."""
        self._store = self._open_store(reset=True)
        self.manifest_path.unlink(missing_ok=True)

    # ---- routing ---------------------------------------------------------------------------------------
    def domain_examples(self) -> dict[str, list[str]]:
        """Each domain's example queries from loradex.yaml (`examples`, then `examples_file`), deduplicated;
        domains without any are left out. Raises RouterError when an `examples_file` does not exist."""
        out: dict[str, list[str]] = {}
        for name, dom in self.config.domains.items():
            queries = [q.strip() for q in dom.examples if q.strip()]
            if dom.examples_file:
                path = self.root / dom.examples_file
                if not path.is_file():
                    raise RouterError(f"domains.{name}.examples_file: {path} does not exist")
                queries += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if queries:
                out[name] = list(dict.fromkeys(queries))
        return out

    def off_topic_queries(self) -> list[str]:
        """The router's negatives: loradex's general off-topic queries (unless `routing.negatives` is false)
        and the project's own `routing.negatives_file`. Raises RouterError when that file does not exist."""
        from .route_fit import off_topic_queries

        cfg = self.config.routing
        queries = off_topic_queries() if cfg.negatives else []
        if cfg.negatives_file:
            path = self.root / cfg.negatives_file
            if not path.is_file():
                raise RouterError(f"routing.negatives_file: {path} does not exist")
            queries += off_topic_queries(path)
        return list(dict.fromkeys(queries))

    def scope_context(self) -> list[str]:
        """What widens the router's scope (`routing.documents`): each domain's description and up to
        `SCOPE_PASSAGES` of its indexed passages, spread evenly over its documents' chunks."""
        if not self.config.routing.documents:
            return []
        texts = [d.description for d in self.config.domains.values() if d.description.strip()]
        by_domain: dict[str, list[str]] = {}
        if self.manifest_path.is_file():
            for doc_id, meta in sorted(self.load_manifest()["documents"].items()):
                if meta.get("domain") in self.config.domains:
                    by_domain.setdefault(meta["domain"], []).append(doc_id)
        for doc_ids in by_domain.values():
            chunks = [c.search_text() for d in doc_ids for c in self.store.chunks(d)]
            step = max(1, -(-len(chunks) // SCOPE_PASSAGES))
            texts += chunks[::step]
        return texts

    def _router_key(self, examples: dict[str, list[str]]) -> str:
        docs = {d: m["version"] for d, m in self.load_manifest()["documents"].items() if m.get("domain")} \
            if self.config.routing.documents else {}
        blob = json.dumps([examples, self.off_topic_queries(), docs, self.config.embedder,
                           self.config.routing.model_dump()], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def router(self) -> Router | None:
        """The saved router when it matches the current examples and settings, else refitted and saved; None
        when no domain has example queries."""
        if not self._router_checked:
            from .route import Router

            examples = self.domain_examples()
            loaded = Router.load(self.state_dir) if examples else None
            if loaded is not None and loaded[1] == self._router_key(examples):
                self._router = loaded[0]
            elif examples:  # a minute or so on a large project: say why the first answer waits
                print(f"fitting the router on {sum(map(len, examples.values()))} example queries of "
                      f"{len(examples)} domains (first use after they or the documents changed; saved for next "
                      "time)", file=sys.stderr, flush=True)
                self._router = self.refit_router(examples)
            self._router_checked = True
        return self._router

    def refit_router(self, examples: dict[str, list[str]] | None = None) -> Router:
        """Fit the router on the domains' example queries (with the off-topic negatives and the scope context),
        save it under .loradex/ and serve it from now on. Raises RouterError when no domain has examples."""
        from .route import Router

        examples = examples if examples is not None else self.domain_examples()
        if not examples:
            raise RouterError("no domain has example queries; add domains.<name>.examples (a list) or "
                              "domains.<name>.examples_file (one query a line) to loradex.yaml")
        texts = [q for qs in examples.values() for q in qs]
        labels = [d for d, qs in examples.items() for _ in qs]
        negatives, context = self.off_topic_queries(), self.scope_context()
        cfg = self.config.routing
        router = Router.fit(self.embedder.embed(texts), labels, method=cfg.method,
                            negatives=self.embedder.embed(negatives) if negatives else None,
                            context=self.embedder.embed(context) if context else None, texts=texts,
                            negative_texts=negatives, target_recall=cfg.target_recall,
                            min_probability=cfg.min_probability)
        router.save(self.state_dir, self._router_key(examples))
        self._router, self._router_checked = router, True
        return router

    def forget_router(self) -> None:
        """Drop the router held in memory: the next use loads or refits it (after ingest changed documents)."""
        self._router, self._router_checked = None, False

    def explain_route(self, query: str, k: int = 3) -> dict:
        """Why `query` is routed as it is: its Route, the `k` nearest example queries of its best domain and of
        the runner-up, the nearest off-topic queries, the scope score against its threshold, and the best
        domain's nearest document passages. Raises RouterError when the project has no router."""
        from .types import Filters

        router = self.router
        if router is None:
            raise RouterError("no domain has example queries, so there is no router to explain")
        vector = self.embedder.embed([query])
        route = router.route_vectors(vector)[0]
        why = router.explain(vector[0], k)
        ranked = sorted(route.scores, key=lambda d: -route.scores[d])[:2]
        passages = self.store.search_vector(vector[0], k, Filters(domain=route.best)) \
            if self.manifest_path.is_file() else []
        return {"route": route.to_dict(), "examples": {d: why["examples"][d] for d in ranked},
                "off_topic": why["off_topic"], "scope": route.scope, "scope_threshold": why["scope_threshold"],
                "passages": [{"source": c.source.label(), "cosine": round(s, 4), "text": " ".join(c.text.split())[:160]}
                             for c, s in passages]}

    def route(self, queries: Sequence[str]) -> list[Route]:
        """One Route per query (embedded as one batch); reason `no_router` when no domain has examples."""
        router = self.router
        if router is None:
            return [Route(None, 0.0, {}, True, "no_router") for _ in queries]
        return router.route_vectors(self.embedder.embed(list(queries)))

    # ---- documents -------------------------------------------------------------------------------------
    def meta_for(self, doc_id: str) -> DocMeta:
        """Domain, tags and groups of a document from the config's path globs."""
        domain, tags, groups = None, [], []
        for name, d in self.config.domains.items():
            if any(fnmatch(doc_id, g) for g in d.paths):
                domain = name
                tags += d.tags
                groups += d.groups
                break
        for rule in self.config.metadata:
            if any(fnmatch(doc_id, g) for g in rule.paths):
                tags += rule.tags
                groups += rule.groups
        return DocMeta(domain, tuple(dict.fromkeys(tags)), tuple(dict.fromkeys(groups)))

    def doc_id(self, path: Path) -> str:
        """Project-relative POSIX path for files inside the project, else the absolute path."""
        path = path.resolve()
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def load_manifest(self) -> dict:
        """`{"embedder": name or None, "documents": {doc_id: {path, version, format, chunks, ...}}}`."""
        if not self.manifest_path.is_file():
            return {"embedder": None, "documents": {}}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def save_manifest(self, manifest: dict) -> None:
        write_text(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time per project, across processes (other writers wait)."""
        from filelock import FileLock

        self.state_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.state_dir / "write.lock")):
            yield


def open_project(root: str | Path = ".", *, embedder: Embedder | None = None, engine: Engine | None = None,
                 store: Store | None = None) -> Project:
    """The project whose `loradex.yaml` is in `root`; the keyword arguments replace configured backends.
    Raises ConfigError when the file is missing or invalid."""
    root = Path(root).resolve()
    return Project(root, load_config(root / CONFIG_NAME), embedder=embedder, engine=engine, store=store)


def init_project(root: str | Path, name: str | None = None) -> Path:
    """Write a commented starter `loradex.yaml` and a `docs/` folder in `root`; returns the file's path.
    Raises ConfigError when the file already exists."""
    root = Path(root).resolve()
    path = root / CONFIG_NAME
    if path.exists():
        raise ConfigError(f"{path} already exists; edit it, or remove it to start over")
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir(exist_ok=True)
    write_text(path, starter_text(name or root.name))
    return path
