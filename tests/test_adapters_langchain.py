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
from optical_memory.config import StoreConfig

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


def test_k_per_call_async_and_bad_arguments(store):
    retriever = OpticalMemoryRetriever(store=store, scope="home", k=5)
    assert len(retriever.invoke("dinner", k=2)) == 2
    docs = asyncio.run(retriever.ainvoke("dinner", k=1))
    assert len(docs) == 1 and "Maison Verte" in docs[0].page_content
    with pytest.raises(om.InvalidInput, match="top_n"):
        retriever.invoke("dinner", top_n=3)
    with pytest.raises(om.ScopeNotFound):
        OpticalMemoryRetriever(store=store, scope="nobody").invoke("dinner")
