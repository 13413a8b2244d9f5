"""Tenant isolation and deletion as properties (hypothesis), on the real parts: a SQLite file (or a real
PostgreSQL database), real FAISS, the real MiniLM embedder, real page blobs on disk.

(a) No read path returns another scope's data: ``search``, ``memories``, ``recall``, ``build_context`` (text
    and image), ``page_image``, ``page_text``, ``recent_turns``, with metadata ``filters``, kinds, lists of
    scopes and look-alike scope names ("a" / "a " / "A" / Cyrillic "а" / NFC "ä" / NFD "ä" ...), and through
    the adapters (LangChain retriever and chat history, LangGraph store namespaces, the MCP server in
    process). Every memory carries its scope's marker word, so a leak shows in any text that comes back.
(b) ``delete(id)``, ``delete_scope(scope)`` and expiry leave nothing behind: every table of the database
    (reflected, so a future table is covered without touching this file), the FAISS index in memory and its
    file on disk, the blob folder (walked on disk), and, for SQLite, the raw bytes of the database file.

``OM_RELIABILITY_SCALE=N`` runs N times the examples; ``OM_RELIABILITY_OUT=path`` receives the counts of
cases tried as JSON (``{"isolation_cases": n, ...}``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from conftest import PG_URL, pg_database
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import Engine, MetaData, create_engine
from sqlalchemy import text as sql

import optical_memory as om
from optical_memory.config import AgingPolicy, StoreConfig, Tier
from optical_memory.index import VectorIndex

SCALE = max(1, int(os.environ.get("OM_RELIABILITY_SCALE", "1")))
CASES: Counter[str] = Counter()  # hypothesis examples actually run, per test

# A short ladder, so a few dozen turns spread pages over every tier and past it:
# text (newest turn) -> 256 px (<= 2 turns old) -> 128 (<= 4) -> 64 (<= 6) -> forgotten.
AGING = AgingPolicy(
    text_turns=1, tiers=(Tier(side=256, max_turns=2), Tier(side=128, max_turns=4), Tier(side=64, max_turns=6))
)

# Scope names that look alike, or that mean something to SQL (LIKE wildcards, quotes), to URL encodings
# (the LangGraph adapter percent-encodes labels), to Unicode normalisation or case folding.
SCOPES = [
    "a",
    "a ",
    " a",
    "A",
    "\u0430",  # Cyrillic a
    "\u00e4",  # a-umlaut, NFC
    "a\u0308",  # a-umlaut, NFD: a + combining diaeresis
    "\uff41",  # fullwidth a
    "a\u200b",  # zero-width space
    "a%",
    "a_",
    "a/b",
    "a%2Fb",
    "a'b",
    'a"b',
    "ß",
    "ss",
    "日本",
    "🙂",
    "*",
    "x" * 255,  # the longest scope name allowed
]
assert len(set(SCOPES)) == len(SCOPES)
MARKERS = [f"zq{i:02d}x" for i in range(len(SCOPES))]  # one word per scope; none is inside another
SCOPE_OF_MARKER = dict(zip(MARKERS, SCOPES, strict=True))
TOPICS = [
    "my cat Felix likes the sunny windowsill",
    "the tax return is due at the end of April",
    "the night train to Porto leaves at nine",
    "a recipe for leek and potato soup",
    "violin lessons moved to Thursday evening",
]
QUERIES = ["cats", "taxes and money", "railway journey", "dinner", "music lessons"]
# metadata values shared by every scope: equal, look-alike and typed-apart values (1, 1.0, True, "1")
TAGS: list[Any] = ["x", "X", "x ", 1, 1.0, True, "1", None, 0, False, "ü"]


def examples(n: int) -> int:
    return n * SCALE


def slow_settings(n: int) -> Any:
    # Each example builds a store: shrinking a failure can take minutes (OM_NO_SHRINK=1 skips it).
    phases = [p for p in Phase if not (p is Phase.shrink and os.environ.get("OM_NO_SHRINK"))]
    return settings(
        max_examples=examples(n),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        print_blob=True,
        phases=phases,
    )


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    """Count the hypothesis cases run by this module: printed, and written to ``$OM_RELIABILITY_OUT``."""
    yield
    totals = {
        "isolation_cases": sum(CASES.values()),
        "by_test": dict(sorted(CASES.items())),
        "scale": SCALE,
    }
    out = os.environ.get("OM_RELIABILITY_OUT")
    if out:
        Path(out).write_text(json.dumps(totals, indent=1) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nisolation/deletion cases tried: {json.dumps(totals)}")


def open_store(path: Path, embedder: Any, **options: Any) -> om.OpticalMemory:
    return om.open(path, config=StoreConfig.tiny(aging=AGING, **options), embedder=embedder)


def sql_engine(store: om.OpticalMemory) -> Engine:
    """An engine of our own on the store's database (read-only use; the store keeps its own)."""
    return create_engine(store.config.database_url or f"sqlite:///{store.path / 'memory.db'}")


# -- the world a plan builds, and what it should look like ---------------------------------------------------


@dataclass(frozen=True)
class Entry:
    scope: int  # index into SCOPES
    kind: str  # "turn" | "document"
    tag: Any
    topic: int
    n: int  # turns added in one add_many (documents: paragraphs of the one document)
    ttl: float | None
    age_after: bool


