#!/usr/bin/env python3
"""Build the binary documents of the Harbor Mutual example corpus.

Generates, from text held in this script:

* docs/claims/claim-form-guide.pdf   (fpdf2, core Helvetica font, 2+ pages)
* docs/billing/payment-methods.docx  (python-docx, Heading 1/2, bullets, table)

Usage (from anywhere):

    python3 -m venv /tmp/corpusvenv
    /tmp/corpusvenv/bin/pip install fpdf2 python-docx pypdf
    /tmp/corpusvenv/bin/python examples/insurance/tools/make_binary_docs.py

The PDF uses only the core Helvetica font, so all PDF text is plain latin-1
(amounts are written as "EUR", never with the euro sign). Output is made
reproducible: fixed creation dates, and the .docx zip is rewritten with
fixed timestamps, so rebuilding gives byte-identical files.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # examples/insurance
PDF_PATH = ROOT / "docs" / "claims" / "claim-form-guide.pdf"
DOCX_PATH = ROOT / "docs" / "billing" / "payment-methods.docx"

FIXED_DATE = _dt.datetime(2024, 1, 1, tzinfo=_dt.UTC)

# ---------------------------------------------------------------------------
# PDF: Claim Form Guide
# Each block is (kind, text) where kind is "h1", "h2", "p", "li" or "num".
# ---------------------------------------------------------------------------
PDF_TITLE = "Claim Form Guide"
PDF_BLOCKS: list[tuple[str, str]] = [
    ("h1", "Claim Form Guide"),
    ("p", "Harbor Mutual Insurance - Home and Motor Claims"),
    ("h2", "About this guide"),
    ("p", "This guide explains, section by section, how to fill in the Harbor Mutual "
          "claim form. A complete and accurate form is the fastest route to a decision: "
          "we decide within 10 working days of receiving the form and all supporting "
          "documents. The form is available in the Harbor Mutual app, in My Harbor, or "
          "on paper if you ask the claims line on 0800 555 0100."),
    ("h2", "When you need a claim form"),
    ("p", "You will be asked to complete a claim form for:"),
    ("li", "home claims above EUR 1,500 (fast-track claims up to EUR 1,500 are usually "
           "settled from photos and receipts alone);"),
    ("li", "all theft and burglary claims, whatever the amount;"),
    ("li", "motor accidents involving another vehicle, a cyclist or a pedestrian;"),
    ("li", "any claim where someone has been injured."),
    ("p", "Return the completed and signed form within 14 days of receiving it. If you "
          "need more time, for example to find receipts, ask your claims handler before "
          "the 14 days are up and we will agree a new date."),
    ("h2", "Section A - Your details"),
    ("p", "Enter your policy number (home policies start with HMH-, motor policies with "
          "HMM-), your claim reference (HM-C- followed by seven digits), your full name, "
          "address, phone number and email. If someone is helping you with the claim, "
          "give their name and tick the box to allow us to speak to them."),
    ("h2", "Section B - What happened"),
    ("p", "Give the date, time and exact place of the incident, and describe in your own "
          "words what happened and what was damaged or lost. Write facts, not guesses: "
          "if you do not know the cause of a leak, say so. Tell us when you first noticed "
          "the damage if that was later than the incident, and why."),
    ("h2", "Section C - Theft, burglary and vandalism"),
    ("p", "Enter the police crime reference number and the date you reported to the "
          "police. Theft, burglary and vandalism must be reported to the police within "
          "24 hours and to Harbor Mutual within 7 days. Describe how the thief got in, "
          "for example a forced back door, and whether the home was occupied and locked. "
          "If keys were stolen, say whether the locks have been changed; we pay up to "
          "EUR 750 for new locks and keys."),
    ("h2", "Section D - Motor accidents"),
    ("p", "Draw a simple sketch of the road layout, showing the position and direction "
          "of each vehicle before and at the moment of impact. Enter the name, address, "
          "insurer and registration number of every other driver, and the names and "
          "phone numbers of witnesses. Motor accidents must be reported to us within 48 hours, and to the "
          "police within 24 hours if anyone was injured or the other driver did not stop."),
    ("h2", "Section E - Items lost or damaged"),
    ("p", "List each item on its own line with a description (make, model, size), the "
          "date and place bought, the price paid and the cost to replace it today. "
          "Attach proof of ownership where you have it. Remember the contents limits:"),
    ("li", "any single item not listed on your schedule: up to EUR 2,500;"),
    ("li", "valuables such as jewellery, watches and art: up to EUR 10,000 in total;"),
    ("li", "cash: up to EUR 500;"),
    ("li", "contents in the garden: up to EUR 1,000."),
    ("p", "Keep damaged items for 30 days or until we say you can dispose of them."),
    ("h2", "Section F - Other insurance and previous claims"),
    ("p", "Tell us if the same loss is also covered by another policy, such as a credit "
          "card purchase protection scheme, a travel policy or a landlord's buildings "
          "policy. We share the cost fairly with the other insurer."),
    ("h2", "Section G - Payment details"),
    ("p", "Give the IBAN and account holder name for the settlement. The account must be "
          "in the name of a policyholder. Payment is made within "
          "5 working days of agreeing the settlement, after deducting your excess: "
          "EUR 250 for standard home claims, EUR 500 for escape of water, EUR 1,000 for "
          "subsidence, and EUR 300 compulsory excess for motor claims."),
    ("h2", "Section H - Declaration"),
    ("p", "Read the declaration carefully before signing. By signing, you confirm that "
          "the information is true and complete to the best of your knowledge. Giving "
          "false or exaggerated information is fraud: the whole claim can be refused and "
          "the policy cancelled. Every policyholder named on the schedule should sign."),
    ("h2", "Sending the form"),
    ("num", "Upload the form and documents in the app or My Harbor (PDF, JPG or PNG, up "
            "to 20 MB each)."),
    ("num", "Or email them to claims@harbormutual.example with your claim reference in "
            "the subject line."),
    ("num", "Or post them to Claims Department, Harbor Mutual Insurance, 1 Quay Street, "
            "Port Harbor. Send copies, not originals."),
    ("h2", "What happens next"),
    ("p", "Your claims handler checks the form within 2 working days and tells you if "
          "anything is missing. Home claims above EUR 5,000 are passed to a loss "
          "adjuster, who visits within 5 working days of appointment. Once we have "
          "everything, we decide within 10 working days. If you have no decision within "
          "20 working days of sending all your documents, you can ask for a senior "
          "claims handler review."),
]


def build_pdf(path: Path) -> None:
    from fpdf import FPDF

    class GuidePDF(FPDF):
        def footer(self) -> None:  # noqa: D401 - fpdf hook
            self.set_y(-15)
            self.set_font("Helvetica", "", 8)
            self.cell(0, 10, f"Harbor Mutual Insurance - Claim Form Guide - page {self.page_no()}",
                      align="C")

    pdf = GuidePDF(format="A4")
    pdf.set_title(PDF_TITLE)
    pdf.set_author("Harbor Mutual Insurance")
    pdf.set_subject("How to complete a Harbor Mutual claim form")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(auto=True, margin=20)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    number = 0
    for kind, text in PDF_BLOCKS:
        text.encode("latin-1")  # fail loudly on characters Helvetica cannot show
        if kind != "num":
            number = 0
        if kind == "h1":
            pdf.set_font("Helvetica", "B", 20)
            pdf.multi_cell(width, 10, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif kind == "h2":
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", 13)
            pdf.multi_cell(width, 7, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif kind == "p":
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(width, 5.8, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1.5)
        elif kind in ("li", "num"):
            pdf.set_font("Helvetica", "", 11)
            if kind == "num":
                number += 1
                marker = f"{number}."
            else:
                marker = "-"
            pdf.set_x(pdf.l_margin + 4)
            pdf.cell(6, 5.8, marker)
            pdf.multi_cell(width - 10, 5.8, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(0.5)
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))


# ---------------------------------------------------------------------------
# DOCX: Premium Payment Methods
# Each block is (kind, payload): "h1"/"h2"/"p"/"bullet"/"num" with text, or
# "table" with a list of rows (first row is the header).
# ---------------------------------------------------------------------------
DOCX_BLOCKS: list[tuple[str, object]] = [
    ("h1", "Premium Payment Methods"),
    ("p", "Harbor Mutual Insurance offers several ways to pay for your home or motor "
          "policy. The methods available depend on whether you pay for the whole year at "
          "once or in monthly instalments. This guide explains each method, what it "
          "costs and what you need to know to keep your payments on track."),
    ("h2", "Ways to pay"),
    ("p", "You can pay your premium using any of the following:"),
    ("bullet", "Debit card (Visa or Mastercard) - annual payment only."),
    ("bullet", "Credit card (Visa or Mastercard) - annual payment only."),
    ("bullet", "SEPA bank transfer - annual payment only."),
    ("bullet", "SEPA direct debit - annual payment or 12 monthly instalments."),
    ("h2", "Payment methods compared"),
    ("table", [
        ["Method", "Annual", "Monthly", "Fee", "Automatic renewal"],
        ["Debit card", "Yes", "No", "None", "Only if you store the card"],
        ["Credit card", "Yes", "No", "None", "Only if you store the card"],
        ["SEPA bank transfer", "Yes", "No", "None", "No"],
        ["SEPA direct debit", "Yes", "Yes", "None (monthly adds a 5% credit charge)", "Yes"],
    ]),
    ("h2", "Paying by card"),
    ("p", "Card payments are taken securely in My Harbor, in the Harbor Mutual app or by "
          "phone on 0800 555 0200. We never add a card surcharge. If you agree to store "
          "your card, your policy renews automatically and we take the renewal premium "
          "from the stored card on the renewal date. Update your card details in My "
          "Harbor when a new card arrives, so the renewal payment does not fail."),
    ("h2", "Paying by bank transfer"),
    ("p", "Bank transfer is available for annual payment only. Use the bank details on "
          "your quote or renewal invitation, and always enter your policy number as the "
          "payment reference, otherwise we may not be able to match your payment. For a "
          "new policy, the money must reach us before the policy start date. Policies "
          "paid by bank transfer do not renew automatically: you must pay the renewal "
          "premium before the renewal date to stay covered."),
    ("h2", "Paying by direct debit"),
    ("p", "Direct debit is the only way to pay monthly. You choose a collection day of "
          "the 1st, 8th, 15th or 22nd of the month, and we send you a payment schedule "
          "at least 14 days before the first collection. Paying monthly costs 5% more "
          "than paying annually because of the credit charge. To change your bank "
          "account or collection day, tell us at least 10 working days before the next "
          "collection; both changes are free."),
    ("h2", "Methods we do not accept"),
    ("bullet", "Cash, at our offices or by post."),
    ("bullet", "Cheques."),
    ("bullet", "American Express and other charge cards."),
    ("bullet", "Payment apps or cryptocurrencies."),
    ("h2", "If a payment fails"),
    ("p", "If a card payment is declined or a direct debit is returned, your cover "
          "continues during a 14-day grace period. We charge a returned payment fee of "
          "EUR 15 and try to collect a missed direct debit again after 7 days. If the "
          "amount is still unpaid at the end of the grace period, we send a notice of "
          "cancellation giving you 7 more days to pay. See Missed Payments and the Grace "
          "Period for details."),
    ("h2", "Payment security"),
    ("p", "Harbor Mutual will never ask you for your card PIN, your online banking "
          "password or a one-time security code by phone, email or text message. We "
          "never ask you to pay into a different account than the one shown on your "
          "documents. If you receive a message like this, do not reply, and report it "
          "to our fraud line on 0800 555 0300."),
    ("h2", "Payment help"),
    ("p", "Customer service answers payment questions on 0800 555 0200, Monday to "
          "Friday 08:00-20:00 and Saturday 09:00-13:00. If you are struggling to pay, "
          "ask for the Payment Support Team, who can move your collection day or "
          "spread a missed instalment over the remaining months."),
]


def build_docx(path: Path) -> None:
    import docx
    from docx.shared import Pt

    document = docx.Document()
    props = document.core_properties
    props.title = "Premium Payment Methods"
    props.author = "Harbor Mutual Insurance"
    props.subject = "How to pay for a Harbor Mutual policy"
    props.created = FIXED_DATE.replace(tzinfo=None)
    props.modified = FIXED_DATE.replace(tzinfo=None)
    props.last_modified_by = "Harbor Mutual Insurance"
    document.styles["Normal"].font.size = Pt(11)

    for kind, payload in DOCX_BLOCKS:
        if kind == "h1":
            document.add_heading(str(payload), level=1)
        elif kind == "h2":
            document.add_heading(str(payload), level=2)
        elif kind == "p":
            document.add_paragraph(str(payload))
        elif kind == "bullet":
            document.add_paragraph(str(payload), style="List Bullet")
        elif kind == "num":
            document.add_paragraph(str(payload), style="List Number")
        elif kind == "table":
            rows = payload  # type: ignore[assignment]
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            table.style = "Table Grid"
            for r, row in enumerate(rows):
                for c, value in enumerate(row):
                    cell = table.cell(r, c)
                    cell.text = value
                    if r == 0:
                        for run in cell.paragraphs[0].runs:
                            run.bold = True
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(str(path))
    _normalise_zip(path)


def _normalise_zip(path: Path) -> None:
    """Rewrite a .docx (zip) with fixed timestamps so rebuilds are byte-identical."""
    import io
    import zipfile

    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info.filename)) for info in src.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, data)
    path.write_bytes(buf.getvalue())


def main() -> None:
    build_pdf(PDF_PATH)
    build_docx(DOCX_PATH)
    for p in (PDF_PATH, DOCX_PATH):
        print(f"wrote {p.relative_to(ROOT)} ({p.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
