"""The PostgreSQL + pgvector store behind a whole project, on a real server the tests start
(`tests/conftest.py::postgres`): the same commands as the embedded store, the password only from the
environment, and errors that name the server, never the password. The Store contract itself runs on it in
`tests/contract/test_store.py`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from loradex.config import ProjectConfig
from loradex.errors import StoreError
from loradex.store import open_store

from ..conftest import write_project
from .test_cli import run
from .test_ingest import CONFIG, DOCS

SECRET = "s3cret-Pa55_word"


def _pg_project(project_dir, url: str, extra: str = ""):
    return project_dir(DOCS, CONFIG + f"store:\n  backend: pgvector\n  uri: {url}\n{extra}")


def test_a_project_ingests_and_searches_on_postgres_as_on_the_embedded_store(project_dir, postgres, tmp_path):
    pg = _pg_project(project_dir, postgres.database(str(tmp_path)))
    r = run("ingest", "-p", pg, "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["added"]) == len(DOCS)
    embedded = write_project(tmp_path / "embedded", DOCS, CONFIG)  # the same documents on the default store
    assert run("ingest", "-p", embedded).exit_code == 0
    for query in ("police within 24 hours", "returned payment fee"):
        got = [json.loads(run("search", query, "-p", p, "--json", "-k", "1").stdout)["hits"][0]["source"]["path"]
               for p in (pg, embedded)]
        assert got[0] == got[1], (query, got)
    assert run("docs", "rm", "docs/claims/theft.txt", "-p", pg).exit_code == 0
    hits = json.loads(run("search", "police within 24 hours", "-p", pg, "--json").stdout)["hits"]
    assert all(h["source"]["path"] != "docs/claims/theft.txt" for h in hits)
    again = json.loads(run("ingest", "-p", pg, "--json").stdout)  # the removed file is still on disk: back
    assert again["added"] == ["docs/claims/theft.txt"]


def test_a_password_in_the_config_is_refused_and_the_variable_named_instead():
    for uri in (f"postgresql://me:{SECRET}@db/x", f"postgresql://me@db:5432/x?sslmode=require&password={SECRET}",
                f"host=db user=me password={SECRET} dbname=x", f"postgres://me@db/x?PASSWORD = {SECRET}"):
        with pytest.raises(ValueError, match="password_env") as e:
            ProjectConfig.model_validate({"store": {"backend": "pgvector", "uri": uri}})
        assert SECRET not in str(e.value.errors()[0]["msg"])
    ok = ProjectConfig.model_validate({"store": {"backend": "pgvector", "uri": "postgresql://me@db:5432/x",
                                                 "password_env": "LORADEX_PG_PASSWORD"}})
    assert ok.store.password_env == "LORADEX_PG_PASSWORD"


def test_the_password_comes_from_the_environment_and_never_shows(postgres, tmp_path, monkeypatch):
    url = postgres.password_user("loradex_pw", SECRET, str(tmp_path))
    monkeypatch.setenv("LDX_TEST_PG", SECRET)
    store = open_store("pgvector", url, 8, password_env="LDX_TEST_PG")
    assert store.count() == 0
    monkeypatch.setenv("LDX_TEST_PG", SECRET + "-wrong")
    with pytest.raises(StoreError) as wrong:
        open_store("pgvector", url, 8, password_env="LDX_TEST_PG")
    monkeypatch.delenv("LDX_TEST_PG")
    with pytest.raises(StoreError, match="LDX_TEST_PG.*not set") as unset:
        open_store("pgvector", url, 8, password_env="LDX_TEST_PG")
    for e in (wrong, unset):
        assert SECRET not in str(e.value) and f"host {postgres.socket_dir}" in str(e.value)
    assert "password" in str(wrong.value) and e.value.__cause__ is None


def test_an_unreachable_server_is_a_clear_error_in_the_cli(project_dir, monkeypatch):
    monkeypatch.setenv("LDX_TEST_PG", SECRET)
    root = _pg_project(project_dir, "postgresql://loradex@127.0.0.1:1/loradex", "  password_env: LDX_TEST_PG\n")
    r = run("ingest", "-p", root)
    assert r.exit_code != 0
    assert "cannot connect to PostgreSQL (host 127.0.0.1, port 1, database loradex)" in r.output
    assert "Traceback" not in r.output and SECRET not in r.output


# ---- loradex migrate ------------------------------------------------------------------------------------

def _many_docs(n: int) -> dict[str, str]:
    return {f"docs/claims/note-{i:04d}.md": f"# Note {i}\n\nClaim note {i}: the adjuster visits within {i % 9 + 1} "
            f"days; word{i} is this note's own word.\n" for i in range(n)}


def test_migrate_copies_the_index_without_embedding_again_and_a_rerun_copies_nothing(project_dir, postgres,
                                                                                     tmp_path):
    from loradex.migrate import migrate
    from loradex.project import open_project
    from loradex.retrieve import search

    from .test_ingest import CountingEmbedder

    root = project_dir(DOCS, CONFIG)
    assert run("ingest", "-p", root).exit_code == 0
    url = postgres.database(str(tmp_path / "dest"))
    embedder = CountingEmbedder()
    proj = open_project(root, embedder=embedder)
    report = migrate(proj, url, batch_chunks=3)
    assert embedder.texts == 0 and report.verified and report.copied_documents == len(DOCS)
    assert report.chunks == proj.store.count() and report.resumed_documents == 0
    again = migrate(proj, url)
    assert again.copied_documents == 0 and again.resumed_documents == len(DOCS) and again.verified
    on_pg = open_project(root, store=open_store("pgvector", url, proj.embedder.dim), embedder=embedder)
    for query in ("police within 24 hours", "returned payment fee", "storm roof"):
        a = search(proj.store, proj.embedder, query, proj.config.retrieval, k=3)
        b = search(on_pg.store, on_pg.embedder, query, on_pg.config.retrieval, k=3)
        assert [h.chunk.chunk_id for h in a][:1] == [h.chunk.chunk_id for h in b][:1], query


def test_migrate_survives_a_kill_and_resumes_where_it_stopped(project_dir, postgres, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from loradex.migrate import state_path
    from loradex.project import open_project

    n = 400
    root = project_dir(_many_docs(n), CONFIG)
    assert run("ingest", "-p", root).exit_code == 0
    url = postgres.database(str(tmp_path / "dest"))
    state = state_path(open_project(root), url)
    proc = subprocess.Popen([sys.executable, "-m", "loradex.cli", "migrate", "--to", url, "--batch-chunks", "2",
                             "-p", str(root), "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done, deadline = 0, time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file():
            try:
                done = len(json.loads(state.read_text())["done"])
            except ValueError:
                done = 0  # read while being replaced
            if done >= n // 10:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and n // 10 <= done < n, (proc.returncode, done)
    r = run("migrate", "--to", url, "-p", root, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["verified"] and report["copied_documents"] + report["resumed_documents"] == n
    assert report["resumed_documents"] >= done - 1 and report["copied_documents"] <= n - done + 1
    source = open_project(root).store
    dest = open_store("pgvector", url, source.dim)
    assert dest.count() == source.count() == report["chunks"]
    for doc_id in list(_many_docs(n))[:: n // 20]:
        (a, va), (b, vb) = source.export(doc_id), dest.export(doc_id)
        assert a == b and np.allclose(va, vb, atol=1e-6)


def test_migrate_refuses_a_url_holding_a_password(project_dir):
    root = project_dir(DOCS, CONFIG)
    r = run("migrate", "--to", f"postgresql://me:{SECRET}@db:5432/x", "-p", root)
    assert r.exit_code != 0 and "password_env" in r.output and SECRET not in r.output
