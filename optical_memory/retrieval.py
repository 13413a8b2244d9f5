"""Retrieval: finding memories again.

search   -> embed the query -> catch the index up with SQL -> per-scope FAISS search: chunks by cosine
            and the query's terms -> the lexical index in the same scopes: chunks by BM25
         -> every chunk either found scored on both (``mode="hybrid"``) -> one entry per memory, its best
            chunk's -> expired ones out -> filters on kind, role, tier, metadata -> hits, best first
memories -> the same filters in SQL, without a query, newest first
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Numeric, and_, case, cast, exists, func, select
from sqlalchemy.orm import Session

from . import lexical
from .config import RETRIEVAL_MODES, vision_tokens
from .core import FORGOTTEN, Core, live, tier_name, tier_of
from .db import EmbeddingRow, MemoryRow, PageRow, ScopeRow, SpanRow
from .errors import InvalidInput, MemoryNotFound, ScopeNotFound
from .types import Hit, MemoryInfo
from .validation import SQL_INT, check_count, check_metadata, check_scope, now, shown


def scopes(core: Core) -> list[str]:
    with core.lock, core.session() as s:
        return list(s.scalars(select(ScopeRow.name).order_by(ScopeRow.name)))


def scope_names(core: Core, s: Session, scope: object) -> list[str] | None:
    """``scope`` (None, one name, or a sequence of names) as a list of known scopes; None means all.
    An unknown name raises ``ScopeNotFound``."""
    if scope is None:
        return None
    if isinstance(scope, str):
        return [core.scope(s, scope).name]
    if not isinstance(scope, (Sequence, frozenset, set)):
        raise InvalidInput(f"scope must be a str, a sequence of str or None, got {type(scope).__name__}")
    names = list(dict.fromkeys(check_scope(name) for name in scope))
    known = set(s.scalars(select(ScopeRow.name).where(ScopeRow.name.in_(names))))
    missing = [name for name in names if name not in known]
    if missing:
        raise ScopeNotFound(f"no memories were ever stored in scope(s) {shown(missing)}")
    return names


# -- listing -------------------------------------------------------------------------------------------------


def memories(
    core: Core,
    *,
    scope: str | Sequence[str] | None = None,
    filters: Mapping[str, Any] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[MemoryInfo]:
    wanted = check_filters(core, filters)
    if "tier" in wanted:
        raise InvalidInput("memories() cannot filter on 'tier' (it is computed): filter the results")
    count = check_count(limit, "limit", allow_none=True)
    skip = check_count(offset, "offset", allow_none=False)
    with core.lock, core.session() as s:
        names = scope_names(core, s, scope)
        if names == []:
            return []
        stmt = select(MemoryRow).where(live(now()))
        if names is not None:
            stmt = stmt.where(MemoryRow.scope.in_(names))
        for key, value in wanted.items():
            if key in ("kind", "role"):
                stmt = stmt.where(getattr(MemoryRow, key) == value)
            else:
                stmt = stmt.where(_meta_equals(core, key, value))
        stmt = stmt.order_by(MemoryRow.created_at.desc(), MemoryRow.id.desc()).offset(skip).limit(count)
        return _infos(s, list(s.scalars(stmt)))


FIELDS = ("kind", "role", "tier")  # filter keys that are a memory's own fields; any other key is metadata's


def check_filters(core: Core, filters: object) -> dict[str, Any]:
    """``filters`` of search() and memories(), checked: every key a field (``FIELDS``) or a metadata key,
    every value the one JSON scalar it must equal (str, int, float, bool or None). There are no operators:
    a dict value such as ``{"$regex": ...}`` is refused, naming the operator, rather than matching nothing.
    A tier is a page side, as an int or as the string hits carry ("1024"), or "text" or "forgotten"."""
    wanted = check_metadata(filters, "filters")
    for key, value in wanted.items():
        if isinstance(value, dict) and any(str(op).startswith("$") for op in value):
            ops = ", ".join(repr(op) for op in value if str(op).startswith("$"))
            raise InvalidInput(
                f"filters[{shown(key)}]: operator(s) {ops} are not supported; a filter keeps memories whose "
                f"{shown(key)} equals one value, e.g. {{{key!r}: 'x'}}"
            )
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise InvalidInput(
                f"filters[{shown(key)}] compares one JSON scalar (str, int, float, bool or None), got "
                f"{type(value).__name__} {shown(value)}"
            )
        if isinstance(value, int) and not -SQL_INT <= value < SQL_INT:
            raise InvalidInput(f"filters[{shown(key)}] compares integers of at most 64 bits: {shown(value)}")
    if "kind" in wanted and wanted["kind"] not in ("turn", "document"):
        raise InvalidInput(f"filters['kind'] is 'turn' or 'document', got {shown(wanted['kind'])}")
    if "role" in wanted and not isinstance(wanted["role"], (str, type(None))):
        raise InvalidInput(f"filters['role'] is a str or None, got {shown(wanted['role'])}")
    if "tier" in wanted:
        wanted["tier"] = _tier_filter(core, wanted["tier"])
    return wanted


def _tier_filter(core: Core, tier: object) -> str:
    """A tier filter as hits spell it ("text", "1024", "forgotten"), for a tier this store has."""
    if isinstance(tier, int) and not isinstance(tier, bool):
        tier = str(tier)
    known = ["text", *(str(t.side) for t in core.config.aging.tiers), FORGOTTEN]
    if tier in known:
        return str(tier)
    if isinstance(tier, str) and tier.isdecimal():  # a side an earlier ladder left pages at
        with core.session() as s:
            if s.scalar(select(PageRow.id).where(PageRow.side == int(tier)).limit(1)) is not None:
                return tier
    raise InvalidInput(
        f"filters['tier'] must be one of this store's tiers {', '.join(known)} (a side as int or str), "
        f"got {shown(tier)}"
    )


def memory_info(core: Core, memory_id: int) -> MemoryInfo:
    with core.lock, core.session() as s:
        row = core.memory(s, memory_id)
        if row.expires_at is not None and row.expires_at <= now():
            raise MemoryNotFound(f"memory {shown(memory_id)} has expired")
        return _infos(s, [row])[0]


def _infos(s: Session, rows: list[MemoryRow]) -> list[MemoryInfo]:
    sides: dict[int, list[int | None]] = {}
    for memory_id, side in s.execute(
        select(SpanRow.memory_id, PageRow.side)
        .join(PageRow, PageRow.id == SpanRow.page_id)
        .where(SpanRow.memory_id.in_([m.id for m in rows]))
    ):
        sides.setdefault(memory_id, []).append(side)
    return [
        MemoryInfo(
            id=m.id,
            scope=m.scope,
            kind=m.kind,  # type: ignore[arg-type]
            role=m.role,
            created_at=m.created_at,
            tier=tier_of(m.paged, sides.get(m.id, [])),
            metadata=dict(m.meta or {}),
            expires_at=m.expires_at,
        )
        for m in rows
    ]


def _meta_equals(core: Core, key: str, value: str | int | float | bool | None) -> ColumnElement[bool]:
    """SQL for "metadata[key] is the JSON scalar ``value``" (typed: a string "1" is not the number 1)."""
    dialect = core.engine.dialect.name
    if dialect == "postgresql":  # json operators: no jsonb cast of whole rows
        kind = func.json_typeof(MemoryRow.meta[key])
        text = MemoryRow.meta[key].as_string()  # ->>, read only once the type is known
        if value is None:
            return kind == "null"
        if isinstance(value, bool):
            return and_(kind == "boolean", text == ("true" if value else "false"))
        if isinstance(value, (int, float)):
            return case((kind == "number", cast(text, Numeric) == value), else_=False)
        return and_(kind == "string", text == value)
    if dialect != "sqlite":
        raise InvalidInput(f"metadata filters need SQLite or PostgreSQL, not {dialect}")
    each = func.json_each(MemoryRow.meta).table_valued("key", "type", "atom")
    if value is None:
        typed = each.c.type == "null"
    elif isinstance(value, bool):
        typed = each.c.type == ("true" if value else "false")
    elif isinstance(value, (int, float)):
        typed = and_(each.c.type.in_(["integer", "real"]), each.c.atom == value)
    else:
        typed = and_(each.c.type == "text", each.c.atom == value)
    return exists().select_from(each).where(each.c.key == key, typed)


# -- search --------------------------------------------------------------------------------------------------


# Hybrid scoring: DENSE_WEIGHT * cosine + (1 - DENSE_WEIGHT) * BM25 / the query's best BM25. Chosen on
# benchmarks/bench_retrieval.py's two conversations at 100k and 1M tokens, against reciprocal rank fusion
# (k = 10 or 60, weighted or not), min-max and z-score normalisation (README, Retrieval).
DENSE_WEIGHT = 0.5
CANDIDATES = 50  # each index's depth before fusion (more when filters may drop hits)


def search(
    core: Core,
    query: str,
    *,
    k: int = 5,
    scope: str | Sequence[str] | None = None,
    filters: Mapping[str, Any] | None = None,
    mode: str | None = None,
) -> list[Hit]:
    if not isinstance(query, str) or not query.strip():
        raise InvalidInput(f"query must be a non-empty string, got {shown(query)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InvalidInput(f"k must be a positive int, got {shown(k)}")
    mode = core.config.retrieval if mode is None else mode
    if mode not in RETRIEVAL_MODES:
        raise InvalidInput(f"mode must be one of {', '.join(map(repr, RETRIEVAL_MODES))}, got {shown(mode)}")
    wanted = check_filters(core, filters)
    with core.lock, core.session() as s:
        names = scope_names(core, s, scope)
    if names == []:
        return []
    # the query is embedded with the lock released: other calls go on meanwhile (ingest embeds so too)
    vector = None if mode == "lexical" else core.embedder.embed([query])[0]
    with core.lock:
        if vector is not None:
            core.sync_index()
        fetch = k * (8 if wanted else 3)
        if mode == "hybrid":
            fetch = max(fetch, CANDIDATES)
        while True:
            by_vector: list[tuple[int, float]] = []
            by_terms: list[tuple[int, float]] = []
            with core.session() as s:
                if vector is not None:
                    by_vector = core.index.search(vector, fetch, names)
                if mode != "dense":
                    by_terms = lexical.search(s, query, fetch, names, core.lexical_salt)
                if mode == "hybrid":
                    assert vector is not None
                    ranked = _by_memory(
                        s, fuse(by_vector, by_terms, _cosines(s, vector, by_vector, by_terms))
                    )
                else:
                    ranked = _by_memory(s, by_vector or by_terms)
            hits = _hits(core, ranked, wanted, k)
            if len(hits) >= k or max(len(by_vector), len(by_terms)) < fetch:
                return hits
            fetch *= 4


def fuse(
    by_vector: list[tuple[int, float]], by_terms: list[tuple[int, float]], cosines: dict[int, float]
) -> list[tuple[int, float]]:
    """Chunks found by either index, each scored on both: ``DENSE_WEIGHT`` times its cosine plus the rest
    times its BM25 over the best BM25 of the query (0 for a chunk without the query's terms), best first.

    The cosine keeps its own scale and only BM25 is normalised: a query whose words match nothing well
    still gets the best lexical chunk a full lexical share, but a chunk both close in meaning and sharing
    the query's rare words outranks one that has only either."""
    best = max((score for _, score in by_terms), default=0.0)
    terms = {eid: score / best for eid, score in by_terms} if best > 0 else {}
    cos = dict(by_vector) | cosines
    fused = {
        eid: DENSE_WEIGHT * cos.get(eid, 0.0) + (1 - DENSE_WEIGHT) * terms.get(eid, 0.0)
        for eid in dict.fromkeys([e for e, _ in by_vector] + [e for e, _ in by_terms])
    }
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def _cosines(
    s: Session, query: np.ndarray, by_vector: list[tuple[int, float]], by_terms: list[tuple[int, float]]
) -> dict[int, float]:
    """The cosine of the query with each lexical hit the dense search did not return (read from SQL)."""
    have = {eid for eid, _ in by_vector}
    missing = [eid for eid, _ in by_terms if eid not in have]
    if not missing:
        return {}
    rows = s.execute(select(EmbeddingRow.id, EmbeddingRow.vector).where(EmbeddingRow.id.in_(missing))).all()
    if not rows:
        return {}
    vectors = np.frombuffer(b"".join(v for _, v in rows), dtype="<f4").reshape(len(rows), -1)
    return dict(zip([eid for eid, _ in rows], (vectors @ query).tolist(), strict=True))


def _by_memory(s: Session, raw: list[tuple[int, float]]) -> list[tuple[int, float, int]]:
    """Chunk hits (embedding id, score), best first, as one entry per memory, its best chunk's: (memory id,
    score, that chunk's char_start)."""
    if not raw:
        return []
    chunk = {
        eid: (mid, start)
        for eid, mid, start in s.execute(
            select(EmbeddingRow.id, EmbeddingRow.memory_id, EmbeddingRow.char_start).where(
                EmbeddingRow.id.in_([eid for eid, _ in raw])
            )
        )
    }
    out: list[tuple[int, float, int]] = []
    seen: set[int] = set()
    for eid, score in raw:
        if eid in chunk and chunk[eid][0] not in seen:
            seen.add(chunk[eid][0])
            out.append((chunk[eid][0], score, chunk[eid][1]))
    return out


def _hits(core: Core, ranked: list[tuple[int, float, int]], wanted: dict[str, Any], k: int) -> list[Hit]:
    if not ranked:
        return []
    best = {mid: (score, start) for mid, score, start in ranked}
    # Plain column queries, not ORM objects: this is the search hot path.
    with core.session() as s:
        rows = {
            row.id: row
            for row in s.execute(
                select(
                    MemoryRow.id,
                    MemoryRow.scope,
                    MemoryRow.kind,
                    MemoryRow.role,
                    MemoryRow.paged,
                    MemoryRow.meta,
                ).where(MemoryRow.id.in_(list(best)), live(now()))
            )
        }
        spans: dict[int, list[Any]] = {}
        for sp in s.execute(
            select(
                SpanRow.memory_id,
                SpanRow.page_id,
                SpanRow.char_start,
                SpanRow.char_end,
                PageRow.side,
                PageRow.text_tokens,
            )
            .join(PageRow, PageRow.id == SpanRow.page_id)
            .where(SpanRow.memory_id.in_(list(best)))
        ):
            spans.setdefault(sp.memory_id, []).append(sp)
        page_sides = {sp.page_id: sp.side for v in spans.values() for sp in v}
        page_text = {sp.page_id: sp.text_tokens for v in spans.values() for sp in v}
    hits = []
    for mid, sc, char_start in ranked:
        if mid not in rows:
            continue  # expired
        m = rows[mid]
        page_id = None
        tier = "text"
        compression = None
        if m.paged:
            mine = sorted(spans.get(mid, []), key=lambda sp: sp.char_start)
            hit_span = next(
                (sp for sp in mine if sp.char_start <= char_start < max(sp.char_end, sp.char_start + 1)),
                mine[0] if mine else None,
            )
            if hit_span is not None:
                page_id = hit_span.page_id
                side = page_sides.get(page_id)
                tier = tier_name(side)
                if side and page_text.get(page_id):
                    compression = round(page_text[page_id] / vision_tokens(side), 2)
        hit = Hit(
            id=mid,
            score=sc,
            tier=tier,
            page_id=page_id,
            scope=m.scope,
            kind=m.kind,
            role=m.role,
            metadata=dict(m.meta or {}),
            compression=compression,
        )
        if _matches(hit, wanted):
            hits.append(hit)
        if len(hits) == k:
            break
    return hits


def _matches(hit: Hit, wanted: Mapping[str, Any]) -> bool:
    for key, value in wanted.items():
        if key in ("kind", "role", "tier"):
            if getattr(hit, key) != value:
                return False
        elif key not in hit.metadata or not _json_equal(hit.metadata[key], value):
            return False
    return True


def _json_equal(found: object, wanted: object) -> bool:
    """Equality as ``memories(filters=...)`` compares in SQL: typed (the string "1" is not the number 1,
    true is not 1, null matches only a key that is there and null), numbers by value (1 matches 1.0)."""
    if isinstance(found, bool) or isinstance(wanted, bool):
        return isinstance(found, bool) and isinstance(wanted, bool) and found == wanted
    if isinstance(found, (int, float)) and isinstance(wanted, (int, float)):
        return found == wanted
    return type(found) is type(wanted) and found == wanted
