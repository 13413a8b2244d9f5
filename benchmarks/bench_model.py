"""DeepSeek-OCR model benchmark at full size with random weights: encode time per page per mode, and decode
tokens/s beside transformers' DeepseekOcr2 text model (the same MoE decoder) at the same config.

    .venv/bin/python benchmarks/bench_model.py [--dtypes float32 bfloat16] [--threads 2] [--steps 32]

On a CUDA machine it also measures bfloat16 on the GPU at batch 1 and 32. Prints a table per part and
writes benchmarks/results/model_<device>.json. A script, not a timed test. Needs ~14 GB of RAM for
float32 (one model at a time), ~7 GB for bfloat16.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import table  # benchmarks/ is on sys.path when a script runs
from PIL import Image, ImageDraw

from optical_memory.model import GenerationConfig, OCRConfig
from optical_memory.model.config import DecoderConfig
from optical_memory.model.loading import load_tokenizer
from optical_memory.model.ocr import DeepseekOCR
from optical_memory.model.testing import materialise_random, transformers_text_config, write_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_PAGES_PER_DAY = 200_000  # "200k+ pages per day (a single A100-40G)", DeepSeek-OCR abstract
MODES: list[tuple[str, Any, tuple[int, int]]] = [
    ("tiny", "tiny", (1024, 1024)),
    ("small", "small", (1024, 1024)),
    ("base", "base", (1024, 1024)),
    ("large", "large", (1024, 1024)),
    ("384px", 384, (1024, 1024)),
    ("256px", 256, (1024, 1024)),
    ("gundam 3x2", "gundam", (1920, 1280)),
]


def page(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for y in range(10, height - 20, 22):
        draw.text((12, y), f"line {y}: the quick brown fox jumps over the lazy dog " * 3, fill="black")
    return image


def timed(fn: Callable[[], object], *, repeat: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_ours(
    device: str, dtype: torch.dtype, steps: int, batches: list[int], sync: Callable[[], None]
) -> tuple[list[dict[str, Any]], dict[int, float]]:
    with torch.device("meta"):
        model = DeepseekOCR(OCRConfig())
    model = materialise_random(model, device=device, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:  # a byte-level stand-in with the official special ids
        write_tokenizer(Path(tmp), model.config)
        model.tokenizer = load_tokenizer(tmp)
    encode_rows = []
    for label, mode, size in MODES:
        image = page(*size)
        [seq] = model.encode([image], mode)  # warm-up, and the token count
        seconds = timed(lambda image=image, mode=mode: model.encode([image], mode), repeat=2, sync=sync)
        encode_rows.append({"mode": label, "positions": seq.shape[0], "seconds_per_page": round(seconds, 3)})
        print(f"  encode {label}: {seconds:.2f} s/page", flush=True)
    [vision] = model.encode([page(1024, 1024)], "base")
    decode = {}
    for batch in batches:
        embeds = model.embed_prompt([vision], "<image>\nFree OCR.")[None].expand(batch, -1, -1).contiguous()
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)

        def run(n: int, embeds: torch.Tensor = embeds, mask: torch.Tensor = mask) -> None:
            out = model.generate_tokens(
                embeds, attention_mask=mask, config=GenerationConfig(max_new_tokens=n, ngram_size=None)
            )
            assert all(len(t) == n for t in out.tokens), "a row stopped early (EOS); rerun with another seed"

        decode[batch] = decode_rate(run, steps, batch, sync)
    return encode_rows, decode


def decode_rate(run: Callable[[int], None], steps: int, batch: int, sync: Callable[[], None]) -> float:
    """Generated tokens/s over ``steps`` decode steps: (prefill + 1 + steps) minus (prefill + 1)."""
    run(2)  # warm-up
    one = timed(lambda: run(1), repeat=2, sync=sync)
    many = timed(lambda: run(1 + steps), repeat=2, sync=sync)
    return batch * steps / max(many - one, 1e-9)


def bench_transformers(
    device: str, dtype: torch.dtype, steps: int, batches: list[int], sync: Callable[[], None]
) -> dict[int, float]:
    import transformers

    cfg = DecoderConfig()
    ref_cfg = transformers_text_config(cfg, attn_implementation="sdpa")
    with torch.device("meta"):
        ref = transformers.DeepseekOcr2TextModel(ref_cfg)
        head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
    ref = materialise_random(ref, device=device, dtype=dtype)
    head = materialise_random(head, device=device, dtype=dtype)
    with torch.device(device):
        ref.rotary_emb = type(ref.rotary_emb)(ref_cfg)  # its non-persistent inv_freq was left empty by meta
    prompt_len = 273 + 6  # a Base page's image positions plus BOS and "\nFree OCR."
    rates = {}
    for batch in batches:
        embeds = torch.randn(batch, prompt_len, cfg.hidden_size, device=device, dtype=dtype) * 0.02

        @torch.inference_mode()
        def run(n: int, embeds: torch.Tensor = embeds) -> None:
            out = ref(inputs_embeds=embeds, use_cache=True)
            cache = out.past_key_values
            ids = head(out.last_hidden_state[:, -1]).float().argmax(-1)  # (B,)
            for _ in range(n - 1):
                out = ref(input_ids=ids[:, None], past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                ids = head(out.last_hidden_state[:, -1]).float().argmax(-1)

        rates[batch] = decode_rate(run, steps, batch, sync)
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=32, help="decode steps timed per measurement")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtypes = ["bfloat16"] if cuda else args.dtypes
    batches = [1, 32] if cuda else [1]
    result: dict[str, Any] = {
        "machine": {
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or 'x86_64'})",
            "threads": None if cuda else torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "runs": [],
    }
    for name in dtypes:
        dtype = getattr(torch, name)
        encode_rows, ours = bench_ours(device, dtype, args.steps, batches, sync)
        gc.collect()  # one full-size model in memory at a time
        theirs = bench_transformers(device, dtype, args.steps, batches, sync)
        gc.collect()
        print(f"\nEncode, {name} on {result['machine']['device']} (batch 1, one page)\n")
        print(table(["mode", "positions", "seconds_per_page"], [list(r.values()) for r in encode_rows]))
        rows = []
        for batch in batches:
            rows.append(
                [batch, round(ours[batch], 2), round(theirs[batch], 2), round(theirs[batch] / ours[batch], 3)]
            )
        print(f"\nDecode tokens/s, {name}, after a Base page prompt (279 tokens), {args.steps} steps\n")
        print(table(["batch", "ours", "transformers", "ours_time/theirs_time"], rows))
        base = next(r for r in encode_rows if r["mode"] == "base")["seconds_per_page"]
        gundam = next(r for r in encode_rows if r["mode"].startswith("gundam"))["seconds_per_page"]
        best = max(ours.values())
        page_seconds = gundam + 1000 / best  # a Gundam page of ~1,000 output tokens, one at a time
        result["runs"].append(
            {
                "dtype": name,
                "encode": encode_rows,
                "decode_tokens_per_s": {"ours": ours, "transformers": theirs},
                "time_ratio_ours_over_transformers": {b: theirs[b] / ours[b] for b in batches},
                "pages_per_day_sequential_gundam_1000_tokens": round(86400 / page_seconds),
                "paper_pages_per_day_a100": PAPER_PAGES_PER_DAY,
                "base_encode_seconds": base,
            }
        )
        print(
            f"\nOne page at a time (Gundam encode + 1,000 tokens at {best:.1f} tok/s): "
            f"{86400 / page_seconds:,.0f} pages/day, vs the paper's {PAPER_PAGES_PER_DAY:,} on one A100-40G"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"model_{device}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
