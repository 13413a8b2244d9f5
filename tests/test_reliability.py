"""Crash safety and concurrency on real processes, on SQLite (WAL) and PostgreSQL.

Workers are real subprocesses (``python -m optical_memory.reliability``) writing through the real
embedder, renderer, blob folder and FAISS index; kills are real SIGKILLs. ``benchmarks/reliability.py``
runs the same harnesses at report size (hundreds of kills, thousands of operations).
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3

import pytest
from sqlalchemy import create_engine, select, text

import optical_memory as om
from optical_memory import db
from optical_memory.config import StoreConfig
from optical_memory.db import SCHEMA_VERSION, PageRow, SpanRow
from optical_memory.reliability import crash_run, stress_run

pytestmark = pytest.mark.slow


def test_sigkill_during_ingest_and_aging_loses_nothing(tmp_path, embedder, backend):
    kills = 5 if backend is None else 3
    results = crash_run(tmp_path / "store", kills=kills, database_url=backend, seed=7, embedder=embedder)
    assert len(results) == kills
    for kill in results:
        assert kill.audit.ok, kill
    assert results[-1].audit.acknowledged > 0  # the kills did land in real work


def test_processes_and_threads_race_without_loss_or_deadlock(tmp_path, embedder, backend):
    run = stress_run(
        tmp_path / "store", processes=2, threads=3, ops=25, database_url=backend, seed=3, embedder=embedder
    )
    assert run.audit.ok, run.audit
    assert run.errors == {}, run.errors  # nothing timed out on a lock, nothing else failed
    assert run.total_operations == 2 * 3 * 25
    assert run.operations["add"] > 0 and run.operations["delete"] > 0 and run.operations["age"] > 0
    assert run.audit.acknowledged > 0


def test_two_handles_see_each_others_writes_before_every_search(tmp_path, embedder, backend):
    config = StoreConfig.tiny(database_url=backend)
    with (
        om.open(tmp_path / "s", config=config, embedder=embedder) as a,
        om.open(tmp_path / "s", config=config, embedder=embedder) as b,
    ):
        first = a.add("The ferry to Tromsø leaves at nine.", scope="u")
        assert [h.id for h in b.search("ferry departure", scope="u", k=1)] == [first]
        b.delete(first)
        assert a.search("ferry departure", scope="u", k=1) == []
        ids = b.add_many([f"turn {i} about glaciers" for i in range(12)], scope="u")
        a.age()  # packs b's turns into pages
        assert {h.id for h in a.search("glaciers", scope="u", k=12)} == set(ids)
        assert a.delete_scope("u") == 12
        with pytest.raises(om.ScopeNotFound):
            b.search("glaciers", scope="u")
        assert b.search("glaciers", k=3) == []
        assert a.index.generation == b.index.generation
        assert a._index_matches_sql() and b._index_matches_sql()


def test_a_stale_index_file_is_caught_up_from_the_log_not_rebuilt(tmp_path, embedder, caplog):
    path = tmp_path / "s"
    with om.open(path, config=StoreConfig.tiny(), embedder=embedder) as store:
        kept = store.add_many([f"turn {i} about orchards" for i in range(5)], scope="u")
    old = (path / "index.faiss").read_bytes()
    with om.open(path, config=StoreConfig.tiny(), embedder=embedder) as store:
        store.delete(kept[0])
        added = store.add("a turn about lanterns", scope="v")
        store.delete_scope("u")
        store.add("a turn about copper", scope="u")
    (path / "index.faiss").write_bytes(old)  # as if this host last saved it four generations ago
    with (
        caplog.at_level(logging.INFO, logger="optical_memory"),
        om.open(path, config=StoreConfig.tiny(), embedder=embedder) as store,
    ):
        assert store._index_matches_sql()
        assert [h.id for h in store.search("lanterns", scope="v", k=1)] == [added]
        assert len(store.index) == 2
    assert not any("rebuil" in r.getMessage() for r in caplog.records)


def test_an_index_older_than_the_pruned_log_is_rebuilt(tmp_path, embedder, monkeypatch):
    monkeypatch.setattr(db, "LOG_KEEP", 4)
    monkeypatch.setattr(db, "LOG_PRUNE_EVERY", 2)
    config = StoreConfig.tiny()
    with (
        om.open(tmp_path / "s", config=config, embedder=embedder) as a,
        om.open(tmp_path / "s", config=config, embedder=embedder) as b,
    ):
        ids = a.add_many([f"turn {i} about walnuts" for i in range(3)], scope="u")
        assert len(b.search("walnuts", scope="u", k=5)) == 3
        for memory_id in ids:  # removals are logged, then pruned past b's generation
            a.delete(memory_id)
        for i in range(8):
            a.add(f"turn {i} about marble", scope="u")
        with a._sessions() as s:
            assert db.log_floor(s) > b.index.generation
        assert b.search("walnuts", scope="u", k=5)[0].id not in ids
        assert len(b.index) == 8 and b._index_matches_sql()


def test_sqlite_writer_gets_a_clear_busy_error_and_nothing_is_written(tmp_path, embedder, monkeypatch):
    monkeypatch.setattr(db, "WRITE_LOCK_WAIT_S", 0.3)
    with om.open(tmp_path / "s", config=StoreConfig.tiny(), embedder=embedder) as store:
        kept = store.add("kept", scope="u")
        other = sqlite3.connect(tmp_path / "s" / "memory.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write transaction
        with pytest.raises(om.StoreBusy, match=r"SQLite's write lock for over 0.3 s.*PostgreSQL"):
            store.add("blocked", scope="u")
        assert [h.id for h in store.search("blocked", scope="u", k=5)] == [kept]
        other.execute("ROLLBACK")
        other.close()
        store.add("now it goes in", scope="u")
        assert len(store.memories(scope="u")) == 2


@pytest.mark.postgres
def test_postgres_writer_gets_a_clear_busy_error_and_nothing_is_written(
    tmp_path, embedder, pg_url, monkeypatch
):
    monkeypatch.setattr(db, "WRITE_LOCK_WAIT_S", 0.3)
    with om.open(tmp_path / "s", config=StoreConfig.tiny(database_url=pg_url), embedder=embedder) as store:
        kept = store.add("kept", scope="u")
        other = create_engine(pg_url).connect()
        other.execute(text("SELECT value FROM meta WHERE key = 'index_generation' FOR UPDATE"))  # a writer
        with pytest.raises(om.StoreBusy, match=r"write lock for over 0.3 s; nothing was written"):
            store.add("blocked", scope="u")
        assert [h.id for h in store.search("blocked", scope="u", k=5)] == [kept]
        other.rollback()
        other.close()
        store.add("now it goes in", scope="u")
        assert len(store.memories(scope="u")) == 2


def test_a_migration_is_refused_while_another_process_has_the_store_open(tmp_path, embedder):
    path = tmp_path / "s"
    with om.open(path, config=StoreConfig.tiny(), embedder=embedder) as store:
        store.add("hello", scope="u")
    engine = create_engine(f"sqlite:///{path / 'memory.db'}")
    with engine.begin() as con:  # a store written by schema 3 (the step to 4 is idempotent)
        con.execute(text("UPDATE meta SET value='3' WHERE key='schema_version'"))
    engine.dispose()
    with open(path / "LOCK", "a+") as elsewhere:
        fcntl.flock(elsewhere, fcntl.LOCK_SH)  # what every open store holds
        wanted = f"schema version 3 and needs migrating to {SCHEMA_VERSION}"
        with pytest.raises(om.StoreLocked, match=wanted):
            om.open(path, config=StoreConfig.tiny(), embedder=embedder)
    with om.open(path, config=StoreConfig.tiny(), embedder=embedder) as store:
        assert len(store.memories()) == 1 and store.verify().ok


def test_an_exclusive_holder_gets_a_clear_lock_error(tmp_path, embedder):
    path = tmp_path / "s"
    om.open(path, config=StoreConfig.tiny(), embedder=embedder).close()
    with open(path / "LOCK", "a+") as migrating:
        fcntl.flock(migrating, fcntl.LOCK_EX)
        with pytest.raises(om.StoreLocked, match="held exclusively by another process"):
            om.open(path, config=StoreConfig.tiny(), embedder=embedder)


def test_healing_a_page_another_process_deleted_or_healed_is_a_no_op(tmp_path, embedder):
    config = StoreConfig.tiny(retain_text=True)
    with (
        om.open(tmp_path / "s", config=config, embedder=embedder) as a,
        om.open(tmp_path / "s", config=config, embedder=embedder) as b,
    ):
        gone = a.add("a page about saddles", scope="u", kind="document")
        kept = a.add("a page about thimbles", scope="u", kind="document")
        with a._session() as s:
            page_of = dict(s.execute(select(SpanRow.memory_id, SpanRow.page_id)).all())
            blob_of = dict(s.execute(select(PageRow.id, PageRow.blob)).all())
        for memory_id in (gone, kept):
            a.blobs.path(blob_of[page_of[memory_id]]).write_bytes(b"damaged")
        b.delete(gone)  # another process deletes one damaged page...
        assert b.verify(repair=True).rerendered == [page_of[kept]]  # ...and heals the other
        assert a._heal_page(page_of[gone]) is None and a._heal_page(page_of[kept]) is None
        assert a.verify().ok and a.recall(kept).text == "a page about thimbles"
