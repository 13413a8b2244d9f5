"""LangChain adapter: optical memory as a ``BaseRetriever`` (langchain-core 1.x), on the public API only.

    from optical_memory.adapters.langchain import OpticalMemoryRetriever

    retriever = OpticalMemoryRetriever(store=store, scope="alice", k=4)
    docs = retriever.invoke("Which nut is Ingrid allergic to?")  # or ainvoke; k=... per call

Each Document's content is the memory recalled as text from its page at its current tier (``mode="text"``),
or a reference to its page image (``mode="image"``: ``optical-memory://page/<id>`` with the PNG as a data
URL in ``metadata["image_url"]``, for multimodal chat models). Metadata carries the memory's id, scope,
tier, score, page and compression ratio, plus its own metadata.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any, Literal

from ..errors import InvalidInput, MissingDependency

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the LangChain adapter needs langchain-core: pip install 'optical-memory[langchain]' ({e})"
    ) from e

__all__ = ["OpticalMemoryRetriever"]


class OpticalMemoryRetriever(BaseRetriever):
    """Retrieves memories from an ``optical_memory`` store by meaning.

    ``store``: an open store (``optical_memory.open(...)``); ``scope``: the tenant to search (None: all);
    ``k``: documents per query (also accepted per call: ``invoke(query, k=2)``); ``filters``: equality
    filters on kind, role, tier or metadata keys; ``mode``: "text" or "image".
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    scope: str | None = None
    k: int = 4
    filters: dict[str, Any] | None = None
    mode: Literal["text", "image"] = "text"

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k = kwargs.pop("k", self.k)
        if kwargs:
            raise InvalidInput(f"unknown retriever arguments {sorted(kwargs)}; known: ['k']")
        hits = self.store.search(query, k=k, scope=self.scope, filters=self.filters)
        return [self._document(hit) for hit in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        # the store is thread-safe and its work is CPU-bound (embedding, OCR): keep the event loop free
        return await asyncio.to_thread(
            self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **kwargs
        )

    def _document(self, hit: Any) -> Document:
        metadata = {
            **hit.metadata,
            "id": hit.id,
            "scope": hit.scope,
            "tier": hit.tier,
            "score": hit.score,
            "page_id": hit.page_id,
            "compression": hit.compression,
            "kind": hit.kind,
            "role": hit.role,
        }
        if self.mode == "image" and hit.page_id is not None:
            images = self.store.page_image(hit.id)
            if images:
                buffer = io.BytesIO()
                images[0].save(buffer, format="PNG")
                metadata["image_url"] = (
                    "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
                )
                return Document(
                    page_content=f"optical-memory://page/{hit.page_id}", metadata=metadata, id=str(hit.id)
                )
        recall = self.store.recall(hit.id)
        metadata["source"] = recall.source
        return Document(page_content=recall.text, metadata=metadata, id=str(hit.id))
