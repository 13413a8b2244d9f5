"""``optical-memory serve``: the HTTP API on a real uvicorn server on loopback, tenant keys, the body limit,
fuzzing of every route and a property test that no key crosses a tenant boundary (both in-process through
Starlette's TestClient, which drives the same ASGI app without a socket, for speed), and the CLI with
several worker processes. The memory browser in Chromium is in test_browser.py.

Real parts throughout: SQLite files, FAISS, MiniLM, RapidOCR, tiktoken. Nothing is mocked.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import optical_memory as om
from optical_memory import InvalidInput, StoreConfig

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from optical_memory.adapters.keys import KEYS_FILE, KeyRing  # noqa: E402
from optical_memory.adapters.serve import make_app, serve  # noqa: E402

SECRET = "bob-secret"  # in every one of bob's memories: no response to alice may carry it


def open_store(path: Path, embedder, reader) -> om.OpticalMemory:
    return om.open(path, config=StoreConfig.tiny(), embedder=embedder, reader=reader)


def fill(store: om.OpticalMemory, scope: str, n: int = 8, marker: str = "") -> list[int]:
    """``n`` turns of ``scope`` then aged: the oldest on pages (64 and 128 px), the newest still text."""
    ids = [
        store.add(
            f"{scope} turn {i}: the parcel for flat {i} is on shelf {i % 5}. {marker}".strip(), scope=scope
        )
        for i in range(n)
    ]
    store.age()
    return ids


class LiveServer:
    """A real uvicorn server on an ephemeral loopback port, on a thread of this process."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live(tmp_path, embedder, reader, backend) -> Iterator[tuple[str, om.OpticalMemory]]:
    """A store (SQLite, or PostgreSQL where a server is given) served on a real socket."""
    config = StoreConfig.tiny(database_url=backend)
    store = om.open(tmp_path / "store", config=config, embedder=embedder, reader=reader)
    with store, LiveServer(make_app(store)) as url:
        yield url, store


# -- the API over a real socket ------------------------------------------------------------------------------


