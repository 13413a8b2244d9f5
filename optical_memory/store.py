"""The store: the one orchestrator. Everything the public API does goes through ``OpticalMemory``.

Data flows one way (see DESIGN.md):

    add      -> validate, normalise -> gist embeddings -> SQL rows (+ page blobs for documents) -> index
    age      -> pack turns that left the text tier into pages -> render -> blobs + rows
             -> each page's tier from the policy -> downsample the stored image (information is lost)
    search   -> embed the query -> per-scope FAISS search -> filters -> hits
    recall   -> retained text, or the reader over the page images at their current tier (cached per tier)
    build_context -> recent raw turns + recalled hits, as text or image parts, with a token account
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import ColumnElement, Numeric, and_, case, cast, delete, exists, func, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from . import db
from .blobs import BlobStore
from .config import StoreConfig, vision_tokens
from .db import EmbeddingRow, MemoryRow, PageRow, RecallRow, ScopeRow, SpanRow, VisionRow
from .errors import BlobError, InvalidInput, MemoryNotFound, ScopeNotFound, StoreBusy, StoreLocked
from .index import VectorIndex
from .protocols import Embedder, Encoder, Reader, TokenCounter, VisionContext
from .render import Line, Renderer, Span, load_page_file
from .types import Context, ContextItem, Hit, Kind, MemoryInfo, Recall, Stats, TierStats, VerifyReport

log = logging.getLogger(__name__)

PNG_COMPRESS_LEVEL = 3  # zlib level: 6 (Pillow's default) is ~1.5x slower to write a text page
TEXT_FILE_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst"}
IMAGE_FILE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
FORGOTTEN = "forgotten"
JOIN_CODES = {" ": "s", "": "h", "\n": "n"}
JOIN_CHARS = {v: k for k, v in JOIN_CODES.items()}

Progress = Callable[[int], None]


_IN_BATCH = 500  # ids per SQL IN list: well under SQLite's and PostgreSQL's bound-parameter limits
_SQL_INT = 2**63  # SQLite INTEGER and PostgreSQL BIGINT hold [-2**63, 2**63): no id lies outside
_METADATA_DEPTH = 64  # nesting levels of metadata (Python's json recursion limit is ~1,000)


def _now() -> float:
    return time.time()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _shown(value: object, limit: int = 200) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (a megabyte-long argument must not
    make a megabyte-long message), and safe where repr raises (ints over 4,300 digits, deep nesting)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit] + "..."


def _check_name(value: object, what: str, *, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a str, got {type(value).__name__} {_shown(value)}")
    if not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string, got {value[:40]!r}")
    if len(value) > max_len:
        raise InvalidInput(
            f"{what} is {len(value)} characters long, at most {max_len} allowed: {value[:40]!r}..."
        )
    bad = [c for c in value if unicodedata.category(c) in ("Cc", "Cs")]
    if bad:
        raise InvalidInput(f"{what} {value!r} contains control or surrogate characters {bad!r}")
    return value


def _check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"metadata must be a dict, got {type(metadata).__name__} {_shown(metadata)}")
    for key in metadata:
        if not isinstance(key, str):
            raise InvalidInput(f"metadata keys must be str, got {_shown(key)} in {_shown(metadata)}")
    try:
        plain = dict(json.loads(json.dumps(dict(metadata), allow_nan=False)))
    except RecursionError:
        raise InvalidInput(f"metadata is nested more than {_METADATA_DEPTH} levels deep") from None
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"metadata must be JSON-serialisable, got {_shown(metadata)} ({e})") from None
    _check_json_strings(plain, metadata)
    return plain


def _check_json_strings(obj: object, metadata: object, depth: int = 0) -> None:
    """Refuse NUL characters and lone surrogates anywhere in metadata: PostgreSQL's json operators cannot
    read a row holding them (every metadata filter on its scope would fail). Refuse nesting deeper than
    ``_METADATA_DEPTH`` too: the JSON parsers on the way (SQLAlchemy's, the databases') recurse."""
    if depth > _METADATA_DEPTH:
        raise InvalidInput(f"metadata is nested more than {_METADATA_DEPTH} levels deep: {_shown(metadata)}")
    if isinstance(obj, str):
        if "\x00" in obj or any(0xD800 <= ord(c) <= 0xDFFF for c in obj):
            raise InvalidInput(
                f"metadata string {obj[:40]!r} holds a NUL character or a lone surrogate: {_shown(metadata)}"
            )
    elif isinstance(obj, list):
        for item in obj:
            _check_json_strings(item, metadata, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_json_strings(key, metadata, depth + 1)
            _check_json_strings(value, metadata, depth + 1)


def _finite(value: object) -> float | None:
    """``value`` as a finite float; None for a non-number (a bool is not one), NaN, inf, or an int beyond
    float's range (``math.isfinite(2**1024)`` raises OverflowError)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _check_timestamp(timestamp: object) -> float:
    if timestamp is None:
        return _now()
    if isinstance(timestamp, datetime):
        try:
            return timestamp.timestamp()
        except (ValueError, OverflowError, OSError) as e:  # e.g. datetime.min, naive: local time is year 0
            raise InvalidInput(f"timestamp {_shown(timestamp)} has no epoch seconds ({e})") from None
    number = _finite(timestamp)
    if number is not None:
        return number
    raise InvalidInput(f"timestamp must be epoch seconds or a datetime, got {_shown(timestamp)}")


def _check_ttl(ttl: object) -> float | None:
    """A time to live in seconds: None (never expires) or a positive finite number."""
    if ttl is None:
        return None
    number = _finite(ttl)
    if number is not None and number > 0:
        return number
    raise InvalidInput(f"ttl must be None or a positive finite number of seconds, got {_shown(ttl)}")


