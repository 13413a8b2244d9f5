"""HTTP adapter: ``optical-memory serve``, a JSON API over the public API, with tenant keys and the memory
browser (FastAPI on uvicorn).

    optical-memory --store agent-memory keys create --scope alice      # prints om_... once
    optical-memory --store agent-memory serve --host 0.0.0.0 --port 8080 --workers 2

    from optical_memory.adapters.serve import make_app
    app = make_app(store)  # an ASGI app; the caller keeps the store open while it serves

Routes (``/docs`` lists them with their schemas, offline; ``/openapi.json`` is the machine-readable form):
``/v1/memories`` (add one, add many, list by pages), ``/v1/files`` (multipart), ``/v1/search``,
``/v1/context`` (text, image and vision modes), ``/v1/memories/{id}`` (info, delete), ``.../text``
(recall), ``.../pages`` (where it is on which page), ``.../pages/{page_id}/image`` (PNG at its current tier),
``.../pin``, ``.../ttl``, ``/v1/scopes`` (list, delete one), ``/v1/age``, ``/v1/stats``, ``/v1/ladder``,
``/v1/whoami``, ``/healthz``, ``/metrics`` (Prometheus text), and ``/`` (the memory browser).

Contracts:
* Tenancy. With keys in the store folder (see ``keys.py``) every request but ``/healthz``, ``/``, ``/docs``
  and ``/openapi.json`` carries one (``Authorization: Bearer om_...`` or ``X-API-Key``). A key bound to
  scopes never reads, lists, searches, recalls, renders or deletes anything of another scope: an id of
  another scope answers 404 exactly as an unknown id does, a scope it may not touch answers 403, and
  searches, listings and contexts run only over its scopes. ``/v1/age``, ``/v1/stats`` and ``/metrics``
  touch every scope: admin keys only. With no key at all the server answers loopback clients only (as
  admin) and refuses to bind elsewhere; a proxy on the same host makes every client loopback, so create a
  key before putting one in front.
* Errors are JSON: ``{"error": {"code": ..., "message": ..., "field": ...}}``. A store error keeps its
  message (the store's path replaced by ``<store>``) and gets a stable code and status (``ERRORS``); a bad
  request names the field. Nothing a client sends is meant to produce a 500; a 500 is a bug, logged with
  its traceback here.
* Bodies over ``max_body_bytes`` are refused with 413 before they are read whole. Lists page:
  ``limit`` (at most ``MAX_PAGE``) and ``offset``, and each page says the ``next_offset``.
* Store calls block (embedding, rendering, OCR): FastAPI runs them on its thread pool; the store serialises
  them behind its own lock, and several worker processes (``--workers``) or hosts share one store as the
  store itself allows (SQLite on one host, PostgreSQL across hosts). ``/metrics`` is per process.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import ipaddress
import json
import logging
import os
import re
import tempfile
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import optical_memory

from ..errors import (
    BlobError,
    InvalidInput,
    MemoryNotFound,
    MissingDependency,
    OpticalMemoryError,
    SchemaVersionError,
    ScopeNotFound,
    StoreBusy,
    StoreLocked,
)
from .asgi import BodyLimit, Metrics, error_response, reference_page
from .keys import ApiKey, KeyRing

try:
    from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
    from fastapi import Path as PathParam
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the HTTP server needs FastAPI and uvicorn: pip install 'optical-memory[serve]' ({e})"
    ) from e

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 64 * 2**20  # a big PDF fits; a runaway client does not
MAX_PAGE = 1000  # memories per listing page
MAX_ID = 2**63 - 1  # SQL's integer ids: a larger one is refused as a bad field, not sent to the database

# Each store error: (HTTP status, stable code). Leaves first: the first class an error is an instance of wins.
ERRORS: list[tuple[type[OpticalMemoryError], int, str]] = [
    (MemoryNotFound, 404, "memory_not_found"),
    (ScopeNotFound, 404, "scope_not_found"),
    (InvalidInput, 422, "invalid_input"),
    (BlobError, 409, "page_damaged"),
    (StoreBusy, 503, "store_busy"),
    (StoreLocked, 503, "store_locked"),
    (SchemaVersionError, 503, "schema_version"),
    (MissingDependency, 501, "missing_dependency"),
    (OpticalMemoryError, 500, "store_error"),
]


class ApiError(Exception):
    """An error this adapter raises itself: answered as ``{"error": {code, message, field}}``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


