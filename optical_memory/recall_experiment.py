"""The recall experiment: does a planted fact stay findable, and readable, as it ages through the ladder?

``recall(out_dir, checkpoints=(100_000, 1_000_000))`` streams one seeded multi-session conversation into a
fresh store (``optical_memory.demo.conversation``'s filler, the store's default configuration and aging
policy) and stops at each checkpoint (text tokens streamed so far) to measure it. Everything is generated
here from the seed; nothing is downloaded.

Facts. For every checkpoint C, ``facts`` facts are planted at ages log-spaced from about 200 text tokens
to C before it, so each checkpoint has facts in every tier its ladder reaches (the default ladder is turn
based: the newest 16 turns stay text, then 1024 px up to 64 turns back, 640 to 256, 512 to 1024, 384 to
4096, 256 to 16384, and older pages are forgotten). A fact is one sentence about a unique subject ("the
door code of the amber boathouse is 4417-K23.") prefixed to a user turn; its question names the subject
("What is the door code of the amber boathouse?") and its answer is a value with no language prior (a
code, a name, a number). At a checkpoint every fact planted so far is asked, bucketed by the tier its turn
is in at that moment.

Per fact and checkpoint:

* ``rank``: the position of the planted turn in ``search(question, k=10)`` (None: not in the top 10);
  recall@k is the share with rank <= k.
* ``survived``: the planted answer appears verbatim (whitespace-normalised) in ``recall(id, read=True)``:
  the turn read back from its page image at its current tier by the default reader (RapidOCR), or its
  text while it is in the text tier. Forgotten pages survive nothing.
* ``image_tokens``: what ``build_context(question, mode="image", k=5, recent_share=0)`` spends on the
  retrieved memories with an unlimited budget (DeepEncoder vision tokens per distinct page, text tokens
  for text-tier turns).

Baseline: plain-text RAG, one FAISS ``IndexFlatIP`` over the raw turns, with the same embedder. Its vectors
are the ones the store computed for the same turns (same model, same text, same 160-word chunks, a
memory's score is its best chunk's), so its retrieval differs from the store's only where the store does
something else (its lexical index, fused in the default hybrid search; forgetting, dedup, expiry); its
``text_tokens`` per query are the cl100k_base tokens of its top-5 turns as ``role: text`` lines, and it
never forgets (``survived`` = retrieved).

Scale, measured on the same stream: ingest throughput per window of ``window`` tokens (each window
includes the ``age()`` calls made in it: one per ``age_every`` tokens, as an application would schedule
them), peak RSS, and at each checkpoint: the time of a full ``age()`` pass, pages and bytes per tier, the
SQLite file and the index size, and ``search`` / ``build_context(mode="image")`` latency p50/p99 over
``queries`` queries (the fact questions and snippets of filler turns; ``build_context`` excludes recall,
which image mode does not do).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import platform
import random
import resource
import shutil
import statistics
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import select

from .blobs import atomic_write
from .db import EmbeddingRow
from .demo import Turn, conversation
from .errors import InvalidInput
from .experiments import _versions, _write_csv
from .metrics import normalise_ws
from .store import OpticalMemory, open_store

__all__ = ["PlantedFact", "RecallReport", "make_facts", "measure_latency", "parse_tokens", "recall"]

log = logging.getLogger(__name__)

MIN_AGE_TOKENS = 200  # the youngest planted fact: a few turns back, still in the text tier
SEARCH_K = 10
CONTEXT_K = 5

_ADJECTIVES = (
    "amber", "blue", "copper", "crimson", "dusty", "emerald", "golden", "grey", "hidden", "ivory", "jade",
    "little", "lower", "narrow", "northern", "old", "olive", "rusty", "silver", "southern", "tall",
    "upper", "violet", "western", "white", "wooden", "yellow",
)  # fmt: skip
_PLACES = (
    "allotment shed", "attic", "bike cage", "boathouse", "cellar", "chapel", "garage", "greenhouse",
    "lighthouse", "mill", "observatory", "pavilion", "print room", "server room", "studio", "tool room",
    "warehouse", "workshop", "archive", "barn", "cabin", "gatehouse", "laundry", "loft",
)  # fmt: skip
_PEOPLE = (
    "Agnieszka Holm", "Bruno Castellanos", "Chidi Okafor", "Dagny Lindqvist", "Emeka Obi", "Farida Haddad",
    "Gustavo Ferreira", "Hana Novak", "Ilse Brandt", "Jonas Petrauskas", "Kofi Mensah", "Leena Virtanen",
    "Mateo Rinaldi", "Nadia Karimova", "Oskar Wieland", "Priya Raman", "Quentin Marchal", "Rosa Delgado",
    "Sven Aaltonen", "Tomasz Zielinski", "Ulla Berggren", "Viktor Hanssen", "Wanjiru Kamau", "Yusuf Demir",
)  # fmt: skip


@dataclass(frozen=True)
class PlantedFact:
    """A fact to plant ``age_tokens`` text tokens before checkpoint ``checkpoint``."""

    id: int
    statement: str
    question: str
    answer: str
    checkpoint: int
    age_tokens: int


def _code(rng: random.Random) -> str:
    return f"{rng.randint(1000, 9999)}-{rng.choice(string.ascii_uppercase)}{rng.randint(10, 99)}"


def make_facts(checkpoints: Sequence[int], per_checkpoint: int, *, seed: int) -> list[PlantedFact]:
    """``per_checkpoint`` facts per checkpoint, at ages log-spaced from ``MIN_AGE_TOKENS`` to the checkpoint,
    each about a subject no other fact names, in three kinds (a code, a person, a number)."""
    rng = random.Random(f"facts-{seed}")
    subjects = [f"the {a} {p}" for a in _ADJECTIVES for p in _PLACES]
    needed = per_checkpoint * len(checkpoints)
    if needed > len(subjects):
        raise InvalidInput(
            f"at most {len(subjects) // len(checkpoints)} facts per checkpoint, got {per_checkpoint}"
        )
    rng.shuffle(subjects)
    facts: list[PlantedFact] = []
    for c in sorted(checkpoints):
        low = min(MIN_AGE_TOKENS, c // 2)
        for j in range(per_checkpoint):
            share = j / max(per_checkpoint - 1, 1)
            age = round(low * (c / low) ** share) if per_checkpoint > 1 else c // 2
            age = min(max(age, 1), c - 1)
            subject = subjects[len(facts)]
            kind = len(facts) % 3
            if kind == 0:
                answer = _code(rng)
                statement = f"Note for later: the door code of {subject} is {answer}."
                question = f"What is the door code of {subject}?"
            elif kind == 1:
                answer = rng.choice(_PEOPLE)
                statement = f"The spare key of {subject} is kept by {answer}, who is away until spring."
                question = f"Who keeps the spare key of {subject}?"
            else:
                answer = f"{rng.randint(100, 999)}.{rng.randint(10, 99)}"
                statement = f"The electricity meter in {subject} read {answer} kWh at the last visit."
                question = f"What did the electricity meter in {subject} read at the last visit?"
            facts.append(PlantedFact(len(facts), statement, question, answer, c, age))
    return facts


def parse_tokens(value: str) -> int:
    """``"100k"``, ``"1M"``, ``"10M"`` or ``"250000"`` as an int; raises ``InvalidInput`` naming the value."""
    text = value.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        tokens = float(number) * scale
    except ValueError:
        raise InvalidInput(f"a token count must look like 100k, 1M or 250000, got {value!r}") from None
    if not math.isfinite(tokens) or tokens < 1000:
        raise InvalidInput(f"a token count must be at least 1000, got {value!r}")
    return int(tokens)


@dataclass
class _Planted:
    fact: PlantedFact
    memory_id: int
    turn_index: int  # 1-based position of its turn in the stream
    token_position: int  # text tokens streamed before its turn


@dataclass
class RecallReport:
    """What ``recall`` measured: per (checkpoint, fact) ``rows``, per (checkpoint, tier) ``summary`` rows,
    per-checkpoint ``scale`` measurements, the ingest ``windows``, the files written, and the wall time."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    scale: list[dict[str, Any]]
    windows: list[dict[str, Any]]
    markdown: str
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _stream(
    facts: Sequence[PlantedFact], *, seed: int, total: int, count: Callable[[str], int]
) -> Iterator[tuple[Turn, PlantedFact | None, int]]:
    """The filler conversation with each fact prefixed to the first user turn at or after its position:
    (turn, the fact planted in it or None, its text tokens)."""
    due = sorted(facts, key=lambda f: (f.checkpoint - f.age_tokens, f.id))
    streamed, i = 0, 0
    for turn in conversation(seed=seed, min_tokens=total, count=count, facts=()):
        fact = None
        if i < len(due) and turn.role == "user" and streamed >= due[i].checkpoint - due[i].age_tokens:
            fact = due[i]
            i += 1
            turn = Turn(turn.session, turn.role, f"{fact.statement} {turn.text}", turn.timestamp)
        tokens = count(turn.text)
        streamed += tokens
        yield turn, fact, tokens
        if streamed >= total and i == len(due):
            return


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "mean": round(statistics.fmean(ms), 2),
    }


