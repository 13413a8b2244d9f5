"""The recall experiment (issue 6, part 2): planted facts, token parsing, the summary's arithmetic, and one
small real run (real store, MiniLM, FAISS, RapidOCR) whose outputs are checked against what was planted."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from optical_memory.errors import InvalidInput
from optical_memory.recall_experiment import _summarise, make_facts, parse_tokens, recall


def test_make_facts_is_seeded_unique_and_log_spaced() -> None:
    facts = make_facts((10_000, 100_000), 8, seed=3)
    assert facts == make_facts((10_000, 100_000), 8, seed=3)
    assert facts != make_facts((10_000, 100_000), 8, seed=4)
    assert len(facts) == 16
    assert len({f.question for f in facts}) == 16  # one subject per fact: no question has two answers
    for f in facts:
        assert f.answer in f.statement
        assert 1 <= f.age_tokens < f.checkpoint
    for checkpoint in (10_000, 100_000):
        ages = [f.age_tokens for f in facts if f.checkpoint == checkpoint]
        assert ages == sorted(ages) and len(set(ages)) == len(ages)
        assert ages[0] == 200 and ages[-1] == checkpoint - 1
        ratios = [b / a for a, b in itertools.pairwise(ages)]
        assert max(ratios) / min(ratios) < 1.1  # log-spaced: a constant ratio, up to rounding


def test_make_facts_refuses_more_facts_than_subjects() -> None:
    with pytest.raises(InvalidInput, match="at most 324 facts per checkpoint, got 400"):
        make_facts((1000, 2000), 400, seed=0)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("100k", 100_000), ("1M", 1_000_000), ("10m", 10_000_000), ("1.5M", 1_500_000), ("2_500", 2500)],
)
def test_parse_tokens(text: str, tokens: int) -> None:
    assert parse_tokens(text) == tokens


@pytest.mark.parametrize("text", ["abc", "10x", "500", "", "-1M", "nank"])
def test_parse_tokens_names_the_bad_value(text: str) -> None:
    with pytest.raises(InvalidInput, match=repr(text).replace("\\", "\\\\")):
        parse_tokens(text)


def test_summary_arithmetic() -> None:
    def row(tier: str, rank: int | None, survived: bool, base: int | None, image: int, text: int) -> dict:
        return {
            "checkpoint": 1000,
            "tier": tier,
            "age_turns": 5,
            "rank": rank,
            "survived": survived,
            "baseline_rank": base,
            "image_tokens": image,
            "text_rag_tokens": text,
        }

    rows = [
        row("512", 1, True, 1, 64, 640),
        row("512", 4, False, 6, 128, 640),
        row("512", None, False, None, 64, 320),
        row("text", 2, True, 2, 40, 40),
    ]
    by_tier = {r["tier"]: r for r in _summarise(rows)}
    low = by_tier["512"]
    assert low["facts"] == 3
    assert low["recall_at_1"] == round(1 / 3, 4)
    assert low["recall_at_5"] == round(2 / 3, 4)
    assert low["recall_at_10"] == round(2 / 3, 4)
    assert low["survived"] == round(1 / 3, 4)
    assert low["found_and_read_at_5"] == round(1 / 3, 4)
    assert low["baseline_recall_at_5"] == round(1 / 3, 4)
    assert low["image_tokens_mean"] == round(256 / 3, 1)
    assert low["text_rag_over_image"] == round((1600 / 3) / (256 / 3), 2)
    assert by_tier["all"]["facts"] == 4
    assert [r["tier"] for r in _summarise(rows)] == ["text", "512", "all"]


def test_recall_refuses_bad_arguments_before_writing(tmp_path) -> None:
    with pytest.raises(InvalidInput, match="checkpoints"):
        recall(tmp_path / "a", checkpoints=())
    with pytest.raises(InvalidInput, match="facts must be a positive int, got 0"):
        recall(tmp_path / "b", checkpoints=(5000,), facts=0)
    with pytest.raises(InvalidInput, match="at most 216 facts per checkpoint, got 300"):
        recall(tmp_path / "c", checkpoints=(5000, 10_000, 20_000), facts=300)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_cli_names_a_bad_checkpoint(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "optical_memory.cli", "experiment", "recall", "--out", str(tmp_path / "o"),
         "--checkpoints", "100k,lots"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--checkpoints: a token count must look like 100k, 1M or 250000, got 'lots'" in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recall")
    report = recall(out, checkpoints=(3000, 9000), facts=3, age_every=3000, window=3000, queries=6)
    return out, report


def test_small_run_writes_its_files(small_run) -> None:
    out, report = small_run
    assert sorted(p.name for p in out.iterdir()) == [
        "recall.png",
        "results.csv",
        "summary.json",
        "summary.md",
    ]
    document = json.loads((out / "summary.json").read_text())
    assert document["checkpoints"] == [3000, 9000]
    assert [c["tokens"] >= c_want for c, c_want in zip(document["scale"], (3000, 9000), strict=True)] == [
        True
    ] * 2
    assert document["summary"] == report.summary
    assert "| tier |" in report.markdown and "## Scale at each checkpoint" in report.markdown


def test_small_run_asks_every_planted_fact_at_every_later_checkpoint(small_run) -> None:
    _, report = small_run
    facts = make_facts((3000, 9000), 3, seed=0)
    first, second = sorted({r["checkpoint"] for r in report.rows})
    asked_first = {r["fact"] for r in report.rows if r["checkpoint"] == first}
    asked_second = {r["fact"] for r in report.rows if r["checkpoint"] == second}
    assert {f.id for f in facts if f.checkpoint == 3000} <= asked_first
    assert asked_second == {f.id for f in facts}
    by_fact = {f.id: f for f in facts}
    for r in report.rows:
        fact = by_fact[r["fact"]]
        if (fact.checkpoint == 3000 and r["checkpoint"] == first) or (
            fact.checkpoint == 9000 and r["checkpoint"] == second
        ):
            # planted at the first user turn at or after its position (younger by up to a turn or two) and
            # measured when the checkpoint's last whole turn is in (older by up to one turn)
            assert fact.age_tokens - 400 <= r["age_tokens"] <= fact.age_tokens + 400


def test_small_run_finds_and_reads_back_young_facts(small_run) -> None:
    _, report = small_run
    assert all(r["rank"] is not None for r in report.rows)  # unique subjects: every fact is in its top 10
    # nothing forgotten yet, and the same vectors plus the lexical index: at least text RAG's first places
    assert sum(r["rank"] == 1 for r in report.rows) >= sum(r["baseline_rank"] == 1 for r in report.rows)
    for r in report.rows:
        if r["tier"] in ("text", "1024", "640"):
            assert r["survived"], r  # RapidOCR reads these tiers verbatim
        assert r["text_rag_tokens"] > 0 and r["image_tokens"] > 0
    tiers = {r["tier"] for r in report.rows}
    assert "text" in tiers and tiers - {"text"}  # young facts in the text tier, older ones on pages


def test_small_run_scale_figures_are_consistent(small_run) -> None:
    _, report = small_run
    for c in report.scale:
        for key in ("search_ms", "build_context_image_ms"):
            assert 0 < c[key]["p50"] <= c[key]["p99"]
        assert c["index_vectors"] >= c["memories"] > 0
        assert sum(t["memories"] for t in c["tiers"]) >= c["memories"]  # a turn may span two pages
        assert c["blob_bytes"] > 0 and c["index_bytes"] > 0
    assert [w["tokens"] for w in report.windows] == sorted(w["tokens"] for w in report.windows)
    assert all(w["tokens_per_min"] > 0 for w in report.windows)
