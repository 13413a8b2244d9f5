"""Checks on user input, before anything is written: each returns the value as the store keeps it, or
raises ``InvalidInput`` naming the bad value. The first room of the data flow; it knows no store.
"""

from __future__ import annotations

import json
import math
import os
import time
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import InvalidInput

SQL_INT = 2**63  # SQLite INTEGER and PostgreSQL BIGINT hold [-2**63, 2**63): no id lies outside
METADATA_DEPTH = 64  # nesting levels of metadata (Python's json recursion limit is ~1,000)


def now() -> float:
    return time.time()


def shown(value: object, limit: int = 200) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (a megabyte-long argument must not
    make a megabyte-long message), and safe where repr raises (ints over 4,300 digits, deep nesting)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit] + "..."


def check_name(value: object, what: str, *, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a str, got {type(value).__name__} {shown(value)}")
    if not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string, got {value[:40]!r}")
    if len(value) > max_len:
        raise InvalidInput(
            f"{what} is {len(value)} characters long, at most {max_len} allowed: {value[:40]!r}..."
        )
    bad = [c for c in value if unicodedata.category(c) in ("Cc", "Cs")]
    if bad:
        raise InvalidInput(f"{what} {value!r} contains control or surrogate characters {bad!r}")
    return value


def check_scope(scope: object) -> str:
    return check_name(scope, "scope", max_len=255)


def check_metadata(metadata: object, what: str = "metadata") -> dict[str, Any]:
    """``metadata`` as plain JSON (a dict of str keys), or ``InvalidInput`` naming it as ``what``."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput(f"{what} must be a dict, got {type(metadata).__name__} {shown(metadata)}")
    for key in metadata:
        if not isinstance(key, str):
            raise InvalidInput(f"{what} keys must be str, got {shown(key)} in {shown(metadata)}")
    try:
        plain = dict(json.loads(json.dumps(dict(metadata), allow_nan=False)))
    except RecursionError:
        raise InvalidInput(f"{what} is nested more than {METADATA_DEPTH} levels deep") from None
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be JSON-serialisable, got {shown(metadata)} ({e})") from None
    _check_json_strings(plain, metadata, what=what)
    return plain


def _check_json_strings(obj: object, metadata: object, depth: int = 0, *, what: str = "metadata") -> None:
    """Refuse NUL characters and lone surrogates anywhere in metadata: PostgreSQL's json operators cannot
    read a row holding them (every metadata filter on its scope would fail). Refuse nesting deeper than
    ``METADATA_DEPTH`` too: the JSON parsers on the way (SQLAlchemy's, the databases') recurse."""
    if depth > METADATA_DEPTH:
        raise InvalidInput(f"{what} is nested more than {METADATA_DEPTH} levels deep: {shown(metadata)}")
    if isinstance(obj, str):
        if "\x00" in obj or any(0xD800 <= ord(c) <= 0xDFFF for c in obj):
            raise InvalidInput(
                f"{what} string {obj[:40]!r} holds a NUL character or a lone surrogate: {shown(metadata)}"
            )
    elif isinstance(obj, list):
        for item in obj:
            _check_json_strings(item, metadata, depth + 1, what=what)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_json_strings(key, metadata, depth + 1, what=what)
            _check_json_strings(value, metadata, depth + 1, what=what)


def _finite(value: object) -> float | None:
    """``value`` as a finite float; None for a non-number (a bool is not one), NaN, inf, or an int beyond
    float's range (``math.isfinite(2**1024)`` raises OverflowError)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def check_timestamp(timestamp: object) -> float:
    if timestamp is None:
        return now()
    if isinstance(timestamp, datetime):
        try:
            return timestamp.timestamp()
        except (ValueError, OverflowError, OSError) as e:  # e.g. datetime.min, naive: local time is year 0
            raise InvalidInput(f"timestamp {shown(timestamp)} has no epoch seconds ({e})") from None
    number = _finite(timestamp)
    if number is not None:
        return number
    raise InvalidInput(f"timestamp must be epoch seconds or a datetime, got {shown(timestamp)}")


def check_ttl(ttl: object) -> float | None:
    """A time to live in seconds: None (never expires) or a positive finite number."""
    if ttl is None:
        return None
    number = _finite(ttl)
    if number is not None and number > 0:
        return number
    raise InvalidInput(f"ttl must be None or a positive finite number of seconds, got {shown(ttl)}")


def check_progress(progress: object) -> None:
    """A progress callback: None, or a callable that is given a count of items done."""
    if progress is not None and not callable(progress):
        raise InvalidInput(f"progress must be a callable taking a count, got {shown(progress)}")


def check_count(value: object, what: str, *, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        none = "None or " if allow_none else ""
        raise InvalidInput(f"{what} must be {none}a non-negative int, got {shown(value)}")
    return min(value, SQL_INT - 1)  # beyond SQL's 64-bit integers: as good as no bound


def is_sql_int(value: object) -> bool:
    """Whether ``value`` is an int (not a bool) that SQL's integer columns can hold: could be an id."""
    return isinstance(value, int) and not isinstance(value, bool) and -SQL_INT <= value < SQL_INT


def page_id_fits(page_id: object) -> bool:
    """Whether ``page_id`` could be a page's id; False for an int SQL cannot hold (no page has it),
    ``InvalidInput`` for anything but an int."""
    if not isinstance(page_id, int) or isinstance(page_id, bool):
        raise InvalidInput(f"page id must be an int, got {type(page_id).__name__} {shown(page_id)}")
    return is_sql_int(page_id)


def check_file(path: object) -> Path:
    """``path`` as the Path of a regular file, or ``InvalidInput`` saying why not (missing, a folder, a
    symlink loop, a name too long, a NUL in it, not a path at all)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInput(f"path must be a str or os.PathLike, got {type(path).__name__} {shown(path)}")
    try:
        file = Path(path)  # a PathLike giving bytes raises TypeError
        file.stat()  # follows symlinks: a loop raises here
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {str(path)[:300]!r}") from None
    except (OSError, ValueError, TypeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise InvalidInput(f"cannot read path {str(path)[:300]!r}: {reason}") from None
    if not file.is_file():
        raise InvalidInput(f"path {str(file)[:300]!r} is not a regular file (a folder, a device or a pipe)")
    return file
