"""A LangGraph graph with optical long-term memory as its store, answered by a real small model, offline.

    .venv/bin/python examples/langgraph_agent.py            # about a minute on 2 cores

The graph is LangGraph's usual memory pattern, with the search as a tool: ``recall`` calls the
``search_memory`` tool with the question, LangGraph's ``ToolNode`` runs it against the store, ``respond``
answers with the memories it returned in the system prompt, ``remember`` saves what the user said. Its
store is an ``OpticalMemoryStore``: every item is rendered to a page, and with a ttl (here 30 days) the page
walks down the forgetting ladder over its lifetime. The example stores a month of notes, moves the clock on
two weeks so they fade to 512 px, and then asks about them in a new thread: the tool reads each memory
back from its faded page (``store.recall``), and SmolLM2-135M-Instruct answers from what it read.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from dataclasses import dataclass

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, ToolRuntime
from langgraph.runtime import Runtime
from smollm import SmolLM2

import optical_memory as om
from optical_memory.adapters.langgraph import OpticalMemoryStore
from optical_memory.demo import FACTS, TOPICS

DAY = 86_400.0
NOTES = FACTS[0], FACTS[1], FACTS[3]  # the wifi password, Ingrid's allergy, the anniversary dinner
INSTRUCTIONS = (
    "You are a helpful assistant with a long memory. Answer the user's question in one short sentence, "
    "using these notes the user gave you earlier:"
)


@dataclass
class User:
    user_id: str


class State(MessagesState):
    memories: list[str]


@tool
def search_memory(query: str, runtime: ToolRuntime[User]) -> str:
    """Look up the user's notes: the closest ones, each read back from its page as it is now."""
    store = runtime.store
    assert isinstance(store, OpticalMemoryStore)
    namespace = ("memories", runtime.context.user_id)
    found = store.search(namespace, query=query, limit=2)
    return json.dumps([store.recall(namespace, item.key).text for item in found], ensure_ascii=False)


def recall(state: State) -> dict:
    """Call the memory tool with the question (SmolLM2 cannot call tools: a tool-calling model would)."""
    question = state["messages"][-1].text
    call = {"name": search_memory.name, "args": {"query": question}, "id": f"call-{uuid.uuid4().hex[:8]}"}
    return {"messages": [AIMessage("", tool_calls=[call])]}


def respond(state: State) -> dict:
    found = next(m for m in reversed(state["messages"]) if isinstance(m, ToolMessage))
    memories = json.loads(found.text)
    notes = [m.removeprefix("text:").strip() for m in memories]  # the page shows "field: value"
    system = SystemMessage("\n".join([INSTRUCTIONS, *(f"- {note}" for note in notes)]))
    said = [
        m
        for m in state["messages"]
        if isinstance(m, HumanMessage) or (isinstance(m, AIMessage) and not m.tool_calls)
    ]
    return {"messages": [SmolLM2().invoke([system, *said])], "memories": memories}


def remember(state: State, runtime: Runtime[User]) -> dict:
    assert runtime.store is not None
    said = next(m for m in reversed(state["messages"]) if isinstance(m, HumanMessage)).text
    runtime.store.put(("memories", runtime.context.user_id), str(uuid.uuid4()), {"text": said})
    return {}


def build(store: OpticalMemoryStore):
    graph = StateGraph(State, context_schema=User)
    graph.add_node(recall)
    graph.add_node("tools", ToolNode([search_memory]))
    graph.add_node(respond)
    graph.add_node(remember)
    graph.add_edge(START, "recall")
    graph.add_edge("recall", "tools")
    graph.add_edge("tools", "respond")
    graph.add_edge("respond", "remember")
    return graph.compile(store=store, checkpointer=InMemorySaver())


def a_month_of_notes() -> list[str]:
    """The planted notes among small talk drawn from the demo's topics (seeded)."""
    notes = [fact.statement for fact in NOTES]
    for topic, bank in sorted(TOPICS.items()):
        notes += [f"A note about {topic}: remember {thing}." for thing in bank["thing"][:6]]
    return notes


def main() -> None:
    with tempfile.TemporaryDirectory() as folder, om.open(folder) as optical:
        store = OpticalMemoryStore(optical, index={"fields": ["text"]}, ttl={"default_ttl": 30 * DAY / 60})
        started = time.perf_counter()
        notes = a_month_of_notes()
        for note in notes:
            store.put(("memories", "alice"), str(uuid.uuid4()), {"text": note})
        report = optical.age(now=time.time() + 14 * DAY)  # two weeks later: half of each note's lifetime
        print(f"stored {len(notes)} notes in {time.perf_counter() - started:.1f} s; two weeks on:")
        print(f"  {report['downsampled']} page downsamples, tiers now:", _tiers(optical))

        app = build(store)
        recalled = correct = 0
        for fact in NOTES:
            started = time.perf_counter()
            thread = {"configurable": {"thread_id": str(uuid.uuid4())}}  # a new conversation each time
            out = app.invoke({"messages": [HumanMessage(fact.question)]}, thread, context=User("alice"))
            reply = out["messages"][-1]
            assert isinstance(reply, AIMessage)
            in_memory = any(fact.answer.lower() in m.lower() for m in out["memories"])
            ok = fact.answer.lower() in reply.text.lower()
            recalled += in_memory
            correct += ok
            print(f"\nQ: {fact.question}")
            print(f"   read back from the faded pages: {out['memories']}")
            took = time.perf_counter() - started
            print(f"A: {reply.text}   [{'correct' if ok else 'wrong'}, {took:.1f} s]")
        print(f"\n{recalled}/{len(NOTES)} notes recalled from 512 px pages, {correct} answered correctly")
        print("summary:", json.dumps({"questions": len(NOTES), "recalled": recalled, "correct": correct}))


def _tiers(optical: om.OpticalMemory) -> dict[str, int]:
    tiers: dict[str, int] = {}
    for memory in optical.memories(scope="memories/alice"):
        tiers[memory.tier] = tiers.get(memory.tier, 0) + 1
    return tiers


if __name__ == "__main__":
    main()