@dataclass(frozen=True)
class Plan:
    scopes: tuple[int, ...]
    entries: tuple[Entry, ...]
    final_age: bool
    liar: bool  # memories carry a metadata "scope" naming another scope


@st.composite
def plans(draw: Any, *, max_entries: int = 12, ttls: Sequence[float | None] = (None,)) -> Plan:
    scopes = tuple(draw(st.lists(st.integers(0, len(SCOPES) - 1), min_size=2, max_size=4, unique=True)))
    entry = st.builds(
        Entry,
        scope=st.sampled_from(scopes),
        kind=st.sampled_from(["turn", "turn", "document"]),
        tag=st.sampled_from(TAGS),
        topic=st.integers(0, len(TOPICS) - 1),
        n=st.integers(1, 4),
        ttl=st.sampled_from(list(ttls)),
        age_after=st.booleans(),
    )
    entries = draw(st.lists(entry, min_size=2, max_size=max_entries))
    entries[:2] = [replace(entries[0], scope=scopes[0]), replace(entries[1], scope=scopes[1])]
    final_age, liar = draw(st.booleans()), draw(st.booleans())
    return Plan(scopes=scopes, entries=tuple(entries), final_age=final_age, liar=liar)


@dataclass
class World:
    owner: dict[int, str] = field(default_factory=dict)  # memory id -> scope
    kind: dict[int, str] = field(default_factory=dict)
    role: dict[int, str | None] = field(default_factory=dict)
    meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    marker: dict[int, str] = field(default_factory=dict)  # a word unique to each memory
    expires: dict[int, float] = field(default_factory=dict)  # memories with a ttl: when they run out
    scopes: list[str] = field(default_factory=list)
    t0: float = 0.0

    def ids(self, scopes: Sequence[str] | None = None) -> set[int]:
        return {i for i, s in self.owner.items() if scopes is None or s in scopes}


def build(store: om.OpticalMemory, plan: Plan) -> World:
    world = World(scopes=list(dict.fromkeys(SCOPES[e.scope] for e in plan.entries)), t0=time.time())
    serial = 0
    for number, e in enumerate(plan.entries):
        scope = SCOPES[e.scope]
        items = []
        for j in range(1 if e.kind == "document" else e.n):
            serial += 1
            mark = f"mq{serial:04d}w{uuid.uuid4().hex[:6]}"
            body = f"{TOPICS[e.topic]}, note {MARKERS[e.scope]} {mark}."
            if e.kind == "document":  # long enough to need a second page now and then
                body = " ".join([body] + [f"{TOPICS[(e.topic + k) % len(TOPICS)]}." for k in range(3 * e.n)])
            meta: dict[str, Any] = {"tag": e.tag, "owner": MARKERS[e.scope], "mark": mark}
            if plan.liar:  # a metadata "scope" that lies: nothing may take it for the real one
                meta["scope"] = SCOPES[plan.scopes[(plan.scopes.index(e.scope) + 1) % len(plan.scopes)]]
            role = None if e.kind == "document" else ("user", "assistant")[j % 2]
            items.append(
                {
                    "text": body,
                    "role": role,
                    "metadata": meta,
                    "timestamp": world.t0 + number,
                    "ttl": e.ttl,
                }
            )
        ids = store.add_many(items, scope=scope, kind=e.kind)  # type: ignore[arg-type]
        for mid, item in zip(ids, items, strict=True):
            world.owner[mid] = scope
            world.kind[mid] = e.kind
            world.role[mid] = item["role"]
            world.meta[mid] = item["metadata"]
            world.marker[mid] = item["metadata"]["mark"]
            if e.ttl is not None:
                world.expires[mid] = item["timestamp"] + e.ttl
        if e.age_after:
            store.age()
    if plan.final_age:
        store.age()
    return world


def foreign_markers(text: str, allowed: Sequence[str]) -> list[str]:
    """The scope markers in ``text`` of scopes not in ``allowed``."""
    return [m for m in MARKERS if m in text and SCOPE_OF_MARKER[m] not in allowed]


def json_equal(meta: Mapping[str, Any], key: str, value: Any) -> bool:
    """``memories()``'s documented filter semantics: the key is there and holds that JSON scalar."""
    if key not in meta:
        return False
    actual = meta[key]
    if value is None:
        return actual is None
    if isinstance(value, bool):
        return isinstance(actual, bool) and actual == value
    if isinstance(value, (int, float)):
        return isinstance(actual, (int, float)) and not isinstance(actual, bool) and actual == value
    return isinstance(actual, str) and actual == value


def image_key(image: Image.Image) -> str:
    return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()


def page_keys_by_scope(store: om.OpticalMemory, engine: Engine) -> dict[str, set[str]]:
    """Each scope's page images (as pixel hashes), read from the rows and the blob files themselves."""
    keys: dict[str, set[str]] = {}
    with engine.connect() as con:
        rows = con.execute(sql("SELECT scope, blob FROM pages WHERE blob IS NOT NULL")).all()
    for scope, blob in rows:
        with Image.open(store.blobs.path(blob)) as image:
            keys.setdefault(scope, set()).add(image_key(image))
    return keys


