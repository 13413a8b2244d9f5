"""Image contexts priced in the target model's own tokens, against the same hits sent as text.

    .venv/bin/python benchmarks/bench_image_targets.py [--tokens 100k] [--facts 60] [--targets gpt-4o,claude]
    .venv/bin/python benchmarks/bench_image_targets.py --kept DIR [--out FILE]   # a kept 10M store, see below

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

The text form's "evidence legible" is the share of those facts whose answer is in the text context (the
reader's read of the pages at their tiers). "Legible where text reads it" counts only those: whether the
image path loses evidence the store still holds, apart from what the forgetting policy took.

``--kept DIR`` asks the same of the recall store ``bench_retrieval.py --keep DIR`` kept (``DIR/recall``, e.g.
10M tokens, which takes about 1.5 h to build), aged once with the default policy if it never was, instead of
a fresh store aged every 250k tokens. Its facts come from the same ``make_facts``; their answers are found
again by their statements. It reads the kept store's pages (text mode fills its read cache).

Prints a table, writes benchmarks/results/image_targets.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import table, write_result  # benchmarks/ is on sys.path when a script runs
from PIL import Image
from planted import fill
from tqdm import tqdm

import optical_memory as om
from optical_memory.backends.tiktoken_counter import TiktokenCounter
from optical_memory.pricing import TARGETS
from optical_memory.recall_experiment import PlantedFact, make_facts, parse_tokens

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


def kept_facts(folder: Path, seed: int) -> tuple[int, dict[int, PlantedFact]]:
    """The checkpoint and planted facts (by memory id) of the recall store ``bench_retrieval.py --seed
    seed`` kept in ``folder``, each with its answer: the kept file has statements and questions,
    ``make_facts`` the rest."""
    kept = json.loads((folder / "recall.facts.json").read_text())
    checkpoint = kept["checkpoint_tokens"]
    made = {f.statement: f for f in make_facts([checkpoint], len(kept["facts"]), seed=seed)}
    unknown = [f["statement"] for f in kept["facts"].values() if f["statement"] not in made]
    if unknown:
        raise SystemExit(
            f"{folder}: {unknown[0]!r} is not a fact of --seed {seed}: give the seed it was built with"
        )
    facts = {int(mid): made[f["statement"]] for mid, f in kept["facts"].items()}
    return checkpoint, facts


def ask(store: om.OpticalMemory, facts: dict[int, PlantedFact], targets: list[str]) -> list[dict]:
    """Each fact's question once: recall@5, the text context's cl100k tokens, and per target the image
    context's tokens and whether its answer is legible in the images as the target would see them."""
    rows = []
    for mid, fact in tqdm(facts.items(), desc="ask", unit="fact"):
        question, answer = fact.question, fact.answer
        hits = store.search(question, k=K, scope=SCOPE)
        row = {"memory": mid, "found": mid in [h.id for h in hits], "tier": store.memory_info(mid).tier}
        text = store.build_context(question, budget_tokens=10**9, k=K, recent_share=0.0, scope=SCOPE)
        row["text_tokens"] = text.used_tokens
        row["text_has_answer"] = answer in text.text  # what the reader read from the pages, at their tiers
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
    return rows


def summarise(rows: list[dict], targets: list[str]) -> dict:
    """The means and shares over the asked facts' rows. Legibility counts the facts found that are still on
    a page (not in the text tier, not forgotten: neither form can show those)."""
    paged = [r for r in rows if r["found"] and r["tier"] not in ("text", "forgotten")]
    read = [r for r in paged if r["text_has_answer"]]  # the tier still holds the answer for the reader
    return {
        "facts": len(rows),
        "recall_at_5": round(statistics.fmean(r["found"] for r in rows), 3),
        "paged_found": len(paged),
        "paged_text_has_answer": len(read),
        "tiers": {t: sum(r["tier"] == t for r in rows) for t in sorted({r["tier"] for r in rows})},
        "text_tokens_mean": round(statistics.fmean(r["text_tokens"] for r in rows), 1),
        "text_legible": round(len(read) / len(paged), 3) if paged else None,
        "targets": {
            t: {
                "tokens_mean": round(statistics.fmean(r[f"{t}_tokens"] for r in rows), 1),
                "legible": round(statistics.fmean(r[f"{t}_legible"] for r in paged), 3) if paged else None,
                "legible_where_text_has_it": round(statistics.fmean(r[f"{t}_legible"] for r in read), 3)
                if read
                else None,
            }
            for t in targets
        },
    }


def print_table(result: dict) -> None:
    print(
        f"{result['tokens']:,} tokens: {result['facts']} facts, recall@5 {result['recall_at_5']}, "
        f"tiers {result['tiers']}"
    )
    headers = ["form", "tokens / query", "vs text", "evidence legible", "legible where text reads it"]
    table_rows = [["text (cl100k)", result["text_tokens_mean"], "1.00x", result["text_legible"], "-"]]
    for t, v in result["targets"].items():
        ratio = v["tokens_mean"] / result["text_tokens_mean"] if result["text_tokens_mean"] else 0
        table_rows.append(
            [f"image, {t}", v["tokens_mean"], f"{ratio:.2f}x", v["legible"], v["legible_where_text_has_it"]]
        )
    print(table(headers, table_rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="100k")
    ap.add_argument("--facts", type=int, default=60)
    ap.add_argument(
        "--seed", type=int, default=0, help="the facts' seed (with --kept: the one it was built with)"
    )
    ap.add_argument("--targets", default="gpt-4o,claude,gemini-2,qwen2.5-vl")
    ap.add_argument("--kept", metavar="DIR", help="ask the recall store bench_retrieval.py --keep DIR kept")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "image_targets.json"))
    ap.add_argument(
        "--summarise", metavar="FILE", help="recompute a result's summary from its rows, in place"
    )
    args = ap.parse_args()
    if args.summarise:
        path = Path(args.summarise)
        kept = json.loads(path.read_text())
        targets = list(kept["targets"])
        result = {**kept, **summarise(kept["rows"], targets), "rows": kept["rows"]}
        print_table(result)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
        return
    targets = args.targets.split(",")
    started = time.perf_counter()
    if args.kept:
        total, facts = kept_facts(Path(args.kept), args.seed)
        with om.open(Path(args.kept) / "recall") as store:
            if store.stats().pages == 0:
                with tqdm(desc="age", unit="page") as bar:
                    store.age(progress=bar.update)
            rows = ask(store, facts, targets)
    else:
        total = parse_tokens(args.tokens)
        with tempfile.TemporaryDirectory() as tmp, om.open(Path(tmp) / "store") as store:
            planted = make_facts([total], args.facts, seed=args.seed)
            facts = fill(
                store,
                planted,
                scope=SCOPE,
                seed=args.seed,
                total=total,
                count=TiktokenCounter().count,
                age_every=AGE_EVERY,
                roles=False,
            )
            rows = ask(store, facts, targets)
    result = {"tokens": total, **summarise(rows, targets), "seconds": round(time.perf_counter() - started, 1)}
    print_table(result)
    result["rows"] = rows
    write_result(args.out, "bench_image_targets.py", result)


if __name__ == "__main__":
    main()
