"""The lexical index and hybrid search, on real SQLite files and a real PostgreSQL server: terms, BM25
ranking, fusion, scoping and filters, consistency under delete / delete_scope / expiry, no readable text
in the database once a turn's text is dropped, and the migration of a schema-4 store."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from test_store import sql_engine, sql_rows, tiny, turn

import optical_memory as om
from optical_memory import lexical
from optical_memory.errors import InvalidInput
from optical_memory.retrieval import DENSE_WEIGHT, fuse

FACTS = [
    "the door code of the amber boathouse is 4417-K23",
    "my sister Marguerite moved to Tromsø last spring",
    "we should buy oat milk and three lemons on Friday",
    "the quarterly report for Halvorsen Logistics is due on the ninth",
]


def lexical_rows(tmp_path, backend) -> int:
    return sql_rows(tmp_path, backend, "select count(*) from lexical")[0][0]


# -- terms ---------------------------------------------------------------------------------------------------


def test_terms_fold_case_and_width_drop_function_words_and_plurals():
    assert lexical.terms("What are the Door CODES of the boathouse?") == ["door", "code", "boathouse"]
    assert lexical.terms("ＡＢＣ glass") == ["abc", "glass"]  # NFKC: full-width letters; "ss" kept
    assert lexical.terms("4417-K23") == ["4417", "k23"]


def test_terms_of_unspaced_scripts_are_character_pairs_and_emoji_are_terms():
    assert lexical.terms("東京タワー") == ["東京", "京タ", "タワ", "ワー"]
    assert lexical.terms("猫") == ["猫"]
    assert lexical.terms("pizza 🍕!") == ["pizza", "🍕"]  # "!" is punctuation, not a term
    assert lexical.terms("한국어 text") == ["한국", "국어", "text"]


def test_hashed_terms_are_keyed_and_sorted():
    salt_a, salt_b = b"a" * 16, b"b" * 16
    doc_a, n = lexical.document("zebra apple zebra", salt_a)
    assert n == 3 and doc_a.split() == sorted(doc_a.split())
    assert "zebra" not in doc_a and "apple" not in doc_a
    assert doc_a != lexical.document("zebra apple zebra", salt_b)[0]  # another store, other hashes
    assert doc_a == lexical.document("apple zebra zebra", salt_a)[0]  # word order is not kept


# -- search --------------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as s:
        yield s


def test_lexical_search_finds_exact_words_and_codes(store):
    ids = store.add_many(FACTS, scope="a")
    hits = store.search("4417-K23", scope="a", mode="lexical")
    assert [h.id for h in hits] == [ids[0]]
    assert hits[0].score > 0
    assert [h.id for h in store.search("Halvorsen", scope="a", mode="lexical")] == [ids[3]]
    assert store.search("what is the", scope="a", mode="lexical") == []  # only function words


def test_bm25_prefers_the_rarer_term_and_the_shorter_chunk(store):
    store.add_many([f"filler turn {i} about lemons" for i in range(6)], scope="a")
    rare = store.add("a turn about lemons and Marguerite", scope="a")
    short = store.add("Marguerite", scope="a")
    hits = store.search("lemons Marguerite", scope="a", mode="lexical", k=3)
    assert {h.id for h in hits[:2]} == {short, rare}  # the rare word outweighs the common one
    one = store.search("Marguerite", scope="a", mode="lexical", k=2)
    assert [h.id for h in one] == [short, rare]  # same term frequency: the shorter chunk first


def test_hybrid_ranks_what_both_indexes_agree_on_first(store):
    ids = store.add_many(FACTS, scope="a")
    hits = store.search("door code of the amber boathouse", scope="a", mode="hybrid", k=4)
    assert hits[0].id == ids[0]
    assert len(hits) == 4  # dense ranks every memory, so hybrid does too
    assert all(h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    cosine = store.search("door code of the amber boathouse", scope="a", mode="dense", k=1)[0].score
    assert hits[0].score == pytest.approx(DENSE_WEIGHT * cosine + (1 - DENSE_WEIGHT))  # the best BM25 too
    assert store.search("door code of the amber boathouse", scope="a")[0].id == ids[0]  # the default


def test_hybrid_finds_a_code_meaning_alone_misses_and_a_paraphrase_words_alone_miss(store):
    code = store.add("the ticket reference is QX7-PLM-2291, keep it", scope="a")
    store.add_many([f"the ticket for the concert number {i} is in my inbox" for i in range(20)], scope="a")
    sister = store.add("Ingrid, my sister, has her home in Tromsø.", scope="a")
    assert store.search("QX7-PLM-2291", scope="a", mode="hybrid", k=1)[0].id == code
    assert store.search("Where does my sibling live?", scope="a", mode="lexical") == []  # no shared word
    assert store.search("Where does my sibling live?", scope="a", mode="hybrid", k=1)[0].id == sister


def test_fuse_scores_every_chunk_on_both_indexes():
    by_vector = [(1, 0.8), (2, 0.6)]
    by_terms = [(3, 10.0), (1, 5.0)]
    fused = dict(fuse(by_vector, by_terms, {3: 0.4}))
    w = DENSE_WEIGHT
    assert fused[1] == pytest.approx(w * 0.8 + (1 - w) * 0.5)
    assert fused[2] == pytest.approx(w * 0.6)  # none of the query's words
    assert fused[3] == pytest.approx(w * 0.4 + (1 - w) * 1.0)  # its cosine read for the fusion
    assert [eid for eid, _ in fuse(by_vector, by_terms, {3: 0.4})] == sorted(fused, key=lambda e: -fused[e])
    assert fuse(by_vector, [], {}) == [(e, pytest.approx(w * c)) for e, c in by_vector]  # dense order


def fts5_bm25(tmp_path, query: str, scope: str) -> dict[int, float]:
    """FTS5's own bm25() of every row of ``scope`` holding one of the query's terms (the reference)."""
    with Session(sql_engine(tmp_path, None)) as s:
        salt = lexical.lexical_salt(s)
        words = " OR ".join(sorted(set(lexical.hashed(lexical.terms(query), salt))))
        match = f"scope : {lexical.scope_key(scope)} AND terms : ({words})"
        rows = s.execute(
            text("SELECT rowid, bm25(lexical, 0.0, 1.0) FROM lexical WHERE lexical MATCH :m"), {"m": match}
        )
        return {int(eid): -float(score) for eid, score in rows}


def test_sqlite_candidates_come_from_the_rarer_terms_and_are_scored_on_every_term(
    tmp_path, embedder, monkeypatch
):
    monkeypatch.setattr(lexical, "CANDIDATE_ROWS", 4)  # "keep" is in 7 rows: a common term here
    common = [f"we keep talking about the weather on day {i}" for i in range(6)]
    both, rare = "keep the spare key under the mat", "the spare key is with Ingrid in Tromsø today"
    with tiny(tmp_path, embedder) as store:
        store.add_many(common, scope="a")
        ids = store.add_many([both, rare], scope="a")
        other = store.add("keep talking, keep talking", scope="b")
        hits = store.search("Who keeps the spare key?", scope="a", mode="lexical", k=10)
        assert [h.id for h in hits] == ids  # a row with only the common "keep" is no match
        reference = fts5_bm25(tmp_path, "Who keeps the spare key?", "a")  # (the embedding ids are 1..n)
        assert len(reference) == 8  # FTS5 would have ranked every row of "a" with "keep" too
        for hit, eid in zip(hits, (7, 8), strict=True):
            assert hit.score == pytest.approx(reference[eid], rel=1e-9)  # FTS5's score, "keep" included
        monkeypatch.undo()  # every term rare: every matching row is scored here, each as FTS5 scores it
        query = "the weather on day 3, the spare key and Ingrid"
        reference = fts5_bm25(tmp_path, query, "a")
        hits = store.search(query, scope="a", mode="lexical", k=10)
        assert len(hits) == len(reference) == 8
        assert all(h.score == pytest.approx(reference[h.id], rel=1e-9) for h in hits)
        everywhere = store.search("keep talking", mode="lexical", k=10)  # every term common: FTS5 ranks
        assert len(everywhere) == 8 and everywhere[0].id == other
        assert other not in {h.id for h in store.search("keep talking", scope="a", mode="lexical", k=10)}


def test_sqlite_reads_the_row_count_and_mean_length_from_the_fts5_index(tmp_path, embedder):
    texts = ["the amber boathouse", "oat milk and three lemons", "Tromsø", "🙂 ok"]
    with tiny(tmp_path, embedder) as store:
        store.add_many(texts * 3, scope="a")
        store.delete(store.add("a turn to delete again", scope="b"))
    engine = sql_engine(tmp_path, None)
    with Session(engine) as s:
        n_rows, avgdl = lexical._totals(s)
        stored = s.execute(text("SELECT terms FROM lexical")).scalars().all()
    engine.dispose()
    assert n_rows == len(stored) == 12
    assert avgdl == pytest.approx(1 + sum(len(t.split()) for t in stored) / 12)  # a scope key and the terms
    assert avgdl == pytest.approx(1 + sum(len(lexical.terms(t)) for t in texts) / 4)


def test_every_mode_keeps_to_its_scopes_and_filters(store):
    a = store.add("the amber boathouse has a red door", scope="a", metadata={"topic": "house"})
    b = store.add("the amber boathouse has a blue door", scope="b", metadata={"topic": "house"})
    c = store.add("amber boathouse rowing schedule", scope="a", metadata={"topic": "sport"})
    for mode in ("dense", "lexical", "hybrid"):
        assert {h.id for h in store.search("amber boathouse", scope="a", mode=mode)} == {a, c}, mode
        assert {h.id for h in store.search("amber boathouse", scope=["a", "b"], mode=mode)} == {a, b, c}
        assert {h.id for h in store.search("amber boathouse", mode=mode)} == {a, b, c}
        found = store.search("amber boathouse", scope="a", mode=mode, filters={"topic": "house"})
        assert [h.id for h in found] == [a], mode


def test_filters_that_drop_most_hits_still_fill_k(store):
    store.add_many([f"the amber boathouse note {i}" for i in range(40)], scope="a")
    kept = [store.add(f"the amber boathouse note {i}", scope="a", metadata={"keep": True}) for i in range(3)]
    hits = store.search("amber boathouse note", scope="a", mode="lexical", k=3, filters={"keep": True})
    assert sorted(h.id for h in hits) == sorted(kept)


def test_a_bad_mode_is_named(store):
    store.add("anything", scope="a")
    with pytest.raises(InvalidInput, match="'fuzzy'"):
        store.search("anything", scope="a", mode="fuzzy")
    with pytest.raises(InvalidInput, match="'bm25'"):
        om.StoreConfig(retrieval="bm25")


# -- consistency ---------------------------------------------------------------------------------------------


def test_delete_delete_scope_and_expiry_remove_the_terms(tmp_path, embedder, backend):
    with tiny(tmp_path, embedder, backend) as store:
        ids = store.add_many(FACTS, scope="a")
        store.add_many(FACTS[:2], scope="b")
        short = store.add("the lemons expire soon", scope="a", ttl=0.5)
        assert lexical_rows(tmp_path, backend) == 7
        store.delete(ids[0])
        assert store.search("boathouse", scope="a", mode="lexical") == []
        assert lexical_rows(tmp_path, backend) == 6
        store.delete_scope("b")
        assert lexical_rows(tmp_path, backend) == 4
        time.sleep(0.6)
        assert store.search("lemons", scope="a", mode="lexical") != []  # oat milk and lemons: still there
        store.age()
        assert short not in {h.id for h in store.search("lemons", scope="a", mode="lexical")}
        assert lexical_rows(tmp_path, backend) == 3
    # what is left is exactly the embeddings that are left
    engine = sql_engine(tmp_path, backend)
    column = "rowid" if backend is None else "id"
    with engine.connect() as con:
        left = {r[0] for r in con.execute(text(f"select {column} from lexical"))}
        vectors = {r[0] for r in con.execute(text("select id from embeddings"))}
    engine.dispose()
    assert left == vectors


def test_a_dropped_text_leaves_no_readable_word_in_the_database(tmp_path, embedder):
    """retain_text=False (the default): once the turn's page closed, the word is in no byte of the SQLite
    file or its write-ahead log, and lexical search still finds the turn by it. (Not read back here: a
    read caches what the reader sees on the page, which shows the word by design.)"""
    secret = "Quintessentially"
    with tiny(tmp_path, embedder) as store:
        planted = store.add(f"the {secret} orange kayak is moored at pier nine", scope="a")
        store.add_many([turn(i) for i in range(12)], scope="a")
        store.age()
        assert [h.id for h in store.search(secret.lower(), scope="a", mode="lexical", k=1)] == [planted]
    assert sql_rows(tmp_path, None, f"select text from memories where id = {planted}") == [(None,)]
    raw = b"".join(p.read_bytes() for p in (tmp_path / "store").glob("memory.db*"))
    for word in (secret, "kayak", "moored"):
        for form in (word, word.lower(), word.upper()):
            assert form.encode() not in raw, form


def test_terms_and_vectors_are_of_the_characters_not_their_stand_ins(store, embedder):
    """A character no font has is drawn as a stand-in; the index holds the character (an emoji, here one no
    font draws: U+1FAE0 MELTING FACE), so searching for it finds the turn, and its name is not a term; the
    gist vector is the written text's too."""
    import numpy as np

    written = "that meeting 🫠 was long"
    melted = store.add(written, scope="a")
    assert "_stand_ins" in store.memory_info(melted).metadata
    assert [h.id for h in store.search("🫠", scope="a", mode="lexical")] == [melted]
    assert store.search("MELTING FACE", scope="a", mode="lexical") == []
    with store._core.session() as s:
        (stored,) = s.execute(text(f"select vector from embeddings where memory_id = {melted}")).one()
    np.testing.assert_allclose(np.frombuffer(stored, dtype="<f4"), embedder.embed([written])[0], atol=1e-6)


