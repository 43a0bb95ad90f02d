import threading

import numpy as np
import pytest

from loradex.embed import HashingEmbedder
from loradex.errors import IndexMismatch
from loradex.ingest.ingest import ingest
from loradex.project import open_project
from loradex.retrieve import search
from loradex.types import Filters

from .docfactory import make_docx, make_pdf

DOCS = {
    "docs/claims/report.md": "# Reporting\n\nReport a burst pipe within 30 days.\n",
    "docs/claims/theft.txt": "Theft\n\nCall the police within 24 hours.\n",
    "docs/policy/motor.html": "<h1>Motor</h1><p>Comprehensive cover has an excess of EUR 300.</p>",
    "docs/billing/guide.pdf": make_pdf([["Payment guide", "Monthly premiums are collected by direct debit."]]),
    "docs/billing/methods.docx": make_docx(),
}
CONFIG = """
domains:
  claims: {paths: ["docs/claims/**"]}
  policy: {paths: ["docs/policy/**"]}
  billing: {paths: ["docs/billing/**"], groups: [finance]}
"""


class CountingEmbedder(HashingEmbedder):
    def __init__(self):
        super().__init__()
        self.texts = 0

    def embed(self, texts):
        self.texts += len(texts)
        return super().embed(texts)


def _open(root):
    return open_project(root, embedder=CountingEmbedder())


def _hits(proj, query, **kw):
    return search(proj.store, proj.embedder, query, proj.config.retrieval, **kw)


def test_every_format_is_ingested_with_its_source(project_dir):
    proj = _open(project_dir(DOCS, CONFIG))
    report = ingest(proj)
    assert sorted(report.added) == sorted(DOCS) and not report.skipped
    hit = _hits(proj, "direct debit monthly premiums", k=1)[0]
    assert hit.chunk.doc_id == "docs/billing/guide.pdf"
    assert hit.chunk.source.page == 1
    assert hit.chunk.meta.domain == "billing" and hit.chunk.meta.groups == ("finance",)
    manifest = proj.load_manifest()["documents"]
    assert manifest["docs/billing/methods.docx"]["format"] == "docx"
    assert hit.chunk.doc_version == manifest["docs/billing/guide.pdf"]["version"]


def test_reingest_of_unchanged_files_does_no_work(project_dir):
    root = project_dir(DOCS, CONFIG)
    proj = _open(root)
    ingest(proj)
    count = proj.store.count()
    proj2 = _open(root)
    report = ingest(proj2)
    assert sorted(report.unchanged) == sorted(DOCS)
    assert report.added == report.updated == [] and report.chunks == 0
    assert proj2.embedder.texts == 0
    assert proj2.store.count() == count


def test_a_new_chunk_bound_or_chunker_rechunks_every_document_once(project_dir):
    root = project_dir(DOCS, CONFIG)
    proj = _open(root)
    ingest(proj)
    assert proj.load_manifest()["chunker"].endswith(":220")
    cfg = root / "loradex.yaml"
    cfg.write_text(cfg.read_text() + "chunking: {max_tokens: 64}\n")
    proj = _open(root)
    report = ingest(proj)
    assert sorted(report.updated) == sorted(DOCS) and report.unchanged == []
    assert proj.load_manifest()["chunker"].endswith(":64")
    assert sorted(ingest(_open(root)).unchanged) == sorted(DOCS)  # once
    manifest = proj.load_manifest()
    manifest["chunker"] = "1:64"  # an index an older loradex chunked
    proj.save_manifest(manifest)
    assert sorted(ingest(_open(root)).updated) == sorted(DOCS)


def test_changed_file_replaces_its_chunks_and_version(project_dir):
    root = project_dir(DOCS, CONFIG)
    proj = _open(root)
    ingest(proj)
    old = proj.load_manifest()["documents"]["docs/claims/report.md"]["version"]
    (root / "docs/claims/report.md").write_text("# Reporting\n\nReport water damage within 14 days now.\n")
    report = ingest(proj)
    assert report.updated == ["docs/claims/report.md"] and len(report.unchanged) == len(DOCS) - 1
    chunks = proj.store.chunks("docs/claims/report.md")
    assert all("14 days" in c.text or c.text.startswith("#") for c in chunks)
    assert {c.doc_version for c in chunks} == {proj.load_manifest()["documents"]["docs/claims/report.md"]["version"]}
    assert old != chunks[0].doc_version
    assert not any("burst pipe" in h.chunk.text for h in _hits(proj, "burst pipe", k=10))


def test_prune_removes_only_vanished_files(project_dir):
    root = project_dir(DOCS, CONFIG)
    proj = _open(root)
    ingest(proj)
    (root / "docs/claims/theft.txt").unlink()
    assert ingest(proj).removed == []  # without --prune nothing is removed
    assert proj.store.chunks("docs/claims/theft.txt")
    report = ingest(proj, prune=True)
    assert report.removed == ["docs/claims/theft.txt"]
    assert proj.store.chunks("docs/claims/theft.txt") == []
    assert "docs/claims/theft.txt" not in proj.load_manifest()["documents"]


