"""Dense vs lexical vs hybrid retrieval: recall@1/5/10 of planted facts, and search latency, by store size.

    .venv/bin/python benchmarks/bench_retrieval.py [--tokens 100k,1M] [--facts 60] [--seed 0] [--keep DIR]
    .venv/bin/python benchmarks/bench_retrieval.py --keep DIR --reuse   # measure kept stores again, quietly

Two conversations are streamed into one fresh store each (the default configuration; ``age()`` is not run:
ranking reads only the gist vectors and the lexical index, which aging leaves as they are), and at every
checkpoint each fact planted so far is asked with ``search(question, k=10, mode=...)`` in every mode:

* ``recall``: the project's recall experiment (``optical_memory.recall_experiment``): its filler and its
  facts, each prefixed to a user turn; the question names the fact's subject in the statement's words
  ("What is the door code of the amber boathouse?").
* ``paraphrase``: a second conversation generated here, differently phrased. Its facts are about a cast of
  people who come back (each person in several facts and in small-talk turns), and each fact's topic comes
  back too (other people doing the same kind of thing, turns about the topic with no one's name). Its
  questions paraphrase the statement ("Priya adopted a rescue greyhound called Biscuit" / "What is the name
  of the dog Priya took in?"): the words a question shares with its answer are mostly the person's name,
  and the meaning it shares is shared with every turn on the topic. Planted facts sit at ages log-spaced
  over each checkpoint, like the recall experiment's.

A fact counts as found at k when its turn is among the top k hits. Latency: p50/p99 of ``search(k=5)``
per mode over the questions, query embedding included. Prints a table, writes
benchmarks/results/retrieval.json. Run it on a quiet machine.

A 10M-token checkpoint takes about an hour of ingest per conversation on 2 cores. ``--keep DIR`` keeps each
store (``DIR/recall``, ``DIR/paraphrase``) with its planted facts (``DIR/<name>.facts.json``), and
``--reuse`` measures kept stores again without ingesting (at the checkpoint they were built to), so the
latency can be taken on a quiet machine after a long ingest that was not.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from common import table, write_result  # benchmarks/ is on sys.path when a script runs

import optical_memory as om
from optical_memory.demo import conversation
from optical_memory.recall_experiment import MIN_AGE_TOKENS, _stream, make_facts, parse_tokens

MODES = ("dense", "lexical", "hybrid")
KS = (1, 5, 10)
SCOPE = "bench"
BATCH = 64
PROGRESS_TOKENS = 250_000  # a progress line on stderr every this many streamed tokens


@dataclass(frozen=True)
class Fact:
    statement: str
    question: str
    checkpoint: int
    age_tokens: int


# -- the paraphrase conversation -----------------------------------------------------------------------------

NAMES = (
    "Priya", "Bruno", "Chidi", "Dagny", "Emeka", "Farida", "Gustavo", "Hana", "Ilse", "Jonas", "Kofi",
    "Leena", "Mateo", "Nadia", "Oskar", "Rosa", "Sven", "Tomasz", "Ulla", "Viktor", "Wanjiru", "Yusuf",
    "Agnes", "Marit", "Ravi", "Soren", "Tamsin", "Idris", "Freya", "Lorenzo",
)  # fmt: skip
PETS = ("Biscuit", "Pepper", "Juniper", "Marlow", "Tofu", "Clementine", "Boris", "Waffles", "Nutmeg")
CITIES = ("Porto", "Ljubljana", "Tallinn", "Valencia", "Gdansk", "Bergen", "Trieste", "Lyon", "Cork")
LANGUAGES = ("Portuguese", "Finnish", "Korean", "Swahili", "Dutch", "Turkish", "Welsh", "Hungarian")
CRAFTS = ("pottery", "woodturning", "bookbinding", "glassblowing", "weaving", "silversmithing")

# (statement, question, what other people's turns on the topic say, a turn on the topic with no one in it)
TOPICS: tuple[tuple[str, str, str, str], ...] = (
    (
        "{name} adopted a rescue greyhound called {pet} last weekend.",
        "What is the name of the dog {name} took in?",
        "{other} is thinking about getting a puppy from the shelter.",
        "Dog shelters near us are completely full this year, they say.",
    ),
    (
        "{name} finally signed up for an evening {craft} class at the community centre.",
        "What kind of course did {name} enrol in?",
        "{other} keeps saying they want a creative hobby for the winter evenings.",
        "The community centre has a new timetable of evening workshops.",
    ),
    (
        "{name} is flying to {city} on the twelfth for a cousin's wedding.",
        "Where is {name} travelling for the family ceremony?",
        "{other} has a wedding to go to next month as well, in the countryside.",
        "Flights in wedding season cost twice what they do in March.",
    ),
    (
        "{name}'s landlord put the rent up by {n} euros a month from January.",
        "How much more will {name} pay for the flat?",
        "{other} is worried the apartment will get more expensive next year.",
        "Housing costs in the city went up again, the paper said.",
    ),
    (
        "{name} got promoted to head of logistics at the bakery supply firm.",
        "What new job title did {name} receive at work?",
        "{other} had a performance review at the office on Monday.",
        "Promotions at that firm usually come in the spring round.",
    ),
    (
        "{name} sprained an ankle while bouldering at the climbing gym on Thursday.",
        "How did {name} hurt a leg?",
        "{other} pulled a muscle at the gym last month and is still careful.",
        "Climbing injuries are mostly fingers and ankles, the physio said.",
    ),
    (
        "{name} started learning {language} with an app every morning before work.",
        "Which language is {name} studying?",
        "{other} wants to pick up a new language before the summer trip.",
        "Those language apps send a reminder every single day.",
    ),
    (
        "{name} sold the old estate car for {n} euros to a neighbour.",
        "How much did {name} get for the vehicle?",
        "{other} is trying to sell a bike on the classifieds site.",
        "Second-hand car prices dropped a lot this autumn.",
    ),
    (
        "{name} is allergic to hazelnuts, so no praline cake at the party.",
        "Which food must {name} avoid?",
        "{other} is vegetarian, so we need a second main course.",
        "The bakery can do cakes without nuts if you ask two days ahead.",
    ),
    (
        "{name} moved the book club to the back room of the Linden cafe.",
        "Where does {name}'s reading group meet now?",
        "{other} never finishes the novel before the meeting.",
        "Book clubs seem to be everywhere again since the winter.",
    ),
)
SMALL_TALK = (
    "{name} says hi and hopes the week is going well.",
    "I bumped into {name} at the station this morning.",
    "{name} sent a photo from the weekend, looked lovely.",
    "Remind me to call {name} back about the weekend plans.",
    "{name} laughed at that story for ages.",
)


def paraphrase_facts(checkpoints: list[int], per_checkpoint: int, seed: int) -> list[tuple[Fact, str, str]]:
    """(fact, person, topic key) per planted fact: every (person, topic) pair at most once."""
    rng = random.Random(f"paraphrase-{seed}")
    pairs = [(name, t) for name in NAMES for t in range(len(TOPICS))]
    rng.shuffle(pairs)
    out = []
    for c in checkpoints:
        low = min(MIN_AGE_TOKENS, c // 2)
        for j in range(per_checkpoint):
            name, t = pairs[len(out)]
            statement, question, _, _ = TOPICS[t]
            fill = {
                "name": name,
                "pet": rng.choice(PETS),
                "city": rng.choice(CITIES),
                "language": rng.choice(LANGUAGES),
                "craft": rng.choice(CRAFTS),
                "n": rng.randint(40, 400),
            }
            age = round(low * (c / low) ** (j / max(per_checkpoint - 1, 1)))
            fact = Fact(statement.format(**fill), question.format(name=name), c, min(max(age, 1), c - 1))
            out.append((fact, name, str(t)))
    return out


def paraphrase_stream(
    planted: list[tuple[Fact, str, str]], total: int, seed: int, count
) -> Iterator[tuple[str, Fact | None, int]]:
    """The demo filler with the facts as user turns at their positions and, spread over the whole stream,
    three small-talk turns per person and two topic turns per (fact, kind): (text, fact or None, tokens)."""
    rng = random.Random(f"paraphrase-stream-{seed}")
    due = sorted(planted, key=lambda p: p[0].checkpoint - p[0].age_tokens)
    extras: list[tuple[int, str]] = []
    for name in {name for _, name, _ in planted}:
        for template in rng.sample(SMALL_TALK, 3):
            extras.append((rng.randrange(total), template.format(name=name)))
    for _, name, t in planted:
        _, _, others, topic_turn = TOPICS[int(t)]
        for _ in range(2):
            other = rng.choice([n for n in NAMES if n != name])
            extras.append((rng.randrange(total), others.format(other=other)))
            extras.append((rng.randrange(total), topic_turn))
    extras.sort()
    streamed, i, e = 0, 0, 0
    for turn in conversation(seed=seed, min_tokens=total, count=count, facts=()):
        while e < len(extras) and extras[e][0] <= streamed:
            n = count(extras[e][1])
            streamed += n
            yield extras[e][1], None, n
            e += 1
        while i < len(due) and streamed >= due[i][0].checkpoint - due[i][0].age_tokens:
            n = count(due[i][0].statement)
            streamed += n
            yield due[i][0].statement, due[i][0], n
            i += 1
        n = count(turn.text)
        streamed += n
        yield turn.text, None, n
        if streamed >= total and i == len(due):
            return


def recall_stream(checkpoints: list[int], per_checkpoint: int, seed: int, count):
    facts = make_facts(checkpoints, per_checkpoint, seed=seed)
    for turn, fact, tokens in _stream(facts, seed=seed, total=max(checkpoints), count=count):
        planted = (
            None if fact is None else Fact(fact.statement, fact.question, fact.checkpoint, fact.age_tokens)
        )
        yield turn.text, planted, tokens


# -- measuring -----------------------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)


def run(name: str, stream, checkpoints: list[int], folder: Path, gist: str) -> list[dict]:
    """Stream one conversation into a fresh store in ``folder``, measuring at each checkpoint."""
    if (folder / name).exists():
        raise SystemExit(
            f"{folder / name} exists: pass --reuse to measure it, or remove it to build it again"
        )
    rows: list[dict] = []
    facts: dict[int, Fact] = {}  # memory id -> fact
    with om.open(folder / name, gist=gist) as store:
        streamed, batch, batch_facts = 0, [], []
        todo = sorted(checkpoints)
        started = time.perf_counter()
        next_report = PROGRESS_TOKENS

        def flush() -> None:
            ids = store.add_many(batch, scope=SCOPE)
            for mid, fact in zip(ids, batch_facts, strict=True):
                if fact is not None:
                    facts[mid] = fact
            batch.clear()
            batch_facts.clear()

        for text, fact, tokens in stream:
            batch.append({"text": text, "role": "user"})
            batch_facts.append(fact)
            streamed += tokens
            if len(batch) == BATCH or (todo and streamed >= todo[0]):
                flush()
            if streamed >= next_report:
                next_report += PROGRESS_TOKENS
                rate = streamed / (time.perf_counter() - started) * 60
                print(f"  {name}: {streamed:,} tokens, {rate:,.0f} tokens/min", file=sys.stderr, flush=True)
            while todo and streamed >= todo[0]:
                rows.append(measure(store, name, todo.pop(0), facts, time.perf_counter() - started))
                print(table_of(rows[-1:]), flush=True)
        if batch:
            flush()
        while todo:  # the stream ended at the last checkpoint's facts
            rows.append(measure(store, name, todo.pop(0), facts, time.perf_counter() - started))
    kept = {"checkpoint_tokens": max(checkpoints), "gist": gist, "ingest_s": rows[-1]["ingest_s"]}
    kept["facts"] = {str(mid): asdict(f) for mid, f in facts.items()}
    (folder / f"{name}.facts.json").write_text(json.dumps(kept, indent=1) + "\n")
    return rows


def remeasure(name: str, folder: Path) -> list[dict]:
    """Measure a store kept by ``--keep`` again, at the checkpoint it was built to, without ingesting."""
    path = folder / f"{name}.facts.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: build the store first with --keep {folder}")
    kept = json.loads(path.read_text())
    facts = {int(mid): Fact(**f) for mid, f in kept["facts"].items()}
    with om.open(folder / name) as store:
        row = measure(store, name, kept["checkpoint_tokens"], facts, kept["ingest_s"])
    print(table_of([row]), flush=True)
    return [row]


def measure(store: om.OpticalMemory, name: str, checkpoint: int, facts: dict[int, Fact], ingest_s: float):
    asked = [(mid, f) for mid, f in facts.items() if f.checkpoint <= checkpoint]
    stats = store.stats()
    row: dict = {
        "conversation": name,
        "gist": store.config.gist,
        "checkpoint_tokens": checkpoint,
        "memories": stats.memories,
        "facts": len(asked),
        "ingest_s": round(ingest_s, 1),
    }
    store.search("warm up", k=1, scope=SCOPE)  # the one-thread query session is made on first use
    for mode in MODES:
        ranks, ms = [], []
        for mid, fact in asked:
            start = time.perf_counter()
            hits = store.search(fact.question, k=max(KS), scope=SCOPE, mode=mode)
            ms.append((time.perf_counter() - start) * 1e3)
            ids = [h.id for h in hits]
            ranks.append(ids.index(mid) + 1 if mid in ids else None)
        for k in KS:
            row[f"{mode}_r@{k}"] = round(sum(1 for r in ranks if r is not None and r <= k) / len(ranks), 3)
        row[f"{mode}_p50_ms"], row[f"{mode}_p99_ms"] = pct(ms, 0.5), pct(ms, 0.99)
        row[f"{mode}_mean_ms"] = round(statistics.fmean(ms), 1)
    return row


def pooled(rows: list[dict]) -> list[dict]:
    """Both conversations' questions together, per checkpoint (recall weighted by their fact counts)."""
    out = []
    for checkpoint in sorted({r["checkpoint_tokens"] for r in rows}):
        group = [r for r in rows if r["checkpoint_tokens"] == checkpoint]
        if len(group) < 2:
            continue
        n = sum(r["facts"] for r in group)
        row: dict = {
            "conversation": "both",
            "gist": group[0]["gist"],
            "checkpoint_tokens": checkpoint,
            "facts": n,
        }
        for mode in MODES:
            for k in KS:
                row[f"{mode}_r@{k}"] = round(sum(r[f"{mode}_r@{k}"] * r["facts"] for r in group) / n, 3)
            row[f"{mode}_p50_ms"] = row[f"{mode}_p99_ms"] = "-"
        out.append(row)
    return out


