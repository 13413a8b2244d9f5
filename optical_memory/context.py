"""Context: what an LLM is given, within a token budget, with a token account.

build_context -> recent raw turns (the text tier, newest first) up to ``recent_share`` of the budget
              -> hits for the query -> each as recalled text (text mode), its page as an image part at
                 its tier (image mode), or its page's vision tokens (vision mode) while they fit
              -> chat content parts (or the decoder's inputs_embeds) and the account of every item
A hit on a page whose image is missing or corrupt is left out, in every mode, and its page listed in the
account's ``damaged`` (``verify(repair=True)`` heals it); the rest of the context is built as ever.
"""

from __future__ import annotations

import base64
import logging
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

from .config import vision_tokens
from .core import Core
from .db import MemoryRow, PageRow
from .errors import BlobError, InvalidInput
from .protocols import VisionContext
from .reading import damaged_pages, page_bytes, page_text, recall, text_tier_turns, turn_text
from .retrieval import search
from .types import Context, ContextItem, Hit
from .validation import shown
from .vision import sync_vision
from .vision import vision_tokens as page_vision_tokens

log = logging.getLogger(__name__)


def build_context(
    core: Core,
    query: str,
    *,
    budget_tokens: int,
    mode: str = "text",
    scope: str | None = None,
    k: int = 8,
    recent_share: float = 0.5,
    page_form: str = "vision",
    exclude: Iterable[int] = (),
) -> Context:
    if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Iterable):
        raise InvalidInput(f"exclude must be memory ids, got {shown(exclude)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"k must be a positive int, got {shown(k)}")
    ids = list(exclude)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):  # checked before hashing
        raise InvalidInput(f"exclude must be memory ids (ints), got {shown(ids)}")
    excluded = set(ids)
    if mode not in ("text", "image", "vision"):
        raise InvalidInput(f"mode must be 'text', 'image' or 'vision', got {shown(mode)}")
    if not isinstance(budget_tokens, int) or isinstance(budget_tokens, bool) or budget_tokens < 1:
        raise InvalidInput(f"budget_tokens must be a positive int, got {shown(budget_tokens)}")
    if (
        not isinstance(recent_share, (int, float))
        or isinstance(recent_share, bool)
        or not 0.0 <= recent_share <= 1.0
    ):
        raise InvalidInput(f"recent_share must be within [0, 1], got {shown(recent_share)}")
    if page_form not in ("vision", "meanpool", "truncate"):
        raise InvalidInput(f"page_form must be 'vision', 'meanpool' or 'truncate', got {shown(page_form)}")
    if page_form != "vision" and mode != "vision":
        raise InvalidInput(f"page_form={shown(page_form)} applies to mode='vision' only, not {shown(mode)}")
    # the recent turns' share in tokens; a budget beyond sys.maxsize is beyond any store's tokens, and an
    # int that large times a float would overflow
    recent_budget = min(budget_tokens, sys.maxsize) * recent_share
    if mode == "vision":
        return _vision_context(core, query, budget_tokens, recent_budget, scope, k, page_form, excluded)
    return _chat_context(core, query, budget_tokens, recent_budget, mode, scope, k, excluded)


