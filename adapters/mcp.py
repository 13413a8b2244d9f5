"""MCP adapter: optical memory as a Model Context Protocol server (official ``mcp`` SDK 2.x), public API only.

    optical-memory --store agent-memory mcp                              # stdio (Claude Desktop, IDEs)
    optical-memory --store agent-memory mcp --transport http --port 8765  # streamable HTTP at /mcp

    from optical_memory.adapters.mcp import make_server
    server = make_server(store, default_scope="alice")  # an mcp.server.mcpserver.MCPServer
    server.run("stdio")

Tools: ``remember`` (store a turn or document, then age the store), ``search_memory`` (hits by meaning),
``recall_memory`` (a memory as text, read from its page images when only pixels are left), ``build_context``
(recent turns + recalled memories within a token budget, as text, or as text and PNG images of the bands
of the pages that hold the memories) and
``forget`` (one memory, or a whole scope with ``confirm=true``). Resources: each page image as
``optical-memory://memories/{memory_id}/pages/{page_id}`` (image/png; search hits carry the URI), and JSON
listings ``optical-memory://scopes`` and ``optical-memory://stats``.

Contracts:
* Arguments are validated strictly against the published input schema (a string is never coerced to an int,
  unknown argument names are refused), with bounds on sizes and counts; a bad call returns a tool error
  (``isError``) naming the offending value, and the server carries on.
* Store errors (``OpticalMemoryError``) come back as tool errors carrying the store's message; anything else
  is logged with its traceback on the server and reported to the client as a generic tool error.
* Store calls block (embedding, rendering, OCR): each runs on a worker thread, so concurrent calls never
  stall the event loop; the store serialises them behind its own lock and each write is one transaction.
* ``search_memory`` and ``build_context`` only ever return memories of the scope they are given. Ids are
  global: on a server started with ``only_scope`` (``--only-scope``), every tool, id and page image is
  confined to that one scope, and another scope's ids look unknown; without it, ``recall_memory`` and
  ``forget`` act on any id. Give each tenant its own ``--only-scope`` server when tenants must not reach
  each other.
* Nothing is written to stdout except protocol messages (the store only logs; the SDK points fd 1 at
  stderr while it serves stdio).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal, TypeVar

import optical_memory

from ..errors import InvalidInput, MemoryNotFound, MissingDependency, OpticalMemoryError, ScopeNotFound

try:
    import anyio.to_thread
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
    from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent, ToolAnnotations
    from pydantic import BaseModel, Field
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the MCP server needs the mcp SDK 2.x: pip install 'optical-memory[mcp]' ({e})"
    ) from e

__all__ = ["PAGE_URI", "make_server", "serve"]

log = logging.getLogger(__name__)

PAGE_URI = "optical-memory://memories/{memory_id}/pages/{page_id}"
MAX_TEXT_CHARS = 1_000_000  # one remember call; the HTTP transport also caps a request body at 4 MiB
MAX_QUERY_CHARS = 10_000
MAX_K = 100
MAX_BUDGET_TOKENS = 1_000_000
MAX_ID = 2**63 - 1  # SQL ids are signed 64-bit; a larger int would overflow the driver, not miss
SNIPPET_CHARS = 300

T = TypeVar("T")

# -- argument types (strict: JSON types only, no coercion; bounds published in the input schema) -------------

ScopeName = Annotated[
    str,
    Field(
        strict=True,
        min_length=1,
        max_length=255,
        description="The memory scope: one per user, agent or conversation (e.g. 'alice'). Memories never "
        "cross scopes in search results or contexts.",
    ),
]
MemoryId = Annotated[
    int,
    Field(strict=True, ge=1, le=MAX_ID, description="A memory id, as remember or search_memory returned it."),
]
Query = Annotated[
    str,
    Field(
        strict=True,
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="What to look for, in natural language (matched by meaning, not keywords).",
    ),
]


# -- results (structured output: each becomes the tool's output schema) --------------------------------------


class Remembered(BaseModel):
    """A memory just stored."""

    id: int = Field(description="The new memory's id (for recall_memory and forget).")
    scope: str
    kind: Literal["turn", "document"]
    tier: str = Field(
        description="Where it is now: 'text' (a recent turn, kept verbatim), or the side in pixels of the "
        "page image holding it ('1024', '640', ...)."
    )
    aged: dict[str, int] | None = Field(
        description="What aging the store after this add did (turns packed into pages, pages written, "
        "downsampled, forgotten); null when aging is off or failed (the memory is stored either way)."
    )


class MemoryHit(BaseModel):
    """One search result."""

    id: int
    score: float = Field(description="Cosine similarity of the best-matching chunk, higher is closer.")
    scope: str
    kind: Literal["turn", "document"]
    role: str | None
    tier: str = Field(description="'text', a page side in pixels ('1024', '640', ...) or 'forgotten'.")
    page_id: int | None = Field(description="The page holding the matching chunk (null in the text tier).")
    page_uri: str | None = Field(description="Resource URI of that page's PNG image (null in the text tier).")
    compression: float | None = Field(
        description="Text tokens on the page per vision token of its image at its current tier."
    )
    metadata: dict[str, Any]
    snippet: str | None = Field(
        description=f"The memory's text (at most {SNIPPET_CHARS} characters) when it is at hand without "
        "OCR, or when read=true; null otherwise: call recall_memory to read it from its page image."
    )


class SearchResult(BaseModel):
    hits: list[MemoryHit] = Field(description="Best first, one per memory.")


class Recalled(BaseModel):
    """A memory read back as text."""

    id: int
    text: str = Field(description="Empty when the memory was forgotten (its page image is gone).")
    tier: str
    source: str = Field(
        description="'retained' (verbatim text), the reader that read the page image (e.g. 'rapidocr'), "
        "or 'forgotten'."
    )
    role: str | None


class ContextEntry(BaseModel):
    id: int
    origin: Literal["recent", "retrieved"]
    tier: str
    tokens: int = Field(description="What it costs in this context (vision tokens for a page image).")
    text_tokens: int = Field(description="What the same content costs as text.")
    score: float | None


class ContextSummary(BaseModel):
    """The token account of a built context (its parts are the tool result's content)."""

    mode: Literal["text", "image"]
    budget_tokens: int
    used_tokens: int
    saved_tokens: int = Field(description="Text tokens saved by sending page images instead of their text.")
    items: list[ContextEntry]


class Forgotten(BaseModel):
    deleted: int = Field(description="How many memories were deleted.")
    id: int | None
    scope: str | None


# -- the tools -----------------------------------------------------------------------------------------------


async def _blocking(fn: Callable[[], T]) -> T:
    """Run a blocking store call on a worker thread; a store error becomes a tool error with its message.

    A cancelled call still waits for its thread, so a write is never half-reported: it either committed
    (and the caller may look it up) or raised.
    """
    try:
        return await anyio.to_thread.run_sync(fn)
    except OpticalMemoryError as e:
        raise ToolError(str(e)) from e


def _check_arguments(ctx: Context, fn: Callable[..., Any]) -> None:
    """Refuse argument names the tool does not take (the SDK ignores them, so a misspelt ``scope`` would
    otherwise land a memory in the default scope)."""
    params = ctx.request_context.params or {}
    given = params.get("arguments") or {}
    known = set(inspect.signature(fn).parameters) - {"ctx"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ToolError(f"unknown argument(s) {unknown}; {fn.__name__} takes {sorted(known)}")


class _MemoryTools:
    """The tools and resources over one store; ``make_server`` registers them."""

    def __init__(
        self, store: Any, *, default_scope: str | None, only_scope: str | None, age_on_remember: bool
    ) -> None:
        self.store = store
        self.default_scope = only_scope or default_scope
        self.only_scope = only_scope
        self.age_on_remember = age_on_remember

    async def remember(
        self,
        text: Annotated[
            str,
            Field(
                strict=True,
                min_length=1,
                max_length=MAX_TEXT_CHARS,
                description="The text to keep: one conversation turn, or a whole document.",
            ),
        ],
        scope: ScopeName | None = None,
        role: Annotated[
            str | None,
            Field(
                strict=True,
                min_length=1,
                max_length=64,
                description="Who said it, for turns: 'user', 'assistant', 'system', 'tool' or a name.",
            ),
        ] = None,
        kind: Annotated[
            Literal["turn", "document"],
            Field(
                description="'turn' (default): kept verbatim while recent, then packed into page images "
                "that fade with age. 'document': rendered to page images at once."
            ),
        ] = "turn",
        metadata: Annotated[
            dict[str, Any] | None,
            Field(description="Optional JSON object stored with the memory and returned with its hits."),
        ] = None,
        *,
        ctx: Context,
    ) -> Remembered:
        """Store a conversation turn or a document in long-term memory and return its id.

        Call it for each turn worth keeping. Old turns are packed into page images that are downsampled as
        they age (optical forgetting): recent memories stay sharp, old ones grow faint and finally vanish.
        """
        _check_arguments(ctx, self.remember)
        scope = self._scope(scope)

        def work() -> Remembered:
            memory_id = self.store.add(text, scope=scope, role=role, kind=kind, metadata=metadata)
            aged = self._age() if self.age_on_remember else None
            return Remembered(
                id=memory_id, scope=scope, kind=kind, tier=self.store.memory_info(memory_id).tier, aged=aged
            )

        return await _blocking(work)

    async def search_memory(
        self,
        query: Query,
        scope: Annotated[
            str | None,
            Field(
                strict=True,
                min_length=1,
                max_length=255,
                description="Only search this scope (null: every scope, unless the server has a default).",
            ),
        ] = None,
        k: Annotated[int, Field(strict=True, ge=1, le=MAX_K, description="How many memories to return.")] = 5,
        read: Annotated[
            bool,
            Field(
                strict=True,
                description="Also read each hit's text from its page image when no verbatim text is left "
                "(OCR: about a second per page, cached). Default false.",
            ),
        ] = False,
        *,
        ctx: Context,
    ) -> SearchResult:
        """Find the memories closest in meaning to a query: ids, scores, tiers, page images and snippets.

        Use recall_memory on a hit's id for its full text, or read its page_uri resource for the image.
        A scope that holds no memories yet gives no hits.
        """
        _check_arguments(ctx, self.search_memory)
        scope = self._allowed(scope) if scope is not None else self.default_scope

        def work() -> SearchResult:
            try:
                hits = self.store.search(query, k=k, scope=scope)
            except ScopeNotFound:
                return SearchResult(hits=[])
            return SearchResult(hits=[self._hit(hit, read=read) for hit in hits])

        return await _blocking(work)

    async def recall_memory(
        self,
        id: MemoryId,
        read: Annotated[
            bool,
            Field(
                strict=True,
                description="Read the page image even when verbatim text is retained (to see what the "
                "faded page still says). Default false.",
            ),
        ] = False,
        *,
        ctx: Context,
    ) -> Recalled:
        """Read one memory back as text, with its tier and where the text came from.

        Recent turns come back verbatim; older ones are read from their page images at their current tier
        by OCR, so faded memories may come back with errors, and forgotten ones come back empty.
        """
        _check_arguments(ctx, self.recall_memory)

        def work() -> Recalled:
            self._own(id)
            r = self.store.recall(id, read=read)
            return Recalled(id=r.id, text=r.text, tier=r.tier, source=r.source, role=r.role)

        return await _blocking(work)

    async def build_context(
        self,
        query: Query,
        scope: ScopeName | None = None,
        budget_tokens: Annotated[
            int,
            Field(strict=True, ge=1, le=MAX_BUDGET_TOKENS, description="Token budget for the whole context."),
        ] = 2000,
        mode: Annotated[
            Literal["text", "image"],
            Field(
                description="'text': recalled memories as text. 'image': their page images as PNG image "
                "parts (for multimodal models; a page costs far fewer vision tokens than its text)."
            ),
        ] = "text",
        k: Annotated[
            int, Field(strict=True, ge=1, le=MAX_K, description="At most this many memories retrieved.")
        ] = 8,
        *,
        ctx: Context,
    ) -> Annotated[CallToolResult, ContextSummary]:
        """Build the memory context for answering a query: the scope's last four turns verbatim plus the
        memories most relevant to the query (older recent turns among them), packed within a token budget.

        Returns the context as content parts (text, or text and PNG images of page bands in image mode) and
        its token account as structured content. A scope that holds no memories yet gives an empty context.
        """
        _check_arguments(ctx, self.build_context)
        scope = self._scope(scope)

        def work() -> CallToolResult:
            try:
                context = self.store.build_context(
                    query, budget_tokens=budget_tokens, mode=mode, scope=scope, k=k
                )
            except ScopeNotFound:
                summary = ContextSummary(
                    mode=mode, budget_tokens=budget_tokens, used_tokens=0, saved_tokens=0, items=[]
                )
                note = TextContent(type="text", text=f"(scope {scope!r} holds no memories yet)")
                return CallToolResult(content=[note], structured_content=summary.model_dump(mode="json"))
            return _context_result(context, mode)

        return await _blocking(work)

    async def forget(
        self,
        id: Annotated[
            int | None, Field(strict=True, ge=1, le=MAX_ID, description="Delete this one memory.")
        ] = None,
        scope: Annotated[
            str | None,
            Field(
                strict=True, min_length=1, max_length=255, description="Delete every memory of this scope."
            ),
        ] = None,
        confirm: Annotated[
            bool,
            Field(strict=True, description="Must be true to delete a whole scope."),
        ] = False,
        *,
        ctx: Context,
    ) -> Forgotten:
        """Delete one memory (id) or every memory of a scope (scope, with confirm=true), for good: rows,
        vectors and page images. Give exactly one of id and scope."""
        _check_arguments(ctx, self.forget)
        if (id is None) == (scope is None):
            raise ToolError(
                f"give exactly one of id (one memory) or scope (all of it), got id={id!r}, scope={scope!r}"
            )
        if id is not None:

            def work() -> None:
                self._own(id)
                self.store.delete(id)

            await _blocking(work)
            return Forgotten(deleted=1, id=id, scope=None)
        assert scope is not None
        self._allowed(scope)
        if not confirm:
            raise ToolError(
                f"forgetting scope {scope!r} deletes every memory in it for good; "
                "call forget again with confirm=true to do it"
            )
        deleted = await _blocking(functools.partial(self.store.delete_scope, scope))
        return Forgotten(deleted=deleted, id=None, scope=scope)

    # -- resources -------------------------------------------------------------------------------------------

    async def page_image(self, memory_id: str, page_id: str) -> bytes:
        """A page image holding a memory, as PNG, at its current tier (search hits give its URI)."""
        mid, pid = _uri_int(memory_id, "memory_id"), _uri_int(page_id, "page_id")

        def work() -> bytes:
            try:
                self._own(mid)
            except MemoryNotFound as e:
                raise ResourceNotFoundError(str(e)) from None
            images = self.store.page_image(mid, page_id=pid)
            if not images:
                raise ResourceNotFoundError(
                    f"memory {mid} has no page image: it is in the text tier or forgotten"
                )
            buffer = io.BytesIO()
            images[0].save(buffer, format="PNG")
            return buffer.getvalue()

        return await _resource(work)

    async def scopes(self) -> str:
        """The store's scopes, as a JSON list of names (only the server's own on a one-scope server)."""
        names = await _resource(self.store.scopes)
        return json.dumps([n for n in names if self.only_scope in (None, n)])

    async def stats(self) -> str:
        """Memories, pages, tokens and bytes per tier, as JSON."""
        return json.dumps(dataclasses.asdict(await _resource(self.store.stats)))

    # -- helpers ---------------------------------------------------------------------------------------------

    def _allowed(self, scope: str) -> str:
        """``scope``, unless this server serves one scope only and it is another."""
        if self.only_scope is not None and scope != self.only_scope:
            raise ToolError(f"this server serves only scope {self.only_scope!r}, not {scope!r}")
        return scope

    def _own(self, memory_id: int) -> None:
        """On a one-scope server, refuse ids of other scopes exactly as unknown ids are refused (so a client
        cannot even learn that they exist). Costs one row lookup, no page read."""
        if self.only_scope is not None and self.store.memory_info(memory_id).scope != self.only_scope:
            raise MemoryNotFound(f"no memory with id {memory_id!r} in {str(self.store.path)!r}")  # as unknown

    def _scope(self, scope: str | None) -> str:
        if scope is not None:
            return self._allowed(scope)
        if self.default_scope is None:
            raise ToolError("scope is required: this server has no default scope")
        return self.default_scope

    def _age(self) -> dict[str, int] | None:
        """Age the store, then read ahead in the background the pages a first recall would read whole; a
        failure is logged, never reported as a failed add (the memory is stored)."""
        try:
            return dict(self.store.age(preread=True))
        except Exception:
            log.exception("aging the store after remember failed; the memory was stored")
            return None

    def _hit(self, hit: Any, *, read: bool) -> MemoryHit:
        snippet = None
        if read or hit.tier == "text" or self.store.config.retain_text:  # else only OCR can tell
            snippet = self.store.recall(hit.id).text[:SNIPPET_CHARS]
        return MemoryHit(
            id=hit.id,
            score=round(float(hit.score), 4),
            scope=hit.scope,
            kind=hit.kind,
            role=hit.role,
            tier=hit.tier,
            page_id=hit.page_id,
            page_uri=None if hit.page_id is None else PAGE_URI.format(memory_id=hit.id, page_id=hit.page_id),
            compression=hit.compression,
            metadata=hit.metadata,
            snippet=snippet,
        )


async def _resource(fn: Callable[[], T]) -> T:
    """Run a blocking store call for a resource read; store errors become "not found" with their message."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except OpticalMemoryError as e:
        raise ResourceNotFoundError(str(e)) from e


def _uri_int(value: str, name: str) -> int:
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_ID:
        raise ResourceNotFoundError(f"{name} must be a positive integer id, got {value!r}")
    return int(value)


def _context_result(context: Any, mode: str) -> CallToolResult:
    """A store ``Context`` as MCP content parts (image_url data URLs become PNG image parts) + its account."""
    content: list[ContentBlock] = []
    for part in context.parts:
        if part["type"] == "image_url":
            header, _, data = part["image_url"]["url"].partition(",")
            mime = header.removeprefix("data:").split(";")[0] or "image/png"
            content.append(ImageContent(type="image", data=data, mime_type=mime))
        else:
            content.append(TextContent(type="text", text=part["text"]))
    summary = ContextSummary(
        mode="image" if mode == "image" else "text",
        budget_tokens=context.budget_tokens,
        used_tokens=context.used_tokens,
        saved_tokens=context.saved_tokens,
        items=[
            ContextEntry(
                id=item.id,
                origin=item.origin,
                tier=item.tier,
                tokens=item.tokens,
                text_tokens=item.text_tokens,
                score=item.score,
            )
            for item in context.items
        ],
    )
    return CallToolResult(content=content, structured_content=summary.model_dump(mode="json"))


# -- the server ----------------------------------------------------------------------------------------------


def _with_scope_default(
    fn: Callable[..., Coroutine[Any, Any, T]], default: str | None, *, required: bool
) -> Callable[..., Coroutine[Any, Any, T]]:
    """``fn`` with its published ``scope`` parameter defaulting to the server's default scope; without one,
    ``scope`` is required (``required=True``) or stays optional. The input schema then says exactly that."""

    @functools.wraps(fn)
    async def tool(*args: Any, **kwargs: Any) -> T:
        return await fn(*args, **kwargs)

    signature = inspect.signature(fn, eval_str=True)
    params = []
    for p in signature.parameters.values():
        if p.name == "scope" and default is not None:
            p = p.replace(default=default, annotation=ScopeName)
        elif p.name == "scope" and required:
            p = p.replace(default=inspect.Parameter.empty, annotation=ScopeName)
        params.append(p)
    tool.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return tool


def _instructions(default_scope: str | None) -> str:
    scope = (
        f"Tools use the scope {default_scope!r} when none is given."
        if default_scope
        else "Pass a scope (one per user or conversation) to remember and build_context."
    )
    return (
        "Long-term memory kept as page images that fade with age (optical forgetting). Call remember "
        "for each conversation turn worth keeping (role 'user' or 'assistant') and for documents (kind "
        "'document'). Before answering, call build_context with the user's message for recent turns plus "
        "recalled memories within a token budget, or search_memory then recall_memory for a specific fact. "
        f"forget deletes a memory by id, or a whole scope with confirm=true. {scope}"
    )


def make_server(
    store: Any,
    *,
    default_scope: str | None = None,
    only_scope: str | None = None,
    age_on_remember: bool = True,
    name: str = "optical-memory",
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING",
) -> MCPServer:
    """An MCP server (``mcp.server.mcpserver.MCPServer``) over an open store; run it with ``.run("stdio")`` or
    ``.run("streamable-http", host=..., port=...)``, or use :func:`serve`.

    ``default_scope``: the scope ``remember`` and ``build_context`` use when the caller gives none (and the
    one ``search_memory`` searches); None makes ``scope`` required. ``only_scope``: serve this one scope
    only (one tenant per server): it is the default scope, a call naming another scope is refused, and ids,
    page images and the scopes listing of other scopes look exactly like unknown ones; the ``stats``
    resource still counts the whole store. ``age_on_remember``: run ``store.age()``
    after every ``remember`` so old turns move into pages and down the ladder (idempotent; it holds the store
    lock for a scan of every page row plus the pages it re-renders or downsamples: tens of ms, about 0.1 s
    when a turn is packed), then read ahead in the background the pages a first recall would read whole
    (``store.preread_in_background()``: old 256 px pages, 3.5-4 s each), so a later recall finds them
    cached. ``log_level``: the SDK's (and uvicorn's) logging, which only goes to stderr.
    """
    if default_scope is not None and (not isinstance(default_scope, str) or not default_scope.strip()):
        raise InvalidInput(f"default_scope must be a non-empty string or None, got {default_scope!r}")
    if only_scope is not None:
        if not isinstance(only_scope, str) or not only_scope.strip():
            raise InvalidInput(f"only_scope must be a non-empty string or None, got {only_scope!r}")
        if default_scope not in (None, only_scope):
            raise InvalidInput(f"default_scope {default_scope!r} is not the only scope {only_scope!r}")
        default_scope = only_scope
    tools = _MemoryTools(
        store, default_scope=default_scope, only_scope=only_scope, age_on_remember=age_on_remember
    )
    server: MCPServer = MCPServer(
        name,
        instructions=_instructions(default_scope),
        version=optical_memory.__version__,
        log_level=log_level,
    )
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    server.add_tool(
        _with_scope_default(tools.remember, default_scope, required=True),
        title="Remember",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False),
    )
    server.add_tool(
        _with_scope_default(tools.search_memory, default_scope, required=False),
        title="Search memory",
        annotations=read_only,
    )
    server.add_tool(tools.recall_memory, title="Recall a memory", annotations=read_only)
    server.add_tool(
        _with_scope_default(tools.build_context, default_scope, required=True),
        title="Build memory context",
        annotations=read_only,
    )
    server.add_tool(
        tools.forget,
        title="Forget",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False),
    )
    server.resource(PAGE_URI, name="page_image", title="Page image", mime_type="image/png")(tools.page_image)
    server.resource("optical-memory://scopes", name="scopes", mime_type="application/json")(tools.scopes)
    server.resource("optical-memory://stats", name="stats", mime_type="application/json")(tools.stats)
    return server


def serve(
    store: Any,
    *,
    transport: Literal["stdio", "http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = "/mcp",
    default_scope: str | None = None,
    only_scope: str | None = None,
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "WARNING",
) -> None:
    """Serve ``store`` over MCP until the client hangs up (stdio: stdin closes) or the process is stopped
    (HTTP: SIGINT/SIGTERM, handled by uvicorn). Blocks; the caller closes the store afterwards.

    HTTP is streamable HTTP at ``http://host:port/path``, without authentication: on 127.0.0.1/localhost the
    SDK turns on DNS-rebinding protection; anywhere else, put it behind an authenticating proxy.
    """
    server = make_server(store, default_scope=default_scope, only_scope=only_scope, log_level=log_level)
    if transport == "stdio":
        server.run("stdio")
    elif transport == "http":
        server.run("streamable-http", host=host, port=port, streamable_http_path=path)
    else:
        raise InvalidInput(f"transport must be 'stdio' or 'http', got {transport!r}")
