"""Context: what an LLM is given, within a token budget, with a token account.

build_context -> recent raw turns (the text tier, newest first): with ``recent_share="auto"`` the newest
                 ``RECENT_TURNS`` (within half the budget), with a number up to that share of the budget
              -> hits for the query, the other turns of the text tier among them -> each as recalled text
                 (text mode), the band of its page as an image part at its tier (image mode; with a
                 target, bands shrunk while legible and stacked where cheaper), or its page's vision
                 tokens (vision mode) while they fit
              -> chat content parts (or the decoder's inputs_embeds) and the account of every item
A hit on a page whose image is missing or corrupt is left out, in every mode, and its page listed in the
account's ``damaged`` (``verify(repair=True)`` heals it); the rest of the context is built as ever.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select

from .config import recent_rule
from .core import Core
from .db import MemoryRow, PageRow, SpanRow
from .errors import BlobError, InvalidInput, MemoryNotFound
from .metrics import cer
from .pricing import ImagePricing, pricing
from .protocols import LineReader, VisionContext
from .reading import (
    BAND_MIN_LINE_PX,
    damaged_pages,
    page_bytes,
    page_text,
    prefetch,
    read_back,
    text_tier_turns,
    turn_text,
)
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
    recent_share: float | str = "auto",
    page_form: str = "vision",
    exclude: Iterable[int] = (),
    target: str | ImagePricing | None = None,
    crop_margin: int | None = 1,
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
    recent = recent_rule(recent_share)
    if page_form not in ("vision", "meanpool", "truncate"):
        raise InvalidInput(f"page_form must be 'vision', 'meanpool' or 'truncate', got {shown(page_form)}")
    if page_form != "vision" and mode != "vision":
        raise InvalidInput(f"page_form={shown(page_form)} applies to mode='vision' only, not {shown(mode)}")
    if target is not None and mode != "image":
        raise InvalidInput(f"target={shown(target)} applies to mode='image' only, not {shown(mode)}")
    price = pricing(target if target is not None else "deepseek-ocr")
    if crop_margin is not None and (
        not isinstance(crop_margin, int) or isinstance(crop_margin, bool) or crop_margin < 0
    ):
        raise InvalidInput(f"crop_margin must be None (whole pages) or lines >= 0, got {shown(crop_margin)}")
    # the recent turns' share in tokens; a budget beyond sys.maxsize is beyond any store's tokens, and an
    # int that large times a float would overflow
    share, most = recent
    recent_budget = min(budget_tokens, sys.maxsize) * share
    if mode == "vision":
        return _vision_context(core, query, budget_tokens, recent_budget, most, scope, k, page_form, excluded)
    fitted = target is not None  # only a chosen target's pricing makes a smaller image worth its reading
    images = _Images(core, price, crop_margin, fitted)
    return _chat_context(core, query, budget_tokens, recent_budget, most, mode, scope, k, excluded, images)


def _chat_context(
    core: Core,
    query: str,
    budget_tokens: int,
    recent_budget: float,
    most_recent: int | None,
    mode: str,
    scope: str | None,
    k: int,
    excluded: set[int],
    images: _Images,
) -> Context:
    """Text and image modes: chat content parts, "Recalled memories:" then "Recent conversation:"."""
    with core.lock:
        items: list[ContextItem] = []
        used = 0
        recent: list[tuple[MemoryRow, str, int]] = []
        verbatim = text_tier_turns(core, scope)
        for m in verbatim[:most_recent]:
            line = _turn_line(m)
            cost = core.counter.count(line)
            if used + cost > recent_budget:
                break
            recent.append((m, line, cost))
            used += cost
            items.append(ContextItem(id=m.id, origin="recent", tier="text", tokens=cost, text_tokens=cost))
        skip = {m.id for m, _, _ in recent} | excluded
        retrieved_parts: list[dict[str, Any]] = []
        damaged: list[int] = []
        hits = _candidates(core, query, k, scope, skip, {m.id for m in verbatim} - skip)
    if mode == "text":
        # what the hits need read, read with the lock released: other calls go on meanwhile (a hit deleted
        # or a page moved by one of them is handled below, under the lock again)
        prefetch(core, [hit.id for hit in hits])
    with core.lock:
        for hit in hits:
            with core.session() as s:
                try:
                    text_tokens = core.memory(s, hit.id).text_tokens
                except MemoryNotFound:
                    continue  # deleted while its pages were read
            if mode == "image" and hit.page_id is not None:
                if hit.page_id in damaged:
                    continue
                try:
                    placed = images.place(hit, budget_tokens - used)
                except BlobError as e:
                    _left_out(damaged, [hit.page_id], e)
                    continue
                if placed is None:
                    continue
                cost, text_tokens = placed
            else:
                try:
                    r = read_back(core, hit.id)  # prefetched above
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
        retrieved_parts.extend(images.parts())
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
            target=images.price.name if mode == "image" else None,
            text_counter=core.counter.name,
        )


def _candidates(
    core: Core, query: str, k: int, scope: str | None, skip: set[int], turns: set[int]
) -> list[Hit]:
    """The ``k`` best hits that are in neither ``skip`` (the recent turns sent and the excluded memories,
    already in the prompt) nor ``turns`` (the other turns still in the text tier), and those of ``turns``
    that rank among the ``k`` best, best first. What is in the prompt takes none of the ``k`` places, and an
    older recent turn that the question finds goes in without pushing out a memory."""
    hits = search(core, query, k=k + len(skip) + len(turns), scope=scope)
    hits = [hit for hit in hits if hit.id not in skip]
    memories = [hit.id for hit in hits if hit.id not in turns][:k]
    found = [hit.id for hit in hits[:k] if hit.id in turns]
    kept = set(memories) | set(found)
    return [hit for hit in hits if hit.id in kept]


def _turn_line(m: MemoryRow) -> str:
    """A turn of the text tier as the context shows it: "role: text" (its text alone without a role)."""
    return f"{m.role}: {turn_text(m)}" if m.role else turn_text(m)


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


# Sizes a band is offered at with a target, of its tier's (9/16: a 1024 px band with 5.06 px glyphs).
SHRINK_SCALES = (1.0, 0.75, 0.625, 0.5625, 0.5, 0.375)
# A smaller image is legible if its lines read within this CER of the page at its tier: as good as the same
# text, but for one character in 200 (RapidOCR reads 512 px pages at CER 0.0009, 384 px ones at 0.010).
LEGIBLE_CER = 0.005
# Nor is an image whose glyphs are under this many pixels wide as the target sees them. A probe line may read
# below it, but codes do not: at 4.5 px (a 512 px page's glyphs) RapidOCR read "804.71" as "884.71" and
# "9289-W87" as "9289-w87" in 1024 px bands sent at half size (2 of 52 facts at 100k); at 384 px (3.4 px)
# whole pages read at CER 0.010. Bands at their own tier are sent as they are, whatever their glyphs.
MIN_CELL_PX = 5.0
# With a target, an image is padded with white by up to this many pixels each way to a size the target does
# not rescale: Qwen-VL rounds sides to 28 px, which squashed a three-line 512 px band 38 -> 28 px tall, its
# lines unreadable (4 of 52 facts at 100k); 28 px of padding always reaches its grid.
KEEP_PAD_PX = 32
# With a target, the bands of a context are stacked into one image (a sheet), this many white rows apart,
# while the target keeps the sheet as it is and it is cheaper so: each image pays its own overhead (a tile's
# base, a row of Qwen-VL's 28 px grid half white, its wrap tokens), a sheet pays it once.
SHEET_GAP_PX = 8


@dataclass
class _Band:
    """One page's part of a context: the page at its tier, the lines it shows ([start, end); None: the whole
    page), the image sent of them (at the chosen size, before any padding), and the text it stands for."""

    page: Image.Image
    lines: tuple[int, int] | None
    image: Image.Image
    text_tokens: int  # the page's
    used_lines: int  # lines of the page that hold text
    carried: int  # text tokens of the lines shown (the page's, in proportion)


@dataclass
class _Sheet:
    """One image part: the bands (by page id) stacked top to bottom, and the size sent (padded)."""

    pages: list[int]
    size: tuple[int, int]


class _Images:
    """The image parts of an image-mode context: each hit's band of its page (its lines and ``margin`` lines
    either side; the whole page when ``margin`` is None), bands of one page merged into one. Without a
    target each band is one image, priced in DeepEncoder's tokens. With one (``fitted``) each band is sent at
    the cheapest size (of ``SHRINK_SCALES``) whose lines the store's reader still reads, on the image as the
    target would resize it, and the bands are stacked into as few images as the target keeps unscaled, each
    padded to a size it does not round; all priced in the target's tokens."""

    def __init__(self, core: Core, price: ImagePricing, margin: int | None, fitted: bool) -> None:
        self.core, self.price, self.margin, self.fitted = core, price, margin, fitted
        self._bands: dict[int, _Band] = {}  # by page id, in the order the hits placed them
        self._padded: dict[tuple[int, int], tuple[int, int]] = {}  # _kept's answers

    def place(self, hit: Hit, room: int) -> tuple[int, int] | None:
        """Show ``hit`` within ``room`` tokens: (tokens added, text tokens added: the page's text tokens in
        proportion to the lines shown), or None (its page is forgotten, already shown whole, or the image
        does not fit). ``BlobError`` if the page's image is missing or corrupt."""
        page_id = hit.page_id
        assert page_id is not None
        before = self._bands.get(page_id)
        span = self._span(hit.id, page_id)
        if before is not None:
            if self.margin is None or before.lines is None or span is None:
                return None  # the whole page is in already
            grown = (min(before.lines[0], span[0] - self.margin), max(before.lines[1], span[1] + self.margin))
            band = self._band(page_id, before.page, grown, span, before.text_tokens, before.used_lines)
        else:
            found = _page_png(self.core, page_id)
            if found is None:
                return None
            data, row = found
            page = Image.open(io.BytesIO(data))
            page.load()
            lines = None
            if self.margin is not None and span is not None:
                lines = (span[0] - self.margin, span[1] + self.margin)
            band = self._band(page_id, page, lines, span, row.text_tokens, self._used_lines(page_id))
        sizes = self._sizes()
        before_tokens = self._tokens(self._sheets(sizes))
        added = self._tokens(self._sheets({**sizes, page_id: band.image.size})) - before_tokens
        if added > room:
            return None
        self._bands[page_id] = band  # a merged band keeps its page's place
        return added, band.carried - (before.carried if before is not None else 0)

    def parts(self) -> list[dict[str, Any]]:
        parts = []
        for sheet in self._sheets(self._sizes()):
            bands = [self._bands[page_id].image for page_id in sheet.pages]
            image = bands[0]
            if len(bands) > 1 or image.size != sheet.size:
                image = Image.new(bands[0].mode, sheet.size, "white")
                top = 0
                for band in bands:
                    image.paste(band, (0, top))
                    top += band.height + SHEET_GAP_PX
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            parts.append({"type": "image_url", "image_url": {"url": url}})
        return parts

    def _sizes(self) -> dict[int, tuple[int, int]]:
        return {page_id: band.image.size for page_id, band in self._bands.items()}

    def _sheets(self, sizes: dict[int, tuple[int, int]]) -> list[_Sheet]:
        """The images the bands of ``sizes`` (in order) are sent as: without a target one each, as they are;
        with one, each band added to the last sheet where the target keeps the sheet unscaled once padded
        and it costs no more than the two apart (a per-pixel price gains nothing, and pays for the white
        beside a narrower band)."""
        sheets: list[_Sheet] = []
        stacked = (0, 0)  # the last sheet's bands, before padding
        for page_id, (width, height) in sizes.items():
            if not self.fitted:
                sheets.append(_Sheet([page_id], (width, height)))
                continue
            alone = self._kept((width, height))
            if sheets:
                joined = (max(stacked[0], width), stacked[1] + SHEET_GAP_PX + height)
                padded = self._kept(joined)
                apart = self.price.tokens(*sheets[-1].size) + self.price.tokens(*alone)
                if self.price.resize(*padded) == padded and self.price.tokens(*padded) <= apart:
                    sheets[-1].pages.append(page_id)
                    sheets[-1].size, stacked = padded, joined
                    continue
            sheets.append(_Sheet([page_id], alone))
            stacked = (width, height)
        return sheets

    def _tokens(self, sheets: list[_Sheet]) -> int:
        return sum(self.price.tokens(*sheet.size) for sheet in sheets)

    def _span(self, memory_id: int, page_id: int) -> tuple[int, int] | None:
        """The lines [start, end) a memory takes on a page (None on a free-form page: no line grid)."""
        with self.core.session() as s:
            rows = s.execute(
                select(SpanRow.line_start, SpanRow.line_end).where(
                    SpanRow.memory_id == memory_id, SpanRow.page_id == page_id
                )
            ).all()
        spans = [(int(a), int(b)) for a, b in rows if b > a]
        return (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None

    def _used_lines(self, page_id: int) -> int:
        with self.core.session() as s:
            return int(s.scalar(select(func.max(SpanRow.line_end)).where(SpanRow.page_id == page_id)) or 0)

    def _band(
        self,
        page_id: int,
        page: Image.Image,
        lines: tuple[int, int] | None,
        probe: tuple[int, int] | None,
        text_tokens: int,
        used_lines: int,
    ) -> _Band:
        """The band of ``lines`` of ``page`` (the whole page if None) at the size it is sent: with a target,
        the smallest of ``SHRINK_SCALES`` that makes the context cheaper and whose ``probe`` lines still
        read, on the image as the target sees it."""
        renderer, side = self.core.renderer, page.height
        carried = text_tokens
        top = 0
        if lines is None:
            crop = page
        else:
            start, end = max(lines[0], 0), min(lines[1], renderer.lines_per_page)
            lines = (start, end)
            if used_lines > 0:
                carried = round(text_tokens * max(0, min(end, used_lines) - start) / used_lines)
            top, bottom = renderer.band_rows(start, end, side)
            crop = page.crop((0, top, page.width, bottom))
        chosen = crop
        if self.fitted and probe is not None:
            sizes = self._sizes()
            full = self._tokens(self._sheets({**sizes, page_id: crop.size}))
            for scale in sorted(SHRINK_SCALES):  # the smallest legible size first: the cheapest
                size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
                sheets = self._sheets({**sizes, page_id: size})
                if self._tokens(sheets) >= full:
                    continue  # no cheaper than the band as it is
                if self._legible(crop, side, top, size, self._seen(sheets, page_id, size), probe):
                    chosen = crop.resize(size, Image.Resampling.LANCZOS)
                    break
        return _Band(page, lines, chosen, text_tokens, used_lines, carried)

    def _seen(self, sheets: list[_Sheet], page_id: int, size: tuple[int, int]) -> tuple[int, int]:
        """The size the target sees the band of ``page_id``, sent at ``size``, at: its sheet resized as the
        target does."""
        for sheet in sheets:
            if page_id in sheet.pages:
                resized = self.price.resize(*sheet.size)
                width, height = size
                return (
                    max(1, round(width * resized[0] / sheet.size[0])),
                    max(1, round(height * resized[1] / sheet.size[1])),
                )
        raise AssertionError(f"page {page_id} is on no sheet")

    def _kept(self, size: tuple[int, int]) -> tuple[int, int]:
        """The smallest size at least ``size`` (by up to ``KEEP_PAD_PX`` each way) that the target keeps as
        it is, so an image padded with white to it reaches the model unscaled; ``size`` if there is none."""
        if size not in self._padded:
            width, height = size
            grown = ((width + w, height + h) for h in range(KEEP_PAD_PX) for w in range(KEEP_PAD_PX))
            self._padded[size] = next((p for p in grown if self.price.resize(*p) == p), size)
        return self._padded[size]

    def _legible(
        self,
        crop: Image.Image,
        side: int,
        top: int,
        size: tuple[int, int],
        seen_size: tuple[int, int],
        probe: tuple[int, int],
    ) -> bool:
        """Whether ``crop`` (of a ``side`` px page at its tier, from pixel row ``top``) sent at ``size`` and
        seen by the target at ``seen_size`` reads: the probe's lines read alone there within ``LEGIBLE_CER``
        of how they read at the tier. Measured once per reader, tier and scale on each axis; a reader that
        reads no single lines is offered no smaller image."""
        core, reader = self.core, self.core.reader
        sx, sy = seen_size[0] / crop.width, seen_size[1] / crop.height
        across, down = round(side * sx), round(side * sy)  # the page sides the target sees, per axis
        if across >= side and down >= side:
            return True
        cell = core.renderer.cell_width * across / core.renderer.config.page_side
        line = core.renderer.line_px(down)
        if not isinstance(reader, LineReader) or line < BAND_MIN_LINE_PX or cell < MIN_CELL_PX:
            return False
        key = (reader.name, side, across, down)
        if key not in core.legible:
            seen = crop.resize(size, Image.Resampling.LANCZOS).resize(seen_size, Image.Resampling.LANCZOS)
            sharp, small = [], []
            for i in range(probe[0], probe[1]):
                y0, y1 = core.renderer.line_top(i, side) - top, core.renderer.line_top(i + 1, side) - top
                sharp.append(crop.crop((0, math.floor(y0), crop.width, min(math.ceil(y1), crop.height))))
                y0, y1 = y0 * sy, y1 * sy
                small.append(seen.crop((0, math.floor(y0), seen.width, min(math.ceil(y1), seen.height))))
            want, got = " ".join(reader.read_lines(sharp)), " ".join(reader.read_lines(small))
            core.legible[key] = bool(want.strip()) and cer(want, got) <= LEGIBLE_CER
        return core.legible[key]


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
    most_recent: int | None,
    scope: str | None,
    k: int,
    page_form: str = "vision",
    excluded: frozenset[int] | set[int] = frozenset(),
) -> Context:
    """Vision mode: [BOS] [page tokens, "\\n"]... [hits still in the text tier, a line each]
    ["Recent conversation:\\n" + turns] [query + "\\n"]."""
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
        verbatim = text_tier_turns(core, scope)
        recent_rows = verbatim[:most_recent]
        items: list[ContextItem] = []
        header = "Recent conversation:\n"
        recent_cost = decoder.count_text(header) if recent_rows else 0
        lines: list[str] = []
        for m in recent_rows:
            line = _turn_line(m) + "\n"
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
        older = {m.id: m for m in verbatim if m.id not in skip}  # the text tier's other turns
        turns: list[tuple[int, str]] = []  # those found by the query, as text: (memory id, line)
        for hit in _candidates(core, query, k, scope, skip, set(older)):
            if hit.id in older:
                line = _turn_line(older[hit.id]) + "\n"
                cost = decoder.count_text(line)
                if used + cost <= budget_tokens:
                    used += cost
                    turns.append((hit.id, line))
                    items.append(_retrieved(hit, cost, cost))
                continue
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
        for memory_id, line in turns:
            segments.append(line)
            parts.append({"type": "text", "text": line, "memory_id": memory_id})
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
            text_counter="decoder",
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