def _chat_context(
    core: Core,
    query: str,
    budget_tokens: int,
    recent_budget: float,
    mode: str,
    scope: str | None,
    k: int,
    excluded: set[int],
) -> Context:
    """Text and image modes: chat content parts, "Recalled memories:" then "Recent conversation:"."""
    with core.lock:
        items: list[ContextItem] = []
        used = 0
        recent: list[tuple[MemoryRow, str, int]] = []
        for m in text_tier_turns(core, scope):
            line = f"{m.role}: {turn_text(m)}" if m.role else turn_text(m)
            cost = core.counter.count(line)
            if used + cost > recent_budget:
                break
            recent.append((m, line, cost))
            used += cost
            items.append(ContextItem(id=m.id, origin="recent", tier="text", tokens=cost, text_tokens=cost))
        skip = {m.id for m, _, _ in recent} | excluded
        retrieved_parts: list[dict[str, Any]] = []
        seen_pages: set[int] = set()
        damaged: list[int] = []
        for hit in _candidates(core, query, k, scope, skip):
            with core.session() as s:
                text_tokens = core.memory(s, hit.id).text_tokens
            if mode == "image" and hit.page_id is not None:
                if hit.page_id in seen_pages or hit.page_id in damaged:
                    continue
                try:
                    part, side, page_tokens = _image_part(core, hit.page_id)
                except BlobError as e:
                    _left_out(damaged, [hit.page_id], e)
                    continue
                if part is None or side is None:
                    continue
                cost = vision_tokens(side)
                text_tokens = page_tokens  # the image carries its whole page, not just this memory
                if used + cost > budget_tokens:
                    continue
                seen_pages.add(hit.page_id)
                retrieved_parts.append(part)
            else:
                try:
                    r = recall(core, hit.id)
                except BlobError as e:
                    _left_out(damaged, damaged_pages(core, hit.id), e)
                    continue
                if not r.text:
                    continue
                block = f"[memory {hit.id}, {r.tier}] {r.role + ': ' if r.role else ''}{r.text}"
                cost = core.counter.count(block)
                if used + cost > budget_tokens:
                    continue
                retrieved_parts.append({"type": "text", "text": block})
            used += cost
            items.append(_retrieved(hit, cost, text_tokens))
        parts: list[dict[str, Any]] = []
        if retrieved_parts:
            parts.append({"type": "text", "text": "Recalled memories:"})
            parts.extend(retrieved_parts)
        if recent:
            lines = "\n".join(line for _, line, _ in reversed(recent))
            parts.append({"type": "text", "text": "Recent conversation:\n" + lines})
        saved = max(0, sum(i.text_tokens for i in items) - used)
        return Context(
            mode=mode,
            parts=parts,
            items=items,
            budget_tokens=budget_tokens,
            used_tokens=used,
            saved_tokens=saved,
            damaged=damaged,
        )


def _candidates(core: Core, query: str, k: int, scope: str | None, skip: set[int]) -> list[Hit]:
    """The ``k`` best hits that are not in ``skip`` (the recent turns and the excluded memories, already
    in the prompt: they take none of the ``k`` places)."""
    hits = search(core, query, k=k + len(skip), scope=scope)
    return [hit for hit in hits if hit.id not in skip][:k]


def _left_out(damaged: list[int], page_ids: list[int], error: BlobError) -> None:
    """Note pages left out of a context because their image is missing or corrupt."""
    for page_id in page_ids:
        if page_id not in damaged:
            damaged.append(page_id)
    log.warning("left out of the context: %s", error)


def _retrieved(hit: Hit, cost: int, text_tokens: int) -> ContextItem:
    """The account's entry for a retrieved memory: what it cost, and the text tokens it stands for."""
    return ContextItem(
        id=hit.id, origin="retrieved", tier=hit.tier, tokens=cost, text_tokens=text_tokens, score=hit.score
    )


def _image_part(core: Core, page_id: int) -> tuple[dict[str, Any] | None, int | None, int]:
    """A page as a chat image part, its side, and the text tokens it carries."""
    found = _page_png(core, page_id)
    if found is None:
        return None, None, 0
    data, page = found
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url}}, page.side, page.text_tokens


def _page_png(core: Core, page_id: int) -> tuple[bytes, PageRow] | None:
    """A page's image bytes and its row (None: deleted or forgotten); ``BlobError`` if missing or corrupt."""
    with core.session() as s:
        page = s.get(PageRow, page_id)
        if page is None or page.blob is None or page.side is None:
            return None
        data = page_bytes(core, page_id, page.blob)
    return None if data is None else (data, page)


# -- vision mode: the DeepSeek decoder's own input -----------------------------------------------------------


