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


def test_listing_filters_expiry_and_migration_on_postgres(tmp_path, embedder, pg_url):
    import time

    from sqlalchemy import create_engine, text

    config = StoreConfig.tiny(database_url=pg_url)
    with om.open(tmp_path / "s", config=config, embedder=embedder) as store:
        one = store.add("tide tables for May", scope="a", metadata={"n": 1})
        with pytest.raises(om.InvalidInput, match="NUL"):  # no json operator could read this row back
            store.add("odd", scope="a", metadata={"n": 1, "odd": "nul \x00 inside"})
        text_one = store.add("tide tables for June", scope="a", metadata={"n": "1"})
        true = store.add("a violin", scope="b", metadata={"n": True}, kind="document")
        real = store.add("a cello", scope="b", metadata={"n": 1.0, "t": None}, ttl=3600)
        store.add("expired", scope="b", metadata={"n": 1}, timestamp=time.time() - 100, ttl=10)
        assert [m.id for m in store.memories(filters={"n": 1})] == [real, one]
        assert [m.id for m in store.memories(filters={"n": "1"})] == [text_one]
        assert [m.id for m in store.memories(filters={"n": True})] == [true]
        assert [m.id for m in store.memories(filters={"t": None})] == [real]
        assert [m.id for m in store.memories(scope=["a", "b"], limit=2, offset=1)] == [true, text_one]
        assert {h.scope for h in store.search("tide", scope=["a"], k=5)} == {"a"}
        assert store.age()["expired"] == 1
    # a version-2 database (no expiry columns) opens and migrates
    engine = create_engine(pg_url)
    with engine.begin() as con:
        con.execute(text("ALTER TABLE memories DROP COLUMN expires_at"))
        con.execute(text("ALTER TABLE memories DROP COLUMN ttl_s"))
        con.execute(text("UPDATE meta SET value='2' WHERE key='schema_version'"))
    engine.dispose()
    with om.open(tmp_path / "s", config=config, embedder=embedder) as store:
        assert store.memories(scope="b")[0].expires_at is None
        assert store.set_ttl(real, 60) is not None


def test_langgraph_store_on_postgres(tmp_path, embedder, pg_url):
    pytest.importorskip("langgraph")
    from optical_memory.adapters.langgraph import OpticalMemoryStore

    config = StoreConfig.tiny(database_url=pg_url)
    with om.open(tmp_path / "s", config=config, embedder=embedder) as store:
        lg = OpticalMemoryStore(store)
        lg.put(("users", "ingrid"), "diet", {"text": "Ingrid is allergic to cashews.", "n": 1})
        lg.put(("users", "ingrid"), "car", {"text": "Ingrid drives a red Volvo.", "n": 2}, ttl=60)
        lg.put(("users", "bob"), "diet", {"text": "Bob is vegan.", "n": 3})
        assert lg.get(("users", "ingrid"), "diet").value["n"] == 1
        assert lg.search(("users",), query="nut allergy", limit=1)[0].key == "diet"
        assert [i.key for i in lg.search(("users",), filter={"n": {"$gte": 2}})] == ["diet", "car"]
        assert lg.list_namespaces() == [("users", "bob"), ("users", "ingrid")]
        lg.delete(("users", "bob"), "diet")
        assert lg.list_namespaces() == [("users", "ingrid")]
