"""Shared fixtures: the real backends, each built once per test session (the models take seconds to load)."""

from __future__ import annotations

import pytest

from optical_memory.backends import make_embedder, make_reader
from optical_memory.backends.minilm import MiniLMEmbedder
from optical_memory.backends.rapidocr_reader import RapidOCRReader
from optical_memory.backends.tiktoken_counter import TiktokenCounter


@pytest.fixture(scope="session")
def embedder() -> MiniLMEmbedder:
    """The real all-MiniLM-L6-v2 embedder, loaded here (about 4 s, once) so no test is charged for it."""
    model = make_embedder("minilm")  # the instance the store's factory shares in-process
    model.embed(["warm up"])
    return model


@pytest.fixture(scope="session")
def reader() -> RapidOCRReader:
    """The real RapidOCR reader (the ONNX models load on its first read)."""
    return make_reader("rapidocr")


@pytest.fixture(scope="session")
def counter() -> TiktokenCounter:
    """The offline cl100k_base token counter."""
    return TiktokenCounter()
