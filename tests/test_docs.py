"""README.md against the code: its Python blocks run, and the defaults it states are the code's.

A Python block that cannot run here (a server, a checkpoint) carries `<!-- not run: reason -->` on the line
before its fence; the test reports it as skipped with that reason. Any other block must exit cleanly, run
as a script in an empty folder. The defaults checks read README's own sentences and tables, so a number
changed on either side fails here; a sentence reworded so that its pattern no longer matches fails too,
asking for the pattern to be updated rather than silently checking nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest

import optical_memory as om
from optical_memory import db, retrieval
from optical_memory.config import AgingPolicy, RenderConfig, StoreConfig, Tier, vision_tokens
from optical_memory.render import Renderer
from optical_memory.types import Hit, Kind, Recall

#: The document under test (a module constant, so a check can be pointed at another copy of it).
README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.*?)\s*-->")


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # README's line number of the block's first line of code
    code: str
    not_run: str | None  # the reason given by a `<!-- not run: ... -->` marker, or None: it must run


def python_blocks(text: str) -> list[Block]:
    """Every ```python fenced block, with the not-run marker on the last non-blank line before its fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = NOT_RUN.fullmatch(before)
            blocks.append(Block(i + 2, "\n".join(lines[i + 1 : end]) + "\n", marker and marker["reason"]))
            i = end
        i += 1
    return blocks


def block_params() -> list[Any]:
    return [
        pytest.param(
            b,
            id=f"line{b.line}",
            marks=[pytest.mark.skip(reason=f"README.md line {b.line}: {b.not_run}")] if b.not_run else [],
        )
        for b in python_blocks(README.read_text(encoding="utf-8"))
    ]


def test_readme_blocks_and_markers_are_found():
    text = README.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert any(b.not_run is None for b in blocks), "README.md: no runnable ```python block found"
    for b in blocks:
        assert b.not_run is None or b.not_run, f"README.md line {b.line}: a not-run marker needs a reason"
    # a marker (a line of its own) that stands before no Python block excuses nothing: a typo or a leftover
    markers = [line for line in text.splitlines() if NOT_RUN.fullmatch(line.strip())]
    assert len(markers) == sum(b.not_run is not None for b in blocks), (
        "README.md: a `<!-- not run: ... -->` marker is not directly before a ```python block"
    )


