"""The LangGraph store over a real store (tiny pages, real SQLite, FAISS and MiniLM): LangGraph's store
semantics (checked against LangGraph's own InMemoryStore where both define them), the forgetting ladder
under ttl, bad input, concurrency from async code, and a compiled StateGraph using it as its store."""

from __future__ import annotations

import asyncio
import time
from datetime import timezone
from typing import TypedDict

import pytest
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

import optical_memory as om
from optical_memory.adapters.langgraph import InvalidNamespace, OpticalMemoryStore
from optical_memory.config import StoreConfig

FACTS = {
    "diet": {"text": "Ingrid is allergic to cashews and walnuts.", "kind": "health", "n": 1},
    "db": {"text": "The staging database listens on port 6543.", "kind": "work", "n": 2},
    "dinner": {"text": "Our anniversary dinner is booked at Maison Verte.", "kind": "plans", "n": 3},
    "gym": {"text": "The climbing gym locker combination is 31-07-22.", "kind": "numbers", "n": 4},
    "trip": {"text": "We fly to Reykjavik on a Tuesday morning.", "kind": "plans", "n": 5},
}


@pytest.fixture
def store(tmp_path, embedder):
    with om.open(tmp_path / "store", config=StoreConfig.tiny(retain_text=True), embedder=embedder) as store:
        yield store


@pytest.fixture
def lg(store):
    return OpticalMemoryStore(store)


def fill(target: BaseStore, namespace: tuple[str, ...] = ("users", "ingrid")) -> None:
    target.batch([PutOp(namespace, key, value) for key, value in FACTS.items()])


# -- items


def test_put_get_round_trips_exact_values(lg, store):
    value = {
        "text": "Tromsø in winter: −20 °C, 北極光",
        "nested": {"list": [1, 2.5, None, True, {"deep": ["x"]}], "empty": {}},
        "pair": (1, "two"),  # tuples come back as lists, as JSON (and LangGraph's PostgresStore) has it
        "zero": 0,
        "big": 2**62,
    }
    before = time.time()
    lg.put(("users", "ingrid"), "profile", value)
    item = lg.get(("users", "ingrid"), "profile")
    assert item.value == {**value, "pair": [1, "two"]}
    assert (item.key, item.namespace) == ("profile", ("users", "ingrid"))
    assert item.created_at == item.updated_at and item.created_at.tzinfo == timezone.utc
    assert before <= item.created_at.timestamp() <= time.time()
    [memory] = store.memories(scope="users/ingrid")
    assert memory.kind == "document" and memory.tier == "256"
    assert "Tromsø in winter" in store.recall(memory.id).text  # the page shows the fields


def test_overwrite_keeps_created_at_and_moves_updated_at(lg, store):
    lg.put(("a",), "k", {"v": 1})
    first = lg.get(("a",), "k")
    time.sleep(0.01)
    lg.put(("a",), "k", {"v": 2})
    second = lg.get(("a",), "k")
    assert second.value == {"v": 2} and second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert len(store.memories(scope="a")) == 1 and store.stats().pages == 1  # the old page is gone


def test_delete_and_unknown_keys(lg, store):
    lg.put(("a",), "k", {"v": 1})
    assert lg.get(("a",), "nope") is None and lg.get(("b",), "k") is None and lg.get((), "k") is None
    lg.delete(("a",), "nope")  # deleting what is not there is fine
    lg.delete(("a",), "k")
    assert lg.get(("a",), "k") is None
    assert store.stats().memories == 0 and list(store.blobs.names()) == []
    assert lg.list_namespaces() == []  # a namespace without items is not listed (as in PostgresStore)


def test_batch_reads_see_the_store_before_its_puts_and_the_last_put_wins(lg):
    lg.put(("a",), "k", {"v": 0})
    got = lg.batch(
        [
            PutOp(("a",), "k", {"v": 1}),
            GetOp(("a",), "k"),
            PutOp(("a",), "k", {"v": 2}),
            SearchOp(("a",)),
        ]
    )
    assert got[0] is None and got[2] is None
    assert got[1].value == {"v": 0} and [i.value for i in got[3]] == [{"v": 0}]
    assert lg.get(("a",), "k").value == {"v": 2}


# -- search


