"""Reading: memories back as text.

    recall -> retained text as it is, or: the memory's spans -> the reader over each span's own lines, cut
              from its page image at its current tier (the whole page when the reader reads only pages,
              or the page is a scan), cached in SQL per page, tier and reader -> the span's lines joined
              back as the renderer recorded them, the role label stripped
A page whose image is missing or corrupt is not read, not even from the cache: recall raises ``BlobError``
naming it, and ``verify(repair=True)`` re-draws it from its retained text or its cached read.
Also the turns still verbatim in the text tier, a page's text as retained, and page images as stored.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, wait
from contextlib import contextmanager

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from .core import FORGOTTEN, Core, Write, live, tier_of
from .db import MemoryRow, PageRow, RecallRow, ScopeRow, SpanRow
from .errors import BlobError, InvalidInput
from .ingest import JOIN_CODES
from .protocols import LineReader, Reader
from .render import STAND_INS, restore
from .types import PagePlace, Recall
from .validation import check_progress, is_sql_int, now, page_id_fits, shown

log = logging.getLogger(__name__)

JOIN_CHARS = {v: k for k, v in JOIN_CODES.items()}
READ_ATTEMPTS = 4  # reads of a page that keeps changing under them before the error is raised
BAND_LINES = 24  # a LineReader reads up to this many lines of a page one by one; more: the whole page
# Lines shorter than this at a page's tier are read with the whole page: at 256 px (4.75 px lines) RapidOCR
# read single lines worse than the page (CER 0.30 vs 0.23); at 384 px (7.1 px) no worse (0.0095 vs 0.0108).
BAND_MIN_LINE_PX = 6.0
# A line is read scaled in one step to READ_LINE_PX tall with its character cells READ_CELL_PX wide.
# RapidOCR's recogniser scales every line to 48 px tall (bilinear), so its time follows the width it gets:
# cells drawn 9 x 19 px come out 23 px wide. On 153 rendered lines, 15 px cells read 1.6x faster at every
# tier, at the same CER (1024 and 640 px: 0.0000; 512: 0.0001 against 0.0002; 384: 0.0049 against 0.0062);
# narrower ones cost accuracy (11 px at 384: 0.020).
READ_LINE_PX = 48
READ_CELL_PX = 15.0


class _PageMoved(Exception):
    """A page changed under a read: another process moved, redacted or deleted it. Read it again."""


def recall(core: Core, memory_id: int, *, read: bool = False) -> Recall:
    if is_sql_int(memory_id):  # anything else is named by read_back
        prefetch(core, [memory_id], retained=read)  # read outside the lock what is not cached yet
    return read_back(core, memory_id, read=read)


def read_back(core: Core, memory_id: int, *, read: bool = False) -> Recall:
    """A memory as text, under the store's lock: what :func:`prefetch` cached is taken from the cache, the
    rest is read here (a caller that prefetched already, as a context does, calls this directly)."""
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return _recall(core, memory_id, read=read)
        except _PageMoved:
            continue  # another process aged or redacted a page while it was read
    return _recall(core, memory_id, read=read, last_try=True)


def _recall(core: Core, memory_id: int, *, read: bool, last_try: bool = False) -> Recall:
    with core.lock, core.session() as s:
        memory = core.memory(s, memory_id)
        spans = list(
            s.scalars(select(SpanRow).where(SpanRow.memory_id == memory_id).order_by(SpanRow.char_start))
        )
        pages = {
            p.id: p for p in s.scalars(select(PageRow).where(PageRow.id.in_([sp.page_id for sp in spans])))
        }
        tier = tier_of(memory.paged, [p.side for p in pages.values()])
        if memory.text is not None and (not read or not memory.paged):
            return Recall(
                id=memory.id, text=turn_text(memory), tier=tier, source="retained", role=memory.role
            )
        parts = []
        for sp in spans:
            page = pages[sp.page_id]
            if page.side is None or page.blob is None:
                continue  # forgotten (or lost): nothing left to read
            wanted = range(sp.line_start, sp.line_end)  # empty on a free-form page: it is read whole
            lines = _page_lines(core, s, page, memory_id, wanted, last_try=last_try)
            parts.append(_assemble(sp, lines, memory.role))
        if not parts:
            return Recall(id=memory.id, text="", tier=tier, source=FORGOTTEN, role=memory.role)
        text = restore("".join(parts).strip(), memory.meta.get(STAND_INS))
        return Recall(id=memory.id, text=text, tier=tier, source=core.reader.name, role=memory.role)


def _page_lines(
    core: Core, s: Session, page: PageRow, memory_id: int, wanted: range, *, last_try: bool = False
) -> dict[int, str]:
    """Reader output for the ``wanted`` lines of a page at its current tier (more lines where they were read
    already), by line index; cached in SQL per tier, and only while the page still shows what was read
    (checked under the write lock: a concurrent redaction or move must not be cached over with the old
    pixels' text).

    A reader that reads single lines (a :class:`LineReader`) reads just the wanted lines not cached yet,
    each cut from the page where the renderer drew it, unless they are more than ``BAND_LINES`` or the
    page's lines are under ``BAND_MIN_LINE_PX`` tall at its tier: then the whole page is read at once,
    which fills the cache for every line. Other readers, and free-form pages (PDF pages, images: no line
    geometry), always read the whole page."""
    assert page.side is not None and page.blob is not None
    reader = core.reader
    try:  # checked even when the read is cached: no text is served as read from pixels that are gone
        data = core.blobs.get(page.blob)
    except BlobError as e:
        if not last_try and _page_blob(core, page.id) != page.blob:
            raise _PageMoved from None
        raise BlobError(
            f"cannot recall memory {memory_id}: page {page.id}: {e}; run verify(repair=True): it re-draws "
            "the page from what is still known (its retained text, or its cached read)"
        ) from None
    cached = s.get(RecallRow, (page.id, page.side, reader.name))
    have = {} if cached is None else {int(k): v for k, v in cached.lines.items()}
    by_line = _by_line(core, page.side, page.render_side)
    missing = [i for i in wanted if i not in have]
    if cached is not None and (by_line is None or not missing):
        return have
    image = Image.open(io.BytesIO(data))
    if by_line is not None and len(missing) <= BAND_LINES:
        read = dict(zip(missing, _read_lines(core, by_line, [(image, i) for i in missing]), strict=True))
    else:
        read = _read_page(core, image, page.render_side == 0)
    with core.write() as w:
        _cache_lines(w, page.id, page.blob, page.side, reader.name, read)
    return have | read


def _by_line(core: Core, side: int, render_side: int) -> LineReader | None:
    """The store's reader, if it reads this page line by line: it is a :class:`LineReader`, the page has a
    line grid (not a scan), and its lines are at least ``BAND_MIN_LINE_PX`` tall at ``side``."""
    reader = core.reader
    readable = render_side != 0 and core.renderer.line_px(side) >= BAND_MIN_LINE_PX
    return reader if isinstance(reader, LineReader) and readable else None


def _read_lines(core: Core, reader: LineReader, lines: list[tuple[Image.Image, int]]) -> list[str]:
    """Lines ``(page image, line index)``, each cut from its page and scaled to ``READ_LINE_PX`` tall with
    ``READ_CELL_PX`` cells, read in one call, in order ("" for a line with no ink)."""
    bands = [
        core.renderer.line_band(image, i, height=READ_LINE_PX, cell_px=READ_CELL_PX) for image, i in lines
    ]
    texts = iter(reader.read_lines([band for band in bands if band is not None]))
    return ["" if band is None else next(texts) for band in bands]


def _cache_lines(w: Write, page_id: int, blob: str, side: int, reader: str, read: Mapping[int, str]) -> None:
    """Merge lines read from a page into its cached read at ``side``, only while the page still shows the
    pixels they were read from (a concurrent move, redaction or delete is not cached over); lines another
    process read meanwhile are kept."""
    current = w.s.get(PageRow, page_id)
    if current is None or (current.blob, current.side) != (blob, side):
        return
    row = w.s.get(RecallRow, (page_id, side, reader))
    lines = ({} if row is None else dict(row.lines)) | {str(k): v for k, v in read.items()}
    w.s.merge(RecallRow(page_id=page_id, side=side, reader=reader, lines=lines))


def prefetch(core: Core, memory_ids: Sequence[int], *, retained: bool = False) -> None:
    """Read into the cache what recall will read of these memories (a context's hits), without the store's
    lock while the reader runs, so that other calls go on meanwhile: the lines not cached yet on pages a
    :class:`LineReader` reads by line, in one call of the reader, then the pages recall would read whole,
    one at a time (:func:`preread`). Memories whose text is retained are skipped unless ``retained`` (a
    recall with ``read=True``). Pages whose image is missing, corrupt or changing are left to recall,
    which reads them or says why not."""
    reader = core.reader
    if not memory_ids:
        return
    with core.lock, core.session() as s:
        query = (
            select(
                SpanRow.page_id,
                SpanRow.line_start,
                SpanRow.line_end,
                PageRow.blob,
                PageRow.side,
                PageRow.render_side,
            )
            .join(PageRow, PageRow.id == SpanRow.page_id)
            .join(MemoryRow, MemoryRow.id == SpanRow.memory_id)
            .where(
                SpanRow.memory_id.in_(list(memory_ids)),
                PageRow.blob.is_not(None),
                PageRow.side.is_not(None),
            )
        )
        rows = s.execute(query if retained else query.where(MemoryRow.text.is_(None))).all()
        wanted: dict[tuple[int, str, int], set[int]] = {}
        whole: list[int] = []
        for page_id, start, end, blob, side, render_side in rows:
            if blob and side and isinstance(reader, LineReader) and _by_line(core, side, render_side):
                wanted.setdefault((page_id, blob, side), set()).update(range(start, end))
            elif blob and side and page_id not in whole:
                whole.append(page_id)
        todo: list[tuple[tuple[int, str, int], int, Image.Image]] = []
        for (page_id, blob, side), lines in wanted.items():
            cached = s.get(RecallRow, (page_id, side, reader.name))
            missing = sorted(lines - ({int(k) for k in cached.lines} if cached is not None else set()))
            if len(missing) > BAND_LINES:
                whole.append(page_id)  # recall reads it whole
                continue
            if not missing:
                continue
            try:
                image = Image.open(io.BytesIO(core.blobs.get(blob)))
            except BlobError:
                continue  # recall names it
            todo += [((page_id, blob, side), i, image) for i in missing]
    if todo:
        assert isinstance(reader, LineReader)
        texts = _read_lines(core, reader, [(image, i) for _, i, image in todo])
        read: dict[tuple[int, str, int], dict[int, str]] = {}
        for (key, i, _), text in zip(todo, texts, strict=True):
            read.setdefault(key, {})[i] = text
        with core.write() as w:
            for (page_id, blob, side), page_lines in read.items():
                _cache_lines(w, page_id, blob, side, reader.name, page_lines)
    if whole:
        preread(core, whole)  # skips the pages cached already


def _read_page(core: Core, image: Image.Image, free_form: bool) -> dict[int, str]:
    """The reader over a whole page: a free-form page's text as line 0; a rendered page's text by line,
    every line of the page present ("" where none was read)."""
    found = core.reader.read([image])[0]
    if free_form:  # a PDF page or an image: all its text, in reading order
        return {0: "\n".join(t.text for t in found)}
    placed: dict[int, list[tuple[float, str]]] = {}
    for number, t in enumerate(found):
        if t.box is None:
            index, x = number, 0.0
        else:
            index, x = core.renderer.line_at((t.box[1] + t.box[3]) / 2, image.height), t.box[0]
        placed.setdefault(index, []).append((x, t.text))
    lines = {i: "" for i in range(core.renderer.lines_per_page)}
    lines.update({i: " ".join(text for _, text in sorted(v)) for i, v in placed.items()})
    return lines


def _assemble(span: SpanRow, lines: Mapping[int, str], role: str | None) -> str:
    """Rebuild a span's text from the reader's lines and the renderer's join record."""
    if span.line_end <= span.line_start:  # free-form page
        return lines.get(0, "")
    out = []
    for offset, index in enumerate(range(span.line_start, span.line_end)):
        text = lines.get(index, "")
        if offset == 0 and span.label_len:
            text = _strip_label(text, role)
        out.append(text.strip())
        join = JOIN_CHARS[span.joins[offset]] if offset < len(span.joins) else "\n"
        out.append(join)
    return "".join(out)


def _strip_label(text: str, role: str | None) -> str:
    """Drop the "role: " label a turn's first line starts with (as the reader saw it)."""
    if role and text.lower().startswith(role.lower()):
        return text[len(role) :].lstrip(" :;.")
    head, sep, tail = text.partition(":")
    return tail.lstrip() if sep and len(head) <= 64 and " " not in head.strip() else text


# -- reading ahead -------------------------------------------------------------------------------------------


def unread_pages(core: Core, scope: str | None = None) -> list[int]:
    """Pages a recall would read whole at their current tier and no read of which is cached there, newest
    first: pages that still hold an image, are closed (an open page still changes), and show a memory whose
    text was not kept; read whole because the reader reads only pages, or the page is a scan, or its lines
    are under ``BAND_MIN_LINE_PX`` tall at its tier (at 256 px: 3.5-4 s a page, where a band of a 1024 px page
    is read in a tenth of a second)."""
    reader = core.reader
    with core.session() as s:
        if scope is not None:
            core.scope(s, scope)
        # both correlated, so each looks up one page's rows by index (an IN over every span of the store
        # took 170 ms at 10M tokens)
        unkept = (
            select(SpanRow.id)
            .join(MemoryRow, MemoryRow.id == SpanRow.memory_id)
            .where(SpanRow.page_id == PageRow.id, MemoryRow.text.is_(None))
        )
        cached = select(RecallRow.page_id).where(
            RecallRow.page_id == PageRow.id, RecallRow.side == PageRow.side, RecallRow.reader == reader.name
        )
        stmt = select(PageRow.id, PageRow.side, PageRow.render_side).where(
            PageRow.side.is_not(None),
            PageRow.blob.is_not(None),
            PageRow.is_open.is_(False),
            PageRow.lost.is_(False),
            unkept.exists(),
            ~cached.exists(),
        )
        if scope is not None:
            stmt = stmt.where(PageRow.scope == scope)
        rows = s.execute(stmt.order_by(PageRow.id.desc())).all()
    return [page for page, side, render_side in rows if side and _by_line(core, side, render_side) is None]


def preread(
    core: Core,
    page_ids: Sequence[int],
    *,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Read these pages whole into the cache at their current tier, one at a time, without the store's lock
    while the reader runs (other calls go on; one that needs the reader waits for the page in hand). A page
    cached, moved, forgotten or damaged meanwhile is skipped (recall reads it or names the damage).
    Returns how many pages were read; stops between pages once ``stop`` is set."""
    check_progress(progress)
    reader = core.reader
    done = 0
    for page_id in page_ids:
        if stop is not None and stop.is_set():
            break
        with _one_reader(core, page_id):
            if _preread_page(core, reader, page_id):
                done += 1
                if progress is not None:
                    progress(1)
    return done


def _preread_page(core: Core, reader: Reader, page_id: int) -> bool:
    """Read one page whole into the cache unless it is cached already, gone, or damaged; whether it was."""
    with core.lock, core.session() as s:
        page = s.get(PageRow, page_id)
        if page is None or page.side is None or page.blob is None:
            return False
        blob, side, free_form = page.blob, page.side, page.render_side == 0
        if s.get(RecallRow, (page_id, side, reader.name)) is not None:
            return False
    try:
        image = Image.open(io.BytesIO(core.blobs.get(blob)))
    except BlobError as e:
        if _page_blob(core, page_id) == blob:  # damaged, not moved: recall names it, verify heals it
            log.warning("preread: page %d not read: %s", page_id, e)
        return False
    read = _read_page(core, image, free_form)
    with core.write() as w:
        _cache_lines(w, page_id, blob, side, reader.name, read)
    return True


@contextmanager
def _one_reader(core: Core, page_id: int) -> Iterator[None]:
    """Hold the page's read: one thread reads a page whole at a time, and the others wait for it (then find
    it cached) instead of reading it again. A thread that holds the store's lock does not wait (the reader
    would need that lock to cache its read): it reads the page itself, as it did before this existed. Best
    effort: a waiter can miss a read that ended as it arrived and read the page again."""
    # whether this thread holds the store's lock: threading.Condition asks an RLock the same way
    waits = not core.lock._is_owned()  # type: ignore[attr-defined]
    with core.lock:
        claim = core.page_reads.setdefault(page_id, threading.Lock())
    if waits:
        claim.acquire()
    elif not claim.acquire(blocking=False):
        yield
        return
    try:
        yield
    finally:
        claim.release()
        with core.lock:
            if not claim.locked() and core.page_reads.get(page_id) is claim:
                del core.page_reads[page_id]


class Prereader:
    """Reads a store's unread pages (:func:`unread_pages`) on one background thread, so that a first recall
    finds them cached. :meth:`start` while it runs makes it look again once it has caught up; :meth:`close`
    stops it after the page in hand. Its thread is a daemon: an exit mid-read loses only that read."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._again = False  # look for unread pages again before the run ends
        self._done: Future[int] | None = None  # the run in progress

    def start(self) -> Future[int]:
        """Read every unread page in the background; the future gives how many this run read once none is
        left (a run started meanwhile shares it), or the reader's error."""
        with self._lock:
            if self._stop.is_set():
                raise InvalidInput("the store is closed: nothing can be read ahead")
            self._again = True
            if self._done is None:
                self._done = Future()
                threading.Thread(
                    target=self._run, args=(self._done,), name="optical-memory-preread", daemon=True
                ).start()
            return self._done

    def _run(self, done: Future[int]) -> None:
        read = 0
        try:
            while True:
                with self._lock:
                    if not self._again or self._stop.is_set():
                        self._done = None  # caught up (or closed): the next start() begins a new run
                        break
                    self._again = False
                read += preread(self._core, unread_pages(self._core), stop=self._stop)
        except Exception as e:  # handed to whoever waits on the future, logged for who does not
            with self._lock:
                self._done = None
            log.exception("preread stopped")
            done.set_exception(e)
            return
        done.set_result(read)

    def close(self) -> None:
        """Stop after the page in hand and wait for that."""
        with self._lock:
            self._stop.set()
            done = self._done
        if done is not None:
            wait([done])


# -- page images ---------------------------------------------------------------------------------------------


def _page_blob(core: Core, page_id: int) -> str | None:
    """A page's blob as SQL has it now (None: deleted or forgotten)."""
    with core.session() as s:
        return s.scalar(select(PageRow.blob).where(PageRow.id == page_id))


def page_bytes(core: Core, page_id: int, blob: str) -> bytes | None:
    """A page image's bytes, following the page if another process moves it meanwhile (None once it is
    deleted or forgotten); ``BlobError`` if its blob is really missing or corrupt."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return core.blobs.get(blob)
        except BlobError:
            current = _page_blob(core, page_id)
            if current is None:
                return None
            if current == blob or attempt == READ_ATTEMPTS - 1:
                raise
            blob = current
    return None


def damaged_pages(core: Core, memory_id: int) -> list[int]:
    """The pages holding a memory whose image is missing or corrupt."""
    with core.session() as s:
        pages = s.execute(
            select(PageRow.id, PageRow.blob)
            .join(SpanRow, SpanRow.page_id == PageRow.id)
            .where(SpanRow.memory_id == memory_id, PageRow.blob.is_not(None))
            .order_by(PageRow.id)
        ).all()
    return [page_id for page_id, blob in pages if blob and core.blobs.check(blob)]


def page_image(core: Core, memory_id: int, *, page_id: int | None = None) -> list[Image.Image]:
    with core.lock, core.session() as s:
        core.memory(s, memory_id)
        page_ids = list(
            s.scalars(
                select(SpanRow.page_id).where(SpanRow.memory_id == memory_id).order_by(SpanRow.char_start)
            )
        )
        if page_id is not None:
            if page_id not in page_ids:
                raise InvalidInput(f"page {shown(page_id)} does not hold memory {memory_id}")
            page_ids = [page_id]
        blobs = {
            pid: blob
            for pid, blob in s.execute(select(PageRow.id, PageRow.blob).where(PageRow.id.in_(page_ids)))
        }
    found = [page_bytes(core, i, b) for i, b in ((i, blobs.get(i)) for i in page_ids) if b]
    return [Image.open(io.BytesIO(data)) for data in found if data is not None]


def memory_pages(core: Core, memory_id: int) -> list[PagePlace]:
    with core.lock, core.session() as s:
        core.memory(s, memory_id)
        rows = s.execute(
            select(SpanRow.page_id, SpanRow.line_start, SpanRow.line_end, PageRow.side, PageRow.render_side)
            .join(PageRow, PageRow.id == SpanRow.page_id)
            .where(SpanRow.memory_id == memory_id)
            .order_by(SpanRow.char_start)
        ).all()
    renderer, places = core.renderer, []
    for page_id, start, end, side, render_side in rows:
        tier = tier_of(True, [side])
        if render_side == 0 or end <= start:  # a scan, a PDF page or an image: no line grid
            places.append(PagePlace(page_id, tier, None, None))
            continue
        height = renderer.config.page_side
        top, bottom = (renderer.line_top(i, height) / height for i in (start, end))
        places.append(PagePlace(page_id, tier, round(top, 6), round(min(bottom, 1.0), 6)))
    return places


def page_text(core: Core, page_id: int) -> str | None:
    if not page_id_fits(page_id):
        return None
    with core.lock, core.session() as s:
        spans = list(
            s.scalars(select(SpanRow).where(SpanRow.page_id == page_id).order_by(SpanRow.line_start))
        )
        if not spans:
            return None
        parts = []
        for sp in spans:
            m = s.get(MemoryRow, sp.memory_id)
            if m is None or m.text is None:
                return None
            label = f"{m.role}: " if m.role and sp.char_start == 0 else ""
            parts.append(label + m.text[sp.char_start : sp.char_end])
        return "\n".join(parts)


# -- the text tier -------------------------------------------------------------------------------------------


def recent_turns(core: Core, scope: str, *, limit: int | None = None) -> list[Recall]:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise InvalidInput(f"limit must be None or a non-negative int, got {shown(limit)}")
    with core.lock:
        rows = text_tier_turns(core, scope)[:limit]
        return [
            Recall(id=m.id, text=turn_text(m), tier="text", source="retained", role=m.role)
            for m in reversed(rows)
        ]


def turn_text(memory: MemoryRow) -> str:
    """A memory's retained text as it was given: stand-ins drawn for characters no font has restored."""
    return restore(memory.text or "", memory.meta.get(STAND_INS))


def text_tier_turns(core: Core, scope: str | None) -> list[MemoryRow]:
    """Turns still in the text tier and not expired, newest first (``scope`` checked to exist)."""
    with core.session() as s:
        if scope is not None:
            core.scope(s, scope)
        stmt = select(MemoryRow).where(MemoryRow.kind == "turn", MemoryRow.paged.is_(False), live(now()))
        if scope is not None:
            stmt = stmt.where(MemoryRow.scope == scope)
        else:  # every memory has a scope: naming them all lets the (scope, paged) index find the few unpaged
            # rows, where the bare query scanned every memory (35 ms at 10M tokens, 148k memories)
            stmt = stmt.where(MemoryRow.scope.in_(select(ScopeRow.name).scalar_subquery()))
        return list(s.scalars(stmt.order_by(MemoryRow.turn_index.desc(), MemoryRow.id.desc())))
