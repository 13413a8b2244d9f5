"""Query-embedding latency by torch thread count, on a quiet machine and beside busy processes.

    .venv/bin/python benchmarks/bench_query_threads.py [--repeats 60] [--busy 2]

One search query is embedded ``--repeats`` times by MiniLM (the store's embedder) with torch's default
thread count and with one thread, first on a quiet machine, then with ``--busy`` processes spinning on
the CPU (what a test suite, an ingest or another agent does to a shared 2-core machine). Prints p50/p90/
p99 in ms and writes benchmarks/results/query_threads.json. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import torch
from common import table  # benchmarks/ is on sys.path when a script runs

from optical_memory.backends.minilm import MiniLMEmbedder

QUERY = "what did the user say about the train from Lisbon to Porto in late September?"


def _spin(stop: float) -> None:
    while time.time() < stop:
        pass


def _latencies(embedder: MiniLMEmbedder, threads: int, repeats: int) -> list[float]:
    torch.set_num_threads(threads)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        embedder.embed([QUERY])
        out.append((time.perf_counter() - start) * 1e3)
    return sorted(out)


def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--busy", type=int, default=2)
    args = ap.parse_args()
    embedder = MiniLMEmbedder(query_threads=None)  # the policy under test is set by hand here
    embedder.embed(["warm up"])
    default = torch.get_num_threads()
    rows, results = [], []
    for load in ("quiet", f"{args.busy} busy processes"):
        spinners = []
        if load != "quiet":
            stop = time.time() + 600
            spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
            for p in spinners:
                p.start()
            time.sleep(1)
        try:
            for threads in (default, 1):
                xs = _latencies(embedder, threads, args.repeats)
                row = {
                    "load": load,
                    "threads": threads,
                    "p50_ms": _pct(xs, 0.5),
                    "p90_ms": _pct(xs, 0.9),
                    "p99_ms": _pct(xs, 0.99),
                }
                results.append(row)
                rows.append(
                    [load, threads, f"{row['p50_ms']:.1f}", f"{row['p90_ms']:.1f}", f"{row['p99_ms']:.1f}"]
                )
        finally:
            for p in spinners:
                p.terminate()
    torch.set_num_threads(default)
    print(table(["load", "torch threads", "p50 ms", "p90 ms", "p99 ms"], rows))
    out = Path(__file__).parent / "results" / "query_threads.json"
    meta = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "repeats": args.repeats,
    }
    out.write_text(json.dumps({"machine": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