def _baseline_index(store: OpticalMemory, scope: str) -> tuple[faiss.IndexIDMap2, dict[int, int]]:
    """A flat inner-product index over the store's own chunk vectors of ``scope``, and chunk -> memory."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(store.embedder.dim))
    owner: dict[int, int] = {}
    with store._session() as s:  # the experiment lives in the package: it may read the rows it measures
        rows = s.execute(
            select(EmbeddingRow.id, EmbeddingRow.memory_id, EmbeddingRow.vector).where(
                EmbeddingRow.scope == scope
            )
        )
        ids, vectors = [], []
        for eid, mid, raw in rows:
            ids.append(eid)
            owner[eid] = mid
            vectors.append(np.frombuffer(raw, dtype="<f4"))
    if ids:
        index.add_with_ids(np.stack(vectors).astype(np.float32), np.asarray(ids, dtype=np.int64))
    return index, owner


def _baseline_top(index: faiss.IndexIDMap2, owner: dict[int, int], vector: np.ndarray, k: int) -> list[int]:
    """The ``k`` best memories (best chunk per memory), best first."""
    fetch = k * 3
    while True:
        _, ids = index.search(vector.reshape(1, -1).astype(np.float32), min(fetch, index.ntotal))
        out: list[int] = []
        for eid in ids[0]:
            if eid == -1:
                continue
            mid = owner[int(eid)]
            if mid not in out:
                out.append(mid)
            if len(out) == k:
                return out
        if fetch >= index.ntotal:
            return out
        fetch *= 4


def _contains(text: str, answer: str) -> bool:
    return normalise_ws(answer) in normalise_ws(text)


def _index_bytes(store: OpticalMemory) -> int:
    return sum(faiss.serialize_index(sub).nbytes for sub in store.index._scopes.values())


def measure_latency(
    store: OpticalMemory, scope: str, searches: Sequence[str], contexts: Sequence[str]
) -> dict[str, dict[str, float]]:
    """p50, p99 and mean milliseconds of ``search(q, k=5)`` over ``searches`` and of
    ``build_context(q, budget_tokens=4000, mode="image")`` over ``contexts``, one query at a time, after
    three untimed searches (the first queries pay for SQLite page-ins)."""
    for q in searches[:3]:
        store.search(q, k=CONTEXT_K, scope=scope)
    search_ms, context_ms = [], []
    for q in searches:
        t0 = time.perf_counter()
        store.search(q, k=CONTEXT_K, scope=scope)
        search_ms.append((time.perf_counter() - t0) * 1e3)
    for q in contexts:
        t0 = time.perf_counter()
        store.build_context(q, budget_tokens=4_000, mode="image", scope=scope)
        context_ms.append((time.perf_counter() - t0) * 1e3)
    return {"search_ms": _percentiles(search_ms), "build_context_image_ms": _percentiles(context_ms)}


def recall(
    out_dir: str | os.PathLike[str],
    *,
    checkpoints: Sequence[int] = (100_000, 1_000_000),
    facts: int = 24,
    seed: int = 0,
    age_every: int = 250_000,
    window: int = 250_000,
    queries: int = 200,
    keep_store: bool = False,
    gist: str = "chunks",
    command: str = "optical_memory.recall_experiment.recall()",
    progress: Callable[[int], None] | None = None,
) -> RecallReport:
    """Run the recall experiment (see the module notes) and write ``results.csv``, ``summary.json``,
    ``summary.md``, ``recall.png`` and, as it goes, ``progress.json`` to ``out_dir``. The store is built in
    ``out_dir/store`` (replacing an old one) and deleted at the end unless ``keep_store``; ``gist`` is its
    ``StoreConfig.gist``. ``progress(n)`` is called with the text tokens of every turn streamed."""
    checkpoints = sorted(set(int(c) for c in checkpoints))
    if not checkpoints or checkpoints[0] < 1000:
        raise InvalidInput(f"checkpoints must be text-token counts of at least 1000, got {checkpoints!r}")
    for name, value in (("facts", facts), ("age_every", age_every), ("window", window), ("queries", queries)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInput(f"{name} must be a positive int, got {value!r}")
    if gist not in ("chunks", "sentences"):
        raise InvalidInput(f"gist must be 'chunks' or 'sentences', got {gist!r}")
    planted_facts = make_facts(checkpoints, facts, seed=seed)  # raises before anything is written
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "store"
    if store_path.exists():
        shutil.rmtree(store_path)
    scope = "agent"
    meta = _meta(checkpoints, facts, seed, age_every, window, queries, command)
    meta["gist"] = gist
    rows: list[dict[str, Any]] = []
    scale: list[dict[str, Any]] = []
    windows: list[dict[str, Any]] = []
    planted: list[_Planted] = []
    filler_queries: list[str] = []
    rng = random.Random(f"queries-{seed}")

    store = open_store(store_path, gist=gist)
    try:
        count = store.counter.count
        store.embedder.embed(["warm up"])  # model load is start-up cost, not ingest
        streamed = turns = cp = 0
        next_age, next_window = age_every, window
        window_start, window_tokens, ingest_seconds = time.perf_counter(), 0, 0.0
        pending: list[tuple[Turn, PlantedFact | None, int]] = []  # (turn, fact, tokens before it)
        line_tokens: dict[int, int] = {}  # memory id -> tokens of its turn as a text-RAG context line

        def write() -> None:
            nonlocal turns
            if not pending:
                return
            ids = store.add_many(
                [{"text": t.text, "role": t.role, "timestamp": t.timestamp} for t, _, _ in pending],
                scope=scope,
            )
            for (t, fact, position), mid in zip(pending, ids, strict=True):
                turns += 1
                line_tokens[mid] = count(f"{t.role}: {t.text}")
                if fact is not None:
                    planted.append(_Planted(fact, mid, turns, position))
                elif len(filler_queries) < 2_000 and t.role == "user" and rng.random() < 0.05:
                    filler_queries.append(t.text)
            pending.clear()

        # facts that must be in before each checkpoint is measured (each is planted a little after its spot)
        due = [sum(f.checkpoint <= c for f in planted_facts) for c in checkpoints]
        streamed_facts = 0
        for turn, fact, tokens in _stream(planted_facts, seed=seed, total=checkpoints[-1], count=count):
            if pending and turn.session != pending[-1][0].session:
                write()  # one add_many per session, as an agent would write a finished session
            pending.append((turn, fact, streamed))
            streamed_facts += fact is not None
            streamed += tokens
            window_tokens += tokens
            if progress:
                progress(tokens)
            at_checkpoint = streamed >= checkpoints[cp] and streamed_facts >= due[cp]
            if not (at_checkpoint or streamed >= next_age or streamed >= next_window):
                continue
            write()
            if streamed >= next_age and not at_checkpoint:
                store.age(now=turn.timestamp + 60)
                next_age += age_every
            if streamed >= next_window:
                elapsed = time.perf_counter() - window_start
                ingest_seconds += elapsed
                windows.append(
                    {
                        "tokens": streamed,
                        "window_tokens": window_tokens,
                        "seconds": round(elapsed, 2),
                        "tokens_per_min": round(window_tokens / elapsed * 60),
                        "rss_mib": round(_rss_mib()),
                        "peak_rss_mib": round(_peak_rss_mib()),
                    }
                )
                next_window += window
                window_start, window_tokens = time.perf_counter(), 0
                _write_progress(out, meta, windows, scale)
            if at_checkpoint:
                paused = time.perf_counter()
                scale.append(
                    _checkpoint(
                        store,
                        store_path,
                        scope,
                        streamed,
                        turns,
                        turn.timestamp,
                        filler_queries,
                        planted,
                        queries,
                    )
                )
                rows += _ask(store, scope, streamed, turns, planted, line_tokens)
                cp += 1
                next_age = streamed + age_every
                _write_progress(out, meta, windows, scale)
                window_start += time.perf_counter() - paused  # measuring is not ingest
                if cp == len(checkpoints):
                    break
        ingest_seconds += time.perf_counter() - window_start
        meta["ingest_seconds"] = round(ingest_seconds, 1)
        meta["streamed_tokens"] = streamed
        meta["turns"] = turns
    finally:
        store.close()
        if not keep_store and store_path.exists():
            shutil.rmtree(store_path)
    summary = _summarise(rows)
    seconds = time.perf_counter() - started
    meta["wall_seconds"] = round(seconds, 1)
    markdown = _markdown(summary, scale, windows, meta)
    files = {
        "results.csv": _write_csv(out / "results.csv", rows, ("checkpoint", "fact")),
        "summary.json": str(out / "summary.json"),
        "summary.md": str(out / "summary.md"),
        "recall.png": _plot(out / "recall.png", summary),
    }
    document = {**meta, "summary": summary, "scale": scale, "ingest_windows": windows}
    (out / "summary.json").write_text(json.dumps(document, indent=1) + "\n")
    (out / "summary.md").write_text(markdown)
    (out / "progress.json").unlink(missing_ok=True)
    return RecallReport(rows, summary, scale, windows, markdown, files, seconds)


def _checkpoint(
    store: OpticalMemory,
    store_path: Path,
    scope: str,
    streamed: int,
    turns: int,
    last_timestamp: float,
    filler: Sequence[str],
    planted: Sequence[_Planted],
    n_queries: int,
) -> dict[str, Any]:
    """Age the store fully, then measure its size and its latencies."""
    t0 = time.perf_counter()
    report = store.age(now=last_timestamp + 60)
    age_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.age(now=last_timestamp + 60)  # nothing left to move: the cost of the scan alone
    idle_age_seconds = time.perf_counter() - t0
    stats = store.stats()
    questions = [p.fact.question for p in planted]
    snippets = [" ".join(q.split()[:12]) for q in filler]
    pool = (questions + snippets) or ["what did we say"]
    latency = measure_latency(
        store,
        scope,
        [pool[i % len(pool)] for i in range(n_queries)],
        [pool[(i * 7) % len(pool)] for i in range(max(n_queries // 2, 1))],
    )
    db = store_path / "memory.db"
    return {
        "tokens": streamed,
        "turns": turns,
        "memories": stats.memories,
        "pages": stats.pages,
        "age_seconds": round(age_seconds, 2),
        "age_report": report,
        "idle_age_seconds": round(idle_age_seconds, 2),
        "tiers": [
            {
                "tier": t.tier,
                "memories": t.memories,
                "pages": t.pages,
                "text_tokens": t.text_tokens,
                "bytes": t.bytes,
            }
            for t in stats.tiers
        ],
        "sqlite_bytes": sum(p.stat().st_size for p in store_path.glob("memory.db*")) if db.exists() else None,
        "blob_bytes": _folder_bytes(store_path / "blobs"),
        "index_vectors": len(store.index),
        "index_bytes": _index_bytes(store),
        "rss_mib": round(_rss_mib()),
        "peak_rss_mib": round(_peak_rss_mib()),
        **latency,
    }


def _ask(
    store: OpticalMemory,
    scope: str,
    streamed: int,
    turns: int,
    planted: Sequence[_Planted],
    line_tokens: dict[int, int],
) -> list[dict[str, Any]]:
    """Ask every planted fact: the store's rank and readback, the baseline's rank, and both contexts' cost."""
    index, owner = _baseline_index(store, scope)
    rows = []
    for p in planted:
        q = p.fact.question
        hits = store.search(q, k=SEARCH_K, scope=scope)
        rank = next((i + 1 for i, h in enumerate(hits) if h.id == p.memory_id), None)
        base = _baseline_top(index, owner, store.embedder.embed([q])[0], SEARCH_K)
        base_rank = base.index(p.memory_id) + 1 if p.memory_id in base else None
        info = store.memory_info(p.memory_id)
        text = store.recall(p.memory_id, read=True).text
        context = store.build_context(
            q, budget_tokens=10**9, mode="image", scope=scope, k=CONTEXT_K, recent_share=0.0
        )
        rows.append(
            {
                "checkpoint": streamed,
                "fact": p.fact.id,
                "planted_for": p.fact.checkpoint,
                "answer": p.fact.answer,
                "age_turns": turns - p.turn_index,
                "age_tokens": streamed - p.token_position,
                "tier": info.tier,
                "rank": rank,
                "survived": _contains(text, p.fact.answer),
                "baseline_rank": base_rank,
                "image_tokens": context.used_tokens,
                "image_pages": sum(i.tier not in ("text", "forgotten") for i in context.items),
                "text_rag_tokens": sum(line_tokens[m] for m in base[:CONTEXT_K]),
                "recalled": text[:200],
            }
        )
    return rows


