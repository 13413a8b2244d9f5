"""Damaged pages on a real store: one page blob overwritten with random bytes (bit rot: its mtime is left
old), another deleted, a third whole. Contexts leave the damaged pages out and say so, recall names them,
and one repair heals what is still known (retained text, the cached read of the page's tier) and leaves
``verify`` clean; nothing else stored is lost."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

import optical_memory as om
from optical_memory.cli import main
from optical_memory.config import StoreConfig
from optical_memory.db import PageRow, SpanRow
from optical_memory.experiments import char_precision
from optical_memory.render import Renderer

SCOPE = "home"
DOCS = (
    "The boiler was serviced by Ada on the third of May.",  # its page is read, then overwritten
    "The spare key is under the blue flower pot by the door.",  # its page is deleted, never read
    "The wifi password is on a card inside the hall cupboard.",  # its page stays whole
)
TURNS = (("user", "Remind me to water the ferns."), ("assistant", "I will remind you on Sunday."))
HOUR = 3600.0


@dataclass
class Damaged:
    store: om.OpticalMemory
    docs: list[int]  # memory ids of DOCS
    turns: list[int]  # memory ids of TURNS (the text tier)
    corrupt: int  # page id of DOCS[0]
    missing: int  # page id of DOCS[1]
    whole: int  # page id of DOCS[2]
    bad_blob: str  # the overwritten blob's name
    read: str | None  # DOCS[0] as the reader read it before the damage (None: not read)


def page_of(store: om.OpticalMemory, memory_id: int) -> tuple[int, str]:
    with store._session() as s:
        [(page_id, blob)] = s.execute(
            select(PageRow.id, PageRow.blob)
            .join(SpanRow, SpanRow.page_id == PageRow.id)
            .where(SpanRow.memory_id == memory_id)
        ).all()
    return page_id, blob


def rot(path: Path) -> None:
    """Overwrite a file with random bytes of its size and leave its mtime an hour old, as bit rot does."""
    size = path.stat().st_size
    path.write_bytes(random.Random(0).randbytes(size))
    old = time.time() - HOUR
    os.utime(path, (old, old))


def damage(store: om.OpticalMemory, *, read_first: bool) -> Damaged:
    """Store DOCS (one page each, text not retained unless configured) and TURNS, read DOCS[0]'s page once
    if asked (its read is cached for its tier), then overwrite its blob and delete DOCS[1]'s."""
    docs = [store.add(text, scope=SCOPE, kind="document") for text in DOCS]
    turns = [store.add(text, scope=SCOPE, role=role) for role, text in TURNS]
    read = store.recall(docs[0], read=True).text if read_first else None
    (corrupt, bad_blob), (missing, gone_blob), (whole, _) = (page_of(store, m) for m in docs)
    rot(store.blobs.path(bad_blob))
    store.blobs.path(gone_blob).unlink()
    return Damaged(store, docs, turns, corrupt, missing, whole, bad_blob, read)


def tiny(tmp_path: Path, embedder, reader=None, **options) -> om.OpticalMemory:
    config = StoreConfig.tiny(**options)
    backends = {"reader": reader} if reader is not None else {}
    return om.open(tmp_path / "store", config=config, embedder=embedder, **backends)


def retrieved(ctx: om.Context) -> list[int]:
    return [i.id for i in ctx.items if i.origin == "retrieved"]


# -- context -------------------------------------------------------------------------------------------------


def test_image_context_leaves_damaged_pages_out_and_reports_them(tmp_path, embedder):
    with tiny(tmp_path, embedder) as store:
        d = damage(store, read_first=False)
        ctx = store.build_context("boiler key wifi", budget_tokens=4000, mode="image", scope=SCOPE, k=10)
        assert sorted(ctx.damaged) == sorted([d.corrupt, d.missing])
        assert retrieved(ctx) == [d.docs[2]]  # the whole page is still attached...
        assert sum(p["type"] == "image_url" for p in ctx.parts) == 1
        assert "water the ferns" in ctx.text  # ...and so are the recent turns
        assert {i.id for i in ctx.items if i.origin == "recent"} == set(d.turns)


@pytest.mark.slow
def test_text_context_leaves_damaged_pages_out_and_reports_them(tmp_path, embedder, reader):
    with tiny(tmp_path, embedder, reader) as store:
        d = damage(store, read_first=True)  # DOCS[0]'s read is cached: still not served for a damaged page
        ctx = store.build_context("boiler key wifi", budget_tokens=4000, mode="text", scope=SCOPE, k=10)
        assert sorted(ctx.damaged) == sorted([d.corrupt, d.missing])
        assert retrieved(ctx) == [d.docs[2]]
        assert store.recall(d.docs[2]).text in ctx.text and "water the ferns" in ctx.text


