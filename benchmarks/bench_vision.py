"""Vision-token memory benchmark: context cost per query of each way to inject the same retrieved pages,
and the store's encode and recall rates through DeepSeek-OCR.

    .venv/bin/python benchmarks/bench_vision.py [--model-dir FOLDER] [--skip-rates]

Part 1 (context cost) builds a store from the demo's seeded conversation (audit mode, so the text
baselines can be formed), asks the demo's questions, and for the same retrieved pages reports what they
cost as: plain-text RAG (the pages' text, cl100k tokens), image parts (DeepEncoder's arithmetic), vision
tokens (the decoder's real positions: tokens, row newlines, view separator) and the same-length text
baselines. Positions depend on page geometry only, so a tiny random checkpoint gives exact figures.

Part 2 (rates) times ``sync_vision`` (pages/s per tier) and recall through the decoder (tokens/s) with the
model in ``--model-dir`` (default: a full-size random checkpoint written to a temporary folder, 6.2 GB).
Writes benchmarks/results/vision.json and prints tables. A script, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import table  # benchmarks/ is on sys.path when a script runs

import optical_memory as om
from optical_memory.config import AgingPolicy, StoreConfig, Tier
from optical_memory.demo import FACTS, conversation
from optical_memory.model.config import OCRConfig
from optical_memory.model.ocr import DeepseekOCR
from optical_memory.model.testing import materialise_random, random_model, write_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
LADDER = AgingPolicy(
    text_turns=16,
    tiers=(
        Tier(side=1024, max_turns=64),
        Tier(side=640, max_turns=256),
        Tier(side=512, max_turns=1024),
        Tier(side=384, max_turns=4096),
    ),
)


def build_store(folder: Path, model_dir: Path, tokens: int) -> om.OpticalMemory:
    store = om.open(
        folder,
        config=StoreConfig(aging=LADDER, retain_text=True, model="deepseek-ocr", model_dir=str(model_dir)),
    )
    turns = list(conversation(seed=0, min_tokens=tokens, count=store.counter.count))
    store.add_many([{"text": t.text, "role": t.role, "timestamp": t.timestamp} for t in turns], scope="u")
    store.age(now=turns[-1].timestamp + 60)
    return store


def context_costs(store: om.OpticalMemory, k: int) -> list[dict[str, Any]]:
    rows = []
    for fact in FACTS:
        ctx = store.build_context(
            fact.question, budget_tokens=100_000, mode="vision", scope="u", k=k, recent_share=0
        )
        pages = [p for p in ctx.parts if p["type"] == "vision"]
        page_ids = [p["page_id"] for p in pages]
        texts = [store.page_text(pid) or "" for pid in page_ids]
        newline = store.encoder.count_text("\n")  # type: ignore[union-attr]
        with store._session() as s:
            from optical_memory.db import PageRow

            sides = [s.get(PageRow, pid).side for pid in page_ids]  # type: ignore[union-attr]
        truncated = store.build_context(
            fact.question,
            budget_tokens=100_000,
            mode="vision",
            scope="u",
            k=k,
            recent_share=0,
            page_form="truncate",
        )
        rows.append(
            {
                "question": fact.question,
                "pages": len(pages),
                "sides": sides,
                "rag_text_cl100k": sum(store.counter.count(t) for t in texts),
                "image_vision_tokens": sum(om.vision_tokens(side) for side in sides if side),
                "vision_positions": sum(p["positions"] + newline for p in pages),
                "truncate_positions": sum(
                    store.encoder.count_text(p["text"]) + newline  # type: ignore[union-attr]
                    for p in truncated.parts
                    if p["type"] == "text" and "page_id" in p
                ),
            }
        )
    return rows


def rates(store: om.OpticalMemory, pages_per_tier: int, recall_tokens: int) -> dict[str, Any]:
    from sqlalchemy import select

    from optical_memory.db import PageRow, VisionRow

    out: dict[str, Any] = {"encode_pages_per_s": {}, "recall": {}}
    with store._session() as s:
        by_side: dict[int, list[int]] = {}
        for page in s.scalars(select(PageRow).where(PageRow.side.is_not(None))):
            by_side.setdefault(page.side, []).append(page.id)  # type: ignore[arg-type]
    for side, ids in sorted(by_side.items(), reverse=True):
        chosen = ids[:pages_per_tier]
        with store._session() as s, s.begin():  # forget their tokens so sync encodes them again
            s.query(VisionRow).filter(VisionRow.page_id.in_(chosen)).delete()
        start = time.perf_counter()
        encoded = store.sync_vision(chosen)
        out["encode_pages_per_s"][side] = round(encoded / (time.perf_counter() - start), 3)
    from optical_memory.model import GenerationConfig

    model = store.encoder.model  # type: ignore[union-attr]
    side, ids = max(by_side.items())
    [image] = store.page_image(_first_memory(store, ids[0]))[:1]
    config = GenerationConfig(max_new_tokens=recall_tokens, ngram_size=20, window_size=50)
    times, counts = [], []
    for attempt in range(3):  # the first is a warm-up
        start = time.perf_counter()
        vision = model.encode([image], side)
        embeds = model.embed_prompt(vision, "<image>\nFree OCR.")[None]
        generated = model.generate_tokens(
            embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long), config=config
        )
        if attempt:
            times.append(time.perf_counter() - start)
            counts.append(len(generated.tokens[0]))
    out["recall"] = {
        "side": side,
        "max_new_tokens": recall_tokens,
        "generated_tokens": counts,
        "seconds_per_page": round(statistics.median(times), 2),
        "tokens_per_s_incl_encode_and_prefill": round(sum(counts) / sum(times), 2),
    }
    return out


def _first_memory(store: om.OpticalMemory, page_id: int) -> int:
    from sqlalchemy import select

    from optical_memory.db import SpanRow

    with store._session() as s:
        return int(s.scalar(select(SpanRow.memory_id).where(SpanRow.page_id == page_id).limit(1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tokens",
        type=int,
        default=30_000,
        help="at least this many text tokens (the demo's conversation always "
        "runs on to its last planted fact, ~89k tokens)",
    )
    p.add_argument("-k", type=int, default=4, help="memories retrieved per question")
    p.add_argument(
        "--model-dir", type=Path, help="DeepSeek-OCR folder for part 2 (default: random full size)"
    )
    p.add_argument("--pages-per-tier", type=int, default=2)
    p.add_argument("--recall-tokens", type=int, default=32)
    p.add_argument("--skip-rates", action="store_true", help="part 1 only")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(2)
    result: dict[str, Any] = {"tokens": args.tokens, "k": args.k}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_checkpoint(Path(tmp) / "tiny", random_model(OCRConfig.tiny()), dtype=torch.float32)
        with build_store(Path(tmp) / "store1", tiny, args.tokens) as store:
            rows = context_costs(store, args.k)
            stats = store.stats()
            result["store"] = {
                "memories": stats.memories,
                "pages": stats.pages,
                "text_tokens": stats.text_tokens,
            }
        result["context"] = rows
        print(f"\nStore: {result['store']}")
        print(f"Context cost of the pages retrieved for each demo question (k={args.k})\n")
        keys = ["pages", "rag_text_cl100k", "image_vision_tokens", "vision_positions", "truncate_positions"]
        print(table(["question", *keys], [[r["question"][:40], *[r[k] for k in keys]] for r in rows]))
        totals = {k: sum(r[k] for r in rows) for k in keys[1:]}
        result["totals"] = totals
        print("\ntotals: " + ", ".join(f"{k} {v:,}" for k, v in totals.items()))
        if not args.skip_rates:
            model_dir = args.model_dir
            if model_dir is None:
                model_dir = Path(tmp) / "full"
                with torch.device("meta"):
                    model = DeepseekOCR(OCRConfig())
                write_checkpoint(model_dir, materialise_random(model), shards=4)
                del model
            with build_store(Path(tmp) / "store2", model_dir, 8_000) as store:
                result["rates"] = rates(store, args.pages_per_tier, args.recall_tokens)
            result["rates"]["random_full_size"] = args.model_dir is None
            print(
                "\nEncode (sync_vision) pages/s per tier, bfloat16, 2 threads:",
                result["rates"]["encode_pages_per_s"],
            )
            print("Recall through the decoder:", result["rates"]["recall"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vision.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out / 'vision.json'}")


if __name__ == "__main__":
    main()
