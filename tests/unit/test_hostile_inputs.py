"""Unbounded input (issue 20, kind 3), generated here, never committed: a DOCX that inflates past the bound, lines
that made the parsers superlinear, text between blocks that no chunk bound covered. Each is read within bounds or
reported and skipped, and the rest of the folder is still ingested."""
import io
import re
import subprocess
import sys
import textwrap
import zipfile

import pytest

from loradex.ingest.chunk import CHARS_PER_TOKEN, chunk_document
from loradex.ingest.parse import parse_bytes
from loradex.ingest.parse_markdown import LONGEST_LINE, cut_long_lines

from .docfactory import make_docx

# The peak resident memory of the process that runs this expression, in MiB: VmHWM of its own address space.
# (getrusage's ru_maxrss is not that: Linux carries the parent's high-water mark across fork and exec, so a child
# of a pytest process grown to 1.8 GB reported 1.8 GB.)
PEAK_MIB = 'int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024'


def _with_zero_part(docx: bytes, mib: int) -> bytes:
    """`docx` plus a part of `mib` MiB of zeros (deflated to about 1/1000 of that), written a MiB at a time."""
    buf = io.BytesIO(docx)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as z, z.open("word/media/zeros.bin", "w",
                                                                        force_zip64=True) as f:
        for _ in range(mib):
            f.write(bytes(2**20))
    return buf.getvalue()


def _xml_bomb(docx: bytes, mib: int) -> bytes:
    """`docx` with its word/document.xml replaced by one of about `mib` MiB of one-letter paragraphs (deflated
    to about 1/200 of that): the part python-docx parses whole, as the issue's bomb did (9.8 GB for 1.5 GB)."""
    src, buf = zipfile.ZipFile(io.BytesIO(docx)), io.BytesIO()
    para = b"<w:p><w:r><w:t>a</w:t></w:r></w:p>" * 30_000  # about 1 MiB
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if info.filename != "word/document.xml":
                out.writestr(info, src.read(info))
                continue
            head, tail = src.read(info).split(b"<w:body>")
            with out.open("word/document.xml", "w", force_zip64=True) as f:
                f.write(head + b"<w:body>")
                for _ in range(mib):
                    f.write(para)
                f.write(tail)
    return buf.getvalue()


def test_a_docx_that_inflates_past_the_bound_is_refused_before_it_is_inflated(monkeypatch):
    from loradex.ingest import parse_docx

    monkeypatch.setattr(parse_docx, "MAX_UNZIPPED_BYTES", 2 * 2**20)
    bomb = _with_zero_part(make_docx(), 3)
    with pytest.raises(parse_docx.ParseError, match=r"inflates to [34] MiB from 0\.0 MiB, over the bound of 2 MiB"):
        parse_bytes(bomb, "docx")
    assert "Paying your premium" in parse_bytes(make_docx(), "docx").text  # a normal one still reads
    monkeypatch.setattr(parse_docx, "MAX_PARTS", 5)
    with pytest.raises(parse_docx.ParseError, match=r"parts, over the bound of 5"):
        parse_bytes(make_docx(), "docx")