@pytest.mark.slow  # the first block reads a page back with RapidOCR, as examples/quickstart.py does
@pytest.mark.parametrize("block", block_params())
def test_readme_python_block_runs(block: Block, tmp_path: Path):
    script = tmp_path / f"readme_line_{block.line}.py"
    # blank lines first, so a traceback's line numbers are README's
    script.write_text("\n" * (block.line - 1) + block.code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, (
        f"README.md line {block.line}: the block exited {done.returncode} (mark it "
        f"`<!-- not run: reason -->` if it cannot run offline):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )


# -- documented defaults against the code ----------------------------------------------------------------


def default_of(cls: type, name: str) -> Any:
    """A dataclass field's default, from ``dataclasses.fields`` (a default_factory is called)."""
    (found,) = [f for f in dataclasses.fields(cls) if f.name == name]
    if found.default is not dataclasses.MISSING:
        return found.default
    assert found.default_factory is not dataclasses.MISSING, f"{cls.__name__}.{name} has no default"
    return found.default_factory()


def prose() -> str:
    """README with its line breaks folded into spaces, so a sentence matches wherever it wraps."""
    return " ".join(README.read_text(encoding="utf-8").split())


def section(title: str) -> str:
    """The text of README's section headed ``title`` (any level), up to the next heading."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", README.read_text("utf-8"), re.M | re.S)
    assert match, f"README.md has no section {title!r}"
    return match[1]


class Claims:
    """README's statements checked one by one; every mismatch is reported together."""

    def __init__(self) -> None:
        self.wrong: list[str] = []

    def stated(self, pattern: str, text: str | None = None) -> list[re.Match[str]]:
        found = list(re.finditer(pattern, prose() if text is None else text))
        if not found:
            self.wrong.append(f"README.md no longer states /{pattern}/: update tests/test_docs.py")
        return found

    def check(self, pattern: str, code: object, *, read: Callable[[str], object] = int) -> None:
        """Each match of ``pattern`` in README (its groups, read by ``read``) must equal the code's value."""
        for match in self.stated(pattern):
            said = tuple(read(g.replace(",", "")) for g in match.groups())
            expected = code if isinstance(code, tuple) else (code,)
            if said != expected:
                self.wrong.append(f"README.md says {match[0]!r}: {said}, the code has {expected}")

    def equal(self, what: str, said: object, code: object) -> None:
        if said != code:
            self.wrong.append(f"README.md: {what} is {said!r} there, {code!r} in the code")


def test_readme_aging_policy_is_the_default():
    """The Forgetting section's `AgingPolicy(...)` and `Tier(...)` are config.py's defaults."""
    claims = Claims()
    text = section("Forgetting")
    ladder = default_of(AgingPolicy, "tiers")
    claims.stated(r"`AgingPolicy\(text_turns=", text)
    for span in re.findall(r"`((?:AgingPolicy|Tier)\(.*?\))`", text):
        call = ast.parse(span, mode="eval").body
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        if call.func.id == "Tier":
            stated = {str(kw.arg): ast.literal_eval(kw.value) for kw in call.keywords}
            same_side = [t for t in ladder if t.side == stated.get("side")]
            claims.equal(f"`{span}`: the default ladder's {stated.get('side')} px tier", len(same_side), 1)
            for tier in same_side:
                for key, value in stated.items():
                    claims.equal(f"`{span}`: {key}", value, getattr(tier, key))
            continue
        for kw in call.keywords:
            assert kw.arg is not None
            if kw.arg != "tiers":
                claims.equal(
                    f"AgingPolicy's {kw.arg}", ast.literal_eval(kw.value), default_of(AgingPolicy, kw.arg)
                )
                continue
            assert isinstance(kw.value, ast.Tuple)
            items = kw.value.elts
            open_ended = bool(items) and isinstance(items[-1], ast.Constant) and items[-1].value is Ellipsis
            stated_tiers = items[:-1] if open_ended else items
            if not open_ended:
                claims.equal("AgingPolicy's number of tiers", len(items), len(ladder))
            for i, item in enumerate(stated_tiers):
                assert isinstance(item, ast.Call) and i < len(ladder), f"`{span}`: tier {i}"
                for tkw in item.keywords:
                    assert tkw.arg is not None
                    value = ast.literal_eval(tkw.value)
                    claims.equal(f"AgingPolicy's tier {i} {tkw.arg}", value, getattr(ladder[i], tkw.arg))
    for match in claims.stated(r"each rung holds (\d+)x the turns of the one before", " ".join(text.split())):
        ratio = int(match[1])
        turns = [t.max_turns for t in ladder]
        said = [turns[0] * ratio**i for i in range(len(turns))]
        claims.equal(f"the ladder's max_turns at {ratio}x a rung", said, turns)
    claims.check(
        r"`max_age_s` \(wall-clock seconds; `(None)`, the default",
        default_of(Tier, "max_age_s"),
        read=ast.literal_eval,
    )
    # the ladder of sides, in the introduction and in the tier table
    for match in claims.stated(r"\(((?:\d+ → )+\d+) px → forgotten\)"):
        claims.equal("the ladder", [int(s) for s in match[1].split(" → ")], [t.side for t in ladder])
    table_sides = [int(s) for s in re.findall(r"^\| (\d+) px \| ", text, re.M)]
    claims.equal("the Forgetting table's tiers", table_sides, [t.side for t in ladder])
    assert not claims.wrong, "\n".join(claims.wrong)


def test_readme_stated_defaults_are_the_code():
    """Defaults README states in its prose and tables, against the code's dataclasses and constants."""
    claims = Claims()
    config = StoreConfig()
    render = RenderConfig()
    claims.check(r"`retain_text=(\w+)`,? \(?the default", config.retain_text, read=ast.literal_eval)
    claims.check(r"per (\d+) words of a memory \(`chunk_words`\)", config.chunk_words)
    claims.check(r"best gist chunk \((\d+) words", config.chunk_words)
    claims.check(r"The default stays per (\d+)-word chunk", config.chunk_words)
    claims.check(r"\| (\w+) \(default\) \| [\d,]+ \|", config.gist, read=str)  # the gist table
    claims.check(r'`mode` `"(\w+)"` \(the default, `StoreConfig.retrieval`\)', config.retrieval, read=str)
    claims.check(r"either index returns \((\d+) each", retrieval.CANDIDATES)
    claims.check(
        r"at (\d+)px on a (\d+)px page: (\d+) columns x (\d+) lines",
        (render.font_size, render.page_side, Renderer(render).columns, render.lines_per_page),
    )
    claims.check(r"a writer that waits more than (\d+) s", int(db.WRITE_LOCK_WAIT_S))
    claims.check(r"The log keeps the last ([\d,]+) generations", db.LOG_KEEP)
    # DeepEncoder's arithmetic: every "N px | M" tier row of README's tables, and the introduction's figures
    for side, tokens in re.findall(r"^\| (\d+) px \| (\d+) \|", README.read_text("utf-8"), re.M):
        claims.equal(f"the vision tokens of a {side} px page", int(tokens), vision_tokens(int(side)))
    for match in claims.stated(
        r"DeepEncoder turns a (\d+)px page into (\d+) vision tokens, (\d+)px into (\d+)"
    ):
        for side, tokens in zip(match.groups()[::2], match.groups()[1::2], strict=True):
            claims.equal(f"the vision tokens of a {side}px page", int(tokens), vision_tokens(int(side)))
    # the fields README names on the result types
    for name, cls in (("Hit", Hit), ("Recall", Recall)):
        for match in claims.stated(rf"`{name}`s? \(((?:`\w+`, )+`\w+`)"):
            named = set(re.findall(r"`(\w+)`", match[1]))
            claims.equal(f"{name} fields named", named - {f.name for f in dataclasses.fields(cls)}, set())
    assert not claims.wrong, "\n".join(claims.wrong)


def test_readme_model_and_adapter_defaults_are_the_code():
    from optical_memory.model.generation import GenerationConfig  # imports torch: here, not at collection

    claims = Claims()
    gen = GenerationConfig()
    claims.check(r"no-repeat guard \(n-gram (\d+), window (\d+)", (gen.ngram_size, gen.window_size))
    langchain = pytest.importorskip("optical_memory.adapters.langchain")  # the [langchain] extra
    claims.check(
        r'`OpticalMemoryRetriever\(store=store, scope="alice", k=(\d+)\)`',
        langchain.OpticalMemoryRetriever.model_fields["k"].default,
    )
    history = inspect.signature(langchain.OpticalChatMessageHistory)
    claims.check(
        r"`OpticalChatMessageHistory\(store, session_id, budget_tokens=(\d+)\)`",
        history.parameters["budget_tokens"].default,
    )
    assert not claims.wrong, "\n".join(claims.wrong)


# -- the API table against the signatures ----------------------------------------------------------------

ALIASES = {"id": "memory_id"}  # README's short names for parameters


def api_table() -> list[str]:
    """The first cell of each row of the public-API table under "Use it"."""
    text = section("Use it")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows, "README.md: the public API table under 'Use it' is gone"
    return [re.split(r"(?<!\\) \| ", row.removeprefix("| "))[0].replace("\\|", "|") for row in rows]


def documented_calls() -> list[tuple[str, ast.arguments]]:
    calls = []
    for cell in api_table():
        for span in re.findall(r"`([\w.]+\(.*?\))`", cell):
            name, params = span.split("(", 1)
            tree = ast.parse(f"def {name.rsplit('.', 1)[-1]}({params}: pass")
            fn = tree.body[0]
            assert isinstance(fn, ast.FunctionDef)
            calls.append((name, fn.args))
    return calls


def first_alternative(node: ast.expr) -> Any:
    """`"text"|"image"` names the choices; the default is the first."""
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        node = node.left
    return ast.literal_eval(node)


def alternatives(node: ast.expr) -> list[Any]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return [*alternatives(node.left), *alternatives(node.right)]
    return [ast.literal_eval(node)]


def test_readme_api_table_matches_the_signatures():
    """Each call in the API table names real parameters, keyword-only where the code makes them so, with the
    code's defaults, and leaves out no required one."""
    wrong: list[str] = []
    P = inspect.Parameter
    for name, args in documented_calls():
        func = om.open if name == "om.open" else getattr(om.OpticalMemory, name, None)
        if func is None:
            wrong.append(f"`{name}(...)`: OpticalMemory has no {name}")
            continue
        params = {k: v for k, v in inspect.signature(func).parameters.items() if k != "self"}
        documented: list[tuple[str, Any, ast.expr | None]] = []
        pos_defaults = [None] * (len(args.args) - len(args.defaults)) + list(args.defaults)
        documented += [
            (a.arg, P.POSITIONAL_OR_KEYWORD, d) for a, d in zip(args.args, pos_defaults, strict=True)
        ]
        documented += [
            (a.arg, P.KEYWORD_ONLY, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
        ]
        if args.kwarg:
            documented.append((args.kwarg.arg, P.VAR_KEYWORD, None))
        for arg, kind, node in documented:
            real = params.get(ALIASES.get(arg, arg), params.get(arg))
            where = f"`{name}(...)`: {arg}"
            if real is None:
                wrong.append(f"{where}: no such parameter (the code has {list(params)})")
                continue
            if real.kind != kind:
                wrong.append(f"{where} is {kind.description} in README, {real.kind.description} in the code")
            if node is None:
                if real.default is not P.empty and kind is not P.VAR_KEYWORD:
                    wrong.append(f"{where}: README shows no default, the code's is {real.default!r}")
                continue
            if real.default != first_alternative(node):
                wrong.append(
                    f"{where}: README's default {first_alternative(node)!r}, the code's {real.default!r}"
                )
            if name in ("add", "add_many") and arg == "kind":
                wrong += [f"{where}: {k!r} is no Kind" for k in alternatives(node) if k not in get_args(Kind)]
        shown = {ALIASES.get(a, a) for a, _, _ in documented}
        for pname, real in params.items():
            required = real.default is P.empty and real.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
            if required and pname not in shown:
                wrong.append(f"`{name}(...)`: required parameter {pname} is missing from README")
    assert not wrong, "\n".join(wrong)


def test_readme_api_table_names_every_public_method():
    named = {name for name, _ in documented_calls()}
    public = {
        name
        for name, member in inspect.getmembers(om.OpticalMemory)
        if not name.startswith("_") and inspect.isfunction(member)
    }
    assert public - named == set(), f"README.md's API table does not name {sorted(public - named)}"
