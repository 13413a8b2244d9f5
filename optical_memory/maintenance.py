"""Maintenance: what the store holds (stats), and whether it is whole (verify and repair): page blobs
against their hashes, orphan blobs, vision tokens, and the index against SQL. Repair re-draws a damaged
page from what is still known of it (retained text, else the cached read of its tier), marks the rest lost,
sweeps the damaged files, drops damaged tokens, sweeps orphans, rebuilds the index.
"""

from __future__ import annotations

import logging

from PIL import Image
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from . import lexical
from .config import vision_tokens
from .core import Core, png, tier_name
from .db import EmbeddingRow, MemoryRow, PageRow, RecallRow, ScopeRow, SpanRow, VisionRow
from .types import Stats, TierStats, VerifyReport

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 60.0  # how old an unreferenced blob must be before verify() calls it an orphan


def stats(core: Core) -> Stats:
    with core.lock, core.session() as s:
        n_memories = s.scalar(select(func.count(MemoryRow.id))) or 0
        n_scopes = s.scalar(select(func.count(ScopeRow.name))) or 0
        text_rows = s.execute(
            select(
                func.count(MemoryRow.id),
                func.coalesce(func.sum(MemoryRow.text_tokens), 0),
                func.coalesce(func.sum(MemoryRow.n_chars), 0),
            ).where(MemoryRow.paged.is_(False))
        ).one()
        page_rows = s.execute(
            select(
                PageRow.side,
                func.count(PageRow.id),
                func.coalesce(func.sum(PageRow.text_tokens), 0),
                func.coalesce(func.sum(PageRow.blob_bytes), 0),
            ).group_by(PageRow.side)
        ).all()
        mem_tiers = s.execute(
            select(PageRow.side, func.count(func.distinct(SpanRow.memory_id)))
            .join(SpanRow, SpanRow.page_id == PageRow.id)
            .group_by(PageRow.side)
        ).all()
    per_side_memories = {side: n for side, n in mem_tiers}
    tiers = [
        TierStats(
            tier="text",
            memories=text_rows[0],
            pages=0,
            text_tokens=int(text_rows[1]),
            vision_tokens=0,
            compression=None,
            bytes=int(text_rows[2]),
        )
    ]
    for side, n_pages, tokens, nbytes in sorted(page_rows, key=lambda r: -(r[0] or 0)):
        vt = vision_tokens(side) * n_pages if side else 0
        tiers.append(
            TierStats(
                tier=tier_name(side),
                memories=per_side_memories.get(side, 0),
                pages=n_pages,
                text_tokens=int(tokens),
                vision_tokens=vt,
                compression=(tokens / vt) if vt else None,
                bytes=int(nbytes),
            )
        )
    return Stats(
        memories=n_memories,
        pages=sum(t.pages for t in tiers),
        scopes=n_scopes,
        text_tokens=sum(t.text_tokens for t in tiers),
        vision_tokens=sum(t.vision_tokens for t in tiers),
        bytes_on_disk=sum(t.bytes for t in tiers),
        tiers=tiers,
    )


# -- verify and repair ---------------------------------------------------------------------------------------