# -- request bodies ------------------------------------------------------------------------------------------


class _Body(BaseModel):
    # strict: "5" is not 5 and "true" is not true; unknown fields are refused, naming them
    model_config = ConfigDict(extra="forbid", strict=True)


# epoch seconds, or an ISO 8601 string (the one field where a string is parsed: JSON has no dates)
Timestamp = Annotated[
    float | Annotated[datetime, Field(strict=False)] | None,
    Field(description="epoch seconds or ISO 8601; default: now"),
]


class AddBody(_Body):
    text: str
    scope: str
    role: str | None = None
    kind: Literal["turn", "document"] = "turn"
    metadata: dict[str, Any] | None = None
    timestamp: Timestamp = None
    ttl: float | None = Field(None, description="seconds to live from timestamp; None: never expires")


class Item(_Body):
    text: str
    role: str | None = None
    metadata: dict[str, Any] | None = None
    timestamp: Timestamp = None
    ttl: float | None = None


class AddManyBody(_Body):
    scope: str
    kind: Literal["turn", "document"] = "turn"
    items: list[str | Item] = Field(description="turns (or documents): strings or objects with text")


class SearchBody(_Body):
    query: str
    k: int = Field(5, ge=1, le=1000)
    scope: str | list[str] | None = Field(None, description="one scope, several, or None: all the key's")
    filters: dict[str, Any] | None = None
    mode: Literal["dense", "lexical", "hybrid"] | None = None


class ContextBody(_Body):
    query: str
    budget_tokens: int = Field(ge=1, le=10_000_000)
    mode: Literal["text", "image", "vision"] = "text"
    scope: str | None = Field(None, description="required unless the key has one scope (or is admin)")
    k: int = Field(8, ge=0, le=1000)
    recent_share: float | Literal["auto"] = "auto"
    page_form: Literal["vision", "meanpool", "truncate"] = "vision"
    exclude: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(default_factory=list)
    target: str | None = Field(None, description="image mode: whose image pricing (gpt-4o, claude, ...)")
    crop_margin: int | None = Field(1, ge=0, le=1000)
    return_embeds: bool = Field(False, description="vision mode: include inputs_embeds (float16, base64)")


class AgeBody(_Body):
    now: Timestamp = None
    preread: bool = Field(
        False, description="then read ahead in the background the pages a recall reads whole"
    )


class PinBody(_Body):
    pinned: bool = True


class TtlBody(_Body):
    ttl: float | None


# every name a client can get wrong: the request bodies' fields, and the query, path and form parameters
FIELDS = {name for model in _Body.__subclasses__() for name in model.model_fields} | {
    "memory_id",
    "page_id",
    "limit",
    "offset",
    "read",
    "file",
    "filename",
}


def _named(message: str) -> str | None:
    """The field a store error is about: its messages start with the value's name ("scope must be ...")."""
    said = re.match(r"[A-Za-z_]+", message)
    return said.group() if said and said.group() in FIELDS else None


MemoryId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a memory's id")]
PageId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a page's id (from .../pages or a hit)")]


def _plain(value: Any) -> Any:
    return (
        dataclasses.asdict(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type)
        else value
    )


# -- who is asking -------------------------------------------------------------------------------------------

LOOPBACK = ApiKey(id="loopback", scopes=(), admin=True, label="no keys: loopback", created_at=0.0, sha256="")


