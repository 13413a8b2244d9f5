"""SQL persistence: SQLAlchemy 2.0 typed models, schema versioning, engine set-up.

SQLite (a file inside the store folder, WAL) by default; any SQLAlchemy URL works (PostgreSQL tested).
The FAISS index is a cache of the ``embeddings`` table; page pixels live in the blob folder.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .errors import SchemaVersionError

log = logging.getLogger(__name__)

# 2: the vision table (DeepEncoder tokens per page); 3: per-memory expiry (ttl); 4: the index change log
# (``embeddings.generation`` and the ``index_log`` table), so that several processes can share one store;
# 5: the lexical index (``optical_memory.lexical``) and its salt.
SCHEMA_VERSION = 5


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the store: ``schema_version``, ``index_generation``, ``index_log_floor``,
    ``render_config``. The ``index_generation`` row doubles as the store's write lock on PostgreSQL."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class ScopeRow(Base):
    """A tenant/session namespace. ``turns`` counts the turns ever added: turn distance is measured in it."""

    __tablename__ = "scopes"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    turns: Mapped[int] = mapped_column(Integer, default=0)


class MemoryRow(Base):
    __tablename__ = "memories"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012  (ids are never reused)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(ForeignKey("scopes.name", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "turn" | "document"
    role: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)  # the caller's timestamp (epoch seconds)
    turn_index: Mapped[int] = mapped_column(Integer)  # scope's turn count once this memory was added
    paged: Mapped[bool] = mapped_column(Boolean, default=False)  # False: still in the text tier
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    text: Mapped[str | None] = mapped_column(Text)  # dropped once on a closed page, unless retain_text
    text_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the normalised text
    n_chars: Mapped[int] = mapped_column(Integer)
    text_tokens: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # A memory with a time to live: its pages walk the ladder over ``ttl_s`` seconds, and ``age`` deletes it
    # once ``expires_at`` (epoch seconds) has passed; both None for memories that never expire.
    expires_at: Mapped[float | None] = mapped_column(Float, index=True)
    ttl_s: Mapped[float | None] = mapped_column(Float)


class PageRow(Base):
    __tablename__ = "pages"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012  (ids are never reused)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(ForeignKey("scopes.name", ondelete="CASCADE"), index=True)
    render_side: Mapped[int] = mapped_column(Integer)  # side it was drawn at: the line geometry's frame
    side: Mapped[int | None] = mapped_column(Integer)  # current tier side; None once forgotten
    blob: Mapped[str | None] = mapped_column(String(80))  # content-addressed PNG name
    blob_bytes: Mapped[int] = mapped_column(Integer, default=0)
    is_open: Mapped[bool] = mapped_column(Boolean, default=False)  # last page of a scope, still filling
    lost: Mapped[bool] = mapped_column(Boolean, default=False)  # blob gone and could not be re-rendered
    created_at: Mapped[float] = mapped_column(Float)  # newest timestamp among its memories
    last_turn_index: Mapped[int] = mapped_column(Integer)  # newest turn_index among its memories
    text_tokens: Mapped[int] = mapped_column(Integer, default=0)


class SpanRow(Base):
    """Lines ``[line_start, line_end)`` of a page show chars ``[char_start, char_end)`` of a memory."""

    __tablename__ = "spans"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012  (ids are never reused)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    memory_id: Mapped[int] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"), index=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), index=True)
    line_start: Mapped[int] = mapped_column(Integer)
    line_end: Mapped[int] = mapped_column(Integer)
    char_start: Mapped[int] = mapped_column(Integer)
    char_end: Mapped[int] = mapped_column(Integer)
    # One char per line: how it joins the next line of the memory: "s" space, "h" nothing, "n" newline.
    joins: Mapped[str] = mapped_column(Text)
    label_len: Mapped[int] = mapped_column(Integer, default=0)


class EmbeddingRow(Base):
    """A gist vector of one chunk of a memory. Its id is the vector's id in the FAISS index."""

    __tablename__ = "embeddings"
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012  (ids are never reused)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    memory_id: Mapped[int] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(255), index=True)
    char_start: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, unit norm
    # The index generation whose transaction added this vector (0: added before schema 4). An index at
    # generation g holds exactly the vectors with generation <= g that were not removed by then.
    generation: Mapped[int] = mapped_column(Integer, default=0, index=True)


