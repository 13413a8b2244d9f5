"""API keys for ``optical-memory serve``: each bound to the scopes it may touch, or an admin key.

    optical-memory keys create --scope alice --scope 'team-a/*' --label "alice's agent"  # prints it once
    optical-memory keys list
    optical-memory keys revoke 3f9c2a1b

A key reads ``om_<id>_<secret>``: ``id`` (8 hex digits) names it in listings and logs, ``secret`` (32 random
bytes) is what proves it. Only the SHA-256 of the whole key is kept, in ``serve-keys.json`` in the store
folder, next to the data it guards: hosts that share the folder share the keys, and a key created or revoked
on one is seen by every server process at its next request (the file is re-read when it changes). A key is
checked by its id, then by comparing hashes in constant time; an unknown id is compared against a dummy hash
so both paths take as long. Once the file exists every request needs a key, even after the last one is
revoked; deleting the file is how a server goes back to answering loopback clients without keys.

A scope pattern is a scope name, or a prefix ending in ``*`` (``team-a/*``: every scope starting ``team-a/``).
A plain SHA-256 suffices for 256-bit random secrets: there is no password to guess, so no slow hash is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InvalidInput

KEYS_FILE = "serve-keys.json"
_KEY = re.compile(r"om_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A key as stored: never the key itself, only its hash."""

    id: str
    scopes: tuple[str, ...]
    admin: bool
    label: str
    created_at: float
    sha256: str = field(repr=False)

    def may(self, scope: str) -> bool:
        """Whether this key may touch ``scope``."""
        return self.admin or any(_matches(p, scope) for p in self.scopes)


def _matches(pattern: str, scope: str) -> bool:
    return scope.startswith(pattern[:-1]) if pattern.endswith("*") else scope == pattern


def _check_pattern(pattern: object) -> str:
    if not isinstance(pattern, str) or not pattern or len(pattern) > 255:
        raise InvalidInput(f"a key's scope must be a non-empty string of at most 255 chars, got {pattern!r}")
    if "*" in pattern[:-1]:
        raise InvalidInput(f"a key's scope may end in '*' (a prefix), but has '*' elsewhere: {pattern!r}")
    if pattern == "*":
        raise InvalidInput("a key bound to '*' reaches every scope: create an admin key (--admin) instead")
    return pattern


class KeyRing:
    """The keys of one store folder, re-read whenever ``serve-keys.json`` changes. Safe across threads and
    processes: writes take an exclusive lock file and replace the file atomically."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / KEYS_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._keys: dict[str, ApiKey] = {}

    # -- reading ---------------------------------------------------------------------------------------------

    def all(self) -> list[ApiKey]:
        """Every live key, oldest first."""
        return sorted(self._load().values(), key=lambda k: (k.created_at, k.id))

    @property
    def required(self) -> bool:
        """Whether requests need a key: once the keys file exists, even with every key revoked (revoking the
        last key must not open the server). Delete the file to serve loopback clients without keys again."""
        self._load()
        return self._seen is not None

    def check(self, presented: str | None) -> ApiKey | None:
        """The key ``presented`` proves, or None (absent, malformed, unknown or revoked)."""
        if not presented:
            return None
        match = _KEY.fullmatch(presented.strip())
        known = self._load().get(match.group(1)) if match else None
        digest = hashlib.sha256(presented.strip().encode()).hexdigest()
        same = hmac.compare_digest(digest, known.sha256 if known else _DUMMY_HASH)
        return known if (known is not None and same) else None

    def _load(self) -> dict[str, ApiKey]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            with self._lock:
                self._seen, self._keys = None, {}
            return {}
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if stamp != self._seen:
                self._keys = self._parse(self.path.read_text(encoding="utf-8"))
                self._seen = stamp
            return self._keys

    def _parse(self, raw: str) -> dict[str, ApiKey]:
        try:
            rows = json.loads(raw)["keys"]
            keys = [ApiKey(**{**row, "scopes": tuple(row["scopes"])}) for row in rows]
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidInput(f"{str(self.path)!r} is not a keys file this version can read ({e})") from e
        return {k.id: k for k in keys}

    # -- writing ---------------------------------------------------------------------------------------------

    def create(
        self, scopes: list[str] | tuple[str, ...] = (), *, admin: bool = False, label: str = ""
    ) -> str:
        """Make a key for ``scopes`` (names or ``prefix*`` patterns), or an admin key; returns the key, which
        is not kept anywhere: show it once."""
        patterns = tuple(_check_pattern(p) for p in scopes)
        if not patterns and not admin:
            raise InvalidInput("a key needs at least one scope (--scope NAME), or --admin")
        if admin and patterns:
            raise InvalidInput(f"an admin key reaches every scope; drop the scopes {list(patterns)!r}")
        if not isinstance(label, str) or len(label) > 200:
            raise InvalidInput(f"a key's label must be a string of at most 200 chars, got {label!r}")
        with self._writing() as keys:
            key_id = secrets.token_hex(4)
            while key_id in keys:
                key_id = secrets.token_hex(4)
            key = f"om_{key_id}_{secrets.token_urlsafe(32)}"
            keys[key_id] = ApiKey(
                id=key_id,
                scopes=patterns,
                admin=admin,
                label=label,
                created_at=time.time(),
                sha256=hashlib.sha256(key.encode()).hexdigest(),
            )
        return key

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key by its id (or the whole key); returns what was revoked."""
        match = _KEY.fullmatch(key_id.strip())
        key_id = match.group(1) if match else key_id.strip()
        with self._writing() as keys:
            if key_id not in keys:
                raise InvalidInput(f"no key with id {key_id!r} in {str(self.path)!r}")
            return keys.pop(key_id)

    class _Writing:
        def __init__(self, ring: KeyRing) -> None:
            self.ring = ring

        def __enter__(self) -> dict[str, ApiKey]:
            import fcntl

            self.ring.path.parent.mkdir(parents=True, exist_ok=True)
            self.lock = open(self.ring.path.with_suffix(".lock"), "a")
            fcntl.flock(self.lock, fcntl.LOCK_EX)
            raw = self.ring.path.read_text(encoding="utf-8") if self.ring.path.exists() else '{"keys": []}'
            self.keys = self.ring._parse(raw)
            return self.keys

        def __exit__(self, exc_type: object, *rest: object) -> None:
            try:
                if exc_type is None:
                    rows = [{**asdict(k), "scopes": list(k.scopes)} for k in self.keys.values()]
                    fd, tmp = tempfile.mkstemp(dir=self.ring.path.parent, prefix=".keys-")
                    with os.fdopen(fd, "w", encoding="utf-8") as f:
                        json.dump({"keys": rows}, f, indent=1)
                        f.flush()
                        os.fsync(f.fileno())
                    os.chmod(tmp, 0o600)
                    os.replace(tmp, self.ring.path)
            finally:
                self.lock.close()  # releases the flock

    def _writing(self) -> KeyRing._Writing:
        return KeyRing._Writing(self)