def table_of(rows: list[dict]) -> str:
    headers = ["conversation", "gist", "tokens", "facts"] + [f"{m[:3]} r@{k}" for m in MODES for k in KS]
    headers += [f"{m[:3]} p50/p99 ms" for m in MODES]
    body = [
        [r["conversation"], r["gist"], r["checkpoint_tokens"], r["facts"]]
        + [f"{r[f'{m}_r@{k}']:.3f}" for m in MODES for k in KS]
        + [f"{r[f'{m}_p50_ms']}/{r[f'{m}_p99_ms']}" for m in MODES]
        for r in rows
    ]
    return table(headers, body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="100k,1M", help="checkpoints, comma separated (100k, 1M, 10M)")
    ap.add_argument("--facts", type=int, default=60, help="facts planted per checkpoint, per conversation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=("recall", "paraphrase"), default=None)
    ap.add_argument("--gist", choices=("chunks", "sentences"), default="chunks", help="StoreConfig.gist")
    ap.add_argument("--keep", metavar="DIR", help="build the stores in DIR and keep them, with their facts")
    ap.add_argument("--reuse", action="store_true", help="measure the stores kept in --keep DIR again")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "retrieval.json"))
    args = ap.parse_args()
    if args.reuse and not args.keep:
        ap.error("--reuse needs --keep DIR (the folder a --keep run built its stores in)")
    checkpoints = sorted(parse_tokens(t) for t in args.tokens.split(","))
    from optical_memory.backends.tiktoken_counter import TiktokenCounter

    count = TiktokenCounter().count
    started = time.perf_counter()
    rows: list[dict] = []
    names = [n for n in ("recall", "paraphrase") if args.only in (None, n)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            if args.reuse:
                rows += remeasure(name, folder)
            elif name == "recall":
                stream = recall_stream(checkpoints, args.facts, args.seed, count)
                rows += run(name, stream, checkpoints, folder, args.gist)
            else:
                planted = paraphrase_facts(checkpoints, args.facts, args.seed)
                stream = paraphrase_stream(planted, max(checkpoints), args.seed, count)
                rows += run(name, stream, checkpoints, folder, args.gist)
    rows += pooled(rows)
    print()
    print(table_of(rows))
    payload = {
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    write_result(args.out, "bench_retrieval.py", payload)


if __name__ == "__main__":
    main()