class IndexLogRow(Base):
    """What a generation removed from the index: vector ids per scope, and scopes dropped whole. Scopes
    are named by :func:`scope_key`, not by name: a deleted scope's name (often a user's id) is not kept.

    Additions need no log (the rows carry their generation); removals do, since their rows are gone. A
    process whose index is at generation g catches up by applying the log of (g, head] and then adding the
    rows of (g, head]. Entries older than ``meta.index_log_floor`` are pruned: an index older than that is
    rebuilt from SQL instead.
    """

    __tablename__ = "index_log"
    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    removed: Mapped[dict[str, list[int]]] = mapped_column(JSON, default=dict)  # {scope key: [vector ids]}
    dropped: Mapped[list[str]] = mapped_column(JSON, default=list)  # keys of scopes deleted whole


class RecallRow(Base):
    """Reader output for one page at one tier, per line: the recall cache. Dropped when the tier changes."""

    __tablename__ = "recalls"
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), primary_key=True)
    side: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader: Mapped[str] = mapped_column(String(64), primary_key=True)
    lines: Mapped[dict[str, str]] = mapped_column(JSON)  # {line index: text}


class VisionRow(Base):
    """A page's vision tokens from the configured encoder, at the tier it is in now: a float16 ``.npy`` blob
    of (positions, dim). Valid while ``page_blob`` is the page's image; dropped when the page ages, is
    redacted or forgotten, and made again by the store's next vision sync."""

    __tablename__ = "vision"
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), primary_key=True)
    encoder: Mapped[str] = mapped_column(String(64))
    page_blob: Mapped[str] = mapped_column(String(80))  # the page image these tokens were encoded from
    blob: Mapped[str] = mapped_column(String(80))  # content-addressed .npy name
    positions: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)


Index("ix_memories_scope_paged", MemoryRow.scope, MemoryRow.paged)