_TIER_ORDER = ("text", "1024", "640", "512", "384", "256", "forgotten")


def _tier_key(tier: str) -> int:
    return _TIER_ORDER.index(tier) if tier in _TIER_ORDER else len(_TIER_ORDER)


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["checkpoint"], r["tier"]), []).append(r)
        groups.setdefault((r["checkpoint"], "all"), []).append(r)
    out = []
    for (checkpoint, tier), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all", _tier_key(kv[0][1]))
    ):
        n = len(group)

        def share(pred: Callable[[dict[str, Any]], bool], g: list[dict[str, Any]] = group) -> float:
            return round(sum(pred(r) for r in g) / len(g), 4)

        image = statistics.fmean(r["image_tokens"] for r in group)
        text = statistics.fmean(r["text_rag_tokens"] for r in group)
        out.append(
            {
                "checkpoint": checkpoint,
                "tier": tier,
                "facts": n,
                "age_turns_min": min(r["age_turns"] for r in group),
                "age_turns_max": max(r["age_turns"] for r in group),
                "recall_at_1": share(lambda r: r["rank"] is not None and r["rank"] <= 1),
                "recall_at_5": share(lambda r: r["rank"] is not None and r["rank"] <= 5),
                "recall_at_10": share(lambda r: r["rank"] is not None),
                "survived": share(lambda r: r["survived"]),
                "found_and_read_at_5": share(
                    lambda r: r["rank"] is not None and r["rank"] <= 5 and r["survived"]
                ),
                "baseline_recall_at_5": share(
                    lambda r: r["baseline_rank"] is not None and r["baseline_rank"] <= 5
                ),
                "image_tokens_mean": round(image, 1),
                "text_rag_tokens_mean": round(text, 1),
                "text_rag_over_image": round(text / image, 2) if image else None,
            }
        )
    return out


