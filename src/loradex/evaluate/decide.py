"""`loradex decide`: for each capability the project declares, retrieval, an adapter or both, decided by six
questions and checked against measurements instead of asserted.

The framework (loradex's seed; the same split as RAFT, Zhang et al. 2024: retrieval supplies the facts, tuning
how to use them): retrieval for what the model should know, an adapter for how it should think. Retrieval
answers "does it change over time?", "must answers cite sources?" and "is it factual lookup?"; an adapter
answers "is it format or style?", "is it domain reasoning?" and "is it pattern recognition?", given enough
examples to train on (about 500 is the seed's rule of thumb: `RULE_OF_THUMB`).

Each question's answer says where it came from: `stated` in loradex.yaml, `inferred` from the project (how
often the domain's documents changed across ingests, whether the domain has documents to cite), or `measured`
on the capability's evaluation questions, answered in base, rag, adapter and hybrid mode exactly as
`loradex eval` answers and caches them. The probes, each a mean or a paired bootstrap difference with its 95%
interval (`loradex.evaluate.stats`):

- retrieval sufficiency: rag's mean of each target metric (`targets`, e.g. contains_answer 0.8) against it;
- factual lookup: rag - base on containing the reference;
- adapter gain: hybrid - rag on format adherence (`format_ok`); on judgement questions (a `label`), hybrid's
  label accuracy - always giving the commonest label (a mode without the layout's label line cannot score);
- memorisation risk: adapter (no sources) - base on containing the reference: facts the adapter states from
  its weights go stale when the documents change;
- data sufficiency: the examples the domain's active adapter was trained on, against the rule of thumb.

A difference counts when its interval excludes 0. A stated answer that a measurement or an inference
contradicts is reported as a disagreement, in words.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import CapabilityConfig, SixQuestions
from ..errors import QueryError
from .metrics import normalize_answer
from .questions import Question, draw, load_questions
from .stats import bootstrap, paired_bootstrap

if TYPE_CHECKING:
    from ..project import Project

__all__ = ["MODES", "RULE_OF_THUMB", "SIX", "card", "decide", "document_changes", "probe", "trained_examples"]

SIX = tuple(SixQuestions.model_fields)
RETRIEVAL_SIDE = ("changes_over_time", "must_cite", "factual_lookup")
ADAPTER_SIDE = ("format_or_style", "domain_reasoning", "pattern_recognition")
RULE_OF_THUMB = 500  # training examples an adapter wants (the seed's rule of thumb, not a measurement)
MODES = ("base", "rag", "adapter", "hybrid")
WORDS = {  # question: (said yes, said no)
    "changes_over_time": ("it changes over time", "it does not change over time"),
    "must_cite": ("answers must cite sources", "answers need not cite sources"),
    "format_or_style": ("it is format or style", "it is not format or style"),
    "domain_reasoning": ("it is domain reasoning", "it is not domain reasoning"),
    "factual_lookup": ("it is factual lookup", "it is not factual lookup"),
    "pattern_recognition": ("it is pattern recognition", "it is not pattern recognition")}
_JUDGEMENT = ("the adapter's judgement beats always giving the commonest label",
              "the adapter's judgement does not beat always giving the commonest label", "majority", "hybrid",
              "label_accuracy", "label_gain")
MIN_MEASURED = 2  # questions a measured answer needs: the bootstrap interval of one is a point, never spanning 0
MEASURED = {  # question: (found yes, found no, from mode, to mode, metric, probe)
    "factual_lookup": ("sources raise containing the reference", "sources do not raise containing the reference",
                       "base", "rag", "contains_answer", "lookup_gain"),
    "format_or_style": ("the adapter raises format adherence", "the adapter does not raise format adherence",
                        "rag", "hybrid", "format_ok", "format_gain"),
    "domain_reasoning": _JUDGEMENT, "pattern_recognition": _JUDGEMENT}


def _iv(i: Any) -> dict | None:
    return None if i is None else i.to_dict()


def _show(i: dict | None) -> str:
    return "not measured" if i is None else f"{i['value']:+.2f} [{i['low']:+.2f}, {i['high']:+.2f}], n={i['n']}"


def _sign(i: dict | None) -> int | None:
    """+1 / -1 when the interval excludes 0 on that side, 0 when it includes 0, None when not measured."""
    if i is None:
        return None
    return 1 if i["low"] > 0 else -1 if i["high"] < 0 else 0


def document_changes(project: Project, domains: Sequence[str]) -> dict:
    """How the documents of `domains` (all when empty) changed across ingests, from the index's version history:
    `documents`, `changed` (documents with more than one version), `changes` (new versions in all) and
    `span_days` (first to last version seen)."""
    docs = [d for d in project.load_manifest().get("documents", {}).values()
            if not domains or d.get("domain") in domains]
    histories = [d.get("history") or [[d.get("version"), d.get("ingested_at")]] for d in docs]
    times = [t for h in histories for _, t in h if t is not None]
    return {"documents": len(docs), "changed": sum(len(h) > 1 for h in histories),
            "changes": sum(len(h) - 1 for h in histories),
            "span_days": round((max(times) - min(times)) / 86400, 1) if times else 0.0}


def trained_examples(project: Project, domains: Sequence[str]) -> dict[str, int | None]:
    """Per domain, the examples of its own (replay prompts not counted) its active adapter was trained on;
    None when it has no active adapter or the manifest does not say."""
    out: dict[str, int | None] = {}
    for d in domains:
        ref = project.registry.active(d)
        m = project.registry.manifest(ref).get("metrics", {}) if ref else {}
        n = m.get("train_examples", 0) + m.get("eval_examples", 0) - m.get("replay_examples", 0) if m else 0
        out[d] = n if n > 0 else None
    return out


def probe(rows: Sequence[dict], questions: Sequence[Question], targets: dict[str, float], seed: int = 0) -> dict:
    """The measured probes on `questions` from eval `rows` (see the module docstring). Judgement is measured
    against always answering the commonest label of the labelled questions (`majority`): a mode without the
    layout's label line scores 0, so rag is no baseline for it."""
    ids = {q.id for q in questions}
    by = {m: {r["id"]: r["metrics"] for r in rows if r["mode"] == m and r["id"] in ids} for m in MODES}
    labels = {q.id: normalize_answer(q.label) for q in questions if q.label}
    if labels:
        common = Counter(labels.values()).most_common(1)[0][0]
        by["majority"] = {i: {"label_accuracy": float(v == common)} for i, v in labels.items()}

    def diff(a: str, b: str, metric: str) -> dict | None:
        shared = [i for i in by.get(a, {}) if i in by.get(b, {})]
        return _iv(paired_bootstrap([by[a][i][metric] for i in shared], [by[b][i][metric] for i in shared],
                                    seed=seed)) if shared else None

    metrics = dict.fromkeys(("contains_answer", "format_ok", "label_accuracy", "verified_citation", *targets))
    means = {m: {k: _iv(bootstrap([v.get(k) for v in by[m].values()], seed=seed)) for k in metrics}
             for m in by if by[m]}
    rag = {k: means.get("rag", {}).get(k) for k in targets}
    return {"questions": len(ids), "rag": rag, "meets_targets": {k: _meets(rag[k], t) for k, t in targets.items()},
            "lookup_gain": diff("rag", "base", "contains_answer"), "format_gain": diff("hybrid", "rag", "format_ok"),
            "label_gain": diff("hybrid", "majority", "label_accuracy"),
            "majority_label": common if labels else None,
            "memorisation": diff("adapter", "base", "contains_answer"), "means": means}


