"""Crash and concurrency harnesses: real processes writing one store, killed or raced, then audited.

``crash_run`` starts a worker process that ingests, ages and deletes on a store forever, printing an
acknowledgement line for every id a call has returned; it kills the worker with SIGKILL at a random
moment, reopens the store and audits it (:func:`audit`). ``stress_run`` starts several worker processes,
each with several threads adding, searching, recalling, deleting and aging on the same store at once, and
audits the result. Both run on SQLite or PostgreSQL (``database_url``) with the real embedder and index.

The tests run them small (``tests/test_reliability.py``); ``benchmarks/reliability.py`` runs them at
report size. Workers are this module run as a script: ``python -m optical_memory.reliability``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import StoreConfig
from .errors import OpticalMemoryError

WORDS = (
    "harbour",
    "lantern",
    "copper",
    "meadow",
    "violet",
    "engine",
    "quarry",
    "saddle",
    "thimble",
    "orchard",
    "falcon",
    "pebble",
    "glacier",
    "tundra",
    "walnut",
    "cinder",
    "marble",
    "ferry",
    "beacon",
    "lichen",
)


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str = "om_scratch") -> Iterator[str]:
    """A new, empty database on the PostgreSQL server at ``server_url`` (about 20 ms to create), dropped
    afterwards even if a store still holds a connection to it. Runs and tests use one each, never the
    server's own database, where an earlier run's store could be waiting."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as con:
            con.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server_url.rsplit("/", 1)[0] + "/" + name
        finally:
            with admin.connect() as con:
                con.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _config(database_url: str | None) -> StoreConfig:
    return StoreConfig.tiny(database_url=database_url)


def _sentence(rng: random.Random, seq: str) -> str:
    return f"Note {seq}: the {rng.choice(WORDS)} near the {rng.choice(WORDS)} is {rng.randint(0, 9999)}."


# -- audit -----------------------------------------------------------------------------------------------


@dataclass
class Audit:
    """What a reopened store holds against what its writers were told."""

    acknowledged: int  # ids returned to a caller and not deleted by it since
    missing: list[int] = field(default_factory=list)  # acknowledged, but gone
    resurrected: list[int] = field(default_factory=list)  # deletion acknowledged, but still there
    duplicated: list[str] = field(default_factory=list)  # one write's tag on several memories
    damaged_pages: list[int] = field(default_factory=list)  # page rows whose blob is missing or corrupt
    index_consistent: bool = True  # the reopened index holds exactly SQL's vectors
    orphan_blobs: int = 0  # blobs of transactions the crash rolled back (swept by repair)
    clean_after_repair: bool = True

    @property
    def ok(self) -> bool:
        return (
            not (self.missing or self.resurrected or self.duplicated or self.damaged_pages)
            and self.index_consistent
            and self.clean_after_repair
        )


def audit(
    path: Path,
    database_url: str | None,
    acked: dict[int, str],
    deleted: set[int],
    *,
    deleting: set[int] | None = None,
    embedder: Any = None,
) -> Audit:
    """Reopen the store and check it against the ids acknowledged to its writers.

    ``acked`` maps each acknowledged id to the tag (metadata ``seq``) it was written with; ``deleted``
    holds ids whose deletion was acknowledged, ``deleting`` those whose deletion was under way when the
    writer died. Memories never acknowledged (the kill landed between commit and the acknowledgement) may
    or may not be there, as may those being deleted; either is correct.
    """
    from .maintenance import ORPHAN_GRACE_S
    from .store import OpticalMemory

    deleting = deleting or set()
    with OpticalMemory(path, config=_config(database_url), embedder=embedder) as store:
        live = {m.id: m.metadata.get("seq") for m in store.memories(limit=None)}
        result = Audit(acknowledged=len(set(acked) - deleted - deleting))
        kept = [i for i in acked if i not in deleted and i not in deleting]
        result.missing = sorted(i for i in kept if i not in live)
        result.missing += sorted(i for i in kept if i in live and live[i] != acked[i])
        result.resurrected = sorted(i for i in deleted if i in live)
        tags = Counter(tag for tag in live.values() if tag is not None)
        result.duplicated = sorted(tag for tag, n in tags.items() if n > 1)
        result.index_consistent = store._index_matches_sql()
        # A dead SQLite writer never commits, so its blobs are orphans at once; a PostgreSQL one may have
        # sent its COMMIT, so its blobs get verify()'s grace period.
        grace = 0.0 if database_url is None else ORPHAN_GRACE_S
        report = store.verify(orphan_grace_s=grace)
        result.damaged_pages = sorted(report.missing_blobs + report.corrupt_blobs)
        result.orphan_blobs = len(report.orphan_blobs)
        store.verify(repair=True, orphan_grace_s=grace)
        result.clean_after_repair = store.verify(orphan_grace_s=grace).ok
    return result


