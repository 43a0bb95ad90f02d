"""A project: a folder with `loradex.yaml` and the state folder `.loradex/` (index, manifest, locks).

Opens the configured embedder and store lazily, so commands that need neither stay fast.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import cached_property
from pathlib import Path

from .config import CONFIG_NAME, STATE_DIR, ConfigError, ProjectConfig, load_config, starter_text
from .embed import Embedder, load_embedder
from .store import Store, open_store
from .types import DocMeta


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a crash leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Project:
    root: Path
    config: ProjectConfig
    _embedder: Embedder | None = field(default=None, repr=False)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "documents.json"

    @cached_property
    def embedder(self) -> Embedder:
        return self._embedder or load_embedder(self.config.embedder, self.root)

    @cached_property
    def engine(self):
        """The configured generation engine (loads the base model on first use)."""
        if self.config.engine == "echo":
            from .engine.echo import EchoEngine

            return EchoEngine()
        from .engine.local import LocalEngine

        return LocalEngine(self.base_model_dir, max_adapters=self.config.adapters.max_loaded)

    @cached_property
    def router(self):
        """The domain router fitted from the domains' example queries (None when there are none)."""
        from .route import project_router

        return project_router(self)

    @cached_property
    def base_model_dir(self) -> Path:
        from .models import resolve_model

        return resolve_model(self.config.model, self.root)

    @cached_property
    def registry(self):
        """The adapter registry, bound to the base model's identity and layer shapes."""
        from .adapters.registry import Registry
        from .models import base_identity, weight_shapes

        return Registry(self.state_dir / "adapters", base_identity(self.base_model_dir),
                        weight_shapes(self.base_model_dir))

    @cached_property
    def store(self) -> Store:
        return open_store(self.config.store.backend, self.store_uri, self.embedder.dim)

    @property
    def store_uri(self) -> str:
        return self.config.store.uri or str(self.state_dir / "lancedb")

    def reset_index(self) -> None:
        """Drop every indexed chunk and the manifest (for a new embedder or a clean start)."""
        self.__dict__["store"] = open_store(self.config.store.backend, self.store_uri, self.embedder.dim, reset=True)
        self.manifest_path.unlink(missing_ok=True)

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
        if not self.manifest_path.is_file():
            return {"embedder": None, "documents": {}}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def save_manifest(self, manifest: dict) -> None:
        write_atomic(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True))

    @contextmanager
    def lock(self):
        """One writer at a time per project (other writers wait)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "write.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def open_project(root: str | Path = ".", embedder: Embedder | None = None) -> Project:
    root = Path(root).resolve()
    config = load_config(root / CONFIG_NAME)
    if embedder is None:
        return Project(root, config)
    return Project(root, config, embedder)


def init_project(root: str | Path, name: str | None = None) -> Path:
    root = Path(root).resolve()
    path = root / CONFIG_NAME
    if path.exists():
        raise ConfigError(f"{path} already exists; edit it, or remove it to start over")
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir(exist_ok=True)
    write_atomic(path, starter_text(name or root.name))
    return path
