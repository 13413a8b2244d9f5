"""Image contexts priced in the target model's own tokens, against the same hits sent as text.

    .venv/bin/python benchmarks/bench_image_targets.py [--tokens 100k] [--facts 60] [--targets gpt-4o,claude]

The recall experiment's conversation (its filler, with facts planted at ages log-spaced over the stream)
is streamed into a fresh store with the default forgetting policy, ``age()`` every 250k tokens and at the
end, so old facts sit on pages at 640, 512 or 384 px. Each fact's question is then asked once:

* recall@5: the fact's turn among ``search(question, k=5)``. Both forms below send those same 5 hits, so
  they have equal recall@5 by construction;
* text: ``build_context(question, mode="text", k=5, recent_share=0)``, its cl100k tokens (the hits' text
  as read back, what a text RAG over this store would send);
* image, per target: ``build_context(question, mode="image", k=5, recent_share=0, target=...)``, its
  tokens in that target's pricing, and whether the evidence is legible: the fact's answer appears in what
  the store's reader reads from the images sent, each resized as the target resizes it (asked only where
  the fact is among the hits).

Prints a table, writes benchmarks/results/image_targets.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path

from common import table, write_result  # benchmarks/ is on sys.path when a script runs
from PIL import Image
from planted import fill

import optical_memory as om
from optical_memory.backends.tiktoken_counter import TiktokenCounter
from optical_memory.pricing import TARGETS
from optical_memory.recall_experiment import make_facts, parse_tokens

SCOPE = "bench"
AGE_EVERY = 250_000
K = 5


def images(ctx: om.Context) -> list[Image.Image]:
    out = []
    for part in ctx.parts:
        if part["type"] == "image_url":
            data = part["image_url"]["url"].removeprefix("data:image/png;base64,")
            out.append(Image.open(io.BytesIO(base64.b64decode(data))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="100k")
    ap.add_argument("--facts", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default="gpt-4o,claude,gemini-2,qwen2.5-vl")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "image_targets.json"))
    args = ap.parse_args()
    total = parse_tokens(args.tokens)
    targets = args.targets.split(",")
    count = TiktokenCounter().count
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, om.open(Path(tmp) / "store") as store:
        planted = make_facts([total], args.facts, seed=args.seed)
        facts = fill(
            store,
            planted,
            scope=SCOPE,
            seed=args.seed,
            total=total,
            count=count,
            age_every=AGE_EVERY,
            roles=False,
        )
        rows = []
        for mid, fact in facts.items():
            question, answer = fact.question, fact.answer
            hits = store.search(question, k=K, scope=SCOPE)
            row = {"memory": mid, "found": mid in [h.id for h in hits], "tier": store.memory_info(mid).tier}
            text = store.build_context(question, budget_tokens=10**9, k=K, recent_share=0.0, scope=SCOPE)
            row["text_tokens"] = text.used_tokens
            for target in targets:
                ctx = store.build_context(
                    question,
                    budget_tokens=10**9,
                    mode="image",
                    k=K,
                    recent_share=0.0,
                    scope=SCOPE,
                    target=target,
                )
                row[f"{target}_tokens"] = ctx.used_tokens
                if row["found"] and row["tier"] != "text":
                    price = TARGETS[target]
                    seen = [im.resize(price.resize(*im.size), Image.Resampling.LANCZOS) for im in images(ctx)]
                    read = " ".join(line.text for page in store.reader.read(seen) for line in page)
                    row[f"{target}_legible"] = answer in read
                    row[f"{target}_sizes"] = [list(im.size) for im in seen]
            rows.append(row)
    paged = [r for r in rows if r["found"] and r["tier"] != "text"]
    result = {
        "tokens": total,
        "facts": len(rows),
        "recall_at_5": round(statistics.fmean(r["found"] for r in rows), 3),
        "paged_found": len(paged),
        "tiers": {t: sum(r["tier"] == t for r in rows) for t in sorted({r["tier"] for r in rows})},
        "text_tokens_mean": round(statistics.fmean(r["text_tokens"] for r in rows), 1),
        "targets": {
            t: {
                "tokens_mean": round(statistics.fmean(r[f"{t}_tokens"] for r in rows), 1),
                "legible": round(statistics.fmean(r[f"{t}_legible"] for r in paged), 3) if paged else None,
            }
            for t in targets
        },
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    headers = ["form", "tokens / query", "vs text", "evidence legible"]
    table_rows = [["text (cl100k)", result["text_tokens_mean"], "1.00x", "-"]]
    for t, v in result["targets"].items():
        ratio = v["tokens_mean"] / result["text_tokens_mean"] if result["text_tokens_mean"] else 0
        table_rows.append([f"image, {t}", v["tokens_mean"], f"{ratio:.2f}x", v["legible"]])
    print(f"{args.tokens}: {len(rows)} facts, recall@5 {result['recall_at_5']}, tiers {result['tiers']}")
    print(table(headers, table_rows))
    write_result(args.out, "bench_image_targets.py", result)


if __name__ == "__main__":
    main()
