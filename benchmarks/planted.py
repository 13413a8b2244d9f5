"""Shared by the benchmarks that plant facts: the recall experiment's conversation streamed into a store."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import optical_memory as om
from optical_memory.recall_experiment import PlantedFact, _stream

BATCH = 64


def fill(
    store: om.OpticalMemory,
    facts: Sequence[PlantedFact],
    *,
    scope: str,
    seed: int,
    total: int,
    count,
    age_every: int,
    roles: bool = True,
) -> dict[int, PlantedFact]:
    """Stream the filler conversation with ``facts`` planted into ``store``, ``BATCH`` turns an
    ``add_many``, ``age()`` every ``age_every`` tokens and at the end; each turn with its role, or every
    turn as the user's (``roles=False``). Returns the memory id of each planted turn, with its fact."""
    planted: dict[int, PlantedFact] = {}
    batch: list[dict] = []
    batch_facts: list[PlantedFact | None] = []

    def flush() -> None:
        for mid, fact in zip(store.add_many(batch, scope=scope), batch_facts, strict=True):
            if fact is not None:
                planted[mid] = fact
        batch.clear()
        batch_facts.clear()

    streamed, next_age = 0, age_every
    for turn, fact, tokens in _stream(facts, seed=seed, total=total, count=count):
        batch.append({"text": turn.text, "role": turn.role if roles else "user"})
        batch_facts.append(fact)
        streamed += tokens
        if len(batch) == BATCH or streamed >= next_age:
            flush()
        if streamed >= next_age:
            store.age()
            next_age += age_every
            print(f"  {streamed:,} tokens", file=sys.stderr, flush=True)
    if batch:
        flush()
    store.age()
    return planted
