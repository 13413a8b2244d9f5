"""Ingest: text and files in, rows out.

add_many -> validate, normalise, count tokens -> gist chunks -> embed -> one write transaction:
            scope row, memory rows, embedding rows (the index adds them after commit), lexical rows
documents and files are laid out, rendered and written as pages at once (``write_pages``, which
aging also uses to pack turns that left the text tier).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from . import lexical
from .core import Core, Write, png
from .db import EmbeddingRow, MemoryRow, PageRow, ScopeRow, SpanRow
from .errors import InvalidInput
from .render import STAND_INS, Line, Span, load_page_file, restore
from .types import Kind
from .validation import (
    check_file,
    check_metadata,
    check_name,
    check_progress,
    check_scope,
    check_timestamp,
    check_ttl,
    now,
    shown,
)

TEXT_FILE_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
IMAGE_FILE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
JOIN_CODES = {" ": "s", "": "h", "\n": "n"}  # how a rendered line joins the next, as a span records it

Progress = Callable[[float], None]  # items done since the last call (fractions of a huge one)


@dataclass
class Pending:
    """A memory validated and embedded, not yet written."""

    text: str
    scope: str
    kind: Kind
    role: str | None
    metadata: dict[str, Any]
    timestamp: float
    tokens: int
    chunks: list[tuple[int, str]]
    vectors: np.ndarray | None = None
    ttl_s: float | None = None
    drawn: Drawn | None = None  # a document's pages, drawn before the write lock is taken


@dataclass
class Drawn:
    """A document laid out and drawn: its pages' lines, spans, section offsets and PNG bytes. Drawing is
    nearly all of a document's write (15 ms a page at 1024 px), so it is done without the store's lock."""

    pages: list[list[Line]]
    spans: list[Span]
    offsets: list[int]
    pngs: list[bytes]


def draw_document(core: Core, p: Pending) -> Drawn:
    """Lay out and draw a document's pages; each form feed in it starts a new page."""
    pages: list[list[Line]] = []
    spans: list[Span] = []
    offsets: list[int] = []
    at = 0
    for section in p.text.split("\f"):
        laid, placed = core.renderer.layout([(None, section)])
        spans += [replace(sp, item=len(offsets), page=sp.page + len(pages)) for sp in placed]
        pages += laid
        offsets.append(at)
        at += len(section) + 1
    return Drawn(pages, spans, offsets, [png(core.renderer.draw(lines)) for lines in pages])


def add(
    core: Core,
    text: str,
    *,
    scope: str,
    role: str | None = None,
    kind: Kind = "turn",
    metadata: Mapping[str, Any] | None = None,
    timestamp: float | datetime | None = None,
    ttl: float | None = None,
    progress: Progress | None = None,
) -> int:
    item = {"text": text, "role": role, "metadata": metadata, "timestamp": timestamp, "ttl": ttl}
    return add_many(core, [item], scope=scope, kind=kind, progress=progress)[0]


def add_many(
    core: Core,
    items: Iterable[str | Mapping[str, Any]],
    *,
    scope: str,
    kind: Kind = "turn",
    progress: Progress | None = None,
) -> list[int]:
    check_scope(scope)
    if kind not in ("turn", "document"):
        raise InvalidInput(f"kind must be 'turn' or 'document', got {shown(kind)}")
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidInput(
            f"add_many takes a list of items, got {type(items).__name__}; use add() for a single text"
        )
    check_progress(progress)
    pending = []
    for number, item in enumerate(items):
        try:
            pending.append(_prepare(core, item, scope=scope, kind=kind))
        except InvalidInput as e:  # name the item: nothing of the batch is stored, so say which to fix
            if number or (isinstance(items, Sequence) and len(items) > 1):
                e.args = (f"item {number}: {e}", *e.args[1:])
            raise
    if not pending:
        return []
    _embed(core, pending, progress)
    if kind == "document":
        for p in pending:
            p.drawn = draw_document(core, p)  # without the lock: other calls go on meanwhile
    with core.lock, core.write() as w:
        if kind == "document":
            return [_write_document(core, w, p) for p in pending]
        return _write_turns(w, pending)


