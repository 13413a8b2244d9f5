"""The MCP server as its clients see it: the SDK's own ``Client`` against ``optical-memory mcp`` started as a
subprocess, over stdio and over streamable HTTP. One server (and store) per transport is shared by the tests
of this module, each test in scopes of its own; the stores use the CLI's default configuration."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ImageContent, TextContent
from PIL import Image

import optical_memory as om
from optical_memory.adapters.mcp import make_server
from optical_memory.cli import main
from optical_memory.config import StoreConfig, vision_tokens

CLI = str(Path(sys.executable).with_name("optical-memory"))
START_TIMEOUT_S = 120  # interpreter, torch and the store; the embedder loads on the first call
CALL_TIMEOUT_S = 90  # the first call loads MiniLM, an OCR call loads RapidOCR
TOOLS = {"remember", "search_memory", "recall_memory", "build_context", "forget"}
# OMP_WAIT_POLICY: faiss's and torch's OpenMP threads spin-wait against each other on small machines (2 cores:
# a store.search took 65-165 ms by default, 17 ms with PASSIVE). The rest: offline and quiet.
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}
FACT = "The boiler in the cellar was serviced on the 3rd of May by Nordheat."
FILLER = "Turn {i}: we compared notes on item {i} of the grocery list and the weather this week."
DEFAULTS = StoreConfig()  # what the CLI opens a store with
TEXT_TURNS = DEFAULTS.aging.text_turns  # the newest turns of a scope that stay verbatim (16)
PAGE = DEFAULTS.render.page_side  # the top tier's page side (1024 px)

on_module_loop = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Server:
    """A connected client, which transport it uses, and what the server wrote to stderr."""

    client: Client
    transport: str
    log: Path
    transport_errors: list[Exception] = field(default_factory=list)  # e.g. junk lines on stdout

    async def call(self, tool: str, **arguments: Any) -> CallToolResult:
        return await self.client.call_tool(tool, arguments)

    async def ok(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """Call a tool that must succeed; its structured content."""
        result = await self.call(tool, **arguments)
        assert not result.is_error, (tool, arguments, _text(result), self.log.read_text()[-2000:])
        assert result.structured_content is not None
        return result.structured_content


def _text(result: CallToolResult) -> str:
    return "\n".join(p.text for p in result.content if isinstance(p, TextContent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the HTTP server accepts connections; fails at once if it exits, with its stderr."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"the HTTP server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"the HTTP server did not open port {port}:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def _held(client: Client) -> AsyncIterator[Client]:
    """``client``, entered in a task of its own that keeps it open until the block ends.

    pytest-asyncio runs a fixture's setup and teardown in different tasks, and the SDK's transports (anyio
    task groups) must be entered and left in the same one.
    """
    stop = asyncio.Event()
    entered: asyncio.Future[Client] = asyncio.get_running_loop().create_future()

    async def hold() -> None:
        try:
            async with client:
                entered.set_result(client)
                await stop.wait()
        except BaseException as e:
            if not entered.done():
                entered.set_exception(e)
            raise

    task = asyncio.create_task(hold())
    try:
        yield await asyncio.wait_for(asyncio.shield(entered), START_TIMEOUT_S)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["stdio", "http"])
async def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    """``optical-memory --store <tmp> mcp`` over the transport, with a connected SDK client."""
    transport = request.param
    folder = tmp_path_factory.mktemp(f"mcp-{transport}")
    log = folder / "server-stderr.log"
    errors: list[Exception] = []

    async def on_message(message: object) -> None:
        if isinstance(message, Exception):
            errors.append(message)

    argv = ["--store", str(folder / "store"), "mcp"]
    with log.open("w") as errlog:
        process = None
        if transport == "stdio":
            target: Any = stdio_client(StdioServerParameters(command=CLI, args=argv, env=ENV), errlog=errlog)
        else:
            port = _free_port()
            process = subprocess.Popen(
                [CLI, *argv, "--transport", "http", "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=errlog,
                stderr=errlog,
                env={**os.environ, **ENV},
            )
            await _wait_for_port(port, process, log)
            target = f"http://127.0.0.1:{port}/mcp"
        try:
            client = Client(target, message_handler=on_message, read_timeout_seconds=CALL_TIMEOUT_S)
            try:
                held = _held(client)
                await held.__aenter__()
            except Exception as e:  # the server did not come up: say why, with its stderr
                pytest.fail(f"no MCP session over {transport}: {e!r}\n{log.read_text()[-3000:]}")
            try:
                yield Server(client=client, transport=transport, log=log, transport_errors=errors)
            finally:
                await held.__aexit__(None, None, None)
        finally:
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                # SIGTERM: a graceful shutdown that closes the store (143), not death by the signal (-15)
                assert process.returncode == 143, (process.returncode, log.read_text()[-3000:])


async def _fill(server: Server, scope: str, n: int) -> list[dict[str, Any]]:
    """Remember FACT then n - 1 filler turns in ``scope``, one call at a time; the remember results."""
    out = [await server.ok("remember", text=FACT, scope=scope, role="user")]
    for i in range(1, n):
        role = "assistant" if i % 2 else "user"
        out.append(await server.ok("remember", text=FILLER.format(i=i), scope=scope, role=role))
    return out


@on_module_loop
async def test_lists_the_five_tools_with_schemas_and_the_page_resources(server: Server) -> None:
    tools = {t.name: t for t in (await server.client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 60
        assert tool.input_schema["type"] == "object" and tool.input_schema["properties"]
    remember = tools["remember"].input_schema
    assert remember["required"] == ["text", "scope"]  # no --scope: the schema says scope is required
    assert remember["properties"]["kind"]["enum"] == ["turn", "document"]
    assert tools["search_memory"].input_schema["properties"]["k"]["maximum"] == 100
    assert tools["forget"].annotations is not None and tools["forget"].annotations.destructive_hint
    assert (
        tools["search_memory"].annotations is not None and tools["search_memory"].annotations.read_only_hint
    )
    for name in ("remember", "search_memory", "recall_memory", "build_context", "forget"):
        assert tools[name].output_schema is not None, name
    [template] = (await server.client.list_resource_templates()).resource_templates
    assert template.uri_template == "optical-memory://memories/{memory_id}/pages/{page_id}"
    assert template.mime_type == "image/png"
    uris = {str(r.uri) for r in (await server.client.list_resources()).resources}
    assert uris == {"optical-memory://scopes", "optical-memory://stats"}


@on_module_loop
async def test_remember_then_search_finds_it_and_recall_returns_its_text(server: Server) -> None:
    stored = await server.ok(
        "remember", text=FACT, scope="round-trip", role="user", metadata={"source": "chat", "n": 1}
    )
    assert stored["scope"] == "round-trip" and stored["tier"] == "text" and stored["kind"] == "turn"
    await server.ok("remember", text="We should paint the fence green.", scope="round-trip", role="assistant")

    found = await server.ok("search_memory", query="When was the boiler serviced?", scope="round-trip", k=2)
    best = found["hits"][0]
    assert best["id"] == stored["id"] and best["scope"] == "round-trip" and best["tier"] == "text"
    assert best["snippet"] == FACT and best["metadata"] == {"source": "chat", "n": 1}
    assert best["page_uri"] is None and best["role"] == "user"

    recalled = await server.ok("recall_memory", id=stored["id"])
    assert recalled == {
        "id": stored["id"],
        "text": FACT,
        "tier": "text",
        "source": "retained",
        "role": "user",
    }

    context = await server.call("build_context", query="boiler service date", scope="round-trip")
    assert not context.is_error and FACT in _text(context)
    assert context.structured_content is not None and context.structured_content["mode"] == "text"


@on_module_loop
async def test_aging_packs_old_turns_into_png_pages_served_as_resources_and_image_contexts(
    server: Server,
) -> None:
    reports = await _fill(server, "aging", TEXT_TURNS + 4)
    assert sum((r["aged"] or {}).get("packed", 0) for r in reports) == 4  # each turn past the text tier
    assert reports[0]["tier"] == "text" and reports[-1]["tier"] == "text"

    [hit] = (await server.ok("search_memory", query="When was the boiler serviced?", scope="aging", k=1))[
        "hits"
    ]
    assert hit["id"] == reports[0]["id"] and hit["tier"] == str(PAGE) and hit["compression"] > 0
    assert hit["page_uri"] == f"optical-memory://memories/{hit['id']}/pages/{hit['page_id']}"

    [contents] = (await server.client.read_resource(hit["page_uri"])).contents
    assert contents.mime_type == "image/png"
    page = Image.open(io.BytesIO(base64.b64decode(contents.blob)))  # type: ignore[union-attr]
    assert page.format == "PNG" and page.size == (PAGE, PAGE)

    context = await server.call(
        "build_context", query="boiler service", scope="aging", mode="image", budget_tokens=800
    )
    assert not context.is_error, _text(context)
    images = [p for p in context.content if isinstance(p, ImageContent)]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    width, height = Image.open(io.BytesIO(base64.b64decode(images[0].data))).size
    assert width == PAGE and 0 < height < PAGE  # the band of the page that holds the hit
    assert "Recent conversation:" in _text(context)
    summary = context.structured_content
    assert summary is not None and summary["mode"] == "image" and summary["used_tokens"] <= 800
    retrieved = [i for i in summary["items"] if i["origin"] == "retrieved"]  # other hits on its page too
    assert retrieved[0]["id"] == hit["id"]
    paged = [i for i in retrieved if i["tier"] != "text"]  # (older turns of the text tier come as text)
    assert sum(i["tokens"] for i in paged) == vision_tokens(PAGE)  # one image: 256 for 1024 px


@pytest.mark.slow
@on_module_loop
async def test_a_document_is_kept_as_pixels_only_and_recalled_by_ocr(server: Server) -> None:
    stored = await server.ok("remember", text=FACT, scope="ocr", kind="document", metadata={"file": "log.md"})
    assert stored["tier"] == str(PAGE)  # rendered at once, and only the page image keeps its text
    [hit] = (await server.ok("search_memory", query="boiler service", scope="ocr", k=1))["hits"]
    assert hit["id"] == stored["id"] and hit["snippet"] is None  # no snippet without OCR ...
    [hit] = (await server.ok("search_memory", query="boiler service", scope="ocr", k=1, read=True))["hits"]
    assert "serviced on the 3rd of May" in hit["snippet"]  # ... unless asked
    recalled = await server.ok("recall_memory", id=stored["id"])
    assert recalled["source"] == "rapidocr" and recalled["tier"] == str(PAGE)
    assert "serviced on the 3rd of May" in recalled["text"]


@on_module_loop
async def test_forget_deletes_a_memory_then_a_whole_scope_only_when_confirmed(server: Server) -> None:
    keep = await server.ok("remember", text="The spare key is under the blue flowerpot.", scope="forget")
    drop = await server.ok("remember", text="The wifi password is hunter2-granite.", scope="forget")
    assert await server.ok("forget", id=drop["id"]) == {"deleted": 1, "id": drop["id"], "scope": None}
    hits = (await server.ok("search_memory", query="wifi password", scope="forget", k=5))["hits"]
    assert [h["id"] for h in hits] == [keep["id"]]
    gone = await server.call("recall_memory", id=drop["id"])
    assert gone.is_error and f"no memory with id {drop['id']}" in _text(gone)

    refused = await server.call("forget", scope="forget")
    assert refused.is_error and "confirm=true" in _text(refused)
    assert (await server.ok("search_memory", query="spare key", scope="forget"))["hits"]
    assert await server.ok("forget", scope="forget", confirm=True) == {
        "deleted": 1,
        "id": None,
        "scope": "forget",
    }
    assert (await server.ok("search_memory", query="spare key", scope="forget"))["hits"] == []
    assert (await server.ok("build_context", query="spare key", scope="forget"))["used_tokens"] == 0


@on_module_loop
async def test_scopes_never_leak_into_each_others_searches_or_contexts(server: Server) -> None:
    alice = await server.ok("remember", text="Alice's locker combination is 31-07-22.", scope="iso-alice")
    bob = await server.ok("remember", text="Bob's locker combination is 44-18-09.", scope="iso-bob")
    hits = (await server.ok("search_memory", query="locker combination", scope="iso-alice", k=100))["hits"]
    assert [h["id"] for h in hits] == [alice["id"]]
    context = await server.call("build_context", query="Bob's locker combination", scope="iso-alice")
    assert "31-07-22" in _text(context) and "44-18-09" not in _text(context)
    everywhere = (await server.ok("search_memory", query="locker combination", k=100))["hits"]
    assert {alice["id"], bob["id"]} <= {h["id"] for h in everywhere}  # no scope: all of them


@on_module_loop
@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("recall_memory", {"id": 987_654}, "no memory with id 987654"),
        ("recall_memory", {"id": "12"}, "valid integer"),
        ("recall_memory", {"id": 2**70}, "less than or equal to"),
        ("search_memory", {"query": "boiler", "k": "5"}, "valid integer"),
        ("search_memory", {"query": "boiler", "k": 10**9}, "less than or equal to 100"),
        ("search_memory", {"query": "boiler", "k": True}, "valid integer"),
        ("search_memory", {"query": 42}, "valid string"),
        ("remember", {"text": "", "scope": "bad"}, "at least 1 character"),
        ("remember", {"text": " \n\t ", "scope": "bad"}, "empty or only whitespace"),
        ("remember", {"text": "nul \x00 byte", "scope": "bad"}, "control character"),
        ("remember", {"text": "x" * 1_000_001, "scope": "bad"}, "at most 1000000 characters"),
        ("remember", {"text": "hello"}, "scope\n  Field required"),
        ("remember", {"text": "hello", "scope": "bad", "scop": "other"}, "unknown argument(s) ['scop']"),
        ("remember", {"text": "hello", "scope": "bad", "kind": "essay"}, "'turn' or 'document'"),
        ("remember", {"text": "hello", "scope": "bad", "metadata": [1, 2]}, "valid dictionary"),
        (
            "build_context",
            {"query": "boiler", "scope": "bad", "budget_tokens": 0},
            "greater than or equal to 1",
        ),
        ("forget", {}, "exactly one of id"),
        ("forget", {"id": 1, "scope": "bad"}, "exactly one of id"),
        ("no_such_tool", {}, "Unknown tool"),
    ],
)
async def test_bad_input_is_a_clear_tool_error_and_the_server_carries_on(
    server: Server, tool: str, arguments: dict[str, Any], message: str
) -> None:
    result = await server.call(tool, **arguments)
    assert result.is_error, _text(result)
    assert message in _text(result)
    [scopes] = (await server.client.read_resource("optical-memory://scopes")).contents
    assert "bad" not in json.loads(scopes.text)  # type: ignore[union-attr]  (nothing half-stored)
    assert await server.ok("search_memory", query="still there?", scope="never-used") == {"hits": []}


@on_module_loop
async def test_unknown_pages_are_clear_resource_errors(server: Server) -> None:
    turn = await server.ok("remember", text="A turn still in the text tier.", scope="resources")
    for uri, message in [
        ("optical-memory://memories/987654/pages/1", "no memory with id 987654"),
        (f"optical-memory://memories/{turn['id']}/pages/987654", "does not hold memory"),
        ("optical-memory://memories/abc/pages/1", "memory_id must be a positive integer"),
    ]:
        with pytest.raises(MCPError, match=message):
            await server.client.read_resource(uri)
    scopes = (await server.client.read_resource("optical-memory://scopes")).contents[0]
    assert "resources" in scopes.text  # type: ignore[union-attr]


@on_module_loop
async def test_concurrent_calls_all_land_once_in_their_own_scope(server: Server) -> None:
    texts = [f"Concurrent note {i}: parcel {i} goes to locker {100 + i}." for i in range(20)]
    scopes = ["conc-a" if i % 2 else "conc-b" for i in range(20)]
    results = await asyncio.gather(
        *(server.ok("remember", text=t, scope=s, role="user") for t, s in zip(texts, scopes, strict=True)),
        *(server.call("search_memory", query="parcel locker", k=3) for _ in range(5)),
    )
    stored = results[:20]
    ids = [r["id"] for r in stored]
    assert len(set(ids)) == 20 and [r["scope"] for r in stored] == scopes
    for scope in ("conc-a", "conc-b"):
        hits = (await server.ok("search_memory", query="parcel locker", scope=scope, k=50))["hits"]
        assert sorted(h["id"] for h in hits) == sorted(
            i for i, s in zip(ids, scopes, strict=True) if s == scope
        )
    recalled = await asyncio.gather(*(server.ok("recall_memory", id=i) for i in ids))
    assert [r["text"] for r in recalled] == texts


@on_module_loop
async def test_stdout_carries_only_protocol_messages(server: Server) -> None:
    """Runs after the others on this server: nothing the store or its backends did broke the wire."""
    await server.ok("search_memory", query="boiler", k=3)
    assert server.transport_errors == []


def test_cli_without_the_mcp_extra_names_the_pip_command(tmp_path, capsys, monkeypatch) -> None:
    for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")]:
        monkeypatch.setitem(sys.modules, name, None)  # what importing the SDK does without the extra
    monkeypatch.delitem(sys.modules, "optical_memory.adapters.mcp", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--store", str(tmp_path / "store"), "mcp"])
    assert exit_info.value.code == 2
    assert "pip install 'optical-memory[mcp]'" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # refused before opening anything


async def test_a_default_scope_is_the_published_default_and_confines_searches(tmp_path, embedder) -> None:
    """``make_server(default_scope=...)`` in-process (the SDK's in-memory client): the schema says it."""
    with om.open(tmp_path / "store", config=StoreConfig.tiny(), embedder=embedder) as store:
        other = store.add("Bob's locker combination is 44-18-09.", scope="bob")
        async with Client(make_server(store, default_scope="alice")) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            for name in ("remember", "build_context", "search_memory"):
                schema = tools[name].input_schema
                assert "scope" not in schema.get("required", []), name
                assert schema["properties"]["scope"]["default"] == "alice", name
            stored = await client.call_tool("remember", {"text": "Alice's locker combination is 31-07-22."})
            assert stored.structured_content is not None and stored.structured_content["scope"] == "alice"
            found = await client.call_tool("search_memory", {"query": "locker combination", "k": 10})
            assert found.structured_content is not None
            assert [h["id"] for h in found.structured_content["hits"]] == [stored.structured_content["id"]]
            context = await client.call_tool("build_context", {"query": "locker combination"})
            assert "31-07-22" in _text(context) and "44-18-09" not in _text(context)
        assert store.recall(other).text.endswith("44-18-09.")


async def test_a_one_scope_server_hides_every_other_scope(tmp_path, embedder) -> None:
    """``make_server(only_scope=...)`` (``--only-scope``): other scopes, their ids and pages look unknown."""
    with om.open(tmp_path / "store", config=StoreConfig.tiny(), embedder=embedder) as store:
        bob = store.add_many([f"Bob's note {i}: locker 44-18-09." for i in range(6)], scope="bob")
        store.age()
        [bob_page] = {h.page_id for h in store.search("locker", scope="bob", k=1)}
        async with Client(make_server(store, only_scope="alice")) as client:
            stored = await client.call_tool("remember", {"text": "Alice's locker combination is 31-07-22."})
            assert stored.structured_content is not None and stored.structured_content["scope"] == "alice"
            mine = stored.structured_content["id"]
            assert not (await client.call_tool("recall_memory", {"id": mine})).is_error
            for name, args in [
                ("recall_memory", {"id": bob[0]}),
                ("forget", {"id": bob[0]}),
                ("search_memory", {"query": "locker", "scope": "bob"}),
                ("build_context", {"query": "locker", "scope": "bob"}),
                ("remember", {"text": "sneaking in", "scope": "bob"}),
                ("forget", {"scope": "bob", "confirm": True}),
            ]:
                result = await client.call_tool(name, args)
                assert result.is_error, (name, args)
                message = _text(result)
                assert "44-18-09" not in message and ("'alice'" in message or str(bob[0]) in message), message
            unknown = await client.call_tool("recall_memory", {"id": 10_000})
            theirs = await client.call_tool("recall_memory", {"id": bob[0]})
            # another scope's id reads exactly like an unknown one
            assert _text(unknown).replace("id 10000", "id N") == _text(theirs).replace(f"id {bob[0]}", "id N")
            with pytest.raises(MCPError):
                await client.read_resource(f"optical-memory://memories/{bob[0]}/pages/{bob_page}")
            listed = await client.read_resource("optical-memory://scopes")
            assert json.loads(listed.contents[0].text) == ["alice"]
        assert [r.id for r in store.memories(scope="bob")] == sorted(bob, reverse=True)  # nothing lost
        with pytest.raises(om.InvalidInput, match="not the only scope"):
            make_server(store, only_scope="alice", default_scope="bob")
