"""SQL persistence: SQLAlchemy 2.0 typed models, schema versioning, engine set-up.

SQLite (a file inside the store folder, WAL) by default; any SQLAlchemy URL works (PostgreSQL tested).
The FAISS index is a cache of the ``embeddings`` table; page pixels live in the blob folder.
"""

from __future__ import annotations

import logging
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
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .errors import SchemaVersionError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: the vision table (DeepEncoder tokens per page); 3: per-memory expiry (ttl)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the store: ``schema_version``, ``index_generation``."""

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


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across process crashes
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


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


# Migration steps: MIGRATIONS[v] upgrades a store at schema version v to v + 1.
MIGRATIONS: dict[int, Any] = {1: _add_vision_table, 2: _add_expiry_columns}


def prepare(engine: Engine) -> sessionmaker[Session]:
    """Create or upgrade the schema; refuse a store written by a newer version."""
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory.begin() as session:
        row = session.get(Meta, "schema_version")
        if row is None:
            session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            session.add(Meta(key="index_generation", value="0"))
            return factory
        try:
            found = int(row.value)
        except ValueError:
            raise SchemaVersionError(f"unreadable schema_version {row.value!r} in {engine.url!r}") from None
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"this store has schema version {found}, newer than this library's {SCHEMA_VERSION}: "
                "upgrade optical-memory to open it"
            )
        while found < SCHEMA_VERSION:
            log.info("migrating store schema %d -> %d", found, found + 1)
            MIGRATIONS[found](session)
            found += 1
        row.value = str(found)
    return factory


def bump_generation(session: Session) -> int:
    """Record that the embeddings changed (in the caller's transaction); returns the new generation."""
    row = session.execute(select(Meta).where(Meta.key == "index_generation").with_for_update()).scalar_one()
    row.value = str(int(row.value) + 1)
    return int(row.value)


def generation(session: Session) -> int:
    return int(session.execute(select(Meta.value).where(Meta.key == "index_generation")).scalar_one())