def _meets(interval: dict | None, target: float) -> bool | None:
    return None if interval is None else interval["value"] >= target


def _mean(p: dict, mode: str, metric: str) -> str:
    i = p["means"].get(mode, {}).get(metric)
    return "-" if i is None else f"{i['value']:.2f}"


def _found(name: str, changes: dict, has_docs: bool, p: dict) -> tuple[bool | None, str, str]:
    """(answer, how it was found: inferred / measured / unknown, the evidence) for question `name`."""
    if name == "changes_over_time":
        if not changes["documents"]:
            return None, "unknown", "no documents of these domains are indexed"
        if not changes["changed"]:
            return None, "unknown", f"none of the {changes['documents']} documents has changed across ingests yet"
        return True, "inferred", (f"{changes['changed']} of {changes['documents']} documents changed across ingests "
                                  f"({changes['changes']} new versions over {changes['span_days']} days)")
    if name == "must_cite":
        return (True, "inferred", "the domains have documents: loradex answers from them with verified citations"
                ) if has_docs else (None, "unknown", "the domains have no documents to cite")
    yes, no, frm, to, metric, key = MEASURED[name]
    sign = _sign(p[key])
    if sign is None:
        return None, "unknown", f"not measured ({metric} is not defined on these questions)"
    found = yes if sign > 0 else f"{no} (the interval includes 0)" if sign == 0 else no
    evidence = (f"{found}: {frm} {_mean(p, frm, metric)} -> {to} {_mean(p, to, metric)}, "
                f"difference {_show(p[key])}")
    if p[key]["n"] < MIN_MEASURED:
        return None, "unknown", f"too few questions to tell (n={p[key]['n']}, at least {MIN_MEASURED}): {evidence}"
    return sign > 0, "measured", evidence


def _answers(cap: CapabilityConfig, changes: dict, has_docs: bool, p: dict) -> tuple[dict, list[str]]:
    """The six answers and the disagreements between what was stated and what was found."""
    stated = cap.answers.model_dump()
    answers, disagree = {}, []
    for name in SIX:
        value, how, evidence = _found(name, changes, has_docs, p)
        if stated[name] is None:
            answers[name] = {"answer": value, "source": how, "evidence": evidence}
            continue
        answers[name] = {"answer": stated[name], "source": "stated", "evidence": evidence}
        # an adapter-side "no" is not contradicted by an adapter that happens to help; everything else is
        contradicted = value is not None and value != stated[name] and (
            (how == "measured" and (stated[name] or name == "factual_lookup"))
            or (name == "changes_over_time" and value is True))
        if contradicted:
            disagree.append(f"you said {WORDS[name][0 if stated[name] else 1]}, but {evidence}")
    return answers, disagree


