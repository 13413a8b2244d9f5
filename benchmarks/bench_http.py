"""``optical-memory serve`` under load: N concurrent clients on loopback, then what was lost.

    .venv/bin/python benchmarks/bench_http.py --store DIR [--scope bench] [--clients 16] [--seconds 60]

``--store`` is a kept store to serve, e.g. the 1M-token recall conversation that
``bench_retrieval.py --tokens 1M --only recall --keep DIR`` leaves in ``DIR/recall`` (its scope is "bench").
The server is the real CLI, ``optical-memory serve``, in its own process (``--workers``); the clients are
asyncio tasks with httpx in this one. Two phases:

* mixed: each client loops for ``--seconds``, picking add (a batch of ``--batch`` turns into its own scope),
  search (k=8 over the kept scope) or context (text, budget 2,000, over the kept scope) by ``--mix``.
* add: every client only adds batches, for half as long: the server's add throughput in turns/s, against
  ``add_many`` of the same batches in-process on the same store (the server stopped), one after another.

Then every id the server returned is looked up: 0 lost means each listed under its scope, and no other.
The clients' own scopes are deleted at the end, so the kept store is left as it was. Targets (2 cores):
0 errors, 0 lost, search p99 <= 100 ms at 1M stored tokens, add throughput >= 80% of in-process add_many.
Writes benchmarks/results/http_load.json. Clients and server share the machine's cores, as they would on a
one-box deployment; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from common import table, write_result  # benchmarks/ is on sys.path when a script runs

import optical_memory as om
from optical_memory.recall_experiment import make_facts

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = [
    "parcel",
    "shelf",
    "harbour",
    "meeting",
    "invoice",
    "garden",
    "ticket",
    "river",
    "lantern",
    "copper",
    "orchard",
    "violin",
]


def turn(rng: random.Random, client: int, n: int) -> str:
    a, b = rng.choice(WORDS), rng.choice(WORDS)
    return f"client {client} note {n}: the {a} by the {b} is ready at {n % 24}:00."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``optical-memory serve`` in a subprocess, up once /healthz answers."""

    def __init__(self, store: Path, workers: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "optical_memory.cli", "-q", "--store", str(store), "serve",
             "--port", str(self.port), "--workers", str(workers)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(self.url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the server did not come up") from None
                time.sleep(0.5)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


async def run_clients(url: str, args: argparse.Namespace, questions: list[str], mix: dict[str, float],
                      seconds: float, phase: str) -> dict:  # fmt: skip
    ops, weights = list(mix), list(mix.values())
    latency: dict[str, list[float]] = {op: [] for op in ops}
    errors: list[str] = []
    added: dict[str, list[int]] = {}
    turns_added = 0
    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def client(c: int) -> None:
            nonlocal turns_added
            rng = random.Random(f"{phase}-{c}")
            scope = f"load-{phase}-{c}"
            n = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                op = rng.choices(ops, weights)[0]
                q = f"{rng.choice(questions)} ({c}.{n})"  # distinct, so no layer can cache the answer
                if op == "add":
                    body = {"scope": scope, "items": [turn(rng, c, n + i) for i in range(args.batch)]}
                    path = "/v1/memories/batch"
                    n += args.batch
                elif op == "search":
                    body, path = {"query": q, "k": 8, "scope": args.scope}, "/v1/search"
                else:
                    body, path = {"query": q, "budget_tokens": 2000, "scope": args.scope}, "/v1/context"
                t0 = time.perf_counter()
                try:
                    r = await http.post(path, json=body)
                except httpx.HTTPError as e:
                    errors.append(f"{op}: {type(e).__name__} {e}")
                    continue
                took = time.perf_counter() - t0
                if r.status_code >= 300:
                    errors.append(f"{op}: {r.status_code} {r.text[:200]}")
                    continue
                latency[op].append(took)
                if op == "add":
                    added.setdefault(scope, []).extend(r.json()["ids"])
                    turns_added += args.batch

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(args.clients)))
        wall = time.perf_counter() - t0

        lost = 0
        for scope, ids in added.items():
            listed: set[int] = set()
            offset: int | None = 0
            while offset is not None:
                page = (
                    await http.get("/v1/memories", params={"scope": scope, "limit": 1000, "offset": offset})
                ).json()
                listed |= {m["id"] for m in page["memories"]}
                offset = page["next_offset"]
            lost += len(set(ids) - listed) + len(listed - set(ids))
        for scope in added:
            await http.delete(f"/v1/scopes/{scope}")

    def pct(xs: list[float], q: float) -> float | None:
        return round(float(np.percentile(xs, q)) * 1000, 1) if xs else None

    return {
        "phase": phase,
        "seconds": round(wall, 1),
        "requests": {op: len(v) for op, v in latency.items()},
        "p50_ms": {op: pct(v, 50) for op, v in latency.items()},
        "p99_ms": {op: pct(v, 99) for op, v in latency.items()},
        "errors": len(errors),
        "error_samples": errors[:5],
        "memories_added": sum(len(v) for v in added.values()),
        "lost": lost,
        "turns_per_s": round(turns_added / wall, 1),
    }


