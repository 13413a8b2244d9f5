"""Store benchmark: ingest throughput, search latency at >= 1M stored text tokens, the default reader's
forgetting curve (recall CER per tier) and bytes on disk per stored text token per tier.

    .venv/bin/python benchmarks/bench_store.py [--tokens 1000000] [--pages 3] [--queries 200]

Prints a table per part and writes benchmarks/results/store.json and benchmarks/results/forgetting_curve.png.
Targets on 2 cores: >= 200k text tokens ingested per minute, search p99 <= 20 ms at 1M tokens,
CER <= 1% at the 1024/640/512 tiers. This is a script, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import table  # benchmarks/ is on sys.path when a script runs

import optical_memory as om
from optical_memory.config import AgingPolicy, Tier
from optical_memory.demo import DAY, FACTS, conversation
from optical_memory.metrics import cer

RESULTS = Path(__file__).resolve().parent / "results"


def bench_ingest_and_search(folder: Path, tokens: int, queries: int) -> dict[str, object]:
    store = om.open(folder / "big")
    turns = list(conversation(seed=1, min_tokens=tokens, count=store.counter.count, facts=()))
    text_tokens = sum(store.counter.count(t.text) for t in turns)
    store.embedder.embed(["warm up"])  # model load is start-up cost, not throughput
    sessions: dict[int, list] = {}
    for t in turns:
        sessions.setdefault(t.session, []).append(t)
    start = time.perf_counter()
    for batch in sessions.values():
        store.add_many(
            [{"text": t.text, "role": t.role, "timestamp": t.timestamp} for t in batch], scope="bench"
        )
    added = time.perf_counter() - start
    age_start = time.perf_counter()
    aged = store.age(now=turns[-1].timestamp + 60)
    aging = time.perf_counter() - age_start
    total = added + aging
    pages = aged["pages_written"]

    rng = np.random.default_rng(0)
    pool = [f.question for f in FACTS] + [t.text[:80] for t in rng.choice(np.array(turns, dtype=object), 64)]
    for q in pool[:5]:
        store.search(q, k=5, scope="bench")
    latencies, embed_only = [], []
    for i in range(queries):
        q = pool[i % len(pool)] + f" ({i})"
        t0 = time.perf_counter()
        store.search(q, k=5, scope="bench")
        latencies.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        store.embedder.embed([q])
        embed_only.append((time.perf_counter() - t0) * 1e3)
    stats = store.stats()
    store.close()
    return {
        "turns": len(turns),
        "text_tokens": text_tokens,
        "pages": pages,
        "add_seconds": round(added, 2),
        "age_seconds": round(aging, 2),
        "turns_per_s": round(len(turns) / total, 1),
        "text_tokens_per_min": round(text_tokens / total * 60),
        "pages_per_s": round(pages / aging, 2) if aging else None,
        "vectors": stats.memories,
        "search_ms_p50": round(float(np.percentile(latencies, 50)), 2),
        "search_ms_p99": round(float(np.percentile(latencies, 99)), 2),
        "query_embed_ms_p50": round(statistics.median(embed_only), 2),
    }


def bench_forgetting(folder: Path, n_pages: int) -> list[dict[str, object]]:
    """Recall CER per tier through the store's own recall path, and bytes per stored text token."""
    sides = [1024, 640, 512, 384, 256]
    policy = AgingPolicy(
        text_turns=0,
        tiers=tuple(Tier(side=s, max_age_s=(i + 1) * DAY) for i, s in enumerate(sides)),
    )
    store = om.open(folder / "curve", retain_text=True, aging=policy)
    turns = list(conversation(seed=2, min_tokens=950 * n_pages, count=store.counter.count, facts=()))
    t0 = turns[0].timestamp
    ids = store.add_many([{"text": t.text, "role": t.role, "timestamp": t0} for t in turns], scope="curve")
    truth = {i: t.text for i, t in zip(ids, turns, strict=True)}
    rows = []
    for day, side in enumerate(sides):
        store.age(now=t0 + day * DAY + 1)
        paged = [i for i in ids if store.recall(i).tier == str(side)]
        start = time.perf_counter()
        refs, hyps = [], []
        for i in paged:
            refs.append(truth[i])
            hyps.append(store.recall(i, read=True).text)
        seconds = time.perf_counter() - start
        tier = next(t for t in store.stats().tiers if t.tier == str(side))
        rows.append(
            {
                "side": side,
                "vision_tokens": om.vision_tokens(side),
                "pages": tier.pages,
                "memories": len(paged),
                "cer": round(cer(" ".join(refs), " ".join(hyps)), 5),
                "cer_worst_memory": round(max(cer(r, h) for r, h in zip(refs, hyps, strict=True)), 4),
                "compression": round(tier.compression or 0, 2),
                "bytes_per_text_token": round(tier.bytes / tier.text_tokens, 2),
                "read_seconds_per_page": round(seconds / max(tier.pages, 1), 2),
            }
        )
    store.close()
    return rows


def plot(curve: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["side"] for r in curve], [r["cer"] for r in curve], marker="o")
    for r in curve:
        ax.annotate(
            f"{r['vision_tokens']} vt", (r["side"], r["cer"]), textcoords="offset points", xytext=(4, 6)
        )
    ax.set_xlabel("page side (px)")
    ax.set_ylabel("recall character error rate")
    ax.set_title("Optical forgetting curve (default reader: RapidOCR)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tokens", type=int, default=1_000_000, help="text tokens to ingest for throughput/search"
    )
    p.add_argument("--pages", type=int, default=3, help="pages of conversation for the forgetting curve")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        curve = bench_forgetting(folder, args.pages)
        print("Forgetting curve (recall through the store, default reader)\n")
        print(table(list(curve[0]), [list(r.values()) for r in curve]))
        ingest = bench_ingest_and_search(folder, args.tokens, args.queries)
        print("\nIngest and search\n")
        print(table(["metric", "value"], [[k, v] for k, v in ingest.items()]))
    result = {
        "machine": {
            "cpu_count": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "ingest_search": ingest,
        "forgetting_curve": curve,
        "targets": {"text_tokens_per_min": 200_000, "search_ms_p99": 20, "cer_at_1024_640_512": 0.01},
    }
    (args.out / "store.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(curve, args.out / "forgetting_curve.png")
    print(f"\nwrote {args.out / 'store.json'} and {args.out / 'forgetting_curve.png'}")


if __name__ == "__main__":
    main()
