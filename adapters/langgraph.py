"""LangGraph adapter: optical memory as a LangGraph ``BaseStore`` (langgraph 1.x), on the public API only.

    from optical_memory.adapters.langgraph import OpticalMemoryStore

    memory = OpticalMemoryStore(optical_memory.open("agent-memory"), ttl={"default_ttl": 24 * 60})
    graph = builder.compile(store=memory)  # nodes use runtime.store (or a `store: BaseStore` parameter)
    memory.put(("users", "alice"), "diet", {"text": "Alice is allergic to cashews."})
    memory.search(("users", "alice"), query="what can't Alice eat?")

How LangGraph's model maps onto the store:

* A namespace is a scope: its labels, each percent-encoded (``urllib.parse.quote(label, safe="")``), joined
  by "/" after the optional ``scope_prefix`` (``("users", "alice")`` -> ``"users/alice"``). The mapping is
  injective; ``list_namespaces`` maps scopes back and ignores every scope or memory that is not this
  adapter's (other users of the same store file keep their scopes to themselves).
* An item is one ``kind="document"`` memory in that scope. Its page (and gist embedding) shows the item's
  indexed fields as ``field: text`` lines (``index={"fields": [...]}`` at construction, ``index=[...]`` per
  put, default the whole value); the exact value, key and timestamps ride in the memory's metadata, so
  ``get`` returns the value exactly as JSON round-trips it. ``index=False`` items are stored and listed
  but never returned by a query. A put replaces the memory (the new one is written before the old one is
  deleted; ``created_at`` is kept).
* ``ttl`` (minutes, LangGraph's unit) becomes the memory's time to live: its page walks down the
  forgetting ladder over that lifetime and is deleted when it runs out; expired items are hidden at once.
  ``refresh_ttl`` on get/search extends the lifetime, but a page already downsampled keeps its tier.
* Query search is the store's search (hybrid by default: ``SearchItem.score`` is its fused score, see
  ``OpticalMemory.search``); without a query, items come newest first (by ``updated_at``). Filters
  (``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``, nested equality) apply to top-level value
  fields, in Python, over the candidates of the namespace prefix.

Ops in one ``batch`` are validated before any of them runs; reads see the store as it was before the
batch's puts, and of several puts to one key the last wins (as in LangGraph's own stores). Bad input
raises ``InvalidInput`` (``InvalidNamespace`` for namespaces, which is also LangGraph's
``InvalidNamespaceError``) naming the value. ``abatch`` runs ``batch`` in a worker thread; one adapter's
puts run one at a time, so racing puts to a key leave one version (two adapters over one store could
briefly leave two: reads show the newest, and the next put removes both).

Costs: a get or put finds its key by a metadata filter over its namespace's rows; a search or
``list_namespaces`` looks at every scope name in the store (and ``list_namespaces`` makes one small query
per namespace of this adapter). ``age_on_write`` runs ``store.age()``, a pass over every page of the
store, after each writing batch: measured on a busy 2-core box with 2,000 items in 100 namespaces,
that pass took 0.2 s and a put 0.6 s with it, 0.05 s without. On larger stores pass
``age_on_write=False`` and call ``store.age()`` on a schedule (expired items are hidden meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal, cast
from urllib.parse import quote, unquote

from ..errors import InvalidInput, MemoryNotFound, MissingDependency, ScopeNotFound
from ..store import OpticalMemory
from ..types import Hit, MemoryInfo, Recall

try:
    from langgraph.store.base import (
        NOT_PROVIDED,
        BaseStore,
        GetOp,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
        NamespacePath,
        NotProvided,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        TTLConfig,
        get_text_at_path,
        tokenize_path,
    )
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the LangGraph adapter needs langgraph: pip install 'optical-memory[langgraph]' ({e})"
    ) from e

__all__ = ["InvalidNamespace", "OpticalMemoryStore"]

# Metadata keys of an item's memory (flat: the store filters on top-level keys).
PREFIX = "langgraph_prefix"  # the adapter's scope_prefix: marks the memory as an item of this adapter
KEY = "langgraph_key"
VALUE = "langgraph_value"
CREATED = "langgraph_created_at"  # epoch seconds
UPDATED = "langgraph_updated_at"
INDEXED = "langgraph_indexed"  # False: stored, listed, never returned by a query
TTL = "langgraph_ttl_minutes"

DEFAULT_MAX_VALUE_BYTES = 256 * 1024  # JSON bytes: every put renders its fields to pages and embeds them
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
MAX_SCOPE = 255  # the store's longest scope name


class InvalidNamespace(InvalidInput, InvalidNamespaceError):
    """A namespace LangGraph would refuse (empty, non-str or empty labels, "." or NUL in a label, the
    reserved root "langgraph"), or one too long to be a scope. Also a LangGraph ``InvalidNamespaceError``."""


# -- validation (every op is checked before any op runs) ---------------------------------------------------


def _labels(namespace: object, what: str) -> tuple[str, ...]:
    """``namespace`` as a tuple of labels, each a non-empty str without "." or NUL (LangGraph's rules;
    "*" is a label like any other, and a wildcard only in list_namespaces' match paths)."""
    if isinstance(namespace, (str, bytes)) or not isinstance(namespace, (tuple, list)):
        raise InvalidNamespace(
            f"{what} must be a tuple of str labels, got {type(namespace).__name__} {namespace!r}"
        )
    for label in namespace:
        if not isinstance(label, str):
            raise InvalidNamespace(
                f"{what} {tuple(namespace)!r}: labels must be str, got {type(label).__name__} {label!r}"
            )
        if not label:
            raise InvalidNamespace(f"{what} {tuple(namespace)!r}: labels cannot be empty strings")
        if "." in label or "\x00" in label:
            raise InvalidNamespace(
                f"{what} {tuple(namespace)!r}: label {label!r} contains a period ('.') or a NUL byte"
            )
    return tuple(namespace)


def _writable(namespace: object) -> tuple[str, ...]:
    labels = _labels(namespace, "namespace")
    if not labels:
        raise InvalidNamespace("namespace cannot be empty: put needs at least one label")
    if labels[0] == "langgraph":
        raise InvalidNamespace(f'namespace {labels!r}: the root label "langgraph" is reserved by LangGraph')
    return labels


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidInput(f"key must be a str, got {type(key).__name__} {key!r}")
    if not key:
        raise InvalidInput("key must be a non-empty string, got ''")
    problem = _json_problem(key, f"key {key!r}")
    if problem:  # PostgreSQL's json operators cannot read such a key back
        raise InvalidInput(problem)
    return key


def _count(value: object, what: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidInput(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _ttl_minutes(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and math.isfinite(ttl) and ttl > 0:
        return float(ttl)
    raise InvalidInput(f"ttl must be None or a positive finite number of minutes, got {ttl!r}")


def _json_problem(obj: object, path: str) -> str | None:
    """What keeps ``obj`` from being stored as JSON that PostgreSQL's jsonb also accepts, or None."""
    if obj is None or isinstance(obj, (bool, int)):
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{path} is {obj!r} (JSON has no NaN or infinity)"
    if isinstance(obj, str):
        if "\x00" in obj:
            return f"{path} holds a NUL character (\\x00)"
        if any(unicodedata.category(c) == "Cs" for c in obj):
            return f"{path} holds a lone surrogate (not valid Unicode)"
        return None
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            problem = _json_problem(item, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                return f"{path} has a non-str key {k!r}"
            problem = _json_problem(v, f"{path}.{k}") or _json_problem(k, f"{path} key {k!r}")
            if problem:
                return problem
        return None
    return f"{path} is a {type(obj).__name__} ({obj!r:.60})"


def _value(value: object, key: str, namespace: tuple[str, ...], max_bytes: int) -> dict[str, Any]:
    """The value as the plain JSON dict that will be stored (tuples become lists, as in PostgresStore)."""
    where = f"value of key {key!r} in namespace {namespace!r}"
    if not isinstance(value, Mapping):
        got = f"{type(value).__name__} {value!r:.80}"
        raise InvalidInput(f"{where} must be a dict (or None to delete), got {got}")
    try:
        problem = _json_problem(value, "value")
    except RecursionError:
        problem = "value is nested too deeply"
    if problem:
        raise InvalidInput(
            f"{where}: {problem}; only JSON (dicts with str keys, lists, str, numbers, bools, None) is stored"
        )
    encoded = json.dumps(value, ensure_ascii=False)
    size = len(encoded.encode())
    if size > max_bytes:
        raise InvalidInput(
            f"{where} is {size} bytes of JSON, more than max_value_bytes={max_bytes} "
            "(every put renders and embeds its fields): store large documents with optical_memory's add()"
        )
    return dict(json.loads(encoded))


def _index(index: object) -> Literal[False] | list[str] | None:
    if index is None or index is False:
        return index
    if isinstance(index, (list, tuple)) and all(isinstance(p, str) and p for p in index):
        return list(index)
    raise InvalidInput(f"index must be None, False or a list of field paths (str), got {index!r}")


def _filter(flt: object) -> dict[str, Any] | None:
    """A search filter: top-level value fields to a value (nested equality) or an operator dict."""
    if flt is None:
        return None
    if not isinstance(flt, Mapping):
        raise InvalidInput(f"filter must be a dict, got {type(flt).__name__} {flt!r}")
    for field, condition in flt.items():
        if not isinstance(field, str):
            raise InvalidInput(f"filter keys must be str, got {field!r} in {flt!r}")
        if isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition):
            unknown = [k for k in condition if k not in OPERATORS]
            if unknown:
                raise InvalidInput(
                    f"filter on {field!r} uses unknown operator(s) {unknown}; known: {list(OPERATORS)}"
                )
            for op in ("$gt", "$gte", "$lt", "$lte"):
                bound = condition.get(op)
                if op in condition and (isinstance(bound, bool) or not isinstance(bound, (int, float, str))):
                    raise InvalidInput(f"filter {op} on {field!r} needs a number or a str, got {bound!r}")
    return dict(flt)


def _match_conditions(conditions: object) -> tuple[MatchCondition, ...]:
    if conditions is None:
        return ()
    if not isinstance(conditions, (tuple, list)):
        raise InvalidInput(f"match_conditions must be a tuple of MatchCondition, got {conditions!r}")
    checked = []
    for c in conditions:
        if not isinstance(c, MatchCondition) or c.match_type not in ("prefix", "suffix"):
            raise InvalidInput(f"match condition must be a MatchCondition of 'prefix' or 'suffix', got {c!r}")
        checked.append(MatchCondition(c.match_type, _labels(c.path, f"{c.match_type} path")))
    return tuple(checked)


# -- filters (LangGraph's JSON semantics, over top-level value fields) --------------------------------------


def _compare(actual: Any, wanted: Any) -> bool:
    """Whether a value field matches a filter value: nested equality, or all operators of an operator dict."""
    if isinstance(wanted, Mapping):
        if any(k.startswith("$") for k in wanted):
            return all(_apply(actual, op, bound) for op, bound in wanted.items())
        return isinstance(actual, Mapping) and all(_compare(actual.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, (list, tuple)):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_compare(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


def _apply(actual: Any, op: str, bound: Any) -> bool:
    """One operator. Ordering compares numbers with numbers and strings with strings; anything else
    (a missing field included) does not match, where LangGraph's InMemoryStore would raise."""
    if op == "$eq":
        return bool(actual == bound)
    if op == "$ne":
        return bool(actual != bound)
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (actual, bound))
    if not numbers and not (isinstance(actual, str) and isinstance(bound, str)):
        return False
    if op == "$gt":
        return bool(actual > bound)
    if op == "$gte":
        return bool(actual >= bound)
    if op == "$lt":
        return bool(actual < bound)
    return bool(actual <= bound)


def _matches(value: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    return not flt or all(_compare(value.get(field), wanted) for field, wanted in flt.items())


def _does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = condition.path
    if len(namespace) < len(path):
        return False
    start = 0 if condition.match_type == "prefix" else len(namespace) - len(path)
    labels = namespace[start : start + len(path)]
    return all(p == "*" or p == label for p, label in zip(path, labels, strict=True))


# -- the page text ---------------------------------------------------------------------------------------


def _show(text: str) -> str:
    """Text for the page: as is, unless it holds control characters (then JSON-escaped)."""
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _field_lines(value: Mapping[str, Any], paths: Sequence[str]) -> list[str]:
    lines = []
    for path in paths:
        if path == "$":
            for k, v in value.items():
                shown = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, sort_keys=True)
                lines.append(f"{_show(k)}: {_show(shown)}")
        else:
            texts = get_text_at_path(value, tokenize_path(path))
            lines += [f"{path}: {_show(t)}" for t in texts if t.strip()]
    return lines


def _when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


# -- the store --------------------------------------------------------------------------------------------


class OpticalMemoryStore(BaseStore):
    """A LangGraph store kept in an optical memory store (``optical_memory.open(...)``).

    ``scope_prefix``: put before every scope this adapter writes ("" : namespaces are the scopes).
    ``index``: ``{"fields": [...]}`` (LangGraph's IndexConfig; "dims", if given, must be the store's
    embedding size; the store's own embedder is used, so "embed" is refused). ``ttl``: LangGraph's
    TTLConfig, ``{"default_ttl": minutes, "refresh_on_read": bool}``. ``age_on_write``: run
    ``store.age()`` after each batch that writes, so items move down the ladder and expired ones are
    deleted (its cost grows with the whole store's pages: on a large store, pass False and age it on a
    schedule). ``max_value_bytes``: the largest value accepted, as JSON.
    """

    supports_ttl = True

    def __init__(
        self,
        store: OpticalMemory,
        *,
        scope_prefix: str = "",
        index: Mapping[str, Any] | None = None,
        ttl: Mapping[str, Any] | None = None,
        age_on_write: bool = True,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ) -> None:
        if not isinstance(store, OpticalMemory):
            raise InvalidInput(f"store must be an open optical_memory store, got {type(store).__name__}")
        self.store = store
        self.scope_prefix = self._check_prefix(scope_prefix)
        self.fields = self._check_index(index)
        self.index_config = {"fields": list(self.fields)}
        self.ttl_config = self._check_ttl_config(ttl)
        self.age_on_write = _flag(age_on_write, "age_on_write")
        self.max_value_bytes = _count(max_value_bytes, "max_value_bytes", minimum=1)
        self._writing = threading.Lock()  # puts of this adapter run one at a time: a key never forks

    @staticmethod
    def _check_prefix(prefix: object) -> str:
        if not isinstance(prefix, str):
            raise InvalidInput(f"scope_prefix must be a str, got {type(prefix).__name__} {prefix!r}")
        if prefix != prefix.strip() or prefix.endswith("/") or len(prefix) > MAX_SCOPE // 2:
            raise InvalidInput(
                f"scope_prefix must not end in '/' or whitespace, nor exceed {MAX_SCOPE // 2} characters, "
                f"got {prefix!r}"
            )
        if any(unicodedata.category(c) in ("Cc", "Cs") for c in prefix):
            raise InvalidInput(f"scope_prefix {prefix!r} contains control or surrogate characters")
        return prefix

    def _check_index(self, index: object) -> tuple[str, ...]:
        if index is None:
            return ("$",)
        if not isinstance(index, Mapping):
            raise InvalidInput(f"index must be a dict like {{'fields': ['text']}}, got {index!r}")
        unknown = sorted(set(index) - {"fields", "dims"})
        if unknown:
            raise InvalidInput(
                f"index keys {unknown} are not supported: the store embeds with its own embedder "
                f"({self.store.embedder.name}); give only 'fields' (and 'dims')"
            )
        dims = index.get("dims")
        if dims is not None and dims != self.store.embedder.dim:
            made = self.store.embedder.dim
            raise InvalidInput(
                f"index dims={dims!r}, but the store's embedder makes {made}-dimensional vectors"
            )
        fields = index.get("fields") or ["$"]
        checked = _index(fields)
        assert checked  # a non-empty list
        return tuple(checked)

    @staticmethod
    def _check_ttl_config(ttl: object) -> TTLConfig | None:
        if ttl is None:
            return None
        if not isinstance(ttl, Mapping):
            raise InvalidInput(f"ttl must be a TTLConfig dict, got {type(ttl).__name__} {ttl!r}")
        unknown = sorted(set(ttl) - {"default_ttl", "refresh_on_read"})
        if unknown:
            raise InvalidInput(
                f"ttl keys {unknown} are not supported (known: default_ttl, refresh_on_read); expired items "
                "are hidden at once and deleted by store.age(), which age_on_write runs after writes"
            )
        _ttl_minutes(ttl.get("default_ttl"))
        _flag(ttl.get("refresh_on_read", True), "ttl refresh_on_read")
        return cast(TTLConfig, dict(ttl))

    def __repr__(self) -> str:
        return f"OpticalMemoryStore({self.store!r}, scope_prefix={self.scope_prefix!r})"

    # -- namespaces <-> scopes -----------------------------------------------------------------------------

    def scope(self, namespace: tuple[str, ...]) -> str:
        """The store scope holding ``namespace``'s items (``InvalidNamespace`` if it cannot be one)."""
        body = "/".join(quote(label, safe="") for label in _labels(namespace, "namespace"))
        scope = f"{self.scope_prefix}/{body}" if self.scope_prefix else body
        if len(scope) > MAX_SCOPE:
            raise InvalidNamespace(
                f"namespace {namespace!r} is {len(scope)} characters as a scope, at most {MAX_SCOPE} allowed"
            )
        return scope

    def _existing_scope(self, namespace: tuple[str, ...]) -> str | None:
        """The scope of ``namespace``, or None where no item can be (empty, or too long to be a scope)."""
        if not namespace:
            return None
        try:
            return self.scope(namespace)
        except InvalidNamespace:
            return None

    def namespace(self, scope: str) -> tuple[str, ...] | None:
        """The namespace a scope of this adapter holds; None for any other scope."""
        body = scope
        if self.scope_prefix:
            if not scope.startswith(self.scope_prefix + "/"):
                return None
            body = scope[len(self.scope_prefix) + 1 :]
        labels = tuple(unquote(part) for part in body.split("/"))
        try:
            if not body or self.scope(labels) != scope:  # not canonical: not written by this adapter
                return None
        except InvalidNamespace:
            return None
        return labels

    def _scopes_under(self, prefix: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        """This adapter's scopes whose namespace starts with ``prefix``: {scope: namespace}."""
        found = {}
        for scope in self.store.scopes():
            namespace = self.namespace(scope)
            if namespace is not None and namespace[: len(prefix)] == prefix:
                found[scope] = namespace
        return found

    # -- batch ---------------------------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run LangGraph ops: all are validated first; reads run in order, then the puts (last per key)."""
        if isinstance(ops, (str, bytes, Mapping)) or not isinstance(ops, Iterable):
            raise InvalidInput(f"batch takes an iterable of ops, got {type(ops).__name__}")
        checked = [self._check_op(op) for op in ops]
        results: list[Result] = []
        puts: dict[tuple[str, str], PutOp] = {}
        for op in checked:
            if isinstance(op, GetOp):
                results.append(self._get(op))
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                scope = self._existing_scope(op.namespace)
                if scope is not None:  # a delete where nothing can be stored is a no-op
                    puts.pop((scope, op.key), None)
                    puts[(scope, op.key)] = op
                results.append(None)
        if puts:
            self._put(list(puts.values()))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """``batch`` in a worker thread: the store is thread-safe and its work (embedding, rendering) is
        CPU-bound, so the event loop stays free."""
        return await asyncio.to_thread(self.batch, list(ops))

    def _check_op(self, op: object) -> Op:
        if isinstance(op, GetOp):
            namespace = _labels(op.namespace, "namespace")
            return GetOp(namespace, _key(op.key), _flag(op.refresh_ttl, "refresh_ttl"))
        if isinstance(op, SearchOp):
            query = op.query
            if query is not None and not isinstance(query, str):
                raise InvalidInput(f"query must be a str or None, got {type(query).__name__} {query!r}")
            return SearchOp(
                _labels(op.namespace_prefix, "namespace_prefix"),
                _filter(op.filter),
                _count(op.limit, "limit"),
                _count(op.offset, "offset"),
                query if query and query.strip() else None,
                _flag(op.refresh_ttl, "refresh_ttl"),
            )
        if isinstance(op, ListNamespacesOp):
            return ListNamespacesOp(
                _match_conditions(op.match_conditions),
                None if op.max_depth is None else _count(op.max_depth, "max_depth", minimum=1),
                _count(op.limit, "limit"),
                _count(op.offset, "offset"),
            )
        if isinstance(op, PutOp):
            key = _key(op.key)
            if op.value is None:
                namespace = _labels(op.namespace, "namespace")
                return PutOp(namespace, key, None)
            namespace = _writable(op.namespace)
            self.scope(namespace)  # long namespaces fail now, not halfway through the batch
            value = _value(op.value, key, namespace, self.max_value_bytes)
            return PutOp(namespace, key, value, index=_index(op.index), ttl=_ttl_minutes(op.ttl))
        known = "GetOp, SearchOp, PutOp, ListNamespacesOp"
        raise InvalidInput(f"unknown op {type(op).__name__} {op!r:.80}; known: {known}")

    # -- reads ---------------------------------------------------------------------------------------------

    def _versions(self, scope: str, key: str, *, limit: int | None = None) -> list[MemoryInfo]:
        """The live memories of ``key`` in ``scope``, newest first (one, unless a put was interrupted)."""
        try:
            return self.store.memories(
                scope=scope, filters={PREFIX: self.scope_prefix, KEY: key}, limit=limit
            )
        except ScopeNotFound:
            return []

    def _get(self, op: GetOp) -> Item | None:
        scope = self._existing_scope(op.namespace)
        found = [] if scope is None else self._versions(scope, op.key, limit=1)
        if not found:
            return None
        if op.refresh_ttl:
            self._refresh(found[0].id, found[0].metadata)
        return self._item(op.namespace, found[0].metadata)

    def _refresh(self, memory_id: int, metadata: Mapping[str, Any]) -> None:
        minutes = metadata.get(TTL)
        if minutes is None:
            return
        with contextlib.suppress(MemoryNotFound):  # replaced or deleted since it was read: nothing to do
            self.store.set_ttl(memory_id, minutes * 60)

    @staticmethod
    def _item(namespace: tuple[str, ...], metadata: Mapping[str, Any]) -> Item:
        return Item(
            value=metadata[VALUE],
            key=metadata[KEY],
            namespace=namespace,
            created_at=_when(metadata[CREATED]),
            updated_at=_when(metadata[UPDATED]),
        )

    def _search(self, op: SearchOp) -> list[SearchItem]:
        scopes = self._scopes_under(op.namespace_prefix)
        if not scopes or op.limit == 0:
            return []
        wanted = op.offset + op.limit
        if op.query:
            found = self._query(op.query, scopes, op.filter, wanted)
        else:
            found = [(info, None) for info in self._listing(scopes, op.filter, wanted)]
        kept = found[op.offset : wanted]
        if op.refresh_ttl:
            for memory, _ in kept:
                self._refresh(memory.id, memory.metadata)
        return [
            SearchItem(
                namespace=scopes[memory.scope],
                key=memory.metadata[KEY],
                value=memory.metadata[VALUE],
                created_at=_when(memory.metadata[CREATED]),
                updated_at=_when(memory.metadata[UPDATED]),
                score=score,
            )
            for memory, score in kept
        ]

    def _listing(
        self, scopes: Mapping[str, tuple[str, ...]], flt: Mapping[str, Any] | None, wanted: int
    ) -> list[MemoryInfo]:
        """Up to ``wanted`` items of ``scopes`` matching ``flt``, newest first; value filters run here, so
        this pages through the scopes' items until enough match."""
        kept: list[MemoryInfo] = []
        seen: set[tuple[str, str]] = set()
        page = max(256, 2 * wanted)
        start = 0
        while len(kept) < wanted:
            batch = self.store.memories(
                scope=list(scopes), filters={PREFIX: self.scope_prefix}, limit=page, offset=start
            )
            for memory in batch:
                ident = (memory.scope, memory.metadata[KEY])
                if ident not in seen and _matches(memory.metadata[VALUE], flt):
                    kept.append(memory)
                seen.add(ident)  # an older version of a key is never shown
            if len(batch) < page:
                break
            start += page
        return kept[:wanted]

    def _query(
        self, query: str, scopes: Mapping[str, tuple[str, ...]], flt: Mapping[str, Any] | None, wanted: int
    ) -> list[tuple[Any, float | None]]:
        """Up to ``wanted`` indexed items of ``scopes`` matching ``flt``, best score first."""
        k = max(wanted, 4) * (4 if flt else 1)
        while True:
            hits = self.store.search(
                query, k=k, scope=list(scopes), filters={PREFIX: self.scope_prefix, INDEXED: True}
            )
            kept: list[tuple[Hit, float | None]] = []
            seen: set[tuple[str, str]] = set()
            for hit in hits:
                ident = (hit.scope, hit.metadata[KEY])
                if ident not in seen and _matches(hit.metadata[VALUE], flt):
                    kept.append((hit, hit.score))
                seen.add(ident)
            if len(kept) >= wanted or len(hits) < k:
                return kept[:wanted]
            k *= 4

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = op.match_conditions or ()
        found = set()
        for scope, namespace in self._scopes_under(()).items():
            if not all(_does_match(c, namespace) for c in conditions):
                continue
            if self.store.memories(scope=scope, filters={PREFIX: self.scope_prefix}, limit=1):
                found.add(namespace if op.max_depth is None else namespace[: op.max_depth])
        return sorted(found)[op.offset : op.offset + op.limit]

    # -- writes --------------------------------------------------------------------------------------------

    def _put(self, puts: list[PutOp]) -> None:
        """Write each value as a new memory, then delete the versions it replaces (a failure leaves the old
        value in place); deletes only delete."""
        with self._writing:
            replaced: list[int] = []
            by_scope: dict[str, list[dict[str, Any]]] = {}
            for op in puts:
                scope = self.scope(op.namespace)
                old = self._versions(scope, op.key)
                replaced += [m.id for m in old]
                if op.value is not None:
                    created = old[0].metadata[CREATED] if old else None
                    by_scope.setdefault(scope, []).append(self._memory_item(op, created))
            for scope, items in by_scope.items():
                self._add(scope, items)
            for memory_id in replaced:
                with contextlib.suppress(MemoryNotFound):  # gone already (swept, or another writer's)
                    self.store.delete(memory_id)
        if self.age_on_write:
            self.store.age()

    def _memory_item(self, op: PutOp, created: float | None) -> dict[str, Any]:
        assert op.value is not None
        now = time.time()
        value = dict(op.value)
        paths = self.fields if op.index is None or op.index is False else op.index
        lines = _field_lines(value, paths)
        indexed = op.index is not False and bool(lines)
        if not lines:  # nothing to index: the page shows the whole value, and queries skip it
            lines = _field_lines(value, ["$"]) or ["{}"]
        metadata = {
            PREFIX: self.scope_prefix,
            KEY: op.key,
            VALUE: value,
            CREATED: now if created is None else created,
            UPDATED: now,
            INDEXED: indexed,
            TTL: op.ttl,
        }
        ttl_s = None if op.ttl is None else op.ttl * 60
        return {"text": "\n".join(lines), "metadata": metadata, "timestamp": now, "ttl": ttl_s}

    def _add(self, scope: str, items: list[dict[str, Any]]) -> None:
        # a character no font has is drawn as a stand-in; the value itself is stored exactly
        self.store.add_many(items, scope=scope, kind="document")

    # -- what the memory holds now -------------------------------------------------------------------------

    def recall(self, namespace: tuple[str, ...], key: str) -> Recall:
        """An item as the optical memory holds it now: its page read back by the store's reader at the page's
        current tier (so an old item comes back as faded as its page), where ``get`` returns the exact value.
        This is what to put in a model's context to let it remember the way the store forgets.

        Raises ``MemoryNotFound`` naming the key when the namespace holds no such item.
        """
        scope = self._existing_scope(_labels(namespace, "namespace"))
        found = [] if scope is None else self._versions(scope, _key(key), limit=1)
        if not found:
            raise MemoryNotFound(f"no item {key!r} in namespace {namespace!r}")
        return self.store.recall(found[0].id, read=True)

    # -- LangGraph's convenience methods, with this adapter's errors for bad namespaces and keys ----------

    def get(self, namespace: tuple[str, ...], key: str, *, refresh_ttl: bool | None = None) -> Item | None:
        _labels(namespace, "namespace")
        return super().get(namespace, _key(key), refresh_ttl=refresh_ttl)

    async def aget(
        self, namespace: tuple[str, ...], key: str, *, refresh_ttl: bool | None = None
    ) -> Item | None:
        _labels(namespace, "namespace")
        return await super().aget(namespace, _key(key), refresh_ttl=refresh_ttl)

    def search(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        query: str | None = None,
        filter: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        _labels(namespace_prefix, "namespace_prefix")
        return super().search(
            namespace_prefix, query=query, filter=filter, limit=limit, offset=offset, refresh_ttl=refresh_ttl
        )

    async def asearch(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        query: str | None = None,
        filter: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        _labels(namespace_prefix, "namespace_prefix")
        return await super().asearch(
            namespace_prefix, query=query, filter=filter, limit=limit, offset=offset, refresh_ttl=refresh_ttl
        )

    def put(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
    ) -> None:
        _writable(namespace)
        super().put(namespace, _key(key), value, index, ttl=ttl)

    async def aput(
        self,
        namespace: tuple[str, ...],
        key: str,
        value: Mapping[str, Any],
        index: Literal[False] | list[str] | None = None,
        *,
        ttl: float | NotProvided | None = NOT_PROVIDED,
    ) -> None:
        _writable(namespace)
        await super().aput(namespace, _key(key), value, index, ttl=ttl)

    def delete(self, namespace: tuple[str, ...], key: str) -> None:
        _labels(namespace, "namespace")
        super().delete(namespace, _key(key))

    async def adelete(self, namespace: tuple[str, ...], key: str) -> None:
        _labels(namespace, "namespace")
        await super().adelete(namespace, _key(key))

    def list_namespaces(
        self,
        *,
        prefix: NamespacePath | None = None,
        suffix: NamespacePath | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        _labels(prefix or (), "prefix")
        _labels(suffix or (), "suffix")
        return super().list_namespaces(
            prefix=prefix, suffix=suffix, max_depth=max_depth, limit=limit, offset=offset
        )

    async def alist_namespaces(
        self,
        *,
        prefix: NamespacePath | None = None,
        suffix: NamespacePath | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        _labels(prefix or (), "prefix")
        _labels(suffix or (), "suffix")
        return await super().alist_namespaces(
            prefix=prefix, suffix=suffix, max_depth=max_depth, limit=limit, offset=offset
        )