def verify(core: Core, *, repair: bool = False, orphan_grace_s: float = ORPHAN_GRACE_S) -> VerifyReport:
    with core.lock:
        rerendered: list[int] = []
        from_cache: list[int] = []
        lost: list[int] = []
        with core.session() as s:
            pages = list(s.execute(select(PageRow.id, PageRow.blob).where(PageRow.blob.is_not(None))).all())
        suspects = [page_id for page_id, blob in pages if blob and core.blobs.check(blob)]
        missing, corrupt = _damaged_pages(core, suspects)
        with core.blobs.sweeping():  # no writer is between writing a blob and committing its row
            with core.session() as s:
                referenced = {b for b in s.scalars(select(PageRow.blob).where(PageRow.blob.is_not(None)))}
                vision = list(s.execute(select(VisionRow.page_id, VisionRow.blob)).all())
            referenced |= {blob for _, blob in vision}
            orphans = [
                n for n in core.blobs.names() if n not in referenced and core.blobs.age_s(n) >= orphan_grace_s
            ]
            if repair:
                for name in orphans:
                    core.blobs.delete(name)
        damaged_vision = [page_id for page_id, blob in vision if core.blobs.check(blob)]
        index_ok = index_matches_sql(core)
        with core.session() as s:
            lexical_orphans = lexical.orphans(s)
        if repair:
            if lexical_orphans:
                with core.write() as w:
                    lexical.remove(w.s, lexical.orphans(w.s))
            if damaged_vision:  # tokens are derived data: drop them, the next sync re-encodes
                with core.write() as w:
                    stale = core.drop_vision(w.s, damaged_vision)
                core.sweep(stale)
            for page_id in sorted(missing + corrupt):
                healed = _heal(core, page_id)
                if healed is not None:  # None: another process deleted or healed it meanwhile
                    (lost if healed == LOST else rerendered).append(page_id)
                    if healed == CACHED:
                        from_cache.append(page_id)
            if not index_ok:
                core.rebuild_index()
        return VerifyReport(
            pages_checked=len(pages),
            missing_blobs=missing,
            corrupt_blobs=corrupt,
            orphan_blobs=orphans,
            damaged_vision=damaged_vision,
            lexical_orphans=len(lexical_orphans),
            rerendered=rerendered,
            from_cache=from_cache,
            marked_lost=lost,
            index_rebuilt=repair and not index_ok,
            repaired=repair,
        )


def _damaged_pages(core: Core, suspects: list[int]) -> tuple[list[int], list[int]]:
    """Of pages whose blob failed a check, those whose blob is still missing or corrupt once the write
    lock is held (another process may have moved a page, and swept its old blob, since it was listed)."""
    missing: list[int] = []
    corrupt: list[int] = []
    if not suspects:
        return missing, corrupt
    with core.write() as w:
        for page_id in suspects:
            page = w.s.get(PageRow, page_id)
            problem = core.blobs.check(page.blob) if page is not None and page.blob else None
            if problem == "missing":
                missing.append(page_id)
            elif problem == "corrupt":
                corrupt.append(page_id)
    return missing, corrupt


def index_matches_sql(core: Core) -> bool:
    """Whether the index, caught up, holds exactly SQL's vector ids, each under its own scope (checked
    under the write lock, so no writer moves SQL meanwhile)."""
    with core.write() as w:
        core.sync_index()
        in_sql: dict[str, set[int]] = {}
        for scope, vid in w.s.execute(select(EmbeddingRow.scope, EmbeddingRow.id)):
            in_sql.setdefault(scope, set()).add(vid)
        in_index = {scope: ids for scope, ids in core.index.ids().items() if ids}
        if in_index != in_sql:
            log.warning(
                "index holds %d vectors in %d scopes, SQL %d in %d",
                sum(map(len, in_index.values())),
                len(in_index),
                sum(map(len, in_sql.values())),
                len(in_sql),
            )
            return False
        return True


def heal_page(core: Core, page_id: int) -> bool | None:
    """Re-draw a damaged page (True), or mark it lost (False); None if, once the write lock is held, it is
    gone or no longer damaged (another process deleted, moved or healed it, or stored its bytes again)."""
    healed = _heal(core, page_id)
    return None if healed is None else healed != LOST


LOST = "lost"
RETAINED = "retained"
CACHED = "cached"


