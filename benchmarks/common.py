"""Shared by the benchmark scripts: the printed table and the JSON file."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any


def table(headers: list[str], rows: list[list[object]]) -> str:
    """Right-aligned columns under a header and a rule, as every benchmark prints its results."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_result(out: str | Path, script: str, payload: dict[str, Any]) -> None:
    """Write a benchmark's JSON: the command that made it and the machine, then ``payload``; say where."""
    record = {
        "command": " ".join([f"benchmarks/{script}", *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        **payload,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


def read_run(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A training run folder's log (``log.jsonl``, one record a step; [] when it has none) and its
    ``run.json`` ({} when absent)."""
    log, info = folder / "log.jsonl", folder / "run.json"
    lines = log.read_text().splitlines() if log.is_file() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    return rows, json.loads(info.read_text()) if info.is_file() else {}


def run_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run's log (``read_run``) adds up to: its last step, training seconds and pages seen."""
    return {
        "steps": rows[-1]["step"],
        "train_seconds": rows[-1]["elapsed_s"],
        "pages_seen": sum(r["pages"] for r in rows),
    }
