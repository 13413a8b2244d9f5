"""A LangChain chat loop whose old turns live in optical memory, answered by a real small model, offline.

    .venv/bin/python examples/langchain_agent.py

Measured with /usr/bin/time on a quiet 2-core machine (AMD EPYC, nothing running beside it): 1 min 12 s
wall (105 s user), 2.3 GiB peak RSS; the rest of the time after the replay is SmolLM2 loading and
answering (the first answer, 33 s, includes the model's warm-up). On a loaded machine it took 4 min 20 s.

It replays weeks of a seeded conversation (the demo's generator: facts planted in the first sessions, then
hundreds of turns of small talk) into an ``OpticalChatMessageHistory``. By the end the early turns are no
longer text at all: they sit on page images that have aged down the forgetting ladder. Then the loop asks
questions about those early facts: each turn, ``history.messages`` recalls the relevant old turns from their
pages (RapidOCR reads them at their current, reduced resolution) and adds the recent turns verbatim, within a
token budget, and SmolLM2-135M-Instruct answers from that. Before each answer the agent also looks the
question up with a ``recall_memory`` tool; the tool call and its result go through the history like any
other turn and come back from it paired, as a tool-calling chat model needs them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
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


def memory_tool(store: om.OpticalMemory, scope: str) -> BaseTool:
    """A ``recall_memory`` tool over the store: the paged memory closest to the query, read back from its
    page (the turns still in the text tier are in the prompt already, the question among them)."""

    @tool
    def recall_memory(query: str) -> str:
        """Look up what the user said earlier in the conversation."""
        hits = [h for h in store.search(query, k=8, scope=scope) if h.page_id is not None]
        return store.recall(hits[0].id).text if hits else "(nothing found)"

    return recall_memory


def prompt(messages: list[BaseMessage]) -> list[BaseMessage]:
    """The instructions, the recalled memory and this question's tool results as one system message, then
    the question. Small models follow one system message best, SmolLM2 has no tool calling, and given the
    earlier exchanges verbatim the 135M model repeats its last answer: a larger model gets them all
    (``history.messages`` as it is)."""
    asked = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=0)
    notes = [m.text for m in messages if isinstance(m, SystemMessage)]
    notes += [f"Looked up in memory: {m.text}" for m in messages[asked:] if isinstance(m, ToolMessage)]
    return [SystemMessage(INSTRUCTIONS + "\n\n" + "\n".join(notes)), messages[asked]]


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

        lookup = memory_tool(store, "alice")
        correct = recalled = 0
        for n, fact in enumerate(QUESTIONS):
            hit = store.search(fact.statement, k=1, scope="alice")[0]
            history.add_user_message(fact.question)
            started = time.perf_counter()
            # SmolLM2 cannot call tools: the loop makes the call a tool-calling model would make here
            call = AIMessage(
                "", tool_calls=[{"name": lookup.name, "args": {"query": fact.question}, "id": f"call-{n}"}]
            )
            history.add_messages([call, lookup.invoke(call.tool_calls[0])])
            recent = history.messages
            result = recent[recent.index(call) + 1]  # the call comes back from the history with its result
            assert isinstance(result, ToolMessage) and result.tool_call_id == f"call-{n}"
            messages = prompt(recent)
            reply = model.invoke(messages)
            history.add_message(reply)
            in_memory = fact.answer.lower() in messages[0].text.lower()
            ok = fact.answer.lower() in reply.text.lower()
            recalled += in_memory
            correct += ok
            print(f"\nQ: {fact.question}   (the fact sits on a {hit.tier} px page)")
            print(f"   {lookup.name}({fact.question!r}) -> {result.text!r}")
            print(f"   recalled into the prompt: {'yes' if in_memory else 'no'}")
            print(
                f"A: {reply.text}   [{'correct' if ok else 'wrong'}, {time.perf_counter() - started:.1f} s]"
            )
        print(f"\n{recalled}/{len(QUESTIONS)} facts recalled from aged pages, {correct} answered correctly")
        print("summary:", json.dumps({"questions": len(QUESTIONS), "recalled": recalled, "correct": correct}))


if __name__ == "__main__":
    main()
