"""The lexical index: BM25 over the words of every gist chunk, beside the FAISS index of its vectors.

terms    -> text normalised (NFKC, case-folded), split into words (Han, kana and Hangul runs into
            overlapping character pairs), a few English function words and plural -s dropped
hashed   -> each term as a keyed 64-bit BLAKE2b hash: the index holds no readable copy of the text
add      -> one row per gist chunk, keyed by its embedding id, in the caller's write transaction
search   -> the best chunks of the query's terms within the given scopes, best first

Why hashed terms, for every store and not only ``retain_text=False``: a lexical index of plain words is a
copy of the text (SQLite's FTS5 even keeps each word's position, so the text can be read back from it).
Each row here is the *sorted* multiset of its chunk's term hashes: no word order, no words, so dropping a
turn's text once its page closes leaves nothing readable behind, and one code path serves every store. The
hashes are keyed with a random per-store salt (``meta.lexical_salt``): a guess can be tested only by someone
holding the database, as with any searchable index, and a precomputed table of word hashes is useless.

On SQLite, FTS5 finds the rows and BM25 is computed here over the rows of the query's rarer terms (see
:func:`_sqlite_bm25`); the scope is an indexed column (its :func:`db.scope_key`) that the match
intersects, so a search never scores another tenant's rows (its IDF statistics are the whole table's).
PostgreSQL has no BM25: rows keep a
``tsvector`` of the hashes under a GIN index, and BM25 is computed in SQL over the matched rows, with
document frequencies and lengths taken within the searched scopes.

The index lives in SQL, written in the same transaction as the vectors it sits beside, so it needs no
index log: it is always at the store's generation. Rows are deleted with their embeddings (``delete``,
``delete_scope``, expiry); forgetting a page's pixels forgets neither its vectors nor its terms.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from .db import LEXICAL_TABLE as TABLE
from .db import LEXICAL_VOCAB as VOCAB
from .db import EmbeddingRow, MemoryRow, lexical_salt, scope_key
from .render import STAND_INS, restore

K1, B = 1.2, 0.75  # BM25's usual constants (FTS5's bm25() uses the same)
CANDIDATE_ROWS = 2_000  # SQLite: the rows a query's rarer terms may bring to be scored (see _sqlite_bm25)

# English function words a question shares with every turn ("what", "the", "is"): they only add noise and
# posting-list length. Content words are never dropped.
STOPWORDS = frozenset((
    "a", "about", "after", "again", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing", "for", "from", "had",
    "has", "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is",
    "it", "its", "itself", "just", "me", "my", "myself", "no", "nor", "not", "of", "off", "on", "once",
    "only", "or", "other", "our", "ours", "out", "over", "own", "s", "same", "she", "should", "so", "some",
    "such", "t", "than", "that", "the", "their", "theirs", "them", "then", "there", "these", "they", "this",
    "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when",
    "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours",
))  # fmt: skip

_WORD = re.compile(r"\w+|[^\w\s]")  # words, and single other characters: emoji and symbols are terms
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")


def terms(value: str) -> list[str]:
    """The index terms of ``value``, in order, repeats kept (BM25 counts them)."""
    out: list[str] = []
    for word in _WORD.findall(unicodedata.normalize("NFKC", value).casefold()):
        if len(word) == 1 and not word.isalnum() and unicodedata.category(word) != "So":
            continue  # punctuation, math and currency signs, marks: not terms (emoji and symbols are)
        for piece in _split_cjk(word):
            if piece in STOPWORDS:
                continue
            if len(piece) > 3 and piece.endswith("s") and not piece.endswith("ss") and piece.isascii():
                piece = piece[:-1]  # plurals and third persons: "codes" finds "code"
            out.append(piece)
    return out


def _split_cjk(word: str) -> Iterable[str]:
    """A word with Han, kana or Hangul runs in it: the other parts whole, each run as overlapping character
    pairs (a lone character as itself), since those scripts do not put spaces between words."""
    start = 0
    for m in _CJK.finditer(word):
        if m.start() > start:
            yield word[start : m.start()]
        run = m.group()
        yield from ([run] if len(run) == 1 else (run[i : i + 2] for i in range(len(run) - 1)))
        start = m.end()
    if start < len(word):
        yield word[start:]


def hashed(words: Iterable[str], salt: bytes) -> list[str]:
    """Each term as ``t`` + 16 hex digits of its keyed BLAKE2b hash (a letter first: PostgreSQL's parser
    keeps it one word)."""
    return ["t" + hashlib.blake2b(w.encode(), key=salt, digest_size=8).hexdigest() for w in words]


def document(value: str, salt: bytes) -> tuple[str, int]:
    """What a row stores for chunk text ``value``: its sorted term hashes, space separated, and how many."""
    found = sorted(hashed(terms(value), salt))
    return " ".join(found), len(found)


# -- schema (the table and its salt are made by ``db``) ----------------------------------------------------


def supported(dialect: str) -> bool:
    return dialect in ("sqlite", "postgresql")


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _id_column(dialect: str) -> str:
    """The column holding a row's embedding id: FTS5's rowid, PostgreSQL's id."""
    return "rowid" if dialect == "sqlite" else "id"