def test_symbolic_links_are_reported_never_followed(project_dir, tmp_path):
    """A link in a source folder, to a file or a folder outside the project or in another group's folder, is
    reported and not indexed, so no group's document reaches another key by any path (issue 20, kind 2)."""
    root = project_dir(DOCS, CONFIG)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nThe outside password is swordfish.\n")
    (root / "docs/claims/outside.md").symlink_to(outside / "secret.md")
    (root / "docs/claims/outside-folder").symlink_to(outside, target_is_directory=True)
    (root / "docs/claims/billing-guide.pdf").symlink_to(root / "docs/billing/guide.pdf")  # finance-only target
    (root / "docs/policy/dangling.md").symlink_to(root / "docs/nowhere.md")
    proj = _open(root)
    report = ingest(proj)
    reasons = dict(report.skipped)
    links = {"docs/claims/outside.md", "docs/claims/outside-folder", "docs/claims/billing-guide.pdf",
             "docs/policy/dangling.md"}
    assert set(reasons) == links and all("symbolic link to" in reasons[k] for k in links), reasons
    assert str(outside / "secret.md") in reasons["docs/claims/outside.md"]
    assert sorted(report.added) == sorted(DOCS)
    assert set(proj.load_manifest()["documents"]) == set(DOCS)
    assert not any("swordfish" in h.chunk.text for h in _hits(proj, "outside password swordfish", k=20))
    public = [h.chunk.doc_id for h in _hits(proj, "direct debit monthly premiums", k=10, filters=Filters(groups=()))]
    assert "docs/billing/guide.pdf" not in public and not any("billing" in d for d in public)
    finance = _hits(proj, "direct debit monthly premiums", k=10, filters=Filters(groups=("finance",)))
    assert [h.chunk.doc_id for h in finance][0] == "docs/billing/guide.pdf"
    assert all(h.chunk.meta.groups == ("finance",) for h in finance if h.chunk.doc_id.startswith("docs/billing"))


def test_a_full_prune_removes_documents_from_outside_the_project(project_dir, tmp_path):
    """Before links were refused, a link indexed its target under the target's absolute path, and `--prune`
    never removed it (issue 20, kind 2). A prune of the configured sources now leaves only their files; a prune
    of named paths leaves outside documents alone."""
    root = project_dir(DOCS, CONFIG)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nThe outside password is swordfish.\n")
    proj = _open(root)
    ingest(proj)
    ingest(proj, [outside / "secret.md"])  # as an old link, or a file named on the command line, indexed it
    secret = str(outside / "secret.md")
    assert secret in proj.load_manifest()["documents"]
    assert ingest(proj, ["docs/claims"], prune=True).removed == []
    assert ingest(proj, prune=True).removed == [secret]
    assert set(proj.load_manifest()["documents"]) == set(DOCS)
    assert not any("swordfish" in h.chunk.text for h in _hits(proj, "outside password swordfish", k=20))


def test_a_file_name_that_is_not_utf8_is_reported_and_the_rest_ingested(project_dir):
    """Issue 20, kind 3: one Latin-1 file name used to abort the whole run with a UnicodeEncodeError."""
    import os

    root = project_dir(DOCS, CONFIG)
    with open(os.path.join(os.fsencode(root / "docs/claims"), b"caf\xe9.md"), "wb") as f:
        f.write(b"# Cafe\n\nA file whose name is Latin-1.\n")
    report = ingest(_open(root))
    assert sorted(report.added) == sorted(DOCS)
    assert report.skipped == [("docs/claims/caf\\xe9.md", "the file name is not valid UTF-8: rename it (for example "
                                                           "with `convmv -f latin1 -t utf8`)")]


