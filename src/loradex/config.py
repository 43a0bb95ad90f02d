"""The project file `loradex.yaml` as pydantic models: load, validate, write the starter file.

Owns the schema and its error messages only; it does not touch the index or the models.
"""
from __future__ import annotations

import re
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .backends import ENGINES, STORES
from .errors import ConfigError

__all__ = ["CONFIG_NAME", "STATE_DIR", "ConfigError", "ProjectConfig", "load_config"]

CONFIG_NAME = "loradex.yaml"
STATE_DIR = ".loradex"


def _known(table: dict[str, str], what: str):
    def check(value: str) -> str:
        if value not in table:
            raise ValueError(f"unknown {what} {value!r}; known: {', '.join(sorted(table))}")
        return value
    return check


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChunkingConfig(_Model):
    max_tokens: int = Field(220, ge=16, le=2048, description="Upper bound of a chunk, in embedder tokens.")


class RetrievalConfig(_Model):
    k: int = Field(5, ge=1, le=1000, description="Hits returned by a search.")
    mode: Literal["hybrid", "dense", "bm25"] = Field("hybrid", description="Which retrievers run.")
    candidates: int = Field(50, ge=1, le=5000, description="Hits each retriever contributes before fusion.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant: 1 / (rrf_k + rank).")
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense ranking in the fusion.")
    bm25_weight: float = Field(1.0, ge=0, description="Weight of the BM25 ranking in the fusion.")


NO_REPEAT_NGRAM = 8  # measured (benchmarks/no_repeat_ngram.py, rag and hybrid): loops 0.45 -> 0.05 rag, none worse
WINDOW = 1  # measured (benchmarks/passage_window.py): answer in the sources 0.90 -> 0.95 example, 0.64 -> 0.71 PolicyQA


class AnswerConfig(_Model):
    k: int = Field(4, ge=1, le=20, description="Passages put in the prompt as numbered sources.")
    window: int = Field(WINDOW, ge=0, le=5, description=(
        "Neighbouring chunks of the same document added on each side of a retrieved one (0: none)."))
    passage_chars: int = Field(1600, ge=200, le=20000, description="Longest passage given to the model.")
    max_new_tokens: int = Field(160, ge=1, le=4096, description="Token budget of an answer.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 is greedy decoding.")
    no_repeat_ngram: int = Field(NO_REPEAT_NGRAM, ge=0, le=64, description=(
        "No n tokens in a row twice in an answer (0: off; copying the sources stays allowed). Sentences "
        "said again are removed from every answer either way."))
    attribute: bool = Field(True, description=(
        "Give sentences the model left uncited the source that supports them (marked 'added')."))
    search_support: int = Field(3, ge=0, le=10, description=(
        "With attribute on: up to this many sentences that no source in the prompt supports are searched for "
        "in the same documents after generation; a passage that supports one is added as a source and cited "
        "(marked 'added', the source 'not in the prompt'). 0: off. Post-hoc research as in RARR (Gao et al., "
        "2023), without its rewriting."))
    unsupported: Literal["flag", "drop"] = Field("flag", description=(
        "A sentence no source supports after the checks above: flag (shown, listed as unsupported) or drop "
        "(removed from the answer and listed as removed; a labelled line left empty reads 'none stated')."))
    min_dense_score: float = Field(0.3, ge=-1, le=1, description=(
        "Abstain (say the documents do not cover it) when no retrieved passage has a cosine similarity "
        "to the question of at least this."))

    @field_validator("no_repeat_ngram")
    @classmethod
    def _not_one(cls, value: int) -> int:
        if value == 1:
            raise ValueError("1 would forbid every token already written: use 0 (off) or at least 2")
        return value


