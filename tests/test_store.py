"""The store end to end on tiny pages: real SQLite file or PostgreSQL database (the ``backend`` fixture),
real FAISS, real MiniLM embedder, real RapidOCR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import optical_memory as om
from optical_memory.config import AgingPolicy, StoreConfig, Tier

SCOPE = "user-1"


def tiny(tmp_path: Path, embedder, database_url: str | None = None, **options) -> om.OpticalMemory:
    """A tiny store in ``tmp_path / "store"``; ``database_url`` None keeps its SQL in a SQLite file there."""
    config = StoreConfig.tiny(database_url=database_url, **options)
    return om.open(tmp_path / "store", config=config, embedder=embedder)


def sql_engine(tmp_path: Path, database_url: str | None):
    """An engine on the SQL database of the tiny store in ``tmp_path`` (to inspect or damage it closed)."""
    from sqlalchemy import create_engine

    return create_engine(database_url or f"sqlite:///{tmp_path / 'store' / 'memory.db'}")


def sql_rows(tmp_path: Path, database_url: str | None, query: str) -> list[tuple]:
    from sqlalchemy import text

    engine = sql_engine(tmp_path, database_url)
    try:
        with engine.connect() as con:
            return [tuple(row) for row in con.execute(text(query))]
    finally:
        engine.dispose()


def _all_page_blobs(store: om.OpticalMemory) -> set[str]:
    from sqlalchemy import select

    from optical_memory.db import PageRow

    with store._session() as s:
        return {b for b in s.scalars(select(PageRow.blob)) if b}


def turn(i: int) -> str:
    return f"Turn number {i} talks about topic {i % 7} and item {i * 13 % 101} in a few plain words."


@pytest.fixture
def store(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as s:
        yield s


def blob_files(store: om.OpticalMemory) -> set[str]:
    return set(store.blobs.names())


def page_blobs(store: om.OpticalMemory, memory_id: int) -> set[str]:
    """Blob names of the pages a memory is on (read from SQL, as the store sees them)."""
    from sqlalchemy import select

    from optical_memory.db import PageRow, SpanRow

    with store._session() as s:
        stmt = (
            select(PageRow.blob)
            .join(SpanRow, SpanRow.page_id == PageRow.id)
            .where(SpanRow.memory_id == memory_id)
        )
        return {b for b in s.scalars(stmt) if b}


# -- add / recall in the text tier


def test_add_and_recall_text_tier(store):
    mid = store.add("My sister Ingrid lives in Tromsø.", scope=SCOPE, role="user")
    r = store.recall(mid)
    assert (r.text, r.tier, r.source, r.role) == (
        "My sister Ingrid lives in Tromsø.",
        "text",
        "retained",
        "user",
    )
    [hit] = store.search("Where does Ingrid live?", scope=SCOPE, k=1)
    assert (hit.id, hit.tier, hit.page_id, hit.scope) == (mid, "text", None, SCOPE)


def test_add_many_returns_ids_in_order(store):
    ids = store.add_many(["first thing", {"text": "second thing", "role": "assistant"}], scope=SCOPE)
    assert [store.recall(i).text for i in ids] == ["first thing", "second thing"]
    assert store.recall(ids[1]).role == "assistant"
    for call in (store.add_many, store.add_files):  # one check of the progress callback, naming the value
        with pytest.raises(om.InvalidInput, match="progress must be a callable taking a count, got 'bar'"):
            call([], scope=SCOPE, progress="bar")
    assert store.stats().memories == 2


# -- aging


def test_age_packs_old_turns_into_pages_and_is_idempotent(store):
    ids = store.add_many([{"text": turn(i), "role": "user"} for i in range(6)], scope=SCOPE)
    first = store.age()
    assert first["packed"] == 4  # text_turns=2 keeps the newest two as text
    assert first["pages_written"] >= 1
    before = (blob_files(store), store.stats())
    second = store.age()
    assert second == {
        "expired": 0,
        "packed": 0,
        "pages_written": 0,
        "downsampled": 0,
        "forgotten": 0,
        "encoded": 0,
    }
    assert (blob_files(store), store.stats()) == before
    tiers = [store.recall(i).tier for i in ids]
    assert tiers[-2:] == ["text", "text"]
    assert all(t == "256" for t in tiers[:4])


def test_ladder_downsamples_and_forgets(tmp_path, embedder, backend):
    policy = AgingPolicy(text_turns=0, tiers=StoreConfig.tiny().aging.tiers)
    with tiny(tmp_path, embedder, backend, retain_text=True, aging=policy) as store:
        old = store.add(turn(0), scope=SCOPE, role="user")
        store.age()
        [page] = store.page_image(old)
        assert page.size == (256, 256)
        seen = []
        for i in range(1, 40):
            store.add(turn(i), scope=SCOPE, role="user")
            store.age()
            seen.append(store.recall(old).tier)
        # distance <= 4 -> 256, <= 8 -> 128, <= 16 -> 64, beyond -> forgotten; never back up the ladder
        assert seen[0] == "256" and "128" in seen and "64" in seen and seen[-1] == "forgotten"
        order = ["256", "128", "64", "forgotten"]
        assert [order.index(t) for t in seen] == sorted(order.index(t) for t in seen)
        assert store.page_image(old) == []
        r = store.recall(old, read=True)
        assert (r.text, r.source, r.tier) == ("", "forgotten", "forgotten")
        # the gist vector survives forgetting: the memory is still found
        assert old in [h.id for h in store.search(turn(0), scope=SCOPE, k=3)]


def test_downsampled_page_really_loses_pixels(tmp_path, embedder, backend):
    policy = AgingPolicy(text_turns=0, tiers=StoreConfig.tiny().aging.tiers)
    with tiny(tmp_path, embedder, backend, aging=policy) as store:
        mid = store.add(turn(0), scope=SCOPE, role="user")
        store.age()
        [full] = page_blobs(store, mid)
        for i in range(1, 30):
            store.add(turn(i), scope=SCOPE)
            store.age()
            if store.recall(mid).tier == "128":
                break
        [small] = store.page_image(mid)
        assert small.size == (128, 128)
        assert full not in blob_files(store)  # the 256px pixels are gone from disk, not just unreferenced
        assert blob_files(store) == _all_page_blobs(store)  # one blob per page, no stale tiers


def test_wall_clock_aging(tmp_path, embedder, backend):
    policy = AgingPolicy(text_turns=0, tiers=(Tier(side=256, max_age_s=100), Tier(side=128, max_age_s=1000)))
    with tiny(tmp_path, embedder, backend, aging=policy) as store:
        mid = store.add(turn(0), scope=SCOPE, timestamp=1_000.0)
        store.age(now=1_050.0)
        assert store.recall(mid).tier == "256"
        store.age(now=1_500.0)
        assert store.recall(mid).tier == "128"
        store.age(now=5_000.0)
        assert store.recall(mid).tier == "forgotten"


def test_pinned_memory_never_ages(store):
    keep = store.add(turn(0), scope=SCOPE, role="user")
    store.pin(keep)
    for i in range(1, 30):
        store.add(turn(i), scope=SCOPE)
    store.age()
    r = store.recall(keep)
    assert (r.tier, r.source, r.text) == ("text", "retained", turn(0))


def test_text_is_dropped_once_rendered_unless_retained(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        ids = store.add_many([turn(i) for i in range(12)], scope=SCOPE)
        store.age()
    texts = dict(sql_rows(tmp_path, backend, "select id, text from memories"))
    assert texts[ids[0]] is None  # on a closed page: only hash, gist vector and pixels remain
    assert texts[ids[-1]] == turn(11)  # still in the text tier


def test_packed_turns_keep_their_text_until_their_last_page_closes(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        ids = store.add_many([turn(i) for i in range(40)], scope=SCOPE)
        store.age()
    texts = dict(sql_rows(tmp_path, backend, "select id, text from memories"))
    spans = sql_rows(
        tmp_path, backend, "select s.memory_id, p.is_open from spans s join pages p on p.id = s.page_id"
    )
    on_open = {m for m, is_open in spans if is_open}
    closed_only = {m for m, _ in spans} - on_open
    assert on_open and len(closed_only) > 10  # several closed pages and one open page
    assert all(texts[m] is not None for m in on_open)  # the open page may still be redrawn from its text
    assert all(texts[m] is None for m in closed_only)
    assert texts[ids[-1]] == turn(39)  # the text tier


# -- reading pages back


@pytest.mark.slow
def test_recall_reads_page_at_full_tier(tmp_path, embedder, backend):
    """Default 1024px pages read back by RapidOCR with CER <= 1% (one page of ~1,000 tokens)."""
    from optical_memory.metrics import cer

    texts = [
        "Before I forget: the wifi password at the lake cabin is heron-4417, all lowercase. "
        "Can you also remind me to water the tomatoes every second morning?",
        "Sure. I noted the cabin password. For the tomatoes, water them at the base before the heat of "
        "midday and check the soil an inch down; if it is still damp, skip a day. Mulch keeps it moist.",
        "Thanks! Next week we fly to Reykjavik on FI 615, leaving Copenhagen at 07:40 on a Tuesday.",
    ]
    policy = AgingPolicy(text_turns=0)
    with om.open(tmp_path / "s", embedder=embedder, aging=policy, database_url=backend) as store:
        ids = [
            store.add(t, scope=SCOPE, role=r)
            for t, r in zip(texts, ["user", "assistant", "user"], strict=True)
        ]
        store.age()
        for mid, text in zip(ids, texts, strict=True):
            r = store.recall(mid, read=True)  # the last page is still open, so its text is still retained
            assert r.tier == "1024" and r.source == "rapidocr"
            assert cer(text, r.text) <= 0.01, (text, r.text)
        # cached per tier: a second recall does not run the reader
        calls = []
        real_read, real_lines = store.reader.read, store.reader.read_lines
        store.reader.read = lambda images: calls.append(len(images)) or real_read(images)  # type: ignore[method-assign]
        store.reader.read_lines = lambda images: calls.append(len(images)) or real_lines(images)  # type: ignore[method-assign]
        assert cer(texts[0], store.recall(ids[0], read=True).text) <= 0.01
        assert calls == []


# -- search


@pytest.mark.slow
def test_search_finds_planted_fact_among_thousands(tmp_path, embedder, backend):
    from optical_memory.demo import TOPICS

    rng = np.random.default_rng(0)
    topics = sorted(TOPICS)
    filler = []
    for i in range(2000):
        bank = TOPICS[topics[i % len(topics)]]
        words = [str(rng.choice(bank[k])) for k in ("verb", "thing", "detail")]
        filler.append(f"Let us {words[0]} {words[1]} {words[2]}.")
    fact = "The combination for my locker at the climbing gym is 31-07-22."
    with tiny(tmp_path, embedder, backend) as store:
        store.add_many(filler[:1000], scope=SCOPE)
        planted = store.add(fact, scope=SCOPE, role="user")
        store.add_many(filler[1000:], scope=SCOPE)
        hits = store.search("What is the code of my gym locker?", scope=SCOPE, k=3)
        assert hits[0].id == planted


def test_search_filters_and_kinds(store):
    a = store.add("apples are red", scope=SCOPE, role="user", metadata={"session": 1})
    b = store.add("apples are green", scope=SCOPE, role="assistant", metadata={"session": 2})
    d = store.add("a field guide to apples", scope=SCOPE, kind="document")
    assert {h.id for h in store.search("apples", scope=SCOPE, k=5)} == {a, b, d}
    assert [h.id for h in store.search("apples", scope=SCOPE, filters={"session": 2})] == [b]
    assert [h.id for h in store.search("apples", scope=SCOPE, filters={"role": "user"})] == [a]
    assert [h.id for h in store.search("apples", scope=SCOPE, filters={"kind": "document"})] == [d]
    [hit] = store.search("field guide", scope=SCOPE, filters={"kind": "document"})
    assert hit.tier == "256" and hit.page_id is not None


def test_tier_filters_take_the_side_as_int_or_str_and_unsupported_filters_are_named(store):
    turn = store.add("apples are red", scope=SCOPE)
    doc = store.add("a field guide to apples", scope=SCOPE, kind="document")  # paged at once: tier 256
    for tier in (256, "256"):
        assert [h.id for h in store.search("apples", scope=SCOPE, filters={"tier": tier})] == [doc]
    assert [h.id for h in store.search("apples", scope=SCOPE, filters={"tier": "text"})] == [turn]
    refused = [  # (filters, what the error says)
        ({"kind": {"$regex": "doc"}}, "filters['kind']: operator(s) '$regex' are not supported"),
        ({"n": {"$gt": 1, "$lt": 5}}, "filters['n']: operator(s) '$gt', '$lt' are not supported"),
        (
            {"tag": ["a", "b"]},
            "filters['tag'] compares one JSON scalar (str, int, float, bool or None), got list",
        ),
        ({"tier": 1024}, "filters['tier'] must be one of this store's tiers text, 256, 128, 64, forgotten"),
        ({"tier": "256px"}, "got '256px'"),
        ({"kind": "turns"}, "filters['kind'] is 'turn' or 'document', got 'turns'"),
    ]
    for filters, says in refused:
        calls = [lambda f: store.search("apples", scope=SCOPE, filters=f)]
        if "tier" not in filters:  # memories() refuses every tier filter (a tier is computed)
            calls.append(lambda f: store.memories(scope=SCOPE, filters=f))
        for call in calls:
            with pytest.raises(om.InvalidInput) as refusal:
                call(filters)
            assert says in str(refusal.value)
    assert len(store.memories(scope=SCOPE)) == 2  # nothing lost


# -- listing without a query, searching several scopes


def test_memories_lists_newest_first_with_filters_limit_and_offset(store):
    a = store.add("one", scope="a", role="user", metadata={"n": 1, "tag": "x"}, timestamp=100.0)
    b = store.add("two", scope="a", role="assistant", metadata={"n": "1", "tag": "x"}, timestamp=200.0)
    c = store.add("three", scope="b", metadata={"n": True, "tag": None}, timestamp=300.0)
    d = store.add("a document", scope="b", kind="document", metadata={"n": 1.0}, timestamp=400.0)
    assert [m.id for m in store.memories()] == [d, c, b, a]
    assert [m.id for m in store.memories(limit=2, offset=1)] == [c, b]
    assert [m.id for m in store.memories(scope="a")] == [b, a]
    assert [m.id for m in store.memories(scope=["b", "a"], limit=3)] == [d, c, b]
    # JSON scalars compare typed: 1 == 1.0, but neither is "1" nor true
    assert [m.id for m in store.memories(filters={"n": 1})] == [d, a]
    assert [m.id for m in store.memories(filters={"n": "1"})] == [b]
    assert [m.id for m in store.memories(filters={"n": True})] == [c]
    assert [m.id for m in store.memories(filters={"tag": None})] == [c]
    assert [m.id for m in store.memories(filters={"tag": "x", "role": "user"})] == [a]
    [doc] = store.memories(filters={"kind": "document"})
    assert (doc.id, doc.scope, doc.tier, doc.metadata, doc.created_at, doc.expires_at) == (
        d,
        "b",
        "256",
        {"n": 1.0},
        400.0,
        None,
    )
    assert store.memories(scope=[]) == [] and store.memories(filters={"n": 2}) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scope": "nobody"}, "nobody"),
        ({"scope": ["a", "nobody"]}, "nobody"),
        ({"scope": [["a"]]}, "list"),
        ({"filters": {"n": [1]}}, r"\[1\]"),
        ({"filters": {"tier": "256"}}, "tier"),
        ({"filters": ["n"]}, "dict"),
        ({"limit": -1}, "-1"),
        ({"offset": 1.5}, "1.5"),
    ],
)
def test_memories_bad_arguments_name_the_value(store, kwargs, match):
    store.add("one", scope="a")
    with pytest.raises(om.OpticalMemoryError, match=match):
        store.memories(**kwargs)


def test_memories_metadata_keys_with_dots_and_quotes(store):
    odd = store.add("odd keys", scope=SCOPE, metadata={"a.b": 1, 'q"x': "v", "$.k": True})
    store.add("plain", scope=SCOPE, metadata={"a": {"b": 1}})
    for key, value in [("a.b", 1), ('q"x', "v"), ("$.k", True)]:
        assert [m.id for m in store.memories(filters={key: value})] == [odd]


def test_search_over_several_scopes(store):
    ids = {s: store.add(f"{s} keeps bees on the roof", scope=s) for s in ("a", "b", "c")}
    hits = store.search("bees", scope=["a", "c"], k=5)
    assert {h.id for h in hits} == {ids["a"], ids["c"]} and {h.scope for h in hits} == {"a", "c"}
    assert store.search("bees", scope=("b",), k=5)[0].id == ids["b"]
    assert store.search("bees", scope=[], k=5) == []
    with pytest.raises(om.ScopeNotFound, match="nobody"):
        store.search("bees", scope=["a", "nobody"])
    with pytest.raises(om.InvalidInput, match="int"):
        store.search("bees", scope=7)  # type: ignore[arg-type]


# -- time to live


def test_document_with_ttl_walks_the_ladder_and_is_deleted_at_expiry(tmp_path, embedder, backend):
    t0 = float(int(time.time()))
    # retained text: recall() reads no pages
    with tiny(tmp_path, embedder, backend, retain_text=True) as store:
        keep = store.add("a document that never expires", scope=SCOPE, kind="document", timestamp=t0)
        mid = store.add("an hour to live", scope=SCOPE, kind="document", ttl=3600, timestamp=t0)
        assert store.memories(scope=SCOPE)[0].expires_at == t0 + 3600
        # three tiers: 256px for the first quarter of its life, 128 the second, 64 the third, then forgotten
        seen = []
        for minutes in (5, 14, 16, 29, 31, 44, 46, 59):
            store.age(now=t0 + minutes * 60)
            seen.append(store.recall(mid).tier)
        assert seen == ["256", "256", "128", "128", "64", "64", "forgotten", "forgotten"]
        assert store.recall(keep).tier == "256"  # no ttl: ages as before (by turns, here none)
        report = store.age(now=t0 + 3600)
        assert report["expired"] == 1
        with pytest.raises(om.MemoryNotFound):
            store.recall(mid)
        assert len(store.index) == 1 and blob_files(store) == page_blobs(store, keep)
        assert store.age(now=t0 + 9000)["expired"] == 0


def test_memory_info_names_the_scope_without_reading_pages(store):
    first = store.add("Ingrid is allergic to cashews.", scope="alice", role="user", metadata={"n": 1})
    store.add_many([f"filler turn {i}" for i in range(12)], scope="alice")
    store.age()
    info = store.memory_info(first)
    assert (info.scope, info.kind, info.role, info.metadata) == ("alice", "turn", "user", {"n": 1})
    assert info.tier not in ("text", "forgotten")  # on a page now; nothing was read to say so
    with pytest.raises(om.MemoryNotFound, match="10000"):
        store.memory_info(10_000)
    with pytest.raises(om.InvalidInput, match="str"):
        store.memory_info("1")  # type: ignore[arg-type]


def test_expired_memories_are_hidden_before_they_are_swept(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend, retain_text=True) as store:
        live = store.add("the ferry leaves at nine", scope=SCOPE, role="user", ttl=3600)
        past = time.time() - 60
        gone = store.add("the ferry left at eight", scope=SCOPE, role="user", timestamp=past, ttl=30)
        assert [m.id for m in store.memories(scope=SCOPE)] == [live]
        assert [h.id for h in store.search("ferry", scope=SCOPE, k=5)] == [live]
        assert [r.id for r in store.recent_turns(SCOPE)] == [live]
        ctx = store.build_context("when does the ferry leave?", budget_tokens=200, scope=SCOPE)
        assert {i.id for i in ctx.items} == {live} and "eight" not in ctx.text
        assert store.stats().memories == 2  # not swept yet
        with pytest.raises(om.MemoryNotFound, match="expired"):
            store.memory_info(gone)
        assert store.memory_info(live).scope == SCOPE
        assert store.age()["expired"] == 1 and store.stats().memories == 1
        with pytest.raises(om.MemoryNotFound):
            store.recall(gone)


def test_set_ttl_extends_clears_and_never_restores_pixels(tmp_path, embedder, backend):
    t0 = float(int(time.time()))
    with tiny(tmp_path, embedder, backend, retain_text=True) as store:
        mid = store.add("a note to refresh", scope=SCOPE, kind="document", ttl=400, timestamp=t0)
        store.age(now=t0 + 150)  # past the first quarter: 128px
        assert store.recall(mid).tier == "128"
        assert store.set_ttl(mid, 400, now=t0 + 300) == t0 + 700
        store.age(now=t0 + 350)  # 50s into the new lifetime would be 256px: pixels are not restored
        assert store.recall(mid).tier == "128"
        store.age(now=t0 + 650)  # past the old expiry, within the new one
        assert store.recall(mid).tier == "forgotten"
        assert store.set_ttl(mid, None) is None
        assert store.age(now=t0 + 99_000)["expired"] == 0 and store.memories()[0].expires_at is None
        with pytest.raises(om.MemoryNotFound, match="4242"):
            store.set_ttl(4242, 10)


def test_a_shared_page_waits_for_its_memories_without_ttl(tmp_path, embedder, backend):
    policy = AgingPolicy(text_turns=0, tiers=StoreConfig.tiny().aging.tiers)
    t0 = float(int(time.time()))
    with tiny(tmp_path, embedder, backend, retain_text=True, aging=policy) as store:
        brief = store.add("a turn with a minute to live", scope=SCOPE, ttl=60, timestamp=t0)
        lasting = store.add("a turn that stays", scope=SCOPE, timestamp=t0)
        store.age(now=t0 + 1)
        assert page_blobs(store, brief) == page_blobs(store, lasting)  # one page holds both
        store.age(now=t0 + 50)  # the ttl alone would forget the page: the other turn keeps it sharp
        assert store.recall(lasting).tier == "256"
        assert store.age(now=t0 + 60)["expired"] == 1
        assert store.recall(lasting, read=False).text == "a turn that stays"


@pytest.mark.parametrize("ttl", [0, -5, float("nan"), float("inf"), "60", True])
def test_bad_ttl_is_named_and_nothing_is_stored(store, ttl):
    with pytest.raises(om.InvalidInput, match="ttl"):
        store.add("text", scope=SCOPE, ttl=ttl)
    with pytest.raises(om.InvalidInput, match="ttl"):
        store.add_many(["fine", {"text": "bad", "ttl": ttl}], scope=SCOPE)
    assert store.stats().memories == 0


def test_ttl_tier_rule_is_equal_slices_of_the_lifetime():
    policy = StoreConfig.tiny().aging  # three tiers
    ladder = [policy.ttl_tier_index(elapsed_s=t, ttl_s=100.0) for t in (0, 25, 26, 50, 51, 75, 76, 100, 200)]
    assert ladder == [0, 0, 1, 1, 2, 2, None, None, None]
    keep = AgingPolicy(tiers=policy.tiers, forget=False)
    assert keep.ttl_tier_index(elapsed_s=90.0, ttl_s=100.0) == 2


def test_schema_2_store_opens_and_migrates_to_3(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        old = store.add("written before expiry existed", scope=SCOPE)
    from sqlalchemy import inspect, text

    engine = sql_engine(tmp_path, backend)
    with engine.begin() as con:  # make it the version-2 layout: no expiry columns or index
        con.execute(text("drop index ix_memories_expires_at"))
        con.execute(text("alter table memories drop column expires_at"))
        con.execute(text("alter table memories drop column ttl_s"))
        con.execute(text("update meta set value='2' where key='schema_version'"))
    engine.dispose()
    with tiny(tmp_path, embedder, backend) as store:
        assert store.recall(old).text == "written before expiry existed"
        assert store.memories()[0].expires_at is None
        new = store.add("written after", scope=SCOPE, ttl=60)
        assert store.memories(filters={})[0].id == new
        assert store.set_ttl(old, 60) is not None
    from optical_memory.db import SCHEMA_VERSION  # 3 added the expiry columns; later steps run too

    assert sql_rows(tmp_path, backend, "select value from meta where key='schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    engine = sql_engine(tmp_path, backend)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("memories")}
        indexes = {i["name"] for i in inspect(engine).get_indexes("memories")}
    finally:
        engine.dispose()
    assert {"expires_at", "ttl_s"} <= columns and "ix_memories_expires_at" in indexes


# -- delete


def test_delete_removes_rows_vectors_and_blobs(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        doc = store.add("A document that sits alone on its page.", scope=SCOPE, kind="document")
        assert len(blob_files(store)) == 1 and len(store.index) == 1
        store.delete(doc)
        assert blob_files(store) == set() and len(store.index) == 0
        with pytest.raises(om.MemoryNotFound, match=str(doc)):
            store.recall(doc)
        assert store.search("document alone", scope=SCOPE) == []


def test_delete_blanks_lines_on_a_shared_page(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        ids = store.add_many([turn(i) for i in range(6)], scope=SCOPE)
        store.age()
        [page_before] = store.page_image(ids[0])
        assert (np.asarray(page_before)[:25] != 255).any()
        store.delete(ids[0])
        [page_after] = store.page_image(ids[1])
        a, b = np.asarray(page_before), np.asarray(page_after)
        assert a.shape == b.shape and (a != b).any()
        assert (b[:25] == 255).all()  # the top lines (the deleted turn) are blank now
        assert ids[0] not in {h.id for h in store.search(turn(0), scope=SCOPE, k=6)}


def test_delete_scope_removes_everything_of_that_scope_only(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        store.add_many([turn(i) for i in range(10)], scope="a")
        keep = store.add_many([turn(i + 100) for i in range(10)], scope="b")
        store.age()
        before = blob_files(store)
        assert store.delete_scope("a") == 10
        assert store.scopes() == ["b"]
        with pytest.raises(om.ScopeNotFound, match="'a'"):
            store.search("topic", scope="a")
        assert all(store.recall(i).id == i for i in keep)
        pages_of_b = {name for i in keep for name in page_blobs(store, i)}
        assert blob_files(store) == pages_of_b and len(pages_of_b) < len(before)
        assert len(store.index) == 10


# -- scope isolation (property)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(
        st.tuples(
            st.sampled_from(["alice", "bob", "carol"]), st.sampled_from(["cats", "tax", "trains", "soup"])
        ),
        min_size=1,
        max_size=12,
    ),
    query=st.sampled_from(["cats", "money", "railway", "dinner"]),
)
def test_scope_isolation(tmp_path, embedder, backend, data, query):
    # One store (folder and database) for all examples, a fresh set of scopes for each: a PostgreSQL database
    # per example would cost more than the example.
    tag = uuid.uuid4().hex[:8]
    with tiny(tmp_path, embedder, backend) as store:
        owner = {}
        for name, topic in data:
            scope = f"{name}-{tag}"
            owner[store.add(f"{name} says something about {topic}", scope=scope)] = scope
        store.age()
        for scope in set(owner.values()):
            hits = store.search(query, scope=scope, k=20)
            assert hits and all(owner[h.id] == scope and h.scope == scope for h in hits)
            assert {h.id for h in hits} == {i for i, s in owner.items() if s == scope}


# -- index


@pytest.mark.parametrize("damage", ["delete", "corrupt", "stale"])
def test_index_is_rebuilt_when_missing_corrupt_or_stale(tmp_path, embedder, backend, damage):
    path = tmp_path / "store"
    with tiny(tmp_path, embedder, backend) as store:
        ids = store.add_many([turn(i) for i in range(20)], scope=SCOPE)
    index_file = path / "index.faiss"
    if damage == "delete":
        index_file.unlink()
    elif damage == "corrupt":
        data = bytearray(index_file.read_bytes())
        data[-100:] = b"\x00" * 100
        index_file.write_bytes(bytes(data))
    else:  # an older index file beside a newer database
        old = index_file.read_bytes()
        with tiny(tmp_path, embedder, backend) as store:
            ids.append(store.add("a late addition about violins", scope=SCOPE))
        index_file.write_bytes(old)
    with tiny(tmp_path, embedder, backend) as store:
        assert len(store.index) == len(ids)
        assert store.search(turn(7), scope=SCOPE, k=1)[0].id == ids[7]
        if damage == "stale":
            assert store.search("violins", scope=SCOPE, k=1)[0].id == ids[-1]


# -- bad input


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("   \n\t", "whitespace|empty"),
        (42, "int"),
        (None, "NoneType"),
        ("bell\x07", "0007"),
        ("bad \ud800 surrogate", "D800"),
    ],
)
def test_bad_text_is_rejected_and_nothing_is_lost(store, text, match):
    keep = store.add("something worth keeping", scope=SCOPE)
    with pytest.raises(om.InvalidInput, match=match):
        store.add(text, scope=SCOPE)
    with pytest.raises(om.InvalidInput):
        store.add_many(["fine", text], scope=SCOPE)  # one bad item: nothing of the batch is stored
    assert store.stats().memories == 1 and store.recall(keep).text == "something worth keeping"


def test_characters_no_font_has_are_stored_as_stand_ins_and_recalled_exactly(store):
    text = "private use \U0010fffd here, and \ue000 too"
    mid = store.add(text, scope=SCOPE, metadata={"topic": "glyphs"})
    assert store.recall(mid).text == text  # retained text: the characters themselves come back
    meta = store.memory_info(mid).metadata
    assert meta.get("_stand_ins") == {"[U+10FFFD]": "\U0010fffd", "[U+E000]": "\ue000"}
    assert meta.get("topic") == "glyphs"
    with pytest.raises(om.InvalidInput, match="_stand_ins"):  # a key of its own: the caller cannot clobber it
        store.add("x", scope=SCOPE, metadata={"_stand_ins": {}})


def test_a_bad_item_of_a_batch_is_named_and_nothing_of_it_is_stored(store):
    with pytest.raises(om.UnrenderableText, match=r"item 2: text must be a str, got bytes"):
        store.add_many(["fine 👍", "日本語", b"raw bytes", "more"], scope=SCOPE)
    assert store.stats().memories == 0


def test_any_size_of_text_is_split_across_pages(store):
    big = " ".join(f"word{i}" for i in range(3000))
    mid = store.add(big, scope=SCOPE, kind="document")
    assert len(store.page_image(mid)) > 3


@pytest.mark.parametrize(
    "bad",
    [
        {"scope": ""},
        {"scope": 3},
        {"role": ""},
        {"kind": "note"},
        {"metadata": {"x": object()}},
        {"metadata": [1]},
        {"metadata": {"x": ["nul \x00"]}},
        {"metadata": {"lone \ud800": 1}},
        {"timestamp": "yesterday"},
    ],
)
def test_bad_arguments_name_the_value(store, bad):
    args = {"scope": SCOPE, **bad}
    with pytest.raises(om.InvalidInput):
        store.add("text", **args)


def test_unknown_ids_and_scopes(store):
    store.add("hello", scope=SCOPE)
    with pytest.raises(om.MemoryNotFound, match="12345"):
        store.recall(12345)
    with pytest.raises(om.MemoryNotFound):
        store.delete(12345)
    with pytest.raises(om.InvalidInput, match="str"):
        store.recall("7")  # type: ignore[arg-type]
    with pytest.raises(om.ScopeNotFound, match="nobody"):
        store.search("hello", scope="nobody")
    with pytest.raises(om.ScopeNotFound, match="nobody"):
        store.delete_scope("nobody")
    assert isinstance(om.MemoryNotFound("x"), KeyError)


def test_newer_schema_is_refused(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        store.add("hello", scope=SCOPE)
    from sqlalchemy import text

    engine = sql_engine(tmp_path, backend)
    with engine.begin() as con:
        con.execute(text("update meta set value='999' where key='schema_version'"))
    engine.dispose()
    with pytest.raises(om.SchemaVersionError, match="999"):
        tiny(tmp_path, embedder, backend)


def test_a_second_process_shares_the_open_store(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        mine = store.add("The boiler was serviced in March.", scope=SCOPE)
        code = (
            "import optical_memory as om\n"
            "from optical_memory.config import StoreConfig\n"
            f"config = StoreConfig.tiny(database_url={backend!r})\n"
            f"with om.open({str(tmp_path / 'store')!r}, config=config) as s:\n"
            f"    print([h.id for h in s.search('boiler service', scope={SCOPE!r}, k=1)])\n"
            f"    print(s.add('The gutters were cleared in May.', scope={SCOPE!r}))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        seen, theirs = out.stdout.split("\n")[:2]
        assert seen == f"[{mine}]"  # the other process's index caught up with ours from SQL
        assert [h.id for h in store.search("gutter cleaning", scope=SCOPE, k=1)] == [int(theirs)]


def test_corrupt_blob_is_named_by_recall_and_healed_by_verify(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend, retain_text=True) as store:
        mid = store.add("a page whose pixels will be damaged", scope=SCOPE, kind="document")
        [name] = blob_files(store)
        store.blobs.path(name).write_bytes(b"not a png")
        with pytest.raises(om.BlobError, match="corrupt"):
            store.recall(mid, read=True)
        report = store.verify()
        assert not report.ok and report.corrupt_blobs
        healed = store.verify(repair=True)
        assert healed.rerendered == report.corrupt_blobs
        assert store.verify().ok
        assert store.recall(mid).text == "a page whose pixels will be damaged"


def test_missing_blob_without_text_is_marked_lost(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        mid = store.add("a page that will vanish", scope=SCOPE, kind="document")
        [name] = blob_files(store)
        store.blobs.path(name).unlink()
        with pytest.raises(om.BlobError, match="missing"):
            store.recall(mid)
        orphan = store.blobs.put(b"orphan bytes")
        young = store.verify(repair=True)  # a blob this young may be a dying client's, in flight
        assert young.marked_lost and young.orphan_blobs == [] and store.blobs.check(orphan) is None
        report = store.verify(repair=True, orphan_grace_s=0)
        assert report.orphan_blobs == [orphan] and store.blobs.check(orphan) == "missing"
        assert store.verify().ok and store.recall(mid).tier == "forgotten"


def test_storing_a_blob_again_restarts_its_grace_period(tmp_path):
    from optical_memory.blobs import BlobStore

    blobs = BlobStore(tmp_path / "blobs")
    name = blobs.put(b"page bytes")
    old = time.time() - 3600
    os.utime(blobs.path(name), (old, old))
    assert blobs.age_s(name) > 3500
    assert blobs.put(b"page bytes") == name  # a new transaction refers to the same bytes
    assert blobs.age_s(name) < 60


# -- context


def test_build_context_text_and_image(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend, retain_text=True) as store:
        store.add_many([{"text": turn(i), "role": "user"} for i in range(10)], scope=SCOPE)
        store.age()
        ctx = store.build_context(turn(1), budget_tokens=300, scope=SCOPE)
        assert ctx.used_tokens <= 300 and ctx.mode == "text"
        origins = {i.origin for i in ctx.items}
        assert origins == {"recent", "retrieved"}
        assert turn(9) in ctx.text  # newest turn verbatim
        assert sum(i.tokens for i in ctx.items) == ctx.used_tokens
        img = store.build_context(turn(1), budget_tokens=300, mode="image", scope=SCOPE, crop_margin=None)
        images = [p for p in img.parts if p["type"] == "image_url"]
        assert images and images[0]["image_url"]["url"].startswith("data:image/png;base64,")
        retrieved = [i for i in img.items if i.origin == "retrieved"]
        assert all(i.tokens == om.vision_tokens(int(i.tier)) for i in retrieved)  # whole pages
        assert img.saved_tokens > 0 and img.used_tokens <= 300  # a page image costs less than its text
        assert img.target == "deepseek-ocr" and img.text_counter == ctx.text_counter == "cl100k_base"
        crops = store.build_context(turn(1), budget_tokens=300, mode="image", scope=SCOPE)
        bands = [p for p in crops.parts if p["type"] == "image_url"]
        assert 0 < len(bands) <= len(images) and sum(i.tokens for i in crops.items) == crops.used_tokens
        with pytest.raises(om.InvalidInput, match="mode"):
            store.build_context("x", budget_tokens=10, mode="video")


CHAT = [
    "Note for later: the door code of the amber boathouse is 4417-K23.",
    "Noted, the boathouse code is safe with me.",
    "Can you suggest a stew for a cold evening?",
    "A lentil stew with smoked paprika, carrots and a bay leaf works well.",
    "How long should I simmer it?",
    "About forty minutes, until the lentils are soft.",
    "And what would you serve with it?",
    "Crusty bread, or rice if you want it more filling.",
    "Great, I will buy bread on the way home.",
    "Enjoy the stew tonight!",
]


def test_recent_turns_follow_the_question(tmp_path, embedder, backend):
    """recent_share="auto" (the default) sends the last four turns and an older turn of the text tier only
    as a hit for the question; a fixed share sends the newest turns up to it, whatever the question."""
    aging = AgingPolicy(text_turns=16, tiers=(Tier(side=256),))
    with tiny(tmp_path, embedder, backend, aging=aging) as store:
        roles = ["user", "assistant"] * 5
        ids = store.add_many([{"text": t, "role": r} for t, r in zip(CHAT, roles, strict=True)], scope=SCOPE)
        question = "What is the door code of the amber boathouse?"
        ctx = store.build_context(question, budget_tokens=2000, scope=SCOPE, k=1)
        recent = [i.id for i in ctx.items if i.origin == "recent"]
        retrieved = [i for i in ctx.items if i.origin == "retrieved"]
        assert recent == ids[-1:-5:-1]  # the last two exchanges, newest first
        assert [(i.id, i.tier) for i in retrieved] == [(ids[0], "text")]  # the old turn that answers
        assert "4417-K23" in ctx.text and CHAT[3] not in ctx.text  # the stew recipe is not asked about
        fixed = store.build_context(question, budget_tokens=2000, scope=SCOPE, k=1, recent_share=0.5)
        assert [i.id for i in fixed.items if i.origin == "recent"] == ids[::-1]  # every turn fits the share
        assert ctx.used_tokens < fixed.used_tokens and "4417-K23" in fixed.text
        # a budget too small for four turns in half of it keeps what fits, newest first
        small = store.build_context(question, budget_tokens=40, scope=SCOPE, k=1)
        kept = [i for i in small.items if i.origin == "recent"]
        assert kept and [i.id for i in kept] == ids[-1 : -1 - len(kept) : -1] and len(kept) < 4
        assert sum(i.tokens for i in kept) <= 20 and small.used_tokens <= 40
        for mode in ("text", "image"):
            store.build_context(question, budget_tokens=2000, scope=SCOPE, mode=mode, recent_share=0)
        for bad in ("sometimes", 1.5, -0.1, True, None):
            with pytest.raises(om.InvalidInput, match="recent_share"):
                store.build_context(question, budget_tokens=2000, scope=SCOPE, recent_share=bad)


def test_an_older_recent_turn_found_by_the_question_takes_no_memorys_place(tmp_path, embedder, backend):
    """A turn still in the text tier that ranks among the k best goes in on top of the k memories, so a
    paged memory it outranks is not pushed out: the old code and the update both reach the prompt."""
    aging = AgingPolicy(text_turns=6, tiers=(Tier(side=256),))
    with tiny(tmp_path, embedder, backend, aging=aging, retain_text=True) as store:
        chat = [CHAT[0], *CHAT[2:8], "Update: the amber boathouse door code is now 5521-Q11."]
        chat += ["Thanks.", "You're welcome.", "See you tomorrow.", "Good night!"]
        ids = store.add_many([{"text": t, "role": "user"} for t in chat], scope=SCOPE)
        store.age()
        assert store.memory_info(ids[0]).tier == "256" and store.memory_info(ids[7]).tier == "text"
        ctx = store.build_context(
            "What is the door code of the amber boathouse?", budget_tokens=2000, scope=SCOPE, k=2
        )
        retrieved = [(i.id, i.tier) for i in ctx.items if i.origin == "retrieved"]
        assert (ids[7], "text") in retrieved and (ids[0], "256") in retrieved
        assert len([t for _, t in retrieved if t != "text"]) == 2  # still k memories beside the turn
        assert "4417-K23" in ctx.text and "5521-Q11" in ctx.text


# -- files


def test_add_file_text_pdf_and_image(tmp_path, embedder, backend):
    note = tmp_path / "note.md"
    note.write_text("# Shopping\n\nOat milk, lentils and a new kettle.\n")
    image = Image.new("L", (300, 200), 255)
    png = tmp_path / "blank.png"
    image.save(png)
    pdf = tmp_path / "two.pdf"
    image.convert("RGB").save(pdf, save_all=True, append_images=[image.convert("RGB")])
    with tiny(tmp_path, embedder, backend) as store:
        [doc] = store.add_file(note, scope=SCOPE)
        assert store.search("kettle", scope=SCOPE, k=1)[0].id == doc
        assert len(store.add_file(pdf, scope=SCOPE)) == 2
        [img] = store.add_file(png, scope=SCOPE)
        assert store.page_image(img)[0].size == (256, 256)
        with pytest.raises(om.InvalidInput, match=r"missing\.pdf"):
            store.add_file(tmp_path / "missing.pdf", scope=SCOPE)
        (tmp_path / "data.xyz").write_text("x")
        with pytest.raises(om.InvalidInput, match=r"\.xyz"):
            store.add_file(tmp_path / "data.xyz", scope=SCOPE)


# -- stats / options / public surface


def test_stats_account_tokens_and_bytes(store):
    store.add_many([turn(i) for i in range(8)], scope=SCOPE)
    store.age()
    stats = store.stats()
    by = {t.tier: t for t in stats.tiers}
    assert by["text"].memories == 2 and by["256"].pages >= 1
    assert by["256"].vision_tokens == by["256"].pages * om.vision_tokens(256)
    assert by["256"].bytes == sum(store.blobs.size(n) for n in blob_files(store))
    assert json.dumps(stats.__class__.__name__)


def test_unknown_option_is_named(tmp_path):
    with pytest.raises(om.InvalidInput, match="retain_txt"):
        om.open(tmp_path / "s", retain_txt=True)


class MeanPatchEncoder:
    """A real Encoder written against the protocol, as a user would bring one: 8x8 grey patch means."""

    name = "mean-patch"

    def encode(self, images):
        grey = [np.asarray(im.convert("L").resize((8, 8)), dtype=np.float32) for im in images]
        return [g.reshape(64, 1) / 255 for g in grey]


def test_every_backend_slot_takes_a_protocol_object(tmp_path, embedder, counter, reader):
    encoder = MeanPatchEncoder()
    options = {"embedder": embedder, "reader": reader, "counter": counter, "encoder": encoder}
    with om.open(tmp_path / "s", config=om.StoreConfig.tiny(), **options) as store:
        assert (store.embedder, store.reader, store.counter, store.encoder) == tuple(options.values())
        for i in range(6):
            store.add(f"turn {i} about the harbour", scope="a")
        store.age()
        (page,) = {h.page_id for h in store.search("harbour", k=10, scope="a") if h.page_id is not None}
        tokens = store.vision_tokens(page)
        assert tokens is not None and tokens.shape == (64, 1)


def test_a_backend_object_in_a_config_field_is_named(tmp_path):
    with pytest.raises(om.InvalidInput, match=r"StoreConfig\.encoder is a backend name, got a MeanPatch"):
        om.StoreConfig(encoder=MeanPatchEncoder())


def test_public_api_is_pinned():
    assert sorted(om.__all__) == sorted(
        [
            "AgingPolicy",
            "BlobError",
            "Context",
            "ContextItem",
            "Hit",
            "InvalidInput",
            "MemoryInfo",
            "MemoryNotFound",
            "MissingDependency",
            "OpticalMemory",
            "OpticalMemoryError",
            "PagePlace",
            "Recall",
            "RenderConfig",
            "SchemaVersionError",
            "ScopeNotFound",
            "Stats",
            "StoreConfig",
            "StoreBusy",
            "StoreLocked",
            "TextLine",
            "Tier",
            "TierStats",
            "UnrenderableText",
            "VerifyReport",
            "__version__",
            "open",
            "vision_tokens",
        ]
    )
    methods = {
        "add",
        "add_many",
        "add_file",
        "add_files",
        "search",
        "recall",
        "age",
        "pin",
        "delete",
        "delete_scope",
        "build_context",
        "stats",
        "verify",
        "close",
        "page_image",
        "scopes",
        "flush",
        "rebuild_index",
        "sync_vision",
        "page_text",
        "recent_turns",
        "answer",
        "vision_tokens",
        "memories",
        "memory_info",
        "set_ttl",
        "preread",
        "preread_in_background",
        "memory_pages",
    }
    backends = {"reader", "encoder", "counter", "renderer"}  # properties: made on first use
    public = {n for n in dir(om.OpticalMemory) if not n.startswith("_")} - backends
    assert public == methods


def test_index_scans_one_query_on_one_thread_and_restores_the_thread_count() -> None:
    import faiss

    from optical_memory.index import VectorIndex

    index = VectorIndex(4)
    vectors = np.eye(4, dtype=np.float32)
    index.add("a", [1, 2, 3, 4], vectors)
    seen: list[int] = []
    real = index._scopes["a"]

    class Spy:  # records FAISS's thread count while the real sub-index scans
        ntotal = real.ntotal

        def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            seen.append(faiss.omp_get_max_threads())
            return real.search(q, k)

    index._scopes["a"] = Spy()  # type: ignore[assignment]
    faiss.omp_set_num_threads(2)
    try:
        assert index.search(vectors[2], 1) == [(3, 1.0)]
        assert seen == [1]
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(faiss.omp_get_num_procs() if hasattr(faiss, "omp_get_num_procs") else 2)


def test_sentence_chunks_keep_offsets_and_split_long_sentences() -> None:
    from optical_memory.ingest import sentence_chunks as _sentence_chunks

    text = "  Note for later: the code is 4417-K23.  Can you help me water the tomatoes?\nSure! Do it daily"
    chunks = _sentence_chunks(text, 4)
    assert [c for _, c in chunks] == [
        "Note for later: the",
        "code is 4417-K23.",
        "Can you help me",
        "water the tomatoes?",
        "Sure!",
        "Do it daily",
    ]
    assert all(text[o : o + len(c)] == c for o, c in chunks)
    assert _sentence_chunks("no stop at all", 160) == [(0, "no stop at all")]


def test_gist_must_be_known() -> None:
    with pytest.raises(om.InvalidInput, match="gist must be 'chunks' or 'sentences', got 'words'"):
        StoreConfig(gist="words")


def test_sentence_gists_find_a_fact_inside_a_long_turn_among_near_duplicates(tmp_path, embedder, backend):
    """The recall experiment's hard case: facts from one template, each stated inside a long turn."""
    from optical_memory.demo import ASSISTANT_TEMPLATES, TOPICS
    from optical_memory.recall_experiment import make_facts

    rng = np.random.default_rng(0)
    bank = TOPICS["garden"]

    def filler(n: int) -> str:
        return " ".join(
            str(rng.choice(ASSISTANT_TEMPLATES)).format(**{k: rng.choice(v) for k, v in bank.items()})
            for _ in range(n)
        )

    facts = make_facts((10_000,), 24, seed=0)
    turns = [f"{f.statement} {filler(4)}" for f in facts] + [filler(5) for _ in range(200)]
    at1, at5 = {}, {}
    for gist in ("chunks", "sentences"):
        with tiny(tmp_path / gist, embedder, backend, gist=gist) as store:
            ids = store.add_many(turns, scope=SCOPE)
            ranks = []
            for f, planted in zip(facts, ids, strict=False):  # the vectors alone: what gist changes
                hits = [h.id for h in store.search(f.question, scope=SCOPE, k=5, mode="dense")]
                ranks.append(hits.index(planted) + 1 if planted in hits else None)
            if gist == "chunks":  # the default search finds them all from whole-turn vectors too
                hybrid = [store.search(f.question, scope=SCOPE, k=1)[0].id for f in facts]
                assert hybrid == ids[: len(facts)]
            at1[gist] = sum(r == 1 for r in ranks)
            at5[gist] = sum(r is not None for r in ranks)
            if gist == "sentences":
                assert len(store.index) > 4 * len(turns)  # a vector per sentence: the price of the option
            store.delete_scope(SCOPE)  # on PostgreSQL the next store opens on this same database
    assert at5["sentences"] == len(facts) and at1["sentences"] >= len(facts) - 1
    assert at1["chunks"] < at1["sentences"]  # why the option exists: whole-turn vectors blur the fact