def check_structure(engine: Engine) -> None:
    """Pages, spans and vectors never mix scopes."""
    with engine.connect() as con:
        mixed_spans = con.execute(
            sql(
                "SELECT s.id FROM spans s JOIN pages p ON p.id = s.page_id "
                "JOIN memories m ON m.id = s.memory_id WHERE p.scope <> m.scope"
            )
        ).all()
        mixed_vectors = con.execute(
            sql(
                "SELECT e.id FROM embeddings e JOIN memories m ON m.id = e.memory_id WHERE e.scope <> m.scope"
            )
        ).all()
    assert not mixed_spans and not mixed_vectors, (mixed_spans, mixed_vectors)


# -- (a) isolation -------------------------------------------------------------------------------------------

FILTER_KINDS = ["none", "tag", "kind", "own-owner", "foreign-owner", "liar-scope", "role"]


def make_filters(choice: str, tag: Any, world: World, allowed: Sequence[str], other: str) -> dict[str, Any]:
    if choice == "tag":
        return {"tag": tag}
    if choice == "kind":
        return {"kind": "document" if tag in (1, "x", None) else "turn"}
    if choice == "own-owner":
        return {"owner": MARKERS[SCOPES.index(allowed[0])]}
    if choice == "foreign-owner":  # names another scope's marker: must find nothing
        return {"owner": MARKERS[SCOPES.index(other)]}
    if choice == "liar-scope":  # metadata "scope" equal to another scope's name
        return {"scope": other}
    if choice == "role":
        return {"role": "user"}
    return {}


def sql_match(world: World, mid: int, filters: Mapping[str, Any]) -> bool:
    """The filter semantics ``search`` and ``memories()`` share: kind, role, typed JSON for metadata."""
    for key, value in filters.items():
        if key == "kind":
            if world.kind[mid] != value:
                return False
        elif key == "role":
            if world.role[mid] != value:
                return False
        elif not json_equal(world.meta[mid], key, value):
            return False
    return True


def check_reads(
    store: om.OpticalMemory,
    world: World,
    scope_arg: Any,
    allowed: Sequence[str],
    query: str,
    filters: dict[str, Any],
    pages: Mapping[str, set[str]],
) -> None:
    """Every read path for ``scope_arg`` returns exactly the allowed scopes' memories, and no other text."""
    everything = len(world.owner) + 5
    hits = store.search(query, k=everything, scope=scope_arg, filters=filters or None)
    expected = {i for i in world.ids(allowed) if sql_match(world, i, filters)}
    assert {h.id for h in hits} == expected, (scope_arg, filters)
    for h in hits:
        assert h.scope == world.owner[h.id] and h.scope in allowed
        assert h.metadata == world.meta[h.id]
    listed = store.memories(scope=scope_arg, filters=filters or None)
    assert {m.id for m in listed} == {i for i in world.ids(allowed) if sql_match(world, i, filters)}
    assert all(m.scope == world.owner[m.id] for m in listed)
    for h in hits[:6]:
        text = store.recall(h.id).text
        assert world.marker[h.id] in text and not foreign_markers(text, [h.scope]), text
        if h.page_id is not None:
            page = store.page_text(h.page_id)
            assert page is not None and not foreign_markers(page, [h.scope]), page
            shown = store.page_image(h.id, page_id=h.page_id)
            assert all(image_key(img) in pages.get(h.scope, set()) for img in shown)
        for img in store.page_image(h.id):
            assert image_key(img) in pages.get(h.scope, set())


def check_context(store: om.OpticalMemory, world: World, scope: str, query: str, pages: Any) -> None:
    mine = world.ids([scope])
    ctx = store.build_context(query, budget_tokens=6000, scope=scope, k=50)
    text = "\n".join(p["text"] for p in ctx.parts if p["type"] == "text")
    assert not foreign_markers(text, [scope]), text
    assert {i.id for i in ctx.items} <= mine
    bands = store.build_context(query, budget_tokens=6000, scope=scope, k=50, mode="image")
    assert {i.id for i in bands.items} <= mine
    assert not foreign_markers(" ".join(p["text"] for p in bands.parts if p["type"] == "text"), [scope])
    # whole pages, to compare pixels with the scope's own pages (bands are cut from the pages of these hits)
    shown = store.build_context(query, budget_tokens=6000, scope=scope, k=50, mode="image", crop_margin=None)
    assert {i.id for i in shown.items} <= mine
    for part in shown.parts:
        if part["type"] == "image_url":
            data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
            with Image.open(io.BytesIO(data)) as image:
                assert image_key(image) in pages.get(scope, set())
        else:
            assert not foreign_markers(part["text"], [scope])
    recent = store.recent_turns(scope)
    assert {r.id for r in recent} <= mine and not foreign_markers(" ".join(r.text for r in recent), [scope])


def check_langchain(store: om.OpticalMemory, world: World, scope: str, query: str, filters: Any) -> None:
    from optical_memory.adapters.langchain import OpticalChatMessageHistory, OpticalMemoryRetriever

    mine = world.ids([scope])
    for mode in ("text", "image"):
        retriever = OpticalMemoryRetriever(store=store, scope=scope, k=50, filters=filters or None, mode=mode)
        for doc in retriever.invoke(query):
            assert doc.id is not None and int(doc.id) in mine
            assert doc.metadata["scope"] == scope and not foreign_markers(doc.page_content, [scope])
    history = OpticalChatMessageHistory(store, session_id=scope, budget_tokens=4000, auto_age=False)
    text = "\n".join(str(m.content) for m in history.messages)
    assert not foreign_markers(text, [scope]), text