def test_text_context_serves_retained_text_of_a_damaged_page(tmp_path, embedder):
    with tiny(tmp_path, embedder, retain_text=True) as store:
        d = damage(store, read_first=False)
        ctx = store.build_context("boiler key wifi", budget_tokens=4000, mode="text", scope=SCOPE, k=10)
        assert ctx.damaged == []  # retained text is not the page: nothing was left out
        assert sorted(retrieved(ctx)) == sorted(d.docs)
        assert all(text in ctx.text for text in DOCS)


@pytest.mark.slow
def test_vision_context_leaves_damaged_pages_out_and_reports_them(tmp_path, embedder):
    with tiny(tmp_path, embedder, encoder="optical-mini") as store:
        docs = [store.add(text, scope=SCOPE, kind="document") for text in DOCS]
        assert store.sync_vision() == 3  # tokens of the intact pages, made before the damage
        (corrupt, bad), (missing, gone), (whole, _) = (page_of(store, m) for m in docs)
        rot(store.blobs.path(bad))
        store.blobs.path(gone).unlink()
        ctx = store.build_context("boiler key wifi", budget_tokens=4000, mode="vision", scope=SCOPE, k=10)
        assert sorted(ctx.damaged) == sorted([corrupt, missing])
        assert [p["page_id"] for p in ctx.parts if p["type"] == "vision"] == [whole]
        assert retrieved(ctx) == [docs[2]]
        assert ctx.inputs_embeds.shape[1] == ctx.used_tokens


# -- recall --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_recall_of_a_damaged_page_names_it_even_when_its_read_is_cached(tmp_path, embedder, reader):
    with tiny(tmp_path, embedder, reader) as store:
        d = damage(store, read_first=True)
        for read in (True, False):  # text not retained: both read the page
            with pytest.raises(om.BlobError, match=rf"memory {d.docs[0]}: page {d.corrupt}: .* corrupt"):
                store.recall(d.docs[0], read=read)
            with pytest.raises(om.BlobError, match=rf"memory {d.docs[1]}: page {d.missing}: .* missing"):
                store.recall(d.docs[1], read=read)
        assert store.recall(d.docs[2], read=True).source == reader.name
        assert [store.recall(i).text for i in d.turns] == [text for _, text in TURNS]


# -- repair --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_repair_heals_a_page_from_its_cached_read_and_leaves_verify_clean(tmp_path, embedder, reader):
    with tiny(tmp_path, embedder, reader) as store:
        d = damage(store, read_first=True)
        assert d.read and char_precision(DOCS[0], d.read) > 0.8  # the page was readable a moment before
        found = store.verify()
        assert (found.corrupt_blobs, found.missing_blobs) == ([d.corrupt], [d.missing])

        report = store.verify(repair=True)
        assert report.rerendered == [d.corrupt] and report.from_cache == [d.corrupt]
        assert report.marked_lost == [d.missing]  # nothing is known of it: no text, never read
        # the damaged file is gone or healed over (drawn from an exact read, the page has its old bytes)
        assert all(store.blobs.check(name) is None for name in store.blobs.names())
        after = store.verify()
        assert after.ok, after

        assert store.recall(d.docs[0], read=True).text == d.read  # what was readable still is
        assert store.recall(d.docs[0]).text == d.read
        [image] = store.page_image(d.docs[0])
        assert image.size == (256, 256)
        reread = " ".join(line.text for line in reader.read([image])[0])
        assert char_precision(d.read, reread) > 0.9  # the healed page shows what was read
        lost = store.recall(d.docs[1])
        assert (lost.text, lost.tier) == ("", "forgotten")

        # nothing else stored is lost: the whole page, the recent turns, and every memory's gist
        assert char_precision(DOCS[2], store.recall(d.docs[2], read=True).text) > 0.8
        assert [store.recall(i).text for i in d.turns] == [text for _, text in TURNS]
        for memory_id, text in zip(d.docs, DOCS, strict=True):
            assert memory_id in [h.id for h in store.search(text, scope=SCOPE, k=2)]
        assert len(store.memories()) == len(DOCS) + len(TURNS)


