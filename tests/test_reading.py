"""Recall reads a memory's own lines, cut from its page, with the real RapidOCR reader on real pages: the
same text as a read of the whole page, the lines cached per tier, the whole page read where that reads
better or costs less, and a repair that never draws a page from a read of only some of its lines."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from sqlalchemy import select

import optical_memory as om
from optical_memory import reading
from optical_memory.config import AgingPolicy, StoreConfig, Tier
from optical_memory.db import RecallRow, SpanRow
from optical_memory.metrics import cer
from optical_memory.types import TextLine

pytestmark = pytest.mark.slow  # real OCR

SCOPE = "home"
TEXTS = [
    "Before I forget: the wifi password at the lake cabin is heron-4417, all lowercase.",
    "Sure. I noted the cabin password. For the tomatoes, water them at the base before the heat of midday "
    "and check the soil an inch down; if it is still damp, skip a day. Mulch keeps the soil moist for "
    "longer, and a layer of straw works as well as bark.",
    "Thanks! Next week we fly to Reykjavik on FI 615, leaving Copenhagen at 07:40 on a Tuesday. 🛫",
    "Noted: FI 615, Tuesday 07:40 from Copenhagen.",
]


class Counting:
    """The real reader, counting the whole pages and the single lines it is asked to read."""

    def __init__(self, reader) -> None:
        self.name = reader.name
        self._reader = reader
        self.pages: list[int] = []
        self.lines: list[int] = []
        self.line_sizes: list[tuple[int, int]] = []

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        self.pages.append(len(images))
        return self._reader.read(images)

    def read_lines(self, images: Sequence[Image.Image]) -> list[str]:
        self.lines.append(len(images))
        self.line_sizes += [image.size for image in images]
        return self._reader.read_lines(images)


class PagesOnly:
    """The real reader behind an object that reads whole pages only (as a reader without lines does)."""

    def __init__(self, reader) -> None:
        self.name = reader.name
        self._reader = reader

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        return self._reader.read(images)


def paged(path, embedder, reader, **options) -> tuple[om.OpticalMemory, list[int]]:
    """A store of TEXTS on one 1024 px page (the default renderer), every turn paged."""
    store = om.open(path, embedder=embedder, reader=reader, aging=AgingPolicy(text_turns=0), **options)
    roles = ["user", "assistant", "user", "assistant"]
    ids = [store.add(t, scope=SCOPE, role=r) for t, r in zip(TEXTS, roles, strict=True)]
    store.age()
    return store, ids


def cached_lines(store: om.OpticalMemory) -> set[int]:
    with store._session() as s:
        rows = list(s.scalars(select(RecallRow)))
    return {int(k) for row in rows for k in row.lines}


def lines_of(store: om.OpticalMemory, memory_id: int) -> set[int]:
    with store._session() as s:
        spans = list(s.scalars(select(SpanRow).where(SpanRow.memory_id == memory_id)))
    return {i for sp in spans for i in range(sp.line_start, sp.line_end)}


def test_recall_reads_only_the_memorys_own_lines_and_reads_them_as_a_page_read_does(
    tmp_path, embedder, reader
):
    counting = Counting(reader)
    store, ids = paged(tmp_path / "lines", embedder, counting)
    whole, whole_ids = paged(tmp_path / "page", embedder, PagesOnly(reader))
    with store, whole:
        own = lines_of(store, ids[1])
        assert len(own) >= 3  # a turn of several lines, on a page of four turns
        first = store.recall(ids[1], read=True)
        assert first.source == "rapidocr" and cer(TEXTS[1], first.text) <= 0.01, first.text
        assert counting.pages == [] and counting.lines == [len(own)]  # its lines, one image each
        # each scaled to the recogniser's height, its 9 px cells to 15 px (cheaper than the 23 it would make)
        assert {h for _, h in counting.line_sizes} == {reading.READ_LINE_PX}
        assert all(w <= (store.renderer.columns + 2) * reading.READ_CELL_PX for w, _ in counting.line_sizes)
        assert cached_lines(store) == own  # only what was read is cached
        assert store.recall(ids[1], read=True) == first and counting.lines == [len(own)]  # from the cache

        for memory_id, other, text in zip(ids, whole_ids, TEXTS, strict=True):
            by_lines, by_page = store.recall(memory_id, read=True), whole.recall(other, read=True)
            assert by_lines.text == by_page.text, (by_lines.text, by_page.text)
            assert cer(text, by_lines.text) <= 0.03  # (OCR reads no emoji)
        assert counting.pages == []
        assert cached_lines(store) == set().union(*(lines_of(store, i) for i in ids))
        assert len(cached_lines(whole)) == store.renderer.lines_per_page  # a page read fills every line


def test_more_lines_than_a_band_reads_the_whole_page_once(tmp_path, embedder, reader, monkeypatch):
    monkeypatch.setattr(reading, "BAND_LINES", 2)
    counting = Counting(reader)
    store, ids = paged(tmp_path / "s", embedder, counting)
    with store:
        assert len(lines_of(store, ids[1])) > 2
        assert cer(TEXTS[1], store.recall(ids[1], read=True).text) <= 0.01
        assert counting.pages == [1] and counting.lines == []
        assert len(cached_lines(store)) == store.renderer.lines_per_page
        assert cer(TEXTS[0], store.recall(ids[0], read=True).text) <= 0.01  # from that read
        assert counting.pages == [1] and counting.lines == []


def tiny_config(**options) -> StoreConfig:
    return StoreConfig.tiny(
        aging=AgingPolicy(text_turns=0, tiers=(Tier(side=256, max_turns=0), Tier(side=64))), **options
    )


def tiny_lines(path, embedder, reader, *, turns: int = 12, **options) -> tuple[om.OpticalMemory, list[int]]:
    """A store of ``turns`` short turns, every one paged: the closed pages at 64 px (15 px lines drawn at
    256 px: under 4 px there, read whole), the newest page still open at 256 px."""
    store = om.open(path, config=tiny_config(**options), embedder=embedder, reader=reader)
    ids = [
        store.add(f"Turn {i}: the parcel for flat {i} is on shelf {i % 5}.", scope=SCOPE)
        for i in range(turns)
    ]
    store.age()
    return store, ids


def test_a_page_whose_lines_are_tiny_at_its_tier_is_read_whole(tmp_path, embedder, reader):
    counting = Counting(reader)
    store, ids = tiny_lines(tmp_path / "s", embedder, counting)  # two pages
    with store:
        assert store.memory_info(ids[0]).tier == "64"
        store.recall(ids[0], read=True)
        assert counting.pages == [1] and counting.lines == []
        assert store.memory_info(ids[-1]).tier == "256"  # the newest page stays sharp: 15 px lines
        store.recall(ids[-1], read=True)
        assert counting.pages == [1] and counting.lines == [len(lines_of(store, ids[-1]))]


def test_reading_ahead_reads_the_pages_recall_would_read_whole_and_recall_then_reads_nothing(
    tmp_path, embedder, reader
):
    counting = Counting(reader)
    store, ids = tiny_lines(tmp_path / "ahead", embedder, counting)
    cold, cold_ids = tiny_lines(tmp_path / "cold", embedder, reader)
    kept, _ = tiny_lines(tmp_path / "kept", embedder, reader, retain_text=True)
    with store, cold, kept:
        old = [i for i in ids if store.memory_info(i).tier == "64"]
        assert old and store.memory_info(ids[-1]).tier == "256"
        with pytest.raises(om.InvalidInput, match="progress must be a callable taking a count, got 5"):
            store.preread(progress=5)
        with pytest.raises(om.ScopeNotFound, match="elsewhere"):
            store.preread(scope="elsewhere")
        assert store.preread(scope=SCOPE, progress=lambda n: None) == 1  # the closed 64 px page, not the open
        assert counting.pages == [1] and counting.lines == []
        assert store.preread() == 0  # nothing left unread
        for memory_id, other in zip(ids, cold_ids, strict=True):
            assert store.recall(memory_id) == cold.recall(other)  # the text a first recall reads
        assert counting.pages == [1]  # the old turns came from the cache; the newest read its own lines
        assert kept.preread() == 0  # every turn keeps its text: recall returns that, reading nothing

    # pages whose lines a reader can read one by one are read when asked; a reader of whole pages only
    # reads every page whole, so every closed page is read ahead
    sharp = AgingPolicy(text_turns=0, tiers=(Tier(side=256),))
    for name, use, expected in (("lines", reader, 0), ("pages", PagesOnly(reader), 1)):
        config = StoreConfig.tiny(aging=sharp)
        with om.open(tmp_path / name, config=config, embedder=embedder, reader=use) as store:
            store.add_many(
                [f"Turn {i}: the parcel for flat {i} is on shelf {i % 5}." for i in range(12)], scope=SCOPE
            )
            store.age()
            assert store.preread() == expected, name


class Gated:
    """The real reader, each page read waiting until ``go`` is set (``started`` says one is waiting)."""

    def __init__(self, reader) -> None:
        self.name = reader.name
        self._reader = reader
        self.started = threading.Event()
        self.go = threading.Event()
        self.pages = 0

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        self.started.set()
        assert self.go.wait(60)
        self.pages += len(images)
        return self._reader.read(images)

    def read_lines(self, images: Sequence[Image.Image]) -> list[str]:
        return self._reader.read_lines(images)


def test_reading_ahead_in_the_background_leaves_the_store_free_and_stops_at_close(tmp_path, embedder, reader):
    gated = Gated(reader)
    store, _ = tiny_lines(tmp_path / "s", embedder, gated, turns=40)
    unread = reading.unread_pages(store._core)
    assert len(unread) >= 3
    assert store.age(preread=True)["downsampled"] == 0  # nothing moved; the reader starts anyway
    running = store.preread_in_background()
    assert gated.started.wait(60) and not running.done()
    assert store.preread_in_background() is running  # one run at a time, which looks again before it ends
    assert store.search("parcel for flat 3", k=1, scope=SCOPE)  # the store's lock is free meanwhile
    closing = threading.Thread(target=store.close)
    closing.start()
    gated.go.set()  # the page in hand is read and cached, then the run stops
    closing.join(60)
    assert not closing.is_alive() and running.result(0) == 1 and gated.pages == 1
    with pytest.raises(om.InvalidInput, match="store is closed"):
        store.preread_in_background()
    with om.open(tmp_path / "s", config=tiny_config(), embedder=embedder, reader=reader) as again:
        assert reading.unread_pages(again._core) == unread[1:]  # the newest first: that one is cached
        assert again.preread_in_background().result(120) == len(unread) - 1
        assert reading.unread_pages(again._core) == []


def test_a_context_or_a_recall_reading_a_page_leaves_the_store_free_meanwhile(tmp_path, embedder, reader):
    """A context's hits and a recall with read=True are read with the store's lock released: a search, an
    add and a listing from other threads go on while the reader runs (the HTTP server's requests)."""
    gated = Gated(reader)
    store, ids = tiny_lines(tmp_path / "s", embedder, gated, turns=40)
    with store, ThreadPoolExecutor(2) as pool:
        context = pool.submit(store.build_context, "parcel for flat 3", budget_tokens=400, scope=SCOPE, k=2)
        assert gated.started.wait(60) and not context.done()  # a 64 px page, read whole
        assert store.search("parcel for flat 3", k=1, scope=SCOPE)
        added = store.add("a turn added while a page is read", scope=SCOPE)
        assert store.memories(scope=SCOPE, limit=1)[0].id == added
        gated.go.set()
        ctx = context.result(60)
        assert ctx.items and gated.pages >= 1  # the 64 px page was read for it

        unread = reading.unread_pages(store._core, SCOPE)
        assert unread  # a closed page the context did not need
        other = next(i for i in ids if store.memory_pages(i)[0].page_id == unread[0])
        gated.started.clear()
        gated.go.clear()
        recall = pool.submit(store.recall, other, read=True)
        assert gated.started.wait(60) and not recall.done()
        assert store.search("parcel", k=1, scope=SCOPE)  # free while recall reads
        gated.go.set()
        assert recall.result(60).source == "rapidocr"


def test_two_contexts_wanting_one_unread_page_read_it_once(tmp_path, embedder, reader):
    gated = Gated(reader)
    store, _ = tiny_lines(tmp_path / "s", embedder, gated, turns=40)
    with store, ThreadPoolExecutor(2) as pool:
        unread = set(reading.unread_pages(store._core, SCOPE))
        ask = functools.partial(store.build_context, "parcel for flat 3", budget_tokens=400, scope=SCOPE, k=1)
        first = pool.submit(ask)
        assert gated.started.wait(60)
        second = pool.submit(ask)  # wants the same page: waits for the first one's read
        time.sleep(0.5)
        assert not second.done()
        gated.go.set()
        assert first.result(60).items == second.result(60).items
        read = unread - set(reading.unread_pages(store._core, SCOPE))
        assert len(read) >= 1 and gated.pages == len(read)


class Broken:
    name = "rapidocr"

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        raise RuntimeError("the OCR engine died")


def test_a_reader_error_in_the_background_reaches_the_future_and_the_store_goes_on(tmp_path, embedder):
    store, ids = tiny_lines(tmp_path / "s", embedder, Broken())
    with store:
        with pytest.raises(RuntimeError, match="the OCR engine died"):
            store.preread_in_background().result(60)
        assert store.memory_info(ids[0]).tier == "64" and store.search("parcel", k=1, scope=SCOPE)
        with pytest.raises(RuntimeError, match="the OCR engine died"):  # a new run, not the failed one
            store.preread_in_background().result(60)


def test_repair_never_draws_a_page_from_a_read_of_only_some_of_its_lines(tmp_path, embedder, reader):
    from test_damage import page_of, rot

    store, ids = paged(tmp_path / "s", embedder, reader)
    with store:
        filler = [store.add(f"Filler turn {i}.", scope=SCOPE, role="user") for i in range(60)]
        store.age()  # the page of TEXTS is full and closed now: its text is dropped
        page, blob = page_of(store, ids[0])
        assert page_of(store, filler[-1])[0] != page
        recalled = store.recall(ids[0])
        assert recalled.source == "rapidocr" and cer(TEXTS[0], recalled.text) <= 0.01  # its lines only
        rot(store.blobs.path(blob))
        report = store.verify(repair=True)
        assert report.marked_lost == [page] and report.from_cache == []  # the other turns were never read
        assert [store.recall(i).text for i in ids] == ["", "", "", ""]


def test_a_text_context_reads_the_unread_lines_of_all_its_hits_in_one_call(tmp_path, embedder, reader):
    counting = Counting(reader)
    store, _ = paged(tmp_path / "s", embedder, counting)
    with store:
        store.add_many([{"text": f"Filler turn {i}.", "role": "user"} for i in range(60)], scope=SCOPE)
        store.age()  # the page of TEXTS is closed: its text is dropped, recall reads its pixels
        query = "the wifi password at the lake cabin, watering tomatoes, the flight to Reykjavik"
        ctx = store.build_context(query, budget_tokens=4000, scope=SCOPE, k=4, recent_share=0.0)
        assert "heron-4417" in ctx.text and "Reykjavik" in ctx.text
        assert counting.pages == [] and len(counting.lines) == 1  # one batch for every hit's lines
        again = store.build_context(query, budget_tokens=4000, scope=SCOPE, k=4, recent_share=0.0)
        assert again.text == ctx.text and len(counting.lines) == 1  # all from the cache
