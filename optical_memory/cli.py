"""``optical-memory``: a thin command line over the public API. Only this module prints."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import demo as demo_module
from . import experiments
from .config import RETRIEVAL_MODES
from .errors import InvalidInput, OpticalMemoryError
from .pricing import TARGETS
from .store import OpticalMemory, open_store
from .types import Stats

DEFAULT_STORE = os.environ.get("OPTICAL_MEMORY_STORE", "optical-memory-store")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _stats_table(stats: Stats) -> str:
    rows = []
    for t in stats.tiers:
        rows.append(
            [
                t.tier,
                t.memories,
                t.pages,
                f"{t.text_tokens:,}",
                f"{t.vision_tokens:,}",
                f"{t.compression:.1f}x" if t.compression else "-",
                f"{t.bytes:,}",
            ]
        )
    return _table(["tier", "memories", "pages", "text tokens", "vision tokens", "compression", "bytes"], rows)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.model_dir or args.model:
        options.update(model=args.model or "deepseek-ocr", model_dir=args.model_dir, model_device=args.device)
    if args.database_url:
        options.update(database_url=args.database_url)
    return options


def _open(args: argparse.Namespace) -> OpticalMemory:
    return open_store(args.store, **_options(args))


def cmd_demo(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    report = demo_module.run(args.out, seed=args.seed, min_tokens=args.tokens, progress=not args.quiet)
    print(
        f"\nStored {report.turns:,} turns from {report.sessions} sessions "
        f"({report.text_tokens:,} text tokens)"
        f" in {report.store_path}\n"
    )
    print(_stats_table(report.stats))
    print("\nQuestions about facts planted early in the conversation (search + recall):\n")
    rows = []
    for a in report.answers:
        rows.append(
            [
                a.fact.question,
                f"session {a.fact.session}",
                a.tier,
                f"{a.score:.2f}",
                "yes" if a.found else "no",
                a.fact.answer,
            ]
        )
    print(_table(["question", "planted", "tier", "score", "recalled", "answer"], rows))
    found = sum(a.found for a in report.answers)
    print(f"\n{found}/{len(report.answers)} answers read back from their page images.")
    if report.readers:
        names = list(report.readers[0])
        print("\nThe same pages read by each reader (answer found, seconds for the memory's pages):\n")
        rows = [
            [a.fact.answer, a.tier] + [f"{'yes' if r[n].found else 'no'} {r[n].seconds:.1f}s" for n in names]
            for a, r in zip(report.answers, report.readers, strict=True)
        ]
        print(_table(["answer", "tier", *names], rows))
    for name, why in report.readers_not_run.items():
        print(f"  {name} not run: {why}")
    print(f"\nContext for {demo_module.FACTS[0].question!r} within {demo_module.CONTEXT_BUDGET:,} tokens:")
    for mode, (items, used, saved) in report.contexts.items():
        print(f"  {mode:>5} mode: {items} memories, {used:,} tokens used, {saved:,} saved against plain text")
    print("\nPage images at each tier (open them to see the forgetting):")
    for tier, path in report.page_images.items():
        print(f"  {tier:>9}px  {path}")
    print(f"\nDone in {time.perf_counter() - started:.1f} s.")


def cmd_add(args: argparse.Namespace) -> None:
    given = [name for name, v in (("TEXT", args.text), ("--file", args.files), ("--jsonl", args.jsonl)) if v]
    if len(given) > 1:
        raise InvalidInput(f"give one of TEXT, --file or --jsonl, not {' and '.join(given)}")
    if args.files and (args.role is not None or args.kind is not None):
        raise InvalidInput("--role and --kind apply to text; a --file is stored as a document (or its pages)")
    if args.jsonl:
        return _add_jsonl(args)
    if args.scope is None:
        raise InvalidInput("--scope is required (the tenant or conversation the memory belongs to)")
    with _open(args) as store:
        if args.files:
            with _bar(len(args.files), "adding files", args.quiet or not _big(args.files)) as bar:
                added = store.add_files(args.files, scope=args.scope, progress=bar.update)
            ids = [i for file in added for i in file]
        else:
            text = args.text if args.text is not None else sys.stdin.read()
            with _bar(1, "embedding", args.quiet or len(text) < BIG_TEXT) as bar:
                ids = [
                    store.add(
                        text, scope=args.scope, role=args.role, kind=args.kind or "turn", progress=bar.update
                    )
                ]
        print(json.dumps({"ids": ids}))


BIG_TEXT = 200_000  # characters: from about here an add takes seconds, so it shows a progress bar


def _big(files: Sequence[str]) -> bool:
    """Whether adding these files takes long enough to show a bar: several, or one that is large."""
    if len(files) > 1:
        return True
    with contextlib.suppress(OSError):
        return os.path.getsize(files[0]) >= BIG_TEXT
    return False


def _bar(total: int, desc: str, disable: bool) -> tqdm:
    """A progress bar on stderr that takes fractional updates (the store reports a long item in parts)."""
    return tqdm(
        total=total,
        desc=desc,
        disable=disable,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
    )


JSONL_FIELDS = ("text", "content", "role", "scope", "kind", "timestamp", "metadata", "ttl")


def _add_jsonl(args: argparse.Namespace) -> None:
    """``add --jsonl FILE|-``: one JSON object a line, its fields as ``add()`` takes them plus ``scope`` and
    ``kind`` (defaults: --scope, --role, --kind); a ``timestamp`` is epoch seconds or ISO 8601. Every line
    is parsed and checked for text and a scope before anything is written; each run of lines with the
    same scope and kind is then one ``add_many`` transaction, validated whole before it is written."""
    source = sys.stdin if args.jsonl == "-" else None
    name = "stdin" if source else args.jsonl
    try:
        lines = (source or open(args.jsonl, encoding="utf-8")).read().splitlines()  # noqa: SIM115
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read --jsonl {name!r}: {e}") from None
    runs: list[tuple[str, str, list[dict[str, Any]], list[int]]] = []  # (scope, kind, items, line numbers)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{name} line {number}: not JSON ({e})") from None
        if not isinstance(record, dict):
            raise InvalidInput(f"{name} line {number}: expected a JSON object, got {type(record).__name__}")
        unknown = sorted(set(record) - set(JSONL_FIELDS))
        if unknown:
            raise InvalidInput(
                f"{name} line {number}: unknown field(s) {unknown}; known: {list(JSONL_FIELDS)}"
            )
        if not isinstance(record.get("text", record.get("content")), str):
            raise InvalidInput(f'{name} line {number}: needs a "text" string')
        scope, kind = record.pop("scope", args.scope), record.pop("kind", args.kind or "turn")
        if scope is None:
            raise InvalidInput(f'{name} line {number}: no "scope" and no --scope to default to')
        record.setdefault("role", args.role)
        if isinstance(record.get("timestamp"), str):  # ISO 8601 (UTC unless it says otherwise)
            try:
                stamp = datetime.fromisoformat(record["timestamp"])
            except ValueError:
                raise InvalidInput(
                    f"{name} line {number}: timestamp {record['timestamp'][:60]!r} is neither ISO 8601 "
                    "nor epoch seconds"
                ) from None
            record["timestamp"] = stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
        if runs and runs[-1][:2] == (scope, kind):
            runs[-1][2].append(record)
            runs[-1][3].append(number)
        else:
            runs.append((scope, kind, [record], [number]))
    ids: list[int] = []
    total = sum(len(items) for _, _, items, _ in runs)
    with _open(args) as store, tqdm(total=total, desc="adding", unit="turn", disable=args.quiet) as bar:
        for scope, kind, items, numbers in runs:
            try:
                ids += store.add_many(items, scope=scope, kind=kind, progress=bar.update)  # type: ignore[arg-type]
            except OpticalMemoryError as e:
                where = re.match(r"item (\d+): ", str(e))
                line = numbers[int(where.group(1))] if where else numbers[0]
                reason = str(e)[where.end() :] if where else str(e)
                stored = f"; lines before {numbers[0]} were stored: {json.dumps({'ids': ids})}" if ids else ""
                e.args = (
                    f"{name} line {line}: {reason} (nothing from line {numbers[0]} on was stored{stored})",
                )
                raise
    print(json.dumps({"ids": ids}))


def cmd_search(args: argparse.Namespace) -> None:
    with _open(args) as store:
        hits = store.search(args.query, k=args.k, scope=args.scope, mode=args.mode)
        print(
            _table(
                ["id", "score", "tier", "page", "scope", "role"],
                [[h.id, f"{h.score:.3f}", h.tier, h.page_id or "-", h.scope, h.role or "-"] for h in hits],
            )
        )


def cmd_export_embedder(args: argparse.Namespace) -> None:
    from .backends.minilm import export_onnx

    facts = export_onnx()
    print(
        f"exported {facts['path']} in {facts['seconds']} s; its vectors match torch's within "
        f"{facts['max_abs_diff']:.1e}"
    )


def cmd_recall(args: argparse.Namespace) -> None:
    with _open(args) as store:
        r = store.recall(args.id, read=args.read)
        print(f"# memory {r.id}, tier {r.tier}, source {r.source}")
        print(r.text)


def cmd_age(args: argparse.Namespace) -> None:
    with _open(args) as store:
        with tqdm(desc="aging pages", unit="page", disable=args.quiet) as bar:
            report = store.age(progress=bar.update)
        if args.preread:
            with tqdm(desc="reading ahead", unit="page", disable=args.quiet) as bar:
                report["preread"] = store.preread(progress=bar.update)
    print(json.dumps(report))


def cmd_answer(args: argparse.Namespace) -> None:
    with _open(args) as store:
        print(
            store.answer(
                args.question, budget_tokens=args.budget, scope=args.scope, max_new_tokens=args.max_new_tokens
            )
        )


def cmd_context(args: argparse.Namespace) -> None:
    with _open(args) as store:
        ctx = store.build_context(
            args.query,
            budget_tokens=args.budget,
            mode=args.mode,
            scope=args.scope,
            target=args.target,
            recent_share=args.recent_share,
        )
    if args.mode == "text":
        print(ctx.text)
    else:
        print(
            json.dumps(
                [
                    {"type": p["type"], "bytes": len(p["image_url"]["url"])}
                    if p["type"] == "image_url"
                    else p
                    for p in ctx.parts
                ],
                indent=1,
            )
        )
    print(
        f"\n# {len(ctx.items)} items, {ctx.used_tokens} tokens used of {ctx.budget_tokens}, "
        f"{ctx.saved_tokens} saved"
        + (f", images priced for {ctx.target}" if ctx.target else "")
        + f", text counted in {ctx.text_counter} tokens"
    )


def cmd_stats(args: argparse.Namespace) -> None:
    with _open(args) as store:
        stats = store.stats()
    print(
        f"{stats.memories:,} memories in {stats.scopes} scope(s), {stats.pages:,} pages, "
        f"{stats.bytes_on_disk:,} bytes\n"
    )
    print(_stats_table(stats))


def cmd_show(args: argparse.Namespace) -> None:
    with _open(args) as store:
        images = store.page_image(args.id)
    if not images:
        print(f"memory {args.id} has no page image (it is in the text tier or forgotten)")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        path = out / f"memory-{args.id}-page-{i + 1}-{image.width}px.png"
        image.save(path)
        print(path)


def cmd_verify(args: argparse.Namespace) -> None:
    with _open(args) as store:
        report = store.verify(repair=args.repair)
    print(json.dumps(report.__dict__, indent=1))
    if not report.ok and not args.repair:
        sys.exit(1)


def _recent_share(value: str) -> str | float:
    """``--recent-share``: 'auto' or a number (build_context checks its range and names it)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'auto' or a share of the budget from 0 to 1, not {value!r}"
        ) from None