def backfill(session: Session) -> tuple[int, int]:
    """Index every embedding whose memory still has its text (a store from before schema 5): each chunk is
    the text from its ``char_start`` to the next chunk's, its stand-ins restored to the characters they
    stand for. Returns (chunks indexed, memories skipped)."""
    dialect = _dialect(session)
    if not supported(dialect):
        return 0, 0
    key = lexical_salt(session)
    indexed = skipped = 0
    column = _id_column(dialect)
    have = set(session.scalars(text(f"SELECT {column} FROM {TABLE}")))  # a migration run twice: kept
    rows = session.execute(
        select(
            MemoryRow.id,
            MemoryRow.scope,
            MemoryRow.text,
            MemoryRow.meta,
            EmbeddingRow.id,
            EmbeddingRow.char_start,
        )
        .join(EmbeddingRow, EmbeddingRow.memory_id == MemoryRow.id)
        .order_by(MemoryRow.id, EmbeddingRow.char_start)
    ).all()
    by_memory: dict[int, list[tuple[str, str | None, dict[str, str], int, int]]] = {}
    for mid, scope, body, meta, eid, start in rows:
        if eid in have:
            continue
        by_memory.setdefault(mid, []).append((scope, body, (meta or {}).get(STAND_INS, {}), eid, start))
    for chunks in by_memory.values():
        scope, body, stand_ins = chunks[0][:3]
        if body is None:
            skipped += 1
            continue
        ends = [start for *_, start in chunks[1:]] + [len(body)]  # (a memory's chunks are all or none)
        pieces = [
            (eid, restore(body[start:end], stand_ins))
            for (*_, eid, start), end in zip(chunks, ends, strict=True)
        ]
        add(session, scope, pieces, key)
        indexed += len(chunks)
    return indexed, skipped


# -- writes (in the caller's transaction) --------------------------------------------------------------------


def add(session: Session, scope: str, rows: Sequence[tuple[int, str]], salt: bytes) -> None:
    """Index chunks ``(embedding id, chunk text)`` of ``scope``."""
    dialect = _dialect(session)
    if not rows or not supported(dialect):
        return
    key = scope_key(scope)
    docs = [(eid, *document(chunk, salt)) for eid, chunk in rows]
    if dialect == "sqlite":
        session.execute(
            text(f"INSERT INTO {TABLE} (rowid, scope, terms) VALUES (:id, :scope, :terms)"),
            [{"id": eid, "scope": key, "terms": doc} for eid, doc, _ in docs],
        )
    else:
        session.execute(
            text(
                f"INSERT INTO {TABLE} (id, scope, n_terms, terms) "
                "VALUES (:id, :scope, :n, to_tsvector('simple', :terms))"
            ),
            [{"id": eid, "scope": key, "n": n, "terms": doc} for eid, doc, n in docs],
        )


