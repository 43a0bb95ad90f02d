"""Train, register, activate, roll back and import LoRA adapters on the packaged SmolLM2 (a few steps)."""
import json
import shutil
import subprocess
import sys

import pytest

from loradex.engine import GenerationRequest
from loradex.project import open_project

from ..conftest import REPO, copy_example

pytestmark = pytest.mark.slow


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "loradex.cli", *map(str, args), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_train_activate_rollback_import_and_serve(tmp_path):
    root = copy_example(tmp_path / "insurance")
    data = REPO / "examples/insurance/train/claims.jsonl"
    quick = ("--max-steps", "2", "--batch-size", "2", "--max-seq-len", "512", "--no-context")
    first = _cli("train", "claims", "--data", data, *quick, "--activate", "-p", root)
    assert first["active"] and first["metrics"]["steps"] == 2
    second = _cli("train", "claims", "--data", data, *quick, "--lr", "1e-3", "-p", root)
    assert second["version"] != first["version"]
    assert _cli("adapters", "activate", "claims", second["version"][:12], "-p", root) == {"active": second["adapter"]}
    assert _cli("adapters", "rollback", "claims", "-p", root) == {"active": first["adapter"]}
    rows = _cli("adapters", "list", "-p", root)
    assert {r["version"] for r in rows} == {first["version"], second["version"]}
    assert all(r["size_bytes"] < 10_000_000 for r in rows)  # megabytes, not the model

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(root / ".loradex/adapters/claims" / second["version"] / name, plain / name)
    assert _cli("adapters", "import", plain, "--domain", "billing", "-p", root)["imported"].startswith("billing@")

    proj = open_project(root)
    ref = proj.registry.resolve("claims")
    engine = proj.engine
    engine.load_adapter("claims", ref.path)
    msgs = ({"role": "user", "content": "My car was stolen last night. What do I do?"},)
    tuned = engine.generate([GenerationRequest(msgs, 24, adapter="claims")])[0]
    assert tuned.text and tuned.completion_tokens <= 24