def test_query_search_ranks_the_right_item_first(lg):
    fill(lg)
    for query, key in [
        ("Which nuts is Ingrid allergic to?", "diet"),
        ("what port does staging use", "db"),
        ("where are we having dinner", "dinner"),
        ("code for my locker", "gym"),
    ]:
        hits = lg.search(("users",), query=query, limit=3)
        assert hits[0].key == key, (query, [h.key for h in hits])
        assert all(isinstance(h.score, float) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    everything = lg.search(("users",), query="Ingrid", limit=10)
    assert len(everything) == 5
    assert [h.key for h in lg.search(("users",), query="Ingrid", limit=2, offset=1)] == [
        h.key for h in everything[1:3]
    ]


FILTERS = [
    {"kind": "plans"},
    {"kind": {"$eq": "plans"}},
    {"kind": {"$ne": "plans"}},
    {"n": {"$gt": 2}},
    {"n": {"$gte": 2}},
    {"n": {"$lt": 4}},
    {"n": {"$lte": 4}},
    {"n": {"$gt": 1, "$lt": 5}},
    {"n": {"$gte": 3}, "kind": "plans"},
    {"kind": "nothing"},
    {"missing": {"$ne": 1}},
]


@pytest.mark.parametrize("flt", FILTERS)
def test_filters_match_langgraphs_in_memory_store(lg, flt):
    reference = InMemoryStore()
    fill(lg)
    fill(reference)
    ours = {i.key for i in lg.search(("users",), filter=flt)}
    assert ours == {i.key for i in reference.search(("users",), filter=flt)}
    assert ours or flt == {"kind": "nothing"}


def test_filters_with_a_query_and_nested_values(lg):
    fill(lg)
    lg.put(("users", "ingrid"), "car", {"text": "Ingrid drives a red Volvo.", "spec": {"color": "red"}})
    hits = lg.search(("users",), query="travel plans", filter={"kind": "plans"})
    assert {h.key for h in hits} == {"dinner", "trip"} and all(h.score is not None for h in hits)
    assert [h.key for h in lg.search(("users",), filter={"spec": {"color": "red"}})] == ["car"]
    assert lg.search(("users",), filter={"spec": {"color": "blue"}}) == []
    assert lg.search(("users",), filter={"n": {"$gt": "a"}}) == []  # a number is never > a str: no match


def test_search_without_query_lists_newest_first_with_limit_and_offset(lg):
    for i in range(7):
        lg.put(("log",), f"k{i}", {"i": i})
    assert [i.key for i in lg.search(("log",))] == [f"k{i}" for i in range(6, -1, -1)]
    assert [i.key for i in lg.search(("log",), limit=3, offset=2)] == ["k4", "k3", "k2"]
    assert [i.key for i in lg.search(("log",), filter={"i": {"$lt": 5}}, limit=2, offset=1)] == ["k3", "k2"]
    assert all(i.score is None for i in lg.search(("log",)))
    assert lg.search(("log",), limit=0) == [] and lg.search(("nowhere",)) == []
    lg.put(("log",), "k0", {"i": 0})  # an update makes it the newest
    assert lg.search(("log",), limit=1)[0].key == "k0"


def test_prefix_search_never_leaks_other_namespaces_or_scopes(lg, store, embedder):
    lg.put(("users", "alice"), "diet", {"text": "Alice is allergic to cashews."})
    lg.put(("users", "alicia"), "diet", {"text": "Alicia is allergic to cashews."})
    lg.put(("teams", "alice"), "diet", {"text": "The team orders cashews."})
    # non-LangGraph users of the same store, one of them in a scope that looks like a namespace
    store.add("A note about cashews written by someone else.", scope="users/alice", kind="document")
    store.add("Another tenant's cashews.", scope="tenant-7")
    other = OpticalMemoryStore(store, scope_prefix="other-app")
    other.put(("users", "alice"), "diet", {"text": "Other app: cashews again."})
    for query in (None, "cashews"):
        got = lg.search(("users", "alice"), query=query)
        assert [(i.namespace, i.value["text"]) for i in got] == [
            (("users", "alice"), "Alice is allergic to cashews.")
        ]
        assert {i.namespace for i in lg.search(("users",), query=query)} == {
            ("users", "alice"),
            ("users", "alicia"),
        }
        assert len(lg.search((), query=query)) == 3
        assert [i.value["text"] for i in other.search((), query=query)] == ["Other app: cashews again."]
    assert lg.list_namespaces() == [("teams", "alice"), ("users", "alice"), ("users", "alicia")]
    assert other.list_namespaces() == [("users", "alice")]
    assert lg.get(("users", "alice"), "diet").value == {"text": "Alice is allergic to cashews."}


def test_namespace_labels_are_encoded_injectively(lg, store):
    odd = [("a/b",), ("a", "b"), ("a%2Fb",), ("sp ace", "ü"), ("*",)]
    for i, namespace in enumerate(odd):
        lg.put(namespace, "k", {"i": i})
    assert [lg.get(ns, "k").value["i"] for ns in odd] == list(range(len(odd)))
    assert lg.list_namespaces() == sorted(odd)
    assert "a%2Fb" in store.scopes() and "a%252Fb" in store.scopes() and "a/b" in store.scopes()
    assert OpticalMemoryStore(store, scope_prefix="p").scope(("users", "alice")) == "p/users/alice"


# -- list_namespaces


NAMESPACES = [
    ("a", "b", "c"),
    ("a", "b", "d", "e"),
    ("a", "b", "d", "i"),
    ("a", "b", "f"),
    ("a", "c", "f"),
    ("x", "y"),
    ("x",),
]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"prefix": ("a", "b")},
        {"prefix": ("a", "b"), "max_depth": 3},
        {"prefix": ("a", "*", "f")},
        {"suffix": ("f",)},
        {"suffix": ("*", "f")},
        {"prefix": ("a",), "suffix": ("f",)},
        {"max_depth": 1},
        {"max_depth": 2, "limit": 2, "offset": 1},
        {"limit": 3},
        {"offset": 5},
        {"prefix": ("nothing",)},
    ],
)
def test_list_namespaces_matches_langgraphs_in_memory_store(lg, kwargs):
    reference = InMemoryStore()
    for target in (lg, reference):
        target.batch([PutOp(ns, "k", {"ns": list(ns)}) for ns in NAMESPACES])
    assert lg.list_namespaces(**kwargs) == reference.list_namespaces(**kwargs)