class StoreConfig(_Model):
    backend: str = Field("lancedb", description="Store backend; 'lancedb' is embedded and needs no server.")
    uri: str | None = Field(None, description=(
        "Where the store lives: default .loradex/lancedb in the project; for 'pgvector' a PostgreSQL URL "
        "without a password, postgresql://user@host:5432/database."))
    password_env: str | None = Field(None, description=(
        "The environment variable holding the store server's password ('pgvector'); never write it in this file."))

    _backend = field_validator("backend")(_known(STORES, "store backend"))

    @field_validator("uri")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        in_userinfo = re.match(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]+@", value or "", re.IGNORECASE)
        if in_userinfo or re.search(r"(^|[?&\s])password\s*=", value or "", re.IGNORECASE):
            raise ValueError("the URL holds a password: remove it and name the environment variable that holds "
                             "it in store.password_env")
        return value


class OrtConfig(_Model):
    """`engine: ort`: onnxruntime-genai on this machine (`loradex.engine.ort`)."""

    precision: Literal["fp32", "int8"] = Field("fp32", description=(
        "fp32 gives the transformers engine's greedy tokens; int8 quantises the base weights (LoRA stays float)."))


class VllmConfig(_Model):
    """`engine: vllm`: generation goes to a vLLM server's OpenAI API (`model=<adapter name>`)."""

    url: str | None = Field(None, description="A running vLLM server, e.g. http://gpu-box:8000 (no /v1).")
    managed: bool = Field(False, description="Start vLLM here as a child process (scripts/vllm-env.sh makes it).")
    python: str = Field("~/.cache/loradex/vllm-env/bin/python", description="Managed: the vLLM environment's python.")
    port: int = Field(8011, ge=1, le=65535, description="Managed: the port on 127.0.0.1.")
    model: str | None = Field(None, description="The base model's served name (default: the server's only base).")
    api_key_env: str | None = Field(None, description="The environment variable holding the server's API key.")
    max_lora_rank: int = Field(16, ge=1, le=512, description="The server's --max-lora-rank: higher ranks are refused.")
    max_loras: int = Field(4, ge=1, description="Managed: adapters in one batch (--max-loras).")
    dtype: str = Field("float32", description="Managed: --dtype (float32 gives the local engine's tokens).")
    max_model_len: int = Field(2048, ge=128, description="Managed: --max-model-len, prompt plus answer in tokens.")
    kv_cache_gb: float = Field(2.0, gt=0, description="Managed on a CPU: VLLM_CPU_KVCACHE_SPACE in GiB.")
    extra_args: list[str] = Field(default_factory=list, description="Managed: more `vllm serve` arguments.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds one request may take before it is retried.")
    retries: int = Field(2, ge=0, le=10, description="Retries (exponential backoff) of a request that failed to "
                         "connect, timed out or got 408/429/5xx.")
    start_timeout_s: float = Field(900.0, gt=0, description="Managed: seconds to wait for /health.")
    no_repeat_ngram: bool | None = Field(None, description=(
        "Whether the server runs loradex's n-gram blocking (`--logits-processors loradex_ngram:NoRepeatNgram`); "
        "managed servers always do. Default: managed only."))

    @model_validator(mode="after")
    def _one_server(self) -> VllmConfig:
        if self.managed == (self.url is not None):
            raise ValueError("give exactly one of vllm.url (a running server) and vllm.managed: true")
        return self


class FormatCheck(_Model):
    sections: list[str] = Field(default_factory=list, description=(
        "Headers each answer must have at the start of a line, in this order (e.g. 'Summary:')."))
    pattern: str | None = Field(None, description="A regular expression some line must match.")
    max_chars: int | None = Field(None, ge=1, description="The longest acceptable answer, in characters.")
    label: str | None = Field(None, description=(
        "A regular expression whose first group is the answer's label, scored against a question's `label` "
        "(e.g. '^Escalation: (YES|NO)'); without it the label is the answer's first word."))

    @field_validator("pattern", "label")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
        return value

    @field_validator("label")
    @classmethod
    def _has_group(cls, value: str | None) -> str | None:
        if value is not None and re.compile(value).groups < 1:
            raise ValueError("needs a group, ( ), around the label")
        return value