def remove(session: Session, embedding_ids: Sequence[int]) -> None:
    """Delete the rows of these embeddings (PostgreSQL's cascade does it too; SQLite's FTS5 has no keys)."""
    dialect = _dialect(session)
    if not embedding_ids or not supported(dialect):
        return
    column = _id_column(dialect)
    ids = list(embedding_ids)
    for i in range(0, len(ids), 500):
        batch = ids[i : i + 500]
        marks = ", ".join(str(int(x)) for x in batch)
        session.execute(text(f"DELETE FROM {TABLE} WHERE {column} IN ({marks})"))


def orphans(session: Session) -> list[int]:
    """Ids of rows whose embedding is gone (SQLite's FTS5 table has no foreign key to keep them in step)."""
    dialect = _dialect(session)
    if not supported(dialect):
        return []
    column = _id_column(dialect)
    found = session.scalars(
        text(f"SELECT {column} FROM {TABLE} WHERE {column} NOT IN (SELECT id FROM embeddings)")
    )
    return [int(i) for i in found]


def remove_scope(session: Session, scope: str) -> None:
    dialect = _dialect(session)
    if not supported(dialect):
        return
    key = scope_key(scope)
    if dialect == "sqlite":  # the scope column is matched, not compared
        session.execute(text(f"DELETE FROM {TABLE} WHERE {TABLE} MATCH :q"), {"q": f"scope : {key}"})
    else:
        session.execute(text(f"DELETE FROM {TABLE} WHERE scope = :scope"), {"scope": key})


# -- search --------------------------------------------------------------------------------------------------


def search(
    session: Session, query: str, k: int, scopes: Sequence[str] | None, salt: bytes
) -> list[tuple[int, float]]:
    """The ``k`` best ``(embedding id, BM25 score)`` for ``query`` within ``scopes`` (None: all), best
    first; higher is better. A query with no index terms (only function words, only emoji) finds nothing."""
    dialect = _dialect(session)
    words = sorted(set(hashed(terms(query), salt)))
    if not words or not supported(dialect) or scopes == []:
        return []
    keys = None if scopes is None else sorted({scope_key(s) for s in scopes})
    k = min(k, 2**62)  # SQL's LIMIT is a 64-bit integer; no index holds more rows anyway
    if dialect == "sqlite":
        return _sqlite_bm25(session, words, k, keys)
    return _postgres_bm25(session, words, k, keys)


def _sqlite_bm25(
    session: Session, words: list[str], k: int, keys: list[str] | None
) -> list[tuple[int, float]]:
    """BM25 over the rows that hold one of the query's rarer terms, every query term counted in the score.

    A term in a third of the rows ("keep", "last" in a long chat) adds little to any row's score, yet FTS5
    ranking an OR of the query's terms walks and scores every row that has it: ~50 ms a query at 10M
    tokens. So the query's terms are taken rarest first while their rows add up to at most
    ``CANDIDATE_ROWS``; those rows are the candidates, and each is scored here on all the query's terms
    (the common ones included, with their low IDF), from the term hashes it stores. A row that shares only
    common terms with the query is no lexical match: Elasticsearch's common-terms rule. In a store smaller
    than ``CANDIDATE_ROWS`` rows every term is rare and this is exact BM25 over every matching row. A query
    whose every term is common (its rarest in more rows than that) is ranked by FTS5's own ``bm25()`` over
    all of them: slower, the same scores.

    Document frequencies come from the FTS5 index (an ``fts5vocab`` table); the row count and the mean
    row length from its averages record. Scores are FTS5's ``bm25()`` exactly (its IDF and row length,
    over the whole table: a store's scopes share one vocabulary)."""
    marks = ", ".join(f":w{i}" for i in range(len(words)))
    found = session.execute(
        text(f"SELECT term, doc FROM {VOCAB} WHERE term IN ({marks})"),
        {f"w{i}": w for i, w in enumerate(words)},
    ).all()
    df = {str(term): int(n) for term, n in found}
    if not df:
        return []  # no row holds any of the query's terms
    scoped = "" if keys is None else "scope : (" + " OR ".join(keys) + ") AND "
    rare: list[str] = []
    rows = 0
    for word in sorted(df, key=lambda w: (df[w], w)):
        if rows + df[word] > CANDIDATE_ROWS:
            break
        rare.append(word)
        rows += df[word]
    if not rare:
        ranked = session.execute(
            text(
                f"SELECT rowid, bm25({TABLE}, 0.0, 1.0) AS score FROM {TABLE} "
                f"WHERE {TABLE} MATCH :match ORDER BY score, rowid LIMIT :k"
            ),
            {"match": scoped + "terms : (" + " OR ".join(df) + ")", "k": k},
        )
        return [(int(eid), -float(score)) for eid, score in ranked]  # FTS5's bm25 is negated: lower is better
    n_rows, avgdl = _totals(session)
    # FTS5's own bm25(): its IDF (a term in over half the rows counts 1e-6), its row length (every column's
    # tokens: the terms and the scope key's one), so a row scores here exactly as FTS5 would score it
    idf = {w: max(math.log((n_rows - n + 0.5) / (n + 0.5)), 1e-6) for w, n in df.items()}
    scored = []
    for eid, doc in session.execute(
        text(f"SELECT rowid, terms FROM {TABLE} WHERE {TABLE} MATCH :match"),
        {"match": scoped + "terms : (" + " OR ".join(rare) + ")"},
    ):
        # Each term is "t" + 16 hex digits, space separated, and "t" is no hex digit: a substring count of a
        # term counts exactly its occurrences.
        norm = K1 * (1 - B + B * (doc.count(" ") + 2) / avgdl)  # its terms and its scope key
        score = 0.0
        for word, weight in idf.items():
            tf = doc.count(word)
            if tf:
                score += weight * tf * (K1 + 1) / (tf + norm)
        scored.append((int(eid), score))
    scored.sort(key=lambda hit: (-hit[1], hit[0]))
    return scored[:k]


