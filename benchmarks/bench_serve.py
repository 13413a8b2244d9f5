"""Serving benchmark: ``search`` and ``build_context(mode="image")`` latency, and the process's RSS, on an
existing store (e.g. the 10M-token one ``optical-memory experiment recall --keep-store`` leaves).

    .venv/bin/python benchmarks/bench_serve.py --store benchmarks/results/recall/store [--scope agent]

Queries are the recall experiment's fact questions, one at a time, each embedded fresh (a numbered suffix
keeps every query distinct). Prints a table and writes benchmarks/results/serve.json. Targets at 10M text
tokens on 2 cores: search p99 <= 50 ms, build_context p99 <= 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from common import table  # benchmarks/ is on sys.path when a script runs

import optical_memory as om
from optical_memory.recall_experiment import _peak_rss_mib, _rss_mib, make_facts, measure_latency

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--scope", default="agent")
    p.add_argument("--searches", type=int, default=200)
    p.add_argument("--contexts", type=int, default=100)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    questions = [f.question for f in make_facts((100_000, 1_000_000, 10_000_000), 24, seed=0)]
    t0 = time.perf_counter()
    store = om.open(args.store)
    opened = time.perf_counter() - t0
    with store:
        stats = store.stats()
        latency = measure_latency(
            store,
            args.scope,
            [f"{questions[i % len(questions)]} ({i})" for i in range(args.searches)],
            [questions[(i * 7) % len(questions)] for i in range(args.contexts)],
        )
    result = {
        "command": ".venv/bin/python benchmarks/bench_serve.py " + shlex.join(sys.argv[1:]),
        "store_text_tokens": stats.text_tokens,
        "memories": stats.memories,
        "open_seconds": round(opened, 2),
        **latency,
        "rss_mib": round(_rss_mib()),
        "peak_rss_mib": round(_peak_rss_mib()),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    rows = [
        [k, json.dumps(v) if isinstance(v, dict) else v]
        for k, v in result.items()
        if k not in ("machine", "command")
    ]
    print(table(["metric", "value"], rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out / 'serve.json'}")


if __name__ == "__main__":
    main()