def is_loopback(host: str | None) -> bool:
    if host in ("localhost", "testclient"):  # testclient: Starlette's in-process client
        return True
    try:
        return host is not None and ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class Access:
    """What one request's key may touch, and the checks every route runs through."""

    def __init__(self, store: Any, key: ApiKey) -> None:
        self.store, self.key = store, key

    def scope(self, scope: str, field: str = "scope") -> str:
        if not isinstance(scope, str) or not self.key.may(scope):
            raise ApiError(403, "forbidden_scope", f"this key may not touch scope {scope!r}", field)
        return scope

    def visible(self) -> list[str]:
        """The scopes holding memories that this key may touch."""
        return [s for s in self.store.scopes() if self.key.may(s)]

    def scopes(self, scope: str | list[str] | None, field: str = "scope") -> str | list[str] | None:
        """The scope(s) a listing or search runs over: the ones asked for, each checked, or all the key's."""
        if scope is None:
            return None if self.key.admin else self.visible()
        if isinstance(scope, str):
            return self.scope(scope, field)
        return [self.scope(s, field) for s in scope]

    def one_scope(self, scope: str | None) -> str | None:
        if scope is not None:
            return self.scope(scope)
        if self.key.admin:
            return None
        if len(self.key.scopes) == 1 and not self.key.scopes[0].endswith("*"):
            return self.key.scopes[0]  # a key of one scope names it
        raise ApiError(422, "scope_required", "scope is required: this key may touch several scopes", "scope")

    def memory(self, memory_id: int) -> Any:
        """The memory's info, or 404 as for an unknown id when its scope is not this key's."""
        try:
            info = self.store.memory_info(memory_id)
        except MemoryNotFound:
            info = None
        if info is None or not self.key.may(info.scope):
            raise ApiError(404, "memory_not_found", f"no memory with id {memory_id}", "memory_id")
        return info

    def admin(self, what: str) -> None:
        if not self.key.admin:
            raise ApiError(403, "admin_only", f"{what} touches every scope: it needs an admin key")


def access(request: Request) -> Access:
    """The dependency every route but the open ones takes: who is asking, from their key (or loopback)."""
    store, ring = request.app.state.store, request.app.state.ring
    if not ring.required:
        host = request.client.host if request.client else None
        if not is_loopback(host):
            raise ApiError(
                403,
                "loopback_only",
                f"this server has no API keys, so it answers loopback clients only, not {host!r}: "
                "create a key with 'optical-memory keys create'",
            )
        return Access(store, LOOPBACK)
    auth = request.headers.get("authorization", "")
    presented = auth[7:] if auth[:7].lower() == "bearer " else request.headers.get("x-api-key")
    if not presented:
        raise ApiError(
            401, "key_required", "send an API key: 'Authorization: Bearer om_...'", "authorization"
        )
    key = ring.check(presented)
    if key is None:
        raise ApiError(
            401, "key_unknown", "the API key is not recognised (mistyped or revoked)", "authorization"
        )
    return Access(store, key)


Who = Annotated[Access, Depends(access)]


# -- the app -------------------------------------------------------------------------------------------------