def test_bad_files_are_reported_skipped_and_lose_nothing(project_dir):
    root = project_dir(DOCS, CONFIG)
    proj = _open(root)
    ingest(proj)
    before = proj.store.chunks("docs/billing/guide.pdf")
    # a good file turns corrupt, and new bad files appear beside a new good one
    (root / "docs/billing/guide.pdf").write_bytes(make_pdf([["x"]])[:200])
    (root / "docs/bad/empty.md").parent.mkdir(parents=True)
    (root / "docs/bad/empty.md").write_bytes(b"")
    (root / "docs/bad/binary.txt").write_bytes(b"\x00\x01\x02\x03")
    (root / "docs/bad/latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    (root / "docs/bad/broken.docx").write_bytes(b"PK\x03\x04junk")
    (root / "docs/new.md").write_text("# New\n\nA new good document.\n")
    report = ingest(proj)
    reasons = dict(report.skipped)
    assert set(reasons) == {"docs/billing/guide.pdf", "docs/bad/empty.md", "docs/bad/binary.txt",
                            "docs/bad/latin1.md", "docs/bad/broken.docx"}
    assert "PDF" in reasons["docs/billing/guide.pdf"] and "empty" in reasons["docs/bad/empty.md"]
    assert report.added == ["docs/new.md"]
    assert proj.store.chunks("docs/billing/guide.pdf") == before  # the last good version still serves


def test_files_of_other_kinds_in_a_source_folder_are_listed_as_ignored(project_dir):
    """A new user's .png, .csv and .doc beside the documents vanished without a word."""
    from typer.testing import CliRunner

    from loradex.cli import app

    root = project_dir(DOCS, CONFIG)
    (root / "docs/misc").mkdir()
    for name in ("img.png", "table.csv", "old.doc"):
        (root / "docs/misc" / name).write_bytes(b"data")
    (root / "docs/.git").mkdir()
    (root / "docs/.git/config").write_text("hidden folders are not walked")
    report = ingest(_open(root))
    assert report.ignored == ["docs/misc/img.png", "docs/misc/old.doc", "docs/misc/table.csv"]
    assert report.skipped == [] and report.to_dict()["ignored"] == report.ignored
    (root / "docs/misc/more.xlsx").write_bytes(b"data")
    r = CliRunner().invoke(app, ["ingest", "-p", str(root)])
    assert r.exit_code == 0  # not an error: nothing loradex reads was lost
    assert "ignored 4 file(s) of kinds loradex does not read (docs/misc/img.png" in " ".join(r.output.split())


def test_metadata_change_reindexes_without_content_change(project_dir):
    root = project_dir(DOCS, CONFIG)
    proj = _open(root)
    ingest(proj)
    (root / "loradex.yaml").write_text((root / "loradex.yaml").read_text()
                                       + "metadata:\n  - {paths: ['docs/claims/*'], tags: [urgent]}\n")
    proj = _open(root)
    before = {d: proj.store.export(d) for d in ("docs/claims/report.md", "docs/claims/theft.txt")}
    embedded: list[str] = []
    real = proj.embedder.embed
    proj.embedder.embed = lambda texts, *a, **k: (embedded.extend(texts), real(texts, *a, **k))[1]
    report = ingest(proj)
    assert sorted(report.updated) == ["docs/claims/report.md", "docs/claims/theft.txt"]
    searched = len(embedded)
    hits = _hits(proj, "police report", k=10, filters=Filters(tags=("urgent",)))
    assert {h.chunk.doc_id for h in hits} == {"docs/claims/report.md", "docs/claims/theft.txt"}
    # only the tags changed: every stored vector is kept, nothing is embedded again (a new user saw a config
    # change re-embed the whole corpus)
    assert searched == 0 and report.kept_vectors == report.chunks > 0
    for d, (_, vectors) in before.items():
        assert np.array_equal(proj.store.export(d)[1], vectors)
    # an edited document: only the chunk whose text changed is embedded
    long = root / "docs/claims/long.md"
    long.write_text("# Guide\n\n## Police\n\nCall the police.\n\n## Receipts\n\nKeep receipts.\n\n"
                    "## Photos\n\nTake photos.\n")
    ingest(proj)
    embedded.clear()
    long.write_text(long.read_text().replace("Keep receipts.", "Keep every receipt for stolen items."))
    report = ingest(proj)
    assert report.updated == ["docs/claims/long.md"] and report.kept_vectors == report.chunks - 1 >= 2
    assert len(embedded) == 1 and "Keep every receipt" in embedded[0]
    assert np.allclose(proj.store.export("docs/claims/long.md")[1], proj.embedder.embed(
        [c.search_text() for c in proj.store.chunks("docs/claims/long.md")]), atol=1e-6)  # as a fresh embed


def test_embedder_change_requires_rebuild(project_dir):
    root = project_dir(DOCS, CONFIG)
    ingest(_open(root))
    (root / "loradex.yaml").write_text((root / "loradex.yaml").read_text().replace("hashing", "hashing-64"))
    proj = open_project(root)
    with pytest.raises(IndexMismatch, match="--rebuild"):
        ingest(proj)
    report = ingest(open_project(root), rebuild=True)
    assert len(report.added) == len(DOCS)


def test_replacement_is_atomic_for_concurrent_readers(project_dir):
    long_doc = "# Doc\n\n" + "\n\n".join(f"Paragraph {i} about version VERSION." for i in range(40))
    root = project_dir({"docs/a.md": long_doc.replace("VERSION", "v0")}, "chunking: {max_tokens: 16}\n")
    proj = _open(root)
    ingest(proj)
    stop, seen, errors = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            try:
                chunks = proj.store.chunks("docs/a.md")
                seen.append({c.doc_version for c in chunks})
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for v in range(1, 8):
        (root / "docs/a.md").write_text(long_doc.replace("VERSION", f"v{v}"))
        ingest(proj)
    stop.set()
    t.join()
    assert not errors
    assert len(seen) > 5
    assert all(len(versions) == 1 for versions in seen), "a reader saw chunks of two versions at once"