# -- crash -----------------------------------------------------------------------------------------------


@dataclass
class Kill:
    phase: str  # what the worker was doing when it was killed
    after_s: float
    acked: int
    audit: Audit


def crash_run(
    path: Path,
    *,
    kills: int,
    database_url: str | None = None,
    seed: int = 0,
    max_delay_s: float = 2.0,
    embedder: Any = None,
    on_kill: Any = None,
) -> list[Kill]:
    """Kill a writing worker ``kills`` times at random moments (uniform in ``[0, max_delay_s]`` after it is
    ready) and audit the store after each kill; the acknowledgements accumulate across kills."""
    rng = random.Random(seed)
    acked: dict[int, str] = {}
    deleted: set[int] = set()
    deleting: set[int] = set()
    results = []
    for number in range(kills):
        lines: list[str] = []
        worker = _spawn(
            ["crash", "--store", str(path), "--seed", str(seed * 100_003 + number), "--run", str(number)],
            database_url,
        )
        reader = threading.Thread(target=_collect, args=(worker, lines), daemon=True)
        reader.start()
        _wait_ready(worker, lines)
        delay = rng.uniform(0, max_delay_s)
        time.sleep(delay)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        reader.join()
        phase = "start"
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "ack":
                tag, memory_id = rest.split()
                acked[int(memory_id)] = tag
            elif kind == "deleting":
                deleting.add(int(rest))
            elif kind == "del":
                deleted.add(int(rest))
                deleting.discard(int(rest))
            elif kind == "phase":
                phase = rest
        found = audit(path, database_url, acked, deleted, deleting=deleting, embedder=embedder)
        kill = Kill(phase, delay, len(acked), found)
        results.append(kill)
        if on_kill:
            on_kill(kill)
    return results


