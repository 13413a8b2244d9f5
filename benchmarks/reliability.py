"""Reliability report: SIGKILLs survived, concurrent operations run, hostile inputs tried, nothing lost.

    .venv/bin/python benchmarks/reliability.py --parts crash,stress --kills 100 --pg-kills 30
    .venv/bin/python benchmarks/reliability.py --parts fuzz --scale 5

``crash``: a worker process ingests, ages, adds documents and deletes on one store; it is SIGKILLed at a
random moment (uniform in 0-2 s after it is ready) ``--kills`` times, and after every kill the store is
reopened and audited: every acknowledged id present with its own tag, no acknowledged deletion undone, no
duplicate, no page with a missing or corrupt blob, the index equal to SQL, ``verify`` clean after repair.
``stress``: processes x threads adding, searching, recalling, deleting and aging on one store at once,
then the same audit. ``fuzz``: the hypothesis fuzz and isolation suites (tests/test_fuzz.py,
tests/test_isolation.py) at ``--scale`` times their default case counts, counting the cases they ran.
Crash and stress run on SQLite, and on PostgreSQL when OPTICAL_MEMORY_TEST_PG_URL names a server (as
`.ci/postgres.sh` sets it; or ``--pg-url``); the fuzz and isolation suites then run their PostgreSQL cases
too.

Prints a table and merges its figures into benchmarks/results/reliability.json (one run may do one part).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import table  # benchmarks/ is on sys.path when a script runs

from optical_memory.backends import make_embedder
from optical_memory.reliability import Kill, crash_run, scratch_database, stress_run

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _fresh(url: str | None) -> Iterator[str | None]:
    """A scratch database on the server at ``url`` for one run (None: SQLite, nothing to do)."""
    if url is None:
        yield None
    else:
        with scratch_database(url, "om_reliability") as scratch:
            yield scratch


def _crash(url: str | None, kills: int, seed: int, embedder: object) -> dict[str, object]:
    t0 = time.perf_counter()
    failed: list[str] = []

    def progress(kill: Kill) -> None:
        if not kill.audit.ok:
            failed.append(repr(kill))
            print(f"  FAILED: {kill.audit}")
        print(f"  kill {len(phases) + 1}: during {kill.phase} after {kill.after_s:.2f} s, ok={kill.audit.ok}")
        phases.append(kill.phase)

    phases: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, _fresh(url) as url:
        results = crash_run(
            Path(tmp) / "store", kills=kills, database_url=url, seed=seed, embedder=embedder, on_kill=progress
        )
    last = results[-1].audit
    return {
        "kills": len(results),
        "kills_by_phase": {p: phases.count(p) for p in sorted(set(phases))},
        "survived": sum(k.audit.ok for k in results),
        "acknowledged_memories": last.acknowledged,
        "lost": sum(len(k.audit.missing) for k in results),
        "duplicated": sum(len(k.audit.duplicated) for k in results),
        "resurrected": sum(len(k.audit.resurrected) for k in results),
        "half_written_pages": sum(len(k.audit.damaged_pages) for k in results),
        "index_inconsistent": sum(not k.audit.index_consistent for k in results),
        "orphan_blobs_swept": sum(k.audit.orphan_blobs for k in results),
        "failures": failed,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _stress(
    url: str | None, processes: int, threads: int, ops: int, seed: int, embedder: object
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, _fresh(url) as url:
        run = stress_run(
            Path(tmp) / "store",
            processes=processes,
            threads=threads,
            ops=ops,
            database_url=url,
            seed=seed,
            embedder=embedder,
        )
    return {
        "processes": processes,
        "threads_per_process": threads,
        "operations": run.total_operations,
        "by_operation": dict(run.operations),
        "lock_errors": dict(run.errors),
        "acknowledged_memories": run.audit.acknowledged,
        "lost": len(run.audit.missing),
        "duplicated": len(run.audit.duplicated),
        "resurrected": len(run.audit.resurrected),
        "index_consistent": run.audit.index_consistent,
        "clean_after_repair": run.audit.clean_after_repair,
        "ok": run.audit.ok and not run.errors,
        "seconds": round(run.seconds, 1),
    }


def _fuzz(url: str | None, scale: int) -> dict[str, object]:
    """Run the fuzz and isolation suites at ``scale`` and collect the case counts each writes."""
    found: dict[str, object] = {}
    t0 = time.perf_counter()
    for test in ("tests/test_fuzz.py", "tests/test_isolation.py"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "counts.json"
            env = {**os.environ, "OM_RELIABILITY_SCALE": str(scale), "OM_RELIABILITY_OUT": str(out)}
            env.pop("OPTICAL_MEMORY_TEST_PG_URL", None)
            if url:
                env["OPTICAL_MEMORY_TEST_PG_URL"] = url
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            counts = json.loads(out.read_text()) if out.exists() else {}
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
        found[Path(test).stem] = {**counts, "pytest": summary, "passed": done.returncode == 0}
    fuzz, isolation = found["test_fuzz"], found["test_isolation"]
    assert isinstance(fuzz, dict) and isinstance(isolation, dict)
    return {
        "fuzz_cases": fuzz.get("fuzz_cases"),
        "isolation_cases": isolation.get("isolation_cases"),
        "passed": fuzz["passed"] and isolation["passed"],
        **found,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="crash,stress", help="comma-separated: crash, stress, fuzz")
    p.add_argument("--kills", type=int, default=100, help="SIGKILLs on SQLite")
    p.add_argument("--pg-kills", type=int, default=30, help="SIGKILLs on PostgreSQL")
    p.add_argument("--pg-url", default=os.environ.get("OPTICAL_MEMORY_TEST_PG_URL"))
    p.add_argument(
        "--backends", default="sqlite,postgres", help="crash and stress on these (postgres: a URL)"
    )
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--ops", type=int, default=100, help="operations per thread")
    p.add_argument("--scale", type=int, default=5, help="fuzz/isolation cases, times the default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    parts = set(args.parts.split(","))
    wanted = set(args.backends.split(","))
    backends: list[tuple[str, str | None]] = [("sqlite", None)] if "sqlite" in wanted else []
    if "postgres" in wanted and args.pg_url:
        backends.append(("postgres", args.pg_url))
    embedder = make_embedder("minilm")
    path = args.out / "reliability.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    for name, url in backends:
        entry = report.setdefault(name, {})
        if "crash" in parts:
            kills = args.kills if url is None else args.pg_kills
            print(f"crash, {name}: {kills} kills")
            entry["crash"] = _crash(url, kills, args.seed, embedder)
        if "stress" in parts:
            print(
                f"stress, {name}: {args.processes} processes x {args.threads} threads x {args.ops} operations"
            )
            entry["stress"] = _stress(url, args.processes, args.threads, args.ops, args.seed, embedder)
    if "fuzz" in parts:  # once: the suites run their PostgreSQL cases themselves when a server is given
        print(f"fuzz and isolation: scale {args.scale}")
        report["fuzz"] = _fuzz(args.pg_url, args.scale)
    command = ".venv/bin/python benchmarks/reliability.py " + shlex.join(sys.argv[1:])
    commands = report.setdefault("commands", {})
    for part in sorted(parts - {"fuzz"}):
        commands.update({f"{part} on {name}": command for name, _ in backends})
    if "fuzz" in parts:
        commands["fuzz"] = command
    report["machine"] = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    rows = []
    for name in [n for n in ("sqlite", "postgres") if n in report]:
        entry = report[name]
        crash, stress, fuzz = entry.get("crash", {}), entry.get("stress", {}), report.get("fuzz", {})
        rows.append(
            [
                name,
                crash.get("kills", "-"),
                crash.get("survived", "-"),
                crash.get("lost", "-"),
                stress.get("operations", "-"),
                stress.get("lost", "-"),
                stress.get("lock_errors", "-"),
                fuzz.get("fuzz_cases", "-"),
                fuzz.get("isolation_cases", "-"),
            ]
        )
    headers = [
        "backend",
        "kills",
        "survived",
        "lost",
        "concurrent ops",
        "lost",
        "lock errors",
        "fuzz cases",
        "isolation cases",
    ]
    print(table(headers, rows))
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
