"""The store on a real PostgreSQL server (``OPTICAL_MEMORY_TEST_PG_URL``; `.ci/run` starts one)."""

from __future__ import annotations

import pytest

import optical_memory as om
from optical_memory.config import StoreConfig

# The store suite (tests/test_store.py) runs on PostgreSQL too, through conftest's ``backend`` fixture; this
# file keeps what it does not cover. ``pg_url`` (conftest) is a fresh database per test, or a skip.
pytestmark = pytest.mark.postgres


def test_nul_in_metadata_is_refused_and_nothing_is_stored(tmp_path, embedder, pg_url):
    config = StoreConfig.tiny(database_url=pg_url)
    with om.open(tmp_path / "s", config=config, embedder=embedder) as store:
        one = store.add("tide tables for May", scope="a", metadata={"n": 1})
        with pytest.raises(om.InvalidInput, match="NUL"):  # no json operator could read this row back
            store.add("odd", scope="a", metadata={"n": 1, "odd": "nul \x00 inside"})
        assert [m.id for m in store.memories(filters={"n": 1})] == [one]
        assert store.stats().memories == 1


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