# -- index


def test_index_false_items_are_stored_and_listed_but_never_queried(lg, store):
    fill(lg)
    lg.put(
        ("users", "ingrid"), "secret", {"text": "Ingrid is allergic to cashews (private copy)."}, index=False
    )
    assert "secret" not in {h.key for h in lg.search(("users",), query="cashews allergy", limit=10)}
    assert lg.get(("users", "ingrid"), "secret").value["text"].endswith("(private copy).")
    assert lg.search(("users",), limit=1)[0].key == "secret"  # newest, without a query


def test_index_fields_choose_what_the_page_shows_and_what_is_searched(store):
    lg = OpticalMemoryStore(store, index={"fields": ["title"]})
    lg.put(("docs",), "a", {"title": "Sourdough starter care", "body": "Feed it flour and water daily."})
    lg.put(("docs",), "b", {"title": "Bicycle chain maintenance", "body": "Oil the links monthly."})
    lg.put(("docs",), "c", {"body": "No title, so nothing to index."})
    lg.put(("docs",), "d", {"title": "x", "tags": ["baking", "bread"]}, index=["tags[*]"])
    pages = {m.metadata["langgraph_key"]: store.recall(m.id).text for m in store.memories(scope="docs")}
    assert pages["a"] == "title: Sourdough starter care"
    assert pages["d"] == "tags[*]: baking\ntags[*]: bread"
    assert "body: No title" in pages["c"]  # the page shows the whole value; queries skip it
    assert lg.search(("docs",), query="bread baking", limit=1)[0].key in ("a", "d")
    assert "c" not in {h.key for h in lg.search(("docs",), query="no title nothing", limit=10)}
    assert lg.get(("docs",), "c").value == {"body": "No title, so nothing to index."}


def test_characters_no_font_draws_are_stand_ins_on_the_page_only(lg, store):
    value = {"text": "private use \U0010fffd here", "bell": "ding\x07"}
    lg.put(("a",), "k", value)
    assert lg.get(("a",), "k").value == value
    [memory] = store.memories(scope="a")
    assert memory.metadata["_stand_ins"] == {"[U+10FFFD]": "\U0010fffd"}
    recalled = store.recall(memory.id).text
    assert "\U0010fffd" in recalled and "[U+10FFFD]" not in recalled  # the stand-in turned back
    assert '"ding\\u0007"' in recalled  # a control character is shown as its JSON escape


