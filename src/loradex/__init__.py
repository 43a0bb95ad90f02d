"""loradex: retrieval for what a model should know, LoRA adapters for how it should think."""
from .config import ConfigError, ProjectConfig, load_config
from .embed import Embedder, HashingEmbedder, load_embedder
from .ingest.ingest import IngestReport, ingest
from .ingest.parse import ParseError, parse_file
from .project import Project, init_project, open_project
from .retrieve import search
from .store import Store, open_store
from .types import Block, Chunk, DocMeta, Filters, Hit, ParsedDocument, Source

__version__ = "0.1.0"

__all__ = [
    "Block", "Chunk", "ConfigError", "DocMeta", "Embedder", "Filters", "HashingEmbedder", "Hit",
    "IngestReport", "ParseError", "ParsedDocument", "Project", "ProjectConfig", "Source", "Store",
    "ingest", "init_project", "load_config", "load_embedder", "open_project", "open_store",
    "parse_file", "search",
]
