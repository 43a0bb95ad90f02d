import pytest

from loradex.ingest.parse import ParseError, parse_bytes, parse_file

from .docfactory import encrypt_pdf, make_docx, make_pdf

MD = """# Claims

Report a claim within 7 days.

## Theft

- Call the police within 24 hours.
- Keep the reference
  number safe.
1. Numbered item

| Cover | Deductible |
|---|---|
| Home | EUR 250 |

```
code block
```
"""


def _blocks(doc):
    return [(b.kind, doc.text[b.start:b.end], b.heading_path) for b in doc.blocks]


def test_markdown_blocks_keep_spans_and_heading_path():
    doc = parse_bytes(MD.encode(), "markdown")
    blocks = _blocks(doc)
    assert doc.text == MD  # markdown spans index the file itself
    assert blocks[0] == ("heading", "# Claims", ("Claims",))
    assert blocks[1] == ("paragraph", "Report a claim within 7 days.", ("Claims",))
    assert blocks[2] == ("heading", "## Theft", ("Claims", "Theft"))
    assert ("list_item", "- Keep the reference\n  number safe.", ("Claims", "Theft")) in blocks
    assert ("list_item", "1. Numbered item", ("Claims", "Theft")) in blocks
    assert ("table", "| Cover | Deductible |\n|---|---|\n| Home | EUR 250 |", ("Claims", "Theft")) in blocks
    assert ("code", "```\ncode block\n```", ("Claims", "Theft")) in blocks


def test_heading_path_pops_to_the_right_level():
    doc = parse_bytes(b"# A\n\n## B\n\ntext b\n\n# C\n\ntext c\n", "markdown")
    paths = {doc.text[b.start:b.end]: b.heading_path for b in doc.blocks}
    assert paths["text b"] == ("A", "B")
    assert paths["text c"] == ("C",)


def test_plain_text_headings_and_paragraphs():
    text = "Cooling-off period\n\nYou have 14 days to cancel.\nNo fee applies.\n\n- a list item\n"
    doc = parse_bytes(text.encode(), "text")
    assert _blocks(doc) == [
        ("heading", "Cooling-off period", ("Cooling-off period",)),
        ("paragraph", "You have 14 days to cancel.\nNo fee applies.", ("Cooling-off period",)),
        ("list_item", "- a list item", ("Cooling-off period",)),
    ]


def test_plain_text_sections_keep_the_document_title_above_them():
    """The example's theft guide: an all-capitals title, a subtitle, then sections. Each section's passage
    must still say it is about theft (its heading path is embedded with it), or a question about a stolen bike
    never finds "Two deadlines you must meet"."""
    text = ("THEFT AND BURGLARY CLAIMS\n\nHarbor Mutual - Claims Guide\n\nRead this first.\n\n"
            "Two deadlines you must meet\n\nPolice within 24 hours.\n\nFIRE CLAIMS\n\nCall us.\n")
    paths = {doc_text: path for _, doc_text, path in _blocks(parse_bytes(text.encode(), "text"))}
    assert paths["Read this first."] == ("THEFT AND BURGLARY CLAIMS", "Harbor Mutual - Claims Guide")
    assert paths["Police within 24 hours."] == ("THEFT AND BURGLARY CLAIMS", "Two deadlines you must meet")
    assert paths["Call us."] == ("FIRE CLAIMS",)  # a new title in capitals starts over


def test_html_headings_lists_tables_and_no_scripts():
    html = """<html><head><title>t</title><script>var x = 'secret';</script></head><body>
    <h1>Motor cover</h1><p>Three levels of &amp; cover.</p>
    <h2>Levels</h2><ul><li>Third party</li><li>Comprehensive</li></ul>
    <table><tr><th>Level</th><th>Excess</th></tr><tr><td>Comprehensive</td><td>EUR 300</td></tr></table>
    </body></html>"""
    doc = parse_bytes(html.encode(), "html")
    blocks = _blocks(doc)
    assert blocks[0] == ("heading", "Motor cover", ("Motor cover",))
    assert ("paragraph", "Three levels of & cover.", ("Motor cover",)) in blocks
    assert ("list_item", "Comprehensive", ("Motor cover", "Levels")) in blocks
    assert ("table", "| Level | Excess |\n| Comprehensive | EUR 300 |", ("Motor cover", "Levels")) in blocks
    assert "secret" not in doc.text


def test_pdf_pages_and_text():
    data = make_pdf([["Claim form guide", "Send the form within 14 days."], ["Page two", "Payment in 5 days."]])
    doc = parse_bytes(data, "pdf")
    assert doc.pages == 2
    by_text = {doc.text[b.start:b.end]: b for b in doc.blocks}
    assert by_text["Send the form within 14 days."].page == 1
    assert by_text["Payment in 5 days."].page == 2
    assert by_text["Payment in 5 days."].heading_path == ("Claim form guide", "Page two")  # the title stays above


def test_docx_headings_lists_and_table_in_order():
    doc = parse_bytes(make_docx(), "docx")
    blocks = _blocks(doc)
    assert blocks[0] == ("heading", "Paying your premium", ("Paying your premium",))
    assert ("list_item", "Card payment online", ("Paying your premium", "Methods")) in blocks
    kinds = [k for k, _, _ in blocks]
    assert kinds.index("table") < len(kinds) - 1  # the paragraph after the table stays after it
    assert ("table", "| Method | Fee |\n| Card | EUR 0 |", ("Paying your premium", "Methods")) in blocks


@pytest.mark.parametrize("data,fmt,reason", [
    (b"", "markdown", "empty"),
    (b"   \n\n ", "text", "empty"),
    (b"abc\x00\x01\x02", "text", "binary"),
    (b"caf\xe9 cr\xe8me", "markdown", "UTF-8"),
    (b"not a pdf at all", "pdf", "PDF"),
    (b"PK\x03\x04 broken zip", "docx", "DOCX"),
    (b"<html><body><script>x</script></body></html>", "html", "no text"),
])
def test_bad_input_raises_parse_error_with_reason(data, fmt, reason):
    with pytest.raises(ParseError, match=reason):
        parse_bytes(data, fmt)


def test_truncated_and_encrypted_pdf():
    good = make_pdf([["Some text here."]])
    with pytest.raises(ParseError, match="PDF"):
        parse_bytes(good[: len(good) // 3], "pdf")
    with pytest.raises(ParseError, match="encrypted"):
        parse_bytes(encrypt_pdf(good), "pdf")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "x.xlsx"
    path.write_bytes(b"data")
    with pytest.raises(ParseError, match="unsupported format .xlsx"):
        parse_file(path)