async def check_mcp(store: om.OpticalMemory, world: World, query: str) -> None:
    from mcp import Client
    from mcp.shared.exceptions import MCPError

    from optical_memory.adapters.mcp import make_server

    def text_of(result: Any) -> str:
        return "\n".join(getattr(p, "text", "") for p in result.content)

    mine, theirs = world.scopes[0], world.scopes[1]
    their_ids = sorted(world.ids([theirs]))
    async with Client(make_server(store, only_scope=mine, age_on_remember=False)) as client:
        found = await client.call_tool("search_memory", {"query": query, "k": 100})
        hits = (found.structured_content or {})["hits"]
        assert {h["id"] for h in hits} == world.ids([mine])
        assert all(h["scope"] == mine and not foreign_markers(h["snippet"] or "", [mine]) for h in hits)
        ctx = await client.call_tool("build_context", {"query": query, "budget_tokens": 6000, "k": 50})
        assert not foreign_markers(text_of(ctx), [mine])
        items = (ctx.structured_content or {})["items"]
        assert {i["id"] for i in items} <= world.ids([mine])
        for args in ({"query": query, "scope": theirs},):
            refused = await client.call_tool("search_memory", args)
            assert refused.is_error and not foreign_markers(text_of(refused), [mine])
        for mid in their_ids[:2]:
            refused = await client.call_tool("recall_memory", {"id": mid})
            assert refused.is_error and not foreign_markers(text_of(refused), [mine])
            info = store.memory_info(mid)
            if info.tier not in ("text", "forgotten"):
                page = store.search(TOPICS[0], scope=theirs, k=100)
                for hit in page:
                    if hit.id == mid and hit.page_id is not None:
                        with pytest.raises(MCPError):
                            await client.read_resource(f"optical-memory://memories/{mid}/pages/{hit.page_id}")
        listed = await client.read_resource("optical-memory://scopes")
        assert json.loads(listed.contents[0].text) == [mine]  # type: ignore[union-attr]
    async with Client(make_server(store, age_on_remember=False)) as client:
        for scope in world.scopes:
            found = await client.call_tool("search_memory", {"query": query, "k": 100, "scope": scope})
            hits = (found.structured_content or {})["hits"]
            assert {h["id"] for h in hits} == world.ids([scope])
            ctx = await client.call_tool("build_context", {"query": query, "scope": scope, "k": 50})
            assert not foreign_markers(text_of(ctx), [scope])


@slow_settings(4)
@given(plan=plans(), data=st.data())
def test_no_read_path_returns_another_scopes_data(tmp_path_factory, embedder, plan, data):
    CASES["isolation_reads"] += 1
    with open_store(tmp_path_factory.mktemp("iso"), embedder, retain_text=True) as store:
        world = build(store, plan)
        engine = sql_engine(store)
        try:
            check_structure(engine)
            pages = page_keys_by_scope(store, engine)
        finally:
            engine.dispose()
        absent = [s for s in SCOPES if s not in world.scopes]
        for _ in range(2):
            how = data.draw(st.sampled_from(["one", "list", "tuple", "set", "all"]), label="scope form")
            chosen = data.draw(
                st.lists(st.sampled_from(world.scopes), min_size=1, max_size=len(world.scopes)),
                label="scopes",
            )
            scope_arg: Any = {
                "one": chosen[0],
                "list": chosen,
                "tuple": tuple(chosen),
                "set": frozenset(chosen),
                "all": None,
            }[how]
            allowed = world.scopes if how == "all" else ([chosen[0]] if how == "one" else chosen)
            other = data.draw(st.sampled_from(world.scopes), label="other scope")
            choice = data.draw(st.sampled_from(FILTER_KINDS), label="filter")
            tag = data.draw(st.sampled_from(TAGS), label="tag")
            filters = make_filters(choice, tag, world, allowed, other)
            query = data.draw(st.sampled_from(QUERIES), label="query")
            check_reads(store, world, scope_arg, allowed, query, filters, pages)
            # a look-alike of a stored scope that was never written to is unknown, not its twin
            ghost = data.draw(st.sampled_from(absent), label="absent scope")
            for method, args, kwargs in (
                (store.search, (query,), {"scope": ghost}),
                (store.search, (query,), {"scope": [chosen[0], ghost]}),
                (store.memories, (), {"scope": [*chosen, ghost]}),
                (store.build_context, (query,), {"budget_tokens": 500, "scope": ghost}),
                (store.recent_turns, (ghost,), {}),
            ):
                with pytest.raises(om.ScopeNotFound):
                    method(*args, **kwargs)
        for scope in world.scopes[:2]:
            query = data.draw(st.sampled_from(QUERIES), label="context query")
            check_context(store, world, scope, query, pages)
            filters = make_filters(
                data.draw(st.sampled_from(FILTER_KINDS)),
                data.draw(st.sampled_from(TAGS)),
                world,
                [scope],
                scope,
            )
            check_langchain(store, world, scope, query, filters)
        for mid, scope in world.owner.items():
            assert store.memory_info(mid).scope == scope


@slow_settings(2)
@given(plan=plans(max_entries=8))
def test_mcp_tools_keep_to_their_scope(tmp_path_factory, embedder, plan):
    """The MCP server in process (the SDK's in-memory client): a one-scope server and a plain one."""
    pytest.importorskip("mcp")
    CASES["isolation_mcp"] += 1
    with open_store(tmp_path_factory.mktemp("mcp"), embedder, retain_text=True) as store:
        world = build(store, plan)
        asyncio.run(check_mcp(store, world, QUERIES[plan.entries[0].topic]))


