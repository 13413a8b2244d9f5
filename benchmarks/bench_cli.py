"""CLI start-up: `optical-memory search` and `add`, process start to printed result, by embedder engine.

    .venv/bin/python benchmarks/bench_cli.py [--runs 7] [--turns 2000] [--store DIR --scope SCOPE]

Builds a store of ``--turns`` demo turns (or uses ``--store``), then runs each command ``--runs`` times as a
new process, as a shell script or an agent's tool call would (``search`` in ``--scope``; ``add`` into the
scope ``cli``, apart from a kept benchmark store's own): with the ONNX export of MiniLM (the default
once `make` has exported it) and with the torch engine (``OPTICAL_MEMORY_CACHE`` pointed at an empty
folder, so no export is found). Prints min / median / max seconds and writes benchmarks/results/cli.json.
Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table, write_result  # benchmarks/ is on sys.path when a script runs

import optical_memory as om
from optical_memory.backends.minilm import _export_is_current, _model_path, onnx_path
from optical_memory.backends.tiktoken_counter import TiktokenCounter
from optical_memory.demo import conversation

CLI = str(Path(sys.executable).with_name("optical-memory"))
QUERY = "what is the door code of the amber boathouse?"


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--turns", type=int, default=2000)
    ap.add_argument("--store", default=None, help="an existing store to search (default: build one)")
    ap.add_argument("--scope", default="me", help="the scope searched (a bench_retrieval.py store: bench)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli.json"))
    args = ap.parse_args()
    if not _export_is_current(onnx_path(), _model_path()):
        sys.exit("no ONNX export of MiniLM: run `optical-memory export-embedder` first")
    with tempfile.TemporaryDirectory() as tmp:
        store_dir = args.store or str(Path(tmp) / "store")
        if args.store is None:
            count = TiktokenCounter().count
            turns = conversation(seed=0, min_tokens=10**9, count=count, facts=())
            texts = [next(turns).text for _ in range(args.turns)]
            with om.open(store_dir) as store:
                store.add_many(["the door code of the amber boathouse is 4417-K23", *texts], scope=args.scope)
                stats = store.stats()
        else:
            with om.open(store_dir) as store:
                stats = store.stats()
        empty = Path(tmp) / "no-export"
        empty.mkdir()
        engines = {"onnx": dict(os.environ), "torch": {**os.environ, "OPTICAL_MEMORY_CACHE": str(empty)}}
        commands = {
            "search": [CLI, "--store", store_dir, "search", "--scope", args.scope, QUERY],
            "add": [CLI, "--store", store_dir, "add", "--scope", "cli", "a new turn from the command line"],
        }
        rows, results = [], []
        for name, argv in commands.items():
            for engine, env in engines.items():
                timed(argv, env)  # warm the page cache: the figure is a process start, not a cold disk
                seconds = sorted(timed(argv, env) for _ in range(args.runs))
                result = {
                    "command": name,
                    "engine": engine,
                    "min_s": round(seconds[0], 2),
                    "median_s": round(statistics.median(seconds), 2),
                    "max_s": round(seconds[-1], 2),
                }
                results.append(result)
                rows.append([name, engine, result["min_s"], result["median_s"], result["max_s"]])
                print(table(["command", "engine", "min s", "median s", "max s"], rows[-1:]), flush=True)
    print()
    print(f"store: {stats.memories:,} memories, {stats.text_tokens:,} text tokens")
    print(table(["command", "engine", "min s", "median s", "max s"], rows))
    payload = {
        "store": {"memories": stats.memories, "text_tokens": stats.text_tokens},
        "runs": args.runs,
        "results": results,
    }
    write_result(args.out, "bench_cli.py", payload)


if __name__ == "__main__":
    main()