def in_process_rate(store_path: Path, batch: int, batches: int) -> float:
    """Turns per second of ``add_many`` in-process on the same store, one batch after another."""
    rng = random.Random("in-process")
    with om.open(store_path) as store:
        store.add_many([turn(rng, 0, 0)], scope="load-inproc")  # warm: the embedder's first call
        t0 = time.perf_counter()
        for b in range(batches):
            store.add_many([turn(rng, 0, b * batch + i) for i in range(batch)], scope="load-inproc")
        rate = batches * batch / (time.perf_counter() - t0)
        store.delete_scope("load-inproc")
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="a kept store folder (e.g. DIR/recall)")
    p.add_argument("--scope", default="bench", help="the kept scope searched (default: %(default)s)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32, help="turns per add request (default: %(default)s)")
    p.add_argument("--mix", default="add=1,search=2,context=1", help="weights (default: %(default)s)")
    p.add_argument(
        "--warm",
        action="store_true",
        help="first ask each question once, one at a time, so the contexts read their pages before the clock "
        "starts (the steady state of a store whose pages were read once); without it, the mixed phase "
        "includes the first reads of pages at 256 px, 3.5-4 s each",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "http_load.json")
    args = p.parse_args()
    mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    questions = [f.question for f in make_facts((100_000, 1_000_000, 10_000_000), 24, seed=0)]
    with om.open(args.store) as store:
        tokens, memories = store.stats().text_tokens, store.stats().memories

    server = Server(args.store, args.workers)
    warmed = None
    try:
        if args.warm:
            t0 = time.perf_counter()
            with httpx.Client(base_url=server.url, timeout=600) as http:
                for q in questions:
                    http.post("/v1/context", json={"query": q, "budget_tokens": 2000, "scope": args.scope})
            warmed = round(time.perf_counter() - t0, 1)
        mixed = asyncio.run(run_clients(server.url, args, questions, mix, args.seconds, "mixed"))
        adds = asyncio.run(run_clients(server.url, args, questions, {"add": 1.0}, args.seconds / 2, "add"))
    finally:
        server.stop()
    inproc = in_process_rate(args.store, args.batch, max(8, adds["requests"]["add"] // args.clients))
    result = {
        "store_text_tokens": tokens,
        "store_memories": memories,
        "clients": args.clients,
        "workers": args.workers,
        "batch": args.batch,
        "mix": mix,
        "warm_up_seconds": warmed,
        "cpu_count": os.cpu_count(),
        "mixed": mixed,
        "add_only": adds,
        "in_process_add_many_turns_per_s": round(inproc, 1),
        "add_throughput_vs_in_process": round(adds["turns_per_s"] / inproc, 3),
    }
    rows = [
        [phase["phase"], op, phase["requests"][op], phase["p50_ms"][op], phase["p99_ms"][op]]
        for phase in (mixed, adds)
        for op in phase["requests"]
    ]
    print(table(["phase", "op", "requests", "p50 ms", "p99 ms"], rows))
    print(
        f"\nerrors {mixed['errors']} + {adds['errors']}, lost {mixed['lost']} + {adds['lost']}; "
        f"adds over HTTP {adds['turns_per_s']} turns/s, in-process add_many {inproc:.1f} turns/s "
        f"({result['add_throughput_vs_in_process']:.0%}); store {tokens:,} text tokens"
    )
    write_result(args.out, "bench_http.py", result)


if __name__ == "__main__":
    main()
