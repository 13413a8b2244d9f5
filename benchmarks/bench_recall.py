"""First recall of a memory from its page: its own lines read one by one, against a read of the whole page.

    .venv/bin/python benchmarks/bench_recall.py [--turns 120] [--sides 1024,640,512] [--seed 0]
    .venv/bin/python benchmarks/bench_recall.py --kept DIR [--out FILE]   # a kept 10M store, see below

For each page side, the same demo turns (default ``RenderConfig``: 1024 px pages of 51 lines) are paged at
that side in two fresh stores with the RapidOCR reader: one reads a memory's own lines (the default, the
reader's ``read_lines``), the other is given the same reader behind an object that can only read whole
pages, as every recall did before. Every memory is then recalled once, oldest first, so each recall reads
lines never read before; in the whole-page store only the first memory of a page reads, and the rest come
from its cache. Reported per side: the latency of each memory's first recall (p50 / p99 / max) and the time
of a whole-page read, the character error rate of both against the text that was stored, and the share of
memories whose two reads are the same text. Then ``build_context(mode="text", k=8)`` over pages never read
before, cold and warm (see :func:`contexts`). Prints tables, writes benchmarks/results/recall_latency.json.
Run it on a quiet machine.

``--kept DIR`` measures ``build_context`` on a big store instead: the recall conversation kept by
``bench_retrieval.py --keep DIR`` (``DIR/recall``, e.g. 10M tokens), aged once with the default policy if it
never was (its pages written and tiered: the last 16k turns on pages, the older forgotten). Each planted
fact's question is asked once and then ``--warm`` more times, and the latency of both is reported (see
:func:`kept_contexts`). The first asks read pages never read before only on the store's first run (a
second run finds them in the read cache), or with ``--cold``, which empties that cache first. A store read
ahead (``optical-memory --store DIR/recall age --preread``) has its whole-page reads cached already: the
result says how many such pages were left unread.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import table, write_result  # benchmarks/ is on sys.path when a script runs
from PIL import Image
from sqlalchemy import delete
from tqdm import tqdm

import optical_memory as om
from optical_memory.backends import make_reader
from optical_memory.backends.tiktoken_counter import TiktokenCounter
from optical_memory.config import AgingPolicy, Tier
from optical_memory.db import RecallRow
from optical_memory.demo import conversation
from optical_memory.metrics import cer
from optical_memory.protocols import Reader
from optical_memory.reading import unread_pages
from optical_memory.types import TextLine


class WholePages:
    """A reader that reads whole pages only: the given reader without its ``read_lines``; it times each
    page it reads."""

    def __init__(self, reader: Reader) -> None:
        self.name = reader.name
        self._reader = reader
        self.seconds: list[float] = []

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        start = time.perf_counter()
        found = self._reader.read(images)
        self.seconds.append((time.perf_counter() - start) / max(len(images), 1))
        return found


def load_models(reader: Reader) -> None:
    """Load the reader's models (detection and recognition) before anything is timed."""
    probe = om.render.Renderer(om.RenderConfig()).draw(["The models load once, here."])
    reader.read([probe])  # (a blank image would not load them: the reader skips it)
    reader.read_lines([probe.crop((0, 0, 400, 60))])


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def first_recalls(
    folder: Path, texts: list[str], side: int, reader: Reader
) -> tuple[list[str | None], list[float]]:
    """Each memory's first recall at ``side``: (text read, seconds); None for a memory on a page that is not
    at ``side`` (pages are drawn at 1024 px, and the newest stays there)."""
    top = om.config.RenderConfig().page_side
    tiers = (Tier(side=side),) if side == top else (Tier(side=top, max_turns=0), Tier(side=side))
    with om.open(folder, aging=AgingPolicy(text_turns=0, tiers=tiers, forget=False), reader=reader) as store:
        ids = store.add_many([{"text": t, "role": "user"} for t in texts], scope="bench")
        store.age()
        read: list[str | None] = []
        seconds = []
        for memory_id in ids:
            if store.memory_info(memory_id).tier != str(side):
                read.append(None)
                continue
            start = time.perf_counter()
            read.append(store.recall(memory_id, read=True).text)
            seconds.append(time.perf_counter() - start)
    return read, seconds


