"""The store on a real PostgreSQL server (``OPTICAL_MEMORY_TEST_PG_URL``; `.ci/run` starts one)."""

from __future__ import annotations

import os
import uuid

import pytest

import optical_memory as om
from optical_memory.config import StoreConfig

URL = os.environ.get("OPTICAL_MEMORY_TEST_PG_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not URL, reason="OPTICAL_MEMORY_TEST_PG_URL is not set (no PostgreSQL server)"),
]


@pytest.fixture
def pg_url():
    """A fresh database on the server for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    assert URL is not None
    name = f"om_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(text(f'CREATE DATABASE "{name}"'))
    yield URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as con:
        con.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_store_on_postgres(tmp_path, embedder, pg_url):
    config = StoreConfig.tiny(database_url=pg_url)
    with om.open(tmp_path / "s", config=config, embedder=embedder) as store:
        ids = store.add_many(
            [{"text": f"turn {i} about tide tables", "role": "user"} for i in range(10)], scope="a"
        )
        other = store.add("a turn about violins", scope="b")
        report = store.age()
        assert report["packed"] == 8
        assert store.search("violins", scope="b", k=1)[0].id == other
        assert {h.scope for h in store.search("tide", scope="a", k=10)} == {"a"}
        store.delete(ids[0])
        assert store.delete_scope("b") == 1
        stats = store.stats()
        assert stats.memories == 9 and stats.scopes == 1
    # reopen: schema, generation and index agree
    with om.open(tmp_path / "s", config=config, embedder=embedder) as store:
        assert len(store.index) == 9
        assert store.verify().ok
