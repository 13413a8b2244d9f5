"""Where ingest time goes: cProfile over a stream of the demo's conversation added session by session with
``add_many``, with ``age()`` every 40 sessions (as an application would schedule it) and once at the end.

    .venv/bin/python benchmarks/profile_ingest.py [--tokens 150000] [--top 25]

Prints the wall time (under the profiler, so slower than a plain run) and the top functions by cumulative
time. A diagnostic, not a benchmark: it writes no JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import optical_memory as om
from optical_memory.demo import Turn, conversation


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=150_000)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, om.open(Path(tmp) / "store") as store:
        turns = list(conversation(seed=5, min_tokens=args.tokens, count=store.counter.count, facts=()))
        sessions: dict[int, list[Turn]] = {}
        for t in turns:
            sessions.setdefault(t.session, []).append(t)
        store.embedder.embed(["warm up"])  # model load is start-up cost
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.enable()
        for i, batch in enumerate(sessions.values()):
            store.add_many(
                [{"text": t.text, "role": t.role, "timestamp": t.timestamp} for t in batch], scope="p"
            )
            if i % 40 == 39:
                store.age(now=batch[-1].timestamp + 60)
        store.age(now=turns[-1].timestamp + 60)
        profile.disable()
        print(f"{len(turns)} turns in {time.perf_counter() - start:.1f} s under the profiler\n")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
