"""The DeepSeek-OCR reader and encoder backends through the real store, on a tiny random checkpoint the
tests write in the official layout (the real one is 6.7 GB and cannot be fetched here). Random weights read
nothing meaningful, so these tests check the plumbing exactly: which side each page is encoded at, how
many vision tokens that gives, that recall goes through the decoder and is cached per tier, and the errors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import optical_memory as om
from optical_memory.backends import make_reader
from optical_memory.backends.deepseek import MODEL_DIR_ENV, DeepseekEncoder, DeepseekOCRReader
from optical_memory.backends.rapidocr_reader import RapidOCRReader
from optical_memory.cli import main
from optical_memory.config import StoreConfig
from optical_memory.model import GenerationConfig, OCRConfig
from optical_memory.model.testing import random_model, write_checkpoint

TURNS = [
    ("user", "The spare key for the shed is under the blue flowerpot by the gate."),
    ("assistant", "Noted: the spare shed key is under the blue flowerpot."),
    ("user", "My train to Porto leaves at 07:42 from platform 3 on Friday."),
    ("assistant", "Friday, 07:42, platform 3, to Porto. Safe travels."),
    ("user", "Please remind me to water the tomatoes every second evening."),
    ("assistant", "I will remind you every second evening to water the tomatoes."),
] * 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("deepseek-ocr"), random_model(OCRConfig.tiny(), seed=3))


class CountingReader(DeepseekOCRReader):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pages_read = 0

    def read(self, images):
        self.pages_read += len(images)
        return super().read(images)


def open_tiny(path, checkpoint, embedder, **options):
    config = StoreConfig.tiny(
        model="deepseek-ocr", model_dir=str(checkpoint), model_dtype="float32", **options
    )
    return om.open(path, config=config, embedder=embedder)


def test_encoder_gives_the_exact_vision_tokens_per_tier(tmp_path, checkpoint, embedder):
    with open_tiny(tmp_path / "store", checkpoint, embedder) as store:
        ids = store.add_many([{"text": t, "role": r} for r, t in TURNS], scope="s")
        store.age()
        [page] = store.page_image(ids[0])
    encoder = DeepseekEncoder(checkpoint, dtype="float32")
    # the tiny store's ladder: 256 -> 128 -> 64 px; DeepEncoder gives ceil(side/64)^2 tokens, plus a newline
    # per row and the view separator
    sides = {256: 4 * 5 + 1, 128: 2 * 3 + 1, 64: 1 * 2 + 1}
    arrays = encoder.encode([page.resize((side, side)) for side in sides])
    assert [a.shape for a in arrays] == [(n, encoder.dim) for n in sides.values()]
    assert all(a.dtype == np.float16 and np.isfinite(a).all() for a in arrays)
    # the same as the model's own encode of that page at that side
    direct = encoder.model.encode([page.resize((256, 256))], 256)[0].float().numpy()
    np.testing.assert_allclose(arrays[0], direct, rtol=1e-2, atol=1e-3)


def test_recall_reads_through_the_decoder_and_caches_per_tier(tmp_path, checkpoint, embedder):
    reader = CountingReader(checkpoint, dtype="float32", max_new_tokens=6)
    config = StoreConfig.tiny(model="deepseek-ocr", model_dir=str(checkpoint))
    with om.open(tmp_path / "store", config=config, embedder=embedder, reader=reader) as store:
        ids = store.add_many([{"text": t, "role": r} for r, t in TURNS[:6]], scope="s")
        store.age()
        first = store.recall(ids[0], read=True)
        assert first.source == "deepseek-ocr" and first.tier == "256"
        assert reader.pages_read == 1
        assert store.recall(ids[0], read=True) == first  # cached for this tier
        assert reader.pages_read == 1
        # the reader's lines are what the model itself generates from the page at 256 px
        [page] = store.page_image(ids[0])
        assert page.size == (256, 256)
        [expected] = reader.model.read([page], 256, config=GenerationConfig(max_new_tokens=6))
        [lines] = reader.read([page])
        assert [t.text for t in lines] == [x.strip() for x in expected.splitlines() if x.strip()]
        assert reader.pages_read == 2
        later = [{"text": f"later turn {i}: " + "filler words " * 20, "role": "user"} for i in range(12)]
        store.add_many(later, scope="s")
        store.age()  # the first page moves down the ladder: its recall cache for 256 px no longer applies
        second = store.recall(ids[0], read=True)
        assert second.tier in ("128", "64") and second.source == "deepseek-ocr" and reader.pages_read == 3


def test_reader_batches_pages_of_one_side(checkpoint):
    reader = DeepseekOCRReader(checkpoint, dtype="float32", max_new_tokens=5, batch_size=4)
    pages = [random_page(128, seed) for seed in range(3)] + [random_page(64, 9)]
    together = reader.read(pages)
    alone = [reader.read([p])[0] for p in pages]
    assert together == alone
    assert all(isinstance(line.text, str) and line.box is None for lines in together for line in lines)


def random_page(side, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))


def test_configuration_errors_name_what_is_missing(tmp_path, monkeypatch, embedder, checkpoint):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    with pytest.raises(om.InvalidInput, match=MODEL_DIR_ENV):
        om.open(tmp_path / "a", model="deepseek-ocr", embedder=embedder)
    with pytest.raises(om.MissingDependency, match=r"hf download deepseek-ai/DeepSeek-OCR"):
        om.open(tmp_path / "b", model="deepseek-ocr", model_dir=str(tmp_path / "nowhere"), embedder=embedder)
    with pytest.raises(om.InvalidInput, match="'gpt-ocr'"):
        om.open(tmp_path / "c", model="gpt-ocr", embedder=embedder)
    with pytest.raises(om.InvalidInput, match="'float8'"):
        om.open(tmp_path / "d", model="deepseek-ocr", model_dtype="float8", embedder=embedder)
    monkeypatch.setenv(MODEL_DIR_ENV, str(checkpoint))  # the folder may come from the environment
    with om.open(tmp_path / "e", model="deepseek-ocr", embedder=embedder) as store:
        assert isinstance(store.reader, DeepseekOCRReader) and store.reader.model_dir == checkpoint


def test_default_stays_on_the_cpu_reader_and_names_select_backends(tmp_path, embedder, monkeypatch):
    monkeypatch.setenv(MODEL_DIR_ENV, "/nonexistent")  # set but not asked for: ignored
    with om.open(tmp_path / "a", embedder=embedder) as store:
        assert store.config.reader_name == "rapidocr" and isinstance(store.reader, RapidOCRReader)
    with om.open(tmp_path / "b", reader="rapidocr", embedder=embedder) as store:  # a name, not an object
        assert isinstance(store.reader, RapidOCRReader)
    with pytest.raises(om.InvalidInput, match=r"optical_memory\.protocols\.Reader, got int"):
        om.open(tmp_path / "c", reader=42, embedder=embedder)


def test_cli_recalls_through_the_model(tmp_path, capsys, checkpoint, embedder):
    make_reader.cache_clear()  # this test's reader comes from the factory, with its default settings
    try:
        store = str(tmp_path / "store")
        note = tmp_path / "note.txt"
        note.write_text("The wifi password at the cabin is heron-4417.")
        main(["--store", store, "-q", "add", "--file", str(note), "--scope", "home"])
        [doc] = json.loads(capsys.readouterr().out)["ids"]
        main(["--store", store, "-q", "--model-dir", str(checkpoint), "recall", str(doc), "--read"])
        out = capsys.readouterr().out
        assert out.startswith(f"# memory {doc}, tier 1024, source deepseek-ocr")
        model = ["--store", store, "-q", "--model-dir", str(checkpoint)]
        main([*model, "context", "wifi password", "--mode", "vision", "--budget", "600"])
        out = capsys.readouterr().out
        assert '"type": "vision"' in out and '"positions": 273' in out  # a 1024 px page: 16 x 17 + 1
        main([*model, "answer", "wifi password?", "--max-new-tokens", "3"])
        assert capsys.readouterr().out.endswith("\n")
    finally:
        make_reader.cache_clear()


# -- vision tokens in the store ---------------------------------------------------------------------------

POSITIONS = {256: 4 * 5 + 1, 128: 2 * 3 + 1, 64: 1 * 2 + 1}  # ceil(side/64)^2 tokens + newlines + separator


def page_rows(store):
    from sqlalchemy import select

    from optical_memory.db import PageRow, VisionRow

    with store._session() as s:
        pages = {p.id: (p.side, p.blob) for p in s.scalars(select(PageRow))}
        vision = {v.page_id: v for v in s.scalars(select(VisionRow))}
    return pages, vision


def long_turns(n, start=0):
    return [
        {"text": f"turn {start + i}: " + "the quick brown fox jumps " * 6, "role": "user"} for i in range(n)
    ]


def test_pages_hold_vision_tokens_at_their_tier_and_age_with_them(tmp_path, checkpoint, embedder):
    with open_tiny(tmp_path / "store", checkpoint, embedder) as store:
        ids = store.add_many(long_turns(8), scope="s")
        report = store.age()
        pages, vision = page_rows(store)
        assert report["encoded"] == len(pages) > 0
        for page_id, (side, _) in pages.items():
            tokens = store.vision_tokens(page_id)
            assert tokens is not None and tokens.shape == (POSITIONS[side], store.encoder.dim)
            assert tokens.dtype == np.float16
        # what is stored is the encoder's output for the page as it is now
        first = next(iter(pages))
        [image] = store.page_image(ids[0])
        [fresh] = store.encoder.encode([image])
        np.testing.assert_array_equal(store.vision_tokens(first), fresh)
        assert store.age()["encoded"] == 0  # idempotent: nothing is stale

        old_blob = vision[first].blob
        store.add_many(long_turns(10, start=8), scope="s")
        assert store.age()["encoded"] >= 1
        pages, vision = page_rows(store)
        side = pages[first][0]
        assert side in (128, 64)  # the first page moved down the ladder and was encoded again, smaller
        assert store.vision_tokens(first).shape[0] == POSITIONS[side]
        assert vision[first].blob != old_blob and not store.blobs.path(old_blob).exists()

        store.add_many(long_turns(30, start=18), scope="s")
        store.age()  # far enough: the first page is forgotten, and its tokens with it
        pages, vision = page_rows(store)
        assert pages[first] == (None, None)
        assert first not in vision and store.vision_tokens(first) is None
        assert store.verify().ok


def test_delete_drops_the_tokens_that_show_the_deleted_text(tmp_path, checkpoint, embedder):
    with open_tiny(tmp_path / "store", checkpoint, embedder) as store:
        ids = store.add_many(long_turns(6), scope="s")
        store.age()
        pages, vision = page_rows(store)
        [page_id] = [pid for pid in pages if pid in vision][:1]
        old = vision[page_id].blob
        store.delete(ids[0])
        pages, vision = page_rows(store)
        if page_id in pages:  # a shared page was redacted: its tokens went with the old pixels
            assert store.vision_tokens(page_id) is None
            assert store.sync_vision() >= 1 and store.vision_tokens(page_id) is not None
        assert not store.blobs.path(old).exists()
        store.delete_scope("s")
        assert page_rows(store) == ({}, {})
        assert [n for n in store.blobs.names() if n.endswith(".npy")] == []


def test_verify_checks_vision_blobs_and_repair_reencodes(tmp_path, checkpoint, embedder):
    with open_tiny(tmp_path / "store", checkpoint, embedder) as store:
        store.add_many(long_turns(6), scope="s")
        store.age()
        _, vision = page_rows(store)
        page_id, row = next(iter(vision.items()))
        assert store.verify().ok  # vision blobs are referenced, not orphans
        store.blobs.path(row.blob).write_bytes(b"garbage")
        report = store.verify()
        assert report.damaged_vision == [page_id] and not report.ok
        store.verify(repair=True)
        assert store.vision_tokens(page_id) is None
        assert store.sync_vision() == 1 and store.vision_tokens(page_id) is not None
        assert store.verify().ok
        # a context never trips over a bad token blob: it is dropped and the page encoded again
        store.blobs.path(page_rows(store)[1][page_id].blob).write_bytes(b"garbage")
        assert store.vision_tokens(page_id) is None
        ctx = store.build_context("quick brown fox", budget_tokens=500, mode="vision", scope="s")
        assert ctx.used_tokens == ctx.inputs_embeds.shape[1] and store.vision_tokens(page_id) is not None
        assert ctx.text_counter == "decoder"  # the text parts in the decoder's own tokens


def test_a_version_1_store_is_migrated(tmp_path, embedder):
    from sqlalchemy import text

    from optical_memory.db import SCHEMA_VERSION

    path = tmp_path / "old"
    with om.open(path, config=StoreConfig.tiny(), embedder=embedder) as store:
        store.add("kept across the upgrade", scope="s")
        with store._engine.begin() as conn:  # make it look like a store written by schema version 1
            conn.execute(text("DROP TABLE vision"))
            conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    with om.open(path, config=StoreConfig.tiny(), embedder=embedder) as store:
        with store._engine.connect() as conn:
            assert conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == str(
                SCHEMA_VERSION
            )
            assert conn.execute(text("SELECT count(*) FROM vision")).scalar() == 0
        assert store.recall(1).text == "kept across the upgrade"


# -- the vision context and answer ------------------------------------------------------------------------


def test_vision_context_is_the_decoders_input_within_the_budget(tmp_path, checkpoint, embedder):
    with open_tiny(tmp_path / "store", checkpoint, embedder) as store:
        store.add_many(long_turns(12), scope="s")
        store.add("what about the quick brown fox?", scope="s", role="user")
        store.age()
        ctx = store.build_context("the quick brown fox", budget_tokens=400, mode="vision", scope="s")
        hidden = store.encoder.dim
        assert ctx.mode == "vision" and ctx.inputs_embeds.shape == (1, ctx.used_tokens, hidden)
        assert ctx.attention_mask.shape == (1, ctx.used_tokens) and bool(ctx.attention_mask.all())
        assert ctx.used_tokens <= 400
        pages = [p for p in ctx.parts if p["type"] == "vision"]
        assert pages and any(i.origin == "recent" for i in ctx.items)
        # each page's stored tokens sit in the embeddings, right after BOS and the pages before it
        offset = 1
        for part in pages:
            tokens = store.vision_tokens(part["page_id"])
            assert part["positions"] == tokens.shape[0]
            block = ctx.inputs_embeds[0, offset : offset + tokens.shape[0]].float().numpy()
            np.testing.assert_allclose(block, tokens.astype(np.float32), rtol=1e-3, atol=1e-3)
            offset += tokens.shape[0] + store.encoder.count_text("\n")
        # the account: every item's cost, plus BOS, the question, the header, sum to the embeddings' length
        question = store.encoder.count_text("the quick brown fox\n")
        header = store.encoder.count_text("Recent conversation:\n")
        assert 1 + question + header + sum(i.tokens for i in ctx.items) == ctx.used_tokens

        small = store.build_context("the quick brown fox", budget_tokens=30, mode="vision", scope="s")
        assert small.used_tokens <= 30 and small.inputs_embeds.shape[1] == small.used_tokens
        # only faded pages are that cheap: a 64 px page is 3 positions, a 256 px one 21
        assert all(p["positions"] <= 30 - 1 - question for p in small.parts if p["type"] == "vision")
        bare = store.build_context("the quick brown fox", budget_tokens=question + 1, mode="vision")
        assert bare.items == [] and bare.used_tokens == 1 + question
        # a budget beyond any float (the recent turns' share is budget x recent_share) holds everything
        whole = store.build_context("the quick brown fox", budget_tokens=10**4000, mode="vision", scope="s")
        assert {i.id for i in ctx.items} <= {i.id for i in whole.items}
        assert whole.inputs_embeds.shape[1] == whole.used_tokens
        with pytest.raises(om.InvalidInput, match="budget_tokens=2"):
            store.build_context("the quick brown fox", budget_tokens=2, mode="vision", scope="s")


def test_vision_context_takes_an_older_text_tier_hit_as_a_line(tmp_path, checkpoint, embedder):
    """recent_share="auto": a turn of the text tier older than the last four goes in as a hit for the
    question, as a line of text before the recent conversation, and the account still adds up."""
    from optical_memory.config import AgingPolicy

    aging = AgingPolicy(text_turns=16, tiers=StoreConfig.tiny().aging.tiers)
    with open_tiny(tmp_path / "store", checkpoint, embedder, aging=aging) as store:
        ids = store.add_many(
            [{"text": "The fox sleeps in the old quarry.", "role": "user"}]
            + [{"text": f"Small talk number {i}.", "role": "user"} for i in range(6)],
            scope="s",
        )
        ctx = store.build_context(
            "Where does the fox sleep?", budget_tokens=400, mode="vision", scope="s", k=1
        )
        assert [i.id for i in ctx.items if i.origin == "recent"] == ids[-1:-5:-1]
        [hit] = [i for i in ctx.items if i.origin == "retrieved"]
        assert (hit.id, hit.tier) == (ids[0], "text")
        line = "user: The fox sleeps in the old quarry.\n"
        assert {"type": "text", "text": line, "memory_id": ids[0]} in ctx.parts
        assert hit.tokens == store.encoder.count_text(line)
        question = store.encoder.count_text("Where does the fox sleep?\n")
        header = store.encoder.count_text("Recent conversation:\n")
        assert 1 + question + header + sum(i.tokens for i in ctx.items) == ctx.used_tokens
        assert ctx.inputs_embeds.shape[1] == ctx.used_tokens


def test_answer_runs_the_decoder_over_the_context(tmp_path, checkpoint, embedder):
    with open_tiny(tmp_path / "store", checkpoint, embedder) as store:
        store.add_many(long_turns(8), scope="s")
        store.age()
        ctx = store.build_context("where is the fox?", budget_tokens=300, mode="vision", scope="s")
        expected = store.encoder.complete(ctx.inputs_embeds, ctx.attention_mask, max_new_tokens=7)
        answer = store.answer("where is the fox?", budget_tokens=300, scope="s", max_new_tokens=7)
        assert isinstance(answer, str) and answer == expected  # deterministic: greedy over the same input
        with pytest.raises(om.InvalidInput, match="max_new_tokens"):
            store.answer("where?", max_new_tokens=0)


def test_vision_mode_without_a_model_says_what_it_needs(tmp_path, embedder):
    with om.open(tmp_path / "store", config=StoreConfig.tiny(), embedder=embedder) as store:
        store.add("a turn", scope="s")
        with pytest.raises(om.InvalidInput, match="model='deepseek-ocr'"):
            store.build_context("a", budget_tokens=100, mode="vision")
        with pytest.raises(om.InvalidInput, match="model='deepseek-ocr'"):
            store.answer("a")
        with pytest.raises(om.InvalidInput, match="'video'"):
            store.build_context("a", budget_tokens=100, mode="video")


# -- text baselines at the same token budget --------------------------------------------------------------


def test_mean_pool_and_truncate_units():
    from optical_memory.backends.baselines import mean_pool, truncate_ids

    x = np.arange(14, dtype=np.float32).reshape(7, 2)  # 7 tokens, dim 2
    pooled = mean_pool(x, 3)  # runs of 3, 2, 2 tokens
    np.testing.assert_allclose(pooled, [[2, 3], [7, 8], [11, 12]])
    assert mean_pool(x, 10).shape == (7, 2)  # never pads
    assert truncate_ids([5, 6, 7, 8], 2) == [5, 6] and truncate_ids([5], 3) == [5]
    with pytest.raises(om.InvalidInput, match="n >= 1"):
        mean_pool(x, 0)


def test_vision_context_with_text_baselines_in_place_of_pages(tmp_path, checkpoint, embedder):
    with open_tiny(tmp_path / "store", checkpoint, embedder, retain_text=True) as store:
        store.add_many(long_turns(12), scope="s")
        store.age()
        query = "the quick brown fox"
        vision = store.build_context(query, budget_tokens=400, mode="vision", scope="s", recent_share=0.0)
        pooled = store.build_context(
            query, budget_tokens=400, mode="vision", scope="s", recent_share=0.0, page_form="meanpool"
        )
        cut = store.build_context(
            query, budget_tokens=400, mode="vision", scope="s", recent_share=0.0, page_form="truncate"
        )
        pages = [p["page_id"] for p in vision.parts if p["type"] == "vision"]
        assert pages and [p["page_id"] for p in pooled.parts if p.get("page_id")] == pages
        # mean pooling stands in position for position: the same length as the vision context
        assert pooled.used_tokens == vision.used_tokens == pooled.inputs_embeds.shape[1]
        first = pages[0]
        text = store.page_text(first)
        assert text and "quick brown fox" in text
        expected = mean_pool_of(store, text, store.vision_tokens(first).shape[0])
        block = pooled.inputs_embeds[0, 1 : 1 + expected.shape[0]].float().numpy()
        np.testing.assert_allclose(block, expected, rtol=1e-4, atol=1e-5)
        # truncation: each page is the start of its own text, about as many tokens as its vision tokens
        texts = [p for p in cut.parts if p["type"] == "text" and "page_id" in p]
        assert [p["page_id"] for p in texts] == pages and text.startswith(texts[0]["text"][:20])
        assert cut.inputs_embeds.shape[1] == cut.used_tokens <= 400


def mean_pool_of(store, text, n):
    from optical_memory.backends.baselines import mean_pool

    return mean_pool(store.encoder.text_embeddings(text), n)


def test_baselines_need_the_text(tmp_path, checkpoint, embedder):
    with open_tiny(
        tmp_path / "store", checkpoint, embedder
    ) as store:  # retain_text=False: true optical memory
        store.add_many(long_turns(12), scope="s")
        store.age()
        with pytest.raises(om.InvalidInput, match="retain_text=False"):
            store.build_context("fox", budget_tokens=400, mode="vision", scope="s", page_form="meanpool")
        with pytest.raises(om.InvalidInput, match="mode='vision' only"):
            store.build_context("fox", budget_tokens=400, mode="text", page_form="truncate")
        with pytest.raises(om.InvalidInput, match="'zip'"):
            store.build_context("fox", budget_tokens=400, mode="vision", page_form="zip")


def test_vllm_readers_are_chosen_by_name(tmp_path, checkpoint, embedder):
    import importlib.util

    from optical_memory.backends.vllm_backend import VLLMServerReader

    make_reader.cache_clear()
    try:
        with om.open(
            tmp_path / "a", reader="vllm-server", model_url="http://127.0.0.1:9", embedder=embedder
        ) as s:
            assert isinstance(s.reader, VLLMServerReader)
            assert (s.reader.base_url, s.reader.model) == (
                "http://127.0.0.1:9/v1",
                "deepseek-ai/DeepSeek-OCR",
            )
        with pytest.raises(om.InvalidInput, match="model_url"):
            om.open(tmp_path / "b", reader="vllm-server", embedder=embedder)
        if importlib.util.find_spec("vllm") is None:  # the default venv: a clear error, not an ImportError
            store = om.open(tmp_path / "c", reader="vllm", model_dir=str(checkpoint), embedder=embedder)
            with store, pytest.raises(om.MissingDependency, match="pip install vllm"):
                store.reader  # noqa: B018  (the reader is made on first use)
    finally:
        make_reader.cache_clear()
