"""``optical-memory add`` as a new user drives it: several files, JSON Lines, page breaks, mixed-up options,
and the CLI's help and pipes. In-process over a real store, as tests/test_cli.py does; the pipe test runs
the installed command in a real shell pipeline."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from optical_memory.cli import build_parser, main
from optical_memory.store import open_store

CLI = str(Path(sys.executable).with_name("optical-memory"))


def run(capsys, store: Path, *argv: str) -> str:
    main(["--store", str(store), "-q", *argv])
    return capsys.readouterr().out


def refused(capsys, store: Path, *argv: str) -> str:
    """The one-line error of a CLI call that must fail with exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--store", str(store), "-q", *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip()


def stored(store: Path) -> int:
    with open_store(store) as s:
        return len(s.memories())


def test_several_files_are_all_or_nothing_and_the_bad_one_is_named(tmp_path, capsys, embedder):
    store = tmp_path / "store"
    plain, bad = tmp_path / "plain.txt", tmp_path / "bad.md"
    plain.write_text("The boiler manual lives in the blue folder.\n")
    bad.write_bytes(b"caf\xe9 au lait\n")  # Latin-1, not UTF-8
    error = refused(capsys, store, "add", "--file", str(plain), "--file", str(bad), "--scope", "home")
    assert str(bad) in error and "not UTF-8" in error
    assert stored(store) == 0  # the good file before it was not stored either: a rerun adds no duplicate
    bad.write_text("Café au lait at nine.\n")
    ids = json.loads(run(capsys, store, "add", "--file", str(plain), "--file", str(bad), "--scope", "home"))
    assert len(ids["ids"]) == 2 and stored(store) == 2


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "text is empty"),
        (b"  \n\t\n", "text is empty"),
        (b"\x1b[31mred\x07\n", "control character"),
    ],
)
def test_a_file_that_cannot_be_stored_is_named(tmp_path, capsys, embedder, content, says):
    file = tmp_path / "notes.txt"
    file.write_bytes(content)
    error = refused(capsys, tmp_path / "store", "add", "--file", str(file), "--scope", "home")
    assert str(file) in error and says in error


def test_a_form_feed_in_a_text_file_starts_a_new_page(tmp_path, capsys, embedder):
    file = tmp_path / "report.txt"
    file.write_text("Chapter one: the harbour.\fChapter two: the lighthouse.\n\f\f")
    store = tmp_path / "store"
    [doc] = json.loads(run(capsys, store, "add", "--file", str(file), "--scope", "docs"))["ids"]
    with open_store(store, retain_text=True) as s:
        pages = s.page_image(doc)
        assert len(pages) == 2  # two short sections: a page each, not one page
        hits = s.search("lighthouse", scope="docs", mode="lexical")
        assert [h.id for h in hits] == [doc]


def test_jsonl_adds_many_turns_with_their_fields(tmp_path, capsys, embedder, monkeypatch):
    lines = [
        {"text": "I moved to Lisbon in May 🎉", "role": "user", "timestamp": 1_700_000_000},
        {"text": "Noted: Lisbon since May.", "role": "assistant", "metadata": {"turn": 2}},
        {"text": "東京の天気は晴れです", "role": "user", "scope": "bob"},
        {"text": "A travel guide to Lisbon", "kind": "document"},
        {"text": "Back from Lisbon.", "role": "user", "timestamp": "2023-11-14T22:13:20Z"},
        {"text": "Welcome back!", "role": "assistant", "timestamp": "2023-11-14T22:13:21"},  # naive: UTC
    ]
    body = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n\n"
    file = tmp_path / "chat.jsonl"
    file.write_text(body, encoding="utf-8")
    store = tmp_path / "store"
    ids = json.loads(run(capsys, store, "add", "--jsonl", str(file), "--scope", "alice"))["ids"]
    assert len(ids) == 6
    with open_store(store) as s:
        info = [s.memory_info(i) for i in ids]
        assert [(m.scope, m.kind, m.role) for m in info] == [
            ("alice", "turn", "user"),
            ("alice", "turn", "assistant"),
            ("bob", "turn", "user"),
            ("alice", "document", None),
            ("alice", "turn", "user"),
            ("alice", "turn", "assistant"),
        ]
        assert info[0].created_at == 1_700_000_000 and info[1].metadata == {"turn": 2}
        assert [m.created_at for m in info[4:]] == [1_700_000_000, 1_700_000_001]  # ISO 8601, as UTC
        assert s.recall(ids[0]).text == lines[0]["text"]
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"text": "from a pipe"}) + "\n"))
    assert len(json.loads(run(capsys, store, "add", "--jsonl", "-", "--scope", "alice"))["ids"]) == 1


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"text": "fine"}\n{"text": "broken"\n', "chat.jsonl line 2: not JSON"),
        ('{"text": "fine"}\n["a list"]\n', "chat.jsonl line 2: expected a JSON object, got list"),
        ('{"text": "fine"}\n\n{"txt": "typo"}\n', "chat.jsonl line 3: unknown field(s) ['txt']"),
        ('{"text": "fine"}\n{"role": "user"}\n', 'chat.jsonl line 2: needs a "text" string'),
        ('{"text": "fine"}\n{"text": "when?", "timestamp": "noon"}\n', "chat.jsonl line 2: timestamp"),
    ],
)
def test_a_bad_jsonl_line_is_named_and_nothing_is_stored(tmp_path, capsys, embedder, body, says):
    file = tmp_path / "chat.jsonl"
    file.write_text(body)
    store = tmp_path / "store"
    error = refused(capsys, store, "add", "--jsonl", str(file), "--scope", "alice")
    assert says in error
    assert not store.exists() or stored(store) == 0