def test_every_route_round_trips_over_a_real_server(live, tmp_path):
    url, store = live
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/healthz").json() == {"status": "ok", "version": om.__version__, "keys": False}
        first = c.post(
            "/v1/memories", json={"text": "I moved to Lisbon in May 🎉", "scope": "alice", "role": "user"}
        )
        assert first.status_code == 201
        mid = first.json()["id"]
        many = c.post(
            "/v1/memories/batch",
            json={
                "scope": "alice",
                "items": [f"turn {i}: the parcel for flat {i} is on shelf {i}." for i in range(9)]
                + [{"text": "Привет, 世界: call me at 09:30", "role": "assistant", "metadata": {"n": 1}}],
            },
        )
        assert many.status_code == 201 and len(many.json()["ids"]) == 10
        doc = c.post(
            "/v1/files",
            files={"file": ("notes.md", b"# Notes\nThe launch is on Friday at the harbour.")},
            data={"scope": "alice", "metadata": json.dumps({"source": "upload"})},
        )
        assert doc.status_code == 201
        (doc_id,) = doc.json()["ids"]
        assert c.get(f"/v1/memories/{doc_id}").json()["metadata"]["source"] == "upload"

        assert c.post("/v1/age", json={}).json()["pages_written"] >= 1
        assert c.get(f"/v1/memories/{mid}").json()["tier"] not in ("text", "forgotten")

        hits = c.post("/v1/search", json={"query": "when is the launch?", "scope": "alice", "k": 3}).json()[
            "hits"
        ]
        assert hits[0]["id"] == doc_id and hits[0]["page_id"] is not None
        where = c.get(f"/v1/memories/{doc_id}/pages").json()["pages"]
        assert [p["page_id"] for p in where] == [hits[0]["page_id"]]
        assert 0 <= where[0]["top"] < where[0]["bottom"] <= 1
        png = c.get(f"/v1/memories/{doc_id}/pages/{where[0]['page_id']}/image")
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (256, 256)  # the tiny ladder's top tier
        read = c.get(f"/v1/memories/{doc_id}/text", params={"read": "true"}).json()
        assert read["source"] == "rapidocr" and "launch" in read["text"]
        newest = c.get(f"/v1/memories/{many.json()['ids'][-1]}/text").json()  # still in the text tier
        assert newest["source"] == "retained" and newest["text"] == "Привет, 世界: call me at 09:30"

        text = c.post(
            "/v1/context", json={"query": "when is the launch?", "budget_tokens": 400, "scope": "alice"}
        )
        assert text.status_code == 200 and "launch" in text.json()["text"]
        assert text.json()["text_counter"] == "cl100k_base"
        image = c.post(
            "/v1/context",
            json={
                "query": "when is the launch?",
                "budget_tokens": 2000,
                "scope": "alice",
                "mode": "image",
                "target": "claude",
            },
        ).json()
        assert image["target"] == "claude"
        assert any(
            p["type"] == "image_url" and p["image_url"]["url"].startswith("data:image/png;base64,")
            for p in image["parts"]
        )
        assert sum(i["tokens"] for i in image["items"]) == image["used_tokens"]
        vision = c.post(
            "/v1/context", json={"query": "x", "budget_tokens": 100, "scope": "alice", "mode": "vision"}
        )
        assert vision.status_code == 422 and "vision" in vision.json()["error"]["message"]  # no model here

        assert c.post(f"/v1/memories/{mid}/pin", json={"pinned": True}).json() == {"id": mid, "pinned": True}
        assert c.put(f"/v1/memories/{mid}/ttl", json={"ttl": 3600}).json()["expires_at"] > time.time()
        listing = c.get("/v1/memories", params={"scope": "alice", "limit": 5}).json()
        assert len(listing["memories"]) == 5 and listing["next_offset"] == 5
        rest = c.get("/v1/memories", params={"scope": "alice", "limit": 1000, "offset": 5}).json()
        assert rest["next_offset"] is None
        assert {m["id"] for m in listing["memories"] + rest["memories"]} == {mid, doc_id, *many.json()["ids"]}
        filtered = c.get(
            "/v1/memories", params={"scope": "alice", "filters": json.dumps({"role": "assistant"})}
        )
        assert [m["role"] for m in filtered.json()["memories"]] == ["assistant"]

        assert c.delete(f"/v1/memories/{mid}").status_code == 204
        assert c.get(f"/v1/memories/{mid}").status_code == 404
        stats = c.get("/v1/stats").json()
        assert stats["memories"] == 11 and stats["scopes"] == 1
        assert [t["side"] for t in c.get("/v1/ladder").json()["tiers"]] == [256, 128, 64]
        assert c.get("/v1/whoami").json() == {
            "key": None,
            "admin": True,
            "scopes": [],
            "label": "no keys: loopback",
        }
        assert c.delete("/v1/scopes/alice").json() == {"deleted": 11}
        assert c.get("/v1/scopes").json() == {"scopes": []}

        metrics = c.get("/metrics").text
        assert (
            'optical_memory_http_requests_total{method="POST",route="/v1/memories",status="201"} 1' in metrics
        )
        assert 'route="/v1/memories/{memory_id}",le="+Inf"}' in metrics
        spec = c.get("/openapi.json").json()
        for route in (
            "/v1/memories",
            "/v1/memories/batch",
            "/v1/files",
            "/v1/search",
            "/v1/context",
            "/v1/age",
            "/v1/memories/{memory_id}/pages/{page_id}/image",
            "/v1/scopes/{scope}",
            "/healthz",
        ):
            assert route in spec["paths"], route
        reference = c.get("/docs").text
        assert "/v1/context" in reference and "<script" not in reference  # drawn here: works offline
        assert 'id="timeline"' in c.get("/").text
    assert store.stats().memories == 0


