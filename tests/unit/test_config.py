import pytest

from loradex.config import ConfigError, ProjectConfig, load_config
from loradex.project import init_project, open_project


def test_starter_file_loads_with_defaults(tmp_path):
    path = init_project(tmp_path / "p", "demo")
    cfg = load_config(path)
    assert cfg == ProjectConfig(name="demo")
    assert (tmp_path / "p" / "docs").is_dir()
    with pytest.raises(ConfigError, match="already exists"):
        init_project(tmp_path / "p")


def test_unknown_field_names_field_and_file(tmp_path):
    path = tmp_path / "loradex.yaml"
    path.write_text("retrieval:\n  kk: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "retrieval.kk" in str(e.value)
    path.write_text("retreival:\n  k: 3\n")  # a misspelt section gets the closest known field
    with pytest.raises(ConfigError, match=r"retreival: Extra inputs are not permitted \(did you mean 'retrieval'\?\)"):
        load_config(path)
    # the closest field of the section the typo sits in, not of another one ('url' is no store field)
    path.write_text("store:\n  uir: x\nchunking:\n  widow: 1\ndomains:\n  claims: {pathz: []}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "store.uir: Extra inputs are not permitted (did you mean 'uri'?)" in str(e.value)
    assert "domains.claims.pathz: Extra inputs are not permitted (did you mean 'paths'?)" in str(e.value)
    assert "chunking.widow: Extra inputs are not permitted\n" in str(e.value) + "\n"  # 'window' is answer's


def test_wrong_type_names_nested_field(tmp_path):
    path = tmp_path / "loradex.yaml"
    path.write_text("domains:\n  claims:\n    paths: 7\n")
    with pytest.raises(ConfigError, match=r"domains\.claims\.paths"):
        load_config(path)


def test_out_of_range_and_bad_yaml(tmp_path):
    path = tmp_path / "loradex.yaml"
    path.write_text("chunking:\n  max_tokens: 3\n")
    with pytest.raises(ConfigError, match="chunking.max_tokens"):
        load_config(path)
    path.write_text("name: x\ndomains:\n  a: [\n  b: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    # the file, the place and the problem; not PyYAML's "<unicode string>" (a new user saw that)
    assert str(e.value) == f"{path}: not valid YAML at line 5, column 1: expected ',' or ']', but got '<stream end>'"


def test_missing_project_says_how_to_create_one(tmp_path):
    with pytest.raises(ConfigError, match="loradex init"):
        open_project(tmp_path)


def test_metadata_by_globs(project_dir):
    root = project_dir({}, """
        domains:
          claims: {paths: ["docs/claims/**"], groups: [staff]}
          billing: {paths: ["docs/billing/**"]}
        metadata:
          - {paths: ["docs/**/*motor*"], tags: [motor]}
          - {paths: ["docs/claims/*"], tags: [claims-desk], groups: [staff, audit]}
    """)
    proj = open_project(root)
    meta = proj.meta_for("docs/claims/motor-accident.md")
    assert meta.domain == "claims"
    assert meta.tags == ("motor", "claims-desk")
    assert meta.groups == ("staff", "audit")
    assert proj.meta_for("docs/billing/fees.md").domain == "billing"
    assert proj.meta_for("docs/other.md").domain is None


def test_a_config_not_utf8_or_nested_too_deeply_names_the_file(tmp_path):
    """Issue 20, kind 5: these gave a traceback, or an error that named no file."""
    path = tmp_path / "loradex.yaml"
    path.write_bytes(b"embedder: hashing\nname: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"{path}: not UTF-8 text \(byte 0xe9 at offset 27\)"):
        load_config(path)
    path.write_text("metadata: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=rf"{path}: nested too deeply"):
        load_config(path)