def _csv(value: str, convert: Callable[[str], Any], what: str) -> list:
    try:
        items = [convert(v.strip()) for v in value.split(",") if v.strip()]
    except InvalidInput as e:
        raise InvalidInput(f"{what}: {e}") from None
    except ValueError:
        raise InvalidInput(f"{what} must be a comma-separated list, got {value!r}") from None
    if not items:
        raise InvalidInput(f"{what} must name at least one value, got {value!r}")
    return items


def cmd_experiment_forgetting(args: argparse.Namespace) -> None:
    readers = experiments.check_readers(_csv(args.readers, str, "--readers"))
    sides = _csv(args.sides, int, "--sides")
    command = "optical-memory " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with tqdm(
        total=args.pages * len(set(sides)) * len(readers),
        desc="reading pages",
        unit="page",
        disable=args.quiet,
    ) as bar:
        report = experiments.forgetting(
            args.out,
            readers=readers,
            sides=sides,
            pages=args.pages,
            seed=args.seed,
            model_dir=args.model_dir,
            command=command,
            progress=bar.update,
        )
    print(report.markdown)
    print(f"Done in {report.seconds:.0f} s; wrote {', '.join(report.files.values())}")


def cmd_experiment_recall(args: argparse.Namespace) -> None:
    from . import recall_experiment

    checkpoints = _csv(args.checkpoints, recall_experiment.parse_tokens, "--checkpoints")
    command = "optical-memory " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with tqdm(
        total=max(checkpoints), desc="streaming", unit="tok", unit_scale=True, disable=args.quiet
    ) as bar:
        report = recall_experiment.recall(
            args.out,
            checkpoints=checkpoints,
            facts=args.facts,
            seed=args.seed,
            age_every=recall_experiment.parse_tokens(args.age_every),
            window=recall_experiment.parse_tokens(args.window),
            queries=args.queries,
            keep_store=args.keep_store,
            gist=args.gist,
            command=command,
            progress=bar.update,
        )
    print(report.markdown)
    print(f"Done in {report.seconds:.0f} s; wrote {', '.join(report.files.values())}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C does, so the store closes and saves its index


def cmd_mcp(args: argparse.Namespace) -> None:
    # imported here: the mcp SDK is an optional extra, and its absence raises MissingDependency naming the pip
    # command; in stdio mode stdout is the protocol channel, so anything for people goes to stderr
    from .adapters.mcp import serve

    with _open(args) as store:
        if args.transport == "http":
            print(
                f"optical-memory: serving {str(store.path)!r} over MCP at http://{args.host}:{args.port}/mcp",
                file=sys.stderr,
            )
        # uvicorn shuts down gracefully on SIGTERM, then raises it again: exit through this handler, not by it
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                serve(
                    store,
                    transport=args.transport,
                    host=args.host,
                    port=args.port,
                    default_scope=args.scope,
                    only_scope=args.only_scope,
                    log_level="INFO" if args.verbose else "WARNING",
                )
        finally:
            signal.signal(signal.SIGTERM, previous)


def cmd_serve(args: argparse.Namespace) -> None:
    # imported here: FastAPI and uvicorn are an optional extra, whose absence raises MissingDependency
    from .adapters.keys import KeyRing
    from .adapters.serve import serve

    ring = KeyRing(args.store)
    keys = ring.all()
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}"
    print(f"optical-memory: serving {args.store!r} at {where}/ (API {where}/v1, reference {where}/docs)")
    if ring.required:
        admins = sum(k.admin for k in keys)
        print(f"optical-memory: {len(keys)} API key(s), {admins} admin: every request needs one")
    else:
        print(
            "optical-memory: no API keys, so only loopback clients are answered "
            "(create one: optical-memory keys create --scope NAME)"
        )
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            serve(
                args.store,
                host=args.host,
                port=args.port,
                workers=args.workers,
                options=_options(args),
                max_body_bytes=int(args.max_body_mb * 2**20),
                log_level="info" if args.verbose else "warning",
            )
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_keys(args: argparse.Namespace) -> None:
    from .adapters.keys import KeyRing

    ring = KeyRing(args.store)
    if args.action == "create":
        key = ring.create(args.scope or [], admin=args.admin, label=args.label)
        print(key)
        print("optical-memory: the key is shown only now; the store keeps its hash", file=sys.stderr)
    elif args.action == "revoke":
        gone = ring.revoke(args.id)
        print(f"revoked {gone.id} ({', '.join(gone.scopes) or 'admin'})")
    else:
        when = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")  # noqa: E731
        rows = [
            [key.id, "admin" if key.admin else ", ".join(key.scopes), key.label, when(key.created_at)]
            for key in ring.all()
        ]
        if rows:
            print(_table(["id", "scopes", "label", "created (UTC)"], rows))
        elif ring.required:
            print(
                f"no API keys: 'serve' refuses every request until one is created (delete {ring.path} to "
                "answer loopback clients without keys)"
            )
        else:
            print("no API keys: 'serve' answers loopback clients only")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="optical-memory",
        description="Long-term memory for LLM agents, kept as page images that fade with age:\n"
        "add turns and files, search them, read them back, and build an LLM context under a token budget.",
        epilog="examples:\n"
        "  optical-memory add 'I moved to Lisbon in May' --scope alice --role user\n"
        "  optical-memory add --jsonl chat.jsonl --scope alice\n"
        "  optical-memory search 'where does she live?' --scope alice\n"
        "  optical-memory context 'where does she live?' --scope alice --budget 2000\n"
        "  optical-memory age    # apply the forgetting ladder (run it on a schedule)\n"
        "run 'optical-memory COMMAND --help' for a command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument(
        "--store", default=DEFAULT_STORE, help="store folder (default: %(default)s, or $OPTICAL_MEMORY_STORE)"
    )
    p.add_argument(
        "--model",
        choices=["deepseek-ocr", "optical-mini"],
        help="read pages (and keep vision tokens) with DeepSeek-OCR (needs a checkpoint) or the shipped "
        "optical-mini",
    )
    p.add_argument(
        "--model-dir",
        help="checkpoint folder (implies --model deepseek-ocr unless --model is given; default "
        "$OPTICAL_MEMORY_MODEL_DIR, or the shipped weights for optical-mini)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the model (default: %(default)s)")
    p.add_argument(
        "--database-url",
        default=os.environ.get("OPTICAL_MEMORY_DATABASE_URL"),
        help="SQLAlchemy URL of the store's database, e.g. postgresql+psycopg://user@host/db "
        "(default: $OPTICAL_MEMORY_DATABASE_URL, else the SQLite file in the store folder)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="build a store from a long generated conversation, age it, question it")
    d.add_argument("--out", default="demo-output", help="folder for the demo store and page images")
    d.add_argument("--tokens", type=int, default=100_000, help="text tokens of conversation to generate")
    d.add_argument(
        "--seed", type=int, default=0, help="seed of the generated conversation (default: %(default)s)"
    )
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser(
        "add",
        help="add a turn (argument or stdin), files, or many turns from JSON Lines",
        description="Store one turn or document (TEXT, or stdin when no TEXT, --file or --jsonl is given), "
        "files (--file, repeatable: all are read and checked before any is stored), or many memories from "
        "JSON Lines (--jsonl). Prints the new ids as JSON.",
    )
    a.add_argument("text", nargs="?", metavar="TEXT", help="the text to store; read from stdin when omitted")
    a.add_argument(
        "--scope",
        help="the tenant or conversation the memories belong to (required unless every --jsonl "
        "line names its own)",
    )
    a.add_argument("--role", help="who said it (user, assistant, tool, ...); drawn as the turn's label")
    a.add_argument(
        "--kind",
        choices=["turn", "document"],
        default=None,
        help="a turn ages from the text tier; a document is paged at once (default: turn)",
    )
    a.add_argument(
        "--file",
        dest="files",
        action="append",
        metavar="FILE",
        help="a .txt/.md (a form feed starts a new page), .pdf or image file; repeatable",
    )
    a.add_argument(
        "--jsonl",
        metavar="FILE",
        help='JSON Lines (\'-\' for stdin): one object a line with "text" and optional "role", '
        '"scope", "kind", "timestamp" (epoch seconds or ISO 8601), "metadata", "ttl" (defaults: '
        "--scope, --role, --kind)",
    )
    a.set_defaults(func=cmd_add)

    s = sub.add_parser("search", help="the memories that best answer a query")
    s.add_argument("query", help="what to look for, in words")
    s.add_argument("-k", type=int, default=5, help="how many hits (default: %(default)s)")
    s.add_argument("--scope", help="search this scope only (default: every scope)")
    s.add_argument(
        "--mode",
        choices=RETRIEVAL_MODES,
        default=None,
        help="rank by meaning and words fused (hybrid, the default), by meaning alone, or by words alone",
    )
    s.set_defaults(func=cmd_search)

    x = sub.add_parser(
        "export-embedder",
        help="export the MiniLM embedder to ONNX once, so searches start without importing torch",
    )
    x.set_defaults(func=cmd_export_embedder)

    r = sub.add_parser("recall", help="read a memory back as text")
    r.add_argument("id", type=int, help="the memory's id (from add or search)")
    r.add_argument("--read", action="store_true", help="read the page image even if the text is retained")
    r.set_defaults(func=cmd_recall)

    g = sub.add_parser("age", help="apply the forgetting policy now")
    g.add_argument(
        "--preread",
        action="store_true",
        help="then read the pages a first recall would read whole into the cache (3.5-4 s a 256 px page)",
    )
    g.set_defaults(func=cmd_age)

    c = sub.add_parser("context", help="build an LLM context for a query under a token budget")
    c.add_argument("query", help="the question the context should help answer")
    c.add_argument(
        "--budget", type=int, default=4000, help="token budget of the context (default: %(default)s)"
    )
    c.add_argument(
        "--mode",
        choices=["text", "image", "vision"],
        default="text",
        help="memories as text read back, as page images (for multimodal chat models) or as DeepSeek-OCR "
        "vision tokens (default: %(default)s)",
    )
    c.add_argument("--scope", help="build it from this scope only (default: every scope)")
    c.add_argument(
        "--target",
        choices=sorted(TARGETS),
        help="image mode: price images in this model's tokens and send each at the cheapest size it still "
        "reads (default: DeepEncoder's vision tokens, images at their tier)",
    )
    c.add_argument(
        "--recent-share",
        type=_recent_share,
        default="auto",
        help="the recent turns: 'auto' sends the last four and older ones only where they match the query; "
        "a number from 0 to 1 sends the newest turns up to that share of the budget (default: %(default)s)",
    )
    c.set_defaults(func=cmd_context)

    an = sub.add_parser(
        "answer", help="run the DeepSeek-OCR decoder over the vision context (needs --model-dir)"
    )
    an.add_argument("question", help="the question to answer from memory")
    an.add_argument(
        "--budget", type=int, default=2048, help="context budget in tokens (default: %(default)s)"
    )
    an.add_argument(
        "--max-new-tokens", type=int, default=512, help="longest answer in tokens (default: %(default)s)"
    )
    an.add_argument("--scope", help="answer from this scope only (default: every scope)")
    an.set_defaults(func=cmd_answer)

    st = sub.add_parser("stats", help="memories, pages, tokens and bytes per tier")
    st.set_defaults(func=cmd_stats)

    sh = sub.add_parser("show", help="export a memory's page images at their current tier")
    sh.add_argument("id", type=int, help="the memory's id")
    sh.add_argument("--out", default=".", help="folder to write the PNG files to (default: %(default)s)")
    sh.set_defaults(func=cmd_show)

    m = sub.add_parser(
        "mcp", help="serve the store to MCP clients (Claude Desktop, IDEs, agents) over stdio or HTTP"
    )
    m.add_argument(
        "--transport",
        choices=["stdio", "http"],
        default="stdio",
        help="stdio (the client starts this command) or streamable HTTP at /mcp (default: %(default)s)",
    )
    m.add_argument(
        "--host",
        default="127.0.0.1",
        help="HTTP address (default: %(default)s; there is no authentication: keep it local or proxied)",
    )
    m.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    m.add_argument("--scope", help="the scope tools use when the client gives none (default: scope required)")
    m.add_argument(
        "--only-scope",
        metavar="SCOPE",
        help="serve this one scope only: other scopes and their ids are invisible to the client",
    )
    m.set_defaults(func=cmd_mcp)

    sv = sub.add_parser(
        "serve", help="serve the store over HTTP: a JSON API with tenant keys, and the memory browser at /"
    )
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s; others need an API key)"
    )
    sv.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    sv.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the store (default: %(default)s)"
    )
    sv.add_argument(
        "--max-body-mb", type=float, default=64, help="largest request body in MiB (default: %(default)s)"
    )
    sv.set_defaults(func=cmd_serve)

    k = sub.add_parser(
        "keys", help="create, list and revoke the API keys of 'serve' (kept hashed in the store)"
    )
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create", help="make a key for some scopes (or --admin); prints it once")
    kc.add_argument(
        "--scope", action="append", help="a scope the key may touch, or a prefix ending in '*' (repeatable)"
    )
    kc.add_argument("--admin", action="store_true", help="a maintenance key: every scope, aging, stats")
    kc.add_argument("--label", default="", help="a note shown by 'keys list'")
    ksub.add_parser("list", help="the live keys (ids, scopes, labels; never the keys)")
    kr = ksub.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("id", help="the key's id (the 8 hex digits after om_), or the whole key")
    k.set_defaults(func=cmd_keys)

    ex = sub.add_parser("experiment", help="measure a claim and write CSV, JSON, a plot and a markdown table")
    exsub = ex.add_subparsers(dest="experiment", required=True)
    fg = exsub.add_parser(
        "forgetting",
        help="each reader's precision against compression on held-out prose, down the forgetting ladder",
    )
    fg.add_argument("--out", default="forgetting-results", help="output folder (default: %(default)s)")
    fg.add_argument(
        "--readers",
        default="rapidocr,tesseract",
        help=f"comma-separated, of {', '.join(experiments.READERS)} (default: %(default)s)",
    )
    fg.add_argument(
        "--sides",
        default="1024,640,512,384,256",
        help="comma-separated page sides in px (default: %(default)s)",
    )
    fg.add_argument("--pages", type=int, default=4, help="pages of 600-1300 tokens (default: %(default)s)")
    fg.add_argument("--seed", type=int, default=0, help="seed of the generated pages (default: %(default)s)")
    fg.set_defaults(func=cmd_experiment_forgetting)
    rc = exsub.add_parser(
        "recall",
        help="planted facts found and read back by age, against text RAG; scale figures of the same stream",
    )
    rc.add_argument("--out", default="recall-results", help="output folder (default: %(default)s)")
    rc.add_argument(
        "--checkpoints",
        default="100k,1M",
        help="comma-separated text-token counts to measure at, e.g. 100k,1M,10M (default: %(default)s)",
    )
    rc.add_argument(
        "--facts", type=int, default=24, help="facts planted per checkpoint (default: %(default)s)"
    )
    rc.add_argument("--seed", type=int, default=0, help="seed of the conversation (default: %(default)s)")
    rc.add_argument(
        "--age-every", default="250k", help="age() the store every N tokens (default: %(default)s)"
    )
    rc.add_argument(
        "--window", default="250k", help="ingest throughput window in tokens (default: %(default)s)"
    )
    rc.add_argument(
        "--queries", type=int, default=200, help="latency queries per checkpoint (default: %(default)s)"
    )
    rc.add_argument("--keep-store", action="store_true", help="keep the store in OUT/store for later study")
    rc.add_argument(
        "--gist",
        choices=("chunks", "sentences"),
        default="chunks",
        help="the store's gist vectors: per chunk of 160 words or per sentence (default: %(default)s)",
    )
    rc.set_defaults(func=cmd_experiment_recall)

    v = sub.add_parser("verify", help="check blobs and index; --repair heals what can be healed")
    v.add_argument(
        "--repair", action="store_true", help="rebuild the index, remove orphans and heal damaged pages"
    )
    v.set_defaults(func=cmd_verify)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        args.func(args)
    except BrokenPipeError:  # the reader went away (`stats | head -1`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(0)
    except OpticalMemoryError as e:
        print(f"optical-memory: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the file system said no (a --out that is a file, no space left, no permission)
        print(f"optical-memory: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
