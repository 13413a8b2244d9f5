"""Training runs side by side, from their folders' logs: what each ran and what it reached.

    .venv/bin/python benchmarks/summarise_runs.py build/optical-mini [build/other ...] [--out results/X.json]

For each run folder (``optical_memory.training --run``) it prints the steps, the training time, the mean
training losses over the last ``--window`` steps (the decoder's, the character head's, the attention
and slot guides') and the last held-out evaluation at 1024 px (the image's worth in nats on full pages, greedy
precision, the character head's accuracies), and with ``--out`` writes them with each run's configuration,
every evaluation and the losses' means per window, so that an experiment's curves outlive its machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from common import read_run, run_totals, table

LOSSES = ("loss", "char_loss", "neck_char_loss", "guide_loss", "slot_loss")
SIDE = "1024"


def loss_by_side(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The decoder's mean loss over ``rows`` per kind of batch ("1024", "crop 512", ...), where it has one:
    a run that mixes crops and pages learns each at its own pace."""
    kinds: dict[str, list[float]] = {}
    for r in rows:
        if "loss" in r:
            kinds.setdefault(f"{'crop ' if r.get('crop') else ''}{r['side']}", []).append(r["loss"])
    if len(kinds) < 2:
        return {}
    return {"loss_by_side": {k: round(statistics.fmean(v), 4) for k, v in sorted(kinds.items())}}


def summarise(folder: Path, window: int) -> dict[str, Any]:
    rows, info = read_run(folder)
    if not rows:
        raise SystemExit(f"{folder}: no steps logged (not a training run folder, or one not yet started)")
    windows = []
    for start in range(0, len(rows), window):
        chunk = rows[start : start + window]
        means = {k: round(statistics.fmean(r[k] for r in chunk), 4) for k in LOSSES if k in chunk[0]}
        windows.append({"steps": [chunk[0]["step"], chunk[-1]["step"]], **means, **loss_by_side(chunk)})
    evaluations = [{"step": r["step"], **r["held_out"]} for r in rows if "held_out" in r]
    return {
        "run": folder.name,
        "device": info.get("device"),
        "torch_threads": info.get("torch_threads"),
        "init_from": info.get("init_from"),
        "init_encoder_from": info.get("init_encoder_from"),
        "vocab_size": info.get("vocab_size"),
        "train_config": info.get("train_config"),
        **run_totals(rows),
        "loss_means_per_window": windows,
        "evaluations": evaluations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders")
    parser.add_argument("--window", type=int, default=250, help="steps per mean of the training losses")
    parser.add_argument("--out", type=Path, help="write the summaries here (JSON)")
    args = parser.parse_args()
    if args.window < 1:
        raise SystemExit(f"--window must be at least 1, got {args.window}")

    runs = [summarise(folder, args.window) for folder in args.runs]
    rows = []
    for run in runs:
        last = run["loss_means_per_window"][-1]
        held = run["evaluations"][-1] if run["evaluations"] else {}
        rows.append(
            [
                run["run"],
                run["steps"],
                f"{run['train_seconds'] / 60:.0f}",
                *(last.get(k, "") for k in ("loss", "char_loss", "guide_loss", "slot_loss")),
                held.get("gap", {}).get(SIDE, ""),
                held.get("precision", {}).get(SIDE, ""),
                held.get("char_accuracy", {}).get(SIDE, ""),
                held.get("glyph_accuracy", {}).get(SIDE, ""),
            ]
        )
    headers = ["run", "steps", "minutes", "loss", "char loss", "guide loss", "slot loss"]
    headers += [f"{name}, {SIDE} px" for name in ("gap", "precision", "char acc", "glyph acc")]
    print(table(headers, rows))
    print(f"(losses: means of the last {args.window} steps; the rest: the run's last held-out evaluation)")
    if args.out:
        command = " ".join(["benchmarks/summarise_runs.py", *sys.argv[1:]])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": command, "runs": runs}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
