import json

from typer.testing import CliRunner

from loradex.cli import app

from .test_ingest import CONFIG, DOCS

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_init_then_ingest_search_and_docs(project_dir, tmp_path):
    r = run("init", tmp_path / "new")
    assert r.exit_code == 0 and (tmp_path / "new" / "loradex.yaml").is_file()
    root = project_dir(DOCS, CONFIG)
    r = run("ingest", "-p", root, "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["added"]) == len(DOCS)

    r = run("search", "police within 24 hours", "-p", root, "--json", "-k", "2", "--domain", "claims")
    data = json.loads(r.stdout)
    hit = data["hits"][0]
    assert set(hit) >= {"chunk_id", "score", "text", "source", "document"}
    assert set(hit["source"]) == {"path", "page", "heading_path", "start", "end"}
    assert hit["source"]["path"] == "docs/claims/theft.txt" and hit["document"]["version"]
    assert all(h["domain"] == "claims" for h in data["hits"])

    r = run("search", "police", "-p", root)
    assert r.exit_code == 0 and "docs/claims/theft.txt" in r.stdout

    listed = json.loads(run("docs", "list", "-p", root, "--json").stdout)
    assert {d["doc_id"] for d in listed} == set(DOCS)
    shown = json.loads(run("docs", "show", "docs/claims/theft.txt", "-p", root, "--json").stdout)
    assert shown["chunk_list"] and shown["domain"] == "claims"
    assert json.loads(run("docs", "rm", "docs/claims/theft.txt", "-p", root, "--json").stdout) == \
        {"removed": ["docs/claims/theft.txt"]}
    assert run("docs", "show", "docs/claims/theft.txt", "-p", root).exit_code == 1


def test_ingest_with_skipped_files_exits_3_and_names_them(project_dir):
    root = project_dir({**DOCS, "docs/bad.pdf": b"%PDF-1.4 garbage"}, CONFIG)
    r = run("ingest", "-p", root, "--json")
    assert r.exit_code == 3
    report = json.loads(r.stdout)
    assert report["skipped"][0]["path"] == "docs/bad.pdf" and "PDF" in report["skipped"][0]["reason"]
    assert len(report["added"]) == len(DOCS)


def test_errors_are_clear_and_exit_1(project_dir, tmp_path):
    r = run("search", "x", "-p", tmp_path / "nowhere")
    assert r.exit_code == 1 and "loradex init" in r.stderr
    root = project_dir(DOCS, CONFIG)
    r = run("search", "x", "-p", root, "--domain", "nope")
    assert r.exit_code == 1 and "unknown domain 'nope'" in r.stderr
    (root / "loradex.yaml").write_text("retrieval: {k: zero}\n")
    r = run("docs", "list", "-p", root)
    assert r.exit_code == 1 and "retrieval.k" in r.stderr
