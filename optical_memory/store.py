"""The store's public face: ``OpticalMemory``. Each method checks nothing and does nothing itself: it hands
over to the room of the data flow it belongs to, all of them working through one shared core.

    validation   user input checked before anything is written
    core         the folder and its LOCK, SQL sessions, the write transaction, blobs, the index
    ingest       add, add_many, add_file(s): rows, gist embeddings, pages for documents and files
    aging        age: expiry, packing turns into pages, the tier ladder; pin, set_ttl, delete
    vision       sync_vision, vision_tokens: each page's tokens at its tier
    retrieval    search, memories: the index, scopes and filters
    reading      recall: the reader over page images, cached per tier; reading ahead; the text tier
    context      build_context, answer: text, image and vision context with its token account
    maintenance  stats, verify and repair

Imports point one way, with no cycle (aging uses ingest and vision; reading uses ingest; context uses
retrieval, reading and vision); no room imports this module, and each reads top to bottom on its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from . import aging, context, ingest, maintenance, reading, retrieval, vision
from .blobs import BlobStore
from .config import StoreConfig
from .core import Core
from .errors import InvalidInput
from .index import VectorIndex
from .ingest import Progress
from .maintenance import ORPHAN_GRACE_S
from .pricing import ImagePricing
from .protocols import Embedder, Encoder, Reader, TokenCounter
from .render import Renderer
from .types import Context, Hit, Kind, MemoryInfo, PagePlace, Recall, Stats, VerifyReport
from .validation import shown


class OpticalMemory:
    """An optical memory store in a folder. Open one with ``optical_memory.open(path)``.

    Thread-safe within a process (one lock around every public method), and shared between processes and
    hosts: every write is one SQL transaction under the store's write lock, and each process's FAISS
    index catches up with the others' writes from SQL before it is searched (see ``core.Core.sync_index``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: StoreConfig | None = None,
        embedder: Embedder | None = None,
        reader: Reader | None = None,
        counter: TokenCounter | None = None,
        encoder: Encoder | None = None,
    ) -> None:
        core = self._core = Core(
            path, config=config, embedder=embedder, reader=reader, counter=counter, encoder=encoder
        )
        # what the store is made of, shared with every room (the index is caught up and rebuilt in place)
        self.path: Path = core.path
        self.config: StoreConfig = core.config
        self.embedder: Embedder = core.embedder
        self.blobs: BlobStore = core.blobs
        self.index: VectorIndex = core.index
        self._prereader = reading.Prereader(core)

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def reader(self) -> Reader:
        return self._core.reader

    @property
    def counter(self) -> TokenCounter:
        return self._core.counter

    @property
    def renderer(self) -> Renderer:
        return self._core.renderer

    @property
    def encoder(self) -> Encoder | None:
        """The vision-token encoder (None unless a model or an encoder is configured)."""
        return self._core.encoder

    def close(self) -> None:
        """Stop reading ahead (after the page in hand), save the index and release the store. Safe to call
        twice."""
        self._prereader.close()
        self._core.close()

    def flush(self) -> None:
        """Persist the index now (it is also saved by ``close``)."""
        self._core.flush()

    def rebuild_index(self) -> VectorIndex:
        """Rebuild the FAISS index from the vectors in SQL and save it."""
        return self._core.rebuild_index()

    # -- ingest ----------------------------------------------------------------------------------------------

    def add(
        self,
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
        """Store one conversation turn or document; returns its id.

        A turn stays in the text tier until ``age`` packs it into a page; a document is paginated and
        rendered at once. Bad input raises ``InvalidInput`` naming the value and stores nothing.

        ``ttl`` (seconds) makes the memory expire ``ttl`` seconds after ``timestamp``: from then on no
        search or listing returns it, and the next ``age`` deletes it like ``delete``. Until then its pages
        walk the whole forgetting ladder over its lifetime (``AgingPolicy.ttl_tier_index``), so it fades
        before it goes. See :meth:`set_ttl` to extend or clear it.

        Any length is stored; the cost is embedding its gist chunks (one per 160 words: about a minute per
        MB of text on 2 cores), and a document's pages are drawn at once. ``progress(n)`` reports the
        share of the memory embedded since the last call (fractions adding up to 1), for a progress bar.
        """
        return ingest.add(
            self._core,
            text,
            scope=scope,
            role=role,
            kind=kind,
            metadata=metadata,
            timestamp=timestamp,
            ttl=ttl,
            progress=progress,
        )

    def add_many(
        self,
        items: Iterable[str | Mapping[str, Any]],
        *,
        scope: str,
        kind: Kind = "turn",
        progress: Progress | None = None,
    ) -> list[int]:
        """Store many turns (or documents) in one transaction; much faster than ``add`` in a loop.

        Each item is a string or a mapping with ``text`` (or ``content``) and optional ``role``,
        ``metadata``, ``timestamp``, ``ttl`` (see :meth:`add`). All items are validated before anything is
        written. ``progress(n)``: items embedded since the last call, after every 256 gist chunks (in
        fractions while one long item spans several such slices); they add up to the number of items.
        """
        return ingest.add_many(self._core, items, scope=scope, kind=kind, progress=progress)

    def add_file(
        self, path: str | os.PathLike[str], *, scope: str, metadata: Mapping[str, Any] | None = None
    ) -> list[int]:
        """Store a file: text/Markdown as one document, each PDF page or an image as a page of its own.

        PDF and image pages keep their own pixels (fitted and padded to the top tier); their gist vector
        comes from the PDF's text layer or, failing that, from the reader.
        """
        return ingest.add_file(self._core, path, scope=scope, metadata=metadata)

    def add_files(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        scope: str,
        metadata: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> list[list[int]]:
        """Store several files (as :meth:`add_file` does each) all or nothing: every file is read and
        checked before any is written, a bad one raises ``InvalidInput`` naming it and stores nothing, and
        the rest are written in one transaction. Returns each file's memory ids, in order."""
        return ingest.add_files(self._core, paths, scope=scope, metadata=metadata, progress=progress)

    # -- aging -----------------------------------------------------------------------------------------------

    def age(
        self,
        *,
        now: float | datetime | None = None,
        progress: Progress | None = None,
        preread: bool = False,
    ) -> dict[str, int]:
        """Apply the forgetting policy once: delete memories whose time to live has run out, pack turns that
        left the text tier into pages, then move every page to the tier its turn distance and age call for
        (and, for memories with a ttl, the share of their lifetime that has passed: see
        ``AgingPolicy.ttl_tier_index``), downsampling the stored image. Idempotent.

        Returns counts: ``expired`` memories deleted, ``packed`` turns, ``pages_written``, ``downsampled``
        pages, ``forgotten`` pages, and pages ``encoded`` to vision tokens (0 without an encoder; see
        :meth:`sync_vision`).

        Cost: one pass over every scope and every page still holding an image, whatever changed; only
        pages that move are re-encoded. On a store of thousands of pages, call it on a schedule rather than
        after every write.

        ``preread=True`` then reads ahead in the background (:meth:`preread_in_background`): the pages a
        first recall would read whole, so that it finds them cached.
        """
        report = aging.age(self._core, now=now, progress=progress)
        if preread:
            self._prereader.start()
        return report

    def preread(self, *, scope: str | None = None, progress: Progress | None = None) -> int:
        """Read ahead now: every page a first recall would read whole at its current tier (see below) and no
        read of which is cached, newest first, into the recall cache; returns how many were read. Other
        calls go on meanwhile (the store's lock is not held while the reader runs).

        Those pages are the ones recall cannot read a memory's own lines of: all pages when the reader reads
        only pages (DeepSeek-OCR, optical-mini), scans, and pages whose lines are too small to read one by
        one at their tier (256 px with RapidOCR: 3.5-4 s a page on 2 cores). Pages whose memories all keep
        their text are skipped: recall returns the text."""
        return reading.preread(self._core, reading.unread_pages(self._core, scope), progress=progress)

    def preread_in_background(self) -> Future[int]:
        """Read ahead as :meth:`preread` does, on one background thread, returning at once. The future gives
        how many pages were read once none is left (called again meanwhile, it returns the same one, and the
        thread looks again before it ends). A recall that needs the reader meanwhile waits for the page in
        hand. ``close()`` stops it after that page; a process that exits without closing loses only that
        page's read."""
        return self._prereader.start()

    # -- vision tokens ---------------------------------------------------------------------------------------

    def sync_vision(self, page_ids: Iterable[int] | None = None, *, batch_size: int = 16) -> int:
        """Encode every page (or those of ``page_ids``) whose vision tokens are missing or stale, at the tier
        it is in now; returns how many pages were encoded. Nothing happens without an encoder. ``age()``
        calls this, so after it each readable page holds its tokens."""
        return vision.sync_vision(self._core, page_ids, batch_size=batch_size)

    def vision_tokens(self, page_id: int) -> np.ndarray | None:
        """A page's stored vision tokens, float16 (positions, dim), or None when it has none (no encoder,
        not synced yet, or forgotten). Tokens whose blob is missing or corrupt are dropped (they are derived
        data: the next :meth:`sync_vision` encodes the page again) and None is returned."""
        return vision.vision_tokens(self._core, page_id)

    # -- pin, ttl, delete ------------------------------------------------------------------------------------

    def pin(self, memory_id: int, *, pinned: bool = True) -> None:
        """Pinned memories never age: a text-tier turn stays text, a paged memory's pages keep their tier.
        A pinned memory with a ttl still expires (clear it with ``set_ttl(memory_id, None)``)."""
        aging.pin(self._core, memory_id, pinned=pinned)

    def set_ttl(
        self, memory_id: int, ttl: float | None, *, now: float | datetime | None = None
    ) -> float | None:
        """Give a memory ``ttl`` more seconds to live from ``now`` (default: the current time), or make it
        never expire (``ttl=None``); returns its new ``expires_at`` (epoch seconds, or None).

        The ladder then runs over the new lifetime, but only ever downwards: a page already downsampled
        stays at its tier (its pixels are gone), and a refreshed memory simply fades more slowly from there.
        Raises ``MemoryNotFound`` for an unknown (or already deleted) id.
        """
        return aging.set_ttl(self._core, memory_id, ttl, now=now)

    def delete(self, memory_id: int) -> None:
        """Delete a memory: its row, vectors and spans; its lines are blanked on pages it shares with other
        memories, and pages holding nothing else are deleted with their blobs. On SQLite its bytes are
        zeroed in the database file (``secure_delete``) and the write-ahead log is emptied when no other
        process is reading (else at SQLite's next checkpoint)."""
        aging.delete_memory(self._core, memory_id)

    def delete_scope(self, scope: str) -> int:
        """Delete every memory, page, vector and blob of ``scope``; returns how many memories went."""
        return aging.delete_scope(self._core, scope)

    # -- retrieval -------------------------------------------------------------------------------------------

    def scopes(self) -> list[str]:
        return retrieval.scopes(self._core)

    def memories(
        self,
        *,
        scope: str | Sequence[str] | None = None,
        filters: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[MemoryInfo]:
        """List memories without a query, newest first (by ``created_at``, then id): ``offset`` skipped,
        at most ``limit`` returned (None: all). Expired memories are never listed.

        ``scope``: one scope, a sequence of scopes, or None for all; an unknown one raises
        ``ScopeNotFound``. ``filters`` keeps memories whose ``kind``, ``role`` or metadata keys equal the
        given JSON scalars (str, int, float, bool or None; JSON types are compared as such: ``True`` does
        not equal ``1``, ``1`` equals ``1.0``); several keys must all match. A list, a dict or an operator
        such as ``{"$regex": ...}`` raises ``InvalidInput`` naming the key. The filters run in SQL
        (SQLite's ``json_each``, PostgreSQL's json operators) over the rows of the scopes asked for, which
        the scope index finds; without a scope, over every row.
        """
        return retrieval.memories(self._core, scope=scope, filters=filters, limit=limit, offset=offset)

    def memory_info(self, memory_id: int) -> MemoryInfo:
        """One memory's scope, kind, role, tier, metadata and expiry, without reading its pages (cheap: use
        it to check which scope an id belongs to). Raises ``MemoryNotFound`` for an unknown, deleted or
        expired id."""
        return retrieval.memory_info(self._core, memory_id)

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        scope: str | Sequence[str] | None = None,
        filters: Mapping[str, Any] | None = None,
        mode: str | None = None,
    ) -> list[Hit]:
        """The ``k`` memories that best answer ``query``, best first, one hit per memory.

        ``mode`` (default ``StoreConfig.retrieval``, "hybrid"): "dense" ranks by the cosine of the query's
        embedding and a memory's best gist vector (``Hit.score`` is that cosine); "lexical" by BM25 over the
        words of its chunks (``Hit.score`` is BM25; a query of only function words or emoji finds nothing);
        "hybrid" scores every chunk either finds on both: half its cosine plus half its BM25 over the query's
        best BM25 (``Hit.score``; at most 1.0).
        ``scope`` restricts the search to one tenant, or to a sequence of them (None searches all; an
        unknown one raises ``ScopeNotFound``). ``filters`` keeps memories whose ``kind``, ``role``, ``tier``
        or metadata keys equal the given values, as :meth:`memories` compares them; ``tier`` is a page side
        (``1024`` or ``"1024"``), ``"text"`` or ``"forgotten"``, and is the tier of the page the hit is on.
        There are no operators: ``{"n": {"$gt": 1}}`` raises ``InvalidInput`` naming them. Expired memories
        are never returned.
        """
        return retrieval.search(self._core, query, k=k, scope=scope, filters=filters, mode=mode)

    # -- reading ---------------------------------------------------------------------------------------------

    def recall(self, memory_id: int, *, read: bool = False) -> Recall:
        """A memory as text. Retained text is returned as is (``source="retained"``) unless ``read=True``;
        otherwise the reader reads its page images at their current tier (cached per tier).

        Raises ``MemoryNotFound`` for an unknown id and ``BlobError`` naming the page when a page image is
        missing or corrupt (``verify(repair=True)`` heals what can be healed).
        """
        return reading.recall(self._core, memory_id, read=read)

    # -- context ---------------------------------------------------------------------------------------------

    def build_context(
        self,
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
        """Recent raw turns plus memories retrieved for ``query``, packed into ``budget_tokens``.

        ``mode="text"``: retrieved memories are recalled as text. ``mode="image"``: each is attached as the
        band of its page that holds it (its lines and ``crop_margin`` lines either side; None: the whole
        page) at the page's current tier, bands of one page merged into one image. Images cost the
        ``target`` model's image tokens (a name in ``optical_memory.pricing.TARGETS`` such as ``"gpt-4o"``,
        ``"claude"``, ``"gemini-2"``, ``"qwen2.5-vl"``, or an ``ImagePricing`` rule); with a target each
        band is sent at the cheapest size that the target's own resize leaves legible to the store's
        reader, and bands of several pages are stacked into one image where that costs the target less.
        Without one they cost DeepEncoder's vision tokens, at their tier. ``mode="vision"`` (needs a
        DeepSeek-OCR model): their pages' stored vision tokens go straight into the decoder's input
        embeddings, see :class:`Context`.

        Recent turns (the text tier, newest first) follow the question with ``recent_share="auto"``: the
        newest four (the last two exchanges) always go in, within half the budget, and older turns of the
        text tier only as hits for ``query``, ranked with the paged memories. A number instead gives the
        recent turns, newest first, up to that share of the budget whatever the question. Retrieved
        memories take the rest: the ``k`` best hits that are not among those recent turns or in ``exclude``
        (ids the caller already sends verbatim, such as an agent's own recent messages), so what is already
        in the prompt takes none of the ``k`` places. Budget left over is left unused.

        ``page_form`` (vision mode) swaps each page's vision tokens for a text baseline of the same length
        (``"meanpool"``: its text's token embeddings mean-pooled to as many vectors; ``"truncate"``: its
        first that-many text tokens), for experiments; both need ``retain_text=True``.
        """
        return context.build_context(
            self._core,
            query,
            budget_tokens=budget_tokens,
            mode=mode,
            scope=scope,
            k=k,
            recent_share=recent_share,
            page_form=page_form,
            exclude=exclude,
            target=target,
            crop_margin=crop_margin,
        )

    def recent_turns(self, scope: str, *, limit: int | None = None) -> list[Recall]:
        """The turns of ``scope`` still in the text tier, verbatim, oldest first (the newest ``limit``)."""
        return reading.recent_turns(self._core, scope, limit=limit)

    def page_text(self, page_id: int) -> str | None:
        """The text a page shows, rebuilt from its memories' retained text (None unless all of it was
        retained: with ``retain_text=False`` only the pixels know)."""
        return reading.page_text(self._core, page_id)

    def answer(
        self, question: str, *, budget_tokens: int = 2048, scope: str | None = None, max_new_tokens: int = 512
    ) -> str:
        """Run the DeepSeek-OCR decoder over the vision context for ``question`` and return what it writes.

        DeepSeek-OCR's decoder was trained to transcribe and parse documents, not to chat: it reliably
        continues a page's text and follows its OCR prompts, but it is not an instruction-tuned answerer.
        Use this to look at what it makes of the retrieved pages; for answers, give ``build_context`` output
        to a chat model.
        """
        return context.answer(
            self._core, question, budget_tokens=budget_tokens, scope=scope, max_new_tokens=max_new_tokens
        )

    def memory_pages(self, memory_id: int) -> list[PagePlace]:
        """Where a memory is on its pages, in reading order: each page's id and current tier, and the band of
        lines the memory takes on it (shares of the page's height; None on scans), for drawing a highlight
        over :meth:`page_image`. Raises ``MemoryNotFound`` for an unknown, deleted or expired id."""
        return reading.memory_pages(self._core, memory_id)

    def page_image(self, memory_id: int, *, page_id: int | None = None) -> list[Image.Image]:
        """The page images a memory is on, in reading order, at their current tier (empty if in the text tier
        or forgotten); with ``page_id`` (e.g. a hit's page), only that one of them."""
        return reading.page_image(self._core, memory_id, page_id=page_id)

    # -- maintenance -----------------------------------------------------------------------------------------

    def stats(self) -> Stats:
        """Counts, tokens and bytes per tier: the forgetting curve's cost side."""
        return maintenance.stats(self._core)

    def verify(self, *, repair: bool = False, orphan_grace_s: float = ORPHAN_GRACE_S) -> VerifyReport:
        """Check every page blob against its hash, look for orphan blobs, and check the index against SQL.

        With ``repair=True``: a damaged page whose memories all retain their text is re-rendered (and
        downsampled to its tier); one that cannot be healed is marked lost; orphan blobs are deleted; the
        index is rebuilt if it disagrees with SQL.

        An unreferenced blob is an orphan only once it is ``orphan_grace_s`` old: a PostgreSQL client that
        died with its COMMIT already sent may still commit a row that refers to it (its blob lock died with
        it). With SQLite, where a dead writer never commits, 0 is safe.
        """
        return maintenance.verify(self._core, repair=repair, orphan_grace_s=orphan_grace_s)

    # -- internals the package's own tools use (demo, experiments, reliability, tests) -----------------------

    def __enter__(self) -> OpticalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpticalMemory({str(self.path)!r})"

    @property
    def _engine(self) -> Engine:
        return self._core.engine

    @property
    def _sessions(self) -> sessionmaker[Session]:
        return self._core.sessions

    def _session(self) -> Session:
        return self._core.session()

    def _index_matches_sql(self) -> bool:
        return maintenance.index_matches_sql(self._core)

    def _heal_page(self, page_id: int) -> bool | None:
        return maintenance.heal_page(self._core, page_id)


def open_store(path: str | os.PathLike[str], **options: Any) -> OpticalMemory:
    """``optical_memory.open``: open (creating if needed) the store in folder ``path``.

    Options are ``StoreConfig`` fields (``retain_text=True``, ``database_url=...``,
    ``render=RenderConfig(...)``, ``aging=AgingPolicy(...)``, ``reader="tesseract"``,
    ``model="optical-mini"``, ``model="deepseek-ocr", model_dir=...``), ``config=StoreConfig(...)`` whole,
    or backend objects ``embedder=``, ``reader=``, ``counter=``, ``encoder=`` implementing the protocols in
    ``optical_memory.protocols``.
    """
    # a backend named by a string ("tesseract") is a config field; an object is used as it is
    backends = {
        key: options.pop(key)
        for key in ("embedder", "reader", "counter", "encoder")
        if key in options and not isinstance(options[key], str)
    }
    config = options.pop("config", None)
    if config is not None and options:
        raise InvalidInput(f"pass either config= or individual options, not both: {sorted(options)}")
    if config is None:
        known = set(StoreConfig.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidInput(
                f"unknown option(s) {unknown}; known: {sorted(known | set(backends) | {'config'})}"
            )
        config = StoreConfig(**options)
    elif not isinstance(config, StoreConfig):
        raise InvalidInput(f"config must be a StoreConfig, got {type(config).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInput(f"path must be a folder path, got {type(path).__name__} {shown(path)}")
    try:
        Path(path).stat()  # a NUL, an over-long name, a loop, a file as a parent folder raise here
    except FileNotFoundError:
        pass  # a new store: its folder is created
    except (OSError, ValueError, TypeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise InvalidInput(f"cannot open a store at {str(path)[:300]!r}: {reason}") from None
    else:
        if not Path(path).is_dir():
            raise InvalidInput(f"store path {str(path)[:300]!r} exists and is not a folder")
    return OpticalMemory(path, config=config, **backends)


__all__ = ["OpticalMemory", "open_store"]