# -- ttl: minutes, mapped onto the forgetting ladder


def ttl_memory(store: om.OpticalMemory, scope: str) -> om.MemoryInfo:
    [memory] = store.memories(scope=scope)
    return memory


def test_an_item_with_ttl_walks_down_the_ladder_and_is_deleted_at_expiry(lg, store):
    lg.put(("a",), "short", {"text": "an item with an hour to live"}, ttl=60)
    lg.put(("a",), "long", {"text": "an item without a ttl"})
    [memory] = store.memories(scope="a", filters={"langgraph_key": "short"})
    born = memory.created_at
    assert memory.expires_at == pytest.approx(born + 3600)
    tiers = []
    for minutes in (1, 20, 35, 50):  # the tiny ladder's three tiers take a quarter of the hour each
        store.age(now=born + minutes * 60)
        tiers.append(store.memories(scope="a", filters={"langgraph_key": "short"})[0].tier)
    assert tiers == ["256", "128", "64", "forgotten"]
    assert lg.get(("a",), "short", refresh_ttl=False).value == {"text": "an item with an hour to live"}
    assert store.age(now=born + 3600)["expired"] == 1
    assert lg.get(("a",), "short") is None and lg.get(("a",), "long") is not None
    assert len(store.memories(scope="a")) == 1


@pytest.mark.slow
def test_recall_reads_the_item_back_from_its_page(lg):
    fill(lg)
    recalled = lg.recall(("users", "ingrid"), "diet")
    assert recalled.source == "rapidocr" and recalled.tier == "256"  # read from the page, not the metadata
    assert "cashews" in recalled.text.lower()
    with pytest.raises(om.MemoryNotFound, match="'nope'"):
        lg.recall(("users", "ingrid"), "nope")
    with pytest.raises(om.MemoryNotFound):
        lg.recall(("users", "someone-else"), "diet")


def test_expired_items_are_hidden_at_once(store):
    lg = OpticalMemoryStore(store, age_on_write=False)
    lg.put(("a",), "brief", {"text": "gone in a blink"}, ttl=0.001)  # 60 ms
    lg.put(("b",), "kept", {"text": "stays"})
    time.sleep(0.1)
    assert lg.get(("a",), "brief") is None
    assert lg.search(("a",)) == []
    assert [i.key for i in lg.search((), query="blink")] == ["kept"]
    assert lg.list_namespaces() == [("b",)]
    assert store.stats().memories == 2 and store.age()["expired"] == 1


def test_refresh_ttl_extends_the_lifetime(store):
    lg = OpticalMemoryStore(store, age_on_write=False)
    lg.put(("a",), "k", {"text": "refresh me"}, ttl=10)
    first = ttl_memory(store, "a").expires_at
    time.sleep(0.05)
    lg.get(("a",), "k", refresh_ttl=False)
    assert ttl_memory(store, "a").expires_at == first
    lg.get(("a",), "k")  # refresh_ttl defaults to True
    second = ttl_memory(store, "a").expires_at
    assert second > first
    time.sleep(0.05)
    lg.search(("a",), query="refresh")
    third = ttl_memory(store, "a").expires_at
    assert third > second
    assert store.age(now=(first + third) / 2)["expired"] == 0  # past the first expiry: refreshed, alive
    assert lg.get(("a",), "k").value == {"text": "refresh me"}


def test_ttl_config_default_and_refresh_on_read(store):
    lg = OpticalMemoryStore(store, ttl={"default_ttl": 5, "refresh_on_read": False}, age_on_write=False)
    assert lg.supports_ttl and lg.ttl_config == {"default_ttl": 5, "refresh_on_read": False}
    lg.put(("a",), "defaulted", {"v": 1})
    lg.put(("b",), "forever", {"v": 2}, ttl=None)
    defaulted, forever = ttl_memory(store, "a"), ttl_memory(store, "b")
    assert defaulted.expires_at == pytest.approx(defaulted.created_at + 300) and forever.expires_at is None
    time.sleep(0.05)
    lg.get(("a",), "defaulted")  # refresh_on_read=False: no refresh unless asked
    assert ttl_memory(store, "a").expires_at == defaulted.expires_at
    lg.get(("a",), "defaulted", refresh_ttl=True)
    assert ttl_memory(store, "a").expires_at > defaulted.expires_at