def _write_progress(
    out: Path, meta: dict[str, Any], windows: list[dict[str, Any]], scale: list[dict[str, Any]]
) -> None:
    """What has been measured so far, rewritten as the run goes: a run that is stopped still leaves it."""
    document = {**meta, "ingest_windows": windows, "scale": scale}
    atomic_write(out / "progress.json", json.dumps(document, indent=1).encode())  # whole or not at all


def _meta(
    checkpoints: Sequence[int], facts: int, seed: int, age_every: int, window: int, queries: int, command: str
) -> dict[str, Any]:

    return {
        "experiment": "recall",
        "command": command,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoints": list(checkpoints),
        "facts_per_checkpoint": facts,
        "seed": seed,
        "age_every_tokens": age_every,
        "window_tokens": window,
        "latency_queries": queries,
        "store": "optical_memory defaults (minilm embedder, rapidocr reader, default aging ladder)",
        "baseline": "FAISS IndexFlatIP over the raw turns' vectors from the same embedder; "
        "top-5 turns as text",
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": _versions(),
        },
    }


def _fmt_tokens(n: int) -> str:
    """A checkpoint as people name it: 100036 -> "100k", 10000030 -> "10M" (three significant digits)."""
    return f"{n / 1e6:.3g}M" if n >= 1_000_000 else f"{n / 1e3:.3g}k"


