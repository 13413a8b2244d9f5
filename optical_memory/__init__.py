"""optical-memory: long-context memory for LLM agents, kept as page images that fade with age.

import optical_memory
with optical_memory.open("agent-memory") as store:
    store.add("My sister Ingrid lives in Tromsø.", scope="user-1", role="user")
    store.age()
    hits = store.search("where does Ingrid live?", scope="user-1")
    print(store.recall(hits[0].id).text)
"""

from .config import AgingPolicy, RenderConfig, StoreConfig, Tier, vision_tokens
from .errors import (
    BlobError,
    InvalidInput,
    MemoryNotFound,
    MissingDependency,
    OpticalMemoryError,
    SchemaVersionError,
    ScopeNotFound,
    StoreBusy,
    StoreLocked,
    UnrenderableText,
)
from .store import OpticalMemory
from .store import open_store as open
from .types import (
    Context,
    ContextItem,
    Hit,
    MemoryInfo,
    PagePlace,
    Recall,
    Stats,
    TextLine,
    TierStats,
    VerifyReport,
)

__version__ = "0.1.0"

__all__ = [
    "AgingPolicy",
    "BlobError",
    "Context",
    "ContextItem",
    "Hit",
    "InvalidInput",
    "MemoryInfo",
    "MemoryNotFound",
    "MissingDependency",
    "OpticalMemory",
    "OpticalMemoryError",
    "PagePlace",
    "Recall",
    "RenderConfig",
    "SchemaVersionError",
    "ScopeNotFound",
    "Stats",
    "StoreBusy",
    "StoreConfig",
    "StoreLocked",
    "TextLine",
    "Tier",
    "TierStats",
    "UnrenderableText",
    "VerifyReport",
    "__version__",
    "open",
    "vision_tokens",
]
