"""The LangChain retriever over a real store: LangChain's own standard retriever suite (langchain-tests,
pinned), then what the standard suite does not cover (scopes, metadata, image mode, errors)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tempfile
from functools import cached_property

import pytest
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
    messages_to_dict,
)
from langchain_tests.integration_tests import RetrieversIntegrationTests
from PIL import Image

import optical_memory as om
from optical_memory.adapters.langchain import OpticalChatMessageHistory, OpticalMemoryRetriever
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
        with pytest.raises(om.InvalidInput, match="lone surrogate"):
            history.add_messages([HumanMessage("fine"), HumanMessage("half a pair \ud83d")])
        assert history.messages == []  # nothing was stored by the failed calls
        for bad in ({"budget_tokens": 0}, {"budget_tokens": "500"}, {"recent_share": 1.5}, {"k": 0}):
            with pytest.raises(om.InvalidInput, match=next(iter(bad))):
                OpticalChatMessageHistory(store, "s", **bad)


def test_history_concurrent_async_adds_lose_nothing(tmp_path, embedder):
    roomy = AgingPolicy(text_turns=64, tiers=StoreConfig.tiny().aging.tiers)
    with om.open(tmp_path / "store", config=StoreConfig.tiny(aging=roomy), embedder=embedder) as store:
        a, b = (OpticalChatMessageHistory(store, name, recent_share=1.0) for name in "ab")  # every message

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


def test_history_sends_the_last_exchanges_and_older_turns_only_when_they_answer(tmp_path, embedder):
    """recent_share="auto" (the default): the last four messages go verbatim; an older message still in the
    text tier comes back in the memory block when it answers the newest user message, and the small talk
    between them does not come at all. A fixed share sends every message that fits it."""
    with om.open(tmp_path / "store", config=StoreConfig.tiny(aging=ROOMY), embedder=embedder) as store:
        history = OpticalChatMessageHistory(store, "s", budget_tokens=2000, k=1)
        history.add_messages([HumanMessage("Ingrid's allergy: she cannot eat cashews."), AIMessage("Noted.")])
        for i in range(3):
            history.add_messages(
                [HumanMessage(f"Any film tips for night {i}?"), AIMessage(f"Try a comedy {i}.")]
            )
        history.add_messages([HumanMessage("Thanks."), AIMessage("Enjoy!")])
        history.add_user_message("What is Ingrid allergic to?")
        got = history.messages
        assert isinstance(got[0], SystemMessage) and "cashews" in got[0].content
        assert [m.content for m in got[1:]] == [
            "Try a comedy 2.",
            "Thanks.",
            "Enjoy!",
            "What is Ingrid allergic to?",
        ]
        assert not any("film tips for night 0" in str(m.content) for m in got)
        fixed = OpticalChatMessageHistory(store, "s", budget_tokens=2000, k=1, recent_share=0.6).messages
        assert len([m for m in fixed if not isinstance(m, SystemMessage)]) == 11  # all of them fit
        with pytest.raises(om.InvalidInput, match="recent_share"):
            OpticalChatMessageHistory(store, "s", recent_share="sometimes")


# -- every message type round-trips, as in langchain-core's own histories (issue 20, item 1) --

ROOMY = AgingPolicy(text_turns=64, tiers=StoreConfig.tiny().aging.tiers)  # every turn stays in the text tier


def _png_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), "red").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def every_kind_of_message() -> list[BaseMessage]:
    """One of each message langchain-core makes, with the fields a real agent run fills in."""
    return [
        SystemMessage("You are a weather assistant.", id="sys-1"),
        HumanMessage("Wie wird das Wetter in 東京? ☔ 😀", name="alice", id="h-1"),
        AIMessage(
            content="",  # a tool-calling turn: no text at all
            tool_calls=[
                {"name": "get_weather", "args": {"city": "東京", "unit": "C"}, "id": "call_1"},
                {"name": "get_time", "args": {}, "id": "call_2"},
            ],
            id="run-1",
            additional_kwargs={"refusal": None},
            response_metadata={"model_name": "gpt-x", "finish_reason": "tool_calls"},
            usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
        ),
        ToolMessage(
            "18 °C, light rain",
            tool_call_id="call_1",
            name="get_weather",
            artifact={"raw": {"temp": 18.5, "rain": True, "station": None}},
        ),
        ToolMessage("\x1b[31mtimeout\x1b[0m", tool_call_id="call_2", name="get_time", status="error"),
        AIMessage("In 東京 it is 18 °C with light rain ☔.", id="run-2", name="forecaster"),
        HumanMessage(
            [
                {"type": "text", "text": "And what is on this picture?"},
                {"type": "image_url", "image_url": {"url": _png_data_url()}},
            ]
        ),
        AIMessage(
            [{"type": "text", "text": "A small red square."}],
            invalid_tool_calls=[
                {
                    "name": "zoom",
                    "args": "{not json",
                    "id": "call_3",
                    "error": "bad JSON",
                    "type": "invalid_tool_call",
                }
            ],
        ),
        ChatMessage("Looks right to me.", role="critic"),
        FunctionMessage('{"ok": true}', name="legacy_function"),
        HumanMessage("   "),  # blank, but a message all the same
        HumanMessage("\tIndented, with trailing spaces  \r\nand a second line\n\n"),
        # U+1FAE8 is newer than the fonts: the page draws a stand-in, and the text comes back as it was
        AIMessage("Noted. 好的！ \U0001fae8", additional_kwargs={"reasoning": {"steps": [1, 2, 3]}}),
    ]


def _roomy_history(path, embedder) -> tuple[om.OpticalMemory, OpticalChatMessageHistory]:
    store = om.open(path, config=StoreConfig.tiny(aging=ROOMY), embedder=embedder)
    return store, OpticalChatMessageHistory(store, "s", budget_tokens=100_000, recent_share=1.0)


def test_history_round_trips_every_message_type_also_after_reopening(tmp_path, embedder):
    sent = every_kind_of_message()
    # what langchain-core's own JSON form gives back (its SQL histories store that form)
    reference = messages_from_dict(json.loads(json.dumps(messages_to_dict(sent))))
    assert reference == sent
    store, history = _roomy_history(tmp_path / "store", embedder)
    with store:
        history.add_messages(sent[:3])  # in several calls, as an agent loop adds them
        history.add_message(sent[3])
        history.add_messages(sent[4:])
        got = history.messages
        assert [type(m) for m in got] == [type(m) for m in sent]
        assert got == reference
        assert messages_to_dict(got) == messages_to_dict(reference)
    store, history = _roomy_history(tmp_path / "store", embedder)  # the same files, opened again
    with store:
        assert messages_to_dict(history.messages) == messages_to_dict(sent)


def test_a_tool_calling_turn_is_stored_readable_and_searchable(tmp_path, embedder):
    store, history = _roomy_history(tmp_path / "store", embedder)
    with store:
        call = AIMessage(
            "", tool_calls=[{"name": "book_table", "args": {"restaurant": "Maison Verte"}, "id": "c1"}]
        )
        history.add_messages([HumanMessage("Book our anniversary dinner."), call])
        history.add_messages([ToolMessage("Booked for 8 pm.", tool_call_id="c1", name="book_table")])
        hit = store.search("book_table Maison Verte", k=1, scope="s")[0]
        text = store.recall(hit.id).text  # what the page shows and search sees
        assert "book_table" in text and '"restaurant": "Maison Verte"' in text
        assert history.messages[1] == call


def test_plain_text_lives_in_the_turn_text_not_in_metadata(tmp_path, embedder):
    """With retain_text=False a turn's words must leave SQL once its page closes: a plain message's text
    is not copied into the metadata that outlives it (only what the text cannot carry is)."""
    store, history = _roomy_history(tmp_path / "store", embedder)
    with store:
        history.add_messages([HumanMessage("The staging database listens on port 6543.", id="m1")])
        (memory,) = store.memories(scope="s")
        assert "6543" not in json.dumps(memory.metadata)
        assert "m1" in json.dumps(memory.metadata)  # the message's id rides there
        assert history.messages == [HumanMessage("The staging database listens on port 6543.", id="m1")]


def test_tool_results_keep_their_call_when_the_window_is_cut(tmp_path, embedder):
    with om.open(tmp_path / "store", config=StoreConfig.tiny(aging=ROOMY), embedder=embedder) as store:
        history = OpticalChatMessageHistory(store, "s", budget_tokens=200, recent_share=0.1)
        call = AIMessage("", tool_calls=[{"name": "lookup", "args": {"q": "weather"}, "id": "c7"}])
        result = ToolMessage("Sunny all week. " * 10, tool_call_id="c7", name="lookup")
        history.add_messages([HumanMessage("What is the weather like?"), call, result])
        recent = [m for m in history.messages if not isinstance(m, SystemMessage)]
        assert recent == [call, result]  # a tool result never comes without the call it answers


def test_a_tool_result_whose_call_left_the_text_tier_is_recalled_not_sent_alone(tmp_path, embedder):
    one = AgingPolicy(text_turns=1, tiers=StoreConfig.tiny().aging.tiers)  # the call is paged at once
    with om.open(tmp_path / "store", config=StoreConfig.tiny(aging=one), embedder=embedder) as store:
        history = OpticalChatMessageHistory(store, "s")
        call = AIMessage("", tool_calls=[{"name": "lookup", "args": {"q": "weather"}, "id": "c7"}])
        history.add_messages([call, ToolMessage("Sunny all week.", tool_call_id="c7", name="lookup")])
        got = history.messages
        assert not any(isinstance(m, ToolMessage) for m in got)  # a chat model refuses a lone tool result
        assert len(got) == 1 and "Sunny all week" in got[0].content  # it is in the memory block instead


def test_history_reads_rows_of_the_earlier_format(tmp_path, embedder):
    """Stores written before messages carried their serialized form (text and role only) still load."""
    with om.open(tmp_path / "store", config=StoreConfig.tiny(aging=ROOMY), embedder=embedder) as store:
        store.add_many(
            [
                {"text": "Hello there.", "role": "user"},
                {"text": "Hi! How can I help?", "role": "assistant"},
                {"text": "Be brief.", "role": "system"},
            ],
            scope="s",
        )
        got = OpticalChatMessageHistory(store, "s").messages
        assert got == [
            HumanMessage("Hello there."),
            AIMessage("Hi! How can I help?"),
            SystemMessage("Be brief."),
        ]


def test_history_refuses_what_json_cannot_hold_naming_it(tmp_path, embedder):
    with om.open(tmp_path / "store", config=StoreConfig.tiny(aging=ROOMY), embedder=embedder) as store:
        history = OpticalChatMessageHistory(store, "s")
        bad = ToolMessage("done", tool_call_id="c1", artifact={"when": object()})
        with pytest.raises(om.InvalidInput, match=r"message 1 \(ToolMessage\).*artifact.*JSON"):
            history.add_messages([HumanMessage("fine"), bad])
        with pytest.raises(om.InvalidInput, match=r"message 0 \(AIMessage\).*response_metadata.*JSON"):
            history.add_messages([AIMessage("x", response_metadata={"score": float("nan")})])
        with pytest.raises(om.InvalidInput, match=r"message 0 \(HumanMessage\).*NUL"):
            history.add_messages([HumanMessage("a\x00b")])
        assert history.messages == []  # nothing of a refused batch is stored


def test_turns_sent_verbatim_take_none_of_the_k_recalled_places(tmp_path, embedder):
    """A question, the tool call that looks it up and its result all say what the question says: they
    are sent verbatim, so the memory block still holds the k best older memories, not copies of them."""
    two = AgingPolicy(text_turns=3, tiers=StoreConfig.tiny().aging.tiers)
    with om.open(tmp_path / "store", config=StoreConfig.tiny(aging=two), embedder=embedder) as store:
        history = OpticalChatMessageHistory(store, "s", budget_tokens=4000, recent_share=0.5, k=1)
        history.add_messages([HumanMessage("Ingrid's allergy: she cannot eat cashews.")])
        history.add_messages([AIMessage(f"Noted, small talk {i}.") for i in range(4)])  # the fact is paged
        question = "What is Ingrid allergic to?"
        call = AIMessage("", tool_calls=[{"name": "lookup", "args": {"q": question}, "id": "c1"}])
        result = ToolMessage(f"No note answers: {question}", tool_call_id="c1", name="lookup")
        history.add_messages([HumanMessage(question), call, result])
        got = history.messages
        assert isinstance(got[0], SystemMessage) and "cashews" in got[0].content
        assert got[-3:] == [HumanMessage(question), call, result]


def test_build_context_exclude_is_checked(tmp_path, embedder):
    with om.open(tmp_path / "store", config=StoreConfig.tiny(), embedder=embedder) as store:
        for bad in ("12", [1, "2"], 3, [[1]]):
            with pytest.raises(om.InvalidInput, match="exclude"):
                store.build_context("q", budget_tokens=100, exclude=bad)  # type: ignore[arg-type]
        with pytest.raises(om.InvalidInput, match="k must"):
            store.build_context("q", budget_tokens=100, k=0)
