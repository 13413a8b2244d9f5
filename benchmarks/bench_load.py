"""Loading cost of the full-size DeepSeek-OCR checkpoint: seconds and peak resident memory.

    .venv/bin/python benchmarks/bench_load.py [--folder DeepSeek-OCR] [--dtype bfloat16]

Without ``--folder`` it first writes a full-size random checkpoint in the official layout (bfloat16,
6.7 GB, 4 shards) to a temporary folder. The load runs in a fresh process, so its peak RSS is the
loader's own, measured after every weight has been read: the target is about the checkpoint's size
(~7 GB in bfloat16), not twice that.
Writes benchmarks/results/model_load.json. A script, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_random(folder: Path) -> None:
    import torch

    from optical_memory.model.config import OCRConfig
    from optical_memory.model.ocr import DeepseekOCR
    from optical_memory.model.testing import materialise_random, write_checkpoint

    with torch.device("meta"):
        model = DeepseekOCR(OCRConfig())
    write_checkpoint(folder, materialise_random(model, dtype=torch.bfloat16), shards=4, dtype=torch.bfloat16)


def load(folder: Path, dtype: str) -> dict[str, float]:
    import torch

    from optical_memory.model import from_pretrained

    start = time.perf_counter()
    model = from_pretrained(folder, dtype=getattr(torch, dtype))
    seconds = time.perf_counter() - start
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # Weights read in the checkpoint's dtype may still be backed by the file's pages, resident only once
    # used: read every one, so the peak below is what a model in use really holds.
    with torch.no_grad():
        checksum = sum(float(p.float().sum()) for p in model.parameters())
    params = sum(p.numel() for p in model.parameters())
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gb_after_load": round(after_load, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "checksum_finite": bool(checksum == checksum),
        "parameters": params,
        "weights_gb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, help="an official-layout checkpoint (default: write a random one)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_write", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._write:
        write_random(args.folder)
        return
    if args._child:
        print(json.dumps(load(args.folder, args.dtype)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = Path(tmp) / "DeepSeek-OCR-random"
            print(f"writing a full-size random checkpoint to {folder} ...", flush=True)
            subprocess.run([sys.executable, __file__, "--_write", "--folder", str(folder)], check=True)
        disk = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30
        out = subprocess.run(
            [sys.executable, __file__, "--_child", "--folder", str(folder), "--dtype", args.dtype],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(
        {"dtype": args.dtype, "checkpoint_gb_on_disk": round(disk, 2), "random": args.folder is None}
    )
    for key, value in result.items():
        print(f"{key:>22}  {value}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_load.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