# -- bad input: clear errors, nothing stored, nothing lost


BAD_NAMESPACES = [
    (("a.b",), "period"),
    (("a", ""), "empty"),
    (("a", 3), "int"),
    ("users", "tuple"),
    ((), "empty"),
    (("langgraph", "x"), "reserved"),
    (("a\x00b",), "NUL"),
    (("x" * 300,), "300"),
]


@pytest.mark.parametrize(("namespace", "match"), BAD_NAMESPACES)
def test_bad_namespaces_are_named(lg, store, namespace, match):
    lg.put(("safe",), "k", {"v": 1})
    for call in (
        lambda: lg.put(namespace, "k", {"v": 2}),
        lambda: lg.batch([PutOp(namespace, "k", {"v": 2})]),
        lambda: asyncio.run(lg.aput(namespace, "k", {"v": 2})),
    ):
        with pytest.raises(InvalidNamespace, match=match) as caught:
            call()
        assert isinstance(caught.value, om.InvalidInput) and isinstance(caught.value, InvalidNamespaceError)
    assert lg.get(("safe",), "k").value == {"v": 1} and store.stats().memories == 1


@pytest.mark.parametrize(
    ("op", "match"),
    [
        (PutOp(("a",), "k", "not a dict"), "must be a dict"),  # type: ignore[arg-type]
        (PutOp(("a",), "k", {"s": {1, 2}}), r"value\.s is a set"),
        (PutOp(("a",), "k", {"x": float("nan")}), "NaN"),
        (PutOp(("a",), "k", {"x": {1: "int key"}}), "non-str key 1"),
        (PutOp(("a",), "k", {"x": "\ud800"}), "surrogate"),
        (PutOp(("a",), "k", {"x": "y" * 300_000}), "bytes of JSON, more than max_value_bytes"),
        (PutOp(("a",), 7, {"v": 1}), "key must be a str, got int 7"),  # type: ignore[arg-type]
        (PutOp(("a",), "", {"v": 1}), "non-empty"),
        (PutOp(("a",), "a\x00b", {"v": 1}), "NUL"),
        (PutOp(("a",), "k", {"v": 1}, index="text"), "index"),  # type: ignore[arg-type]
        (PutOp(("a",), "k", {"v": 1}, ttl=-1), "ttl"),
        (PutOp(("a",), "k", {"v": 1}, ttl=float("inf")), "ttl"),
        (GetOp(("a",), None), "key must be a str"),  # type: ignore[arg-type]
        (SearchOp(("a",), filter={"n": {"$regex": "x"}}), r"\$regex"),
        (SearchOp(("a",), filter={"n": {"$gt": None}}), r"\$gt"),
        (SearchOp(("a",), limit=-1), "-1"),
        (SearchOp(("a",), query=42), "query"),  # type: ignore[arg-type]
        (ListNamespacesOp(max_depth=0), "max_depth"),
        (ListNamespacesOp(match_conditions=(MatchCondition("middle", ("a",)),)), "middle"),  # type: ignore[arg-type]
        ("get me", "unknown op str"),
    ],
)
def test_bad_ops_are_named_and_the_batch_stores_nothing(lg, store, op, match):
    lg.put(("a",), "keep", {"v": 1})
    with pytest.raises(om.InvalidInput, match=match):
        lg.batch([PutOp(("a",), "new", {"v": 2}), op])
    with pytest.raises(om.InvalidInput, match=match):
        asyncio.run(lg.abatch([PutOp(("a",), "new", {"v": 2}), op]))
    assert [i.key for i in lg.search(("a",))] == ["keep"] and store.stats().memories == 1