# -- (a) LangGraph namespaces --------------------------------------------------------------------------------

NAMESPACES: list[tuple[str, ...]] = [
    ("a",),
    ("a ",),
    ("A",),
    ("\u0430",),
    ("\u00e4",),
    ("a\u0308",),
    ("a", "b"),
    ("a/b",),
    ("a%2Fb",),
    ("a", "b", "c"),
    ("a b",),
    ("a%20b",),
    ("t", "a"),  # the scope "t/a": also namespace ("a",) of the adapter with scope_prefix "t"
    ("*",),
    ("users", "ingrid"),
]
assert len(set(NAMESPACES)) == len(NAMESPACES)
KEYS = ["k", "K", "k ", "kä"]


@dataclass(frozen=True)
class GraphOp:
    adapter: int  # 0: scope_prefix "", 1: scope_prefix "t", 2: the bare store, in a namespace's scope
    namespace: int
    key: int
    delete: bool


@slow_settings(3)
@given(
    ops=st.lists(
        st.builds(
            GraphOp,
            adapter=st.integers(0, 2),
            namespace=st.integers(0, len(NAMESPACES) - 1),
            key=st.integers(0, len(KEYS) - 1),
            delete=st.sampled_from([False, False, False, True]),
        ),
        min_size=2,
        max_size=14,
    ),
    age_every=st.integers(1, 5),
)
def test_langgraph_namespaces_never_see_each_other(tmp_path_factory, embedder, ops, age_every):
    pytest.importorskip("langgraph")
    from optical_memory.adapters.langgraph import OpticalMemoryStore

    CASES["isolation_langgraph"] += 1
    with open_store(tmp_path_factory.mktemp("lg"), embedder, retain_text=True) as store:
        adapters = [
            OpticalMemoryStore(store, age_on_write=False),
            OpticalMemoryStore(store, scope_prefix="t", age_on_write=False),
        ]
        model: list[dict[tuple[tuple[str, ...], str], dict[str, Any]]] = [{}, {}]
        for number, op in enumerate(ops):
            ns, key = NAMESPACES[op.namespace], KEYS[op.key]
            word = f"ng{number:03d}v"  # a word for this value only
            if op.adapter == 2:  # the bare store writes into the scope an adapter would use
                store.add(f"raw note {word} about {key}", scope="/".join(ns), metadata={"langgraph_key": key})
                continue
            if op.delete:
                adapters[op.adapter].delete(ns, key)
                model[op.adapter].pop((ns, key), None)
            else:
                value = {"text": f"{TOPICS[number % len(TOPICS)]} {word}", "n": number}
                adapters[op.adapter].put(ns, key, value)
                model[op.adapter][(ns, key)] = value
            if number % age_every == 0:
                store.age()
        for lg, items in zip(adapters, model, strict=True):
            for ns in NAMESPACES:
                for key in KEYS:
                    got = lg.get(ns, key)
                    assert (got.value if got else None) == items.get((ns, key)), (lg.scope_prefix, ns, key)
            for prefix in [(), ("a",), ("t",), ("a", "b"), ("A",), ("users",)]:
                wanted = {k: v for k, v in items.items() if k[0][: len(prefix)] == prefix}
                listed = lg.search(prefix, limit=100)
                assert {(i.namespace, i.key): i.value for i in listed} == wanted, (lg.scope_prefix, prefix)
                found = lg.search(prefix, query="what was noted", limit=100)
                assert {(i.namespace, i.key): i.value for i in found} == wanted, (lg.scope_prefix, prefix)
            assert lg.list_namespaces(limit=100) == sorted({ns for ns, _ in items})


# -- (b) deletion leaves nothing behind ----------------------------------------------------------------------

BLOB_SUFFIXES = (".png", ".npy")
# Columns allowed to name what was deleted, and why. index_log records the vector ids each generation removed
# from the FAISS index, so that other processes can catch up (scopes are named there by a hash, never by
# name: test_delete_scope_leaves_no_trace_of_its_name).
TOMBSTONES = {("index_log", "removed")}


