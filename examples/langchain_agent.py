"""A LangChain chat loop whose old turns live in optical memory, answered by a real small model, offline.

    .venv/bin/python examples/langchain_agent.py            # ~1-2 minutes on 2 cores

It replays weeks of a seeded conversation (the demo's generator: facts planted in the first sessions, then
hundreds of turns of small talk) into an ``OpticalChatMessageHistory``. By the end the early turns are no
longer text at all: they sit on page images that have aged down the forgetting ladder. Then the loop asks
questions about those early facts: each turn, ``history.messages`` recalls the relevant old turns from their
pages (RapidOCR reads them at their current, reduced resolution) and adds the recent turns verbatim, within a
token budget, and SmolLM2-135M-Instruct answers from that.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from langchain_core.messages import BaseMessage, SystemMessage
from smollm import SmolLM2

import optical_memory as om
from optical_memory.adapters.langchain import OpticalChatMessageHistory
from optical_memory.demo import FACTS, conversation

INSTRUCTIONS = (
    "You are a helpful assistant with a long memory. Answer the user's last question in one short "
    "sentence, using the facts recalled from earlier in the conversation."
)
QUESTIONS = FACTS[0], FACTS[1], FACTS[3]  # planted in sessions 1, 3 and 12: hundreds of turns ago


def replay(history: OpticalChatMessageHistory, *, min_tokens: int) -> int:
    """Feed the seeded conversation into the history, a session at a time (each add ages the store)."""
    turns = list(
        conversation(seed=0, min_tokens=min_tokens, count=history.store.counter.count, facts=QUESTIONS)
    )
    sessions: dict[int, list] = {}
    for turn in turns:
        sessions.setdefault(turn.session, []).append(turn)
    for session in sessions.values():
        history.store.add_many(
            [{"text": t.text, "role": t.role, "timestamp": t.timestamp} for t in session],
            scope=history.session_id,
        )
        history.store.age()
    return len(turns)


def prompt(messages: list[BaseMessage]) -> list[BaseMessage]:
    """The instructions and the recalled memory as one system message (small models follow one best),
    then the recent turns verbatim."""
    memory = "\n".join(m.text for m in messages if isinstance(m, SystemMessage))
    return [
        SystemMessage(f"{INSTRUCTIONS}\n\n{memory}"),
        *(m for m in messages if not isinstance(m, SystemMessage)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", type=int, default=25_000, help="text tokens of old conversation to replay"
    )
    parser.add_argument("--budget", type=int, default=400, help="history token budget per model call")
    args = parser.parse_args()

    model = SmolLM2()
    with tempfile.TemporaryDirectory() as folder, om.open(folder) as store:
        history = OpticalChatMessageHistory(
            store, session_id="alice", budget_tokens=args.budget, recent_share=0.2, k=3
        )
        started = time.perf_counter()
        n = replay(history, min_tokens=args.tokens)
        print(f"replayed {n} turns in {time.perf_counter() - started:.1f} s")
        for row in store.stats().tiers:
            print(f"  tier {row.tier:>9}: {row.memories:4d} memories on {row.pages:3d} pages")

        correct = recalled = 0
        for fact in QUESTIONS:
            hit = store.search(fact.statement, k=1, scope="alice")[0]
            history.add_user_message(fact.question)
            started = time.perf_counter()
            messages = prompt(history.messages)
            reply = model.invoke(messages)
            history.add_message(reply)
            in_memory = fact.answer.lower() in messages[0].text.lower()
            ok = fact.answer.lower() in reply.text.lower()
            recalled += in_memory
            correct += ok
            print(f"\nQ: {fact.question}   (the fact sits on a {hit.tier} px page)")
            print(f"   recalled into the prompt: {'yes' if in_memory else 'no'}")
            print(
                f"A: {reply.text}   [{'correct' if ok else 'wrong'}, {time.perf_counter() - started:.1f} s]"
            )
        print(f"\n{recalled}/{len(QUESTIONS)} facts recalled from aged pages, {correct} answered correctly")
        print("summary:", json.dumps({"questions": len(QUESTIONS), "recalled": recalled, "correct": correct}))


if __name__ == "__main__":
    main()
