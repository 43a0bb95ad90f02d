"""Builds real PDF and DOCX files for the tests (fpdf2 and python-docx), and broken variants of them."""
from __future__ import annotations

import io


def make_pdf(pages: list[list[str]]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.multi_cell(0, 6, line)
            pdf.ln(4)
    return bytes(pdf.output())


def encrypt_pdf(data: bytes, password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(password)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def make_docx() -> bytes:
    import docx

    d = docx.Document()
    d.add_heading("Paying your premium", level=1)
    d.add_paragraph("You can pay monthly or annually.")
    d.add_heading("Methods", level=2)
    d.add_paragraph("Direct debit on the 1st of the month", style="List Bullet")
    d.add_paragraph("Card payment online", style="List Bullet")
    table = d.add_table(rows=2, cols=2)
    for (r, c), text in {(0, 0): "Method", (0, 1): "Fee", (1, 0): "Card", (1, 1): "EUR 0"}.items():
        table.cell(r, c).text = text
    d.add_paragraph("Questions? Call billing.")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()