def walk(value: Any) -> Iterator[str | bytes]:
    """Every string and byte string inside a cell (JSON cells walked, keys included)."""
    if isinstance(value, memoryview):
        value = value.tobytes()
    if isinstance(value, (str, bytes)):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from walk(k)
            yield from walk(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from walk(v)


def dump(engine: Engine) -> tuple[MetaData, dict[str, list[dict[str, Any]]]]:
    """Every row of every table there is (reflected: a table added later is covered too)."""
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as con:
        rows = {name: [dict(r._mapping) for r in con.execute(t.select())] for name, t in meta.tables.items()}
    return meta, rows


def references(meta: MetaData, target: str) -> list[tuple[str, str]]:
    """(table, column) pairs holding ids of ``target``'s rows: its own key and every foreign key to it."""
    found = [(target, c.name) for c in meta.tables[target].primary_key.columns]
    for name, table in meta.tables.items():
        for fk in table.foreign_keys:
            if fk.column.table.name == target:
                found.append((name, fk.parent.name))
    return found


@dataclass
class Gone:
    """What was deleted so far: none of it may be found anywhere."""

    memories: set[int] = field(default_factory=set)
    pages: set[int] = field(default_factory=set)  # pages that held only deleted memories
    vectors: set[int] = field(default_factory=set)
    scopes: set[str] = field(default_factory=set)
    markers: set[str] = field(default_factory=set)


def snapshot(engine: Engine) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """{page id: its memory ids}, {memory id: its vector ids}."""
    pages: dict[int, set[int]] = {}
    vectors: dict[int, set[int]] = {}
    with engine.connect() as con:
        for page_id, memory_id in con.execute(sql("SELECT page_id, memory_id FROM spans")):
            pages.setdefault(page_id, set()).add(memory_id)
        for vector_id, memory_id in con.execute(sql("SELECT id, memory_id FROM embeddings")):
            vectors.setdefault(memory_id, set()).add(vector_id)
    return pages, vectors


def record(
    gone: Gone, world: World, engine: Engine, before: Any, deleted: set[int], scopes: set[str]
) -> None:
    pages, vectors = before
    gone.memories |= deleted
    gone.scopes |= scopes
    gone.markers |= {world.marker[i] for i in deleted}
    gone.vectors |= {v for i in deleted for v in vectors.get(i, set())}
    gone.pages |= {p for p, members in pages.items() if members <= gone.memories}


def index_ids(index: VectorIndex) -> dict[str, set[int]]:
    return {
        scope: set(faiss.vector_to_array(sub.id_map).tolist())
        for scope, sub in index._scopes.items()  # the per-scope FAISS sub-indexes
    }


def check_nothing_left(store: om.OpticalMemory, gone: Gone, world: World) -> None:
    engine = sql_engine(store)
    try:
        meta, rows = dump(engine)
    finally:
        engine.dispose()
    # 1. no row refers to a deleted memory, page or vector, in any table
    for target, dead in (("memories", gone.memories), ("pages", gone.pages), ("embeddings", gone.vectors)):
        for table, column in references(meta, target):
            left = {r[column] for r in rows[table]} & dead
            assert not left, f"{table}.{column} still holds deleted {target} ids {sorted(left)}"
    # 2. no cell anywhere holds a deleted memory's text or metadata, nor a deleted scope's name
    referenced: set[str] = set()
    for table, table_rows in rows.items():
        for row in table_rows:
            for column, cell in row.items():
                for piece in walk(cell):
                    as_text = piece.decode("latin-1") if isinstance(piece, bytes) else piece
                    if as_text.endswith(BLOB_SUFFIXES):
                        referenced.add(as_text)
                    hit = [m for m in gone.markers if m in as_text]
                    assert not hit, f"{table}.{column} still holds text of deleted memories {hit}: {row}"
                    if (table, column) not in TOMBSTONES:
                        assert as_text not in gone.scopes, f"{table}.{column} names a deleted scope: {row}"
    # 3. the blob folder on disk: every file is referenced by a row, and nothing is half-written
    root = store.path / "blobs"  # blobs live in fan-out folders; a lock file may sit at the root
    on_disk = {
        p.name
        for p in root.rglob("*")
        if p.is_file() and (p.parent != root or p.name.endswith(BLOB_SUFFIXES) or p.name.startswith(".tmp"))
    }
    orphans = on_disk - referenced
    assert not orphans, f"blob files no row refers to: {sorted(orphans)}"
    assert {n for n in referenced if n.endswith(BLOB_SUFFIXES)} <= on_disk | {""}, "rows name missing blobs"
    # 4. the FAISS index holds exactly the vectors in SQL, per scope, and none of the deleted ones
    in_sql: dict[str, set[int]] = {}
    for row in rows["embeddings"]:
        in_sql.setdefault(row["scope"], set()).add(row["id"])
    in_index = {s: ids for s, ids in index_ids(store.index).items() if ids}
    assert in_index == in_sql
    assert not (set(store.index._scopes) & gone.scopes), "a deleted scope keeps a FAISS sub-index"
    # 5. the public API agrees
    assert {m.id for m in store.memories()} == world.ids() - gone.memories
    for mid in sorted(gone.memories)[:5]:
        with pytest.raises(om.MemoryNotFound):
            store.recall(mid)
    assert not (set(store.scopes()) & gone.scopes)


def check_files_after_close(path: Path, gone: Gone, sqlite: bool) -> None:
    """The index file on disk, and for SQLite the raw database bytes, after ``close()``."""
    data = (path / "index.faiss").read_bytes()
    assert data.startswith(b"OPTICAL-MEMORY-INDEX 1\n")
    end = data.index(b"\n", len(b"OPTICAL-MEMORY-INDEX 1\n"))
    header = json.loads(data[len(b"OPTICAL-MEMORY-INDEX 1\n") : end])
    names = [s[0] for s in header["scopes"]]
    assert not (set(names) & gone.scopes), f"the index file still names deleted scopes {names}"
    offset, payload = 0, data[end + 1 :]
    for _name, nbytes, _ in header["scopes"]:
        sub = faiss.deserialize_index(np.frombuffer(payload[offset : offset + nbytes], dtype=np.uint8))
        offset += nbytes
        ids = set(faiss.vector_to_array(sub.id_map).tolist())
        assert not (ids & gone.vectors), "the index file still holds deleted vectors"
    if sqlite:
        for file in sorted(path.glob("memory.db*")):
            raw = file.read_bytes()
            left = [m for m in gone.markers if m.encode() in raw]
            assert not left, f"{file.name} still holds the bytes of deleted memories {left}"


@dataclass(frozen=True)
class DeleteOp:
    what: str  # "delete" | "delete_scope" | "age"
    pick: int


delete_ops = st.lists(
    st.builds(
        DeleteOp,
        what=st.sampled_from(["delete", "delete", "delete", "delete_scope", "age"]),
        pick=st.integers(0, 10**6),
    ),
    min_size=1,
    max_size=6,
)


def run_deletions(store: om.OpticalMemory, plan: Plan, ops: Sequence[DeleteOp], *, sqlite: bool) -> Gone:
    world = build(store, replace(plan, liar=False))  # a lying metadata "scope" would read as a leak here
    gone = Gone()
    engine = sql_engine(store)
    try:
        for number, op in enumerate(ops):
            before = snapshot(engine)
            live = sorted(world.ids() - gone.memories)
            scopes = sorted(set(store.scopes()))
            if op.what == "delete" and live:
                victim = live[op.pick % len(live)]
                store.delete(victim)
                record(gone, world, engine, before, {victim}, set())
            elif op.what == "delete_scope" and scopes:
                scope = scopes[op.pick % len(scopes)]
                assert store.delete_scope(scope) == len([i for i in live if world.owner[i] == scope])
                record(gone, world, engine, before, {i for i in live if world.owner[i] == scope}, {scope})
            elif op.what == "age":  # expiry: memories whose ttl ran out by then are deleted
                now = world.t0 + 40 * (number + 1)
                expired = {i for i in live if world.expires.get(i, now + 1) <= now}
                assert store.age(now=now)["expired"] == len(expired)
                record(gone, world, engine, before, expired, set())
            check_nothing_left(store, gone, world)
    finally:
        engine.dispose()
    return gone


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny DeepSeek-OCR checkpoint of random weights: a real encoder, so pages get vision-token blobs."""
    from optical_memory.model import OCRConfig
    from optical_memory.model.testing import random_model, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("deepseek-ocr"), random_model(OCRConfig.tiny(), seed=3))


def vision_options(checkpoint: Path) -> dict[str, Any]:
    return {"encoder": "deepseek-ocr", "model_dir": str(checkpoint), "model_dtype": "float32"}


@slow_settings(6)
@given(
    plan=plans(max_entries=10, ttls=(None, None, 50.0, 1e7)),
    ops=delete_ops,
    retain=st.booleans(),
    vision=st.booleans(),
)
def test_deletion_leaves_nothing_behind(tmp_path_factory, embedder, checkpoint, plan, ops, retain, vision):
    CASES["deletion_sqlite"] += 1
    path = tmp_path_factory.mktemp("del") / "store"
    options = {"retain_text": retain, **(vision_options(checkpoint) if vision else {})}
    with open_store(path, embedder, **options) as store:
        gone = run_deletions(store, plan, ops, sqlite=True)
    check_files_after_close(path, gone, sqlite=True)
    with open_store(path, embedder, **options) as store:  # reopened: the saved index is the one checked
        report = store.verify()
        assert report.ok and not report.orphan_blobs and not report.index_rebuilt, report
        assert not (set(index_ids(store.index)) & gone.scopes)
        assert not set().union(*index_ids(store.index).values()) & gone.vectors


def test_repacking_the_open_page_sweeps_its_vision_tokens(tmp_path, embedder, checkpoint):
    """Found by test_deletion_leaves_nothing_behind: ``age`` re-lays the open page out, deleting its row, and
    its vision row went with it by cascade while its ``.npy`` blob stayed on disk, unreferenced (holding the
    encoded pixels of lines that a later ``delete`` would otherwise remove)."""
    with open_store(tmp_path / "store", embedder, **vision_options(checkpoint)) as store:
        store.add_many(["first turn about cats", "second turn about dogs", "third"], scope="a")
        assert store.age()["encoded"] == 1
        store.add_many(["fourth turn about tax", "fifth"], scope="a")
        assert store.age()["encoded"] == 1
        on_disk = {p.name for p in (store.path / "blobs").rglob("*.npy")}
        engine = sql_engine(store)
        try:
            with engine.connect() as con:
                rows = {b for (b,) in con.execute(sql("SELECT blob FROM vision"))}
        finally:
            engine.dispose()
        assert on_disk == rows and len(rows) == 1 and store.verify().ok


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="OPTICAL_MEMORY_TEST_PG_URL is not set (no PostgreSQL server)")
@slow_settings(3)
@given(plan=plans(max_entries=8, ttls=(None, 50.0)), ops=delete_ops, retain=st.booleans())
def test_deletion_leaves_nothing_behind_on_postgres(tmp_path_factory, embedder, plan, ops, retain):
    CASES["deletion_postgres"] += 1
    path = tmp_path_factory.mktemp("pgdel") / "store"
    with pg_database("om_iso") as url:
        options = {"retain_text": retain, "database_url": url}
        with open_store(path, embedder, **options) as store:
            gone = run_deletions(store, plan, ops, sqlite=False)
        check_files_after_close(path, gone, sqlite=False)
        with open_store(path, embedder, **options) as store:
            report = store.verify()
            assert report.ok and not report.orphan_blobs, report


# -- (b) the SQLite file itself ------------------------------------------------------------------------------


def _fill_and_delete(path: Path, embedder: Any) -> tuple[list[str], list[str]]:
    """A store whose deleted memories' text was in the database (retain_text): (gone, kept) markers."""
    gone_marks = [f"gonezz{i:03d}" for i in range(12)]
    kept_marks = [f"keptzz{i:03d}" for i in range(6)]
    with open_store(path, embedder, retain_text=True) as store:
        doomed = store.add_many([f"{TOPICS[i % 5]} {m}" for i, m in enumerate(gone_marks[:6])], scope="a")
        store.add_many([f"{TOPICS[i % 5]} {m}" for i, m in enumerate(gone_marks[6:])], scope="b")
        store.add_many([f"{TOPICS[i % 5]} {m}" for i, m in enumerate(kept_marks)], scope="c")
        store.age()
        for mid in doomed:
            store.delete(mid)
        store.delete_scope("b")
    return gone_marks, kept_marks


def test_deleted_text_is_not_left_in_the_sqlite_file(tmp_path, embedder):
    """After delete + close, the raw bytes of the database (and any WAL) hold no deleted text, while the
    text of the memories kept is found by the same scan (it is not blind). The store turns SQLite's
    ``secure_delete`` on (its own default is off, e.g. on macOS) and truncates the WAL after deleting."""
    path = tmp_path / "store"
    gone_marks, kept_marks = _fill_and_delete(path, embedder)
    raw = b"".join(f.read_bytes() for f in sorted(path.glob("memory.db*")))
    assert [m for m in kept_marks if m.encode() in raw] == kept_marks
    assert [m for m in gone_marks if m.encode() in raw] == []


def test_deleted_text_leaves_the_wal_while_the_store_is_open(tmp_path, embedder):
    """The same scan with the store still open: the write-ahead log holds no deleted text either."""
    path = tmp_path / "store"
    with open_store(path, embedder) as store:
        store.add("the first note mentions QUOKKA", scope="a")
        store.add("a note to keep about WOMBAT", scope="a")
        mid = store.add("a note about ECHIDNA", scope="a")
        with store._engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
        store.delete(mid)
        raw = b"".join(f.read_bytes() for f in sorted(path.glob("memory.db*")))
        assert b"WOMBAT" in raw and b"ECHIDNA" not in raw


def test_delete_scope_leaves_no_trace_of_its_name(tmp_path, embedder):
    """A scope name is often a user's identifier: once the scope is deleted, no table holds it, not even the
    index change log (which names scopes by a hash of the name)."""
    name = "user-ingrid@example.com"
    with open_store(tmp_path / "store", embedder) as store:
        store.add("Ingrid's note about the tax return", scope=name)
        store.add("someone else's note", scope="b")
        store.delete_scope(name)
        engine = sql_engine(store)
        try:
            _, rows = dump(engine)
        finally:
            engine.dispose()
    naming = sorted(
        {(t, c) for t, rs in rows.items() for r in rs for c, v in r.items() if name in set(walk(v))}
    )
    assert naming == [], naming


# -- slow: the real OCR reader -------------------------------------------------------------------------------

WORDS = {"a": "PELICAN", "a ": "ZEPPELIN", "A": "MAGNOLIA"}


@pytest.mark.slow
def test_ocr_reads_back_only_the_scopes_own_pages_and_deleted_lines_are_gone(tmp_path, embedder, reader):
    """recall(read=True) reads pages with RapidOCR, and what it and build_context return
    belongs to the scope asked for; after delete, the redacted shared page no longer shows the deleted
    memory's words, and the recall cache of that page was dropped."""
    config = StoreConfig.tiny(aging=AgingPolicy(text_turns=1, tiers=(Tier(side=256, max_turns=50),)))
    with om.open(tmp_path / "store", config=config, embedder=embedder, reader=reader) as store:
        ids: dict[str, list[int]] = {}
        for scope, word in WORDS.items():
            ids[scope] = store.add_many([f"{word} note {i} {word}" for i in range(4)], scope=scope)
        store.age()
        for scope, word in WORDS.items():
            others = [w for s, w in WORDS.items() if s != scope]
            for mid in ids[scope][:3]:
                r = store.recall(mid, read=True)  # the page image, though the open page keeps text
                assert r.source == reader.name and not any(w in r.text.upper() for w in others), r
            ctx = store.build_context(word.lower(), budget_tokens=2000, scope=scope)
            text = " ".join(p["text"] for p in ctx.parts).upper()
            assert word in text and not any(w in text for w in others), text
        # delete one memory of a shared page: its lines are blanked and the page's cached reading dropped
        victim, neighbour = ids["a"][0], ids["a"][1]
        [page_id] = {h.page_id for h in store.search("note", scope="a", k=10) if h.id == victim}
        engine = sql_engine(store)
        try:
            with engine.connect() as con:
                cached = "SELECT count(*) FROM recalls WHERE page_id = :p"
                assert con.execute(sql(cached), {"p": page_id}).scalar_one() == 1
            store.delete(victim)
            with engine.connect() as con:
                assert con.execute(sql(cached), {"p": page_id}).scalar_one() == 0
        finally:
            engine.dispose()
        [page] = store.page_image(neighbour)
        seen = " ".join(t.text for t in reader.read([page])[0]).upper()
        assert "NOTE 0" not in seen and ("NOTE 1" in seen or "NOTE 2" in seen), seen