def _check_count(value: object, what: str, *, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        none = "None or " if allow_none else ""
        raise InvalidInput(f"{what} must be {none}a non-negative int, got {_shown(value)}")
    return min(value, _SQL_INT - 1)  # beyond SQL's 64-bit integers: as good as no bound


# backend name -> the model whose checkpoint folder it loads (vLLM runs DeepSeek-OCR's)
_CHECKPOINT_OF = {"deepseek-ocr": "deepseek-ocr", "vllm": "deepseek-ocr", "optical-mini": "optical-mini"}


def _page_id_fits(page_id: object) -> bool:
    """Whether ``page_id`` could be a page's id; False for an int SQL cannot hold (no page has it),
    ``InvalidInput`` for anything but an int."""
    if not isinstance(page_id, int) or isinstance(page_id, bool):
        raise InvalidInput(f"page id must be an int, got {type(page_id).__name__} {_shown(page_id)}")
    return -_SQL_INT <= page_id < _SQL_INT


def _tier_of(paged: bool, sides: Sequence[int | None]) -> str:
    """A memory's tier: "text" until paged; forgotten if any of its pages is; else its smallest page side."""
    if not paged:
        return "text"
    if not sides or any(side is None for side in sides):
        return FORGOTTEN
    return str(min(side for side in sides if side is not None))


def _deeper(a: int | None, b: int | None) -> int | None:
    """The tier index further down the ladder (None, forgotten, is the bottom)."""
    return None if a is None or b is None else max(a, b)


def _chunks(text: str, words: int) -> list[tuple[int, str]]:
    """Split ``text`` into chunks of at most ``words`` words: (char offset, chunk text)."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    out = []
    for i in range(0, len(spans), words):
        group = spans[i : i + words]
        out.append((group[0][0], text[group[0][0] : group[-1][1]]))
    return out or [(0, text)]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentence_chunks(text: str, words: int) -> list[tuple[int, str]]:
    """One chunk per sentence (a run ending in . ! or ? before whitespace), sentences longer than ``words``
    words split as :func:`_chunks` splits them: (char offset, chunk text)."""
    out: list[tuple[int, str]] = []
    start = 0
    for end in [m.start() for m in _SENTENCE_END.finditer(text)] + [len(text)]:
        sentence = text[start:end]
        lead = len(sentence) - len(sentence.lstrip())
        if sentence.strip():
            out += [
                (start + lead + offset, chunk) for offset, chunk in _chunks(sentence[lead:].rstrip(), words)
            ]
        start = end
    return out or [(0, text)]


def _tier_name(side: int | None) -> str:
    return FORGOTTEN if side is None else str(side)


@dataclass
class _Pending:
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


class _PageMoved(Exception):
    """A page changed under a read: another process moved, redacted or deleted it. Read it again."""


ORPHAN_GRACE_S = 60.0  # how old an unreferenced blob must be before verify() calls it an orphan
_READ_ATTEMPTS = 4  # reads of a page that keeps changing under them before the error is raised


@dataclass
class _Write:
    """One write transaction: its session, the generation it locked, and what it changes in the index."""

    s: Session
    base: int  # the store generation when the lock was taken; this transaction commits base + 1
    added: list[tuple[str, list[int], np.ndarray]] = field(default_factory=list)
    removed: dict[str, list[int]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    @property
    def generation(self) -> int:
        return self.base + 1

    @property
    def changes_index(self) -> bool:
        return bool(self.added or self.removed or self.dropped)


class OpticalMemory:
    """An optical memory store in a folder. Open one with ``optical_memory.open(path)``.

    Thread-safe within a process (one lock around every public method), and shared between processes and
    hosts: every write is one SQL transaction under the store's write lock, and each process's FAISS
    index catches up with the others' writes from SQL before it is searched (see :meth:`_sync_index`).
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
        from .backends import make_counter, make_embedder, make_encoder, make_reader

        self.path = Path(path)
        self.config = config or StoreConfig()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as e:  # a file in the way, no permission, a NUL in the path
            raise InvalidInput(f"cannot use {str(path)!r} as a store folder: {e}") from None
        self._lock = threading.RLock()
        self._in_write = False  # inside _write (the lock makes it one thread's at a time)
        # Every process holds LOCK shared for the store's lifetime; a schema migration needs it exclusive.
        self._lockfile = open(self.path / "LOCK", "a+")  # noqa: SIM115  (held for the store's lifetime)
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise StoreLocked(
                f"store {str(self.path)!r} is held exclusively by another process (a schema migration in "
                "progress, or an optical-memory older than 0.2 that does not share stores); retry once it "
                "has closed the store"
            ) from None
        try:
            for what, obj, protocol in (
                ("embedder", embedder, Embedder),
                ("reader", reader, Reader),
                ("counter", counter, TokenCounter),
                ("encoder", encoder, Encoder),
            ):
                if obj is not None and not isinstance(obj, protocol):
                    raise InvalidInput(
                        f"{what}= must be a name or implement optical_memory.protocols.{protocol.__name__}, "
                        f"got {type(obj).__name__}"
                    )
            # the checkpoints the configured backends will load: a missing one fails now, not at recall
            named = {self.config.reader_name} if reader is None else set()
            if encoder is None and self.config.encoder_name is not None:
                named.add(self.config.encoder_name)
            checkpoints = {_CHECKPOINT_OF[n] for n in named if n in _CHECKPOINT_OF}
            if checkpoints:
                from .backends.deepseek import resolve_model_dir

                for model in sorted(checkpoints):
                    resolve_model_dir(self.config.model_dir, model=model)
            self.embedder = embedder or make_embedder(self.config.embedder)
            self._reader = reader
            cfg = self.config
            self._make_reader = lambda: make_reader(
                cfg.reader_name,
                model_dir=cfg.model_dir,
                device=cfg.model_device,
                dtype=cfg.model_dtype,
                url=cfg.model_url,
            )
            self._encoder = encoder
            self._make_encoder = lambda: (
                None
                if cfg.encoder_name is None
                else make_encoder(
                    cfg.encoder_name, model_dir=cfg.model_dir, device=cfg.model_device, dtype=cfg.model_dtype
                )
            )
            self.counter = counter or make_counter()
            self.renderer = Renderer(self.config.render)
            self.blobs = BlobStore(self.path / "blobs")
            url = self.config.database_url or f"sqlite:///{self.path / 'memory.db'}"
            self._engine, self._write_engine = db.make_engines(url)
            self._migrate_or_create()
            self._sessions = sessionmaker(self._engine, expire_on_commit=False)
            self._writes = sessionmaker(self._write_engine, expire_on_commit=False)
            self._check_render_config()
            self._index_path = self.path / "index.faiss"
            self.index = self._open_index()
        except BaseException:
            self._release()
            raise
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            self._reader = self._make_reader()
        return self._reader

    @property
    def encoder(self) -> Encoder | None:
        """The vision-token encoder (None unless a model or an encoder is configured)."""
        if self._encoder is None:
            self._encoder = self._make_encoder()
        return self._encoder

    def close(self) -> None:
        """Save the index and release the store. Safe to call twice."""
        with self._lock:
            if getattr(self, "_closed", True):
                return
            self.flush()
            self._closed = True
            self._release()

    def _release(self) -> None:
        if hasattr(self, "_engine"):
            self._engine.dispose()
            self._write_engine.dispose()
        fcntl.flock(self._lockfile, fcntl.LOCK_UN)
        self._lockfile.close()

    def _migrate_or_create(self) -> None:
        """Create the schema, or migrate an older one; a migration waits for no one: it needs every other
        process to have closed the store, and says so when one has not."""
        found = db.schema_version(self._write_engine)
        if found is None or found == db.SCHEMA_VERSION:
            db.prepare(self._write_engine)  # creates (serialised), or checks and returns
            return
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLocked(
                f"store {str(self.path)!r} has schema version {found} and needs migrating to "
                f"{db.SCHEMA_VERSION}, but another process has it open: close it there first"
            ) from None
        try:
            db.prepare(self._write_engine)
        finally:
            fcntl.flock(self._lockfile, fcntl.LOCK_SH)

    def flush(self) -> None:
        """Persist the index now (it is also saved by ``close``)."""
        with self._lock:
            self.index.save(self._index_path)

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Write]:
        """One write transaction under the store's write lock; its index changes are applied after commit.

        Blobs a transaction writes are in the blob folder before its rows commit; ``_sweep`` and
        ``verify`` delete unreferenced blobs only under the blob lock, which writers hold shared, so a
        blob is never swept between its write and the commit of the row that refers to it.
        """
        self._check_open()
        with self._lock:
            # one at a time per thread: a nested one would wait forever on the outer one's locks
            assert not self._in_write, "nested write transaction"
            self._in_write = True
            try:
                with self.blobs.writing(), self._lock_errors(), self._writes() as s, s.begin():
                    w = _Write(s, db.lock_generation(s))
                    yield w
                    if w.changes_index:
                        db.commit_generation(s, w.generation, removed=w.removed, dropped=w.dropped)
            finally:
                self._in_write = False
            if w.changes_index:
                self._apply(w)

    @contextlib.contextmanager
    def _lock_errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as e:
            message = str(e.orig).lower()
            if "database is locked" in message or "database is busy" in message:
                raise StoreBusy(
                    f"store {str(self.path)!r}: another process held SQLite's write lock for over "
                    f"{db.WRITE_LOCK_WAIT_S:g} s (SQLite allows one writer at a time); retry, write "
                    "in smaller batches, or use PostgreSQL (StoreConfig.database_url) for many concurrent "
                    "writers"
                ) from e
            if "lock timeout" in message:
                raise StoreBusy(
                    f"store {str(self.path)!r}: another transaction held the store's write lock for over "
                    f"{db.WRITE_LOCK_WAIT_S:g} s; nothing was written, retry"
                ) from e
            raise

    def _apply(self, w: _Write) -> None:
        """Bring the index to generation ``w.generation`` after ``w`` committed: directly from ``w`` when the
        index was current, else (another process wrote in between) by catching up from SQL."""
        if self.index.generation != w.base:
            self._sync_index()
            return
        for scope in w.dropped:
            self.index.drop_scope(scope)
        for scope, ids in w.removed.items():
            self.index.remove(scope, ids)
        for scope, ids, vectors in w.added:
            self.index.add(scope, ids, vectors)
        self.index.generation = w.generation

    def _sync_index(self) -> None:
        """Catch the index up with every write committed to SQL, by any process: the log's removals of the
        generations it missed, then the vectors those generations added. Rebuilt from SQL if the log no
        longer reaches back that far (or the index is ahead of SQL: a database restored from a backup).

        This is the consistency rule: the index at generation g holds exactly the vectors SQL held at g;
        every search first brings it to the generation SQL is at when the search starts."""
        with self._lock, self._sessions() as s:
            head = db.generation(s)
            have = self.index.generation
            if head == have:
                return
            if head < have or have < db.log_floor(s):
                log.info("index at generation %d, store at %d: rebuilding", have, head)
                self.rebuild_index()
                return
            entries = s.scalars(
                select(db.IndexLogRow)
                .where(db.IndexLogRow.generation > have, db.IndexLogRow.generation <= head)
                .order_by(db.IndexLogRow.generation)
            ).all()
            names = {db.scope_key(name): name for name in self.index.scopes()} if entries else {}
            for entry in entries:  # removals first: a vector added in (have, head] and removed is gone
                for key in entry.dropped:
                    if key in names:
                        self.index.drop_scope(names[key])
                for key, ids in entry.removed.items():
                    if key in names:
                        self.index.remove(names[key], ids)
            added = s.execute(
                select(EmbeddingRow.scope, EmbeddingRow.id, EmbeddingRow.vector)
                .where(EmbeddingRow.generation > have, EmbeddingRow.generation <= head)
                .order_by(EmbeddingRow.id)
            ).all()
            self.index.add_rows(added)
            self.index.generation = head

    def __enter__(self) -> OpticalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpticalMemory({str(self.path)!r})"

    def _session(self) -> Session:
        self._check_open()
        return self._sessions()

    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise InvalidInput(f"store {str(self.path)!r} is closed")

    def _check_render_config(self) -> None:
        """Pages' line geometry depends on the render config: refuse to mix two in one store."""
        wanted = json.dumps(self.config.render.__dict__, sort_keys=True, default=list)
        with self._write() as w:
            s = w.s
            row = s.get(db.Meta, "render_config")
            if row is None:
                s.add(db.Meta(key="render_config", value=wanted))
            elif row.value != wanted:
                raise InvalidInput(
                    f"store {str(self.path)!r} was rendered with RenderConfig {row.value}, "
                    f"but it was opened with {wanted}: open it with the same render settings"
                )

    def _open_index(self) -> VectorIndex:
        """The saved index caught up with SQL, or one rebuilt from SQL if the file is missing or damaged,
        or holds other vectors than SQL does (checked by count when no writer moved the store meanwhile)."""
        self.index = VectorIndex.load(self._index_path, dim=self.embedder.dim) or VectorIndex(
            self.embedder.dim,
            generation=-1,  # -1: older than any floor, so the first sync rebuilds
        )
        self._sync_index()
        with self._sessions() as s:
            count = s.scalar(select(func.count(EmbeddingRow.id))) or 0
            unmoved = db.generation(s) == self.index.generation
        if unmoved and len(self.index) != count:
            log.warning(
                "index file %s holds %d vectors, SQL %d: rebuilding", self._index_path, len(self.index), count
            )
            self.rebuild_index()
        return self.index

    def rebuild_index(self) -> VectorIndex:
        """Rebuild the FAISS index from the vectors in SQL and save it."""
        with self._lock, self._sessions() as s:
            head = db.generation(s)
            index = VectorIndex(self.embedder.dim, generation=head)
            index.add_rows(
                s.execute(
                    select(EmbeddingRow.scope, EmbeddingRow.id, EmbeddingRow.vector)
                    .where(EmbeddingRow.generation <= head)
                    .order_by(EmbeddingRow.id)
                ).all()
            )
            index.save(self._index_path)
            log.info(
                "rebuilt index: %d vectors in %d scopes at generation %d", len(index), index.n_scopes, head
            )
            self.index = index
            return index

    # -- add -----------------------------------------------------------------------------------------------

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
    ) -> int:
        """Store one conversation turn or document; returns its id.

        A turn stays in the text tier until ``age`` packs it into a page; a document is paginated and
        rendered at once. Bad input raises ``InvalidInput`` naming the value and stores nothing.

        ``ttl`` (seconds) makes the memory expire ``ttl`` seconds after ``timestamp``: from then on no
        search or listing returns it, and the next ``age`` deletes it like ``delete``. Until then its pages
        walk the whole forgetting ladder over its lifetime (``AgingPolicy.ttl_tier_index``), so it fades
        before it goes. See :meth:`set_ttl` to extend or clear it.
        """
        return self.add_many(
            [{"text": text, "role": role, "metadata": metadata, "timestamp": timestamp, "ttl": ttl}],
            scope=scope,
            kind=kind,
        )[0]

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
        written.
        """
        _check_name(scope, "scope", max_len=255)
        if kind not in ("turn", "document"):
            raise InvalidInput(f"kind must be 'turn' or 'document', got {_shown(kind)}")
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
            raise InvalidInput(
                f"add_many takes a list of items, got {type(items).__name__}; use add() for a single text"
            )
        if progress is not None and not callable(progress):
            raise InvalidInput(f"progress must be a callable or None, got {type(progress).__name__}")
        pending = [self._prepare(item, scope=scope, kind=kind) for item in items]
        if not pending:
            return []
        texts = [chunk for p in pending for _, chunk in p.chunks]
        vectors = self.embedder.embed(texts)
        at = 0
        for p in pending:
            p.vectors = vectors[at : at + len(p.chunks)]
            at += len(p.chunks)
        with self._lock:
            if kind == "document":
                ids = [self._write_document(p) for p in pending]
            else:
                ids = self._write_turns(pending)
            if progress:
                progress(len(ids))
            return ids

    def _prepare(self, item: object, *, scope: str, kind: Kind) -> _Pending:
        if isinstance(item, Mapping):
            text = item.get("text", item.get("content"))
            role, metadata, timestamp = item.get("role"), item.get("metadata"), item.get("timestamp")
            ttl = item.get("ttl")
        else:
            text, role, metadata, timestamp, ttl = item, None, None, None, None
        if role is not None:
            _check_name(role, "role", max_len=64)
            self.renderer.normalise(role)  # a label the fonts cannot draw fails now, not in age()
        normalised = self.renderer.normalise(text)
        meta = _check_metadata(metadata)
        ts = _check_timestamp(timestamp)
        ttl_s = _check_ttl(ttl)
        return _Pending(
            text=normalised,
            scope=scope,
            kind=kind,
            role=role,
            metadata=meta,
            timestamp=ts,
            tokens=self.counter.count(normalised),
            chunks=self._gist_chunks(normalised),
            ttl_s=ttl_s,
        )

    def _gist_chunks(self, text: str) -> list[tuple[int, str]]:
        """The pieces of ``text`` that get a gist vector each, as ``StoreConfig.gist`` asks."""
        if self.config.gist == "sentences":
            return _sentence_chunks(text, self.config.chunk_words)
        return _chunks(text, self.config.chunk_words)

    def _ensure_scope(self, s: Session, scope: str, when: float) -> ScopeRow:
        row = s.get(ScopeRow, scope)
        if row is None:
            row = ScopeRow(name=scope, created_at=when, turns=0)
            s.add(row)
            s.flush()
        return row

    def _new_memory(self, s: Session, p: _Pending, *, turn_index: int, paged: bool) -> MemoryRow:
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

    def _add_embeddings(self, w: _Write, memory: MemoryRow, p: _Pending) -> None:
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

    def _write_turns(self, pending: list[_Pending]) -> list[int]:
        scope = pending[0].scope
        ids = []
        with self._write() as w:
            s = w.s
            srow = self._ensure_scope(s, scope, pending[0].timestamp)
            for p in pending:
                srow.turns += 1
                memory = self._new_memory(s, p, turn_index=srow.turns, paged=False)
                self._add_embeddings(w, memory, p)
                ids.append(memory.id)
        return ids

    def _write_document(self, p: _Pending) -> int:
        pages, spans = self.renderer.layout([(None, p.text)])
        with self._write() as w:
            s = w.s
            srow = self._ensure_scope(s, p.scope, p.timestamp)
            memory = self._new_memory(s, p, turn_index=srow.turns, paged=True)
            self._write_pages(s, p.scope, pages, spans, [memory], leave_last_open=False)
            if not self.config.retain_text:
                memory.text = None
            self._add_embeddings(w, memory, p)
        return memory.id

    def _write_pages(
        self,
        s: Session,
        scope: str,
        pages: list[list[Line]],
        spans: list[Span],
        memories: list[MemoryRow],
        *,
        leave_last_open: bool,
        offsets: Sequence[int] | None = None,
    ) -> list[PageRow]:
        """Render laid-out pages, store their blobs, and write page and span rows (caller's transaction).

        ``memories[i]`` is the memory of layout item i; ``offsets[i]`` is added to its char ranges (an item
        can be the tail of a memory whose head is already on an earlier page).
        """
        side = self.config.render.page_side
        rows = []
        for number, lines in enumerate(pages):
            on_page = [sp for sp in spans if sp.page == number]
            members = [memories[sp.item] for sp in on_page]
            blob = self.blobs.put(_png(self.renderer.draw(lines)))
            is_last = number == len(pages) - 1
            page = PageRow(
                scope=scope,
                render_side=side,
                side=side,
                blob=blob,
                blob_bytes=self.blobs.size(blob),
                is_open=leave_last_open and is_last and len(lines) < self.renderer.lines_per_page,
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
                tokens += self.counter.count(text[sp.char_start + shift : sp.char_end + shift])
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

    def add_file(
        self, path: str | os.PathLike[str], *, scope: str, metadata: Mapping[str, Any] | None = None
    ) -> list[int]:
        """Store a file: text/Markdown as one document, each PDF page or an image as a page of its own.

        PDF and image pages keep their own pixels (fitted and padded to the top tier); their gist vector
        comes from the PDF's text layer or, failing that, from the reader.
        """
        _check_name(scope, "scope", max_len=255)
        meta = _check_metadata(metadata)
        file = _check_file(path)
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
            return [self.add(text, scope=scope, kind="document", metadata=meta)]
        if suffix != ".pdf" and suffix not in IMAGE_FILE_SUFFIXES:
            known = sorted(TEXT_FILE_SUFFIXES | IMAGE_FILE_SUFFIXES | {".pdf"})
            raise InvalidInput(f"unsupported file type {suffix!r} for {str(file)!r}; supported: {known}")
        images = load_page_file(file, self.config.render.page_side)
        texts = _pdf_texts(file) if suffix == ".pdf" else [""] * len(images)
        ids = []
        for number, (image, text) in enumerate(zip(images, texts, strict=True)):
            if not text.strip():
                text = "\n".join(line.text for line in self.reader.read([image])[0])
            ids.append(self._write_image_page(image, text, scope, {**meta, "page": number + 1}))
        return ids

    def _write_image_page(self, image: Image.Image, text: str, scope: str, meta: dict[str, Any]) -> int:
        text = " ".join(text.split()) or "(no text found)"
        ts = _now()
        p = _Pending(
            text=text,
            scope=scope,
            kind="document",
            role=None,
            metadata=meta,
            timestamp=ts,
            tokens=self.counter.count(text),
            chunks=self._gist_chunks(text),
        )
        p.vectors = self.embedder.embed([c for _, c in p.chunks])
        side = self.config.render.page_side
        with self._write() as w:
            s = w.s
            srow = self._ensure_scope(s, scope, ts)
            memory = self._new_memory(s, p, turn_index=srow.turns, paged=True)
            blob = self.blobs.put(_png(image))
            page = PageRow(
                scope=scope,
                render_side=0,
                side=side,
                blob=blob,
                blob_bytes=self.blobs.size(blob),
                is_open=False,
                lost=False,
                created_at=ts,
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
                    char_end=len(text),
                    joins="",
                    label_len=0,
                )
            )
            if not self.config.retain_text:
                memory.text = None
            self._add_embeddings(w, memory, p)
        return memory.id

    # -- aging ---------------------------------------------------------------------------------------------

    def age(self, *, now: float | datetime | None = None, progress: Progress | None = None) -> dict[str, int]:
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
        """
        when = _check_timestamp(now)
        if progress is not None and not callable(progress):
            raise InvalidInput(f"progress must be a callable taking a count, got {_shown(progress)}")
        report = {"expired": 0, "packed": 0, "pages_written": 0, "downsampled": 0, "forgotten": 0}
        with self._lock:
            report["expired"] = self._expire(when)
            with self._session() as s:
                scopes = list(s.scalars(select(ScopeRow.name)))
            for scope in scopes:
                self._pack(scope, report)
                self._tier_pages(scope, when, report, progress)
            report["encoded"] = self.sync_vision()
        log.info("age: %s", report)
        return report

    def _expire(self, when: float) -> int:
        """Delete (as ``delete`` does: rows, vectors, page images) every memory expired at ``when``."""
        with self._session() as s:
            expired = MemoryRow.expires_at <= when  # NULL (never expires) is not <= anything
            ids = list(s.scalars(select(MemoryRow.id).where(expired).order_by(MemoryRow.id)))
        deleted = 0
        for memory_id in ids:
            try:
                self._delete(memory_id)
            except MemoryNotFound:
                continue  # another process's age() deleted it first
            deleted += 1
        if deleted:
            db.scrub_wal(self._engine)
        return deleted

    # -- vision tokens -------------------------------------------------------------------------------------

    def sync_vision(self, page_ids: Iterable[int] | None = None, *, batch_size: int = 16) -> int:
        """Encode every page (or those of ``page_ids``) whose vision tokens are missing or stale, at the tier
        it is in now; returns how many pages were encoded. Nothing happens without an encoder. ``age()``
        calls this, so after it each readable page holds its tokens."""
        encoder = self.encoder
        if encoder is None:
            return 0
        with self._lock:
            with self._session() as s:
                query = (
                    select(PageRow.id, PageRow.blob)
                    .outerjoin(VisionRow, VisionRow.page_id == PageRow.id)
                    .where(PageRow.blob.is_not(None))
                    .where(
                        (VisionRow.page_id.is_(None))
                        | (VisionRow.page_blob != PageRow.blob)
                        | (VisionRow.encoder != encoder.name)
                    )
                    .order_by(PageRow.id)
                )
                if page_ids is not None:
                    wanted = list(page_ids)
                    if not all(isinstance(i, int) and not isinstance(i, bool) for i in wanted):
                        raise InvalidInput(f"page_ids must be ints, got {_shown(wanted)}")
                    query = query.where(PageRow.id.in_([i for i in wanted if -_SQL_INT <= i < _SQL_INT]))
                todo = [(pid, blob) for pid, blob in s.execute(query) if blob]
            done = 0
            for start in range(0, len(todo), batch_size):
                batch, images = [], []
                for page_id, blob in todo[start : start + batch_size]:
                    try:
                        images.append(Image.open(io.BytesIO(self.blobs.get(blob))))
                    except BlobError as e:  # moved by another process since listed, or damaged: verify()
                        log.info("page %d: not encoded: %s", page_id, e)
                        continue
                    batch.append((page_id, blob))
                arrays = encoder.encode(images) if images else []
                stale: list[str] = []
                with self._write() as w:
                    s = w.s
                    for (page_id, page_blob), tokens in zip(batch, arrays, strict=True):
                        page = s.get(PageRow, page_id)
                        if page is None or page.blob != page_blob:
                            continue  # deleted or moved by another process while it was encoded
                        buffer = io.BytesIO()
                        np.save(buffer, np.ascontiguousarray(tokens, dtype=np.float16), allow_pickle=False)
                        old = s.get(VisionRow, page_id)
                        if old is not None:
                            stale.append(old.blob)
                            s.delete(old)
                            s.flush()
                        s.add(
                            VisionRow(
                                page_id=page_id,
                                encoder=encoder.name,
                                page_blob=page_blob,
                                blob=self.blobs.put(buffer.getvalue(), suffix=".npy"),
                                positions=int(tokens.shape[0]),
                                dim=int(tokens.shape[1]),
                            )
                        )
                self._sweep(stale)
                done += len(batch)
            return done

    def vision_tokens(self, page_id: int) -> np.ndarray | None:
        """A page's stored vision tokens, float16 (positions, dim), or None when it has none (no encoder,
        not synced yet, or forgotten). Tokens whose blob is missing or corrupt are dropped (they are derived
        data: the next :meth:`sync_vision` encodes the page again) and None is returned."""
        if not _page_id_fits(page_id):
            return None
        with self._lock:
            with self._session() as s:
                row = s.get(VisionRow, page_id)
                page = s.get(PageRow, page_id)
                if row is None or page is None or page.blob != row.page_blob:
                    return None  # none, or stale: the page changed since it was encoded
                name = row.blob
            try:
                return np.load(io.BytesIO(self.blobs.get(name)), allow_pickle=False)
            except BlobError as e:
                log.warning("page %d: dropping unreadable vision tokens: %s", page_id, e)
                with self._write() as w:
                    s = w.s
                    stale = self._drop_vision(s, [page_id])
                self._sweep(stale)
                return None

    def _drop_vision(self, s: Session, page_ids: Iterable[int]) -> list[str]:
        """Delete the vision rows of ``page_ids`` (in the caller's transaction); returns their blob names."""
        ids = list(page_ids)
        blobs = list(s.scalars(select(VisionRow.blob).where(VisionRow.page_id.in_(ids))))
        if blobs:  # a bulk statement, run now: never ordered after the deletion of its page
            s.execute(delete(VisionRow).where(VisionRow.page_id.in_(ids)))
        return blobs

    def _pack(self, scope: str, report: dict[str, int]) -> None:
        keep = self.config.aging.text_turns
        stale_blobs: list[str] = []
        with self._write() as w:
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
                    s.scalars(
                        select(SpanRow).where(SpanRow.page_id == open_page.id).order_by(SpanRow.line_start)
                    )
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
                stale_blobs += self._drop_vision(s, [open_page.id])  # else its .npy outlives the page
                s.delete(open_page)
                s.flush()
            for memory in candidates:
                assert memory.text is not None
                items.append((memory.role, memory.text))
                members.append(memory)
                offsets.append(0)
                memory.paged = True
            pages, spans = self.renderer.layout(items)
            rows = self._write_pages(s, scope, pages, spans, members, leave_last_open=True, offsets=offsets)
            self._drop_closed_text(s, {m.id for m in members})
            report["packed"] += len(candidates)
            report["pages_written"] += len(rows)
        self._sweep(stale_blobs)

    def _drop_closed_text(self, s: Session, memory_ids: Iterable[int]) -> None:
        """Forget the verbatim text of memories whose every page is closed (true optical memory).

        Two set queries per batch of ids, not two per memory: this runs for every page ``age()`` packs or
        moves, and per-memory queries were 14% of ingest time (a profile of 150k tokens streamed with
        ``age()`` every 40 sessions)."""
        if self.config.retain_text:
            return
        ids = sorted(set(memory_ids))
        for start in range(0, len(ids), _IN_BATCH):
            batch = ids[start : start + _IN_BATCH]
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

    def _tier_pages(self, scope: str, when: float, report: dict[str, int], progress: Progress | None) -> None:
        policy = self.config.aging
        sides = [t.side for t in policy.tiers]
        with self._session() as s:
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
                target = policy.tier_index(
                    turns=srow.turns - page.last_turn_index, age_s=when - page.created_at
                )
                target = _deeper(target, self._ttl_target(on_page, when))
                current = sides.index(page.side) if page.side in sides else -1
                if target is None or target > current:
                    moves.append((page.id, None if target is None else sides[target]))
        for page_id, side in moves:
            self._move_page(page_id, side, report)
            if progress:
                progress(1)

    def _ttl_target(self, on_page: list[tuple[bool, float | None, float | None]], when: float) -> int | None:
        """The tier the lifetimes of a page's memories call for: the least advanced of them, and only when
        every memory on the page has a ttl (a page is never downsampled under a memory that does not
        expire). Tier 0 when that is not so."""
        policy = self.config.aging
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

    def _move_page(self, page_id: int, side: int | None, report: dict[str, int]) -> None:
        stale: list[str] = []
        with self._write() as w:
            s = w.s
            page = s.get(PageRow, page_id)
            if page is None or page.blob is None or not self._deeper_tier(page.side, side):
                return  # another process deleted, forgot or moved it since _tier_pages looked
            stale.append(page.blob)
            if page.is_open:
                page.is_open = False
            if side is None:
                page.side, page.blob, page.blob_bytes = None, None, 0
                report["forgotten"] += 1
            else:
                image = Image.open(io.BytesIO(self.blobs.get(page.blob)))
                small = image.resize(
                    (side, side), Image.Resampling.LANCZOS
                )  # the forgetting: pixels are lost
                page.blob = self.blobs.put(_png(small))
                page.blob_bytes = self.blobs.size(page.blob)
                page.side = side
                report["downsampled"] += 1
            s.execute(delete(RecallRow).where(RecallRow.page_id == page_id))  # cached text of the old tier
            stale += self._drop_vision(s, [page_id])  # tokens of the old tier are forgotten with its pixels
            members = list(s.scalars(select(SpanRow.memory_id).where(SpanRow.page_id == page_id)))
            self._drop_closed_text(s, members)
        self._sweep(stale)

    def _deeper_tier(self, current: int | None, target: int | None) -> bool:
        """Whether moving a page at side ``current`` to ``target`` (None: forgotten) goes down the ladder."""
        if current is None:
            return False
        if target is None:
            return True
        sides = [t.side for t in self.config.aging.tiers]
        if current in sides and target in sides:
            return sides.index(target) > sides.index(current)
        return current != target

    def _sweep(self, names: Iterable[str]) -> None:
        """Delete blobs no page refers to any more (after the transaction that released them committed)."""
        names = {n for n in names if n}
        if not names:
            return
        with self.blobs.sweeping(), self._session() as s:
            for name in names:
                used = s.scalar(select(func.count(PageRow.id)).where(PageRow.blob == name)) or s.scalar(
                    select(func.count(VisionRow.page_id)).where(VisionRow.blob == name)
                )
                if not used:
                    self.blobs.delete(name)

    # -- pin / delete --------------------------------------------------------------------------------------

    def _memory(self, s: Session, memory_id: object) -> MemoryRow:
        if not isinstance(memory_id, int) or isinstance(memory_id, bool):
            kind = type(memory_id).__name__
            raise InvalidInput(f"memory id must be an int, got {kind} {_shown(memory_id)}")
        row = s.get(MemoryRow, memory_id) if -_SQL_INT <= memory_id < _SQL_INT else None
        if row is None:
            raise MemoryNotFound(f"no memory with id {_shown(memory_id)} in {str(self.path)!r}")
        return row

    def _scope(self, s: Session, scope: object) -> ScopeRow:
        _check_name(scope, "scope", max_len=255)
        row = s.get(ScopeRow, scope)
        if row is None:
            raise ScopeNotFound(f"no memories were ever stored in scope {scope!r}")
        return row

    def pin(self, memory_id: int, *, pinned: bool = True) -> None:
        """Pinned memories never age: a text-tier turn stays text, a paged memory's pages keep their tier.
        A pinned memory with a ttl still expires (clear it with ``set_ttl(memory_id, None)``)."""
        if not isinstance(pinned, bool):
            raise InvalidInput(f"pinned must be a bool, got {type(pinned).__name__} {_shown(pinned)}")
        with self._write() as w:
            s = w.s
            self._memory(s, memory_id).pinned = pinned

    def set_ttl(
        self, memory_id: int, ttl: float | None, *, now: float | datetime | None = None
    ) -> float | None:
        """Give a memory ``ttl`` more seconds to live from ``now`` (default: the current time), or make it
        never expire (``ttl=None``); returns its new ``expires_at`` (epoch seconds, or None).

        The ladder then runs over the new lifetime, but only ever downwards: a page already downsampled
        stays at its tier (its pixels are gone), and a refreshed memory simply fades more slowly from there.
        Raises ``MemoryNotFound`` for an unknown (or already deleted) id.
        """
        ttl_s = _check_ttl(ttl)
        when = _check_timestamp(now)
        with self._write() as w:
            s = w.s
            memory = self._memory(s, memory_id)
            memory.ttl_s = ttl_s
            memory.expires_at = None if ttl_s is None else when + ttl_s
            return memory.expires_at

    def delete(self, memory_id: int) -> None:
        """Delete a memory: its row, vectors and spans; its lines are blanked on pages it shares with other
        memories, and pages holding nothing else are deleted with their blobs. On SQLite its bytes are
        zeroed in the database file (``secure_delete``) and the write-ahead log is emptied when no other
        process is reading (else at SQLite's next checkpoint)."""
        self._delete(memory_id)
        db.scrub_wal(self._engine)

    def _delete(self, memory_id: int) -> None:
        with self._lock:
            stale: list[str] = []
            with self._write() as w:
                s = w.s
                memory = self._memory(s, memory_id)
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
                    stale += self._drop_vision(s, [page.id])  # the tokens show the deleted lines too
                    if not others:
                        s.delete(page)
                    elif page.blob:
                        image = Image.open(io.BytesIO(self.blobs.get(page.blob)))
                        page.blob = self.blobs.put(
                            _png(self.renderer.redact(image, span.line_start, span.line_end))
                        )
                        page.blob_bytes = self.blobs.size(page.blob)
                        s.execute(delete(RecallRow).where(RecallRow.page_id == page.id))
                s.execute(delete(SpanRow).where(SpanRow.memory_id == memory_id))
                s.execute(delete(EmbeddingRow).where(EmbeddingRow.memory_id == memory_id))
                s.delete(memory)
                if eids:
                    w.removed[scope] = eids
            self._sweep(stale)

    def delete_scope(self, scope: str) -> int:
        """Delete every memory, page, vector and blob of ``scope``; returns how many memories went."""
        with self._lock:
            with self._write() as w:
                s = w.s
                self._scope(s, scope)
                blobs = [b for b in s.scalars(select(PageRow.blob).where(PageRow.scope == scope)) if b]
                pids_list = list(s.scalars(select(PageRow.id).where(PageRow.scope == scope)))
                blobs += self._drop_vision(s, pids_list)
                count = s.scalar(select(func.count(MemoryRow.id)).where(MemoryRow.scope == scope)) or 0
                mids = select(MemoryRow.id).where(MemoryRow.scope == scope)
                pids = select(PageRow.id).where(PageRow.scope == scope)
                s.execute(delete(RecallRow).where(RecallRow.page_id.in_(pids)))
                s.execute(delete(SpanRow).where(SpanRow.memory_id.in_(mids)))
                s.execute(delete(EmbeddingRow).where(EmbeddingRow.scope == scope))
                s.execute(delete(PageRow).where(PageRow.scope == scope))
                s.execute(delete(MemoryRow).where(MemoryRow.scope == scope))
                s.execute(delete(ScopeRow).where(ScopeRow.name == scope))
                w.dropped.append(scope)
            self._sweep(blobs)
            db.scrub_wal(self._engine)
            return count

    # -- search --------------------------------------------------------------------------------------------

    def scopes(self) -> list[str]:
        with self._lock, self._session() as s:
            return list(s.scalars(select(ScopeRow.name).order_by(ScopeRow.name)))

    def _scope_names(self, s: Session, scope: object) -> list[str] | None:
        """``scope`` (None, one name, or a sequence of names) as a list of known scopes; None means all.
        An unknown name raises ``ScopeNotFound``."""
        if scope is None:
            return None
        if isinstance(scope, str):
            return [self._scope(s, scope).name]
        if not isinstance(scope, (Sequence, frozenset, set)):
            raise InvalidInput(f"scope must be a str, a sequence of str or None, got {type(scope).__name__}")
        names = list(dict.fromkeys(_check_name(name, "scope", max_len=255) for name in scope))
        known = set(s.scalars(select(ScopeRow.name).where(ScopeRow.name.in_(names))))
        missing = [name for name in names if name not in known]
        if missing:
            raise ScopeNotFound(f"no memories were ever stored in scope(s) {_shown(missing)}")
        return names

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
        not equal ``1``, ``1`` equals ``1.0``). The filters run in SQL (SQLite's ``json_each``, PostgreSQL's
        json operators) over the rows of the scopes asked for, which the scope index finds; without a
        scope, over every row.
        """
        wanted = _check_metadata(filters)
        if "tier" in wanted:
            raise InvalidInput("memories() cannot filter on 'tier' (it is computed): filter the results")
        for key, value in wanted.items():
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise InvalidInput(
                    f"memories() filters compare JSON scalars, got {type(value).__name__} {_shown(value)} "
                    f"for {_shown(key)}"
                )
            if isinstance(value, int) and not -_SQL_INT <= value < _SQL_INT:
                raise InvalidInput(
                    f"memories() filters compare integers of at most 64 bits, got {_shown(value)} "
                    f"for {_shown(key)}"
                )
        count = _check_count(limit, "limit", allow_none=True)
        skip = _check_count(offset, "offset", allow_none=False)
        with self._lock, self._session() as s:
            names = self._scope_names(s, scope)
            if names == []:
                return []
            stmt = select(MemoryRow).where(self._live(_now()))
            if names is not None:
                stmt = stmt.where(MemoryRow.scope.in_(names))
            for key, value in wanted.items():
                if key in ("kind", "role"):
                    stmt = stmt.where(getattr(MemoryRow, key) == value)
                else:
                    stmt = stmt.where(self._meta_equals(key, value))
            stmt = stmt.order_by(MemoryRow.created_at.desc(), MemoryRow.id.desc()).offset(skip).limit(count)
            return self._infos(s, list(s.scalars(stmt)))

    def memory_info(self, memory_id: int) -> MemoryInfo:
        """One memory's scope, kind, role, tier, metadata and expiry, without reading its pages (cheap: use
        it to check which scope an id belongs to). Raises ``MemoryNotFound`` for an unknown, deleted or
        expired id."""
        with self._lock, self._session() as s:
            row = self._memory(s, memory_id)
            if row.expires_at is not None and row.expires_at <= _now():
                raise MemoryNotFound(f"memory {_shown(memory_id)} has expired")
            return self._infos(s, [row])[0]

    def _infos(self, s: Session, rows: list[MemoryRow]) -> list[MemoryInfo]:
        sides: dict[int, list[int | None]] = {}
        for memory_id, side in s.execute(
            select(SpanRow.memory_id, PageRow.side)
            .join(PageRow, PageRow.id == SpanRow.page_id)
            .where(SpanRow.memory_id.in_([m.id for m in rows]))
        ):
            sides.setdefault(memory_id, []).append(side)
        return [
            MemoryInfo(
                id=m.id,
                scope=m.scope,
                kind=m.kind,  # type: ignore[arg-type]
                role=m.role,
                created_at=m.created_at,
                tier=_tier_of(m.paged, sides.get(m.id, [])),
                metadata=dict(m.meta or {}),
                expires_at=m.expires_at,
            )
            for m in rows
        ]

    @staticmethod
    def _live(now: float) -> ColumnElement[bool]:
        """Memories not expired at ``now``."""
        return or_(MemoryRow.expires_at.is_(None), MemoryRow.expires_at > now)

    def _meta_equals(self, key: str, value: str | int | float | bool | None) -> ColumnElement[bool]:
        """SQL for "metadata[key] is the JSON scalar ``value``" (typed: a string "1" is not the number 1)."""
        if self._engine.dialect.name == "postgresql":  # json operators: no jsonb cast of whole rows
            kind = func.json_typeof(MemoryRow.meta[key])
            shown = MemoryRow.meta[key].as_string()  # ->>, read only once the type is known
            if value is None:
                return kind == "null"
            if isinstance(value, bool):
                return and_(kind == "boolean", shown == ("true" if value else "false"))
            if isinstance(value, (int, float)):
                return case((kind == "number", cast(shown, Numeric) == value), else_=False)
            return and_(kind == "string", shown == value)
        if self._engine.dialect.name != "sqlite":
            raise InvalidInput(f"metadata filters need SQLite or PostgreSQL, not {self._engine.dialect.name}")
        each = func.json_each(MemoryRow.meta).table_valued("key", "type", "atom")
        if value is None:
            typed = each.c.type == "null"
        elif isinstance(value, bool):
            typed = each.c.type == ("true" if value else "false")
        elif isinstance(value, (int, float)):
            typed = and_(each.c.type.in_(["integer", "real"]), each.c.atom == value)
        else:
            typed = and_(each.c.type == "text", each.c.atom == value)
        return exists().select_from(each).where(each.c.key == key, typed)

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        scope: str | Sequence[str] | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """The ``k`` memories closest in meaning to ``query``, best first, one hit per memory.

        ``scope`` restricts the search to one tenant, or to a sequence of them (None searches all; an
        unknown one raises ``ScopeNotFound``). ``filters`` keeps memories whose ``kind``, ``role``, ``tier``
        or metadata keys equal the given values. Expired memories are never returned.
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput(f"query must be a non-empty string, got {_shown(query)}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InvalidInput(f"k must be a positive int, got {_shown(k)}")
        wanted = _check_metadata(filters)
        with self._lock:
            with self._session() as s:
                scopes = self._scope_names(s, scope)
            if scopes == []:
                return []
            vector = self.embedder.embed([query])[0]
            self._sync_index()
            fetch = k * (8 if wanted else 3)
            while True:
                raw = self.index.search(vector, fetch, scopes)
                hits = self._hits(raw, wanted, k)
                if len(hits) >= k or len(raw) < fetch:
                    return hits
                fetch *= 4

    def _hits(self, raw: list[tuple[int, float]], wanted: dict[str, Any], k: int) -> list[Hit]:
        if not raw:
            return []
        # Plain column queries, not ORM objects: this is the search hot path.
        with self._session() as s:
            chunk = {
                eid: (mid, start)
                for eid, mid, start in s.execute(
                    select(EmbeddingRow.id, EmbeddingRow.memory_id, EmbeddingRow.char_start).where(
                        EmbeddingRow.id.in_([eid for eid, _ in raw])
                    )
                )
            }
            best: dict[int, tuple[float, int]] = {}
            for eid, sc in raw:
                if eid in chunk and chunk[eid][0] not in best:  # raw is best first
                    best[chunk[eid][0]] = (sc, chunk[eid][1])
            memories = {
                row.id: row
                for row in s.execute(
                    select(
                        MemoryRow.id,
                        MemoryRow.scope,
                        MemoryRow.kind,
                        MemoryRow.role,
                        MemoryRow.paged,
                        MemoryRow.meta,
                    ).where(MemoryRow.id.in_(list(best)), self._live(_now()))
                )
            }
            spans: dict[int, list[Any]] = {}
            for sp in s.execute(
                select(
                    SpanRow.memory_id,
                    SpanRow.page_id,
                    SpanRow.char_start,
                    SpanRow.char_end,
                    PageRow.side,
                    PageRow.text_tokens,
                )
                .join(PageRow, PageRow.id == SpanRow.page_id)
                .where(SpanRow.memory_id.in_(list(best)))
            ):
                spans.setdefault(sp.memory_id, []).append(sp)
            page_sides = {sp.page_id: sp.side for v in spans.values() for sp in v}
            page_text = {sp.page_id: sp.text_tokens for v in spans.values() for sp in v}
        hits = []
        for mid, (sc, char_start) in sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0])):
            if mid not in memories:
                continue  # expired
            m = memories[mid]
            page_id = None
            tier = "text"
            compression = None
            if m.paged:
                mine = sorted(spans.get(mid, []), key=lambda sp: sp.char_start)
                hit_span = next(
                    (sp for sp in mine if sp.char_start <= char_start < max(sp.char_end, sp.char_start + 1)),
                    mine[0] if mine else None,
                )
                if hit_span is not None:
                    page_id = hit_span.page_id
                    side = page_sides.get(page_id)
                    tier = _tier_name(side)
                    if side and page_text.get(page_id):
                        compression = round(page_text[page_id] / vision_tokens(side), 2)
            hit = Hit(
                id=mid,
                score=sc,
                tier=tier,
                page_id=page_id,
                scope=m.scope,
                kind=m.kind,
                role=m.role,
                metadata=dict(m.meta or {}),
                compression=compression,
            )
            if _matches(hit, wanted):
                hits.append(hit)
            if len(hits) == k:
                break
        return hits

    # -- recall --------------------------------------------------------------------------------------------

    def recall(self, memory_id: int, *, read: bool = False) -> Recall:
        """A memory as text. Retained text is returned as is (``source="retained"``) unless ``read=True``;
        otherwise the reader reads its page images at their current tier (cached per tier).

        Raises ``MemoryNotFound`` for an unknown id and ``BlobError`` naming the page when a page image is
        missing or corrupt (``verify(repair=True)`` heals what can be healed).
        """
        for _ in range(_READ_ATTEMPTS - 1):
            try:
                return self._recall(memory_id, read=read)
            except _PageMoved:
                continue  # another process aged or redacted a page while it was read
        return self._recall(memory_id, read=read, last_try=True)

    def _recall(self, memory_id: int, *, read: bool, last_try: bool = False) -> Recall:
        with self._lock, self._session() as s:
            memory = self._memory(s, memory_id)
            spans = list(
                s.scalars(select(SpanRow).where(SpanRow.memory_id == memory_id).order_by(SpanRow.char_start))
            )
            pages = {
                p.id: p
                for p in s.scalars(select(PageRow).where(PageRow.id.in_([sp.page_id for sp in spans])))
            }
            tier = self._memory_tier(memory, pages)
            if memory.text is not None and (not read or not memory.paged):
                return Recall(id=memory.id, text=memory.text, tier=tier, source="retained", role=memory.role)
            parts = []
            for sp in spans:
                page = pages[sp.page_id]
                if page.side is None or page.blob is None:
                    continue  # forgotten (or lost): nothing left to read
                lines = self._page_lines(s, page, memory_id, last_try=last_try)
                parts.append(_assemble(sp, lines, memory.role))
            if not parts:
                return Recall(id=memory.id, text="", tier=tier, source=FORGOTTEN, role=memory.role)
            text = "".join(parts).strip()
            return Recall(id=memory.id, text=text, tier=tier, source=self.reader.name, role=memory.role)

    def _memory_tier(self, memory: MemoryRow, pages: Mapping[int, PageRow]) -> str:
        return _tier_of(memory.paged, [p.side for p in pages.values()])

    def _page_lines(
        self, s: Session, page: PageRow, memory_id: int, *, last_try: bool = False
    ) -> dict[int, str]:
        """Reader output for a page at its current tier, by line index; cached in SQL per tier, and only while
        the page still shows what was read (checked under the write lock: a concurrent redaction or move
        must not be cached over with the old pixels' text)."""
        assert page.side is not None and page.blob is not None
        cached = s.get(RecallRow, (page.id, page.side, self.reader.name))
        if cached is not None:
            return {int(k): v for k, v in cached.lines.items()}
        try:
            image = Image.open(io.BytesIO(self.blobs.get(page.blob)))
        except BlobError as e:
            if not last_try and self._page_blob(page.id) != page.blob:
                raise _PageMoved from None
            raise BlobError(
                f"cannot recall memory {memory_id}: page {page.id}: {e}; "
                "run verify(repair=True) to heal what can be healed"
            ) from None
        found = self.reader.read([image])[0]
        lines: dict[int, str] = {}
        if page.render_side == 0:  # a free-form page (PDF, image): all its text, in reading order
            lines = {0: "\n".join(t.text for t in found)}
        else:
            placed: dict[int, list[tuple[float, str]]] = {}
            for number, t in enumerate(found):
                if t.box is None:
                    index, x = number, 0.0
                else:
                    index, x = self.renderer.line_at((t.box[1] + t.box[3]) / 2, image.height), t.box[0]
                placed.setdefault(index, []).append((x, t.text))
            lines = {i: " ".join(text for _, text in sorted(v)) for i, v in placed.items()}
        with self._write() as w:
            now = w.s.get(PageRow, page.id)
            if now is not None and (now.blob, now.side) == (page.blob, page.side):
                w.s.merge(
                    RecallRow(
                        page_id=page.id,
                        side=page.side,
                        reader=self.reader.name,
                        lines={str(k): v for k, v in lines.items()},
                    )
                )
        return lines

    def _page_blob(self, page_id: int) -> str | None:
        """A page's blob as SQL has it now (None: deleted or forgotten)."""
        with self._session() as s:
            return s.scalar(select(PageRow.blob).where(PageRow.id == page_id))

    def _page_bytes(self, page_id: int, blob: str) -> bytes | None:
        """A page image's bytes, following the page if another process moves it meanwhile (None once it is
        deleted or forgotten); ``BlobError`` if its blob is really missing or corrupt."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                return self.blobs.get(blob)
            except BlobError:
                now = self._page_blob(page_id)
                if now is None:
                    return None
                if now == blob or attempt == _READ_ATTEMPTS - 1:
                    raise
                blob = now
        return None

    # -- context -------------------------------------------------------------------------------------------

    def build_context(
        self,
        query: str,
        *,
        budget_tokens: int,
        mode: str = "text",
        scope: str | None = None,
        k: int = 8,
        recent_share: float = 0.5,
        page_form: str = "vision",
    ) -> Context:
        """Recent raw turns plus memories retrieved for ``query``, packed into ``budget_tokens``.

        ``mode="text"``: retrieved memories are recalled as text. ``mode="image"``: their pages are attached
        as image parts at their current tier and cost DeepEncoder's vision tokens. ``mode="vision"`` (needs a
        DeepSeek-OCR model): their pages' stored vision tokens go straight into the decoder's input
        embeddings, see :class:`Context`. Recent turns (the text tier, newest first) take up to
        ``recent_share`` of the budget; retrieved memories fill the rest.

        ``page_form`` (vision mode) swaps each page's vision tokens for a text baseline of the same length
        (``"meanpool"``: its text's token embeddings mean-pooled to as many vectors; ``"truncate"``: its
        first that-many text tokens), for experiments; both need ``retain_text=True``.
        """
        if mode not in ("text", "image", "vision"):
            raise InvalidInput(f"mode must be 'text', 'image' or 'vision', got {_shown(mode)}")
        if not isinstance(budget_tokens, int) or isinstance(budget_tokens, bool) or budget_tokens < 1:
            raise InvalidInput(f"budget_tokens must be a positive int, got {_shown(budget_tokens)}")
        if (
            not isinstance(recent_share, (int, float))
            or isinstance(recent_share, bool)
            or not 0.0 <= recent_share <= 1.0
        ):
            raise InvalidInput(f"recent_share must be within [0, 1], got {_shown(recent_share)}")
        if page_form not in ("vision", "meanpool", "truncate"):
            raise InvalidInput(
                f"page_form must be 'vision', 'meanpool' or 'truncate', got {_shown(page_form)}"
            )
        if page_form != "vision" and mode != "vision":
            raise InvalidInput(
                f"page_form={_shown(page_form)} applies to mode='vision' only, not {_shown(mode)}"
            )
        if mode == "vision":
            return self._vision_context(query, budget_tokens, scope, k, recent_share, page_form)
        with self._lock:
            items: list[ContextItem] = []
            used = 0
            recent_rows = self._text_tier_turns(scope)
            recent: list[tuple[MemoryRow, str, int]] = []
            for m in recent_rows:
                line = f"{m.role}: {m.text}" if m.role else (m.text or "")
                cost = self.counter.count(line)
                if used + cost > budget_tokens * recent_share:
                    break
                recent.append((m, line, cost))
                used += cost
                items.append(
                    ContextItem(id=m.id, origin="recent", tier="text", tokens=cost, text_tokens=cost)
                )
            recent_ids = {m.id for m, _, _ in recent}
            retrieved_parts: list[dict[str, Any]] = []
            seen_pages: set[int] = set()
            for hit in self.search(query, k=k, scope=scope):
                if hit.id in recent_ids:
                    continue
                with self._session() as s:
                    m = self._memory(s, hit.id)
                    text_tokens = m.text_tokens
                if mode == "image" and hit.page_id is not None:
                    if hit.page_id in seen_pages:
                        continue
                    part, side, page_tokens = self._image_part(hit.page_id)
                    if part is None or side is None:
                        continue
                    cost = vision_tokens(side)
                    text_tokens = page_tokens  # the image carries its whole page, not just this memory
                    if used + cost > budget_tokens:
                        continue
                    seen_pages.add(hit.page_id)
                    retrieved_parts.append(part)
                else:
                    r = self.recall(hit.id)
                    if not r.text:
                        continue
                    block = f"[memory {hit.id}, {r.tier}] {r.role + ': ' if r.role else ''}{r.text}"
                    cost = self.counter.count(block)
                    if used + cost > budget_tokens:
                        continue
                    retrieved_parts.append({"type": "text", "text": block})
                used += cost
                items.append(
                    ContextItem(
                        id=hit.id,
                        origin="retrieved",
                        tier=hit.tier,
                        tokens=cost,
                        text_tokens=text_tokens,
                        score=hit.score,
                    )
                )
            parts: list[dict[str, Any]] = []
            if retrieved_parts:
                parts.append({"type": "text", "text": "Recalled memories:"})
                parts.extend(retrieved_parts)
            if recent:
                parts.append(
                    {
                        "type": "text",
                        "text": "Recent conversation:\n" + "\n".join(line for _, line, _ in reversed(recent)),
                    }
                )
            saved = max(0, sum(i.text_tokens for i in items) - used)
            return Context(
                mode=mode,
                parts=parts,
                items=items,
                budget_tokens=budget_tokens,
                used_tokens=used,
                saved_tokens=saved,
            )

    def recent_turns(self, scope: str, *, limit: int | None = None) -> list[Recall]:
        """The turns of ``scope`` still in the text tier, verbatim, oldest first (the newest ``limit``)."""
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise InvalidInput(f"limit must be None or a non-negative int, got {_shown(limit)}")
        with self._lock:
            rows = self._text_tier_turns(scope)[:limit]
            return [
                Recall(id=m.id, text=m.text or "", tier="text", source="retained", role=m.role)
                for m in reversed(rows)
            ]

    def _text_tier_turns(self, scope: str | None) -> list[MemoryRow]:
        """Turns still in the text tier and not expired, newest first (``scope`` checked to exist)."""
        with self._session() as s:
            if scope is not None:
                self._scope(s, scope)
            stmt = select(MemoryRow).where(
                MemoryRow.kind == "turn", MemoryRow.paged.is_(False), self._live(_now())
            )
            if scope is not None:
                stmt = stmt.where(MemoryRow.scope == scope)
            return list(s.scalars(stmt.order_by(MemoryRow.turn_index.desc(), MemoryRow.id.desc())))

    def page_text(self, page_id: int) -> str | None:
        """The text a page shows, rebuilt from its memories' retained text (None unless all of it was
        retained: with ``retain_text=False`` only the pixels know)."""
        if not _page_id_fits(page_id):
            return None
        with self._lock, self._session() as s:
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

    def _page_form(
        self, decoder: VisionContext, page_id: int, tokens: np.ndarray, form: str
    ) -> str | np.ndarray:
        """A page as the decoder will take it: its vision tokens, or a text baseline of the same length."""
        if form == "vision":
            return tokens
        text = self.page_text(page_id)
        if text is None:
            raise InvalidInput(
                f"page_form={form!r} needs the page's text: page {page_id} was stored with retain_text=False"
            )
        if form == "meanpool":
            from .backends.baselines import mean_pool

            return mean_pool(decoder.text_embeddings(text), tokens.shape[0])
        return decoder.truncate(text, tokens.shape[0])

    def _vision_context(
        self,
        query: str,
        budget_tokens: int,
        scope: str | None,
        k: int,
        recent_share: float,
        page_form: str = "vision",
    ) -> Context:
        """Vision mode: [BOS] [page tokens, "\\n"]... ["Recent conversation:\\n" + turns] [query + "\\n"]."""
        decoder = self.encoder
        if not isinstance(decoder, VisionContext):
            raise InvalidInput(
                "mode='vision' needs a DeepSeek-OCR-architecture model: open the store with "
                "model='optical-mini' (shipped), or model='deepseek-ocr' and model_dir=<checkpoint folder>"
            )
        with self._lock:
            question = f"{query}\n"
            used = 1 + decoder.count_text(question)  # BOS and the question always go in
            if used > budget_tokens:
                raise InvalidInput(
                    f"budget_tokens={budget_tokens} cannot hold even the query ({used} tokens)"
                )
            recent_rows = self._text_tier_turns(scope)
            items: list[ContextItem] = []
            header = "Recent conversation:\n"
            recent_cost = decoder.count_text(header) if recent_rows else 0
            lines: list[str] = []
            for m in recent_rows:
                line = f"{m.role}: {m.text}\n" if m.role else f"{m.text}\n"
                cost = decoder.count_text(line)
                if used + recent_cost + cost > budget_tokens * recent_share:
                    break
                lines.append(line)
                recent_cost += cost
                items.append(
                    ContextItem(id=m.id, origin="recent", tier="text", tokens=cost, text_tokens=cost)
                )
            if lines:
                used += recent_cost
            recent_ids = {i.id for i in items}
            pages: list[tuple[int, str | np.ndarray]] = []
            newline = decoder.count_text("\n")
            for hit in self.search(query, k=k, scope=scope):
                if hit.id in recent_ids or hit.page_id is None or hit.page_id in {p for p, _ in pages}:
                    continue
                tokens = self.vision_tokens(hit.page_id)
                if tokens is None:
                    self.sync_vision([hit.page_id])
                    tokens = self.vision_tokens(hit.page_id)
                if tokens is None:
                    continue  # forgotten: nothing left to look at
                form = self._page_form(decoder, hit.page_id, tokens, page_form)
                cost = (decoder.count_text(form) if isinstance(form, str) else form.shape[0]) + newline
                if used + cost > budget_tokens:
                    continue
                used += cost
                pages.append((hit.page_id, form))
                with self._session() as s:
                    page = s.get(PageRow, hit.page_id)
                    page_text = page.text_tokens if page is not None else 0
                items.append(
                    ContextItem(
                        id=hit.id,
                        origin="retrieved",
                        tier=hit.tier,
                        tokens=cost,
                        text_tokens=page_text,
                        score=hit.score,
                    )
                )
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
            )

    def answer(
        self, question: str, *, budget_tokens: int = 2048, scope: str | None = None, max_new_tokens: int = 512
    ) -> str:
        """Run the DeepSeek-OCR decoder over the vision context for ``question`` and return what it writes.

        DeepSeek-OCR's decoder was trained to transcribe and parse documents, not to chat: it reliably
        continues a page's text and follows its OCR prompts, but it is not an instruction-tuned answerer.
        Use this to look at what it makes of the retrieved pages; for answers, give ``build_context`` output
        to a chat model.
        """
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise InvalidInput(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        ctx = self.build_context(question, budget_tokens=budget_tokens, mode="vision", scope=scope)
        decoder = self.encoder
        assert isinstance(decoder, VisionContext)
        with self._lock:
            return decoder.complete(ctx.inputs_embeds, ctx.attention_mask, max_new_tokens=max_new_tokens)

    def _image_part(self, page_id: int) -> tuple[dict[str, Any] | None, int | None, int]:
        """A page as a chat image part, its side, and the text tokens it carries."""
        with self._session() as s:
            page = s.get(PageRow, page_id)
            if page is None or page.blob is None or page.side is None:
                return None, None, 0
            data = self._page_bytes(page_id, page.blob)
        if data is None:
            return None, None, 0
        url = "data:image/png;base64," + base64.b64encode(data).decode()
        return {"type": "image_url", "image_url": {"url": url}}, page.side, page.text_tokens

    def page_image(self, memory_id: int, *, page_id: int | None = None) -> list[Image.Image]:
        """The page images a memory is on, in reading order, at their current tier (empty if in the text tier
        or forgotten); with ``page_id`` (e.g. a hit's page), only that one of them."""
        with self._lock, self._session() as s:
            self._memory(s, memory_id)
            page_ids = list(
                s.scalars(
                    select(SpanRow.page_id).where(SpanRow.memory_id == memory_id).order_by(SpanRow.char_start)
                )
            )
            if page_id is not None:
                if page_id not in page_ids:
                    raise InvalidInput(f"page {_shown(page_id)} does not hold memory {memory_id}")
                page_ids = [page_id]
            blobs = {
                pid: blob
                for pid, blob in s.execute(select(PageRow.id, PageRow.blob).where(PageRow.id.in_(page_ids)))
            }
        found = [self._page_bytes(i, b) for i, b in ((i, blobs.get(i)) for i in page_ids) if b]
        return [Image.open(io.BytesIO(data)) for data in found if data is not None]

    # -- stats / verify ------------------------------------------------------------------------------------

    def stats(self) -> Stats:
        """Counts, tokens and bytes per tier: the forgetting curve's cost side."""
        with self._lock, self._session() as s:
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
                    tier=_tier_name(side),
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

    def verify(self, *, repair: bool = False, orphan_grace_s: float = ORPHAN_GRACE_S) -> VerifyReport:
        """Check every page blob against its hash, look for orphan blobs, and check the index against SQL.

        With ``repair=True``: a damaged page whose memories all retain their text is re-rendered (and
        downsampled to its tier); one that cannot be healed is marked lost; orphan blobs are deleted; the
        index is rebuilt if it disagrees with SQL.

        An unreferenced blob is an orphan only once it is ``orphan_grace_s`` old: a PostgreSQL client that
        died with its COMMIT already sent may still commit a row that refers to it (its blob lock died with
        it). With SQLite, where a dead writer never commits, 0 is safe.
        """
        with self._lock:
            rerendered: list[int] = []
            lost: list[int] = []
            with self._session() as s:
                pages = list(
                    s.execute(select(PageRow.id, PageRow.blob).where(PageRow.blob.is_not(None))).all()
                )
            suspects = [page_id for page_id, blob in pages if blob and self.blobs.check(blob)]
            missing, corrupt = self._damaged_pages(suspects)
            with self.blobs.sweeping():  # no writer is between writing a blob and committing its row
                with self._session() as s:
                    referenced = {b for b in s.scalars(select(PageRow.blob).where(PageRow.blob.is_not(None)))}
                    vision = list(s.execute(select(VisionRow.page_id, VisionRow.blob)).all())
                referenced |= {blob for _, blob in vision}
                orphans = [
                    n
                    for n in self.blobs.names()
                    if n not in referenced and self.blobs.age_s(n) >= orphan_grace_s
                ]
                if repair:
                    for name in orphans:
                        self.blobs.delete(name)
            damaged_vision = [page_id for page_id, blob in vision if self.blobs.check(blob)]
            index_ok = self._index_matches_sql()
            if repair:
                if damaged_vision:  # tokens are derived data: drop them, the next sync re-encodes
                    with self._write() as w:
                        stale = self._drop_vision(w.s, damaged_vision)
                    self._sweep(stale)
                for page_id in missing + corrupt:
                    healed = self._heal_page(page_id)
                    if healed is not None:  # None: another process deleted or healed it meanwhile
                        (rerendered if healed else lost).append(page_id)
                if not index_ok:
                    self.rebuild_index()
            return VerifyReport(
                pages_checked=len(pages),
                missing_blobs=missing,
                corrupt_blobs=corrupt,
                orphan_blobs=orphans,
                damaged_vision=damaged_vision,
                rerendered=rerendered,
                marked_lost=lost,
                index_rebuilt=repair and not index_ok,
                repaired=repair,
            )

    def _damaged_pages(self, suspects: list[int]) -> tuple[list[int], list[int]]:
        """Of pages whose blob failed a check, those whose blob is still missing or corrupt once the write
        lock is held (another process may have moved a page, and swept its old blob, since it was listed)."""
        missing: list[int] = []
        corrupt: list[int] = []
        if not suspects:
            return missing, corrupt
        with self._write() as w:
            for page_id in suspects:
                page = w.s.get(PageRow, page_id)
                problem = self.blobs.check(page.blob) if page is not None and page.blob else None
                if problem == "missing":
                    missing.append(page_id)
                elif problem == "corrupt":
                    corrupt.append(page_id)
        return missing, corrupt

    def _index_matches_sql(self) -> bool:
        """Whether the index, caught up, holds exactly SQL's vector ids, each under its own scope (checked
        under the write lock, so no writer moves SQL meanwhile)."""
        with self._write() as w:
            self._sync_index()
            in_sql: dict[str, set[int]] = {}
            for scope, vid in w.s.execute(select(EmbeddingRow.scope, EmbeddingRow.id)):
                in_sql.setdefault(scope, set()).add(vid)
            in_index = {scope: ids for scope, ids in self.index.ids().items() if ids}
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

    def _heal_page(self, page_id: int) -> bool | None:
        """Re-render a damaged page (True), or mark it lost (False); None if, once the write lock is held,
        it is gone or no longer damaged (another process deleted, moved or healed it)."""
        stale: list[str] = []
        try:
            with self._write() as w:
                s = w.s
                page = s.get(PageRow, page_id)
                if page is None or page.blob is None or self.blobs.check(page.blob) is None:
                    return None
                stale += self._drop_vision(s, [page_id])  # tokens of damaged pixels are not to be trusted
                spans = list(
                    s.scalars(select(SpanRow).where(SpanRow.page_id == page_id).order_by(SpanRow.line_start))
                )
                memories = [s.get(MemoryRow, sp.memory_id) for sp in spans]
                if page.render_side == 0 or not spans or any(m is None or m.text is None for m in memories):
                    page.lost, page.side, page.blob, page.blob_bytes = True, None, None, 0
                    return False
                items = [
                    (m.role if sp.char_start == 0 else None, m.text[sp.char_start : sp.char_end])  # type: ignore[union-attr,index]
                    for sp, m in zip(spans, memories, strict=True)
                ]
                pages, _ = self.renderer.layout(items)
                image = self.renderer.draw(pages[0])
                if page.side is not None and page.side != image.width:
                    image = image.resize((page.side, page.side), Image.Resampling.LANCZOS)
                page.blob = self.blobs.put(_png(image))
                page.blob_bytes = self.blobs.size(page.blob)
                s.execute(delete(RecallRow).where(RecallRow.page_id == page_id))
                return True
        finally:
            self._sweep(stale)  # after the commit: the tokens' blobs are unreferenced by then


def _matches(hit: Hit, wanted: Mapping[str, Any]) -> bool:
    for key, value in wanted.items():
        if key in ("kind", "role", "tier"):
            if getattr(hit, key) != value:
                return False
        elif key not in hit.metadata or not _json_equal(hit.metadata[key], value):
            return False
    return True


def _json_equal(found: object, wanted: object) -> bool:
    """Equality as ``memories(filters=...)`` compares in SQL: typed (the string "1" is not the number 1,
    true is not 1, null matches only a key that is there and null), numbers by value (1 matches 1.0)."""
    if isinstance(found, bool) or isinstance(wanted, bool):
        return isinstance(found, bool) and isinstance(wanted, bool) and found == wanted
    if isinstance(found, (int, float)) and isinstance(wanted, (int, float)):
        return found == wanted
    return type(found) is type(wanted) and found == wanted


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


def _check_file(path: object) -> Path:
    """``path`` as the Path of a regular file, or ``InvalidInput`` saying why not (missing, a folder, a
    symlink loop, a name too long, a NUL in it, not a path at all)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInput(f"path must be a str or os.PathLike, got {type(path).__name__} {_shown(path)}")
    try:
        file = Path(path)  # a PathLike giving bytes raises TypeError
        file.stat()  # follows symlinks: a loop raises here
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {str(path)[:300]!r}") from None
    except (OSError, ValueError, TypeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise InvalidInput(f"cannot read path {str(path)[:300]!r}: {reason}") from None
    if not file.is_file():
        raise InvalidInput(f"path {str(file)[:300]!r} is not a regular file (a folder, a device or a pipe)")
    return file


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


def open_store(path: str | os.PathLike[str], **options: Any) -> OpticalMemory:
    """``optical_memory.open``: open (creating if needed) the store in folder ``path``.

    Options are ``StoreConfig`` fields (``retain_text=True``, ``database_url=...``,
    ``render=RenderConfig(...)``, ``aging=AgingPolicy(...)``, ``reader="tesseract"``,
    ``model="optical-mini"``, ``model="deepseek-ocr", model_dir=...``), ``config=StoreConfig(...)`` whole,
    or backend objects
    ``embedder=``, ``reader=``, ``counter=`` implementing the protocols in ``optical_memory.protocols``.
    """
    # a backend named by a string ("tesseract") is a config field; an object is used as it is
    backends = {
        key: options.pop(key)
        for key in ("embedder", "reader", "counter")
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
        raise InvalidInput(f"path must be a folder path, got {type(path).__name__} {_shown(path)}")
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
