"""Aging: a memory's life after it is written, and its end.

age -> delete memories whose ttl ran out -> per scope: pack turns that left the text tier into pages
    -> each page's tier from the policy (turn distance, wall-clock age, ttl share) -> downsample the
    stored image (the forgetting: pixels are lost) or forget it -> verbatim text of closed pages dropped
    -> re-encode moved pages' vision tokens
pin, set_ttl change what aging does to one memory; delete and delete_scope end memories on request.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from PIL import Image
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from . import db, lexical
from .core import IN_BATCH, Core, png
from .db import EmbeddingRow, MemoryRow, PageRow, RecallRow, ScopeRow, SpanRow
from .errors import InvalidInput, MemoryNotFound
from .ingest import write_pages
from .validation import check_progress, check_timestamp, check_ttl, shown
from .vision import sync_vision

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


def age(
    core: Core, *, now: float | datetime | None = None, progress: Progress | None = None
) -> dict[str, int]:
    when = check_timestamp(now)
    check_progress(progress)
    report = {"expired": 0, "packed": 0, "pages_written": 0, "downsampled": 0, "forgotten": 0}
    with core.lock:
        report["expired"] = _expire(core, when)
        with core.session() as s:
            scopes = list(s.scalars(select(ScopeRow.name)))
        for scope in scopes:
            _pack(core, scope, report)
            _tier_pages(core, scope, when, report, progress)
        report["encoded"] = sync_vision(core)
    log.info("age: %s", report)
    return report


def _expire(core: Core, when: float) -> int:
    """Delete (as ``delete`` does: rows, vectors, page images) every memory expired at ``when``."""
    with core.session() as s:
        expired = MemoryRow.expires_at <= when  # NULL (never expires) is not <= anything
        ids = list(s.scalars(select(MemoryRow.id).where(expired).order_by(MemoryRow.id)))
    deleted = 0
    for memory_id in ids:
        try:
            delete_memory(core, memory_id, scrub_wal=False)
        except MemoryNotFound:
            continue  # another process's age() deleted it first
        deleted += 1
    if deleted:
        db.scrub_wal(core.engine)
    return deleted


# -- packing: turns out of the text tier, onto pages ---------------------------------------------------------


def _pack(core: Core, scope: str, report: dict[str, int]) -> None:
    keep = core.config.aging.text_turns
    stale_blobs: list[str] = []
    with core.write() as w:
        s = w.s
        srow = s.get(ScopeRow, scope)
        if srow is None:
            return  # deleted by another process since age() listed the scopes
        candidates = list(
            s.scalars(
                select(MemoryRow)
                .where(
                    MemoryRow.scope == scope,
                    MemoryRow.kind == "turn",
                    MemoryRow.paged.is_(False),
                    MemoryRow.pinned.is_(False),
                    MemoryRow.turn_index <= srow.turns - keep,
                )
                .order_by(MemoryRow.turn_index, MemoryRow.id)
            )
        )
        if not candidates:
            return
        open_page = s.scalars(
            select(PageRow).where(PageRow.scope == scope, PageRow.is_open.is_(True))
        ).first()
        items: list[tuple[str | None, str]] = []
        members: list[MemoryRow] = []
        offsets: list[int] = []
        if open_page is not None:
            open_spans = list(
                s.scalars(select(SpanRow).where(SpanRow.page_id == open_page.id).order_by(SpanRow.line_start))
            )
            for span in open_spans:
                memory = s.get(MemoryRow, span.memory_id)
                assert memory is not None and memory.text is not None, "open pages keep their text"
                label = memory.role if span.char_start == 0 else None
                items.append((label, memory.text[span.char_start :]))
                members.append(memory)
                offsets.append(span.char_start)
            stale_blobs.append(open_page.blob or "")
            for span in open_spans:
                s.delete(span)
            s.execute(delete(RecallRow).where(RecallRow.page_id == open_page.id))
            stale_blobs += core.drop_vision(s, [open_page.id])  # else its .npy outlives the page
            s.delete(open_page)
            s.flush()
        for memory in candidates:
            assert memory.text is not None
            items.append((memory.role, memory.text))
            members.append(memory)
            offsets.append(0)
            memory.paged = True
        pages, spans = core.renderer.layout(items)
        rows = write_pages(core, s, scope, pages, spans, members, leave_last_open=True, offsets=offsets)
        _drop_closed_text(core, s, {m.id for m in members})
        report["packed"] += len(candidates)
        report["pages_written"] += len(rows)
    core.sweep(stale_blobs)


def _drop_closed_text(core: Core, s: Session, memory_ids: Iterable[int]) -> None:
    """Forget the verbatim text of memories whose every page is closed (true optical memory).

    Two set queries per batch of ids, not two per memory: this runs for every page ``age()`` packs or
    moves, and per-memory queries were 14% of ingest time (a profile of 150k tokens streamed with
    ``age()`` every 40 sessions)."""
    if core.config.retain_text:
        return
    ids = sorted(set(memory_ids))
    for start in range(0, len(ids), IN_BATCH):
        batch = ids[start : start + IN_BATCH]
        still_open = set(
            s.scalars(
                select(SpanRow.memory_id)
                .join(PageRow, PageRow.id == SpanRow.page_id)
                .where(SpanRow.memory_id.in_(batch), PageRow.is_open.is_(True))
            )
        )
        closed = [mid for mid in batch if mid not in still_open]
        if not closed:
            continue
        for memory in s.scalars(
            select(MemoryRow).where(
                MemoryRow.id.in_(closed), MemoryRow.pinned.is_(False), MemoryRow.text.is_not(None)
            )
        ):
            memory.text = None


# -- the tier ladder -----------------------------------------------------------------------------------------


def _tier_pages(
    core: Core, scope: str, when: float, report: dict[str, int], progress: Progress | None
) -> None:
    policy = core.config.aging
    sides = [t.side for t in policy.tiers]
    with core.session() as s:
        srow = s.get(ScopeRow, scope)
        if srow is None:
            return  # deleted by another process since age() listed the scopes
        members: dict[int, list[tuple[bool, float | None, float | None]]] = {}
        # only pages still holding an image can move: forgotten ones (most of a long history) are skipped
        for page_id, pinned, ttl_s, expires_at in s.execute(
            select(SpanRow.page_id, MemoryRow.pinned, MemoryRow.ttl_s, MemoryRow.expires_at)
            .join(PageRow, PageRow.id == SpanRow.page_id)
            .join(MemoryRow, MemoryRow.id == SpanRow.memory_id)
            .where(PageRow.scope == scope, PageRow.side.is_not(None))
        ):
            members.setdefault(page_id, []).append((pinned, ttl_s, expires_at))
        pages = list(s.scalars(select(PageRow).where(PageRow.scope == scope, PageRow.side.is_not(None))))
        moves = []
        for page in pages:
            on_page = members.get(page.id, [])
            if any(pinned for pinned, _, _ in on_page) or page.lost:
                continue
            target = policy.tier_index(turns=srow.turns - page.last_turn_index, age_s=when - page.created_at)
            target = _deeper(target, _ttl_target(core, on_page, when))
            current = sides.index(page.side) if page.side in sides else -1
            if target is None or target > current:
                moves.append((page.id, None if target is None else sides[target]))
    for page_id, side in moves:
        _move_page(core, page_id, side, report)
        if progress:
            progress(1)


def _deeper(a: int | None, b: int | None) -> int | None:
    """The tier index further down the ladder (None, forgotten, is the bottom)."""
    return None if a is None or b is None else max(a, b)


def _ttl_target(
    core: Core, on_page: list[tuple[bool, float | None, float | None]], when: float
) -> int | None:
    """The tier the lifetimes of a page's memories call for: the least advanced of them, and only when
    every memory on the page has a ttl (a page is never downsampled under a memory that does not
    expire). Tier 0 when that is not so."""
    policy = core.config.aging
    targets = []
    for _, ttl_s, expires_at in on_page:
        if ttl_s is None or expires_at is None:
            return 0
        elapsed = ttl_s - (expires_at - when)
        index = policy.ttl_tier_index(elapsed_s=elapsed, ttl_s=ttl_s)
        targets.append(len(policy.tiers) if index is None else index)
    if not targets:
        return 0
    least = min(targets)
    return None if least == len(policy.tiers) else least


def _move_page(core: Core, page_id: int, side: int | None, report: dict[str, int]) -> None:
    stale: list[str] = []
    with core.write() as w:
        s = w.s
        page = s.get(PageRow, page_id)
        if page is None or page.blob is None or not _deeper_tier(core, page.side, side):
            return  # another process deleted, forgot or moved it since _tier_pages looked
        stale.append(page.blob)
        if page.is_open:
            page.is_open = False
        if side is None:
            page.side, page.blob, page.blob_bytes = None, None, 0
            report["forgotten"] += 1
        else:
            image = Image.open(io.BytesIO(core.blobs.get(page.blob)))
            small = image.resize((side, side), Image.Resampling.LANCZOS)  # the forgetting: pixels are lost
            page.blob = core.blobs.put(png(small))
            page.blob_bytes = core.blobs.size(page.blob)
            page.side = side
            report["downsampled"] += 1
        s.execute(delete(RecallRow).where(RecallRow.page_id == page_id))  # cached text of the old tier
        stale += core.drop_vision(s, [page_id])  # tokens of the old tier are forgotten with its pixels
        members = list(s.scalars(select(SpanRow.memory_id).where(SpanRow.page_id == page_id)))
        _drop_closed_text(core, s, members)
    core.sweep(stale)


def _deeper_tier(core: Core, current: int | None, target: int | None) -> bool:
    """Whether moving a page at side ``current`` to ``target`` (None: forgotten) goes down the ladder."""
    if current is None:
        return False
    if target is None:
        return True
    sides = [t.side for t in core.config.aging.tiers]
    if current in sides and target in sides:
        return sides.index(target) > sides.index(current)
    return current != target


# -- one memory's fate: pin, ttl -----------------------------------------------------------------------------


def pin(core: Core, memory_id: int, *, pinned: bool = True) -> None:
    if not isinstance(pinned, bool):
        raise InvalidInput(f"pinned must be a bool, got {type(pinned).__name__} {shown(pinned)}")
    with core.write() as w:
        core.memory(w.s, memory_id).pinned = pinned


def set_ttl(
    core: Core, memory_id: int, ttl: float | None, *, now: float | datetime | None = None
) -> float | None:
    ttl_s = check_ttl(ttl)
    when = check_timestamp(now)
    with core.write() as w:
        memory = core.memory(w.s, memory_id)
        memory.ttl_s = ttl_s
        memory.expires_at = None if ttl_s is None else when + ttl_s
        return memory.expires_at


# -- forgetting on request: delete, delete_scope -------------------------------------------------------------


def delete_memory(core: Core, memory_id: int, *, scrub_wal: bool = True) -> None:
    """``OpticalMemory.delete``; ``age`` deletes its expired memories with ``scrub_wal=False`` and scrubs
    the write-ahead log once after them all."""
    with core.lock:
        stale: list[str] = []
        with core.write() as w:
            s = w.s
            memory = core.memory(s, memory_id)
            scope = memory.scope
            eids = list(s.scalars(select(EmbeddingRow.id).where(EmbeddingRow.memory_id == memory_id)))
            for span in list(s.scalars(select(SpanRow).where(SpanRow.memory_id == memory_id))):
                page = s.get(PageRow, span.page_id)
                assert page is not None
                others = s.scalar(
                    select(func.count(SpanRow.id)).where(
                        SpanRow.page_id == page.id, SpanRow.memory_id != memory_id
                    )
                )
                if page.blob:
                    stale.append(page.blob)
                stale += core.drop_vision(s, [page.id])  # the tokens show the deleted lines too
                if not others:
                    s.delete(page)
                elif page.blob:
                    image = Image.open(io.BytesIO(core.blobs.get(page.blob)))
                    page.blob = core.blobs.put(
                        png(core.renderer.redact(image, span.line_start, span.line_end))
                    )
                    page.blob_bytes = core.blobs.size(page.blob)
                    s.execute(delete(RecallRow).where(RecallRow.page_id == page.id))
            s.execute(delete(SpanRow).where(SpanRow.memory_id == memory_id))
            lexical.remove(s, eids)
            s.execute(delete(EmbeddingRow).where(EmbeddingRow.memory_id == memory_id))
            s.delete(memory)
            if eids:
                w.removed[scope] = eids
        core.sweep(stale)
    if scrub_wal:
        db.scrub_wal(core.engine)


def delete_scope(core: Core, scope: str) -> int:
    with core.lock:
        with core.write() as w:
            s = w.s
            core.scope(s, scope)
            blobs = [b for b in s.scalars(select(PageRow.blob).where(PageRow.scope == scope)) if b]
            pids_list = list(s.scalars(select(PageRow.id).where(PageRow.scope == scope)))
            blobs += core.drop_vision(s, pids_list)
            count = s.scalar(select(func.count(MemoryRow.id)).where(MemoryRow.scope == scope)) or 0
            mids = select(MemoryRow.id).where(MemoryRow.scope == scope)
            pids = select(PageRow.id).where(PageRow.scope == scope)
            s.execute(delete(RecallRow).where(RecallRow.page_id.in_(pids)))
            s.execute(delete(SpanRow).where(SpanRow.memory_id.in_(mids)))
            lexical.remove_scope(s, scope)
            s.execute(delete(EmbeddingRow).where(EmbeddingRow.scope == scope))
            s.execute(delete(PageRow).where(PageRow.scope == scope))
            s.execute(delete(MemoryRow).where(MemoryRow.scope == scope))
            s.execute(delete(ScopeRow).where(ScopeRow.name == scope))
            w.dropped.append(scope)
        core.sweep(blobs)
        db.scrub_wal(core.engine)
        return count