def make_engines(url: str) -> tuple[Engine, Engine]:
    """Two engines for ``url``: one for reads, one for write transactions.

    SQLite (WAL, foreign keys, a busy timeout) allows one writer at a time; its write engine opens every
    transaction with ``BEGIN IMMEDIATE``, so a writer takes the lock before it reads anything and never
    fails later on a snapshot another writer made stale. Readers never wait for writers. Other databases
    share one engine; their writers serialise on :func:`lock_generation`.
    """
    if not url.startswith("sqlite"):
        engine = create_engine(url, pool_pre_ping=True)
        return engine, engine

    def pragmas(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            _wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across process crashes
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA secure_delete=ON")  # deleted memories are zeroed, not left in free pages
            cursor.execute(LEXICAL_VOCAB_DDL)
            cursor.close()

    reads = create_engine(url, connect_args={"timeout": WRITE_LOCK_WAIT_S})
    pragmas(reads)
    writes = create_engine(url, connect_args={"timeout": WRITE_LOCK_WAIT_S, "isolation_level": None})
    pragmas(writes)

    @event.listens_for(writes, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return reads, writes


def _wal(cursor: Any) -> None:
    """Put the database in WAL mode (kept in the file: a no-op once it is). While another process is
    truncating the log (``scrub_wal``), SQLite can answer a new connection's pragma "database is locked" at
    once, without waiting on its busy timeout (seen in CI under the stress test): retry for as long as that
    timeout would have waited."""
    deadline = time.monotonic() + WRITE_LOCK_WAIT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def scrub_wal(engine: Engine) -> None:
    """After a deletion on SQLite: copy the write-ahead log into the database and truncate it, so the
    deleted rows' old page images do not linger in the log file. Best effort: it waits at most 100 ms for
    other processes' readers and otherwise leaves it to SQLite's next automatic checkpoint."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA busy_timeout=100")
        try:
            busy = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").scalar()
        finally:
            connection.exec_driver_sql(f"PRAGMA busy_timeout={int(WRITE_LOCK_WAIT_S * 1000)}")
    if busy:
        log.debug("write-ahead log not truncated: another process is reading")


# How long a writer waits for another process's write transaction (SQLite's busy timeout; PostgreSQL's
# lock_timeout on the store's write lock) before it gives up with StoreBusy.
WRITE_LOCK_WAIT_S = 30.0


def _add_vision_table(session: Session) -> None:
    """1 -> 2: the ``vision`` table. ``create_all`` (run first) has made it; nothing else changes."""
    assert inspect(session.connection()).has_table(VisionRow.__tablename__)


def _add_expiry_columns(session: Session) -> None:
    """2 -> 3: ``memories.expires_at`` (indexed) and ``memories.ttl_s``, NULL (never expires) in old rows."""
    connection = session.connection()
    table = Base.metadata.tables[MemoryRow.__tablename__]
    have = {c["name"] for c in inspect(connection).get_columns(table.name)}
    for column in (table.c.expires_at, table.c.ttl_s):
        if column.name not in have:
            kind = column.type.compile(dialect=connection.dialect)
            connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
    for index in table.indexes:
        if "expires_at" in index.columns:
            index.create(connection, checkfirst=True)


def _add_index_log(session: Session) -> None:
    """3 -> 4: ``embeddings.generation`` (0 in old rows: all of them are in any saved index's past) and the
    ``index_log`` table, which ``create_all`` has made."""
    connection = session.connection()
    table = Base.metadata.tables[EmbeddingRow.__tablename__]
    if "generation" not in {c["name"] for c in inspect(connection).get_columns(table.name)}:
        connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN generation INTEGER NOT NULL DEFAULT 0"))
    for index in table.indexes:
        if "generation" in index.columns:
            index.create(connection, checkfirst=True)


# -- the lexical index's table (``optical_memory.lexical`` writes and searches it) ---------------------------

LEXICAL_TABLE = "lexical"
LEXICAL_SALT = "lexical_salt"  # meta key: the hex key its term hashes are made with
LEXICAL_VOCAB = "lexical_vocab"  # SQLite: each term's row count, read from the FTS5 index (a temp table)
LEXICAL_VOCAB_DDL = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{LEXICAL_VOCAB} USING fts5vocab(main, {LEXICAL_TABLE}, 'row')"
)


def create_lexical(connection: Connection) -> None:
    """Create the lexical table (idempotent): FTS5 on SQLite (its row id is the embedding's id; no foreign
    keys, so rows are deleted by hand), a ``tsvector`` table with a GIN index on PostgreSQL (cascading from
    the embedding). Other databases get none, and search there is dense only."""
    t = LEXICAL_TABLE
    if connection.dialect.name == "sqlite":
        ddl = f"CREATE VIRTUAL TABLE IF NOT EXISTS {t} USING fts5(scope, terms, tokenize = 'ascii')"
        connection.execute(text(ddl))
    elif connection.dialect.name == "postgresql":
        connection.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {t} ("
                "id BIGINT PRIMARY KEY REFERENCES embeddings(id) ON DELETE CASCADE, "
                "scope VARCHAR(32) NOT NULL, n_terms INTEGER NOT NULL, terms TSVECTOR NOT NULL)"
            )
        )
        connection.execute(text(f"CREATE INDEX IF NOT EXISTS ix_{t}_scope ON {t} (scope, n_terms)"))
        connection.execute(text(f"CREATE INDEX IF NOT EXISTS ix_{t}_terms ON {t} USING GIN (terms)"))


def ensure_lexical_salt(session: Session) -> None:
    if session.get(Meta, LEXICAL_SALT) is None:
        session.add(Meta(key=LEXICAL_SALT, value=secrets.token_hex(16)))


def lexical_salt(session: Session) -> bytes:
    row = session.get(Meta, LEXICAL_SALT)
    assert row is not None, "stores of schema 5 and later have a lexical salt"
    return bytes.fromhex(row.value)


def _add_lexical_index(session: Session) -> None:
    """4 -> 5: the lexical index, filled by the caller's ``backfill`` from the text SQL still holds
    (memories whose text was dropped with their closed page keep only their vectors: nothing readable is
    left to index)."""
    create_lexical(session.connection())
    ensure_lexical_salt(session)
    backfill = session.info.get("lexical_backfill")
    if backfill is not None:
        indexed, skipped = backfill(session)
        log.info(
            "lexical index: %d chunks indexed, %d memories without text left dense-only", indexed, skipped
        )


# Migration steps: MIGRATIONS[v] upgrades a store at schema version v to v + 1.
MIGRATIONS: dict[int, Any] = {
    1: _add_vision_table,
    2: _add_expiry_columns,
    3: _add_index_log,
    4: _add_lexical_index,
}


def schema_version(engine: Engine) -> int | None:
    """The store's schema version, or None for an empty database."""
    if not inspect(engine).has_table(Meta.__tablename__):
        return None
    with Session(engine) as session:
        row = session.get(Meta, "schema_version")
    return None if row is None else _version(row.value, engine)


def _version(value: str, engine: Engine) -> int:
    try:
        found = int(value)
    except ValueError:
        raise SchemaVersionError(f"unreadable schema_version {value!r} in {engine.url!r}") from None
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"this store has schema version {found}, newer than this library's {SCHEMA_VERSION}: "
            "upgrade optical-memory to open it"
        )
    return found


def prepare(engine: Engine, *, lexical_backfill: Callable[[Session], tuple[int, int]] | None = None) -> None:
    """Create or upgrade the schema in one write transaction (two processes creating one store at once
    take turns); refuse a store written by a newer version. ``lexical_backfill`` indexes the text of a
    store from before the lexical index (``optical_memory.lexical.backfill``)."""
    with Session(engine, info={"lexical_backfill": lexical_backfill}) as session, session.begin():
        if engine.dialect.name == "postgresql":  # DDL takes no row lock: serialise creators explicitly
            session.execute(text("SELECT pg_advisory_xact_lock(7340416)"))
        Base.metadata.create_all(session.connection())
        row = session.get(Meta, "schema_version")
        if row is None:
            create_lexical(session.connection())
            ensure_lexical_salt(session)
            session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            session.add(Meta(key="index_generation", value="0"))
            session.add(Meta(key="index_log_floor", value="0"))
            return
        found = _version(row.value, engine)
        while found < SCHEMA_VERSION:
            log.info("migrating store schema %d -> %d", found, found + 1)
            MIGRATIONS[found](session)
            found += 1
        row.value = str(found)
        if session.get(Meta, "index_log_floor") is None:  # before schema 4 there was no log: it starts now
            session.add(Meta(key="index_log_floor", value=str(generation(session))))


def lock_generation(session: Session) -> int:
    """Take the store's write lock in the caller's transaction and return the current generation.

    Every write transaction calls this first, so writers queue on one row (SQLite's ``BEGIN IMMEDIATE``
    has already serialised them) and generations are handed out in commit order. On PostgreSQL a writer
    waits at most ``WRITE_LOCK_WAIT_S`` for it."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = '{int(WRITE_LOCK_WAIT_S * 1000)}ms'"))
    row = session.execute(select(Meta.value).where(Meta.key == "index_generation").with_for_update())
    return int(row.scalar_one())


def commit_generation(
    session: Session, new: int, *, removed: dict[str, list[int]], dropped: list[str]
) -> None:
    """Record generation ``new`` (the locked one plus one) and what it removed from the index."""
    session.execute(update(Meta).where(Meta.key == "index_generation").values(value=str(new)))
    if removed or dropped:
        keyed = {scope_key(scope): ids for scope, ids in removed.items()}
        session.add(IndexLogRow(generation=new, removed=keyed, dropped=[scope_key(s) for s in dropped]))
    if new % LOG_PRUNE_EVERY == 0 and new > LOG_KEEP:
        floor = new - LOG_KEEP
        session.execute(delete(IndexLogRow).where(IndexLogRow.generation <= floor))
        session.execute(update(Meta).where(Meta.key == "index_log_floor").values(value=str(floor)))


def scope_key(scope: str) -> str:
    """How the index log names a scope: enough of its sha256 that two scopes never share a key."""
    return hashlib.sha256(scope.encode()).hexdigest()[:32]


LOG_KEEP = 100_000  # generations of index log kept: an index further behind is rebuilt from SQL
LOG_PRUNE_EVERY = 1_000


def generation(session: Session) -> int:
    return int(session.execute(select(Meta.value).where(Meta.key == "index_generation")).scalar_one())


def log_floor(session: Session) -> int:
    return int(session.execute(select(Meta.value).where(Meta.key == "index_log_floor")).scalar_one())