class DomainConfig(_Model):
    description: str = Field("", description="What questions this domain answers.")
    paths: list[str] = Field(default_factory=list, description="Globs (relative to the project) of its documents.")
    tags: list[str] = Field(default_factory=list, description="Tags given to every document of the domain.")
    groups: list[str] = Field(default_factory=list, description="Access groups of every document of the domain.")
    examples: list[str] = Field(default_factory=list, description="Example queries the router learns this domain from.")
    examples_file: str | None = Field(None, description="File of example queries, one a line "
                                                        "(relative to the project).")
    format: str | None = Field(None, description="The name of a check in `formats` its answers must pass.")


class RoutingConfig(_Model):
    method: Literal["linear+nearest", "linear", "centroid", "nearest"] = Field("linear+nearest", description=(
        "How queries are scored against the domains' examples (linear+nearest was best with few examples on "
        "CLINC150's validation split: benchmarks/routing_clinc150.py)."))
    target_recall: float = Field(0.95, gt=0, le=1, description=(
        "Share of the example queries (each scored leave-one-out) that must pass the out-of-scope threshold."))
    min_probability: float = Field(0.0, ge=0, le=1, description=(
        "Abstain as ambiguous when the best domain's calibrated probability is under this (0: never)."))
    negatives: bool = Field(True, description=(
        "Use loradex's general off-topic queries (not from any evaluation set) to tell off-topic queries apart."))
    negatives_file: str | None = Field(None, description=(
        "Your own off-topic queries, one a line (relative to the project), used beside loradex's."))
    documents: bool = Field(True, description=(
        "Let each domain's indexed passages (up to 300) and description widen what counts as in scope."))


class AdaptersConfig(_Model):
    max_loaded: int = Field(4, ge=1, le=256,
                            description="Adapters kept loaded on the base model (least recently used go).")


class ApiKeyConfig(_Model):
    name: str = Field(..., description="Who the key belongs to (shown in metrics, never the key itself).")
    key: str | None = Field(None, description="The key itself (prefer key_env, so secrets stay out of the file).")
    key_env: str | None = Field(None, description="Environment variable that holds the key.")
    groups: list[str] = Field(default_factory=list, description="Access groups: which documents' passages it may see.")
    admin: bool = Field(False, description="May call /admin endpoints and sees every document.")


class ServerConfig(_Model):
    host: str = Field("127.0.0.1", description="Address `loradex serve` listens on.")
    port: int = Field(8000, ge=1, le=65535)
    max_batch: int = Field(8, ge=1, le=256, description="Requests generated together in one batch.")
    batch_window_ms: float = Field(10.0, ge=0, le=1000, description="How long a batch waits for more requests.")
    max_queue: int = Field(64, ge=1, description="Waiting requests before answering 429.")
    max_input_chars: int = Field(8000, ge=1, description="Longest question accepted.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted.")
    keys: list[ApiKeyConfig] = Field(default_factory=list,
                                     description="API keys (also LORADEX_API_KEY, LORADEX_ADMIN_KEY).")


class MetadataRule(_Model):
    paths: list[str] = Field(..., description="Globs (relative to the project) the rule applies to.")
    tags: list[str] = Field(default_factory=list, description="Tags added to matching documents.")
    groups: list[str] = Field(default_factory=list, description="Access groups added to matching documents.")


class SixQuestions(_Model):
    """The decision framework's six questions about a capability (`loradex decide`); None: not stated, so
    loradex infers or measures it where it can."""

    changes_over_time: bool | None = Field(None, description="Does the knowledge change over time?")
    must_cite: bool | None = Field(None, description="Must answers cite their sources?")
    format_or_style: bool | None = Field(None, description="Is it about format, tone or terminology?")
    domain_reasoning: bool | None = Field(None, description="Is it domain reasoning or judgement (e.g. escalation)?")
    factual_lookup: bool | None = Field(None, description="Is it looking facts up?")
    pattern_recognition: bool | None = Field(None, description="Is it recognising patterns across many cases?")


