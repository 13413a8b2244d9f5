"""Content-addressed blob folder for page images: written to a temp file, fsynced, then renamed.

A blob's name is the sha256 of its bytes plus a suffix, fanned out into 256 sub-folders. A row in SQL
refers to a blob only after the blob is durable; blobs no row refers to are swept by ``verify``.

Several processes (and hosts, on a filesystem with working ``flock``, e.g. NFSv4) share one folder. A
writer holds ``.lock`` shared from its first blob until its transaction commits; deleting an unreferenced
blob takes it exclusive, so a blob is never swept while a transaction that refers to it is in flight.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import BlobError


def atomic_write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that a crash leaves either the old file or the new one, whole:
    a temp file in the same folder, fsynced, renamed over the target, then the folder fsynced."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()  # flock is per open file: threads of one process take turns here
        self._lock_path = self.root / ".lock"

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        with self._guard, open(self._lock_path, "a+") as f:
            fcntl.flock(f, mode)
            yield  # closing the file releases the lock

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Hold while writing blobs that a transaction about to commit will refer to."""
        return self._flock(fcntl.LOCK_SH)

    def sweeping(self) -> contextlib.AbstractContextManager[None]:
        """Hold while deciding a blob is unreferenced and deleting it: waits for in-flight writers."""
        return self._flock(fcntl.LOCK_EX)

    def path(self, name: str) -> Path:
        return self.root / name[:2] / name

    def put(self, data: bytes, *, suffix: str = ".png") -> str:
        """Store ``data`` durably and return its name; storing the same bytes twice is a no-op."""
        name = hashlib.sha256(data).hexdigest() + suffix
        target = self.path(name)
        if target.exists() and self.check(name) is None:
            os.utime(target)  # already stored: now young again, so no sweep's grace period has run out on it
            return name  # (a damaged copy is overwritten below)
        target.parent.mkdir(exist_ok=True)
        atomic_write(target, data)
        return name

    def get(self, name: str) -> bytes:
        """The blob's bytes, checked against its name; BlobError if missing or corrupt."""
        path = self.path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobError(f"blob {name} is missing (expected at {path})") from None
        if hashlib.sha256(data).hexdigest() != name.split(".", 1)[0]:
            raise BlobError(f"blob {name} is corrupt: its bytes no longer match their hash ({path})")
        return data

    def check(self, name: str) -> str | None:
        """None if the blob is intact, else "missing" or "corrupt"."""
        try:
            self.get(name)
        except BlobError as e:
            return "missing" if "missing" in str(e) else "corrupt"
        return None

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> Iterator[str]:
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for f in sorted(sub.iterdir()):
                    if not f.name.startswith(".tmp-"):
                        yield f.name

    def age_s(self, name: str) -> float:
        """Seconds since the blob was last stored (0 if it is gone)."""
        try:
            return max(0.0, time.time() - self.path(name).stat().st_mtime)
        except FileNotFoundError:
            return 0.0

    def size(self, name: str) -> int:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            return 0
