"""optical-mini against RapidOCR on held-out prose, and its training curve.

    .venv/bin/python benchmarks/bench_mini.py [--pages 8] [--run build/optical-mini]

Runs the forgetting experiment (``optical_memory.experiments.forgetting``: the Python Language Reference
topics, never trained on, rendered by the store and shrunk down the ladder) with the shipped optical-mini
and RapidOCR side by side, prints precision, compression and seconds per page for each rung, and writes
``results/optical_mini/`` (the experiment's csv/json/md/png) and ``results/optical_mini.json``. With the
training run folder at hand it also plots the training and held-out losses
(``results/optical_mini_training.png``) and keeps a compact copy of the log (every 10th step, every
evaluation) in the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from common import table

from optical_memory.backends.deepseek import MINI_DIR
from optical_memory.experiments import forgetting

RESULTS = Path(__file__).parent / "results"
READERS = ("rapidocr", "optical-mini")


def training_curve(run: Path) -> dict[str, Any] | None:
    log_path = run / "log.jsonl"
    if not log_path.is_file():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
    kept = [r for r in rows if r["step"] % 10 == 0 or "held_out_loss" in r]
    return {
        "run": info,
        "steps": rows[-1]["step"],
        "train_seconds": rows[-1]["elapsed_s"],
        "pages_seen": sum(r["pages"] for r in rows),
        "text_tokens_seen": sum(r["tokens"] for r in rows),
        "final_loss_mean_of_last_100": round(statistics.fmean(r["loss"] for r in rows[-100:]), 4),
        "held_out": [{"step": r["step"], **r["held_out_loss"]} for r in rows if "held_out_loss" in r],
        "log": kept,
    }


def plot_training(curve: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [r["step"] for r in curve["log"]]
    ax.plot(steps, [r["loss"] for r in curve["log"]], lw=0.8, color="0.6", label="training loss (one batch)")
    for side in ("1024", "640", "512", "384", "256"):
        points = [(h["step"], h[side]) for h in curve["held_out"] if side in h]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=f"held-out loss, {side} px")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title("optical-mini training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--run", default="build/optical-mini", help="the training run folder, if at hand")
    parser.add_argument("--out", default=str(RESULTS / "optical_mini"))
    args = parser.parse_args()

    report = forgetting(
        args.out,
        readers=READERS,
        pages=args.pages,
        command=f"benchmarks/bench_mini.py --pages {args.pages}",
    )
    if report.not_run:
        raise SystemExit(f"readers not run: {report.not_run}")
    by = {(r["reader"], r["side"]): r for r in report.summary}
    rows = []
    for side in sorted({r["side"] for r in report.summary}, reverse=True):
        rapid, mini = by[("rapidocr", side)], by[("optical-mini", side)]
        rows.append(
            [
                side,
                rapid["vision_tokens"],
                f"{mini['compression_mean']:.1f}x",
                f"{100 * rapid['precision_mean']:.2f}%",
                f"{100 * mini['precision_mean']:.2f}%",
                f"{rapid['read_seconds_mean']:.2f}",
                f"{mini['read_seconds_mean']:.2f}",
            ]
        )
    headers = ["side", "vision tokens", "compression", "RapidOCR", "optical-mini", "RapidOCR s", "mini s"]
    print(table(headers, rows))
    document: dict[str, Any] = {
        "command": f".venv/bin/python benchmarks/bench_mini.py --pages {args.pages}",
        "weights": str(MINI_DIR.name),
        "pages": args.pages,
        "summary": report.summary,
        "seconds": round(report.seconds, 1),
    }
    curve = training_curve(Path(args.run))
    if curve is not None:
        plot_training(curve, RESULTS / "optical_mini_training.png")
        document["training"] = curve
        print(
            f"\ntraining: {curve['steps']} steps, {curve['train_seconds'] / 3600:.2f} h, "
            f"{curve['pages_seen']:,} pages, last-100 loss {curve['final_loss_mean_of_last_100']}"
        )
    (RESULTS / "optical_mini.json").write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
