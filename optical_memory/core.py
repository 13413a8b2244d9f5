"""The shared core every room works through: the store folder and its LOCK, the SQL engines and sessions,
the write transaction (the store's write lock, generations and the index log), the blob folder, the FAISS
index and its catch-up from SQL, and the backends (embedder, counter, renderer; reader and encoder made on
first use).

The consistency rule lives here: every write is one SQL transaction under the store's write lock
(:meth:`Core.write`); its index changes are applied after it commits; the index at generation g holds
exactly the vectors SQL held at g, and every search first brings it to the generation SQL is at
(:meth:`Core.sync_index`). Blobs a transaction releases are swept after it commits (:meth:`Core.sweep`).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from . import db, lexical
from .blobs import BlobStore
from .config import StoreConfig
from .db import EmbeddingRow, MemoryRow, PageRow, ScopeRow, VisionRow
from .errors import InvalidInput, MemoryNotFound, ScopeNotFound, StoreBusy, StoreLocked
from .index import VectorIndex
from .protocols import Embedder, Encoder, Reader, TokenCounter
from .render import Renderer
from .validation import SQL_INT, check_scope, shown

log = logging.getLogger(__name__)

PNG_COMPRESS_LEVEL = 3  # zlib level: 6 (Pillow's default) is ~1.5x slower to write a text page
FORGOTTEN = "forgotten"
IN_BATCH = 500  # ids per SQL IN list: well under SQLite's and PostgreSQL's bound-parameter limits

# backend name -> the model whose checkpoint folder it loads (vLLM runs DeepSeek-OCR's)
_CHECKPOINT_OF = {"deepseek-ocr": "deepseek-ocr", "vllm": "deepseek-ocr", "optical-mini": "optical-mini"}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def tier_name(side: int | None) -> str:
    return FORGOTTEN if side is None else str(side)


def tier_of(paged: bool, sides: Sequence[int | None]) -> str:
    """A memory's tier: "text" until paged; forgotten if any of its pages is; else its smallest page side."""
    if not paged:
        return "text"
    if not sides or any(side is None for side in sides):
        return FORGOTTEN
    return str(min(side for side in sides if side is not None))


def live(when: float) -> ColumnElement[bool]:
    """Memories not expired at ``when``."""
    return or_(MemoryRow.expires_at.is_(None), MemoryRow.expires_at > when)