def contexts(folder: Path, texts: list[str], queries: int, reader: Reader) -> dict[str, float]:
    """``build_context(mode="text", k=8)`` over pages never read before, then the same again (warm): the
    turns paged at 1024 px by the default policy, each query a fresh copy of that store, so no page of it
    was read yet. A query is the first eight words of an old turn."""
    base = folder / "base"
    with om.open(base, reader=reader) as store:
        store.add_many([{"text": t, "role": "user"} for t in texts], scope="bench")
        store.age()
    step = max(1, (len(texts) - 32) // queries)
    asked = [" ".join(texts[i].split()[:8]) for i in range(0, len(texts) - 32, step)][:queries]
    cold, warm, reads = [], [], []
    for n, query in enumerate(asked):
        copy = folder / f"q{n}"
        shutil.copytree(base, copy)
        with om.open(copy, reader=reader) as store:
            start = time.perf_counter()
            ctx = store.build_context(query, budget_tokens=4000, mode="text", k=8, scope="bench")
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.build_context(query, budget_tokens=4000, mode="text", k=8, scope="bench")
            warm.append(time.perf_counter() - start)
            reads.append(sum(1 for i in ctx.items if i.origin == "retrieved" and i.tier != "text"))
        shutil.rmtree(copy)
    return {
        "queries": len(asked),
        "paged_hits_mean": round(statistics.fmean(reads), 2),
        "cold_p50_s": round(pct(cold, 0.5), 3),
        "cold_p99_s": round(pct(cold, 0.99), 3),
        "warm_p50_ms": round(pct(warm, 0.5) * 1e3, 1),
        "warm_p99_ms": round(pct(warm, 0.99) * 1e3, 1),
    }


def kept_contexts(folder: Path, reader: Reader, warm_asks: int, *, cold: bool = False) -> dict:
    """``build_context(mode="text", k=8)`` for each planted question of the recall store kept in
    ``folder``: the first ask, then ``warm_asks`` more (the read cache warm). ``cold``: the store's read
    cache is emptied first, so the first asks read every page they need."""
    kept = json.loads((folder / "recall.facts.json").read_text())
    questions = [fact["question"] for fact in kept["facts"].values()]
    with om.open(folder / "recall", reader=reader) as store:
        if store.stats().pages == 0:
            start = time.perf_counter()
            with tqdm(desc="age", unit="page") as bar:
                report = store.age(progress=bar.update)
            print(f"aged in {time.perf_counter() - start:.0f} s: {report}", flush=True)
        if cold:
            with store._core.write() as w:
                w.s.execute(delete(RecallRow))
        stats = store.stats()
        # pages a first recall would read whole (at 256 px: 3.5-4 s each) that were not read ahead
        unread = len(unread_pages(store._core))
        store.search("warm up", k=1)  # the one-thread query session is made on first use
        first, warm, paged = [], [], []
        for question in questions:
            start = time.perf_counter()
            ctx = store.build_context(question, budget_tokens=4000, mode="text", k=8)
            first.append(time.perf_counter() - start)
            paged.append(sum(1 for i in ctx.items if i.origin == "retrieved" and i.tier != "text"))
            for _ in range(warm_asks):
                start = time.perf_counter()
                store.build_context(question, budget_tokens=4000, mode="text", k=8)
                warm.append(time.perf_counter() - start)
    return {
        "checkpoint_tokens": kept["checkpoint_tokens"],
        "memories": stats.memories,
        "pages": stats.pages,
        "text_tokens": stats.text_tokens,
        "queries": len(questions),
        "paged_hits_mean": round(statistics.fmean(paged), 2),
        "unread_whole_pages": unread,
        "first_p50_s": round(pct(first, 0.5), 3),
        "first_p99_s": round(pct(first, 0.99), 3),
        "warm_asks": len(warm),
        "warm_p50_ms": round(pct(warm, 0.5) * 1e3, 1),
        "warm_p99_ms": round(pct(warm, 0.99) * 1e3, 1),
    }


def mean_cer(texts: list[str], read: list[str]) -> float:
    return round(statistics.fmean(cer(t, r) for t, r in zip(texts, read, strict=True)), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=120)
    ap.add_argument("--sides", default="1024,640,512")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--contexts", type=int, default=20, help="build_context queries (0: none)")
    ap.add_argument("--context-turns", type=int, default=400, help="turns of the build_context store")
    ap.add_argument("--kept", metavar="DIR", help="only build_context on the store bench_retrieval.py kept")
    ap.add_argument("--warm", type=int, default=3, help="with --kept: warm asks of each question")
    ap.add_argument("--cold", action="store_true", help="with --kept: empty the store's read cache first")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recall_latency.json"))
    args = ap.parse_args()
    if args.kept:
        if not (Path(args.kept) / "recall.facts.json").exists():
            ap.error(f"--kept {args.kept}: no recall.facts.json there (bench_retrieval.py --keep builds it)")
        reader = make_reader("rapidocr")
        load_models(reader)  # not in the first ask's time
        kept = kept_contexts(Path(args.kept), reader, args.warm, cold=args.cold)
        print(table(list(kept), [list(kept.values())]))
        write_result(args.out, "bench_recall.py", {"kept": kept})
        return
    turns = conversation(seed=args.seed, min_tokens=10**9, count=TiktokenCounter().count, facts=())
    texts = [next(turns).text for _ in range(args.turns)]
    reader = make_reader("rapidocr")
    load_models(reader)
    headers = [
        "side",
        "lines p50/p99/max s",
        "page read s",
        "lines CER",
        "page CER",
        "same text",
    ]
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(s) for s in args.sides.split(",")):
            by_line, line_s = first_recalls(Path(tmp) / f"lines-{side}", texts, side, reader)
            pages = WholePages(reader)
            by_page, _ = first_recalls(Path(tmp) / f"page-{side}", texts, side, pages)
            page_reads = pages.seconds  # one per page: its first memory's recall; the rest are cached
            kept = [
                (t, a, b)
                for t, a, b in zip(texts, by_line, by_page, strict=True)
                if a is not None and b is not None
            ]
            stored, lines, whole = (list(column) for column in zip(*kept, strict=True))
            result = {
                "side": side,
                "memories": len(kept),
                "lines_p50_s": round(pct(line_s, 0.5), 3),
                "lines_p99_s": round(pct(line_s, 0.99), 3),
                "lines_max_s": round(max(line_s), 3),
                "lines_mean_s": round(statistics.fmean(line_s), 3),
                "page_reads": len(page_reads),
                "page_read_mean_s": round(statistics.fmean(page_reads), 3) if page_reads else None,
                "lines_cer": mean_cer(stored, lines),
                "page_cer": mean_cer(stored, whole),
                "same_text": round(statistics.fmean(a == b for a, b in zip(lines, whole, strict=True)), 3),
            }
            results.append(result)
            rows.append(
                [
                    side,
                    f"{result['lines_p50_s']}/{result['lines_p99_s']}/{result['lines_max_s']}",
                    result["page_read_mean_s"],
                    result["lines_cer"],
                    result["page_cer"],
                    result["same_text"],
                ]
            )
            print(table(headers, rows[-1:]), flush=True)
        built = None
        if args.contexts:
            more = [next(turns).text for _ in range(max(0, args.context_turns - len(texts)))]
            built = contexts(Path(tmp) / "contexts", texts + more, args.contexts, reader)
    print()
    print(table(headers, rows))
    payload: dict = {"turns": args.turns, "results": results}
    if built is not None:
        print()
        print(f"build_context(mode='text', k=8), {args.context_turns} turns, pages never read before:")
        print(table(list(built), [list(built.values())]))
        payload["build_context"] = built
    write_result(args.out, "bench_recall.py", payload)


if __name__ == "__main__":
    main()