EMBED_CHUNKS = 256  # gist chunks embedded per call (~200 kB of text): progress is reported after each


def _embed(
    core: Core, pending: Sequence[Pending], progress: Progress | None = None, share: float = 1.0
) -> None:
    """Every pending memory's gist vectors, embedded ``EMBED_CHUNKS`` chunks at a time. After each call
    ``progress(n)``: the items (times ``share``) finished since the last report, in fractions for an item
    spread over several calls, so even one huge memory moves a bar as it goes; they add up to exactly
    ``len(pending) * share``."""
    sizes = [len(p.chunks) for p in pending]
    ends = list(itertools.accumulate(sizes))  # each item's chunks end here in the flat list
    texts = [chunk for p in pending for chunk in originals(p)]
    parts = []
    reported = 0.0
    for at in range(0, len(texts), EMBED_CHUNKS):
        parts.append(core.embedder.embed(texts[at : at + EMBED_CHUNKS]))
        if progress:
            done = min(at + EMBED_CHUNKS, len(texts))
            whole = bisect.bisect_right(ends, done)  # items all of whose chunks are embedded
            partial = 0.0
            if whole < len(pending) and done > ends[whole] - sizes[whole]:
                partial = (done - ends[whole] + sizes[whole]) / sizes[whole]
            now = (whole + partial) * share
            progress(now - reported)
            reported = now
    vectors = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else core.embedder.embed([])
    for p, end, size in zip(pending, ends, sizes, strict=True):
        p.vectors = vectors[end - size : end]


def _prepare(core: Core, item: object, *, scope: str, kind: Kind) -> Pending:
    if isinstance(item, Mapping):
        text = item.get("text", item.get("content"))
        role, metadata, timestamp = item.get("role"), item.get("metadata"), item.get("timestamp")
        ttl = item.get("ttl")
    else:
        text, role, metadata, timestamp, ttl = item, None, None, None, None
    if role is not None:
        check_name(role, "role", max_len=64)
        core.renderer.normalise(role)  # a label that is not text fails now, not in age()
    normalised, stand_ins = _normalise(core, text, kind)
    meta = check_metadata(metadata)
    if STAND_INS in meta:
        raise InvalidInput(f"metadata key {STAND_INS!r} is reserved (the store records stand-ins there)")
    if stand_ins:  # characters no font has, drawn as stand-ins: recorded, and restored on recall
        meta[STAND_INS] = stand_ins
    ts = check_timestamp(timestamp)
    ttl_s = check_ttl(ttl)
    return Pending(
        text=normalised,
        scope=scope,
        kind=kind,
        role=role,
        metadata=meta,
        timestamp=ts,
        tokens=core.counter.count(normalised),
        chunks=gist_chunks(core, normalised),
        ttl_s=ttl_s,
    )


def _normalise(core: Core, text: Any, kind: Kind) -> tuple[str, dict[str, str]]:
    """``Renderer.prepare`` of a memory's text. In a document a form feed is a page break: each section
    between form feeds is normalised on its own, blank ones dropped, and they are joined by one form feed
    each (``_write_document`` starts a page at each)."""
    if kind != "document" or not isinstance(text, str) or "\f" not in text:
        return core.renderer.prepare(text)
    sections = [section for section in text.split("\f") if section.strip()]
    if not sections:
        raise InvalidInput(f"text is empty or only whitespace and page breaks: {text[:40]!r}")
    prepared = [core.renderer.prepare(section) for section in sections]
    return "\f".join(n for n, _ in prepared), {k: v for _, found in prepared for k, v in found.items()}


# -- gist chunks ---------------------------------------------------------------------------------------------


