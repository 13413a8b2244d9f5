"""DeepSeek-OCR backends: a Reader (pages -> text through the MoE decoder) and an Encoder (pages -> vision
tokens through DeepEncoder), both on ``optical_memory.model`` loaded from a local checkpoint folder.

A page is read at its current tier: a square page of side S goes through DeepEncoder at S pixels, so a 640
px page costs the decoder 100 vision tokens and a 384 px one 36, and what the aged page no longer shows
the decoder cannot read either. Other shapes (a PDF page, a photo) go through Base mode (1024, padded).
Recall uses the official OCR prompt and the official PDF script's no-repeat guard (n-gram 20 within a
window of 50), batched across pages of the same side. The same classes serve optical-mini, the small model
of this architecture that ships in the package (``OpticalMiniReader``, ``OpticalMiniEncoder``: default
weights, float32). Only this module, and ``optical_memory.training`` that trains optical-mini, import
``optical_memory.model``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InvalidInput, MissingDependency
from ..hardware import cpu_name, native_bfloat16
from ..types import TextLine

log = logging.getLogger(__name__)

MODEL_NAME = "deepseek-ocr"
MODEL_DIR_ENV = "OPTICAL_MEMORY_MODEL_DIR"
# optical-mini: this project's own small model of the same architecture, trained by optical_memory.training
# and shipped inside the package (see its model card, README.md in the folder)
MINI_NAME = "optical-mini"
MINI_DIR = Path(__file__).resolve().parent.parent / "weights" / MINI_NAME
OCR_PROMPT = "<image>\nFree OCR."
_DOWNLOAD = "hf download deepseek-ai/DeepSeek-OCR --local-dir <folder>"


def resolve_model_dir(model_dir: str | os.PathLike[str] | None, *, model: str = MODEL_NAME) -> Path:
    """The checkpoint folder: ``model_dir``, else (DeepSeek-OCR) $OPTICAL_MEMORY_MODEL_DIR or (optical-mini)
    the weights shipped in the package; an error naming what to fetch or rebuild."""
    if model == MINI_NAME:
        path = Path(model_dir).expanduser() if model_dir is not None else MINI_DIR
        if not (path / "config.json").is_file():
            raise MissingDependency(
                f"no optical-mini checkpoint in {str(path)!r} (config.json is missing): reinstall "
                "optical-memory, or train one with: python -m optical_memory.training --export <folder>"
            )
        return path
    chosen = model_dir if model_dir is not None else os.environ.get(MODEL_DIR_ENV)
    if not chosen:
        raise InvalidInput(
            f"the {MODEL_NAME!r} backends need a DeepSeek-OCR checkpoint folder: pass model_dir=... or set "
            f"{MODEL_DIR_ENV}; download it once with: {_DOWNLOAD}"
        )
    path = Path(chosen).expanduser()
    if not (path / "config.json").is_file():
        raise MissingDependency(
            f"no DeepSeek-OCR checkpoint in {str(path)!r} (config.json is missing); download it with: "
            f"{_DOWNLOAD.replace('<folder>', str(path))}"
        )
    return path


@functools.cache
def load_model(model_dir: str, device: str, dtype: str) -> Any:
    """One loaded model per (folder, device, dtype) per process, shared by the reader and the encoder."""
    try:
        import torch

        from ..model import CheckpointError, from_pretrained
    except ImportError as e:  # pragma: no cover - torch is a core dependency
        raise MissingDependency(f"the DeepSeek-OCR backends need torch: pip install torch ({e})") from e
    try:
        return from_pretrained(model_dir, dtype=getattr(torch, dtype), device=device)
    except CheckpointError as e:
        raise MissingDependency(str(e)) from e


def _mode(image: Image.Image) -> int | str:
    return image.width if image.width == image.height and image.width % 16 == 0 else "base"


class _DeepseekBackend:
    name = MODEL_NAME
    default_dtype = "bfloat16"  # what dtype=None means, on a GPU or on a CPU with native bfloat16

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 8,
    ) -> None:
        dtype = dtype or self._default_dtype(device)
        if dtype not in ("bfloat16", "float16", "float32"):
            raise InvalidInput(f"dtype must be 'bfloat16', 'float16' or 'float32', got {dtype!r}")
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be at least 1, got {batch_size!r}")
        self.model_dir = resolve_model_dir(model_dir, model=self.name)  # fail now, not at the first recall
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def _default_dtype(self, device: str) -> str:
        """``default_dtype``, except float32 on a CPU whose bfloat16 is not native (AVX2 only: there every
        bfloat16 matmul is converted tile by tile, many times slower than float32)."""
        if self.default_dtype == "bfloat16" and device.startswith("cpu") and not native_bfloat16():
            log.info("%s: bfloat16 is not native on %s: running in float32", self.name, cpu_name())
            return "float32"
        return self.default_dtype

    @property
    def model(self) -> Any:
        return load_model(str(self.model_dir.resolve()), self.device, self.dtype)

    def _groups(self, images: Sequence[Image.Image]) -> dict[int | str, list[int]]:
        """Indices of ``images`` by encoding mode: pages of one side batch together."""
        groups: dict[int | str, list[int]] = {}
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise InvalidInput(f"expected PIL images, got {type(image).__name__} at position {i}")
            groups.setdefault(_mode(image), []).append(i)
        return groups


class DeepseekOCRReader(_DeepseekBackend):
    """Reader: each page's text generated by DeepSeek-OCR's decoder from the page at its current tier.

    ``max_new_tokens`` bounds one page's output (a full 1024 px page of this project's renderer is ~1,000
    tokens); ``ngram_size``/``window_size`` are the no-repeat guard (None turns it off).
    Lines come back in the decoder's order without boxes.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 2048,
        ngram_size: int | None = 20,
        window_size: int = 50,
        prompt: str = OCR_PROMPT,
    ) -> None:
        super().__init__(model_dir, device=device, dtype=dtype, batch_size=batch_size)
        from ..model import GenerationConfig

        try:
            self.generation = GenerationConfig(
                max_new_tokens=max_new_tokens, ngram_size=ngram_size, window_size=window_size
            )
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        if prompt.count("<image>") != 1:
            raise InvalidInput(f"the prompt must hold exactly one '<image>', got {prompt!r}")
        self.prompt = prompt

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        images = list(images)
        texts: list[str] = [""] * len(images)
        with self._lock:
            model = self.model
            for mode, indices in self._groups(images).items():
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start : start + self.batch_size]
                    vision = model.encode([images[i] for i in batch], mode, batch_size=self.batch_size)
                    generated = model.generate(vision, self.prompt, config=self.generation)
                    for i, text in zip(batch, generated, strict=True):
                        texts[i] = text
        return [[TextLine(line.strip()) for line in text.splitlines() if line.strip()] for text in texts]


