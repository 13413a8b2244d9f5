"""LangChain adapter: optical memory as a ``BaseRetriever`` (langchain-core 1.x), on the public API only.

    from optical_memory.adapters.langchain import OpticalMemoryRetriever

    retriever = OpticalMemoryRetriever(store=store, scope="alice", k=4)
    docs = retriever.invoke("Which nut is Ingrid allergic to?")  # or ainvoke; k=... per call

    history = OpticalChatMessageHistory(store, session_id="alice", budget_tokens=2000)
    history.add_messages([HumanMessage("..."), AIMessage("...")])
    history.messages  # a memory block recalled from old pages, then the recent turns verbatim

Every langchain-core message round-trips through the history as it does through the framework's own
histories (content blocks, tool calls and their ids, names, ids, kwargs and metadata, as JSON round-trips
them): see ``OpticalChatMessageHistory``.

Each Document's content is the memory recalled as text from its page at its current tier (``mode="text"``),
or a reference to its page image (``mode="image"``: ``optical-memory://page/<id>`` with the PNG as a data
URL in ``metadata["image_url"]``, for multimodal chat models). Metadata carries the memory's id, scope,
tier, score, page and compression ratio, plus its own metadata.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import reprlib
from collections.abc import Mapping
from typing import Any, Literal

from ..config import recent_rule
from ..errors import InvalidInput, MemoryNotFound, MissingDependency
from ..types import Recall

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.documents import Document
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        message_to_dict,
        messages_from_dict,
    )
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the LangChain adapter needs langchain-core: pip install 'optical-memory[langchain]' ({e})"
    ) from e

__all__ = ["OpticalChatMessageHistory", "OpticalMemoryRetriever"]

logger = logging.getLogger(__name__)


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


MESSAGE = "langchain_message"  # a turn's metadata key: the message's serialized form (see the history)


class OpticalChatMessageHistory(BaseChatMessageHistory):
    """A session's chat history kept in optical memory (one store scope per session).

    ``messages`` returns, within ``budget_tokens``: a ``SystemMessage`` holding older turns recalled from
    their page images (retrieved by meaning for the latest user message), then the newest turns, verbatim and
    in order. With ``recent_share="auto"`` those are the last four turns (the last two exchanges) within
    half the budget, and older turns of the store's text tier come back only when they match the message,
    recalled with the paged ones; a number sends the text tier's turns newest first up to that share of the
    budget. The newest turn is always kept, whatever its length, and a tool result always with the message
    that called it.
    Each ``add_messages`` ages the store (``auto_age``), so old turns move into pages and fade down the
    ladder as the session grows. ``clear()`` deletes the session's rows, vectors and page images.

    Each message is one turn. Its text, what the page shows and search finds, is the message read as a
    person would: its text content, ``[image_url]`` for a block that is not text, one ``tool call NAME
    {JSON args}`` line per tool call, ``(empty message)`` when there is nothing to show. The rest of the
    message rides in the turn's metadata (``MESSAGE``: ``message_to_dict``'s form), so the recent turns come
    back equal to what was added; what JSON cannot hold (an object as artifact, NaN, a NUL character) is
    refused, naming the message and the field. A plain text content that the page shows verbatim is not
    copied there: with ``retain_text=False`` its words leave SQL when its page closes. Content blocks,
    tool calls, kwargs, metadata and artifacts stay in the metadata until the turn is deleted.
    """

    def __init__(
        self,
        store: Any,
        session_id: str,
        *,
        budget_tokens: int = 2000,
        recent_share: float | str = "auto",
        k: int = 8,
        auto_age: bool = True,
    ) -> None:
        if not isinstance(session_id, str) or not session_id.strip():
            raise InvalidInput(f"session_id must be a non-empty string, got {session_id!r}")
        if not isinstance(budget_tokens, int) or isinstance(budget_tokens, bool) or budget_tokens < 1:
            raise InvalidInput(f"budget_tokens must be a positive int, got {budget_tokens!r}")
        recent_rule(recent_share)  # checked here, where it is given
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
        recent = self.store.recent_turns(self.session_id)  # oldest first
        costs = [self.store.counter.count(t.text) for t in recent]
        share, most = recent_rule(self.recent_share)
        start = max(len(recent) - 1, 0)  # the newest turn is always kept: it is usually the question
        while start > 0 and sum(costs[start - 1 :]) <= self.budget_tokens * share:
            if most is not None and len(recent) - start >= most:
                break  # "auto": older turns come back as hits for the question, below
            start -= 1  # then older ones, newest first, within the share
        while 0 < start < len(recent) and recent[start].role == "tool":
            start -= 1  # a tool result comes with the message that called it
        turns = recent[start:]
        query = next((t.text for t in reversed(turns) if t.role == "user"), turns[-1].text if turns else "")
        while turns and turns[0].role == "tool":
            turns = turns[1:]  # ... and without it, once that message has left the text tier, not at all
        used = sum(self.store.counter.count(t.text) for t in turns)
        out: list[BaseMessage] = []
        if query.strip() and self.budget_tokens > used:
            older = self.store.build_context(
                query,
                budget_tokens=self.budget_tokens - used,
                scope=self.session_id,
                k=self.k,
                recent_share=0.0,
                exclude=[t.id for t in turns],  # sent verbatim below: they take none of the k places
            )
            kept = [p["text"] for p in older.parts[1:] if p.get("type") == "text"]  # after the heading
            if kept:
                out.append(
                    SystemMessage("Memory recalled from earlier in this conversation:\n" + "\n".join(kept))
                )
        for turn in turns:
            try:
                metadata = self.store.memory_info(turn.id).metadata
            except MemoryNotFound:  # deleted (or expired) since it was listed
                continue
            out.append(_restore(turn, metadata))
        return out

    def add_messages(self, messages: Any) -> None:
        items = [self._turn(number, m) for number, m in enumerate(messages)]
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

    def _turn(self, number: int, m: object) -> dict[str, Any]:
        """The store item for message ``number``: its readable text, role and serialized form."""
        if not isinstance(m, BaseMessage):
            raise InvalidInput(f"add_messages takes LangChain messages, got {type(m).__name__}")
        label = f"message {number} ({type(m).__name__})"
        text = _readable(m)
        serialized = message_to_dict(m)
        data = dict(serialized["data"])
        envelope: dict[str, Any] = {"type": serialized["type"], "data": data}
        try:
            verbatim = self._verbatim(text)
        except InvalidInput as e:  # a lone surrogate: no store can keep it
            raise InvalidInput(f"{label}: {e}") from None
        if isinstance(m.content, str) and text.startswith(m.content) and verbatim:
            del data["content"]  # the turn's text carries it
            envelope["content_chars"] = len(m.content)
        _check_json(data, label)
        return {"text": text, "role": _role(m), "metadata": {MESSAGE: envelope}}

    def _verbatim(self, text: str) -> bool:
        """Whether the store keeps ``text`` as it is (it normalises whitespace; stand-ins are restored)."""
        normalised, stand_ins = self.store.renderer.prepare(text)
        drawn = text
        for shown_as, ch in stand_ins.items():
            if shown_as in text:
                return False  # a stand-in written out in the text itself would be restored too
            drawn = drawn.replace(ch, shown_as)
        return bool(normalised == drawn)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # what pages cannot draw: Cc but \t \n \r


def _readable(m: BaseMessage) -> str:
    """A message as a person reads it: its text, a ``[type]`` mark per other block, a line per tool call."""
    blocks = [m.content] if isinstance(m.content, str) else [_block_text(block) for block in m.content]
    body = "\n".join(blocks)
    lines = [body] if body.strip() else []
    if isinstance(m, AIMessage):
        lines += [f"tool call {c['name']} {_json(c['args'])}" for c in m.tool_calls]
        lines += [f"invalid tool call {c.get('name')} {c.get('args')}" for c in m.invalid_tool_calls]
    text = "\n".join(lines) if lines else "(empty message)"
    return _CONTROL.sub(lambda c: f"[U+{ord(c.group()):04X}]", text)


def _block_text(block: str | dict[Any, Any]) -> str:
    if isinstance(block, str):
        return block
    if block.get("type") == "text" and isinstance(block.get("text"), str):
        return str(block["text"])
    return f"[{block.get('type', 'block')}]"


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def _check_json(data: Mapping[str, Any], label: str) -> None:
    """Refuse, naming the field, what the store's JSON metadata cannot keep."""
    for key, value in data.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise InvalidInput(
                f"{label}: its {key} is not JSON-serialisable, so the store cannot keep it: "
                f"{reprlib.repr(value)} ({e})"
            ) from None
        if _has_nul(value):
            raise InvalidInput(
                f"{label}: its {key} holds a NUL character, which the store's databases cannot keep: "
                f"{reprlib.repr(value)}"
            )


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


