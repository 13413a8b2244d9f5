"""Where an optical-mini training step spends its time, per ladder side: drawing the pages, preparing them,
the encoder's forward (SAM, and its global-attention block alone), the whole forward and backward with the
character loss, the decoder's part of it, and the optimiser's step. Run on a quiet machine:

    .venv/bin/python benchmarks/profile_train.py   # prints a table, writes results/profile_train.json

Two SAM variants are timed: the shipped mini (one global-attention block among four) and a windowed-only one
(``--windowed-sam`` in training), each in float32 and under bfloat16 autocast. Every figure is the best of
``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import table

from optical_memory.hardware import cpu_name
from optical_memory.model.preprocess import get_mode, prepare
from optical_memory.training import BATCH, TrainConfig, Trainer, page_loss, vision_features

RESULTS = Path(__file__).parent / "results"


def best(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(min(times), 3)


def profile(trainer: Trainer, side: int, step: int, repeats: int, bf16: bool) -> dict[str, float]:
    stream, model = trainer.stream, trainer.model
    n = BATCH[side]
    samples = [stream.sample(step, i, side) for i in range(n)]
    pixels = torch.stack([prepare(s.image, get_mode(side)).global_view for s in samples])
    sam = model.model.sam_model
    global_blocks = [b for b in sam.blocks if b.window_size == 0]
    grid = torch.randn(n, side // 16, side // 16, sam.cfg.embed_dim)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad(), autocast:
                return fn()

        return run

    def full() -> None:
        with autocast:
            loss, _, char = trainer.losses(samples, step=step)
            total = loss if char is None else loss + char
        total.backward()

    with torch.no_grad(), autocast:
        feats = vision_features(model, samples)

    def decoder() -> None:  # the decoder's forward and backward on ready vision tokens
        with autocast:
            loss, _ = page_loss(model, samples, feats=feats.detach().requires_grad_())
        loss.backward()

    return {
        "pages": n,
        "lines": sum(s.lines for s in samples),
        "draw_s": best(lambda: [stream.sample(step, i, side) for i in range(n)], repeats),
        "prepare_s": best(lambda: [prepare(s.image, get_mode(side)).global_view for s in samples], repeats),
        "sam_fwd_s": best(no_grad(lambda: sam(pixels)), repeats),
        "sam_global_fwd_s": best(no_grad(lambda: [b(grid) for b in global_blocks]), repeats),
        "fwd_bwd_s": best(full, repeats),
        "decoder_fwd_bwd_s": best(decoder, repeats),
        "optimizer_s": best(trainer.optimizer.step, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step", type=int, default=700, help="the curriculum's step the pages are drawn at")
    parser.add_argument("--out", default=str(RESULTS / "profile_train.json"))
    args = parser.parse_args()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mini", "windowed"):
            config = TrainConfig(
                char_loss=1.0, sides=(1024, 640), eval_every=0, steps=1000, windowed_sam=name == "windowed"
            )
            trainer = Trainer(Path(tmp) / name, config)
            for side in (1024, 640):
                for bf16 in (False, True):
                    r = {"sam": name, "side": side, "dtype": "bf16" if bf16 else "fp32"}
                    r |= profile(trainer, side, args.step, args.repeats, bf16)
                    results.append(r)
                    rows.append(list(r.values()))
                    print(f"{name} {side} px {r['dtype']}: fwd+bwd {r['fwd_bwd_s']} s", flush=True)
    print(table(list(results[0]), rows))
    out = {
        "what": "seconds per part of one optical-mini training step (character loss on), best of "
        f"{args.repeats}, pages drawn at curriculum step {args.step}",
        "command": "python benchmarks/profile_train.py",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