class DeepseekEncoder(_DeepseekBackend):
    """Encoder: each page's DeepEncoder vision tokens at its current tier, as float16 (positions, hidden)
    arrays laid out as the decoder takes them (row newlines and the view separator included)."""

    @property
    def dim(self) -> int:
        return int(self.model.config.decoder.hidden_size)

    # -- VisionContext: the decoder takes these tokens directly -----------------------------------------

    def count_text(self, text: str) -> int:
        """``text`` in the DeepSeek tokenizer's tokens (no BOS)."""
        return len(self.model.tokenizer.encode(text, add_special_tokens=False))

    def assemble(self, segments: Sequence[str | np.ndarray]) -> tuple[Any, Any]:
        """BOS, then each text piece's token embeddings or each vision-token array, in order:
        ``inputs_embeds`` (1, T, hidden) in the model's dtype and an all-ones ``attention_mask`` (1, T)."""
        import torch

        model = self.model
        embed = model.model.embed_tokens
        with self._lock, torch.inference_mode():
            ids = [model.config.decoder.bos_token_id]
            pieces = []
            for seg in segments:
                if isinstance(seg, str):
                    ids += model.tokenizer.encode(seg, add_special_tokens=False)
                    continue
                if ids:
                    pieces.append(embed(torch.tensor(ids, device=model.device)))
                    ids = []
                pieces.append(
                    torch.from_numpy(np.asarray(seg, dtype=np.float32)).to(model.device, model.dtype)
                )
            if ids:
                pieces.append(embed(torch.tensor(ids, device=model.device)))
            inputs = torch.cat(pieces)[None]  # (1, T, hidden)
        return inputs, torch.ones(inputs.shape[:2], dtype=torch.long, device=model.device)

    def text_embeddings(self, text: str) -> np.ndarray:
        """``text``'s token embeddings from the decoder's own table: float32 (tokens, hidden)."""
        import torch

        model = self.model
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        with self._lock, torch.inference_mode():
            table = model.model.embed_tokens(torch.tensor(ids, dtype=torch.long, device=model.device))
        return np.asarray(table.float().cpu().numpy())

    def truncate(self, text: str, n: int) -> str:
        """The first ``n`` decoder tokens of ``text``, as text."""
        from .baselines import truncate_ids

        tokenizer = self.model.tokenizer
        return str(tokenizer.decode(truncate_ids(tokenizer.encode(text, add_special_tokens=False), n)))

    def complete(self, inputs_embeds: Any, attention_mask: Any, *, max_new_tokens: int = 512) -> str:
        """Greedy continuation of ``inputs_embeds`` with the official no-repeat guard."""
        from ..model import GenerationConfig

        model = self.model
        config = GenerationConfig(max_new_tokens=max_new_tokens, ngram_size=20, window_size=50)
        with self._lock:
            out = model.generate_tokens(inputs_embeds, attention_mask=attention_mask, config=config)
        return str(model.tokenizer.decode(out.tokens[0], skip_special_tokens=True))

    def encode(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        images = list(images)
        out: list[np.ndarray | None] = [None] * len(images)
        with self._lock:
            model = self.model
            for mode, indices in self._groups(images).items():
                vision = model.encode([images[i] for i in indices], mode, batch_size=self.batch_size)
                for i, tokens in zip(indices, vision, strict=True):
                    out[i] = tokens.float().cpu().numpy().astype(np.float16)
        return [o for o in out if o is not None]


class OpticalMiniReader(DeepseekOCRReader):
    """The DeepSeek-OCR reader on optical-mini, the small model this project trains and ships: no download,
    and fast on a CPU. ``model_dir`` defaults to the shipped weights."""

    name = MINI_NAME
    default_dtype = "float32"  # small matmuls: bfloat16 decodes 1.6x slower on this project's CPU


class OpticalMiniEncoder(DeepseekEncoder):
    """The DeepSeek-OCR encoder (vision tokens, and vision-mode context) on the shipped optical-mini."""

    name = MINI_NAME
    default_dtype = "float32"