def _heal(core: Core, page_id: int) -> str | None:
    """Heal a damaged page from what is still known of it, in this order, and say from what:

    1. ``RETAINED``: every memory on it retains its text: the page is drawn again exactly as it was
       (downsampled to its tier); the recall cache of the old pixels is dropped.
    2. ``CACHED``: a reader's read of the page at its current tier is cached (this store's reader first):
       the page is drawn from those lines (with any retained text drawn exactly over them), and that read
       is kept, so recall returns what was readable before the damage. A read of an earlier, sharper tier
       is never used: that would give back what aging took away.
    3. ``LOST``: nothing is known: the page is marked lost, its memories forgotten (rows and gists remain).

    A free-form page (a scan, a PDF page) has no line grid to draw again: it comes back as a text page of
    its retained text or its read. The damaged file and the page's vision tokens are swept once the change
    commits.
    """
    stale: list[str] = []
    try:
        with core.write() as w:
            s = w.s
            page = s.get(PageRow, page_id)
            if page is None or page.blob is None or core.blobs.check(page.blob) is None:
                return None
            stale += core.drop_vision(s, [page_id])  # tokens of damaged pixels are not to be trusted
            stale.append(page.blob)  # the damaged file itself: swept unless the healed page has its name
            spans = list(
                s.scalars(select(SpanRow).where(SpanRow.page_id == page_id).order_by(SpanRow.line_start))
            )
            texts = [_retained(s.get(MemoryRow, sp.memory_id), sp) for sp in spans]
            read = _cached_read(core, s, page)
            if not spans or any(
                t is None and not _covers(read, sp) for sp, t in zip(spans, texts, strict=True)
            ):
                page.lost, page.side, page.blob, page.blob_bytes = True, None, None, 0
                return LOST
            lines = _page_lines(core, page, spans, texts, read)
            image = core.renderer.draw(lines)
            if page.side is not None and page.side != image.width:
                image = image.resize((page.side, page.side), Image.Resampling.LANCZOS)
            page.blob = core.blobs.put(png(image))
            page.blob_bytes = core.blobs.size(page.blob)
            source = RETAINED if all(t is not None for t in texts) else CACHED
            forget = delete(RecallRow).where(RecallRow.page_id == page_id)
            if source == CACHED and read is not None:  # the read the page was drawn from stays its read
                forget = forget.where((RecallRow.side != read.side) | (RecallRow.reader != read.reader))
            s.execute(forget)
            return source
    finally:
        core.sweep(stale)  # after the commit: nothing refers to these blobs by then


def _retained(memory: MemoryRow | None, span: SpanRow) -> tuple[str | None, str] | None:
    """A span's ``(speaker, text)`` as the renderer laid it out, if its memory retains its text."""
    if memory is None or memory.text is None:
        return None
    return (memory.role if span.char_start == 0 else None), memory.text[span.char_start : span.char_end]


def _covers(read: RecallRow | None, span: SpanRow) -> bool:
    """Whether a cached read holds every line of a span (a read of single lines may hold only some)."""
    if read is None:
        return False
    if span.line_end <= span.line_start:  # a free-form page: read whole, as line 0
        return "0" in read.lines
    return all(str(i) in read.lines for i in range(span.line_start, span.line_end))


def _cached_read(core: Core, s: Session, page: PageRow) -> RecallRow | None:
    """A reader's cached read of a page at its current tier, this store's reader's first."""
    if page.side is None:
        return None
    reads = list(
        s.scalars(
            select(RecallRow)
            .where(RecallRow.page_id == page.id, RecallRow.side == page.side)
            .order_by(RecallRow.reader)
        )
    )
    if len(reads) > 1:  # only then is the reader made (a model's reader loads nothing until it reads)
        mine = core.reader.name
        reads.sort(key=lambda r: r.reader != mine)
    return reads[0] if reads else None


def _page_lines(
    core: Core,
    page: PageRow,
    spans: list[SpanRow],
    texts: list[tuple[str | None, str] | None],
    read: RecallRow | None,
) -> list[str]:
    """The lines to draw a damaged page from: its cached read, then each span whose text is retained laid
    out alone where the renderer put it (a span's lines depend on its text only). A free-form page (a
    scan) comes back as a text page of what is known of it."""
    renderer = core.renderer
    lines = [""] * renderer.lines_per_page
    if page.render_side == 0:  # free-form: one span, read as one block of text
        known = texts[0][1] if texts[0] is not None else (read.lines.get("0", "") if read else "")
        drawn, _ = renderer.layout([(None, known)])
        return [line.text for line in drawn[0]]
    if read is not None:
        for key, text in read.lines.items():
            if 0 <= int(key) < len(lines):  # a line read wider than a line keeps what fits
                wrapped, _ = renderer.layout([(None, " ".join(text.split()))])
                lines[int(key)] = wrapped[0][0].text
    for span, item in zip(spans, texts, strict=True):
        if item is not None:
            drawn, _ = renderer.layout([item])
            for offset, line in enumerate(drawn[0][: span.line_end - span.line_start]):
                lines[span.line_start + offset] = line.text
    return lines