def test_store_errors_keep_their_message_and_get_a_code_and_a_field(live):
    url, store = live
    with httpx.Client(base_url=url) as c:
        bad = c.post("/v1/memories", json={"text": "x", "scope": ""})
        assert bad.status_code == 422
        assert bad.json()["error"] == {
            "code": "invalid_input",
            "message": "scope must be a non-empty string, got ''",
            "field": "scope",
        }
        gone = c.get("/v1/memories/12345")
        assert gone.status_code == 404 and gone.json()["error"]["message"] == "no memory with id 12345"
        unknown = c.post("/v1/search", json={"query": "x", "scope": "nobody"}).json()["error"]
        assert unknown["code"] == "scope_not_found" and str(store.path) not in unknown["message"]
        assert "<store>" in unknown["message"] or "nobody" in unknown["message"]
        strict = c.post("/v1/search", json={"query": "x", "k": "5"}).json()["error"]
        assert strict["field"] == "k" and "'5'" in strict["message"]  # a string is never taken for a number
        when = c.post("/v1/memories", json={"text": "x", "scope": "a", "timestamp": "2026-01-02T03:04:05Z"})
        assert when.status_code == 201  # ISO 8601 is the one string parsed
        extra = c.post("/v1/memories", json={"text": "x", "scope": "a", "colour": "red"}).json()["error"]
        assert extra["field"] == "colour"
        broken = c.post("/v1/files", files={"file": ("notes.pdf", b"%PDF-1.4 broken")}, data={"scope": "a"})
        error = broken.json()["error"]
        assert broken.status_code == 422 and error["field"] == "file"
        assert "'notes.pdf'" in error["message"] and "om-upload" not in error["message"]  # not the temp path
        assert c.get("/v1/nothing").json()["error"]["code"] == "not_found"
        assert c.put("/v1/search").json()["error"]["code"] == "method_not_allowed"


