"""One exception root, ``OpticalMemoryError``; each leaf also subclasses the builtin it refines.

Messages always carry the offending value, so a log line alone says what went wrong.
"""

from __future__ import annotations


class OpticalMemoryError(Exception):
    """Root of every error this library raises on purpose."""


class InvalidInput(OpticalMemoryError, ValueError):
    """Text, a scope, an option or a file that cannot be stored as given."""


class UnrenderableText(InvalidInput):
    """A value given as text that is not text (bytes, a number, None): there is nothing to draw.

    Text itself is never refused for its characters: a character no font has is drawn as a visible
    stand-in (see ``Renderer.prepare``). ``value`` is the offending value.
    """

    def __init__(self, value: object) -> None:
        self.value = value
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        hint = " (decode it first, e.g. data.decode('utf-8'))" if isinstance(value, bytes | bytearray) else ""
        super().__init__(f"text must be a str, got {type(value).__name__} {shown}{hint}")


class MemoryNotFound(OpticalMemoryError, KeyError):
    """No memory with this id (it never existed, or it was deleted)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "memory not found"


class ScopeNotFound(OpticalMemoryError, KeyError):
    """No memory was ever stored under this scope (or the scope was deleted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "scope not found"


class BlobError(OpticalMemoryError, OSError):
    """A page image is missing from the blob folder or does not match its recorded hash.

    ``store.verify(repair=True)`` heals what can be healed.
    """


class StoreLocked(OpticalMemoryError, RuntimeError):
    """Another process holds a lock this call needs: the store is held exclusively (a schema migration),
    or a migration is needed while other processes have the store open."""


class StoreBusy(StoreLocked):
    """A write waited too long for SQLite's single write lock, held by another process. Nothing was
    written; retrying is safe."""


class SchemaVersionError(OpticalMemoryError, RuntimeError):
    """The store was written by a newer (or unknown) schema version than this library knows."""


class MissingDependency(OpticalMemoryError, ImportError):
    """An optional part was asked for but its extra is not installed; the message names the pip command."""
