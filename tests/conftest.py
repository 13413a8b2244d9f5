"""Shared fixtures: the real backends, each built once per test session (the models take seconds to load),
and the SQL database a store is opened on (SQLite, or PostgreSQL at ``OPTICAL_MEMORY_TEST_PG_URL``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from optical_memory.backends import make_embedder, make_reader
from optical_memory.backends.minilm import MiniLMEmbedder
from optical_memory.backends.rapidocr_reader import RapidOCRReader
from optical_memory.backends.tiktoken_counter import TiktokenCounter
from optical_memory.hardware import describe_cpu
from optical_memory.reliability import scratch_database


def pytest_report_header() -> str:
    """The CPU and the flags that decide how fast this run can be (a slow run told from a broken one)."""
    return f"cpu: {describe_cpu()}"


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


def pg_database(prefix: str = "om_test") -> contextlib.AbstractContextManager[str]:
    """A scratch database on the test server, dropped afterwards."""
    assert PG_URL is not None
    return scratch_database(PG_URL, prefix)


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