@dataclass
class Write:
    """One write transaction: its session, the generation it locked, and what it changes in the index."""

    s: Session
    base: int  # the store generation when the lock was taken; this transaction commits base + 1
    salt: bytes  # the lexical index's term key (``optical_memory.lexical``)
    added: list[tuple[str, list[int], np.ndarray]] = field(default_factory=list)
    removed: dict[str, list[int]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    @property
    def generation(self) -> int:
        return self.base + 1

    @property
    def changes_index(self) -> bool:
        return bool(self.added or self.removed or self.dropped)


class Core:
    """What every room shares. Opening one takes the folder's LOCK shared, creates or migrates the schema,
    checks the render config and catches the index up with SQL; anything that fails releases it all."""

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
        self.lock = threading.RLock()  # one lock around every public method of the store
        # page id -> the lock of the thread reading that page whole outside ``lock`` (reading): a second
        # thread wanting the page waits for that read and finds it cached, instead of reading it again
        self.page_reads: dict[int, threading.Lock] = {}
        # (reader, tier side, page sides a context's target sees across and down) -> whether a page still
        # reads there (context)
        self.legible: dict[tuple[str, int, int, int], bool] = {}
        self._in_write = False  # inside write() (the lock makes it one thread's at a time)
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
            # made on first use: a process that only searches loads neither cl100k nor the fonts
            self._counter = counter
            self._make_counter = make_counter
            self._renderer: Renderer | None = None
            self.blobs = BlobStore(self.path / "blobs")
            url = self.config.database_url or f"sqlite:///{self.path / 'memory.db'}"
            self.engine, self._write_engine = db.make_engines(url)
            self._migrate_or_create()
            self.sessions = sessionmaker(self.engine, expire_on_commit=False)
            self._writes = sessionmaker(self._write_engine, expire_on_commit=False)
            with self.sessions() as s:
                self.lexical_salt = db.lexical_salt(s)
            self._check_render_config()
            self._index_path = self.path / "index.faiss"
            self.index = self._open_index()
        except BaseException:
            self._release()
            raise
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            self._reader = self._make_reader()
        return self._reader

    @property
    def counter(self) -> TokenCounter:
        if self._counter is None:
            self._counter = self._make_counter()
        return self._counter

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer(self.config.render)
        return self._renderer

    @property
    def encoder(self) -> Encoder | None:
        if self._encoder is None:
            self._encoder = self._make_encoder()
        return self._encoder

    def close(self) -> None:
        with self.lock:
            if getattr(self, "closed", True):
                return
            self.flush()
            self.closed = True
            self._release()

    def _release(self) -> None:
        if hasattr(self, "engine"):
            self.engine.dispose()
            self._write_engine.dispose()
        fcntl.flock(self._lockfile, fcntl.LOCK_UN)
        self._lockfile.close()

    def _migrate_or_create(self) -> None:
        """Create the schema, or migrate an older one; a migration waits for no one: it needs every other
        process to have closed the store, and says so when one has not."""
        found = db.schema_version(self._write_engine)
        if found is None or found == db.SCHEMA_VERSION:
            db.prepare(self._write_engine, lexical_backfill=lexical.backfill)  # creates, or checks
            return
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLocked(
                f"store {str(self.path)!r} has schema version {found} and needs migrating to "
                f"{db.SCHEMA_VERSION}, but another process has it open: close it there first"
            ) from None
        try:
            db.prepare(self._write_engine, lexical_backfill=lexical.backfill)
        finally:
            fcntl.flock(self._lockfile, fcntl.LOCK_SH)

    def flush(self) -> None:
        with self.lock:
            self.index.save(self._index_path)

    def session(self) -> Session:
        self.check_open()
        return self.sessions()

    def check_open(self) -> None:
        if getattr(self, "closed", False):
            raise InvalidInput(f"store {str(self.path)!r} is closed")

    def _check_render_config(self) -> None:
        """Pages' line geometry depends on the render config: refuse to mix two in one store."""
        wanted = json.dumps(self.config.render.__dict__, sort_keys=True, default=list)
        with self.write() as w:
            s = w.s
            row = s.get(db.Meta, "render_config")
            if row is None:
                s.add(db.Meta(key="render_config", value=wanted))
            elif row.value != wanted:
                raise InvalidInput(
                    f"store {str(self.path)!r} was rendered with RenderConfig {row.value}, "
                    f"but it was opened with {wanted}: open it with the same render settings"
                )

    # -- the write transaction -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[Write]:
        """One write transaction under the store's write lock; its index changes are applied after commit.

        Blobs a transaction writes are in the blob folder before its rows commit; ``sweep`` and
        ``verify`` delete unreferenced blobs only under the blob lock, which writers hold shared, so a
        blob is never swept between its write and the commit of the row that refers to it.
        """
        self.check_open()
        with self.lock:
            # one at a time per thread: a nested one would wait forever on the outer one's locks
            assert not self._in_write, "nested write transaction"
            self._in_write = True
            try:
                with self.blobs.writing(), self._lock_errors(), self._writes() as s, s.begin():
                    w = Write(s, db.lock_generation(s), self.lexical_salt)
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

    def sweep(self, names: Iterable[str]) -> None:
        """Delete blobs no page refers to any more (after the transaction that released them committed)."""
        names = {n for n in names if n}
        if not names:
            return
        with self.blobs.sweeping(), self.session() as s:
            for name in names:
                used = s.scalar(select(func.count(PageRow.id)).where(PageRow.blob == name)) or s.scalar(
                    select(func.count(VisionRow.page_id)).where(VisionRow.blob == name)
                )
                if not used:
                    self.blobs.delete(name)

    def drop_vision(self, s: Session, page_ids: Iterable[int]) -> list[str]:
        """Delete the vision rows of ``page_ids`` (in the caller's transaction); returns their blob names."""
        ids = list(page_ids)
        blobs = list(s.scalars(select(VisionRow.blob).where(VisionRow.page_id.in_(ids))))
        if blobs:  # a bulk statement, run now: never ordered after the deletion of its page
            s.execute(delete(VisionRow).where(VisionRow.page_id.in_(ids)))
        return blobs

    # -- rows every room looks up ----------------------------------------------------------------------------

    def memory(self, s: Session, memory_id: object) -> MemoryRow:
        if not isinstance(memory_id, int) or isinstance(memory_id, bool):
            kind = type(memory_id).__name__
            raise InvalidInput(f"memory id must be an int, got {kind} {shown(memory_id)}")
        row = s.get(MemoryRow, memory_id) if -SQL_INT <= memory_id < SQL_INT else None
        if row is None:
            raise MemoryNotFound(f"no memory with id {shown(memory_id)} in {str(self.path)!r}")
        return row

    def scope(self, s: Session, scope: object) -> ScopeRow:
        check_scope(scope)
        row = s.get(ScopeRow, scope)
        if row is None:
            raise ScopeNotFound(f"no memories were ever stored in scope {scope!r}")
        return row

    # -- the index -------------------------------------------------------------------------------------------

    def _apply(self, w: Write) -> None:
        """Bring the index to generation ``w.generation`` after ``w`` committed: directly from ``w`` when the
        index was current, else (another process wrote in between) by catching up from SQL."""
        if self.index.generation != w.base:
            self.sync_index()
            return
        for scope in w.dropped:
            self.index.drop_scope(scope)
        for scope, ids in w.removed.items():
            self.index.remove(scope, ids)
        for scope, ids, vectors in w.added:
            self.index.add(scope, ids, vectors)
        self.index.generation = w.generation

    def sync_index(self) -> None:
        """Catch the index up with every write committed to SQL, by any process: the log's removals of the
        generations it missed, then the vectors those generations added. Rebuilt from SQL if the log no
        longer reaches back that far (or the index is ahead of SQL: a database restored from a backup).

        This is the consistency rule: the index at generation g holds exactly the vectors SQL held at g;
        every search first brings it to the generation SQL is at when the search starts."""
        with self.lock, self.sessions() as s:
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

    def _open_index(self) -> VectorIndex:
        """The saved index caught up with SQL, or one rebuilt from SQL if the file is missing or damaged,
        or holds other vectors than SQL does (checked by count when no writer moved the store meanwhile)."""
        self.index = VectorIndex.load(self._index_path, dim=self.embedder.dim) or VectorIndex(
            self.embedder.dim,
            generation=-1,  # -1: older than any floor, so the first sync rebuilds
        )
        self.sync_index()
        with self.sessions() as s:
            count = s.scalar(select(func.count(EmbeddingRow.id))) or 0
            unmoved = db.generation(s) == self.index.generation
        if unmoved and len(self.index) != count:
            log.warning(
                "index file %s holds %d vectors, SQL %d: rebuilding", self._index_path, len(self.index), count
            )
            self.rebuild_index()
        return self.index

    def rebuild_index(self) -> VectorIndex:
        with self.lock, self.sessions() as s:
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
            self.index.replace(index)  # in place: the store's facade holds this object
            return self.index
