"""loradex's public API: retrieval for what a model should know, LoRA adapters for how it should think."""
from .config import ProjectConfig, load_config
from .embed import Embedder, HashingEmbedder, load_embedder
from .errors import (
                     AdapterError,
                     ConfigError,
                     DataError,
                     EmbedderNotFound,
                     EngineError,
                     IndexMismatch,
                     LoradexError,
                     ModelNotFound,
                     ParseError,
                     QueryError,
                     QueueFull,
                     RouterError,
                     StoreError,
)
from .ingest.ingest import IngestReport, ingest
from .ingest.parse import parse_file
from .pipeline import answer
from .project import Project, init_project, open_project
from .retrieve import search
from .store import Store, open_store
from .types import Answer, Block, Chunk, Citation, DocMeta, Filters, Hit, ParsedDocument, Route, Source, SourceRef

__version__ = "0.1.0"

__all__ = [
    "AdapterError", "Answer", "Block", "Chunk", "Citation", "ConfigError", "DataError", "DocMeta", "Embedder",
    "EmbedderNotFound", "EngineError", "Filters", "HashingEmbedder", "Hit", "IndexMismatch", "IngestReport",
    "LoradexError", "ModelNotFound", "ParseError", "ParsedDocument", "Project", "ProjectConfig", "QueryError",
    "QueueFull", "Route", "RouterError", "Source", "SourceRef", "Store", "StoreError", "answer", "ingest",
    "init_project", "load_config", "load_embedder", "open_project", "open_store", "parse_file", "search",
]
