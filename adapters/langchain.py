"""LangChain adapter: optical memory as a ``BaseRetriever`` (langchain-core 1.x), on the public API only.

    from optical_memory.adapters.langchain import OpticalMemoryRetriever

    retriever = OpticalMemoryRetriever(store=store, scope="alice", k=4)
    docs = retriever.invoke("Which nut is Ingrid allergic to?")  # or ainvoke; k=... per call

    history = OpticalChatMessageHistory(store, session_id="alice", budget_tokens=2000)
    history.add_messages([HumanMessage("..."), AIMessage("...")])
    history.messages  # a memory block recalled from old pages, then the recent turns verbatim

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
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.documents import Document
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the LangChain adapter needs langchain-core: pip install 'optical-memory[langchain]' ({e})"
    ) from e

__all__ = ["OpticalChatMessageHistory", "OpticalMemoryRetriever"]


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
            images = self.store.page_image(hit.id, page_id=hit.page_id)
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


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class OpticalChatMessageHistory(BaseChatMessageHistory):
    """A session's chat history kept in optical memory (one store scope per session).

    ``messages`` returns, within ``budget_tokens``: a ``SystemMessage`` holding older turns recalled from
    their page images (retrieved by meaning for the latest user message), then the turns still in the
    store's text tier, verbatim and in order: up to ``recent_share`` of the budget, newest first (the newest
    turn is always kept, whatever its length). Each ``add_messages`` ages the store (``auto_age``), so old
    turns move into pages and fade down the ladder as the session grows. ``clear()`` deletes the
    session's rows, vectors and page images.
    """

    def __init__(
        self,
        store: Any,
        session_id: str,
        *,
        budget_tokens: int = 2000,
        recent_share: float = 0.6,
        k: int = 8,
        auto_age: bool = True,
    ) -> None:
        if not isinstance(session_id, str) or not session_id.strip():
            raise InvalidInput(f"session_id must be a non-empty string, got {session_id!r}")
        if not isinstance(budget_tokens, int) or isinstance(budget_tokens, bool) or budget_tokens < 1:
            raise InvalidInput(f"budget_tokens must be a positive int, got {budget_tokens!r}")
        if not isinstance(recent_share, (int, float)) or not 0.0 <= recent_share <= 1.0:
            raise InvalidInput(f"recent_share must be a number in [0, 1], got {recent_share!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InvalidInput(f"k must be a positive int, got {k!r}")
        self.store = store
        self.session_id = session_id
        self.budget_tokens = budget_tokens
        self.recent_share = recent_share
        self.k = k
        self.auto_age = auto_age

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        if self.session_id not in self.store.scopes():
            return []
        turns: list[Any] = []
        used = 0
        for turn in reversed(self.store.recent_turns(self.session_id)):  # newest first, within the share
            cost = self.store.counter.count(turn.text)
            if turns and used + cost > self.budget_tokens * self.recent_share:
                break  # (the newest turn is always kept: it is usually the question being answered)
            turns.insert(0, turn)
            used += cost
        out: list[BaseMessage] = []
        query = next((t.text for t in reversed(turns) if t.role == "user"), turns[-1].text if turns else "")
        if query.strip() and self.budget_tokens > used:
            older = self.store.build_context(
                query,
                budget_tokens=self.budget_tokens - used,
                scope=self.session_id,
                k=self.k,
                recent_share=0.0,
            )
            shown = {t.id for t in turns}
            retrieved = [p["text"] for p in older.parts[1:] if p.get("type") == "text"]  # after the heading
            kept = [text for text, item in zip(retrieved, older.items, strict=True) if item.id not in shown]
            if kept:
                out.append(
                    SystemMessage("Memory recalled from earlier in this conversation:\n" + "\n".join(kept))
                )
        out += [_message(t.role, t.text) for t in turns]
        return out

    def add_messages(self, messages: Any) -> None:
        items = []
        for m in messages:
            if not isinstance(m, BaseMessage):
                raise InvalidInput(f"add_messages takes LangChain messages, got {type(m).__name__}")
            content = m.content if isinstance(m.content, str) else m.text
            items.append({"text": content, "role": _ROLES.get(m.type, m.type)})
        if items:
            self.store.add_many(items, scope=self.session_id)
            if self.auto_age:
                self.store.age()

    def clear(self) -> None:
        if self.session_id in self.store.scopes():
            self.store.delete_scope(self.session_id)

    async def aget_messages(self) -> list[BaseMessage]:
        return await asyncio.to_thread(lambda: self.messages)

    async def aadd_messages(self, messages: Any) -> None:
        await asyncio.to_thread(self.add_messages, list(messages))

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)


def _message(role: str | None, text: str) -> BaseMessage:
    if role == "assistant":
        return AIMessage(text)
    if role == "system":
        return SystemMessage(text)
    if role == "tool":
        return ToolMessage(text, tool_call_id="")
    return HumanMessage(text)