def _vision_context(
    core: Core,
    query: str,
    budget_tokens: int,
    recent_budget: float,
    scope: str | None,
    k: int,
    page_form: str = "vision",
    excluded: frozenset[int] | set[int] = frozenset(),
) -> Context:
    """Vision mode: [BOS] [page tokens, "\\n"]... ["Recent conversation:\\n" + turns] [query + "\\n"]."""
    decoder = core.encoder
    if not isinstance(decoder, VisionContext):
        raise InvalidInput(
            "mode='vision' needs a DeepSeek-OCR-architecture model: open the store with "
            "model='optical-mini' (shipped), or model='deepseek-ocr' and model_dir=<checkpoint folder>"
        )
    with core.lock:
        question = f"{query}\n"
        used = 1 + decoder.count_text(question)  # BOS and the question always go in
        if used > budget_tokens:
            raise InvalidInput(f"budget_tokens={budget_tokens} cannot hold even the query ({used} tokens)")
        recent_rows = text_tier_turns(core, scope)
        items: list[ContextItem] = []
        header = "Recent conversation:\n"
        recent_cost = decoder.count_text(header) if recent_rows else 0
        lines: list[str] = []
        for m in recent_rows:
            line = f"{m.role}: {turn_text(m)}\n" if m.role else f"{turn_text(m)}\n"
            cost = decoder.count_text(line)
            if used + recent_cost + cost > recent_budget:
                break
            lines.append(line)
            recent_cost += cost
            items.append(ContextItem(id=m.id, origin="recent", tier="text", tokens=cost, text_tokens=cost))
        if lines:
            used += recent_cost
        skip = {i.id for i in items} | excluded
        pages: list[tuple[int, str | np.ndarray]] = []
        damaged: list[int] = []
        newline = decoder.count_text("\n")
        for hit in _candidates(core, query, k, scope, skip):
            if hit.page_id is None or hit.page_id in {p for p, _ in pages}:
                continue
            if hit.page_id in damaged:
                continue
            try:  # tokens made before the damage are not served either: the page is left out until healed
                _page_png(core, hit.page_id)
            except BlobError as e:
                _left_out(damaged, [hit.page_id], e)
                continue
            tokens = page_vision_tokens(core, hit.page_id)
            if tokens is None:
                sync_vision(core, [hit.page_id])
                tokens = page_vision_tokens(core, hit.page_id)
            if tokens is None:
                continue  # forgotten: nothing left to look at
            form = _page_form(core, decoder, hit.page_id, tokens, page_form)
            cost = (decoder.count_text(form) if isinstance(form, str) else form.shape[0]) + newline
            if used + cost > budget_tokens:
                continue
            used += cost
            pages.append((hit.page_id, form))
            with core.session() as s:
                page = s.get(PageRow, hit.page_id)
                carried = page.text_tokens if page is not None else 0
            items.append(_retrieved(hit, cost, carried))
        segments: list[str | np.ndarray] = []
        parts: list[dict[str, Any]] = []
        for page_id, form in pages:
            segments += [form, "\n"]
            if isinstance(form, str):
                parts.append({"type": "text", "text": form, "page_id": page_id})
            else:
                parts.append({"type": "vision", "page_id": page_id, "positions": int(form.shape[0])})
        if lines:
            segments += [header, *reversed(lines)]
            parts.append({"type": "text", "text": header + "".join(reversed(lines))})
        segments.append(question)
        parts.append({"type": "text", "text": question})
        inputs_embeds, attention_mask = decoder.assemble(segments)
        assert inputs_embeds.shape[1] == used, (inputs_embeds.shape, used)
        return Context(
            mode="vision",
            parts=parts,
            items=items,
            budget_tokens=budget_tokens,
            used_tokens=used,
            saved_tokens=max(0, sum(i.text_tokens for i in items) - sum(i.tokens for i in items)),
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            damaged=damaged,
        )


def _page_form(
    core: Core, decoder: VisionContext, page_id: int, tokens: np.ndarray, form: str
) -> str | np.ndarray:
    """A page as the decoder will take it: its vision tokens, or a text baseline of the same length."""
    if form == "vision":
        return tokens
    text = page_text(core, page_id)
    if text is None:
        raise InvalidInput(
            f"page_form={form!r} needs the page's text: page {page_id} was stored with retain_text=False"
        )
    if form == "meanpool":
        from .backends.baselines import mean_pool

        return mean_pool(decoder.text_embeddings(text), tokens.shape[0])
    return decoder.truncate(text, tokens.shape[0])


def answer(
    core: Core,
    question: str,
    *,
    budget_tokens: int = 2048,
    scope: str | None = None,
    max_new_tokens: int = 512,
) -> str:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    ctx = build_context(core, question, budget_tokens=budget_tokens, mode="vision", scope=scope)
    decoder = core.encoder
    assert isinstance(decoder, VisionContext)
    with core.lock:
        return decoder.complete(ctx.inputs_embeds, ctx.attention_mask, max_new_tokens=max_new_tokens)