def originals(p: Pending) -> list[str]:
    """A memory's gist chunks as they were written, stand-ins turned back into their characters: what is
    embedded and indexed (the page shows the stand-in; the gist vector and the terms have the character)."""
    stand_ins = p.metadata.get(STAND_INS)
    return [restore(chunk, stand_ins) for _, chunk in p.chunks]


def gist_chunks(core: Core, text: str) -> list[tuple[int, str]]:
    """The pieces of ``text`` that get a gist vector each, as ``StoreConfig.gist`` asks."""
    if core.config.gist == "sentences":
        return sentence_chunks(text, core.config.chunk_words)
    return chunks(text, core.config.chunk_words)


def chunks(text: str, words: int) -> list[tuple[int, str]]:
    """Split ``text`` into chunks of at most ``words`` words: (char offset, chunk text)."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    out = []
    for i in range(0, len(spans), words):
        group = spans[i : i + words]
        out.append((group[0][0], text[group[0][0] : group[-1][1]]))
    return out or [(0, text)]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentence_chunks(text: str, words: int) -> list[tuple[int, str]]:
    """One chunk per sentence (a run ending in . ! or ? before whitespace), sentences longer than ``words``
    words split as :func:`chunks` splits them: (char offset, chunk text)."""
    out: list[tuple[int, str]] = []
    start = 0
    for end in [m.start() for m in _SENTENCE_END.finditer(text)] + [len(text)]:
        sentence = text[start:end]
        lead = len(sentence) - len(sentence.lstrip())
        if sentence.strip():
            out += [
                (start + lead + offset, chunk) for offset, chunk in chunks(sentence[lead:].rstrip(), words)
            ]
        start = end
    return out or [(0, text)]


# -- rows ----------------------------------------------------------------------------------------------------


def _ensure_scope(s: Session, scope: str, when: float) -> ScopeRow:
    row = s.get(ScopeRow, scope)
    if row is None:
        row = ScopeRow(name=scope, created_at=when, turns=0)
        s.add(row)
        s.flush()
    return row


def _new_memory(s: Session, p: Pending, *, turn_index: int, paged: bool) -> MemoryRow:
    row = MemoryRow(
        scope=p.scope,
        kind=p.kind,
        role=p.role,
        created_at=p.timestamp,
        turn_index=turn_index,
        paged=paged,
        pinned=False,
        text=p.text,
        text_hash=hashlib.sha256(p.text.encode()).hexdigest(),
        n_chars=len(p.text),
        text_tokens=p.tokens,
        meta=p.metadata,
        ttl_s=p.ttl_s,
        expires_at=None if p.ttl_s is None else p.timestamp + p.ttl_s,
    )
    s.add(row)
    s.flush()
    return row


def _add_embeddings(w: Write, memory: MemoryRow, p: Pending) -> None:
    """Write a memory's gist vectors, tagged with the transaction's generation, for the index to add."""
    assert p.vectors is not None
    rows = [
        EmbeddingRow(
            memory_id=memory.id,
            scope=p.scope,
            char_start=start,
            vector=vec.astype("<f4").tobytes(),
            generation=w.generation,
        )
        for (start, _), vec in zip(p.chunks, p.vectors, strict=True)
    ]
    w.s.add_all(rows)
    w.s.flush()
    w.added.append((p.scope, [r.id for r in rows], p.vectors))
    lexical.add(w.s, p.scope, list(zip([r.id for r in rows], originals(p), strict=True)), w.salt)


def _write_turns(w: Write, pending: list[Pending]) -> list[int]:
    s = w.s
    srow = _ensure_scope(s, pending[0].scope, pending[0].timestamp)
    ids = []
    for p in pending:
        srow.turns += 1
        memory = _new_memory(s, p, turn_index=srow.turns, paged=False)
        _add_embeddings(w, memory, p)
        ids.append(memory.id)
    return ids


def _write_document(core: Core, w: Write, p: Pending) -> int:
    """A document written as pages at once (drawn now unless ``p.drawn`` holds its pages already)."""
    drawn = p.drawn if p.drawn is not None else draw_document(core, p)
    s = w.s
    srow = _ensure_scope(s, p.scope, p.timestamp)
    memory = _new_memory(s, p, turn_index=srow.turns, paged=True)
    write_pages(
        core,
        s,
        p.scope,
        drawn.pages,
        drawn.spans,
        [memory] * len(drawn.offsets),
        leave_last_open=False,
        offsets=drawn.offsets,
        pngs=drawn.pngs,
    )
    if not core.config.retain_text:
        memory.text = None
    _add_embeddings(w, memory, p)
    return memory.id


def write_pages(
    core: Core,
    s: Session,
    scope: str,
    pages: list[list[Line]],
    spans: list[Span],
    memories: list[MemoryRow],
    *,
    leave_last_open: bool,
    offsets: Sequence[int] | None = None,
    pngs: Sequence[bytes] | None = None,
) -> list[PageRow]:
    """Render laid-out pages (or take them drawn, ``pngs``), store their blobs, and write page and span rows
    (caller's transaction).

    ``memories[i]`` is the memory of layout item i; ``offsets[i]`` is added to its char ranges (an item
    can be the tail of a memory whose head is already on an earlier page).
    """
    side = core.config.render.page_side
    rows = []
    for number, lines in enumerate(pages):
        on_page = [sp for sp in spans if sp.page == number]
        members = [memories[sp.item] for sp in on_page]
        blob = core.blobs.put(pngs[number] if pngs is not None else png(core.renderer.draw(lines)))
        is_last = number == len(pages) - 1
        page = PageRow(
            scope=scope,
            render_side=side,
            side=side,
            blob=blob,
            blob_bytes=core.blobs.size(blob),
            is_open=leave_last_open and is_last and len(lines) < core.renderer.lines_per_page,
            lost=False,
            created_at=max(m.created_at for m in members),
            last_turn_index=max(m.turn_index for m in members),
            text_tokens=0,
        )
        s.add(page)
        s.flush()
        tokens = 0
        for sp in on_page:
            memory = memories[sp.item]
            shift = offsets[sp.item] if offsets else 0
            text = memory.text or ""
            tokens += core.counter.count(text[sp.char_start + shift : sp.char_end + shift])
            s.add(
                SpanRow(
                    memory_id=memory.id,
                    page_id=page.id,
                    line_start=sp.line_start,
                    line_end=sp.line_end,
                    char_start=sp.char_start + shift,
                    char_end=sp.char_end + shift,
                    joins="".join(JOIN_CODES[ln.join] for ln in lines[sp.line_start : sp.line_end]),
                    label_len=lines[sp.line_start].label_len,
                )
            )
        page.text_tokens = tokens
        rows.append(page)
    s.flush()
    return rows


# -- files ---------------------------------------------------------------------------------------------------


def add_file(
    core: Core, path: str | os.PathLike[str], *, scope: str, metadata: Mapping[str, Any] | None = None
) -> list[int]:
    return add_files(core, [path], scope=scope, metadata=metadata)[0]


@dataclass
class FilePart:
    """One memory a file gives, read and embedded: a text document (``image`` None: laid out into pages
    when written) or a PDF or image page kept as its own pixels."""

    pending: Pending
    image: Image.Image | None = None


def add_files(
    core: Core,
    paths: Iterable[str | os.PathLike[str]],
    *,
    scope: str,
    metadata: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> list[list[int]]:
    """Every file read, checked, read by the reader where it has no text layer, and embedded before
    anything is written; then all of them in one transaction, so a bad file stores nothing and its error
    names it. Returns each file's memory ids, in order. ``progress(n)``: files done since the last call, in
    fractions (half a file once it is read, the other half as its text is embedded)."""
    check_scope(scope)
    meta = check_metadata(metadata)
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Iterable):
        raise InvalidInput(f"add_files takes a list of paths, got {type(paths).__name__}; use add_file()")
    check_progress(progress)
    files: list[list[FilePart]] = []
    for path in paths:
        try:
            files.append(_file_parts(core, path, scope, meta))
        except InvalidInput as e:  # say which file, however deep the check that refused it
            if str(path) not in str(e):
                e.args = (f"{str(path)[:300]!r}: {e}", *e.args[1:])
            raise
        if progress:
            progress(0.5)  # read (and OCR'd where it has no text layer): half of a file's work
    pending = [part.pending for parts in files for part in parts]
    _embed(core, pending, progress, share=0.5 * len(files) / max(len(pending), 1))
    for parts in files:
        for part in parts:
            if part.image is None:  # a text file: its pages drawn without the lock
                part.pending.drawn = draw_document(core, part.pending)
    with core.lock, core.write() as w:
        return [[_write_part(core, w, part) for part in parts] for parts in files]


def _file_parts(core: Core, path: object, scope: str, meta: dict[str, Any]) -> list[FilePart]:
    file = check_file(path)
    suffix = file.suffix.lower()
    # a name undecodable in the file system's encoding holds lone surrogates: no metadata may
    meta = {"source": file.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), **meta}
    if suffix in TEXT_FILE_SUFFIXES:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InvalidInput(f"{str(file)!r} is not UTF-8 text ({e})") from None
        except OSError as e:
            raise InvalidInput(f"cannot read {str(file)!r}: {e.strerror or e}") from None
        item = {"text": text, "metadata": meta}
        return [FilePart(_prepare(core, item, scope=scope, kind="document"))]
    if suffix != ".pdf" and suffix not in IMAGE_FILE_SUFFIXES:
        known = sorted(TEXT_FILE_SUFFIXES | IMAGE_FILE_SUFFIXES | {".pdf"})
        raise InvalidInput(f"unsupported file type {suffix!r} for {str(file)!r}; supported: {known}")
    images = load_page_file(file, core.config.render.page_side)
    texts = _pdf_texts(file) if suffix == ".pdf" else [""] * len(images)
    parts = []
    for number, (image, text) in enumerate(zip(images, texts, strict=True)):
        if not text.strip():
            text = "\n".join(line.text for line in core.reader.read([image])[0])
        text = " ".join(text.split()) or "(no text found)"
        p = Pending(
            text=text,
            scope=scope,
            kind="document",
            role=None,
            metadata={**meta, "page": number + 1},
            timestamp=now(),
            tokens=core.counter.count(text),
            chunks=gist_chunks(core, text),
        )
        parts.append(FilePart(p, image))
    return parts


def _write_part(core: Core, w: Write, part: FilePart) -> int:
    if part.image is None:
        return _write_document(core, w, part.pending)
    p, s = part.pending, w.s
    srow = _ensure_scope(s, p.scope, p.timestamp)
    memory = _new_memory(s, p, turn_index=srow.turns, paged=True)
    blob = core.blobs.put(png(part.image))
    page = PageRow(
        scope=p.scope,
        render_side=0,
        side=core.config.render.page_side,
        blob=blob,
        blob_bytes=core.blobs.size(blob),
        is_open=False,
        lost=False,
        created_at=p.timestamp,
        last_turn_index=srow.turns,
        text_tokens=p.tokens,
    )
    s.add(page)
    s.flush()
    # render_side 0 marks a free-form page: no line grid, the span covers the whole page.
    s.add(
        SpanRow(
            memory_id=memory.id,
            page_id=page.id,
            line_start=0,
            line_end=0,
            char_start=0,
            char_end=len(p.text),
            joins="",
            label_len=0,
        )
    )
    if not core.config.retain_text:
        memory.text = None
    _add_embeddings(w, memory, p)
    return memory.id


def _pdf_texts(path: Path) -> list[str]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as e:  # e.g. an image named .pdf
        raise InvalidInput(f"cannot read PDF {str(path)!r}: {e}") from None
    try:
        return [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
    except pdfium.PdfiumError as e:
        raise InvalidInput(f"cannot read the text of PDF {str(path)!r}: {e}") from None
    finally:
        pdf.close()