@pytest.mark.slow
def test_repair_heals_an_aged_page_of_turns_from_the_read_of_its_tier(tmp_path, embedder, reader):
    with tiny(tmp_path, embedder, reader) as store:
        turns = [f"Turn {i}: the parcel for flat {i} is on shelf {i % 5}." for i in range(16)]
        ids = [store.add(text, scope=SCOPE, role="user") for text in turns]
        store.age()  # the oldest 8 turns are on one closed page, downsampled to 128 px, their text dropped
        page, blob = page_of(store, ids[0])
        with store._session() as s:
            on_page = list(s.scalars(select(SpanRow.memory_id).where(SpanRow.page_id == page)))
        assert len(on_page) == 8 and store.memory_info(ids[0]).tier == "128"
        before = [store.recall(m, read=True).text for m in on_page]  # one read of the page, cached
        assert char_precision(turns[0], before[0]) > 0.5  # legible at 128 px, if not perfectly
        rot(store.blobs.path(blob))
        report = store.verify(repair=True)
        assert report.from_cache == [page] and report.marked_lost == []
        assert store.verify().ok
        assert [store.recall(m, read=True).text for m in on_page] == before
        [image] = store.page_image(ids[0])
        assert image.size == (128, 128)  # drawn again at the page side, then downsampled to its tier


@pytest.mark.slow
def test_repair_heals_a_scanned_page_from_its_read(tmp_path, embedder, reader):
    scan = tmp_path / "scan.png"
    Renderer(StoreConfig.tiny().render).draw(["Gas meter: cellar,", "behind the bikes."]).save(scan)
    with tiny(tmp_path, embedder, reader) as store:
        [memory] = store.add_file(scan, scope=SCOPE)  # a free-form page: no line grid, text not retained
        before = store.recall(memory, read=True).text
        assert char_precision("Gas meter: cellar, behind the bikes.", before) > 0.8
        page, blob = page_of(store, memory)
        store.blobs.path(blob).unlink()
        report = store.verify(repair=True)
        assert report.from_cache == [page] and store.verify().ok
        assert store.recall(memory, read=True).text == before
        reread = " ".join(line.text for line in reader.read(store.page_image(memory))[0])
        assert char_precision(before, reread) > 0.8  # it comes back as a text page of what was read


@pytest.mark.slow
def test_repair_prefers_retained_text_to_a_cached_read(tmp_path, embedder, reader):
    with tiny(tmp_path, embedder, reader, retain_text=True) as store:
        docs = [store.add(text, scope=SCOPE, kind="document") for text in DOCS[:2]]
        store.recall(docs[0], read=True)  # a cached read of the page, besides its retained text
        (page, blob), (other, other_blob) = (page_of(store, m) for m in docs)
        rot(store.blobs.path(blob))
        store.blobs.path(other_blob).unlink()
        report = store.verify(repair=True)
        assert sorted(report.rerendered) == sorted([page, other]) and report.from_cache == []
        # re-rendered from the exact text: the very same pixels, so the same content-addressed blob
        assert [page_of(store, m)[1] for m in docs] == [blob, other_blob]
        assert store.blobs.check(blob) is None and store.blobs.check(other_blob) is None
        assert store.verify().ok
        assert [store.recall(m).text for m in docs] == list(DOCS[:2])


def test_repair_marks_a_page_lost_only_when_nothing_is_known_of_it(tmp_path, embedder):
    with tiny(tmp_path, embedder) as store:
        d = damage(store, read_first=False)
        report = store.verify(repair=True)
        assert sorted(report.marked_lost) == sorted([d.corrupt, d.missing]) and report.rerendered == []
        assert d.bad_blob not in set(store.blobs.names())
        assert store.verify().ok
        assert store.page_image(d.docs[2])  # the whole page is untouched
        assert [store.recall(i).text for i in d.turns] == [text for _, text in TURNS]


# -- the command line ----------------------------------------------------------------------------------------


def test_cli_verify_repair_then_verify_exits_0(tmp_path, capsys, embedder):
    path = tmp_path / "store"
    with om.open(path, embedder=embedder) as store:  # the CLI opens stores with the default config
        d = damage(store, read_first=False)
    base = ["--store", str(path), "-q"]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "verify"])
    assert exit_info.value.code == 1
    capsys.readouterr()
    main([*base, "verify", "--repair"])
    repaired = json.loads(capsys.readouterr().out)
    assert sorted(repaired["marked_lost"]) == sorted([d.corrupt, d.missing])
    main([*base, "verify"])  # exits 0: no SystemExit
    report = json.loads(capsys.readouterr().out)
    assert report["orphan_blobs"] == [] and report["corrupt_blobs"] == [] and report["missing_blobs"] == []
