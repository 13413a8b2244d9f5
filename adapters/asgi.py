"""The plain ASGI parts of ``optical-memory serve``: JSON error bodies, the body limit, per-route metrics in
Prometheus text, and the API reference page drawn from the OpenAPI document (no script, no CDN)."""

from __future__ import annotations

import html
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_response(
    status: int, code: str, message: str, field: str | None = None, **headers: str
) -> JSONResponse:
    """The one error body of the API: ``{"error": {"code", "message", "field"}}``."""
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers or None)


# -- middleware ----------------------------------------------------------------------------------------------


class BodyLimit:
    """Refuses bodies over ``limit`` bytes with 413: by Content-Length at once, else as they stream in. The
    body is read here, up to the limit, before the app sees any of it, so nothing is stored from a body that
    turns out too long."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        refused = error_response(
            413, "body_too_large", f"the request body is over the limit of {self.limit:,} bytes", "body"
        )
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await refused(scope, receive, send)
        chunks, seen = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await refused(scope, receive, send)
            if not msg.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # waits for the disconnect, as the server's own receive would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class Metrics:
    """Request counts and latency per route, method and status, as Prometheus text (this process only)."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.started = time.time()
        self.counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(self.BUCKETS))
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 500

        async def watched(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            key = (scope["method"], route)
            took = time.perf_counter() - t0
            self.counts[(*key, status)] += 1
            self.sums[key] += took
            for i, edge in enumerate(self.BUCKETS):
                if took <= edge:
                    self.buckets[key][i] += 1

    def text(self) -> str:
        out = [
            "# HELP optical_memory_http_requests_total Requests answered, by method, route and status.",
            "# TYPE optical_memory_http_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.counts.items()):
            labels = f'method="{method}",route="{route}",status="{status}"'
            out.append(f"optical_memory_http_requests_total{{{labels}}} {n}")
        out += [
            "# HELP optical_memory_http_request_seconds Time to answer, by method and route.",
            "# TYPE optical_memory_http_request_seconds histogram",
        ]
        for (method, route), counts in sorted(self.buckets.items()):
            labels = f'method="{method}",route="{route}"'
            for edge, n in zip(self.BUCKETS, counts, strict=True):
                le = "+Inf" if edge == float("inf") else repr(edge)
                out.append(f'optical_memory_http_request_seconds_bucket{{{labels},le="{le}"}} {n}')
            out.append(
                f"optical_memory_http_request_seconds_sum{{{labels}}} {self.sums[(method, route)]:.6f}"
            )
            out.append(f"optical_memory_http_request_seconds_count{{{labels}}} {counts[-1]}")
        out += [
            "# HELP optical_memory_process_start_time_seconds When this server process started.",
            "# TYPE optical_memory_process_start_time_seconds gauge",
            f"optical_memory_process_start_time_seconds {self.started:.3f}",
        ]
        return "\n".join(out) + "\n"


def reference_page(spec: dict[str, Any]) -> str:
    """The API reference as one HTML page drawn from the OpenAPI document (no script, no CDN)."""
    rows = []
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            params = ", ".join(
                f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})"
                for p in op.get("parameters", [])
            )
            content: dict[str, Any] = op.get("requestBody", {}).get("content", {})
            first: dict[str, Any] = next(iter(content.values()), {})
            schema = first.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op.get('summary', ''))}</td><td>{html.escape(params)}</td>"
                f"<td>{html.escape(schema)}</td></tr>"
            )
    models = []
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        fields = ", ".join(
            f"<code>{html.escape(k)}</code>{'*' if k in schema.get('required', []) else ''}"
            for k in schema.get("properties", {})
        )
        models.append(f"<tr><td><code>{html.escape(name)}</code></td><td>{fields}</td></tr>")
    return (
        "<!doctype html><meta charset=utf-8><title>optical-memory API</title>"
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}td{padding:.2em .6em;"
        "vertical-align:top;border-bottom:1px solid #ddd}code{font-size:13px}</style>"
        f"<h1>optical-memory API {html.escape(spec.get('info', {}).get('version', ''))}</h1>"
        "<p>Send <code>Authorization: Bearer om_...</code> when the server has keys. Errors are "
        '<code>{"error": {"code", "message", "field"}}</code>. The same document as JSON: '
        "<a href=/openapi.json>/openapi.json</a>. Fields marked * are required.</p>"
        "<table><tr><th>method<th>path<th>what<th>parameters<th>body</tr>" + "".join(rows) + "</table>"
        "<h2>Bodies</h2><table>" + "".join(models) + "</table>"
    )
