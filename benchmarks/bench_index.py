"""Index benchmark: exact flat inner-product search against IVF, HNSW and 8-bit scalar quantisation, on the
real gist vectors of a store built by ``optical-memory experiment recall --keep-store``.

    .venv/bin/python benchmarks/bench_index.py --store benchmarks/results/recall/store [--queries 300]

Queries are the recall experiment's fact questions and snippets of its filler turns, embedded with the
store's embedder (MiniLM). For the full vector set and for its first tenth (the first ~1M tokens of the
stream), each index is built, timed on single queries (as ``OpticalMemory.search`` calls it) and scored by
recall@10 against the exact flat index (by score: a hit counts when its true inner product reaches the
exact 10th-best). Prints a table and writes benchmarks/results/index.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from common import table  # benchmarks/ is on sys.path when a script runs

from optical_memory.backends import make_embedder
from optical_memory.demo import conversation
from optical_memory.recall_experiment import make_facts

RESULTS = Path(__file__).resolve().parent / "results"
K = 10


def load_vectors(store: Path) -> np.ndarray:
    with sqlite3.connect(f"file:{store / 'memory.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT vector FROM embeddings ORDER BY id").fetchall()
    return np.stack([np.frombuffer(r[0], dtype="<f4") for r in rows]).astype(np.float32)


def queries(n: int) -> np.ndarray:
    facts = [f.question for f in make_facts((100_000, 1_000_000, 10_000_000), 24, seed=0)]
    snippets = []
    for turn in conversation(seed=1, min_tokens=200_000, count=lambda t: len(t.split()), facts=()):
        if turn.role == "user":
            snippets.append(" ".join(turn.text.split()[:12]))
        if len(snippets) + len(facts) >= n:
            break
    return make_embedder("minilm").embed((facts + snippets)[:n]).astype(np.float32)


def variants(dim: int, n: int) -> dict[str, Callable[[], faiss.Index]]:
    nlist = int(4 * np.sqrt(n))
    ip = faiss.METRIC_INNER_PRODUCT

    def ivf(nprobe: int) -> Callable[[], faiss.Index]:
        def make() -> faiss.Index:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, ip)
            index.nprobe = nprobe
            return index

        return make

    def hnsw(ef: int) -> Callable[[], faiss.Index]:
        def make() -> faiss.Index:
            index = faiss.IndexHNSWFlat(dim, 32, ip)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = ef
            return index

        return make

    return {
        "Flat (exact, the store's)": lambda: faiss.IndexFlatIP(dim),
        "SQ8 flat": lambda: faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, ip),
        f"IVF{nlist} nprobe=8": ivf(8),
        f"IVF{nlist} nprobe=32": ivf(32),
        "HNSW32 ef=32": hnsw(32),
        "HNSW32 ef=128": hnsw(128),
    }


def measure(
    vectors: np.ndarray, qs: np.ndarray, threads: int, only: tuple[str, ...] | None = None
) -> list[dict[str, object]]:
    faiss.omp_set_num_threads(threads)
    # The ground truth is by score, not by id: the filler conversation repeats template turns verbatim, so
    # many vectors tie and any of them is a right answer. A returned vector counts when its exact inner
    # product reaches the exact 10th-best score of its query.
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    truth, _ = exact.search(qs, K)
    kth = truth[:, -1] - 1e-5
    rows = []
    for name, make in variants(vectors.shape[1], len(vectors)).items():
        if only is not None and name not in only:
            continue
        t0 = time.perf_counter()
        index = make()
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        build = time.perf_counter() - t0
        for q in qs[:5]:
            index.search(q[None], K)
        ms, found = [], []
        for q, floor in zip(qs, kth, strict=True):
            t0 = time.perf_counter()
            _, ids = index.search(q[None], K)
            ms.append((time.perf_counter() - t0) * 1e3)
            got = ids[0][ids[0] >= 0]
            found.append(float(np.sum(vectors[got] @ q >= floor)) / K)
        rows.append(
            {
                "index": name,
                "vectors": len(vectors),
                "threads": threads,
                "build_s": round(build, 2),
                "mib": round(faiss.serialize_index(index).nbytes / 2**20, 1),
                "search_ms_p50": round(float(np.percentile(ms, 50)), 3),
                "search_ms_p99": round(float(np.percentile(ms, 99)), 3),
                "recall_at_10": round(float(np.mean(found)), 4),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="a store folder (holding memory.db)")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--threads", default="1,2", help="comma-separated FAISS thread counts")
    p.add_argument(
        "--replicate",
        type=int,
        default=1,
        help="also time the flat and SQ8 scans over the vectors tiled N times with a little noise (a store "
        "N times larger: scan time depends on the count, not the content)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    vectors = load_vectors(args.store)
    qs = queries(args.queries)
    rows = []
    for subset in (vectors[: len(vectors) // 10], vectors):
        for threads in (int(t) for t in args.threads.split(",")):
            rows += measure(subset, qs, threads)
    if args.replicate > 1:
        rng = np.random.default_rng(0)
        tiled = np.concatenate(
            [vectors + rng.normal(0, 0.01, vectors.shape).astype(np.float32)] * args.replicate
        )
        tiled /= np.linalg.norm(tiled, axis=1, keepdims=True)
        rows += measure(tiled, qs, 1, only=("Flat (exact, the store's)", "SQ8 flat"))
    print(table(list(rows[0]), [list(r.values()) for r in rows]))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": ".venv/bin/python benchmarks/bench_index.py " + shlex.join(sys.argv[1:]),
        "store": str(args.store),
        "queries": len(qs),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
        },
        "rows": rows,
    }
    (args.out / "index.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out / 'index.json'}")


if __name__ == "__main__":
    main()