def test_a_body_over_the_limit_is_refused_before_it_is_stored(tmp_path, embedder, reader):
    store = open_store(tmp_path / "store", embedder, reader)
    with store, LiveServer(make_app(store, max_body_bytes=2000)) as url, httpx.Client(base_url=url) as c:
        big = {"text": "x" * 3000, "scope": "a"}
        declared = c.post("/v1/memories", json=big)
        assert declared.status_code == 413 and declared.json()["error"]["field"] == "body"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
            data = json.dumps(big).encode()
            for i in range(0, len(data), 500):
                yield data[i : i + 500]

        streamed = c.post("/v1/memories", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert c.post("/v1/memories", json={"text": "small", "scope": "a"}).status_code == 201
    with open_store(tmp_path / "store", embedder, reader) as again:
        assert again.stats().memories == 1


def test_concurrent_clients_lose_nothing(tmp_path, embedder, reader):
    """A bounded load test: 8 clients on their own threads and connections, each 12 mixed requests (batched
    adds, searches, contexts, recalls), against one real server. No error, and every id returned is listed
    under its scope, and nowhere else."""
    store = open_store(tmp_path / "store", embedder, reader)
    fill(store, "shared", 12)
    returned: dict[str, list[int]] = {}
    failures: list[str] = []

    def client(n: int) -> None:
        scope = f"client-{n}"
        with httpx.Client(base_url=url, timeout=120) as c:
            for i in range(12):
                op = ("add", "search", "context", "add", "recall", "search")[(n + i) % 6]
                if op == "add":
                    items = [f"client {n} note {i}.{j}: shelf {j} 🚲" for j in range(4)]
                    r = c.post("/v1/memories/batch", json={"scope": scope, "items": items})
                    if r.status_code == 201:
                        returned.setdefault(scope, []).extend(r.json()["ids"])
                elif op == "search":
                    r = c.post(
                        "/v1/search", json={"query": f"parcel for flat {i}", "scope": "shared", "k": 4}
                    )
                elif op == "context":
                    body = {"query": f"parcel for flat {i}", "scope": "shared", "budget_tokens": 500}
                    r = c.post("/v1/context", json=body)
                else:
                    r = c.get(f"/v1/memories/{1 + i % 12}/text", params={"read": "true"})
                if r.status_code >= 300:
                    failures.append(f"{op}: {r.status_code} {r.text[:200]}")

    with store, LiveServer(make_app(store)) as url:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert failures == []
        assert sum(len(ids) for ids in returned.values()) == 8 * 4 * 4  # 4 adds of 4 turns per client
        for scope, ids in returned.items():
            assert sorted(m.id for m in store.memories(scope=scope)) == sorted(ids)
        assert store.verify().ok


# -- keys ----------------------------------------------------------------------------------------------------


def test_keys_are_stored_hashed_bound_to_scopes_and_revoked_at_once(tmp_path, embedder, reader):
    ring = KeyRing(tmp_path / "store")
    alice = ring.create(["alice"], label="alice's agent")
    team = ring.create(["team/*"])
    admin = ring.create(admin=True)
    assert re.fullmatch(r"om_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", alice)
    raw = (tmp_path / "store" / KEYS_FILE).read_text()
    for key in (alice, team, admin):
        secret = key[len("om_00000000_") :]  # (a secret may start with "_": not split on it)
        assert key not in raw and secret not in raw  # only hashes are kept
    assert oct((tmp_path / "store" / KEYS_FILE).stat().st_mode & 0o777) == "0o600"
    assert ring.check(alice).scopes == ("alice",) and ring.check(admin).admin
    assert ring.check(alice[:-1] + ("A" if alice[-1] != "A" else "B")) is None  # one character off
    assert (
        ring.check("om_00000000_" + "A" * 43) is None and ring.check("") is None and ring.check(None) is None
    )
    assert (
        ring.check(team).may("team/red")
        and not ring.check(team).may("team")
        and not ring.check(team).may("teams")
    )
    for bad in ([], ["*"], ["a*b"], [""], ["x" * 256]):
        with pytest.raises(InvalidInput):
            ring.create(bad)
    with pytest.raises(InvalidInput, match="admin key reaches every scope"):
        ring.create(["alice"], admin=True)

    store = open_store(tmp_path / "store", embedder, reader)
    with store, LiveServer(make_app(store)) as url, httpx.Client(base_url=url) as c:
        assert c.get("/v1/scopes").json()["error"]["code"] == "key_required"
        wrong = c.get("/v1/scopes", headers={"Authorization": "Bearer om_deadbeef_" + "x" * 43})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "key_unknown"
        as_alice = {"Authorization": f"Bearer {alice}"}
        assert (
            c.post("/v1/memories", json={"text": "hi", "scope": "alice"}, headers=as_alice).status_code == 201
        )
        assert (
            c.post(
                "/v1/memories", json={"text": "hi", "scope": "team/red"}, headers={"X-API-Key": team}
            ).status_code
            == 201
        )
        refused = c.post("/v1/memories", json={"text": "hi", "scope": "bob"}, headers=as_alice)
        assert refused.status_code == 403 and refused.json()["error"] == {
            "code": "forbidden_scope",
            "message": "this key may not touch scope 'bob'",
            "field": "scope",
        }
        assert c.get("/v1/scopes", headers=as_alice).json() == {"scopes": ["alice"]}
        assert c.get("/v1/scopes", headers={"X-API-Key": admin}).json() == {"scopes": ["alice", "team/red"]}
        for admin_only in (
            c.get("/v1/stats", headers=as_alice),
            c.post("/v1/age", json={}, headers=as_alice),
            c.get("/metrics", headers=as_alice),
        ):
            assert admin_only.status_code == 403 and admin_only.json()["error"]["code"] == "admin_only"
        assert c.get("/v1/stats", headers={"X-API-Key": admin}).status_code == 200
        assert c.get("/healthz").json()["keys"] is True  # open: a load balancer's probe has no key

        KeyRing(tmp_path / "store").revoke(alice.split("_")[1])  # another process's ring: the file changes
        assert c.get("/v1/scopes", headers=as_alice).status_code == 401
        assert c.get("/v1/scopes", headers={"X-API-Key": team}).status_code == 200


def test_without_keys_only_loopback_is_answered_and_no_other_address_is_bound(tmp_path, embedder, reader):
    store = open_store(tmp_path / "store", embedder, reader)
    with store:
        far = TestClient(make_app(store), client=("203.0.113.7", 5000))
        refused = far.get("/v1/scopes")
        assert refused.status_code == 403 and "'203.0.113.7'" in refused.json()["error"]["message"]
        assert TestClient(make_app(store), client=("::1", 5000)).get("/v1/scopes").status_code == 200
    with pytest.raises(InvalidInput, match=r"will not bind '0\.0\.0\.0'"):
        serve(tmp_path / "store", host="0.0.0.0")


# -- the CLI, with worker processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optical_memory.cli", "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.slow
def test_the_cli_serves_with_two_workers_and_keys_made_and_revoked_by_the_cli(tmp_path):
    store = tmp_path / "store"
    key = cli("keys", "create", "--scope", "alice", "--label", "agent", store=store).stdout.strip()
    listed = cli("keys", "list", store=store).stdout
    assert key.split("_")[1] in listed and "alice" in listed and key not in listed
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "optical_memory.cli",
            "--store",
            str(store),
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        banner = proc.stdout.readline() + proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in banner and "1 API key(s), 0 admin" in banner
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "serve did not come up"
                time.sleep(0.25)
        with httpx.Client(base_url=base, headers=auth, timeout=60) as c:
            ids = [
                c.post("/v1/memories", json={"text": f"note {i} 🌍", "scope": "alice"}).json()["id"]
                for i in range(12)
            ]
            assert len(set(ids)) == 12  # both workers write to one store
            assert (
                sorted(m["id"] for m in c.get("/v1/memories", params={"scope": "alice"}).json()["memories"])
                == ids
            )
            cli("keys", "revoke", key.split("_")[1], store=store)
            # every worker sees it, and revoking the last key does not open the server
            assert {c.get("/v1/scopes").status_code for _ in range(6)} == {401}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode in (0, 128 + signal.SIGTERM)


# -- fuzzing -------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30),  # NaN and Infinity go out as Python writes them: not JSON
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)