def test_convenience_methods_refuse_non_str_keys_and_bad_options(lg, store):
    with pytest.raises(om.InvalidInput, match="got int 5"):
        lg.put(("a",), 5, {"v": 1})  # type: ignore[arg-type]  (LangGraph would str() it)
    with pytest.raises(om.InvalidInput, match="got NoneType"):
        lg.get(("a",), None)  # type: ignore[arg-type]
    with pytest.raises(om.InvalidInput, match="embed"):
        OpticalMemoryStore(store, index={"dims": 384, "embed": "openai:text-embedding-3-small"})
    with pytest.raises(om.InvalidInput, match="1536"):
        OpticalMemoryStore(store, index={"dims": 1536, "fields": ["text"]})
    with pytest.raises(om.InvalidInput, match="sweep_interval_minutes"):
        OpticalMemoryStore(store, ttl={"sweep_interval_minutes": 5})
    with pytest.raises(om.InvalidInput, match="positive finite number of minutes"):
        OpticalMemoryStore(store, ttl={"default_ttl": 0})
    with pytest.raises(om.InvalidInput, match="scope_prefix"):
        OpticalMemoryStore(store, scope_prefix="trailing/")
    with pytest.raises(om.InvalidInput, match="dict"):
        OpticalMemoryStore({"not": "a store"})  # type: ignore[arg-type]
    assert store.stats().memories == 0


# -- concurrency from async code

VIOLIN = "The violin is in the attic, behind the boxes."


def test_abatch_under_gather_loses_nothing_and_duplicates_nothing(lg, store):
    async def run() -> list:
        writes = [
            lg.aput(("users", f"u{i % 4}"), f"k{i}", {"i": i, "text": VIOLIN if i == 7 else f"fact {i}"})
            for i in range(24)
        ]
        same_key = [lg.aput(("shared",), "k", {"writer": i}) for i in range(8)]
        await asyncio.gather(*writes, *same_key)
        return await asyncio.gather(
            *(lg.aget(("users", f"u{i % 4}"), f"k{i}") for i in range(24)),
            lg.asearch(("users",), limit=100),
            lg.asearch(("users",), query="where is the violin?", limit=3),
            lg.alist_namespaces(),
        )

    *items, listed, found, namespaces = asyncio.run(run())
    assert [item.value["i"] for item in items] == list(range(24))
    assert sorted(i.key for i in listed) == sorted(f"k{i}" for i in range(24))
    assert found[0].key == "k7"
    assert namespaces == [("shared",), ("users", "u0"), ("users", "u1"), ("users", "u2"), ("users", "u3")]
    assert len(store.memories(scope="shared")) == 1  # eight racing puts to one key: one memory remains
    assert store.stats().memories == 25


# -- as the store of a compiled graph


class State(TypedDict, total=False):
    user: str
    message: str
    recalled: list[str]


def test_compiled_state_graph_reads_and_writes_through_the_store(lg, store):
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.runtime import Runtime

    def remember(state: State, runtime: Runtime) -> State:
        assert runtime.store is lg
        namespace = ("memories", state["user"])
        if state["message"].startswith("remember:"):
            fact = state["message"].removeprefix("remember:").strip()
            runtime.store.put(namespace, f"fact-{len(runtime.store.search(namespace))}", {"text": fact})
        return {}

    def recall(state: State, *, store: BaseStore) -> State:
        hits = store.search(("memories", state["user"]), query=state["message"], limit=1)
        return {"recalled": [h.value["text"] for h in hits]}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_node("recall", recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    graph = builder.compile(checkpointer=InMemorySaver(), store=lg)

    graph.invoke(
        {"user": "ingrid", "message": "remember: I am allergic to cashews."},
        {"configurable": {"thread_id": "monday"}},
    )
    graph.invoke(
        {"user": "ingrid", "message": "remember: my locker code is 31-07-22."},
        {"configurable": {"thread_id": "tuesday"}},
    )
    # a new thread, another day: the memory persists across threads, in the store
    out = graph.invoke(
        {"user": "ingrid", "message": "which nuts should I avoid?"}, {"configurable": {"thread_id": "friday"}}
    )
    assert out["recalled"] == ["I am allergic to cashews."]
    other = asyncio.run(
        graph.ainvoke(
            {"user": "bob", "message": "which nuts should I avoid?"}, {"configurable": {"thread_id": "bob-1"}}
        )
    )
    assert other["recalled"] == []  # another user's namespace holds nothing
    assert lg.list_namespaces(prefix=("memories",)) == [("memories", "ingrid")]
    assert {m.scope for m in store.memories()} == {"memories/ingrid"}