def _spawn(args: list[str], database_url: str | None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if database_url:
        args += ["--database-url", database_url]
    return subprocess.Popen(
        [sys.executable, "-m", "optical_memory.reliability", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _collect(worker: subprocess.Popen[str], lines: list[str]) -> None:
    assert worker.stdout is not None
    for line in worker.stdout:
        lines.append(line.strip())


def _wait_ready(worker: subprocess.Popen[str], lines: list[str], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while "ready" not in lines:
        if worker.poll() is not None:
            err = worker.stderr.read() if worker.stderr else ""
            raise RuntimeError(f"worker exited with {worker.returncode} before it was ready:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            worker.kill()
            raise RuntimeError(f"worker not ready after {timeout_s:g} s")
        time.sleep(0.02)


def _crash_worker(store_path: str, database_url: str | None, seed: int, run: int) -> None:
    """Ingest, age and delete forever; acknowledge each id on stdout once the call that made it returned."""
    from .store import OpticalMemory

    rng = random.Random(seed)
    mine: list[int] = []
    with OpticalMemory(store_path, config=_config(database_url)) as store:
        store.embedder.embed(["warm up"])  # load the model now, so kills land in real work
        print("ready", flush=True)
        for step in range(10**9):
            op = rng.random()
            if op < 0.55:
                print("phase add", flush=True)
                tags = [f"r{run}-{step}-{i}" for i in range(rng.randint(1, 6))]
                items = [{"text": _sentence(rng, t), "role": "user", "metadata": {"seq": t}} for t in tags]
                ids = store.add_many(items, scope=f"s{rng.randint(0, 2)}")
                for tag, memory_id in zip(tags, ids, strict=True):
                    print(f"ack {tag} {memory_id}", flush=True)
                mine += ids
            elif op < 0.65:
                print("phase document", flush=True)
                tag = f"r{run}-{step}-d"
                text = " ".join(_sentence(rng, tag) for _ in range(rng.randint(3, 12)))
                memory_id = store.add(text, scope="docs", kind="document", metadata={"seq": tag})
                print(f"ack {tag} {memory_id}", flush=True)
                mine.append(memory_id)
            elif op < 0.85:
                print("phase age", flush=True)
                store.age()
            elif mine:
                print("phase delete", flush=True)
                memory_id = mine.pop(rng.randrange(len(mine)))
                print(f"deleting {memory_id}", flush=True)  # from here until "del", it may go either way
                store.delete(memory_id)
                print(f"del {memory_id}", flush=True)


# -- concurrency -----------------------------------------------------------------------------------------


@dataclass
class Stress:
    processes: int
    threads: int
    operations: Counter[str]
    errors: Counter[str]
    seconds: float
    audit: Audit

    @property
    def total_operations(self) -> int:
        return sum(self.operations.values())


def stress_run(
    path: Path,
    *,
    processes: int,
    threads: int,
    ops: int,
    database_url: str | None = None,
    seed: int = 0,
    timeout_s: float = 600.0,
    embedder: Any = None,
) -> Stress:
    """``processes`` workers of ``threads`` threads each run ``ops`` random operations apiece on one store
    at once; then the store is audited. A worker still running after ``timeout_s`` is a deadlock: the
    run raises ``TimeoutError``."""
    out = Path(path).parent / f"{Path(path).name}-stress"
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    workers = []
    for number in range(processes):
        args = ["stress", "--store", str(path), "--seed", str(seed * 1009 + number), "--run", str(number)]
        args += ["--threads", str(threads), "--ops", str(ops), "--out", str(out / f"{number}.json")]
        workers.append(_spawn(args, database_url))
    for worker in workers:
        try:
            _, err = worker.communicate(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            raise TimeoutError(f"a stress worker still ran after {timeout_s:g} s: deadlock?") from None
        if worker.returncode != 0:
            raise RuntimeError(f"stress worker failed with {worker.returncode}:\n{err[-3000:]}")
    seconds = time.monotonic() - start
    acked: dict[int, str] = {}
    deleted: set[int] = set()
    operations: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for number in range(processes):
        result = json.loads((out / f"{number}.json").read_text())
        acked.update({int(k): v for k, v in result["acked"].items()})
        deleted.update(result["deleted"])
        operations.update(result["operations"])
        errors.update(result["errors"])
    found = audit(path, database_url, acked, deleted, embedder=embedder)
    return Stress(processes, threads, operations, errors, seconds, found)


def _stress_worker(
    store_path: str, database_url: str | None, seed: int, run: int, threads: int, ops: int, out: str
) -> None:
    """``threads`` threads sharing one store object, each running ``ops`` random operations."""
    from .store import OpticalMemory

    acked: dict[int, str] = {}
    deleted: list[int] = []
    operations: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    tally = threading.Lock()

    def work(thread: int, store: OpticalMemory) -> None:
        rng = random.Random(seed * 31 + thread)
        mine: list[int] = []
        for step in range(ops):
            op = rng.random()
            scope = f"s{rng.randint(0, 2)}"
            name = "add"
            try:
                if op < 0.4:
                    tags = [f"p{run}-t{thread}-{step}-{i}" for i in range(rng.randint(1, 4))]
                    items = [{"text": _sentence(rng, t), "metadata": {"seq": t}} for t in tags]
                    ids = store.add_many(items, scope=scope)
                    with tally:
                        acked.update(zip(ids, tags, strict=True))
                    mine += ids
                elif op < 0.65:
                    name = "search"
                    store.search(f"the {rng.choice(WORDS)}", k=5)
                elif op < 0.75:
                    name = "recall"
                    if mine:
                        store.recall(rng.choice(mine))
                elif op < 0.88:
                    name = "delete"
                    if mine:
                        memory_id = mine.pop(rng.randrange(len(mine)))
                        store.delete(memory_id)
                        with tally:
                            deleted.append(memory_id)
                else:
                    name = "age"
                    store.age()
            except OpticalMemoryError as e:
                with tally:
                    errors[type(e).__name__] += 1
                continue
            with tally:
                operations[name] += 1

    with OpticalMemory(store_path, config=_config(database_url)) as store:
        pool = [threading.Thread(target=work, args=(t, store)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    Path(out).write_text(
        json.dumps(
            {"acked": acked, "deleted": deleted, "operations": operations, "errors": errors},
            default=dict,
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m optical_memory.reliability")
    parser.add_argument("role", choices=["crash", "stress"])
    parser.add_argument("--store", required=True)
    parser.add_argument("--database-url")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--ops", type=int, default=50)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.role == "crash":
        _crash_worker(args.store, args.database_url, args.seed, args.run)
    else:
        _stress_worker(args.store, args.database_url, args.seed, args.run, args.threads, args.ops, args.out)


if __name__ == "__main__":
    main()