class CapabilityConfig(_Model):
    description: str = Field("", description="What the assistant must be able to do.")
    domains: list[str] = Field(default_factory=list, description="The domains it concerns (none: all).")
    questions: str | None = Field(None, description=(
        "Evaluation questions that exercise it: a JSONL file (relative to the project; see `loradex eval`)."))
    question_ids: list[str] = Field(default_factory=list, description=(
        "Only these questions of the file (default: those of its domains, or all when it names none)."))
    answers: SixQuestions = Field(default_factory=SixQuestions)
    targets: dict[str, float] = Field(default_factory=lambda: {"contains_answer": 0.8, "verified_citation": 0.8},
                                      description="What retrieval alone must reach (eval metric: mean) to suffice.")


class ProjectConfig(_Model):
    name: str = Field("loradex-project", description="Project name, shown in outputs.")
    embedder: str = Field("all-minilm-l6-v2", description="Embedder name or local model folder.")
    model: str = Field("smollm2-135m", description="Base model: a packaged name, a local HF folder or a .gguf file.")
    engine: str = Field("ort", description=(
        "'ort' runs the model here on onnxruntime-genai (see `ort`; the transformers engine where it cannot); "
        "'local' runs it here on transformers; 'vllm' sends it to vLLM (see `vllm`); 'echo' is a test fake."))
    vllm: VllmConfig | None = Field(None, description="The vLLM server for `engine: vllm`.")
    ort: OrtConfig = Field(default_factory=OrtConfig)
    sources: list[str] = Field(default_factory=lambda: ["docs"],
                               description="Folders or files `loradex ingest` reads when given no path.")
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    domains: dict[str, DomainConfig] = Field(default_factory=dict, description="Domains by name.")
    formats: dict[str, FormatCheck] = Field(default_factory=dict, description=(
        "Format checks by name, for `loradex eval` (a domain's `format`, or a question's)."))
    metadata: list[MetadataRule] = Field(default_factory=list, description="Extra tags and groups by path glob.")
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    adapters: AdaptersConfig = Field(default_factory=AdaptersConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    capabilities: dict[str, CapabilityConfig] = Field(default_factory=dict, description=(
        "Capabilities by name, for `loradex decide`: retrieval, an adapter, or both."))

    _engine = field_validator("engine")(_known(ENGINES, "engine"))

    @model_validator(mode="after")
    def _vllm_section(self) -> ProjectConfig:
        if self.engine == "vllm" and self.vllm is None:
            raise ValueError("engine: vllm needs a `vllm:` section with `url:` or `managed: true`")
        return self

    @model_validator(mode="after")
    def _formats_exist(self) -> ProjectConfig:
        for name, domain in self.domains.items():
            if domain.format is not None and domain.format not in self.formats:
                raise ValueError(f"domains.{name}.format: no format check named {domain.format!r} in `formats`")
        for name, cap in self.capabilities.items():
            unknown = [d for d in cap.domains if d not in self.domains]
            if unknown:
                raise ValueError(f"capabilities.{name}.domains: {', '.join(map(repr, unknown))} not in `domains`")
        return self


def _is_model(x: object) -> bool:
    return isinstance(x, type) and issubclass(x, BaseModel)


def _format_error(path: Path, err: ValidationError) -> str:
    """Each bad field on a line; an unknown field gets the closest known one ("retreival": retrieval?)."""
    lines = [f"{path}: invalid project file"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        model: Any = ProjectConfig
        for part in e["loc"][:-1]:  # the section the field sits in (through a mapping of names: domains.claims)
            model = (getattr(model.model_fields.get(str(part)), "annotation", None) if _is_model(model) else
                     get_args(model)[-1] if get_origin(model) is dict else None)
        known = set(model.model_fields) if _is_model(model) else set()
        close = get_close_matches(str(e["loc"][-1]), known, n=1) if e["type"] == "extra_forbidden" else []
        lines.append(f"  {where}: {e['msg']}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return "\n".join(lines)


def load_config(path: Path) -> ProjectConfig:
    """The validated project file at `path`. Raises ConfigError naming the file (and each bad field) when it
    is missing, not UTF-8, not YAML, nested too deeply, not a mapping, or fails validation."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: create a project with `loradex init {path.parent}`")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:  # where and what, not PyYAML's "<unicode string>" and its quoting
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save it "
                          "as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read; a project file needs a few levels at most") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e)) from None
