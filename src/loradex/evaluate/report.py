"""`report.html`: one self-contained page (charts inline as PNG) for a reader who wants to see, not parse.

Sections: the modes x metrics table with 95% intervals and each mode's paired difference from rag; a bar chart
per headline metric with the intervals as error bars; a per-domain breakdown; the routing confusion matrix of
the hybrid mode (the question's domain against where it was routed); and, for each mode, the five worst
answers with their sources, so a reader sees why a number is low. Everything from the answers is escaped.
"""
from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["HEADLINE", "write_report"]

HEADLINE = ("contains_answer", "token_f1", "verified_citation", "citation_recall", "citation_precision",
            "unsupported_sentence", "format_ok", "label_accuracy", "repetition", "abstained_right",
            "abstained_wrongly", "routed_right", "hit_at_k")  # the metrics the table, the report and the plot show
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}
.worst{font-size:13px;margin:.5em 0 1em}.src{color:#666;font-size:12px}img{max-width:100%}"""


def _cell(interval: dict | None) -> str:
    if interval is None:
        return "&ndash;"
    spread = f"[{interval['low']:.2f}, {interval['high']:.2f}] n={interval['n']}"
    return f"{interval['value']:.2f} <span class=src>{spread}</span>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _chart(summary: dict) -> str:
    """Bars per headline metric by mode, intervals as error bars, as an inline PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in HEADLINE if any(summary["metrics"][mode][m] for mode in summary["modes"])]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(2.6 * max(len(metrics), 1), 3), dpi=90, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = [summary["metrics"][mode][metric] for mode in summary["modes"]]
        means = [v["value"] if v else 0.0 for v in values]
        errors = [[v["value"] - v["low"] if v else 0 for v in values],
                  [v["high"] - v["value"] if v else 0 for v in values]]
        ax.bar(summary["modes"], means, yerr=errors, capsize=3, color="#4a7ab7")
        ax.set_title(metric, fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.tick_params(axis="x", labelsize=7, rotation=45)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f'<img alt="metrics by mode" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _by_domain(rows: Sequence[dict], questions: dict[str, str | None], modes: Sequence[str]) -> str:
    domains = sorted({d for d in questions.values() if d})
    cells = []
    for d in domains:
        line = [html.escape(d)]
        for mode in modes:
            vals = [r["metrics"]["contains_answer"] for r in rows if r["mode"] == mode and questions[r["id"]] == d
                    and r["metrics"]["contains_answer"] is not None]
            line.append(f"{sum(vals) / len(vals):.2f} (n={len(vals)})" if vals else "&ndash;")
        cells.append(line)
    return _table(["domain: contains the answer", *modes], cells) if domains else "<p>No question names a domain.</p>"


def _confusion(rows: Sequence[dict], questions: dict[str, str | None]) -> str:
    pairs = Counter((questions[r["id"]], r["route"] or "abstained") for r in rows
                    if r["mode"] == "hybrid" and questions[r["id"]])
    if not pairs:
        return "<p>No hybrid answers to questions with a domain.</p>"
    truths = sorted({t for t, _ in pairs if t})
    routed = sorted({p for _, p in pairs})
    return _table(["question's domain \\ routed to", *routed],
                  [[html.escape(t), *(str(pairs.get((t, p), 0)) for p in routed)] for t in truths])


def _worst(rows: Sequence[dict], mode: str, k: int = 5) -> str:
    def badness(r: dict) -> tuple:
        m = r["metrics"]
        return (m["contains_answer"] if m["contains_answer"] is not None else 1.0,
                m["citation_recall"] if m["citation_recall"] is not None else 1.0, -m["repetition"])

    items = []
    for r in sorted((r for r in rows if r["mode"] == mode), key=badness)[:k]:
        sources = ", ".join(html.escape(s) for s in r["sources"]) or "none"
        items.append(f"<li><b>{html.escape(r['question'])}</b><br>{html.escape(r['answer'])}"
                     f"<div class=src>route {html.escape(str(r['route']))}; sources: {sources}</div></li>")
    return f"<h3>{html.escape(mode)}: the {k} worst answers</h3><ol class=worst>{''.join(items)}</ol>"


def _cards(cards: Sequence[dict]) -> str:
    """`loradex decide`'s cards: the recommendation, the six answers with their sources, the disagreements."""
    parts = ["<h2>Retrieval or adapter? (loradex decide)</h2>"]
    for c in cards:
        parts.append(f"<h3>{html.escape(c['capability'])}: {html.escape(c['recommendation'])}</h3>"
                     f"<p>{html.escape(c['description'])}</p>"
                     + "".join(f"<p>{html.escape(k)}: {html.escape(v)}</p>" for k, v in c["parts"].items()))
        answers = [[html.escape(q.replace("_", " ")), "&ndash;" if a["answer"] is None else ("yes" if a["answer"]
                    else "no"), html.escape(a["source"]), html.escape(a["evidence"])] for q, a in c["answers"].items()]
        parts.append(_table(["question", "answer", "from", "evidence"], answers))
        parts += [f"<p><b>disagreement:</b> {html.escape(d)}</p>" for d in c["disagreements"]]
        parts += [f"<p class=src>note: {html.escape(n)}</p>" for n in c["notes"]]
    return "\n".join(parts)


def write_report(rows: Sequence[dict[str, Any]], summary: dict[str, Any], questions: dict[str, str | None],
                 path: Path, title: str = "loradex eval", cards: Sequence[dict] = ()) -> Path:
    """Write the page to `path`; `questions` maps each question id to its domain (or None); `cards`, when
    given, are `loradex decide`'s (a section of their own). Returns `path`."""
    modes = summary["modes"]
    metric_rows = [[m, *(_cell(summary["metrics"][mode][m]) for mode in modes)] for m in HEADLINE
                   if any(summary["metrics"][mode][m] for mode in modes)]
    versus = [[mode, *(_cell(summary["versus"][mode].get(m)) for m in HEADLINE)] for mode in summary["versus"]]
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{summary['questions']} questions; mean [95% bootstrap interval] n=questions scored.</p>",
             _table(["metric", *modes], metric_rows), _chart(summary),
             "<h2>Each mode minus rag, on the same questions (paired bootstrap)</h2>",
             _table(["mode", *HEADLINE], versus) if versus else "<p>No rag mode to compare with.</p>",
             "<h2>By domain</h2>", _by_domain(rows, questions, modes),
             "<h2>Routing (hybrid)</h2>", _confusion(rows, questions),
             *([_cards(cards)] if cards else []),
             "<h2>Worst answers</h2>", *(_worst(rows, mode) for mode in modes), "</body></html>"]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