def card(name: str, cap: CapabilityConfig, changes: dict, examples: dict[str, int | None], has_docs: bool,
         p: dict) -> dict:
    """One capability's decision: the recommendation (`retrieval`, `adapter`, `both` or `base model`), which
    part does what, the six answers with their sources, the probes and the disagreements."""
    answers, disagree = _answers(cap, changes, has_docs, p)
    retrieval = [q for q in RETRIEVAL_SIDE if answers[q]["answer"]]
    adapter = [q for q in ADAPTER_SIDE if answers[q]["answer"]]
    notes = []
    known = [n for n in examples.values() if n is not None]
    if adapter and (not known or min(known) < RULE_OF_THUMB):
        notes.append(f"training examples: {', '.join(f'{d} {n}' for d, n in examples.items()) or 'none'} against "
                     f"the rule of thumb of about {RULE_OF_THUMB}; trust the measured gain, not the count")
    if _sign(p["memorisation"]) == 1:
        notes.append(f"the adapter states document facts with no sources ({_show(p['memorisation'])} over base): "
                     "they go stale when the documents change; keep facts in retrieval and train with sources")
    met = [k for k, ok in p["meets_targets"].items() if ok]
    if retrieval and met and len(met) == len(p["meets_targets"]):
        notes.append("retrieval alone already meets every target: " + ", ".join(
            f"{k} {p['rag'][k]['value']:.2f} >= {cap.targets[k]}" for k in met))
    kind = "both" if retrieval and adapter else "retrieval" if retrieval else "adapter" if adapter else "base model"
    parts = {}
    if retrieval:
        parts["retrieval"] = "what the model should know: " + ", ".join(WORDS[q][0] for q in retrieval)
    if adapter:
        parts["adapter"] = "how it should answer: " + ", ".join(WORDS[q][0] for q in adapter)
    return {"capability": name, "description": cap.description, "domains": cap.domains, "recommendation": kind,
            "parts": parts, "answers": answers, "probes": p, "disagreements": disagree, "notes": notes,
            "changes": changes, "examples": examples}


def capability_questions(project: Project, cap: CapabilityConfig) -> list[Question]:
    """The evaluation questions of a capability: `question_ids` of its file, else those of its domains, else all.
    Raises DataError for a missing or malformed file and QueryError for an id the file does not have."""
    if cap.questions is None:
        return []
    qs = load_questions(project.root / cap.questions, domains=set(project.config.domains),
                        formats=set(project.config.formats))
    if cap.question_ids:
        missing = sorted(set(cap.question_ids) - {q.id for q in qs})
        if missing:
            raise QueryError(f"{cap.questions} has no question with id {', '.join(missing)}")
        return [q for q in qs if q.id in cap.question_ids]
    return [q for q in qs if q.domain in cap.domains] if cap.domains else qs


def decide(project: Project, names: Sequence[str] = (), *, seed: int = 0, limit: int | None = None,
           progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], list[dict], list[Question]]:
    """The cards of the capabilities `names` (all when empty), the eval rows they were measured on (answered
    now or read from `loradex eval`'s cache) and the questions; `limit` draws that many questions of each
    capability with `seed` (a quick look: intervals on a few questions are wide). Raises QueryError for an
    unknown capability or when the project declares none."""
    from .run import evaluate

    caps = project.config.capabilities
    if not caps:
        raise QueryError("the project declares no capabilities: add `capabilities:` to loradex.yaml "
                         "(see README, 'Retrieval or adapter?')")
    unknown = [n for n in names if n not in caps]
    if unknown:
        raise QueryError(f"unknown capability {', '.join(unknown)}; the project has {', '.join(caps)}")
    chosen = {n: caps[n] for n in (names or caps)}
    questions = {n: draw(capability_questions(project, c), limit, seed) for n, c in chosen.items()}
    every = list({q.id + q.question: q for qs in questions.values() for q in qs}.values())
    rows = evaluate(project, every, MODES, progress=progress) if every else []
    return cards_from_rows(project, chosen, questions, rows, seed), rows, every


def cards_from_rows(project: Project, chosen: dict[str, CapabilityConfig], questions: dict[str, list[Question]],
                    rows: Sequence[dict], seed: int = 0) -> list[dict]:
    """A card per capability in `chosen` from already scored eval `rows`."""
    cards = []
    for n, cap in chosen.items():
        domains = cap.domains or list(project.config.domains)
        has_docs = any(project.config.domains[d].paths for d in domains if d in project.config.domains)
        p = probe(rows, questions[n], cap.targets, seed)
        cards.append(card(n, cap, document_changes(project, cap.domains), trained_examples(project, domains),
                          has_docs or not project.config.domains, p))
    return cards