def make_app(
    store: Any,
    *,
    keys: KeyRing | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    close_store: bool = False,
) -> Any:
    """The ASGI app serving ``store`` (keys from the store folder unless ``keys`` is given). The caller owns
    the store unless ``close_store``, which closes it when the server shuts down."""
    ring = keys if keys is not None else KeyRing(store.path)
    shown_path = str(store.path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        if close_store:
            store.close()

    app = FastAPI(
        title="optical-memory",
        version=optical_memory.__version__,
        description="Long-term memory for LLM agents, kept as page images that fade with age.",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: /docs below is drawn here, offline
        redoc_url=None,
        lifespan=lifespan,
    )

    def clean(message: str) -> str:
        return message.replace(shown_path, "<store>")

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e.status, e.code, e.message, e.field)

    @app.exception_handler(OpticalMemoryError)
    async def on_store_error(request: Request, e: OpticalMemoryError) -> JSONResponse:
        status, code = next((s, c) for cls, s, c in ERRORS if isinstance(e, cls))
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, e)
        extra = {"Retry-After": "1"} if status == 503 else {}
        message = clean(str(e))
        return error_response(status, code, message, _named(message), **extra)

    @app.exception_handler(RequestValidationError)
    async def on_bad_request(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        # the field's path, without pydantic's names of union members ("timestamp.float" -> "timestamp")
        loc = first.get("loc", ())
        where = [str(p) for p in loc if isinstance(p, int) or p in FIELDS]
        if first.get("type") == "extra_forbidden" and loc:
            where.append(str(loc[-1]))  # the unknown field's own name
        field = ".".join(where) or "body"
        given = first.get("input")
        shown = repr(given) if not isinstance(given, dict | list) else type(given).__name__
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        message = f"{field}: {first.get('msg', 'invalid')}" + ("" if field == "body" else f" (got {shown})")
        return error_response(422, "invalid_request", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {e.detail}"
        return error_response(e.status_code, code, message, "path" if e.status_code in (404, 405) else None)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal", f"internal error ({type(e).__name__}); the server logged it")

    app.state.store, app.state.ring = store, ring

    # -- writing -------------------------------------------------------------------------------------------

    @app.post("/v1/memories", status_code=201, tags=["memories"], summary="Store one turn or document")
    def add(body: AddBody, who: Who) -> dict[str, int]:
        scope = who.scope(body.scope)
        memory_id = store.add(scope=scope, **body.model_dump(exclude={"scope"}))
        return {"id": memory_id}

    @app.post("/v1/memories/batch", status_code=201, tags=["memories"], summary="Store many, all or nothing")
    def add_many(body: AddManyBody, who: Who) -> dict[str, list[int]]:
        scope = who.scope(body.scope)
        items = [i if isinstance(i, str) else i.model_dump(exclude_none=True) for i in body.items]
        try:
            return {"ids": store.add_many(items, scope=scope, kind=body.kind)}
        except InvalidInput as e:  # "item 3: text is empty ..." names items.3.text
            said = re.match(r"(?:item (\d+): )?([A-Za-z_]+)", str(e))
            number, name = (said.group(1), said.group(2)) if said else (None, "")
            if number is None and name in FIELDS and name not in Item.model_fields:
                field = name  # about the batch (its scope or kind), not an item
            else:
                number = number or ("0" if len(items) == 1 else None)
                field = ".".join(
                    ["items", *([number] if number else []), *([name] if name in Item.model_fields else [])]
                )
            raise ApiError(422, "invalid_input", clean(str(e)), field) from e

    @app.post(
        "/v1/files", status_code=201, tags=["memories"], summary="Store a file (text, Markdown, PDF, image)"
    )
    def add_file(
        who: Who,
        file: Annotated[UploadFile, File(description="the file; its name's suffix says its type")],
        scope: Annotated[str, Form()],
        metadata: Annotated[str | None, Form(description="a JSON object")] = None,
    ) -> dict[str, list[int]]:
        scope = who.scope(scope)
        meta = _json_object(metadata, "metadata")
        name = Path(file.filename or "upload").name
        if not re.fullmatch(r"[^\x00-\x1f/\\]{1,200}", name) or name in (".", ".."):
            raise ApiError(422, "invalid_request", f"filename: not a file name: {name!r}", "filename")
        with tempfile.TemporaryDirectory(prefix="om-upload-") as tmp:
            path = Path(tmp) / name
            with open(path, "wb") as f:
                while chunk := file.file.read(1 << 20):
                    f.write(chunk)
            try:
                return {"ids": store.add_file(path, scope=scope, metadata=meta)}
            except InvalidInput as e:  # about the file: named as uploaded, not by the server's scratch path
                message = clean(str(e)).replace(str(path), name).replace(tmp, "")
                field = "metadata" if _named(message) == "metadata" else "file"
                raise ApiError(422, "invalid_input", message, field) from e

    @app.post("/v1/memories/{memory_id}/pin", tags=["memories"], summary="Pin (never ages) or unpin")
    def pin(memory_id: MemoryId, body: PinBody, who: Who) -> dict[str, Any]:
        who.memory(memory_id)
        store.pin(memory_id, pinned=body.pinned)
        return {"id": memory_id, "pinned": body.pinned}

    @app.put("/v1/memories/{memory_id}/ttl", tags=["memories"], summary="Set or clear a time to live")
    def set_ttl(memory_id: MemoryId, body: TtlBody, who: Who) -> dict[str, Any]:
        who.memory(memory_id)
        return {"id": memory_id, "expires_at": store.set_ttl(memory_id, body.ttl)}

    @app.delete("/v1/memories/{memory_id}", status_code=204, tags=["memories"], summary="Delete a memory")
    def delete(memory_id: MemoryId, who: Who) -> Response:
        who.memory(memory_id)
        store.delete(memory_id)
        return Response(status_code=204)

    @app.delete("/v1/scopes/{scope:path}", tags=["scopes"], summary="Delete a scope and all it holds")
    def delete_scope(scope: str, who: Who) -> dict[str, int]:
        return {"deleted": store.delete_scope(who.scope(scope))}

    @app.post("/v1/age", tags=["maintenance"], summary="Apply the forgetting policy once (admin)")
    def age(body: AgeBody, who: Who) -> dict[str, int]:
        who.admin("aging")
        return store.age(now=body.now, preread=body.preread)

    # -- reading -------------------------------------------------------------------------------------------

    @app.get("/v1/scopes", tags=["scopes"], summary="The scopes this key may touch that hold memories")
    def scopes(who: Who) -> dict[str, list[str]]:
        return {"scopes": who.visible()}

    @app.get("/v1/memories", tags=["memories"], summary="List memories, newest first, a page at a time")
    def memories(
        who: Who,
        scope: Annotated[
            list[str] | None, Query(description="repeat for several; none: all the key's")
        ] = None,
        filters: Annotated[str | None, Query(description='a JSON object, e.g. {"role": "user"}')] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> dict[str, Any]:
        scopes = who.scopes(scope)
        if scopes == []:
            return {"memories": [], "next_offset": None}
        rows = store.memories(
            scope=scopes, filters=_json_object(filters, "filters"), limit=limit + 1, offset=offset
        )
        more = len(rows) > limit
        return {
            "memories": [_plain(m) for m in rows[:limit]],
            "next_offset": offset + limit if more else None,
        }

    @app.get("/v1/memories/{memory_id}", tags=["memories"], summary="A memory's scope, tier and metadata")
    def memory_info(memory_id: MemoryId, who: Who) -> dict[str, Any]:
        return _plain(who.memory(memory_id))

    @app.get("/v1/memories/{memory_id}/text", tags=["memories"], summary="Recall a memory as text")
    def recall(
        memory_id: MemoryId,
        who: Who,
        read: Annotated[bool, Query(description="read the pages even when the text was kept")] = False,
    ) -> dict[str, Any]:
        who.memory(memory_id)
        return _plain(store.recall(memory_id, read=read))

    @app.get("/v1/memories/{memory_id}/pages", tags=["memories"], summary="Where a memory is on its pages")
    def memory_pages(memory_id: MemoryId, who: Who) -> dict[str, Any]:
        who.memory(memory_id)
        return {"pages": [_plain(p) for p in store.memory_pages(memory_id)]}

    @app.get(
        "/v1/memories/{memory_id}/pages/{page_id}/image",
        tags=["memories"],
        summary="A page a memory is on, as PNG at its current tier",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def page_image(memory_id: MemoryId, page_id: PageId, who: Who) -> Response:
        who.memory(memory_id)
        if page_id not in {p.page_id for p in store.memory_pages(memory_id)}:
            raise ApiError(
                404, "page_not_found", f"page {page_id} does not hold memory {memory_id}", "page_id"
            )
        images = store.page_image(memory_id, page_id=page_id)
        if not images:
            raise ApiError(404, "page_forgotten", f"page {page_id} holds no image now (forgotten)", "page_id")
        buf = io.BytesIO()
        images[0].save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/v1/search", tags=["search"], summary="The memories that best answer a query")
    def search(body: SearchBody, who: Who) -> dict[str, Any]:
        scopes = who.scopes(body.scope)
        if scopes == []:
            return {"hits": []}
        hits = store.search(body.query, k=body.k, scope=scopes, filters=body.filters, mode=body.mode)
        return {"hits": [_plain(h) for h in hits]}

    @app.post("/v1/context", tags=["search"], summary="Recent turns and recalled memories within a budget")
    def build_context(body: ContextBody, who: Who) -> dict[str, Any]:
        scope = who.one_scope(body.scope)
        if body.recent_share != "auto" and not 0 <= float(body.recent_share) <= 1:
            raise ApiError(
                422,
                "invalid_request",
                f"recent_share: must be 0-1 or 'auto' (got {body.recent_share!r})",
                "recent_share",
            )
        ctx = store.build_context(scope=scope, **body.model_dump(exclude={"scope", "return_embeds"}))
        out = {
            f.name: _plain(getattr(ctx, f.name))
            for f in dataclasses.fields(ctx)
            if f.name not in ("inputs_embeds", "attention_mask")
        }
        out["items"] = [_plain(i) for i in ctx.items]
        out["text"] = ctx.text
        if body.return_embeds and ctx.inputs_embeds is not None:
            embeds = ctx.inputs_embeds.detach().to("cpu").float().numpy().astype("float16")
            out["inputs_embeds"] = {
                "dtype": "float16",
                "shape": list(embeds.shape),
                "data": base64.b64encode(embeds.tobytes()).decode(),
            }
        return out

    @app.get("/v1/stats", tags=["maintenance"], summary="Counts, tokens and bytes per tier (admin)")
    def stats(who: Who) -> dict[str, Any]:
        who.admin("the store's statistics")
        return _plain(store.stats())

    @app.get("/v1/ladder", tags=["maintenance"], summary="The forgetting ladder: tiers and their token costs")
    def ladder(who: Who) -> dict[str, Any]:
        policy = store.config.aging
        tiers = [
            {
                "tier": t.name,
                "side": t.side,
                "vision_tokens": t.vision_tokens,
                "max_turns": t.max_turns,
                "max_age_s": t.max_age_s,
            }
            for t in policy.tiers
        ]
        return {"text_turns": policy.text_turns, "tiers": tiers, "forget": policy.forget}

    @app.get("/v1/whoami", tags=["maintenance"], summary="The key this request carries and what it may touch")
    def whoami(who: Who) -> dict[str, Any]:
        k = who.key
        return {
            "key": None if k is LOOPBACK else k.id,
            "admin": k.admin,
            "scopes": list(k.scopes),
            "label": k.label,
        }

    # -- operations ----------------------------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers and the store is open")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": optical_memory.__version__, "keys": ring.required}

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics of this process (admin)",
        response_class=PlainTextResponse,
    )
    def metrics(who: Who) -> PlainTextResponse:
        who.admin("metrics")
        return PlainTextResponse(counter.text(), media_type="text/plain; version=0.0.4")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(reference_page(app.openapi()))

    @app.get("/", include_in_schema=False)
    def browser() -> HTMLResponse:
        page = resources.files("optical_memory.adapters").joinpath("browser.html").read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    counter = Metrics(BodyLimit(app, max_body_bytes))
    return counter


def _json_object(raw: str | None, field: str) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise ApiError(422, "invalid_request", f"{field}: not JSON ({e}): {raw[:80]!r}", field) from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_request", f"{field}: must be a JSON object, got {raw[:80]!r}", field)
    return value


# -- running it ----------------------------------------------------------------------------------------------

ENV = (
    "OPTICAL_MEMORY_SERVE"  # the worker processes' settings, as JSON: {"store", "options", "max_body_bytes"}
)


def app_from_env() -> Any:
    """uvicorn's factory in each worker process: opens the store named in ``$OPTICAL_MEMORY_SERVE``."""
    settings = json.loads(os.environ[ENV])
    store = optical_memory.open(settings["store"], **settings.get("options", {}))
    return make_app(store, max_body_bytes=settings["max_body_bytes"], close_store=True)


def serve(
    store_path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    options: dict[str, Any] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    log_level: str = "warning",
) -> None:
    """Serve the store at ``store_path`` until SIGINT/SIGTERM. Each worker process opens the store itself
    (``options`` as for ``optical_memory.open``, JSON-serialisable). Refuses a non-loopback ``host`` while the
    store has no keys."""
    import uvicorn

    if workers < 1:
        raise InvalidInput(f"workers must be >= 1, got {workers!r}")
    if not KeyRing(store_path).required and not is_loopback(host):
        raise InvalidInput(
            f"no API keys in {str(store_path)!r}, so the server answers loopback clients only and will not "
            f"bind {host!r}: create a key with 'optical-memory keys create --scope NAME' (or --admin)"
        )
    os.environ[ENV] = json.dumps(
        {"store": os.fspath(store_path), "options": options or {}, "max_body_bytes": max_body_bytes}
    )
    uvicorn.run(
        "optical_memory.adapters.serve:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )
