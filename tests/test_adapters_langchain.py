"""The LangChain retriever over a real store: LangChain's own standard retriever suite (langchain-tests,
pinned), then what the standard suite does not cover (scopes, metadata, image mode, errors)."""

from __future__ import annotations

import asyncio
import tempfile
from functools import cached_property

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests

import optical_memory as om
from optical_memory.adapters.langchain import OpticalMemoryRetriever
from optical_memory.backends import make_embedder
from optical_memory.config import AgingPolicy, StoreConfig

TURNS = [
    ("user", "My sister Ingrid is allergic to cashews."),
    ("assistant", "Noted: no cashews for Ingrid."),
    ("user", "The staging database listens on port 6543."),
    ("assistant", "Staging database, port 6543."),
    ("user", "Our anniversary dinner is booked at Maison Verte."),
    ("assistant", "Maison Verte it is."),
    ("user", "The climbing gym locker combination is 31-07-22."),
    ("assistant", "Locker 31-07-22, got it."),
]


class _Fixture:
    """One store for the standard suite (it takes constructor params, not fixtures)."""

    @cached_property
    def store(self) -> om.OpticalMemory:
        self.folder = tempfile.TemporaryDirectory()
        store = om.open(
            self.folder.name, config=StoreConfig.tiny(retain_text=True), embedder=make_embedder("minilm")
        )
        store.add_many([{"text": t, "role": r} for r, t in TURNS], scope="home")
        store.add("Someone else's note about cashews.", scope="other")
        store.age()
        return store


SHARED = _Fixture()


class TestStandardRetriever(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[OpticalMemoryRetriever]:
        return OpticalMemoryRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"store": SHARED.store, "scope": "home"}

    @property
    def retriever_query_example(self) -> str:
        return "Which nut is Ingrid allergic to?"


@pytest.fixture
def store(tmp_path, embedder):
    with om.open(tmp_path / "store", config=StoreConfig.tiny(), embedder=embedder) as store:
        store.add_many([{"text": t, "role": r} for r, t in TURNS], scope="home")
        filler = [{"text": f"small talk {i}: " + "about the weather and the garden " * 4} for i in range(8)]
        store.add_many(filler, scope="home")  # fills pages, so the first ones close and keep no text
        store.add("Someone else's note about cashews.", scope="other")
        store.age()
        yield store


def test_documents_carry_the_memory_and_stay_in_their_scope(store):
    docs = OpticalMemoryRetriever(store=store, scope="home", k=8).invoke("cashews")
    assert docs and all(isinstance(d, Document) for d in docs)
    assert {d.metadata["scope"] for d in docs} == {"home"}
    top = docs[0]
    assert "cashews" in top.page_content.lower() and top.id == str(top.metadata["id"])
    for key in ("id", "scope", "tier", "score", "page_id", "compression", "source"):
        assert key in top.metadata
    paged = [d for d in docs if d.metadata["page_id"] is not None]
    assert paged and all(d.metadata["compression"] > 0 for d in paged)
    assert any(d.metadata["source"] == "rapidocr" for d in paged)  # read back from a page image
    other = OpticalMemoryRetriever(store=store, scope="other").invoke("cashews")
    assert [d.metadata["scope"] for d in other] == ["other"]


def test_image_mode_refers_to_the_page(store):
    docs = OpticalMemoryRetriever(store=store, scope="home", mode="image", k=8).invoke("port of the database")
    paged = [d for d in docs if d.metadata["page_id"] is not None]
    assert paged
    assert paged[0].page_content == f"optical-memory://page/{paged[0].metadata['page_id']}"
    assert paged[0].metadata["image_url"].startswith("data:image/png;base64,")
    with pytest.raises(om.InvalidInput, match="does not hold memory"):
        store.page_image(paged[0].metadata["id"], page_id=10_000)


def test_k_per_call_async_and_bad_arguments(store):
    retriever = OpticalMemoryRetriever(store=store, scope="home", k=5)
    assert len(retriever.invoke("dinner", k=2)) == 2
    docs = asyncio.run(retriever.ainvoke("dinner", k=1))
    assert len(docs) == 1 and "Maison Verte" in docs[0].page_content
    with pytest.raises(om.InvalidInput, match="top_n"):
        retriever.invoke("dinner", top_n=3)
    with pytest.raises(om.ScopeNotFound):
        OpticalMemoryRetriever(store=store, scope="nobody").invoke("dinner")


def test_concurrent_async_calls_stay_in_their_scope(store):
    home = OpticalMemoryRetriever(store=store, scope="home", k=3)
    other = OpticalMemoryRetriever(store=store, scope="other", k=3)

    async def run() -> list[list[Document]]:
        calls = [(home if i % 2 else other).ainvoke("cashews") for i in range(12)]
        return await asyncio.gather(*calls)

    results = asyncio.run(run())
    for i, docs in enumerate(results):
        assert docs and {d.metadata["scope"] for d in docs} == {"home" if i % 2 else "other"}
    assert results[1] == results[3] and results[0] == results[2]  # same query, same answer


# -- chat message history (there is no standard suite for it: these follow langchain-postgres' own tests) --

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402

from optical_memory.adapters.langchain import OpticalChatMessageHistory  # noqa: E402


def test_history_round_trip_and_clear(tmp_path, embedder):
    roomy = AgingPolicy(text_turns=16, tiers=StoreConfig.tiny().aging.tiers)  # every turn stays verbatim
    with om.open(tmp_path / "store", config=StoreConfig.tiny(aging=roomy), embedder=embedder) as store:
        history = OpticalChatMessageHistory(store, "session-1")
        assert history.messages == []
        history.add_messages([HumanMessage("Hello there."), AIMessage("Hi! How can I help?")])
        history.add_user_message("What is the capital of Portugal?")
        got = history.messages
        assert [type(m) for m in got] == [HumanMessage, AIMessage, HumanMessage]
        assert [m.content for m in got] == [
            "Hello there.",
            "Hi! How can I help?",
            "What is the capital of Portugal?",
        ]
        other = OpticalChatMessageHistory(store, "session-2")
        other.add_messages([HumanMessage("A different session.")])
        history.clear()
        assert history.messages == [] and "session-1" not in store.scopes()
        assert [m.content for m in other.messages] == ["A different session."]  # untouched
        history.clear()  # clearing an empty session is fine


def test_history_recalls_old_turns_from_pages_within_the_budget(tmp_path, embedder):
    with om.open(tmp_path / "store", config=StoreConfig.tiny(), embedder=embedder) as store:
        history = OpticalChatMessageHistory(store, "s", budget_tokens=300)
        history.add_messages([HumanMessage("My sister Ingrid is allergic to cashews."), AIMessage("Noted.")])
        for i in range(6):
            history.add_messages(
                [HumanMessage(f"Tell me fact {i} about the garden."), AIMessage(f"Garden fact {i}.")]
            )
        history.add_user_message("Which nut is my sister Ingrid allergic to?")
        messages = history.messages
        assert isinstance(messages[0], SystemMessage) and "cashews" in messages[0].content
        assert messages[-1].content == "Which nut is my sister Ingrid allergic to?"
        recent = [m for m in messages if not isinstance(m, SystemMessage)]
        assert len(recent) <= 2 + 1  # the tiny store keeps 2 turns in its text tier (+ the newest)
        assert sum(store.counter.count(m.content) for m in messages) <= 300 + 40  # budget, plus the heading


def test_history_async_and_bad_input(tmp_path, embedder):
    with om.open(tmp_path / "store", config=StoreConfig.tiny(), embedder=embedder) as store:
        history = OpticalChatMessageHistory(store, "s")

        async def run() -> list:
            await history.aadd_messages([HumanMessage("async hello")])
            return await history.aget_messages()

        assert [m.content for m in asyncio.run(run())] == ["async hello"]
        asyncio.run(history.aclear())
        assert history.messages == []
        with pytest.raises(om.InvalidInput, match="LangChain messages, got str"):
            history.add_messages(["not a message"])
        with pytest.raises(om.InvalidInput, match="session_id"):
            OpticalChatMessageHistory(store, "  ")
        with pytest.raises(om.InvalidInput, match="empty"):
            history.add_messages([HumanMessage("   ")])
        assert history.messages == []  # nothing was stored by the failed calls
        for bad in ({"budget_tokens": 0}, {"budget_tokens": "500"}, {"recent_share": 1.5}, {"k": 0}):
            with pytest.raises(om.InvalidInput, match=next(iter(bad))):
                OpticalChatMessageHistory(store, "s", **bad)


def test_history_concurrent_async_adds_lose_nothing(tmp_path, embedder):
    roomy = AgingPolicy(text_turns=64, tiers=StoreConfig.tiny().aging.tiers)
    with om.open(tmp_path / "store", config=StoreConfig.tiny(aging=roomy), embedder=embedder) as store:
        a, b = OpticalChatMessageHistory(store, "a"), OpticalChatMessageHistory(store, "b")

        async def run() -> None:
            adds = [(a if i % 2 else b).aadd_messages([HumanMessage(f"message {i}")]) for i in range(20)]
            await asyncio.gather(*adds)

        asyncio.run(run())
        got_a = sorted(m.content for m in a.messages)
        got_b = sorted(m.content for m in b.messages)
        assert got_a == sorted(f"message {i}" for i in range(1, 20, 2))
        assert got_b == sorted(f"message {i}" for i in range(0, 20, 2))


def test_history_keeps_the_newest_turn_even_when_it_is_over_the_recent_share(tmp_path, embedder):
    with om.open(tmp_path / "store", config=StoreConfig.tiny(), embedder=embedder) as store:
        history = OpticalChatMessageHistory(store, "s", budget_tokens=40, recent_share=0.25)
        history.add_messages([HumanMessage("An earlier, short question."), AIMessage("A short answer.")])
        question = "Given everything we talked about over the last weeks, " * 3 + "which nut is it?"
        assert store.counter.count(question) > 10  # more than the 25% of 40 tokens it may use
        history.add_user_message(question)
        assert [m.content for m in history.messages if not isinstance(m, SystemMessage)] == [question]
