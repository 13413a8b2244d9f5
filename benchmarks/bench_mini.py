"""optical-mini against RapidOCR on held-out prose, and its training curve.

    .venv/bin/python benchmarks/bench_mini.py [--pages 8] [--run build/optical-mini]

Runs the forgetting experiment (``optical_memory.experiments.forgetting``: the Python Language Reference
topics, never trained on, rendered by the store and shrunk down the ladder) with the shipped optical-mini
and RapidOCR side by side, prints precision, compression and seconds per page for each rung, and the
blank-image control (the model's held-out loss with the real page against a blank one: a gap of ~0 means
it does not read), and writes ``results/optical_mini/`` (the experiment's csv/json/md/png) and
``results/optical_mini.json``. With the training run folder at hand it also plots the training and
held-out losses (``results/optical_mini_training.png``) and keeps a compact copy of the log (every 10th
step, every evaluation) in the JSON. ``--control-only`` runs the control alone.

    .venv/bin/python benchmarks/bench_mini.py --lines 1,2,4,51 [--weights build/optical-mini/export]

measures a checkpoint (the shipped one, or a training run's export) on held-out pages cut to their first
N lines, at 1024 px (``--sides``): the control and a greedy read of every page, what a model early in its
curriculum already reads. It prints a table and adds the figures, by the weights folder's name, to
``results/optical_mini_lines.json``, with the losses in nats a character beside nats a token (decoders of
different tokenizers compare). ``--crop --sides 256,384`` measures held-out crops instead: small pages drawn
at the full page's density, as training's ``--crop-share`` draws them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from common import read_run, run_totals, table

from optical_memory.backends.deepseek import MINI_DIR
from optical_memory.experiments import forgetting
from optical_memory.training import CROP_SIDES, LADDER

RESULTS = Path(__file__).parent / "results"
READERS = ("rapidocr", "optical-mini")


def training_curve(run: Path) -> dict[str, Any] | None:
    rows, info = read_run(run)
    if not rows:
        return None
    kept = [r for r in rows if r["step"] % 10 == 0 or "held_out_loss" in r]
    return {
        "run": info,
        **run_totals(rows),
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


def decode_speed(new_tokens: int = 200) -> dict[str, dict[str, float]]:
    """Encode seconds and decode milliseconds per token for one held-out 640 px page, in float32 and bfloat16
    (the reader's default dtype choice rests on this)."""
    import time

    import torch

    from optical_memory.config import RenderConfig
    from optical_memory.experiments import build_corpus, shrink_chain
    from optical_memory.model import DEFAULT_PROMPT, GenerationConfig, from_pretrained
    from optical_memory.render import Renderer

    renderer = Renderer(RenderConfig())
    [b] = build_corpus(1, renderer=renderer)
    page = shrink_chain(renderer.draw(renderer.paginate_document(b.text)[0][0]), [640])[640]
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = from_pretrained(MINI_DIR, dtype=dtype)
        model.encode([page], 640)  # warm-up
        t0 = time.perf_counter()
        vision = model.encode([page], 640)
        encode_s = time.perf_counter() - t0
        embeds = model.embed_prompt(vision, DEFAULT_PROMPT)[None]
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        t0 = time.perf_counter()
        result = model.generate_tokens(
            embeds, attention_mask=mask, config=GenerationConfig(max_new_tokens=new_tokens, ngram_size=None)
        )
        seconds = time.perf_counter() - t0
        out[str(dtype).removeprefix("torch.")] = {
            "encode_s": round(encode_s, 3),
            "tokens": len(result.tokens[0]),
            "decode_ms_per_token": round(1000 * seconds / max(1, len(result.tokens[0])), 2),
        }
    return out


def image_control(pages: int) -> dict[str, Any]:
    """The blank-image control on held-out pages: the shipped model's loss with the real page and with a
    blank one per side (their gap is what the image is worth, in nats per token: ~0 means it does not
    read), and its vision tokens' RMS beside its text embeddings'."""
    import torch

    from optical_memory.model import from_pretrained
    from optical_memory.training import evaluate_pages, held_out_samples, text_rms

    model = from_pretrained(MINI_DIR, dtype=torch.float32)
    result = evaluate_pages(model, held_out_samples(pages), greedy_pages=0)
    del result["precision"]  # the forgetting experiment measures reading
    return {"pages": pages, "text_rms": round(text_rms(model), 4), **result}


def short_pages(
    weights: Path, pages: int, lines: list[int], sides: list[int], *, crop: bool = False
) -> dict[str, Any]:
    """``evaluate_pages`` of the checkpoint in ``weights`` on ``pages`` held-out pages cut to each of
    ``lines`` lines, at ``sides``, every page read greedily; ``crop``: crops drawn at ``sides`` at the full
    page's density (``held_out_crops``) instead of pages shrunk to them. Each side's figures also hold
    ``tokens_per_char`` (the text's tokens and EOS over its characters and EOS), by which the losses become
    nats a character: comparable across tokenizers."""
    import torch

    from optical_memory.model import from_pretrained
    from optical_memory.training import evaluate_pages, held_out_crops, held_out_samples

    def samples(n: int) -> list[Any]:
        if crop:
            return [s for side in sides for s in held_out_crops(pages, side=side, lines=n)]
        return held_out_samples(pages, lines=n, sides=sides)

    model = from_pretrained(weights, dtype=torch.float32)
    assert model.tokenizer is not None
    out = {}
    for n in lines:
        group = samples(n)
        result = evaluate_pages(model, group, greedy_pages=pages)
        result["tokens_per_char"] = {}
        for side in sides:
            texts = [s.text for s in group if s.side == side]
            tokens = sum(len(model.tokenizer.encode(t, add_special_tokens=False)) + 1 for t in texts)
            result["tokens_per_char"][side] = round(tokens / sum(len(t) + 1 for t in texts), 4)
        out[str(n)] = result
    return out


def shown(path: Path) -> str:
    """``path`` as a command in a results file names it: from the repository's root when it is inside it
    (the shipped weights' default is an absolute path), as given otherwise."""
    root = Path(__file__).resolve().parents[1]
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


def add_result(name: str, key: str, record: dict[str, Any]) -> None:
    """Put ``record`` under ``key`` in ``results/<name>``, keeping what that file already holds."""
    path = RESULTS / name
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing[key] = record
    path.write_text(json.dumps(existing, indent=1) + "\n")


def print_control(control: dict[str, Any]) -> None:
    rows = [
        [
            side,
            control["loss"][side],
            control["blank_loss"][side],
            control["gap"][side],
            control["vision_rms"][side],
        ]
        for side in sorted(control["loss"], key=int, reverse=True)
    ]
    print(table(["side", "loss, real page", "loss, blank page", "gap (nats)", "vision-token RMS"], rows))
    print(f"text-embedding RMS {control['text_rms']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--run", default="build/optical-mini", help="the training run folder, if at hand")
    parser.add_argument("--out", default=str(RESULTS / "optical_mini"))
    parser.add_argument(
        "--decode-only",
        action="store_true",
        help="only time decoding in float32 and bfloat16, added to the existing results/optical_mini.json",
    )
    parser.add_argument(
        "--control-only",
        action="store_true",
        help="only the blank-image control (real vs blank page loss), added to results/optical_mini.json",
    )
    parser.add_argument("--weights", default=str(MINI_DIR), help="the checkpoint --lines measures")
    parser.add_argument(
        "--lines",
        help="comma-separated line counts: measure --weights on held-out pages cut to each (e.g. 1,2,4,51)",
    )
    parser.add_argument("--sides", default="1024", help="the sides --lines measures at, comma-separated")
    parser.add_argument(
        "--crop",
        action="store_true",
        help=f"--lines measures crops (--sides among {CROP_SIDES}) drawn at the full page's density",
    )
    args = parser.parse_args()

    if args.lines:
        try:
            counts = [int(n) for n in args.lines.split(",")]
            sides = [int(side) for side in args.sides.split(",")]
        except ValueError:
            parser.error(
                f"--lines and --sides take comma-separated whole numbers, got {args.lines!r}, {args.sides!r}"
            )
        allowed = CROP_SIDES if args.crop else LADDER
        if min(counts) < 1 or any(side not in allowed for side in sides):
            where = f"crop sides {CROP_SIDES}" if args.crop else f"the ladder {LADDER}"
            parser.error(f"--lines must be at least 1 and --sides among {where}, got {counts}, {sides}")
        result = short_pages(Path(args.weights), args.pages, counts, sides, crop=args.crop)
        rows = [
            [
                n,
                side,
                *(r[k][side] for k in ("loss", "blank_loss", "gap")),
                *(round(r[k][side] * r["tokens_per_char"][side], 3) for k in ("loss", "blank_loss")),
                f"{r['precision'][side]:.1%}",
            ]
            for n, r in result.items()
            for side in sides
        ]
        headers = ["lines", "side", "loss, real page", "loss, blank page", "gap (nats)"]
        headers += ["real, a char", "blank, a char", "precision"]
        print(table(headers, rows))
        command = (
            f".venv/bin/python benchmarks/bench_mini.py --lines {args.lines} --sides {args.sides} "
            f"--pages {args.pages} --weights {shown(Path(args.weights))}{' --crop' if args.crop else ''}"
        )
        record = {"command": command, "by_lines": result}
        key = Path(args.weights).name + (" (crops)" if args.crop else "")
        add_result("optical_mini_lines.json", key, record)
        return

    if args.control_only:
        control = image_control(args.pages)
        print_control(control)
        command = f".venv/bin/python benchmarks/bench_mini.py --control-only --pages {args.pages}"
        add_result("optical_mini.json", "image_control", {"command": command, **control})
        return

    if args.decode_only:
        speed = decode_speed()
        rows = [[dtype, *figures.values()] for dtype, figures in speed.items()]
        print(table(["dtype", "encode s", "tokens", "ms/token"], rows))
        command = ".venv/bin/python benchmarks/bench_mini.py --decode-only"
        add_result("optical_mini.json", "decode_640px", {"command": command, **speed})
        return

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
    control = image_control(args.pages)
    print("\nblank-image control (held-out loss with the real page and with a blank one):")
    print_control(control)
    document["image_control"] = control
    (RESULTS / "optical_mini.json").write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
