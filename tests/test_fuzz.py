"""Fuzzing the public API and the CLI with hypothesis, on real parts (SQLite, FAISS, MiniLM, Pillow, pdfium).

The contract under test: every call either succeeds or raises an ``OpticalMemoryError`` whose message is
non-empty, bounded and names the argument it refuses; never another exception type. After every failed
call the store is unchanged and consistent: ``verify().ok``, the same number of memories, and the memories
stored before still recall as they did. The CLI prints one clear error line and exits non-zero.

Each test reuses one tiny store across its examples. ``OM_RELIABILITY_SCALE`` multiplies every example
count (default 1); ``OM_RELIABILITY_OUT`` names a JSON file that receives the cases run, per target.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import os
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import optical_memory as om
from optical_memory.cli import main
from optical_memory.config import StoreConfig

SCALE = float(os.environ.get("OM_RELIABILITY_SCALE", "1"))
CASES: Counter[str] = Counter()


def fuzz(n: int, *, deadline_s: float = 30.0) -> Callable[[Any], Any]:
    """Settings for one target: ``n`` examples times the scale; the deadline flags a call that hangs."""
    return settings(
        max_examples=max(1, round(n * SCALE)),
        deadline=dt.timedelta(seconds=deadline_s),
        database=None,
        suppress_health_check=list(HealthCheck),  # one store per test, reused across examples on purpose
    )


@pytest.fixture(scope="module", autouse=True)
def _report_cases() -> Iterator[None]:
    yield
    out = os.environ.get("OM_RELIABILITY_OUT")
    if out:
        Path(out).write_text(json.dumps({"fuzz_cases": sum(CASES.values()), "by_target": dict(CASES)}))


# -- strategies ------------------------------------------------------------------------------------------

WEIRD = [
    "\x00",
    "\x07",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\r\n",
    "\r",
    "\t",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\u200b",
    "\u200d",
    "\u202e",
    "\u2066",
    "مرحبا بالعالم",
    "שָׁלוֹם",
    "e\u0301\u0302\u0303",
    "\u0301",
    "👩\u200d👩\u200d👧",
    "🏳️\u200d🌈",
    "\U0001d518\U0001d52b",
    "\U000e0041",
    "\U0010fffd",
    "\uffff",
    "\ufffe",
    "中文字符",
    "ｆｕｌｌ",
    "ﷺ",
    "Ꙃ",
    " ",
    "\u3000",
    "\xa0",
    "'",
    '"',
    "\\",
    "%",
    "_",
    "*",
    "?",
    "$.a",
    "$[0]",
    "--",
    ";",
]
SQLISH = [
    "1; DROP TABLE memories",
    "' OR 1=1 --",
    '" OR ""="',
    "'; --",
    "$.a",
    "$",
    "$[0]",
    '$."a"',
    "a.b",
    "a[0]",
    "\\",
    '"',
    "'",
    "%",
    "_",
    "*",
    "..",
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "NULL",
    "null",
    "None",
    "true",
    "0x10",
    "1e309",
    "-0",
    "",
    " ",
    "\x00",
    "tier",
    "kind",
    "role",
    "source",
    "__proto__",
]
HUGE_INTS = [2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64, 10**30, -(10**30), 2**1000, 10**4000]

weird_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(WEIRD) | st.characters(), max_size=30).map("".join),
    st.lists(st.sampled_from(WEIRD + SQLISH + ["plain words here"]), max_size=8).map("".join),
)
names = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(WEIRD) | st.characters(codec="utf-8"), min_size=1, max_size=12).map("".join),
    st.sampled_from(SQLISH),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(SQLISH),
)
anything = st.recursive(
    st.one_of(
        scalars,
        st.binary(max_size=30),
        st.sampled_from(
            [
                b"\xff\xfe",
                bytearray(b"abc"),
                1j,
                object(),
                Path("../x"),
                dt.datetime.min,
                dt.datetime.max,
                dt.date(2020, 1, 1),
                Ellipsis,
                float("nan"),
                -math.inf,
            ]
        ),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(
            st.one_of(st.text(max_size=10), st.sampled_from(SQLISH), st.integers()), inner, max_size=4
        ),
        st.frozensets(st.text(max_size=5), max_size=3),
    ),
    max_leaves=8,
)
ids = st.one_of(
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.integers(-3, 3),
    st.floats(),
    st.booleans(),
    st.none(),
    st.sampled_from(SQLISH),
    st.text(max_size=10),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
meta_keys = st.one_of(st.text(max_size=40), st.sampled_from(SQLISH + WEIRD))


def deep(levels: int) -> dict[str, Any]:
    out: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        out = {"a": out}
    return out


class Deep:
    """``{"a": {"a": ... {"leaf": 1}}}``, ``levels`` deep, built in the test: hypothesis pretty-prints
    explicit examples recursively and would overflow the stack on the dict itself."""

    def __init__(self, levels: int) -> None:
        self.levels = levels

    def __repr__(self) -> str:
        return f"Deep({self.levels})"


def built(value: Any) -> Any:
    return deep(value.levels) if isinstance(value, Deep) else value


# -- the guard: the store before and after every call ----------------------------------------------------

BASE_TURN = "The lighthouse keeper's cat is called Marmalade."
BASE_DOC = "Tide tables for the harbour are pinned by the door."


class Guard:
    """A store with a baseline (one turn, one paged document) and the checks every failed call must pass."""

    def __init__(self, store: om.OpticalMemory) -> None:
        self.store = store
        self.turn = store.add(BASE_TURN, scope="base", role="user", metadata={"k": "v"})
        self.doc = store.add(BASE_DOC, scope="base", kind="document")
        store.pin(self.turn)  # a pinned turn keeps its text whatever age() does

    def count(self) -> int:
        return self.store.stats().memories

    def check(self) -> None:
        report = self.store.verify()
        assert report.ok, report
        assert self.store.recall(self.turn).text == BASE_TURN
        assert self.store.memory_info(self.doc).scope == "base"

    def attempt(
        self, target: str, fn: Callable[..., Any], *args: Any, names: tuple[str, ...] = (), **kwargs: Any
    ) -> Any:
        """Run one call: its result, or the ``OpticalMemoryError`` it raised (after checking the store)."""
        CASES[target] += 1
        before = self.count()
        try:
            return fn(*args, **kwargs)
        except om.OpticalMemoryError as e:
            assert_clear(e, names)
            assert self.count() == before, f"a failed {fn.__name__} changed the store: {e}"
            self.check()
            return e


def assert_clear(e: BaseException, names: tuple[str, ...] = ()) -> None:
    message = str(e)
    assert message.strip(), f"empty message from {type(e).__name__}"
    assert len(message) < 4000, f"{type(e).__name__} message is {len(message)} characters long"
    if names:
        assert any(n in message for n in names), f"{message!r} names none of {names}"


@pytest.fixture
def guard(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[Guard]:
    folder = tmp_path_factory.mktemp("fuzz")
    with om.open(folder / "store", config=StoreConfig.tiny(), embedder=embedder) as store:
        g = Guard(store)
        yield g
        g.check()


# -- add -------------------------------------------------------------------------------------------------


@fuzz(100)
@given(text=weird_text, role=st.none() | names, kind=st.sampled_from(["turn", "document"]))
@example(text="👩\u200d👩\u200d👧 family", role=None, kind="turn")
@example(text="abc\x00def", role="user", kind="turn")
@example(text="\u202eevil\u202c and e\u0301", role="\u05e9\u05dc\u05d5\u05dd", kind="document")
def test_add_fuzzed_text(guard: Guard, text: str, role: str | None, kind: str) -> None:
    got = guard.attempt(
        "add_text",
        guard.store.add,
        text,
        scope="fuzz",
        role=role,
        kind=kind,
        names=("text", "character", "role"),
    )
    if isinstance(got, int):
        info = guard.store.memory_info(got)
        assert (info.scope, info.kind, info.role) == ("fuzz", kind, role)


ADD_ARGS = {
    "text": ("text", "character"),
    "scope": ("scope",),
    "role": ("role", "character"),
    "kind": ("kind",),
    "metadata": ("metadata",),
    "timestamp": ("timestamp",),
    "ttl": ("ttl",),
}


@fuzz(300)
@given(arg=st.sampled_from(sorted(ADD_ARGS)), value=anything)
@example(arg="metadata", value=Deep(5000))  # RecursionError escaped json.dumps
@example(arg="timestamp", value=dt.datetime.min)  # ValueError: year 0 is out of range
@example(arg="metadata", value={"n": 10**5000})
@example(arg="text", value=b"bytes where str is expected")
def test_add_wrong_types(guard: Guard, arg: str, value: Any) -> None:
    value = built(value)
    kwargs: dict[str, Any] = {"text": "a plain turn", "scope": "fuzz", arg: value}
    text = kwargs.pop("text")
    got = guard.attempt("add_args", guard.store.add, text, names=ADD_ARGS[arg], **kwargs)
    if isinstance(got, int):
        guard.store.delete(got)


@fuzz(150)
@given(
    items=anything
    | st.lists(anything, max_size=4)
    | st.lists(
        st.dictionaries(
            st.sampled_from(["text", "content", "role", "metadata", "timestamp", "ttl", "x"]), anything
        ),
        max_size=3,
    ),
    kind=st.sampled_from(["turn", "document"]) | anything,
    progress=st.none() | anything,
)
@example(items=None, kind="turn", progress=None)  # TypeError: not iterable
@example(items={"text": "hi"}, kind="turn", progress=None)  # a mapping's keys were stored as texts
@example(items=["fine"], kind="turn", progress="not callable")  # TypeError after the write
def test_add_many_fuzz(guard: Guard, items: Any, kind: Any, progress: Any) -> None:
    got = guard.attempt(
        "add_many",
        guard.store.add_many,
        items,
        scope="fuzz",
        kind=kind,
        progress=progress,
        names=(
            "text",
            "character",
            "role",
            "metadata",
            "timestamp",
            "ttl",
            "kind",
            "items",
            "add_many",
            "progress",
        ),
    )
    if isinstance(got, list):
        for mid in got:
            guard.store.delete(mid)


# -- metadata and filters --------------------------------------------------------------------------------


@fuzz(30)
@given(metadata=st.dictionaries(meta_keys, json_values, max_size=6), data=st.data())
@example(metadata={f"k{i}": i for i in range(10_000)}, data=None)
@example(metadata={"$.a": 1, '"': '"', "\\": "\\", "' OR 1=1 --": "' OR 1=1 --"}, data=None)
@example(metadata=Deep(63), data=None)
@example(metadata=Deep(64), data=None)
@example(metadata=Deep(990), data=None)
@example(metadata={"k": "\x00"}, data=None)
def test_metadata_round_trip(guard: Guard, metadata: dict[str, Any], data: Any) -> None:
    metadata = built(metadata)
    got = guard.attempt(
        "metadata",
        guard.store.add,
        "a turn with metadata",
        scope="meta",
        metadata=metadata,
        names=("metadata",),
    )
    if not isinstance(got, int):
        return
    assert guard.store.memory_info(got).metadata == metadata
    plain = {
        k: v
        for k, v in metadata.items()
        if k not in ("kind", "role", "tier") and (v is None or isinstance(v, (str, int, float)))
    }
    if plain:
        key = data.draw(st.sampled_from(sorted(plain))) if data is not None else sorted(plain)[0]
        found = {m.id for m in guard.store.memories(scope="meta", filters={key: plain[key]})}
        assert got in found, (key, plain[key])
        hits = guard.store.search("a turn with metadata", scope="meta", k=3, filters={key: plain[key]})
        assert got in {h.id for h in hits}, (key, plain[key])
    guard.store.delete(got)


@fuzz(150)
@given(
    filters=anything | st.dictionaries(meta_keys, anything, max_size=4),
    scope=st.none() | anything,
    limit=st.none() | ids,
    offset=ids,
    query=st.sampled_from(["cat", "tide tables"]) | weird_text,
)
@example(filters={"n": 10**30}, scope=None, limit=None, offset=0, query="cat")  # OverflowError in SQLite
@example(filters=None, scope=None, limit=10**30, offset=0, query="cat")  # OverflowError in SQLite
@example(filters=None, scope=None, limit=None, offset=2**64, query="cat")
@example(filters=Deep(5000), scope=None, limit=None, offset=0, query="cat")
@example(filters={"k": "v"}, scope=["base", "base"], limit=1, offset=0, query="cat")
def test_filters_fuzz(guard: Guard, filters: Any, scope: Any, limit: Any, offset: Any, query: Any) -> None:
    filters = built(filters)
    names = ("filters", "metadata", "scope", "limit", "offset", "tier", "JSON")
    got = guard.attempt(
        "filters", guard.store.memories, filters=filters, scope=scope, limit=limit, offset=offset, names=names
    )
    if isinstance(got, list):
        assert all(isinstance(m, om.MemoryInfo) for m in got)
    guard.attempt(
        "filters", guard.store.search, query, filters=filters, scope=scope, names=(*names, "query", "k")
    )


# -- ids -------------------------------------------------------------------------------------------------

ID_CALLS = ["recall", "memory_info", "delete", "pin", "set_ttl", "page_image", "page_image_page", "page_text"]


@fuzz(500)
@given(call=st.sampled_from(ID_CALLS), memory_id=ids, other=anything)
@example(call="recall", memory_id=2**70, other=None)  # OverflowError in SQLite
@example(call="page_text", memory_id=2**70, other=None)
@example(call="pin", memory_id=1, other="yes")  # StatementError: not a boolean
@example(call="pin", memory_id=1, other=None)  # IntegrityError: NOT NULL
@example(call="delete", memory_id="1; DROP TABLE memories", other=None)
def test_ids_fuzz(guard: Guard, call: str, memory_id: Any, other: Any) -> None:
    s = guard.store
    if call in ("delete", "set_ttl") and memory_id in (guard.turn, guard.doc):
        memory_id = -1  # the baseline stays; unknown ids are what is fuzzed here
    fns: dict[str, Callable[[], Any]] = {
        "recall": lambda: s.recall(memory_id),
        "memory_info": lambda: s.memory_info(memory_id),
        "delete": lambda: s.delete(memory_id),
        "pin": lambda: s.pin(memory_id, pinned=other),
        "set_ttl": lambda: s.set_ttl(memory_id, None),
        "page_image": lambda: s.page_image(memory_id),
        "page_image_page": lambda: s.page_image(guard.doc, page_id=memory_id),
        "page_text": lambda: s.page_text(memory_id),
    }
    got = guard.attempt("ids", fns[call], names=("id", "pinned", "page"))
    if call == "pin" and not isinstance(got, om.OpticalMemoryError):
        s.pin(memory_id)  # put the baseline back as it was


# -- scopes ----------------------------------------------------------------------------------------------


@fuzz(60)
@given(scope=names | anything, other=names)
@example(scope="../../etc/passwd", other="1; DROP TABLE memories")
@example(scope="\u202ereversed", other="x" * 256)
@example(scope=" ", other="\x00")
def test_scope_fuzz(guard: Guard, scope: Any, other: str) -> None:
    s = guard.store
    got = guard.attempt("scopes", s.add, "a turn in a fuzzed scope", scope=scope, names=("scope",))
    if isinstance(got, int):
        assert [m.id for m in s.memories(scope=scope)] == [got]
        assert got in {h.id for h in s.search("a turn in a fuzzed scope", scope=[scope, "base"], k=3)}
        assert s.delete_scope(scope) == 1
    for fn in (s.memories, s.delete_scope):
        if other not in s.scopes():
            got = guard.attempt("scopes", fn, scope=other, names=("scope",))
            assert isinstance(got, om.OpticalMemoryError) and not isinstance(got, om.MemoryNotFound)
    guard.attempt("scopes", s.search, "cat", scope=[other, scope], names=("scope",))


# -- search and context ----------------------------------------------------------------------------------


@fuzz(150)
@given(query=weird_text | anything, k=st.integers(-2, 50) | ids, scope=st.none() | st.just("base") | anything)
@example(query="cat", k=10**30, scope="base")
@example(query=b"cat", k=1, scope=None)
def test_search_fuzz(guard: Guard, query: Any, k: Any, scope: Any) -> None:
    got = guard.attempt("search", guard.store.search, query, k=k, scope=scope, names=("query", "k", "scope"))
    if isinstance(got, list):
        assert len(got) <= k and all(isinstance(h, om.Hit) for h in got)


@fuzz(100)
@given(
    query=weird_text | anything,
    budget=st.integers(-5, 5000) | ids,
    mode=st.sampled_from(["text", "image", "vision"]) | anything,
    scope=st.none() | st.just("base") | anything,
    k=st.integers(1, 5) | ids,
    share=st.floats(-1, 2) | anything,
    page_form=st.sampled_from(["vision", "meanpool"]) | anything,
)
@example(query="cat", budget=100, mode="text", scope=None, k=3, share="half", page_form="vision")
@example(query="cat", budget=100, mode="text", scope=None, k=3, share=None, page_form="vision")
# a budget beyond float's range: budget x recent_share overflowed
@example(query="cat", budget=10**4000, mode="text", scope=None, k=3, share=0.5, page_form="vision")
@example(query="cat", budget=10**4000, mode="vision", scope=None, k=3, share=0.5, page_form="vision")
def test_build_context_fuzz(
    guard: Guard, query: Any, budget: Any, mode: Any, scope: Any, k: Any, share: Any, page_form: Any
) -> None:
    got = guard.attempt(
        "build_context",
        guard.store.build_context,
        query,
        budget_tokens=budget,
        mode=mode,
        scope=scope,
        k=k,
        recent_share=share,
        page_form=page_form,
        names=("query", "budget_tokens", "mode", "scope", "k", "recent_share", "page_form"),
    )
    if isinstance(got, om.Context):
        assert got.used_tokens <= budget


# -- ttl and timestamps ----------------------------------------------------------------------------------

times = st.one_of(
    st.none(),
    st.floats(),
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.datetimes(),
    st.datetimes(timezones=st.timezones()),
    anything,
)


@fuzz(300)
@given(ttl=st.none() | st.floats() | st.integers() | anything, now=times)
@example(ttl=60.0, now=dt.datetime.min)  # ValueError from datetime.timestamp()
@example(ttl=1e308, now=1e308)
def test_ttl_and_timestamps(guard: Guard, ttl: Any, now: Any) -> None:
    s = guard.store
    mid = getattr(guard, "ttl_memory", None)
    if mid is None:
        mid = guard.ttl_memory = s.add("a turn whose lifetime is fuzzed", scope="ttl")  # type: ignore[attr-defined]
    # add(timestamp=, ttl=) runs the same two checks: test_add_wrong_types fuzzes those arguments there
    got = guard.attempt("ttl", s.set_ttl, mid, ttl, now=now, names=("ttl", "timestamp"))
    if isinstance(got, om.OpticalMemoryError):
        return
    listed = mid in {m.id for m in s.memories(scope="ttl")}
    if got is None or abs(got - time.time()) > 60:  # listed exactly while it has not expired
        assert listed == (got is None or got > time.time()), (ttl, now, got)
    s.set_ttl(mid, None)


# -- huge strings ----------------------------------------------------------------------------------------

MB = 2**20


HUGE_WHERE = [
    "scope",
    "role",
    "metadata_key",
    "metadata_value",
    "filters",
    "query",
    "text_nul",
    "text_unrenderable",
    "text",
    "path",
    "kind",
    "scope_list",
]


@pytest.mark.parametrize("where", HUGE_WHERE)
@fuzz(2, deadline_s=60)
@given(size=st.sampled_from([MB, 4 * MB]), char=st.sampled_from(["a", "é", "中", " ", "\u200d"]))
def test_huge_strings(guard: Guard, where: str, size: int, char: str) -> None:
    s = guard.store
    big = char * size
    calls: dict[str, Callable[[], Any]] = {
        "scope": lambda: s.add("x", scope=big),
        "role": lambda: s.add("x", scope="huge", role=big),
        "metadata_key": lambda: s.add("x", scope="huge", metadata={big: 1}),
        "metadata_value": lambda: s.add("x", scope="huge", metadata={"k": big}),
        "filters": lambda: s.memories(filters={"k": big}),
        "query": lambda: s.search(big[: 64 * 1024] + "cat", k=1),  # embedding MBs takes seconds: see report
        "text_nul": lambda: s.add(big + "\x00", scope="huge"),
        "text_unrenderable": lambda: s.add(big + "\U000e0080\U0010fffe", scope="huge"),
        "text": lambda: s.add("cat" + big[: 128 * 1024], scope="huge"),
        "path": lambda: s.add_file(big + ".png", scope="huge"),
        "kind": lambda: s.add("x", scope="huge", kind=big),
        "scope_list": lambda: s.search("cat", scope=[f"s{i}" for i in range(40_000)]),
    }
    fn = calls[where]
    fn.__name__ = where
    got = guard.attempt("huge", fn)
    if isinstance(got, int):
        s.delete(got)


# -- files -----------------------------------------------------------------------------------------------


def png_bytes(width: int, height: int, idat: bytes, *, color: int = 0) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_bomb(side: int) -> bytes:
    """A PNG declaring ``side`` x ``side`` grey pixels, all zero, compressed to a few hundred kB at most."""
    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    rows = side if side <= 10_000 else 100  # a whole image up to 10k rows; beyond, the header alone
    return png_bytes(side, side, b"".join(z.compress(row) for _ in range(rows)) + z.flush())


def pdf_bytes(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_page(
    mediabox: bytes = b"[0 0 200 200]",
    content: bytes = b"BT /F1 12 Tf 20 100 Td (Tide) Tj ET",
    xobject: bytes | None = None,
    count: int = 1,
    kids: bytes = b"3 0 R",
) -> bytes:
    packed = zlib.compress(content)
    resources = b"/Font << /F1 5 0 R >>" + (b" /XObject << /Im1 6 0 R >>" if xobject else b"")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
        b"<< /Type /Page /Parent 2 0 R /MediaBox "
        + mediabox
        + b" /Contents 4 0 R /Resources << "
        + resources
        + b" >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    if xobject:
        objects.append(xobject)
    return pdf_bytes(objects)


def pdf_image_bomb(side: int) -> bytes:
    z = zlib.compressobj(6)
    data = b"".join(z.compress(b"\0" * side) for _ in range(side)) + z.flush()
    head = (
        b"<< /Length %d /Filter /FlateDecode /Type /XObject /Subtype /Image /Width %d /Height %d "
        b"/ColorSpace /DeviceGray /BitsPerComponent 8 >>\nstream\n"
    ) % (len(data), side, side)
    return pdf_page(content=b"q 200 0 0 200 0 0 cm /Im1 Do Q", xobject=head + data + b"\nendstream")


def sample_files() -> dict[str, bytes]:
    """Small valid files of each kind the store reads (fuzzing corrupts them)."""
    out = {}
    image = Image.new("L", (40, 30), 255)
    for suffix, fmt in (
        (".png", "PNG"),
        (".jpg", "JPEG"),
        (".gif", "GIF"),
        (".bmp", "BMP"),
        (".tif", "TIFF"),
        (".webp", "WEBP"),
    ):
        buf = io.BytesIO()
        image.save(buf, fmt)
        out[suffix] = buf.getvalue()
    out[".pdf"] = pdf_page()
    out[".txt"] = b"Plain notes about the tide.\n"
    return out


SAMPLES = sample_files()
SUFFIXES = [*SAMPLES, ".md", ".pdf", ".png", ".xyz", "", ".PDF", ".tiff", ".jpeg"]


@st.composite
def damaged_files(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(SUFFIXES))
    how = draw(st.sampled_from(["random", "truncate", "flip", "splice", "valid"]))
    base = SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))]
    if how == "random":
        data = draw(st.binary(max_size=2000))
    elif how == "truncate":
        data = base[: draw(st.integers(0, len(base)))]
    elif how == "flip":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    elif how == "splice":
        at = draw(st.integers(0, len(base)))
        data = base[:at] + draw(st.binary(max_size=200)) + base[at:]
    else:
        data = base
    return suffix, data


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")  # Pillow on damaged files
@fuzz(40)
@given(file=damaged_files(), metadata=st.none() | st.dictionaries(meta_keys, json_values, max_size=2))
def test_add_file_damaged(
    guard: Guard, tmp_path_factory: pytest.TempPathFactory, file: tuple[str, bytes], metadata: Any
) -> None:
    suffix, data = file
    path = tmp_path_factory.mktemp("file") / f"fuzzed{suffix}"
    path.write_bytes(data)
    got = guard.attempt(
        "files",
        guard.store.add_file,
        path,
        scope="files",
        metadata=metadata,
        names=("path", "file", str(path.name), "PDF", "image", "metadata", "text"),
    )
    if isinstance(got, list):
        for mid in got:
            guard.store.delete(mid)


BAD_PATHS = [
    *SQLISH,
    "../../etc/passwd",
    "/etc/passwd",
    "/dev/zero",
    "/proc/self/status",
    "../x.pdf",
    "./",
    "~/.ssh/id_rsa.png",
    "a\x00b.png",
    "x" * 5000 + ".pdf",
]


@fuzz(200)
@given(path=st.sampled_from(BAD_PATHS) | weird_text | anything)
@example(path=b"/etc/passwd")  # TypeError from Path(bytes)
@example(path=None)
@example(path="x" * 5000 + ".png")  # OSError: file name too long
def test_add_file_paths(
    guard: Guard, path: Any, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not getattr(guard, "chdir", False):
        monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # relative paths land in an empty folder
        guard.chdir = True  # type: ignore[attr-defined]
    got = guard.attempt(
        "file_paths", guard.store.add_file, path, scope="files", names=("path", "file", "type", "scope")
    )
    assert isinstance(got, om.OpticalMemoryError), f"{path!r} was stored: {got}"


def special_files(folder: Path) -> dict[str, Any]:
    """Hand-made hostile files: name -> path (or a non-path argument)."""
    made: dict[str, Any] = {}

    def put(name: str, data: bytes) -> None:
        made[name] = folder / name
        made[name].write_bytes(data)

    put("empty.png", b"")
    put("empty.pdf", b"")
    put("empty.txt", b"")
    put("bomb-100000.png", png_bomb(100_000))  # far over Pillow's limit: refused by Pillow
    put("bomb-10000.png", png_bomb(10_000))  # in Pillow's warn-only band: it used to decode 100M pixels
    put("png-named.pdf", SAMPLES[".png"])  # PdfiumError escaped _pdf_texts
    put("pdf-named.png", SAMPLES[".pdf"])
    put("random.pdf", os.urandom(3000))
    put("random.png", os.urandom(3000))
    put("truncated.jpg", SAMPLES[".jpg"][: len(SAMPLES[".jpg"]) // 2])
    put("truncated.png", SAMPLES[".png"][:-20])
    put("truncated.pdf", SAMPLES[".pdf"][: len(SAMPLES[".pdf"]) // 2])
    corrupted = bytearray(SAMPLES[".pdf"])
    corrupted[100:140] = b"\xff" * 40
    put("corrupted.pdf", bytes(corrupted))
    put("huge-page.pdf", pdf_page(b"[0 0 14400 14400]"))
    put("no-area-page.pdf", pdf_page(b"[0 0 0 0]"))
    put("sliver-page.pdf", pdf_page(b"[0 0 1 100000]"))
    put("nan-page.pdf", pdf_page(b"[0 0 nan inf]"))
    put("huge-stream.pdf", pdf_page(content=b" " * (64 * MB)))
    put("image-bomb.pdf", pdf_image_bomb(12_000))
    put("missing-page.pdf", pdf_page(count=2, kids=b"3 0 R 9 0 R"))  # PdfiumError escaped loading page 2
    put("count-lies.pdf", pdf_page(count=1_000_000))
    put("many-pages.pdf", pdf_page(count=100_000, kids=b" ".join([b"3 0 R"] * 100_000)))
    put("not-utf8.txt", b"caf\xe9 \xff\xfe")
    put("nul.md", b"# title\n\x00 body\n")
    put("bom.txt", "\ufeffA byte order mark first.".encode())
    put("undecodable-name-\udcff.txt", b"Notes under a name the file system encoding cannot decode.")
    frames = [Image.new("L", (2, 2), 255) for _ in range(1002)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    put("many-frames.tif", buf.getvalue())
    (folder / "a-folder.png").mkdir()
    made["a-folder.png"] = folder / "a-folder.png"
    loop = folder / "loop.png"
    loop.symlink_to(loop)
    made["loop.png"] = loop
    (folder / "dangling.pdf").symlink_to(folder / "nowhere.pdf")
    made["dangling.pdf"] = folder / "dangling.pdf"
    os.mkfifo(folder / "fifo.txt")  # reading it would block forever
    made["fifo.txt"] = folder / "fifo.txt"
    made["too-long"] = str(folder / ("x" * 300 + ".png"))
    made["nul-in-path"] = str(folder / "a\x00b.png")
    made["bytes-path"] = os.fsencode(folder / "empty.png")
    made["traversal"] = str(folder / ".." / ".." / ".." / "etc" / "passwd")
    made["none"] = None
    made["number"] = 3.5
    return made


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_add_file_hostile_files(guard: Guard, tmp_path: Path) -> None:
    stored = {}
    for name, path in special_files(tmp_path).items():
        got = guard.attempt(
            "hostile_files",
            guard.store.add_file,
            path,
            scope="hostile",
            names=("path", "file", "PDF", "pixels", "pages", "frames", "UTF-8", "text", "image"),
        )
        if not isinstance(got, om.OpticalMemoryError):
            stored[name] = got
    # what may be stored: valid content behind an odd name, or a large page drawn at the page size
    assert set(stored) <= {
        "pdf-named.png",
        "huge-page.pdf",
        "no-area-page.pdf",
        "sliver-page.pdf",
        "nan-page.pdf",
        "huge-stream.pdf",
        "image-bomb.pdf",
        "corrupted.pdf",
        "bom.txt",
        "undecodable-name-\udcff.txt",
        "truncated.png",  # only IEND is cut: every pixel is there
    }, sorted(stored)
    for name, ids_ in stored.items():
        for mid in ids_:
            source = guard.store.memory_info(mid).metadata["source"]
            assert not any(0xD800 <= ord(c) <= 0xDFFF for c in source), (name, source)
    guard.check()


# -- age -------------------------------------------------------------------------------------------------


@fuzz(15, deadline_s=60)
@given(now=times)
@example(now=dt.datetime.min)
@example(now=1e300)
@example(now=-1e300)
def test_age_fuzz(guard: Guard, now: Any) -> None:
    s = guard.store
    if not getattr(guard, "turns_added", False):
        s.add_many([f"Turn {i} of a conversation about harbour tides." for i in range(8)], scope="talk")
        guard.turns_added = True  # type: ignore[attr-defined]
    before = guard.count()
    got = guard.attempt("age", s.age, now=now, names=("timestamp",))
    if isinstance(got, dict):
        assert guard.count() == before  # nothing here has a ttl: aging forgets pixels, not memories
        guard.check()


# -- the CLI ---------------------------------------------------------------------------------------------


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


cli_text = st.one_of(
    weird_text.filter(lambda t: "\x00" not in t),
    st.sampled_from(SQLISH[:-1]),
    st.integers().map(str),
    st.sampled_from([str(n) for n in HUGE_INTS[:8]]),
)


@st.composite
def cli_argv(draw: st.DrawFn) -> list[str]:
    command = draw(
        st.sampled_from(
            ["add", "add-file", "search", "recall", "context", "answer", "stats", "show", "verify"]
        )
    )
    t = lambda: draw(cli_text)  # noqa: E731
    if command == "add":
        argv = ["add", t(), "--scope", t(), *draw(st.sampled_from([[], ["--role", t()], ["--kind", t()]]))]
    elif command == "add-file":
        argv = [
            "add",
            "--file",
            draw(
                st.sampled_from(
                    ["/nonexistent.pdf", "../../etc/passwd", "/etc/passwd", "/dev/zero", "x" * 5000 + ".png"]
                )
                | cli_text
            ),
            "--scope",
            "cli",
        ]
    elif command == "search":
        argv = ["search", t(), *draw(st.sampled_from([[], ["-k", t()], ["--scope", t()]]))]
    elif command == "recall":
        argv = ["recall", t(), *draw(st.sampled_from([[], ["--read"]]))]
    elif command in ("context", "answer"):
        tail = draw(st.sampled_from([[], ["--scope", t()], ["--mode", t()]]))
        argv = [command, t(), "--budget", t(), *tail]
        if command == "answer" and "--mode" in argv:
            argv[-2] = "--max-new-tokens"
    elif command == "show":
        argv = ["show", t()]
    else:
        argv = [command]
    return argv


def assert_cli_error(code: int, err: str) -> None:
    assert code != 0
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines, "a failing command printed nothing"
    if lines[0].startswith("usage: "):  # argparse: usage, then "optical-memory ...: error: ..." and exit 2
        assert code == 2 and ": error: " in lines[-1], err
    else:
        assert len(lines) == 1 and lines[0].startswith("optical-memory: error: "), err
        assert lines[0].removeprefix("optical-memory: error: ").strip()


@pytest.fixture
def cli_store(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[dict[str, Any]]:
    """A default-config store for the CLI: its path, a baseline turn, and how many memories it holds."""
    path = tmp_path_factory.mktemp("cli") / "store"
    with om.open(path, embedder=embedder) as store:
        mid = store.add(BASE_TURN, scope="cli", role="user")
    state = {"path": path, "mid": mid, "count": 1}
    yield state
    with om.open(path, embedder=embedder) as store:
        assert store.verify().ok and store.recall(mid).text == BASE_TURN


@fuzz(100, deadline_s=60)
@given(argv=cli_argv())
@example(argv=["recall", str(2**70)])  # OverflowError traceback
@example(argv=["recall", "../x"])
@example(argv=["search", "cat", "-k", "0"])
@example(argv=["add", "--file", "x" * 5000 + ".png", "--scope", "cli"])
def test_cli_fuzz(cli_store: dict[str, Any], embedder: Any, argv: list[str]) -> None:
    CASES["cli"] += 1
    code, _, err = cli(["--store", str(cli_store["path"]), "-q", *argv])
    assert "Traceback" not in err, err
    if code == 0 and argv[0] != "add":
        return
    if code:
        assert_cli_error(code, err)
    with om.open(cli_store["path"], embedder=embedder) as store:
        count = store.stats().memories
        if code:  # a failed command changed nothing
            assert count == cli_store["count"], argv
            assert store.verify().ok
            assert store.recall(cli_store["mid"]).text == BASE_TURN
        cli_store["count"] = count


def test_cli_hostile_stores_and_outputs(tmp_path: Path, embedder: Any) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a store")
    with om.open(tmp_path / "store", embedder=embedder) as store:
        doc = store.add(BASE_DOC, scope="cli", kind="document")
    cases = [
        ["--store", str(a_file), "stats"],  # FileExistsError traceback
        ["--store", str(tmp_path / "a\x00b"), "stats"],  # ValueError traceback
        ["--store", str(tmp_path / ("x" * 300)), "stats"],
        ["--store", str(a_file / "below"), "stats"],
        ["--store", str(tmp_path / "store"), "show", str(doc), "--out", str(a_file)],  # FileExistsError
        ["--store", str(tmp_path / "store"), "--model-dir", str(tmp_path / "nowhere"), "stats"],
        ["--store", str(tmp_path / "store"), "-q", "age"],
        ["--store", str(tmp_path / "store"), "context", "tide", "--mode", "vision"],
        ["--store", str(tmp_path / "store"), "add", "--file", str(tmp_path), "--scope", "cli"],
        ["--store", str(tmp_path / "store"), "nonsense-command"],
        [],
    ]
    for argv in cases:
        CASES["cli_hostile"] += 1
        code, _, err = cli(argv)
        if code:
            assert_cli_error(code, err)
    assert not (tmp_path / "a-file").is_dir()
    with om.open(tmp_path / "store", embedder=embedder) as store:
        assert store.verify().ok and store.memory_info(doc).scope == "cli"


def test_leftovers_of_the_fuzzing_are_clear_errors(guard: Guard, tmp_path: Path, embedder: Any) -> None:
    """Cases the fuzzing found outside its first reach: each is a clear error, and nothing changes."""
    for call, names in (
        (lambda: guard.store.age(progress="x"), ("progress",)),  # used to fail midway, once pages moved
        (lambda: guard.store.sync_vision(["1"]), ("page_ids",)),
    ):
        guard.attempt("leftovers", call, names=names)
    assert guard.store.vision_tokens(2**70) is None  # no page has an id SQL cannot hold
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    with pytest.raises(om.InvalidInput, match=r"cannot use .*a-file.* as a store folder"):
        om.OpticalMemory(in_the_way, embedder=embedder)


def test_cutting_a_huge_text_before_tokenising_keeps_all_the_model_reads(embedder: Any) -> None:
    """The embedder cuts a text to 64 characters per token it reads before tokenising (a 4 MB query took
    seconds to tokenise for nothing): 256 tokens of long words and wide gaps survive the cut intact."""
    words = [f"{w}{'s' * 20}" for w in ("lantern", "harbour", "copper", "meadow")]
    head = "      ".join(words[i % 4] for i in range(400))  # ~27 characters and 3+ tokens per word
    huge = head + " tail" * 800_000
    assert np.allclose(embedder.embed([huge])[0], embedder.embed([head])[0], atol=1e-5)
