"""FAISS inner-product index of gist vectors, one sub-index per scope, keyed by SQL embedding ids.

The index is a cache: SQL holds every vector, so the index can always be rebuilt. It is tagged with the
store generation it reflects; the store catches an older one up from SQL's log (see
``OpticalMemory._sync_index``). On disk it is one file: a magic line, a JSON header (generation,
dimension, per-scope sizes, payload sha256) and the scopes' ``faiss.serialize_index`` bytes. A file whose
checksum or sizes do not hold is discarded and rebuilt, never trusted. No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np

from .blobs import atomic_write

log = logging.getLogger(__name__)

MAGIC = b"OPTICAL-MEMORY-INDEX 1\n"


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run FAISS on the calling thread only (OpenMP's thread count is per calling thread), then restore it."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class VectorIndex:
    """Exact cosine search (vectors are unit norm) over per-scope ``IndexIDMap2(IndexFlatIP)``.

    Per-scope sub-indexes make tenant isolation structural: a search in one scope never sees another's
    vectors, and deleting a scope drops its sub-index whole.
    """

    def __init__(self, dim: int, *, generation: int = 0) -> None:
        self.dim = dim
        self.generation = generation  # the store generation whose vectors this index holds
        self._scopes: dict[str, faiss.IndexIDMap2] = {}

    def _sub(self, scope: str) -> faiss.IndexIDMap2:
        sub = self._scopes.get(scope)
        if sub is None:
            sub = self._scopes[scope] = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        return sub

    def __len__(self) -> int:
        return sum(sub.ntotal for sub in self._scopes.values())

    def replace(self, other: VectorIndex) -> None:
        """Hold what ``other`` holds (an index rebuilt from SQL), so that whoever holds this one sees it."""
        self.dim, self.generation, self._scopes = other.dim, other.generation, other._scopes

    @property
    def n_scopes(self) -> int:
        return len(self._scopes)

    def scopes(self) -> list[str]:
        return list(self._scopes)

    def ids(self) -> dict[str, set[int]]:
        """Every vector id, per scope (for consistency checks against SQL)."""
        return {name: set(faiss.vector_to_array(sub.id_map).tolist()) for name, sub in self._scopes.items()}

    def add_rows(self, rows: Iterable[tuple[str, int, bytes]]) -> None:
        """Add (scope, id, little-endian float32 bytes) rows, as SQL stores them."""
        by_scope: dict[str, list[tuple[int, bytes]]] = {}
        for scope, vid, vector in rows:
            by_scope.setdefault(scope, []).append((vid, vector))
        for scope, pairs in by_scope.items():
            raw = b"".join(v for _, v in pairs)
            self.add(scope, [i for i, _ in pairs], np.frombuffer(raw, dtype="<f4").reshape(len(pairs), -1))

    def add(self, scope: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self._sub(scope).add_with_ids(vectors, np.asarray(ids, dtype=np.int64))

    def remove(self, scope: str, ids: Sequence[int]) -> None:
        sub = self._scopes.get(scope)
        if sub is not None and len(ids):
            sub.remove_ids(np.asarray(ids, dtype=np.int64))  # type: ignore[arg-type]

    def drop_scope(self, scope: str) -> None:
        self._scopes.pop(scope, None)

    def search(
        self, query: np.ndarray, k: int, scopes: Iterable[str] | None = None
    ) -> list[tuple[int, float]]:
        """The ``k`` best (id, score) pairs over ``scopes`` (all scopes if None), best first.

        One query is scanned on the calling thread: FAISS's OpenMP team costs more than it saves here. On
        2 cores, over 148,814 vectors, one thread took 20.9 / 21.6 ms (p50 / p99) against 22.9 / 30.1 ms
        for two (``benchmarks/bench_index.py``), and ``OpticalMemory.search`` at 10M tokens went from
        37.8 / 42.1 ms to 29.2 / 32.8 ms (``benchmarks/bench_serve.py``).
        """
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        names = list(self._scopes) if scopes is None else [s for s in scopes if s in self._scopes]
        found: list[tuple[int, float]] = []
        with _one_thread():
            for name in names:
                sub = self._scopes[name]
                if sub.ntotal == 0:
                    continue
                scores, ids = sub.search(q, min(k, sub.ntotal))
                found.extend((int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1)
        found.sort(key=lambda pair: (-pair[1], pair[0]))
        return found[:k]

    # -- persistence ---------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file, fsync, rename): a reader sees the old file or the new one, whole."""
        path = Path(path)
        blobs = [
            (name, faiss.serialize_index(sub).tobytes(), sub.ntotal) for name, sub in self._scopes.items()
        ]
        payload = b"".join(b for _, b, _ in blobs)
        header = {
            "generation": self.generation,
            "dim": self.dim,
            "scopes": [[name, len(b), n] for name, b, n in blobs],
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        atomic_write(path, MAGIC + json.dumps(header).encode() + b"\n" + payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, dim: int) -> VectorIndex | None:
        """The saved index if the file is intact (of any generation: the store catches it up), else None."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            if not data.startswith(MAGIC):
                raise ValueError("bad magic")
            end = data.index(b"\n", len(MAGIC))
            header = json.loads(data[len(MAGIC) : end])
            payload = data[end + 1 :]
            if hashlib.sha256(payload).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch")
            if header["dim"] != dim:
                raise ValueError(f"dimension {header['dim']} != {dim}")
            index = cls(dim, generation=int(header["generation"]))
            offset = 0
            for name, nbytes, ntotal in header["scopes"]:
                raw = np.frombuffer(payload[offset : offset + nbytes], dtype=np.uint8)
                offset += nbytes
                sub = faiss.deserialize_index(raw)
                if sub.ntotal != ntotal or sub.d != dim:
                    raise ValueError(f"scope {name!r} holds {sub.ntotal} vectors, header says {ntotal}")
                if not isinstance(sub, faiss.IndexIDMap2):
                    raise ValueError(f"scope {name!r} is a {type(sub).__name__}, not an IndexIDMap2")
                index._scopes[name] = sub
        except (ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as e:
            log.warning("index file %s is corrupt (%s); it will be rebuilt from SQL", path, e)
            return None
        return index
