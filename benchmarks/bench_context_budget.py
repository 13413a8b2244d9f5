"""The recent turns' place in a context: a fixed share of the budget against turns that follow the question.

    .venv/bin/python benchmarks/bench_context_budget.py [--tokens 100k] [--facts 60] [--budgets 2000,4000]

The recall experiment's conversation (its filler, with its roles, and facts planted at ages log-spaced from
200 tokens to the whole stream, so some sit in the text tier and the rest on pages down the ladder) is
streamed into a fresh store with the default forgetting policy, ``age()`` every 250k tokens and at the end.
Each fact's question is then asked with ``build_context(question, mode="text", k=8)`` at each budget, once
per rule for the recent turns:

* ``0.5``: the newest turns of the text tier up to half the budget, whatever the question (the default
  until ``"auto"``; the LangChain history used 0.6);
* ``auto``: the newest four turns, and older turns of the text tier only as hits for the question (on
  top of the k memories).

Per rule and budget: the share of questions whose planted turn is in the context with its answer (verbatim,
or in its block as read back), by where the fact was (the text tier or a page), the context's tokens (mean
and p90), and the share of them spent on the recent turns. Every question asks about something said
earlier, none about the last exchange itself (which both rules always send). Prints a table, writes
benchmarks/results/context_budget_<tokens>.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import table, write_result  # benchmarks/ is on sys.path when a script runs
from planted import fill

import optical_memory as om
from optical_memory.backends.tiktoken_counter import TiktokenCounter
from optical_memory.metrics import normalise_ws
from optical_memory.recall_experiment import make_facts, parse_tokens

SCOPE = "bench"
AGE_EVERY = 250_000
K = 8
RULES: tuple[float | str, ...] = (0.5, "auto")


def evidence(ctx: om.Context, memory_id: int, answer: str) -> bool:
    """The planted turn is in the context with its answer: verbatim among the recent turns, or in its own
    block as recalled (a person's name answers several facts, so finding it elsewhere does not count)."""
    item = next((i for i in ctx.items if i.id == memory_id), None)
    if item is None:
        return False
    if item.origin == "recent":
        return True
    head = f"[memory {memory_id},"
    blocks = [p["text"] for p in ctx.parts if p.get("type") == "text" and p["text"].startswith(head)]
    return any(normalise_ws(answer) in normalise_ws(block) for block in blocks)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="100k")
    ap.add_argument("--facts", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default="2000,4000")
    ap.add_argument("--out", help="JSON path (default: benchmarks/results/context_budget_<tokens>.json)")
    args = ap.parse_args()
    total = parse_tokens(args.tokens)
    out = args.out or str(Path(__file__).parent / "results" / f"context_budget_{args.tokens.lower()}.json")
    budgets = [int(b) for b in args.budgets.split(",")]
    count = TiktokenCounter().count
    facts = make_facts([total], args.facts, seed=args.seed)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, om.open(Path(tmp) / "store") as store:
        planted = fill(
            store, facts, scope=SCOPE, seed=args.seed, total=total, count=count, age_every=AGE_EVERY
        )
        for mid, fact in planted.items():
            question, answer = fact.question, fact.answer
            tier = store.memory_info(mid).tier
            for budget in budgets:
                for rule in RULES:
                    ctx = store.build_context(
                        question, budget_tokens=budget, mode="text", k=K, recent_share=rule, scope=SCOPE
                    )
                    recent = sum(i.tokens for i in ctx.items if i.origin == "recent")
                    rows.append(
                        {
                            "memory": mid,
                            "tier": tier,
                            "budget": budget,
                            "rule": str(rule),
                            "found": evidence(ctx, mid, answer),
                            "tokens": ctx.used_tokens,
                            "recent_tokens": recent,
                        }
                    )
    summary = []
    for budget in budgets:
        for rule in map(str, RULES):
            got = [r for r in rows if r["budget"] == budget and r["rule"] == rule]
            text = [r for r in got if r["tier"] == "text"]
            paged = [r for r in got if r["tier"] != "text"]
            tokens = [r["tokens"] for r in got]
            summary.append(
                {
                    "budget": budget,
                    "rule": rule,
                    "questions": len(got),
                    "found": round(statistics.fmean(r["found"] for r in got), 3),
                    "found_text_tier": round(statistics.fmean(r["found"] for r in text), 3) if text else None,
                    "found_paged": round(statistics.fmean(r["found"] for r in paged), 3) if paged else None,
                    "text_tier_facts": len(text),
                    "tokens_mean": round(statistics.fmean(tokens), 1),
                    "tokens_p90": pct(tokens, 0.9),
                    "recent_share_of_tokens": round(
                        sum(r["recent_tokens"] for r in got) / max(sum(tokens), 1), 3
                    ),
                }
            )
    headers = [
        "budget",
        "recent turns",
        "answer in context",
        "text tier",
        "paged",
        "tokens mean",
        "p90",
        "on recent",
    ]
    print(
        table(
            headers,
            [
                [
                    s["budget"],
                    s["rule"],
                    s["found"],
                    s["found_text_tier"],
                    s["found_paged"],
                    s["tokens_mean"],
                    s["tokens_p90"],
                    f"{s['recent_share_of_tokens']:.0%}",
                ]
                for s in summary
            ],
        )
    )
    payload = {
        "tokens": total,
        "facts": len(facts),
        "k": K,
        "summary": summary,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result(out, "bench_context_budget.py", payload)


if __name__ == "__main__":
    main()