def _totals(session: Session) -> tuple[int, float]:
    """The table's row count and mean tokens per row (both columns, as FTS5's bm25() counts them), from
    FTS5's averages record (row 1 of its ``_data`` table: the row count, then each column's total tokens,
    as SQLite varints)."""
    block = session.execute(text(f"SELECT block FROM {TABLE}_data WHERE id = 1")).scalar_one()
    n_rows, scope_tokens, term_tokens = _varints(bytes(block))[:3]
    return n_rows, max((scope_tokens + term_tokens) / max(n_rows, 1), 1.0)


def _varints(data: bytes) -> list[int]:
    """Decode a run of SQLite varints (big-endian, 7 bits a byte while the top bit is set; a ninth byte
    gives all 8)."""
    out: list[int] = []
    i = 0
    while i < len(data):
        value = 0
        for j in range(9):
            byte = data[i]
            i += 1
            if j == 8:
                value = (value << 8) | byte
                break
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        out.append(value)
    return out


def _postgres_bm25(
    session: Session, words: list[str], k: int, keys: list[str] | None
) -> list[tuple[int, float]]:
    where = "" if keys is None else "WHERE scope = ANY(:keys)"
    docs, avgdl = session.execute(
        text(f"SELECT count(*), coalesce(avg(n_terms), 0) FROM {TABLE} {where}"), {"keys": keys}
    ).one()
    if not docs:
        return []
    scoped = "" if keys is None else "AND l.scope = ANY(:keys)"
    found = session.execute(
        text(
            f"""
            WITH hit AS (
                SELECT l.id, l.n_terms, u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf
                FROM {TABLE} l, unnest(l.terms) u
                WHERE l.terms @@ to_tsquery('simple', :query) {scoped} AND u.lexeme = ANY(:words)
            ), df AS (
                SELECT lexeme, count(*) AS n FROM hit GROUP BY lexeme
            )
            SELECT hit.id, sum(
                ln(1 + (:docs - df.n + 0.5) / (df.n + 0.5))
                * hit.tf * ({K1} + 1) / (hit.tf + {K1} * (1 - {B} + {B} * hit.n_terms / :avgdl))
            ) AS score
            FROM hit JOIN df USING (lexeme)
            GROUP BY hit.id ORDER BY score DESC, hit.id LIMIT :k
            """
        ),
        {
            "query": " | ".join(words),
            "words": words,
            "keys": keys,
            "docs": float(docs),
            "avgdl": max(float(avgdl), 1.0),
            "k": k,
        },
    )
    return [(int(eid), float(score)) for eid, score in found]