def _markdown(
    summary: list[dict[str, Any]],
    scale: list[dict[str, Any]],
    windows: list[dict[str, Any]],
    meta: dict[str, Any],
) -> str:
    lines = [
        f"# Recall of planted facts by age ({meta['facts_per_checkpoint']} facts planted per checkpoint, "
        f"seed {meta['seed']})",
        "",
        "| checkpoint | tier | facts | age (turns) | recall@1 | recall@5 | recall@10 | read back "
        "| found@5 and read | text-RAG recall@5 | image ctx tokens | text-RAG ctx tokens "
        "| text-RAG / image |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        ratio = f"{r['text_rag_over_image']:.1f}x" if r["text_rag_over_image"] else "-"
        lines.append(
            f"| {_fmt_tokens(r['checkpoint'])} | {r['tier']} | {r['facts']} "
            f"| {r['age_turns_min']}-{r['age_turns_max']} | {r['recall_at_1']:.0%} | {r['recall_at_5']:.0%} "
            f"| {r['recall_at_10']:.0%} | {r['survived']:.0%} | {r['found_and_read_at_5']:.0%} "
            f"| {r['baseline_recall_at_5']:.0%} | {r['image_tokens_mean']:.0f} "
            f"| {r['text_rag_tokens_mean']:.0f} | {ratio} |"
        )
    lines += [
        "",
        "## Scale at each checkpoint",
        "",
        "| checkpoint | turns | pages | full age() s | idle age() s | search p50/p99 ms "
        "| build_context(image) p50/p99 ms | index MiB | SQLite MiB | page blobs MiB | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for c in scale:
        s, b = c["search_ms"], c["build_context_image_ms"]
        lines.append(
            f"| {_fmt_tokens(c['tokens'])} | {c['turns']} | {c['pages']} | {c['age_seconds']:.1f} "
            f"| {c['idle_age_seconds']:.2f} | {s['p50']:.1f} / {s['p99']:.1f} "
            f"| {b['p50']:.1f} / {b['p99']:.1f} "
            f"| {c['index_bytes'] / 2**20:.1f} | {(c['sqlite_bytes'] or 0) / 2**20:.1f} "
            f"| {c['blob_bytes'] / 2**20:.1f} | {c['peak_rss_mib']} |"
        )
    if scale:
        last = scale[-1]
        lines += ["", f"Pages and bytes per tier at {_fmt_tokens(last['tokens'])}:", ""]
        lines += ["| tier | memories | pages | text tokens | bytes |", "|---|---:|---:|---:|---:|"]
        for t in last["tiers"]:
            lines.append(
                f"| {t['tier']} | {t['memories']} | {t['pages']} | {t['text_tokens']} | {t['bytes']} |"
            )
    if windows:
        rates = [w["tokens_per_min"] for w in windows]
        lines += [
            "",
            f"Ingest: {len(windows)} windows of {_fmt_tokens(meta['window_tokens'])} tokens, "
            f"{min(rates):,} to {max(rates):,} text tokens/min (median {int(statistics.median(rates)):,}; "
            f"each window includes its scheduled age() calls); "
            f"{meta.get('streamed_tokens', 0):,} tokens in {meta.get('ingest_seconds', 0):.0f} s of ingest.",
        ]
    lines += [
        "",
        "recall@k: the planted turn is among the store's top k for its question. read back: the planted "
        "value appears verbatim in the turn as recalled (read from its page image at its tier by the "
        "default reader). "
        "Context tokens per query, k = 5: image = vision tokens of the distinct pages retrieved (text tokens "
        "for text-tier turns); text-RAG = cl100k_base tokens of the baseline's top-5 turns.",
        "",
    ]
    return "\n".join(lines)


def _plot(path: Path, summary: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for checkpoint in sorted({r["checkpoint"] for r in summary}):
        group = [r for r in summary if r["checkpoint"] == checkpoint and r["tier"] != "all"]
        x = [_tier_key(r["tier"]) for r in group]
        label = _fmt_tokens(checkpoint)
        left.plot(x, [r["recall_at_5"] for r in group], marker="o", label=f"{label} recall@5")
        left.plot(x, [r["survived"] for r in group], marker="s", linestyle="--", label=f"{label} read back")
        right.plot(x, [r["image_tokens_mean"] for r in group], marker="o", label=f"{label} image")
        right.plot(
            x,
            [r["text_rag_tokens_mean"] for r in group],
            marker="s",
            linestyle="--",
            label=f"{label} text RAG",
        )
    for ax in (left, right):
        ax.set_xticks(range(len(_TIER_ORDER)), _TIER_ORDER)
        ax.set_xlabel("tier of the planted turn (older to the right)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    left.set_ylabel("share of planted facts")
    left.set_ylim(-0.05, 1.05)
    left.set_title("Found (recall@5) and read back, by age")
    right.set_ylabel("context tokens per query (k = 5)")
    right.set_title("Context cost: page images vs text RAG")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