def _role(m: BaseMessage) -> str:
    """The label the page shows before the turn."""
    if isinstance(m, HumanMessage):
        return "user"
    if isinstance(m, AIMessage):
        return "assistant"
    if isinstance(m, (SystemMessage, ToolMessage)):
        return m.type
    if isinstance(m, ChatMessage) and m.role.strip() and len(m.role) <= 64 and m.role.isprintable():
        return m.role
    return m.type


def _restore(turn: Recall, metadata: Mapping[str, Any]) -> BaseMessage:
    """A recent turn as the message that was added (rows of the earlier format: from role and text)."""
    envelope = metadata.get(MESSAGE)
    if envelope is not None:
        try:
            data = dict(envelope["data"])
            if "content" not in data:
                data["content"] = turn.text[: envelope["content_chars"]]
            return messages_from_dict([{"type": envelope["type"], "data": data}])[0]
        except (KeyError, TypeError, ValueError) as e:
            logger.warning("turn %d: its %r metadata is unreadable (%s); using its text", turn.id, MESSAGE, e)
    return _message(turn.role, turn.text)


def _message(role: str | None, text: str) -> BaseMessage:
    if role == "assistant":
        return AIMessage(text)
    if role == "system":
        return SystemMessage(text)
    if role == "tool":
        return ToolMessage(text, tool_call_id="")
    return HumanMessage(text)