def test_a_schema_4_store_is_migrated_and_its_retained_text_indexed(tmp_path, embedder):
    with tiny(tmp_path, embedder) as store:
        ids = store.add_many(FACTS, scope="a")
    engine = sql_engine(tmp_path, None)
    with engine.begin() as con:  # back to schema 4: no lexical table, no salt
        con.execute(text("drop table lexical"))
        con.execute(text("delete from meta where key = 'lexical_salt'"))
        con.execute(text("update meta set value = '4' where key = 'schema_version'"))
    engine.dispose()
    with tiny(tmp_path, embedder) as store:
        assert [h.id for h in store.search("Halvorsen", scope="a", mode="lexical")] == [ids[3]]
        new = store.add("a new note on Halvorsen", scope="a")
        assert {h.id for h in store.search("Halvorsen", scope="a", mode="lexical")} == {ids[3], new}
    assert sql_rows(tmp_path, None, "select value from meta where key = 'schema_version'") == [("5",)]


def test_verify_finds_and_repair_removes_terms_whose_vector_is_gone(tmp_path, embedder):
    with tiny(tmp_path, embedder) as store:
        ids = store.add_many(FACTS, scope="a")
    engine = sql_engine(tmp_path, None)
    with engine.begin() as con:  # damage: a vector deleted behind the store's back (FTS5 has no foreign key)
        con.execute(text(f"delete from embeddings where memory_id = {ids[0]}"))
    engine.dispose()
    with tiny(tmp_path, embedder) as store:
        report = store.verify()
        assert report.lexical_orphans == 1 and not report.ok
        assert store.verify(repair=True).lexical_orphans == 1
        assert store.verify().ok
        assert store.search("boathouse", scope="a", mode="lexical") == []
