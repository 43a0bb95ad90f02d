from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def write_project(root: Path, files: dict[str, str | bytes], config: str = "") -> Path:
    """A project using the weightless hashing embedder, with the given files under it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "loradex.yaml").write_text("embedder: hashing\nsources: [docs]\n" + textwrap.dedent(config))
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content), encoding="utf-8")
    return root


def copy_example(root: Path) -> Path:
    """A private copy of examples/insurance (documents and config, no index) under `root`."""
    example = REPO / "examples" / "insurance"
    shutil.copytree(example / "docs", root / "docs")
    shutil.copytree(example / "routing", root / "routing")
    shutil.copy(example / "loradex.yaml", root / "loradex.yaml")
    return root


@pytest.fixture
def project_dir(tmp_path):
    def make(files: dict[str, str | bytes], config: str = "") -> Path:
        return write_project(tmp_path / "proj", files, config)
    return make
