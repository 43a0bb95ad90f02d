import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loradex.adapters.data import DataError, Example, encode_example, encode_examples, load_examples
from loradex.adapters.registry import AdapterError
from loradex.adapters.train import TrainSettings, train
from loradex.cli import app
from loradex.project import open_project
from loradex.testing import build_tiny_llama, tiny_tokenizer

EXAMPLES = [
    {"messages": [{"role": "user", "content": f"How do I report claim {i}?"},
                  {"role": "assistant", "content": f"Summary: call us.\nEscalation: NO - routine {i}."}]}
    for i in range(10)
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def project(tmp_path, tiny_dir):
    root = tmp_path / "proj"
    root.mkdir()
    domains = "domains:\n  claims: {}\n  billing: {}\n"
    (root / "loradex.yaml").write_text(f"embedder: hashing\nmodel: {tiny_dir}\n{domains}")
    data = root / "claims.jsonl"
    data.write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    return open_project(root)


def _write(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_three_formats_and_duplicates(tmp_path):
    path = _write(tmp_path, [
        json.dumps({"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]}),
        json.dumps({"instruction": "q2", "input": "ctx", "output": "a2"}),
        json.dumps({"prompt": "q3", "completion": "a3"}),
        json.dumps({"prompt": "q3", "completion": "a3"}),
    ])
    examples, dupes = load_examples(path)
    assert dupes == 1
    assert [e.question for e in examples] == ["q1", "q2\n\nctx", "q3"]
    assert [e.answer for e in examples] == ["a1", "a2", "a3"]


@pytest.mark.parametrize("line,message", [
    ("{not json", r"d.jsonl:2: not valid JSON"),
    (json.dumps({"prompt": "q"}), r"d.jsonl:2: missing field 'completion'"),
    (json.dumps({"prompt": "q", "completion": 3}), r"d.jsonl:2: field 'completion' must be a string"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}), r"d.jsonl:2: the last message must be"),
    (json.dumps({"messages": [{"role": "bot", "content": "q"}]}), r"d.jsonl:2: messages\[0\].role"),
    (json.dumps({"question": "q"}), r"d.jsonl:2: unknown record format"),
    (json.dumps({"prompt": "q", "completion": "  "}), r"d.jsonl:2: the answer is empty"),
])
def test_bad_records_name_line_and_field(tmp_path, line, message):
    path = _write(tmp_path, [json.dumps({"prompt": "ok", "completion": "fine"}), line])
    with pytest.raises(DataError, match=message):
        load_examples(path)


def test_an_empty_training_file_says_it_is_empty(tmp_path):
    for text in ("", "\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(text)
        with pytest.raises(DataError, match=r"empty.jsonl: no examples: the file is empty"):
            load_examples(path)


def test_loss_only_on_the_answer_with_the_serving_template():
    tok = tiny_tokenizer()
    ids, labels = encode_example(tok, ({"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "the answer"}), "SYS")
    answer = [t for t, y in zip(ids, labels) if y != -100]
    assert tok.decode(answer) == "the answer<|im_end|>"
    assert tok.decode(ids).startswith("<|im_start|>system\nSYS<|im_end|>")


def test_an_example_longer_than_max_seq_len_is_refused_never_cut():
    """Cutting the prompt's oldest tokens dropped the system message and source 1 from 78-80 of the 80 examples
    each shipped insurance adapter learned from (prompts of about 1,400 tokens, max_seq_len 1024)."""
    tok = tiny_tokenizer()
    short = Example(({"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}), 1)
    longer = [Example(({"role": "user", "content": "q " * 300}, {"role": "assistant", "content": "ok"}), n)
              for n in (4, 9)]
    rows = encode_examples(tok, [short], "SYS", 64)
    assert rows == [encode_example(tok, short.messages, "SYS")]
    with pytest.raises(DataError, match=r"2 of 3 training examples are longer than max_seq_len=64 tokens "
                                        r"\(the longest has \d+; lines 4, 9\): raise --max-seq-len to at least"):
        encode_examples(tok, [short, *longer], "SYS", 64)
    full = encode_examples(tok, longer, "SYS", 4096)
    assert tok.decode(full[0][0]).startswith("<|im_start|>system\nSYS")  # all of it, system message first


def test_train_registers_a_peft_adapter_with_manifest_and_curve(project):
    examples, _ = load_examples(project.root / "claims.jsonl")
    ref, metrics = train(project, "claims", examples, TrainSettings(max_steps=6, batch_size=2, lr=5e-3), activate=True)
    files = {p.name for p in ref.path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "loss_curve.png"} <= files
    manifest = project.registry.manifest(ref)
    assert manifest["version"] == ref.version and manifest["base_model"]["sha256"]
    assert manifest["hyperparameters"]["rank"] == 8 and manifest["training_data_sha256"]
    assert metrics["steps"] == 6 and metrics["best_eval_loss"] <= metrics["initial_eval_loss"]
    assert metrics["replay_examples"] == 2 and metrics["train_examples"] + metrics["eval_examples"] == 12  # 25% of 10
    assert project.registry.resolve("claims").version == ref.version  # active
    from peft import PeftConfig
    assert PeftConfig.from_pretrained(str(ref.path)).r == 8  # plain PEFT reads it


def test_activate_rollback_remove_and_import(project, tmp_path):
    examples, _ = load_examples(project.root / "claims.jsonl")
    reg = project.registry
    first, _ = train(project, "claims", examples, TrainSettings(max_steps=2, batch_size=2), activate=True)
    second, _ = train(project, "claims", examples, TrainSettings(max_steps=2, batch_size=2, lr=1e-2), activate=True)
    assert first.version != second.version
    with pytest.raises(AdapterError, match="is active"):
        reg.remove("claims", second.version[:10])
    assert reg.rollback("claims").version == first.version
    assert reg.rollback("claims") is None  # back to the bare base model
    with pytest.raises(AdapterError, match="no active adapter"):
        reg.resolve("claims")
    reg.activate("claims", second.version[:8])
    reg.remove("claims", first.version)
    assert [r["version"] for r in reg.versions()] == [second.version]
    # importing a plain PEFT folder (no manifest) under another domain
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(second.path / name, plain / name)
    imported = reg.register(plain, "billing", {})
    assert imported.version == second.version and reg.manifest(imported)["domain"] == "billing"


def _adapter_copy(project, tmp_path):
    examples, _ = load_examples(project.root / "claims.jsonl")
    ref, _ = train(project, "claims", examples, TrainSettings(max_steps=1, batch_size=2))
    bad = tmp_path / "bad"
    shutil.copytree(ref.path, bad)
    return bad


def test_a_registered_version_without_its_manifest_is_listed_invalid_and_never_served(project, tmp_path):
    """Deleting a version's manifest.json must not switch the hash check off (issue 20, kind 1): tampered
    weights are refused on activation and on load, and `adapters list` shows the version as invalid."""
    from loradex.pipeline import adapter_for

    examples, _ = load_examples(project.root / "claims.jsonl")
    ref, _ = train(project, "claims", examples, TrainSettings(max_steps=1, batch_size=2, replay=0))
    reg = project.registry
    assert sorted(p.name for p in ref.path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                           "loss_curve.png", "manifest.json"]  # nothing else copied
    (ref.path / "manifest.json").unlink()
    rows = reg.versions()
    assert rows[0]["label"] == ref.label and "manifest.json is missing" in rows[0]["invalid"]
    r = CliRunner().invoke(app, ["adapters", "list", "-p", str(project.root)])
    assert r.exit_code == 0 and "invalid" in r.stdout and "import the adapter again" in r.stderr
    with pytest.raises(AdapterError, match="manifest.json is missing"):
        reg.activate("claims", ref.version)
    data = bytearray((ref.path / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ref.path / "adapter_model.safetensors").write_bytes(bytes(data))
    (ref.path / "manifest.json").write_text(json.dumps({"version": ref.version}))  # a forged manifest
    with pytest.raises(AdapterError, match="files do not match the manifest's hash"):
        reg.activate("claims", ref.version)
    with pytest.raises(AdapterError, match="files do not match the manifest's hash"):
        adapter_for(project, "claims", ref.version)
    (ref.path / "manifest.json").write_text(json.dumps({"version": "ab" * 32}))  # naming another version
    with pytest.raises(AdapterError, match="its manifest names another version"):
        reg.activate("claims", ref.version)
    assert ref.label not in project.engine.loaded_adapters()


def test_refusals(project, tmp_path, tiny_dir):
    reg = project.registry
    bad = _adapter_copy(project, tmp_path)
    (bad / "extra.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError, match="refusing pickle"):
        reg.register(bad, "claims", {})
    (bad / "extra.bin").unlink()
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "base_model": {"name": "other", "sha256": "ab" * 32}}))
    with pytest.raises(AdapterError, match="trained for base 'other'"):
        reg.register(bad, "claims", {})
    (bad / "manifest.json").write_text(json.dumps(manifest))
    data = bytearray((bad / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="do not match the manifest"):
        reg.register(bad, "claims", {})
    with pytest.raises(AdapterError, match="invalid adapter name"):
        reg.register(bad, "../escape", {})


def test_adapter_for_another_model_shape_is_refused(project, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(
        tmp_path / "o")
    with pytest.raises(AdapterError, match="the base layer needs"):
        project.registry.register(tmp_path / "o", "claims", {})


def test_cli_train_list_activate_rollback(project):
    runner = CliRunner()
    p = str(project.root)
    r = runner.invoke(app, ["train", "claims", "--data", str(project.root / "claims.jsonl"), "--max-steps", "2",
                            "--batch-size", "2", "-p", p, "--json"])
    assert r.exit_code == 0, r.output
    label = json.loads(r.stdout)["adapter"]
    version = json.loads(r.stdout)["version"]
    assert label.startswith("claims@sha256:")
    assert json.loads(runner.invoke(app, ["adapters", "activate", "claims", version[:12], "-p", p, "--json"]).stdout) \
        == {"active": label}
    rows = json.loads(runner.invoke(app, ["adapters", "list", "-p", p, "--json"]).stdout)
    assert rows[0]["active"] and rows[0]["label"] == label
    assert json.loads(runner.invoke(app, ["adapters", "rollback", "claims", "-p", p, "--json"]).stdout) \
        == {"active": None}
    # a version exported and imported into another domain keeps its training record
    out = project.root / "exported"
    r = runner.invoke(app, ["adapters", "export", "claims", str(out), "--version", version[:8], "-p", p, "--json"])
    assert r.exit_code == 0 and (out / "adapter_model.safetensors").is_file() and (out / "manifest.json").is_file()
    assert runner.invoke(app, ["adapters", "export", "claims", str(out), "--version", version, "-p", p]).exit_code == 1
    # a domain the project does not declare is refused, naming those it has, and nothing is registered
    r = runner.invoke(app, ["adapters", "import", str(out), "--domain", "legal", "-p", p])
    assert r.exit_code != 0 and "unknown domain 'legal'; the project has: claims, billing" in r.output
    assert not any(v["label"].startswith("legal@") for v in project.registry.versions())
    r = runner.invoke(app, ["adapters", "activate", "legal", version[:12], "-p", p])
    assert r.exit_code != 0 and "unknown domain 'legal'" in r.output
    r = runner.invoke(app, ["adapters", "import", str(out), "--domain", "billing", "--activate", "-p", p, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"imported": f"billing@sha256:{version[:12]}", "active": True}
    ref = project.registry.resolve("billing")
    manifest = project.registry.manifest(ref)
    assert manifest["metrics"]["steps"] == 2 and manifest["hyperparameters"]["rank"] == 8 and manifest["imported_from"]
    r = runner.invoke(app, ["adapters", "activate", "claims", "ffff", "-p", p])
    assert r.exit_code == 1 and "no adapter version" in r.stderr
    bad = project.root / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    r = runner.invoke(app, ["train", "claims", "--data", str(bad), "-p", p])
    assert r.exit_code == 1 and "bad.jsonl:1: missing field 'completion'" in r.stderr


def test_cli_train_target_modules(project):
    """`--target-modules` takes a comma-separated list; a name that is no linear layer is refused by name."""
    runner = CliRunner()
    p = str(project.root)
    r = runner.invoke(app, ["train", "claims", "--data", str(project.root / "claims.jsonl"), "--max-steps", "1",
                            "--batch-size", "2", "--replay", "0", "--target-modules", "q_proj, gate_proj,down_proj",
                            "-p", p, "--json"])
    assert r.exit_code == 0, r.output
    ref = project.registry.resolve("claims", json.loads(r.stdout)["version"])
    assert project.registry.manifest(ref)["hyperparameters"]["target_modules"] == ["q_proj", "gate_proj", "down_proj"]
    config = json.loads((ref.path / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "gate_proj", "down_proj"}
    r = runner.invoke(app, ["train", "claims", "--data", str(project.root / "claims.jsonl"), "--max-steps", "1",
                            "--replay", "0", "--target-modules", "q_proj,query", "-p", p])
    assert r.exit_code == 1 and "query are not linear layers" in r.stderr and "up_proj" in r.stderr
    r = runner.invoke(app, ["train", "claims", "--data", str(project.root / "claims.jsonl"), "--target-modules", " ,",
                            "-p", p])
    assert r.exit_code == 2 and "--target-modules" in r.output


def test_training_resumes_after_kill(project):
    examples = [{"prompt": f"question number {i} " * 8, "completion": f"answer {i} " * 8} for i in range(40)]
    data = project.root / "long.jsonl"
    data.write_text("\n".join(json.dumps(e) for e in examples) + "\n")
    total = 45 * 5  # 40 examples + 10 replay (25%), 5 held out; batch 1, 5 epochs
    cmd = [sys.executable, "-m", "loradex.cli", "train", "claims", "--data", str(data), "--epochs", "5",
           "--batch-size", "1", "--save-every", "5", "-p", str(project.root), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state_files = list((project.root / ".loradex/train").glob("claims-*/checkpoint/state.json"))
    deadline = time.time() + 120
    while time.time() < deadline:
        state_files = list((project.root / ".loradex/train").glob("claims-*/checkpoint/state.json"))
        if state_files and json.loads(state_files[0].read_text())["step"] >= 10:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state_files, "no checkpoint was written before the kill"
    killed_at = json.loads(state_files[0].read_text())["step"]
    assert killed_at < total  # it really was interrupted
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)["metrics"]
    assert metrics["resumed_from_step"] >= killed_at >= 10
    assert metrics["steps"] == total or metrics["stopped_early"]


def test_replay_targets_are_the_base_models_own_answers_and_cached(project, tmp_path):
    from loradex.adapters.replay import PROMPTS, base_answers, mix_replay
    from loradex.engine import GenerationRequest
    from loradex.engine.local import LocalEngine

    engine = LocalEngine(project.base_model_dir)
    prompts = PROMPTS[:3]
    pairs = base_answers(engine, "SYS", tmp_path / "cache", "sha", prompts=prompts, max_new_tokens=8)
    direct = engine.generate([GenerationRequest(({"role": "system", "content": "SYS"},
                                                 {"role": "user", "content": prompts[0]}), 8)])
    assert pairs[0] == (prompts[0], direct[0].text.strip())
    calls = []
    cached = base_answers(None, "SYS", tmp_path / "cache", "sha", prompts=prompts, max_new_tokens=8,
                          engine_factory=lambda: calls.append(1))
    assert cached == pairs and not calls  # second call: from the cache, no model loaded
    examples, _ = load_examples(project.root / "claims.jsonl")
    mixed = mix_replay(examples, pairs, 0.2)
    assert mixed[:10] == examples and len(mixed) == 12
    assert {m.question for m in mixed[10:]} <= set(prompts) and len({m.line for m in mixed}) == 12
    assert mix_replay(examples, pairs, 0.0) == examples


def test_a_run_that_never_beats_its_untrained_adapter_says_so(project):
    """A second new user registered a version whose LoRA B weights were all zero, with no word of it."""
    r = CliRunner().invoke(app, ["train", "claims", "--data", str(project.root / "claims.jsonl"), "--max-steps", "1",
                                 "--batch-size", "2", "--lr", "1e-12", "--replay", "0", "-p", str(project.root)])
    assert r.exit_code == 0, r.output
    assert "best at step 0" in r.stdout and "answers as the base model does" in r.stderr


def test_replay_answers_only_the_prompts_a_run_needs_and_caches_each(tmp_path):
    """A second new user's first `train --max-steps 2` spent 19 minutes answering all 60 replay prompts to use 3."""
    from loradex.adapters.replay import PROMPTS, base_answers, replay_prompts
    from loradex.engine.echo import EchoEngine

    asked: list[str] = []

    class Counting(EchoEngine):
        def generate(self, requests, cancel=()):
            asked.extend(r.messages[-1]["content"] for r in requests)
            return super().generate(requests, cancel)

    three = replay_prompts(12, 0.25, seed=0)
    assert len(three) == 3 and set(three) <= set(PROMPTS) and replay_prompts(12, 0.0) == ()
    assert replay_prompts(1000, 0.25) == tuple(replay_prompts(1000, 0.25)) and len(replay_prompts(1000, 0.25)) == 60
    pairs = base_answers(Counting(reply="An answer."), "SYS", tmp_path, "sha", prompts=three)
    assert asked == list(three) and pairs == [(p, "An answer.") for p in three]
    five = three + tuple(p for p in PROMPTS if p not in three)[:2]
    pairs = base_answers(Counting(reply="Another."), "SYS", tmp_path, "sha", prompts=five)
    assert asked == [*three, *five[3:]]  # the cached three are not asked again
    assert [a for _, a in pairs] == ["An answer."] * 3 + ["Another."] * 2


def test_replay_pool_is_disjoint_from_the_forgetting_benchmark():
    import ast

    from loradex.adapters.replay import PROMPTS

    repo = Path(__file__).resolve().parents[2]
    tree = ast.parse((repo / "benchmarks/adapter_effect.py").read_text())
    general = next(n.value for n in ast.walk(tree)
                   if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "GENERAL")
    scored = {q.lower() for q, _ in ast.literal_eval(general)}
    assert len(scored) == 30 and not scored & {p.lower() for p in PROMPTS} and len(set(PROMPTS)) == len(PROMPTS)
