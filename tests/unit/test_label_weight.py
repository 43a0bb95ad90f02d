"""`label_weight`: the loss of the answer's label tokens (the domain format's `label` group) weighted against the
other answer tokens (loradex.adapters.batches), on a tiny random Llama."""
import json

import pytest
import torch
from typer.testing import CliRunner

from loradex.adapters.batches import batches, label_token_weights, weighted_loss
from loradex.adapters.data import encode_example, load_examples
from loradex.adapters.train import TrainSettings, train
from loradex.cli import app
from loradex.errors import ConfigError
from loradex.project import open_project
from loradex.testing import build_tiny_llama, tiny_tokenizer

from .test_adapters import EXAMPLES

LABEL = r"^Escalation: (YES|NO)\b"
FORMATS = f"formats:\n  claims_layout: {{pattern: '^Escalation: ', label: '{LABEL}'}}\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def _project(tmp_path, tiny_dir, fmt: bool = True):
    root = tmp_path / "proj"
    root.mkdir()
    domain = "  claims: {format: claims_layout}\n" if fmt else "  claims: {}\n"
    (root / "loradex.yaml").write_text(f"embedder: hashing\nmodel: {tiny_dir}\ndomains:\n{domain}"
                                       + (FORMATS if fmt else ""))
    (root / "claims.jsonl").write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    return open_project(root)


def test_only_the_label_group_tokens_get_the_weight():
    tok = tiny_tokenizer()
    msgs = ({"role": "user", "content": "A stolen bike?"},
            {"role": "assistant", "content": "Summary: call the police.\nEscalation: YES - fraud signs."})
    ids, labels = encode_example(tok, msgs, "Be brief.")
    w = label_token_weights(tok, ids, labels, LABEL, 5.0)
    start = next(i for i, y in enumerate(labels) if y != -100)
    assert w[:start] == [0.0] * start and set(w[start:]) == {1.0, 5.0}
    heavy = tok.decode([t for t, x in zip(ids, w) if x == 5.0])
    assert "YES" in heavy and "Summary" not in heavy and "fraud" not in heavy
    assert set(label_token_weights(tok, ids, labels, r"^Verdict: (\w+)", 5.0)[start:]) == {1.0}  # no match: all 1


def test_weighted_loss_is_the_usual_loss_at_weight_one_and_the_weighted_mean_otherwise(tiny_dir):
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    rows = []
    for e in EXAMPLES[:3]:
        ids, labels = encode_example(tok, tuple(e["messages"]), "Be brief.")
        rows.append((ids, labels, label_token_weights(tok, ids, labels, LABEL, 4.0)))
    ids, labels, mask, weights = next(batches(rows, 3, tok.pad_token_id, torch))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        ones = torch.where(weights > 0, 1.0, 0.0)
        assert torch.allclose(weighted_loss(out.logits, labels, ones, torch), out.loss, atol=1e-5)
        ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                               labels[:, 1:].reshape(-1), ignore_index=-100, reduction="none")
        w = weights[:, 1:].reshape(-1) * (labels[:, 1:].reshape(-1) != -100)
        assert (w == 4.0).sum() >= 3  # each example's label token(s)
        assert torch.allclose(weighted_loss(out.logits, labels, weights, torch), (ce * w).sum() / w.sum(), atol=1e-5)


def test_train_with_label_weight_takes_the_label_from_the_domain_format(tmp_path, tiny_dir):
    proj = _project(tmp_path, tiny_dir)
    examples, _ = load_examples(proj.root / "claims.jsonl")
    settings = TrainSettings(max_steps=2, batch_size=2, replay=0, context=False, label_weight=5.0)
    ref, metrics = train(proj, "claims", examples, settings)
    hp = proj.registry.manifest(ref)["hyperparameters"]
    assert hp["label_weight"] == 5.0 and hp["label_pattern"] == LABEL and metrics["steps"] == 2
    r = CliRunner().invoke(app, ["train", "claims", "--data", str(proj.root / "claims.jsonl"), "--label-weight", "3",
                                 "--no-context", "--prepare", str(tmp_path / "job"), "-p", str(proj.root)])
    assert r.exit_code == 0, r.output
    job = json.loads((tmp_path / "job/job.json").read_text())
    assert job["settings"]["label_weight"] == 3.0 and job["settings"]["label_pattern"] == LABEL


def test_label_weight_without_a_label_in_the_format_is_refused_saying_what_to_add(tmp_path, tiny_dir):
    proj = _project(tmp_path, tiny_dir, fmt=False)
    with pytest.raises(ConfigError, match=r"domain 'claims' has no format with a `label`.*leave --label-weight at 1"):
        train(proj, "claims", [], TrainSettings(max_steps=1, label_weight=2.0))