@pytest.mark.slow
def test_a_1_5_gb_zip_bomb_is_skipped_in_bounded_memory_and_the_rest_is_ingested(project_dir, tmp_path):
    """The issue's case: a DOCX of a few MB whose document.xml inflates to 1.5 GB took 9.8 GB. Ingested in a
    fresh process beside a normal document: the bomb is reported and skipped, the other indexed, the process's
    peak memory small."""
    root = project_dir({"docs/a.md": "# Claims\n\nReport a theft to the police within 24 hours.\n"})
    (root / "docs/bomb.docx").write_bytes(_xml_bomb(make_docx(), 1536))
    script = textwrap.dedent(f"""
        import json, re
        from loradex.ingest.ingest import ingest
        from loradex.project import open_project
        r = ingest(open_project({str(root)!r}))
        print(json.dumps({{"added": r.added, "skipped": r.skipped,
                          "peak_mib": {PEAK_MIB}}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["added"] == ["docs/a.md"]
    assert report["skipped"][0][0] == "docs/bomb.docx"
    assert re.search(r"inflates to 1,\d{3} MiB from 4\.\d MiB", report["skipped"][0][1]), report
    assert report["peak_mib"] < 1024, report  # measured: see the README table (issue 20)


@pytest.mark.parametrize("char", ["[", "<", "#", "x"])
def test_a_markdown_line_over_the_bound_is_cut_into_paragraphs_and_reported(char):
    """A 1 MB line of `[` kept markdown-it's inline parser busy for minutes (its time grows faster than the
    line); cut into paragraphs of at most LONGEST_LINE characters, it parses in linear time."""
    line = char * (3 * LONGEST_LINE + 10)
    doc = parse_bytes(f"# Title\n\n{line}\n\nAfter the long line.\n".encode(), "markdown")
    assert any("cut into paragraphs" in u and f"{len(line):,}" in u for u in doc.unread), doc.unread
    kept = doc.text.replace("\n", "").replace(" ", "")
    assert line in kept and kept.endswith("Afterthelongline.")
    assert max(len(x) for x in doc.text.split("\n")) <= LONGEST_LINE


def test_cut_long_lines_prefers_whitespace_and_leaves_short_lines_alone():
    words = " ".join(["word"] * 3000)  # 14,999 characters
    body, notes = cut_long_lines(f"short\n{words}\nshort", longest=1000)
    lines = body.split("\n")
    assert lines[0] == "short" and lines[-1] == "short" and len(notes) == 1
    assert all(len(x) <= 1000 and not x.startswith(" ") and not x.endswith(" ") for x in lines)
    assert " ".join(x for x in lines[1:-1] if x) == words  # nothing lost but the spaces at the cuts
    assert cut_long_lines("a\nb", longest=1000) == ("a\nb", [])


def test_text_between_blocks_never_makes_a_chunk_past_the_character_bound():
    """A 200,000-character thematic break of `*` carries no block, but a chunk spanning from the heading to the
    next paragraph carried all of it (1 MB in the issue's case)."""
    doc = parse_bytes(("# Title\n\n" + "*" * 200_000 + "\n\nAfter the break.\n").encode(), "markdown")
    spans = chunk_document(doc, lambda t: len(t.split()), 50)
    assert all(s.end - s.start <= 50 * CHARS_PER_TOKEN for s in spans), [s.end - s.start for s in spans]
    assert [doc.text[s.start:s.end] for s in spans] == ["# Title", "After the break."]


def test_a_long_line_without_a_hyphen_is_read_in_linear_time():
    """Looking for a hyphen-broken word at the end of each line searched the whole line from every position: a
    20,000-letter line took 25 s, 1 MB would take hours. Now only the line's last 100 characters are looked at,
    and a hyphen-broken word is still joined."""
    text = "y" * 300_000 + "\nthen a line with an insur-\nance word.\n"
    doc = parse_bytes(text.encode(), "text")
    assert "y" * 300_000 in doc.text and "insurance" in doc.text and "insur-" not in doc.text


def test_a_parser_that_fails_on_one_file_never_stops_the_others(project_dir, monkeypatch):
    """A parser's own bug (any exception, a RecursionError too) skips that file with the reason; front matter
    nested past Python's recursion limit is left out and reported, the document still read."""
    from loradex.ingest import ingest as ingest_module
    from loradex.ingest.ingest import ingest
    from loradex.project import open_project

    deep = "---\ntitle: " + "[" * 3000 + "]" * 3000 + "\n---\n\n# Deep\n\nThe body is still read.\n"
    root = project_dir({"docs/a.md": "# A\n\nFine.\n", "docs/boom.md": "# Boom\n\nx\n", "docs/deep.md": deep})
    real = ingest_module.parse_bytes

    def parse(data, fmt):
        if b"Boom" in data:
            raise RecursionError("maximum recursion depth exceeded")
        return real(data, fmt)

    monkeypatch.setattr(ingest_module, "parse_bytes", parse)
    report = ingest(open_project(root))
    assert sorted(report.added) == ["docs/a.md", "docs/deep.md"]
    assert report.skipped == [("docs/boom.md", "the markdown parser failed on it (RecursionError: maximum recursion "
                                               "depth exceeded); please report this file")]
    assert any("front matter" in what and "RecursionError" in what for _, what in report.unread)


def test_an_interrupted_ingest_of_a_large_file_resumes_without_embedding_it_again(project_dir, monkeypatch):
    """Issue 20, kind 3: a large file was all or nothing (a 300 MB one: one batch of about 2 hours of embedding,
    lost on interrupt). Embeddings are committed to `.loradex/pending.sqlite` 256 at a time; the run after an
    interrupt embeds only what is left, and the document reaches the store whole, once."""
    from loradex.embed import HashingEmbedder
    from loradex.ingest.ingest import ingest
    from loradex.project import open_project

    paragraphs = "\n\n".join(f"Paragraph {i} says the excess for claim type {i} is EUR {i}." for i in range(1500))
    root = project_dir({"docs/big.md": f"# Big\n\n{paragraphs}\n", "docs/small.md": "# Small\n\nReport thefts.\n"},
                       "chunking: {max_tokens: 16}\n")
    real, embedded = HashingEmbedder.embed, []

    def embed(self, texts):
        if len(embedded) >= 1000:
            raise KeyboardInterrupt  # the user presses Ctrl-C after 1,000 chunks (four slices of 256, minus one)
        embedded.extend(texts)
        return real(self, texts)

    monkeypatch.setattr(HashingEmbedder, "embed", embed)
    with pytest.raises(KeyboardInterrupt):
        ingest(open_project(root))
    first = len(embedded)
    assert 0 < first < 1500 and "docs/big.md" not in open_project(root).load_manifest().get("documents", {})
    embedded.clear()
    report = ingest(open_project(root))
    chunks = open_project(root).load_manifest()["documents"]["docs/big.md"]["chunks"]
    assert sorted(report.added) == ["docs/big.md", "docs/small.md"] and chunks >= 1500
    assert report.reused_vectors == first and len(embedded) == chunks + 1 - first  # + the small file's chunk
    assert len(open_project(root).store.chunks("docs/big.md")) == chunks
    import sqlite3

    db = sqlite3.connect(root / ".loradex/pending.sqlite")
    assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 0  # stored now: nothing left pending
