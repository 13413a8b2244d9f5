"""Shared fixtures: the real backends, each built once per test session (the models take seconds to load),
and the SQL database a store is opened on (SQLite, or PostgreSQL at ``OPTICAL_MEMORY_TEST_PG_URL``)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from optical_memory.backends import make_embedder, make_reader
from optical_memory.backends.minilm import MiniLMEmbedder
from optical_memory.backends.rapidocr_reader import RapidOCRReader
from optical_memory.backends.tiktoken_counter import TiktokenCounter


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    """The real all-MiniLM-L6-v2 embedder, loaded here (about 4 s, once) so no test is charged for it."""
    model = make_embedder("minilm")  # the instance the store's factory shares in-process
    model.embed(["warm up"])
    return model


@pytest.fixture(scope="session")
def reader() -> RapidOCRReader:
    """The real RapidOCR reader (the ONNX models load on its first read)."""
    return make_reader("rapidocr")


@pytest.fixture(scope="session")
def counter() -> TiktokenCounter:
    """The offline cl100k_base token counter."""
    return TiktokenCounter()


#: A PostgreSQL server the tests may create and drop databases on (`.ci/run` starts one); None: no server.
PG_URL = os.environ.get("OPTICAL_MEMORY_TEST_PG_URL")
NO_PG = "OPTICAL_MEMORY_TEST_PG_URL is not set (no PostgreSQL server)"


@contextlib.contextmanager
def pg_database(prefix: str = "om_test") -> Iterator[str]:
    """A new, empty database on the server (about 20 ms to create), dropped afterwards, even if a store the
    test left open still holds a connection to it."""
    from sqlalchemy import create_engine, text

    assert PG_URL is not None
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as con:
            con.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield PG_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            with admin.connect() as con:
                con.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database for one test; skips without a server."""
    if not PG_URL:
        pytest.skip(NO_PG)
    with pg_database() as url:
        yield url


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param(
            "postgres",
            id="postgres",
            marks=[pytest.mark.postgres, pytest.mark.skipif(not PG_URL, reason=NO_PG)],
        ),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The ``database_url`` to open a store with: None (a SQLite file in the store folder), or a fresh
    PostgreSQL database dropped after the test."""
    if request.param == "sqlite":
        yield None
    else:
        with pg_database() as url:
            yield url
