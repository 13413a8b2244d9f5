"""The four small interfaces the store is written against. Backends live in ``optical_memory.backends``.

Contracts:

* ``Embedder.embed(texts)`` returns a float32 array of shape ``(len(texts), dim)`` whose rows have unit
  L2 norm, so inner product is cosine similarity. The same text always gives the same vector.
* ``Reader.read(images)`` returns, per image, its text lines in reading order (top to bottom, then left to
  right). ``TextLine.box`` is in the pixel coordinates of the image as given, or None for readers that do
  not locate text.
* ``Encoder.encode(images)`` returns, per image, its vision tokens as a float array ``(tokens, dim)``.
* ``TokenCounter.count(text)`` returns the number of LLM tokens ``text`` costs.
* ``VisionContext`` is what an encoder whose decoder can take its vision tokens directly also offers:
  ``count_text(text)`` in that decoder's tokens; ``assemble(segments)`` turns text pieces and vision-token
  arrays, in order, into the decoder's input (each text piece tokenized on its own, after a BOS), so its
  length is 1 + the sum of the pieces' counts; ``complete(inputs, mask, max_new_tokens=...)`` generates text;
  ``text_embeddings(text)`` and ``truncate(text, n)`` serve the text baselines (``backends.baselines``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from .types import TextLine


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class Reader(Protocol):
    name: str

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]: ...


@runtime_checkable
class LineReader(Reader, Protocol):
    """A reader that can also read single lines: each image is one line of text (no layout analysis), read
    as a string ("" for none). Recall uses it to read only the lines of a memory, not its whole page."""

    def read_lines(self, images: Sequence[Image.Image]) -> list[str]: ...


@runtime_checkable
class Encoder(Protocol):
    name: str

    def encode(self, images: Sequence[Image.Image]) -> list[np.ndarray]: ...


@runtime_checkable
class VisionContext(Protocol):
    def count_text(self, text: str) -> int: ...

    def assemble(self, segments: Sequence[str | np.ndarray]) -> tuple[Any, Any]: ...

    def complete(self, inputs_embeds: Any, attention_mask: Any, *, max_new_tokens: int = 512) -> str: ...

    def text_embeddings(self, text: str) -> np.ndarray: ...

    def truncate(self, text: str, n: int) -> str: ...


@runtime_checkable
class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...