VALID = {
    ("POST", "/v1/memories"): {
        "text": "hello there",
        "scope": "fz",
        "role": "user",
        "kind": "turn",
        "metadata": {"a": 1},
        "timestamp": 1.7e9,
        "ttl": 60.0,
    },
    ("POST", "/v1/memories/batch"): {"scope": "fz", "kind": "turn", "items": ["one", {"text": "two"}]},
    ("POST", "/v1/search"): {
        "query": "parcel",
        "k": 3,
        "scope": "fz",
        "filters": {"role": "user"},
        "mode": "hybrid",
    },
    ("POST", "/v1/context"): {
        "query": "parcel",
        "budget_tokens": 300,
        "scope": "fz",
        "mode": "text",
        "k": 4,
        "recent_share": 0.5,
        "exclude": [1],
        "target": None,
        "crop_margin": 1,
    },
    ("POST", "/v1/age"): {"now": None, "preread": False},
    ("POST", "/v1/memories/{id}/pin"): {"pinned": True},
    ("PUT", "/v1/memories/{id}/ttl"): {"ttl": 100.0},
}
PATHS = [
    "/v1/memories/{id}",
    "/v1/memories/{id}/text",
    "/v1/memories/{id}/pages",
    "/v1/memories/{id}/pages/{id}/image",
    "/v1/scopes/{scope}",
    "/v1/memories",
]
IDS = st.one_of(st.integers(min_value=-5, max_value=40).map(str), st.just("9" * 30), st.text(max_size=12))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, embedder, reader) -> Iterator[tuple[TestClient, om.OpticalMemory]]:
    store = open_store(tmp_path_factory.mktemp("fuzz") / "store", embedder, reader)
    fill(store, "fz", 8)
    with store:
        yield TestClient(make_app(store), raise_server_exceptions=False), store


