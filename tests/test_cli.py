"""The command line, run in-process over a real store (the backends are shared with the other tests)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from optical_memory import demo
from optical_memory.cli import main
from optical_memory.config import StoreConfig
from optical_memory.store import OpticalMemory


def run(capsys, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def test_cli_round_trip(tmp_path, capsys, embedder, monkeypatch):
    store = str(tmp_path / "store")
    base = ["--store", store, "-q"]
    ids = []
    turns = [("user", "The boiler was serviced on the 3rd of May."), ("assistant", "We paint the fence.")]
    for role, text in turns:
        out = run(capsys, *base, "add", text, "--scope", "home", "--role", role)
        ids += json.loads(out)["ids"]
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("A turn read from standard input."))
    ids += json.loads(run(capsys, *base, "add", "--scope", "home"))["ids"]
    note = tmp_path / "note.md"
    note.write_text("# Boiler\n\nThe boiler manual lives in the blue folder.\n")
    [doc] = json.loads(run(capsys, *base, "add", "--file", str(note), "--scope", "home"))["ids"]

    out = run(capsys, *base, "search", "when was the boiler serviced?", "--scope", "home", "-k", "2")
    assert out.splitlines()[2].split()[0] == str(ids[0])
    out = run(capsys, *base, "recall", str(ids[1]))
    assert "tier text, source retained" in out and "paint the fence" in out
    assert json.loads(run(capsys, *base, "age"))["packed"] == 0  # 3 turns are within the 16-turn text tier
    # the document's 1024 px page is read a band at a time when asked: nothing to read ahead
    assert json.loads(run(capsys, *base, "age", "--preread"))["preread"] == 0
    out = run(capsys, *base, "stats")
    assert "4 memories in 1 scope(s)" in out and "1024" in out
    out = run(capsys, *base, "show", str(doc), "--out", str(tmp_path / "pages"))
    [png] = out.split()
    assert Image.open(png).size == (1024, 1024)
    assert "has no page image" in run(capsys, *base, "show", str(ids[0]))
    out = run(capsys, *base, "context", "boiler", "--scope", "home", "--budget", "200")
    assert "serviced on the 3rd of May" in out and "tokens used of 200" in out
    out = run(
        capsys, *base, "context", "boiler manual", "--scope", "home", "--mode", "image", "--target", "claude"
    )
    assert '"image_url"' in out  # the document's page, as a band
    assert "images priced for claude, text counted in cl100k_base tokens" in out
    assert json.loads(run(capsys, *base, "verify"))["pages_checked"] == 1
    share = run(capsys, *base, "context", "boiler", "--scope", "home", "--recent-share", "0.5")
    assert "Recent conversation:" in share
    with pytest.raises(SystemExit) as bad:
        main([*base, "context", "boiler", "--recent-share", "often"])
    assert bad.value.code == 2 and "'often'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        main([*base, "context", "boiler", "--recent-share", "1.5"])
    assert bad.value.code == 2 and "recent_share" in capsys.readouterr().err


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys, embedder):
    with pytest.raises(SystemExit) as exit_info:
        main(["--store", str(tmp_path / "s"), "recall", "99"])
    assert exit_info.value.code == 2
    expected = f"optical-memory: error: no memory with id 99 in {str(tmp_path / 's')!r}"
    assert capsys.readouterr().err.strip() == expected


def test_conversation_is_seeded_long_and_holds_every_fact(counter):
    first = list(demo.conversation(seed=0, min_tokens=100_000, count=counter.count))
    again = list(demo.conversation(seed=0, min_tokens=100_000, count=counter.count))
    assert first == again
    assert sum(counter.count(t.text) for t in first) >= 100_000
    planted = [t for t in first if t.fact]
    assert [t.fact for t in planted] == list(demo.FACTS)
    assert all(t.fact.statement in t.text and t.role == "user" for t in planted if t.fact)
    assert list(demo.conversation(seed=1, min_tokens=1_000, count=counter.count)) != first[:50]


@pytest.mark.slow
def test_demo_job_runs_end_to_end_on_small_pages(tmp_path, embedder):
    store = OpticalMemory(tmp_path / "store", config=StoreConfig(), embedder=embedder)
    report = demo.run(tmp_path, min_tokens=0, store=store)
    assert report.sessions >= max(f.session for f in demo.FACTS)
    tiers = {t.tier: t for t in report.stats.tiers}
    assert tiers["text"].memories == 16 and tiers["1024"].pages >= 1
    assert len(report.answers) == len(demo.FACTS) and sum(a.found for a in report.answers) >= 4
    assert report.page_images and all(p.exists() for p in report.page_images.values())
    assert set(report.contexts) == {"text", "image"}
    # the shipped optical-mini reads the same pages beside RapidOCR
    assert not report.readers_not_run and len(report.readers) == len(report.answers)
    for answer, row in zip(report.answers, report.readers, strict=True):
        assert set(row) == {"rapidocr", "optical-mini"} and all(r.seconds > 0 for r in row.values())
        assert row["rapidocr"].found == answer.found or answer.tier == "text"