def test_mixed_up_add_options_are_refused_not_dropped(tmp_path, capsys, embedder):
    file = tmp_path / "note.txt"
    file.write_text("a note\n")
    store = tmp_path / "store"
    error = refused(capsys, store, "add", "some text", "--file", str(file), "--scope", "a")
    assert "not TEXT and --file" in error
    for option in (["--role", "user"], ["--kind", "turn"]):
        error = refused(capsys, store, "add", "--file", str(file), "--scope", "a", *option)
        assert "--role and --kind apply to text" in error
    assert "--scope is required" in refused(capsys, store, "add", "no scope given")
    assert not store.exists() or stored(store) == 0


def test_stats_into_a_closed_pipe_is_quiet(tmp_path, embedder):
    store = tmp_path / "store"
    with open_store(store) as s:
        s.add_many([f"turn {i}" for i in range(3)], scope="a")
    piped = subprocess.run(
        f"{CLI} --store {store} stats | head -1", shell=True, capture_output=True, text=True, check=True
    )
    assert piped.stdout.startswith("3 memories") and piped.stderr == ""


def test_help_is_for_people_and_every_option_says_what_it_does():
    parser = build_parser()
    assert "Only this module prints" not in parser.format_help()
    commands = [parser]
    while commands:
        command = commands.pop()
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):  # the commands: each is checked in turn
                commands += list(action.choices.values())
            elif action.help is None:
                pytest.fail(f"{command.prog}: {'/'.join(action.option_strings) or action.dest} has no help")


# -- progress on long input ----------------------------------------------------------------------------------


def test_progress_moves_during_one_long_memory_and_adds_up(tmp_path, embedder, monkeypatch):
    """A long text is embedded a slice of gist chunks at a time, and progress is reported after each: a
    single memory moves a bar in fractions (a 1 MB turn takes about a minute), and the reports add up to
    exactly the items (or files) done."""
    monkeypatch.setattr("optical_memory.ingest.EMBED_CHUNKS", 3)  # slices of 3 chunks: 160 words each
    long_text = " ".join(f"word{i}" for i in range(160 * 10))  # 10 gist chunks
    with open_store(tmp_path / "store", embedder=embedder) as s:
        calls: list[float] = []
        s.add(long_text, scope="a", progress=calls.append)
        assert len(calls) == 4 and all(0 < c < 1 for c in calls[:3])  # 3/10, 3/10, 3/10, then 1/10
        assert sum(calls) == pytest.approx(1.0, abs=1e-12)

        calls.clear()
        s.add_many(["short one", long_text, "short two"], scope="a", progress=calls.append)
        assert len(calls) == 4 and sum(calls) == pytest.approx(3.0, abs=1e-12)

        files = [tmp_path / "a.txt", tmp_path / "b.txt"]
        files[0].write_text(long_text)
        files[1].write_text("A short note.")
        calls.clear()
        s.add_files(files, scope="a", progress=calls.append)
        assert calls[:2] == [0.5, 0.5]  # each file read, then their 11 chunks embedded in 4 slices
        assert len(calls) == 6 and sum(calls) == pytest.approx(2.0, abs=1e-12)