def check_answer(r: httpx.Response, mutated: str | None = None) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["code"] and error["message"]
        if r.status_code == 422:
            assert error["field"], error
            if mutated is not None:  # the one field changed from a valid body is the one named
                assert error["field"].split(".")[0] in (mutated, "body"), (mutated, error)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(sorted(VALID)),
    field=st.data(),
    value=JSON,
    mode=st.sampled_from(["field", "whole"]),
)
def test_fuzzed_bodies_get_a_4xx_naming_the_field_never_a_500(fuzzed, route, field, value, mode):
    client, _ = fuzzed
    method, path = route
    body: object = dict(VALID[route])
    name = None
    if mode == "field":
        name = field.draw(st.sampled_from(sorted(body)))
        body[name] = value
    else:
        body = value
    raw = json.dumps(body)  # Python's json writes NaN/Infinity, which no JSON parser should take
    r = client.request(
        method, path.replace("{id}", "3"), content=raw, headers={"content-type": "application/json"}
    )
    check_answer(r, name)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.sampled_from(PATHS),
    memory_id=IDS,
    scope=st.text(max_size=20),
    query=st.dictionaries(
        st.sampled_from(["limit", "offset", "scope", "filters", "read", "k"]), st.text(max_size=12)
    ),
    headers=st.dictionaries(
        st.sampled_from(["content-type", "authorization", "x-api-key", "content-length", "accept"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    ),
    raw=st.binary(max_size=64),
)
def test_fuzzed_paths_ids_queries_and_headers_never_get_a_500(
    fuzzed, method, path, memory_id, scope, query, headers, raw
):
    client, _ = fuzzed
    url = path.replace("{id}", quote(memory_id, safe="")).replace("{scope}", quote(scope, safe=""))
    if method == "DELETE" and (path.endswith("{scope}") or path == "/v1/memories/{id}"):
        return  # deleting is fuzzed through the tenant test, where what may go is known
    try:
        r = client.request(
            method, url, params=query, headers=headers, content=raw if method != "GET" else None
        )
    except (
        Exception
    ) as e:  # the client itself refuses to send it (a header it cannot encode): nothing was sent
        assert "server" not in type(e).__module__, e
        return
    check_answer(r)


def test_after_fuzzing_the_store_is_consistent(fuzzed):
    _, store = fuzzed
    report = store.verify()
    assert report.ok, report
    assert store._index_matches_sql()


# -- tenancy -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, embedder, reader) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("tenants") / "store"
    ring = KeyRing(folder)
    keys = {"alice": ring.create(["alice"]), "prefix": ring.create(["ali*"])}
    store = open_store(folder, embedder, reader)
    alice = fill(store, "alice", 10)
    bob = fill(store, "bob", 10, marker=SECRET)
    bob.append(
        store.add(
            f"The vault code is 4417. {SECRET}", scope="bob", kind="document", metadata={"owner": "alice"}
        )
    )
    pages = {p.page_id for m in alice + bob for p in store.memory_pages(m)}
    bob_pages = {p.page_id for m in bob for p in store.memory_pages(m)}
    with store:
        yield {
            "client": TestClient(make_app(store)),
            "store": store,
            "keys": keys,
            "alice": alice,
            "bob": bob,
            "pages": sorted(pages),
            "bob_pages": bob_pages,
        }


def leaks(value: object, bob: set[int], bob_pages: set[int]) -> list[str]:
    """Everything of bob's in a JSON answer: his ids, pages, scope name, or text."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if (
                (k == "id" and v in bob)
                or (k == "page_id" and v in bob_pages)
                or (k == "scope" and v == "bob")
            ):
                found.append(f"{k}={v}")
            found += leaks(v, bob, bob_pages)
    elif isinstance(value, list):
        for v in value:
            found += leaks(v, bob, bob_pages)
    elif isinstance(value, str) and (SECRET in value or value == "bob" or "4417" in value):
        found.append(value[:60])
    return found


ATTEMPTS = 1000


@settings(max_examples=ATTEMPTS, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_key_crosses_a_tenant_boundary(tenants, data):
    t = tenants
    client, bob, bob_pages = t["client"], set(t["bob"]), t["bob_pages"]
    headers = {"Authorization": f"Bearer {t['keys'][data.draw(st.sampled_from(['alice', 'prefix']))]}"}
    memory = data.draw(st.sampled_from(t["alice"] + t["bob"] + [0, 999]))
    page = data.draw(st.sampled_from(t["pages"]))
    scope = data.draw(
        st.sampled_from([None, "alice", "bob", ["alice", "bob"], ["bob"], "ali", "alice*", "*"])
    )
    filters = data.draw(st.sampled_from([None, {"owner": "alice"}, {"scope": "bob"}, {"kind": "document"}]))
    op = data.draw(
        st.sampled_from(
            [
                "info",
                "text",
                "read",
                "pages",
                "image",
                "pin",
                "ttl",
                "delete",
                "search",
                "list",
                "context",
                "image_context",
                "delete_scope",
                "scopes",
            ]
        )
    )
    bodyless = {
        "info": ("GET", f"/v1/memories/{memory}"),
        "text": ("GET", f"/v1/memories/{memory}/text"),
        "read": ("GET", f"/v1/memories/{memory}/text?read=true"),
        "pages": ("GET", f"/v1/memories/{memory}/pages"),
        "image": ("GET", f"/v1/memories/{memory}/pages/{page}/image"),
        "delete": ("DELETE", f"/v1/memories/{memory}"),
        "scopes": ("GET", "/v1/scopes"),
        "delete_scope": ("DELETE", "/v1/scopes/bob"),
    }
    if op in bodyless:
        method, url = bodyless[op]
        if op == "delete" and memory not in bob:
            return  # alice deleting her own memories would empty the pool the other attempts draw from
        r = client.request(method, url, headers=headers)
    elif op in ("pin", "ttl"):
        r = client.request(
            *(
                ("POST", f"/v1/memories/{memory}/pin")
                if op == "pin"
                else ("PUT", f"/v1/memories/{memory}/ttl")
            ),
            json={"pinned": True} if op == "pin" else {"ttl": None},
            headers=headers,
        )
    elif op == "search":
        r = client.post(
            "/v1/search",
            json={"query": "vault code parcel shelf", "k": 50, "scope": scope, "filters": filters},
            headers=headers,
        )
    elif op == "list":
        params: dict[str, object] = {"filters": json.dumps(filters)} if filters else {}
        if scope is not None:
            params["scope"] = scope  # a list goes as repeated ?scope=
        r = client.get("/v1/memories", params=params, headers=headers)
    else:
        one = scope if isinstance(scope, str) or scope is None else scope[0]
        scope = one
        r = client.post(
            "/v1/context",
            json={
                "query": "the vault code",
                "budget_tokens": 3000,
                "scope": one,
                "exclude": [memory] if memory else [],
                "mode": "image" if op == "image_context" else "text",
            },
            headers=headers,
        )
    assert r.status_code < 500, r.text
    if r.headers.get("content-type") == "application/json":
        assert not leaks(r.json(), bob, bob_pages), (op, scope, r.json())
    if r.status_code == 200 and op == "image":
        assert page not in bob_pages and memory not in bob
    if memory in bob and op in ("info", "text", "read", "pages", "image", "pin", "ttl", "delete"):
        assert r.status_code == 404 and r.json()["error"]["message"] == f"no memory with id {memory}"
    forbidden = {"bob", "*"} & set([scope] if isinstance(scope, str) else scope or [])
    if forbidden and op in ("search", "list", "context", "image_context"):
        assert r.status_code == 403
    if op == "delete_scope":
        assert r.status_code == 403


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.one_of(
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=70),
        st.from_regex(r"om_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", fullmatch=True),
    ),
    header=st.sampled_from(["authorization", "x-api-key"]),
    bearer=st.booleans(),
)
def test_fuzzed_keys_are_refused_with_a_401(tenants, key, header, bearer):
    value = f"Bearer {key}" if bearer and header == "authorization" else key
    if value in tenants["keys"].values() or value.removeprefix("Bearer ") in tenants["keys"].values():
        return
    r = tenants["client"].get("/v1/scopes", headers={header: value})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] in ("key_required", "key_unknown")
    assert r.json()["error"]["field"] == "authorization"


def test_after_a_thousand_attempts_bob_still_has_everything(tenants):
    store = tenants["store"]
    assert sorted(m.id for m in store.memories(scope="bob")) == sorted(tenants["bob"])
    assert all(store.memory_info(m).expires_at is None for m in tenants["bob"])  # no ttl set on his


def test_a_vision_context_over_http_is_the_decoders_input(tmp_path, embedder):
    """Vision mode with a small DeepSeek-OCR checkpoint the test writes in the official layout: the
    embeddings sent over HTTP (float16, base64) are the in-process context's."""
    import numpy as np

    from optical_memory.model import OCRConfig
    from optical_memory.model.testing import random_model, write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "ckpt", random_model(OCRConfig.tiny(), seed=3))
    config = StoreConfig.tiny(model="deepseek-ocr", model_dir=str(checkpoint), model_dtype="float32")
    with om.open(tmp_path / "store", config=config, embedder=embedder) as store:
        store.add_many([f"Turn {i}: the quick brown fox jumps over dog {i}." for i in range(12)], scope="s")
        store.age()
        body = {"query": "the quick brown fox", "budget_tokens": 400, "mode": "vision", "scope": "s"}
        with LiveServer(make_app(store)) as url, httpx.Client(base_url=url, timeout=120) as c:
            sent = c.post("/v1/context", json={**body, "return_embeds": True}).json()
            plain = c.post("/v1/context", json=body).json()
        here = store.build_context("the quick brown fox", budget_tokens=400, mode="vision", scope="s")
    embeds = sent["inputs_embeds"]
    assert embeds["dtype"] == "float16" and embeds["shape"] == [1, here.used_tokens, store.encoder.dim]
    got = np.frombuffer(base64.b64decode(embeds["data"]), dtype=np.float16).reshape(embeds["shape"])
    np.testing.assert_allclose(
        got.astype(np.float32), here.inputs_embeds.float().numpy(), rtol=1e-3, atol=1e-3
    )
    assert sent["used_tokens"] == here.used_tokens and sent["text_counter"] == "decoder"
    assert any(p["type"] == "vision" for p in sent["parts"])
    assert "inputs_embeds" not in plain  # only when asked: they are large
