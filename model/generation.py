"""Decoding settings and the pieces of the decoding loop that are not the network.

``GenerationConfig`` holds the official DeepSeek-OCR decoding settings (greedy, 8192 new tokens, a
no-repeat n-gram guard); ``NoRepeatNGram`` is that guard, following the rule of the official vLLM
logits processor; ``sample_next_token`` / ``greedy_next_token`` pick the next id from logits. The loop
itself lives in ``decoder.DeepseekV2ForCausalLM.generate_tokens``; ``pair_requests`` and ``left_pad`` batch
requests for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """How ``DeepseekV2ForCausalLM.generate_tokens`` decodes; defaults follow the official scripts."""

    max_new_tokens: int = 8192  # HF ``infer`` and the vLLM scripts (also the training sequence length)
    do_sample: bool = False  # official decoding is greedy (temperature 0.0)
    temperature: float = 1.0  # only read when sampling
    top_k: int = 0  # 0 keeps the whole vocabulary
    top_p: float = 1.0  # 1.0 keeps the whole vocabulary
    seed: int | None = None  # seeds the sampling generator; None draws a fresh random seed per call
    # No-repeat n-gram guard, the official vLLM scripts' settings: run_dpsk_ocr_pdf.py uses n 20 / window 50
    # (our default), run_dpsk_ocr_image.py 30 / 90, run_dpsk_ocr_eval_batch.py 40 / 90. None or 0 disables.
    ngram_size: int | None = 20
    window_size: int = 50  # only n-grams inside the last window_size generated tokens count
    whitelist_token_ids: tuple[int, ...] = (128821, 128822)  # `<td>`, `</td>`: table cells may repeat

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.temperature < 0 or (self.do_sample and self.temperature == 0):
            raise ValueError(
                f"temperature must be > 0 when sampling (do_sample=False is greedy), got {self.temperature!r}"
            )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")
        if self.ngram_size is not None and (not _is_int(self.ngram_size) or self.ngram_size < 0):
            raise ValueError(
                f"ngram_size must be None or an integer >= 0 (0 disables it), got {self.ngram_size!r}"
            )
        if not _is_int(self.window_size) or self.window_size < 1:
            raise ValueError(f"window_size must be an integer >= 1, got {self.window_size!r}")
        if self.ngram_size and self.window_size < self.ngram_size:
            raise ValueError(
                f"window_size ({self.window_size}) must be >= ngram_size ({self.ngram_size}): a smaller "
                f"window holds no complete n-gram, so the guard would never fire"
            )
        if not isinstance(self.whitelist_token_ids, tuple) or not all(
            _is_int(t) and t >= 0 for t in self.whitelist_token_ids
        ):
            raise ValueError(
                f"whitelist_token_ids must be a tuple of integer ids >= 0, got {self.whitelist_token_ids!r}"
            )

    def no_repeat_guard(self) -> NoRepeatNGram | None:
        """The guard these settings ask for, or None when ``ngram_size`` is None or 0."""
        if not self.ngram_size:
            return None
        return NoRepeatNGram(
            ngram_size=self.ngram_size, window_size=self.window_size, whitelist=self.whitelist_token_ids
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class GenerateOutput:
    """What ``generate`` returns: per row, the generated ids (EOS excluded) and why the row stopped."""

    tokens: list[list[int]]
    stopped: list[str]  # "eos" or "length", one per row


class NoRepeatNGram:
    """Bans a token when emitting it would repeat an n-gram seen in the recent window.

    The official rule (DeepSeek-OCR's vLLM ``NoRepeatNGramLogitsProcessor``), applied to the generated
    tokens only: with ``g`` the tokens generated so far and ``L = len(g)``, token ``t`` is banned when some
    n-gram ``g[i : i + n]`` starting at ``i >= L - window_size`` has ``g[i : i + n - 1] == g[L - n + 1 : L]``
    and ends in ``t``. Nothing is banned while ``L < n``; whitelisted ids are never banned.
    """

    def __init__(self, *, ngram_size: int, window_size: int, whitelist: Sequence[int] = ()) -> None:
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.ngram_size = ngram_size
        self.window_size = window_size
        self.whitelist = frozenset(whitelist)

    def banned(self, generated: Sequence[int]) -> set[int]:
        """The ids that may not come next after ``generated``."""
        n, length = self.ngram_size, len(generated)
        if length < n:
            return set()
        prefix = list(generated[length - n + 1 :])  # the last n - 1 tokens (empty when n == 1)
        banned: set[int] = set()
        for start in range(max(0, length - self.window_size), length - n + 1):
            if list(generated[start : start + n - 1]) == prefix:
                banned.add(generated[start + n - 1])
        return banned - self.whitelist

    def apply(self, logits: torch.Tensor, generated: Sequence[Sequence[int]]) -> torch.Tensor:
        """Sets banned ids to -inf, row by row, in place. logits: (B, V); generated: B lists of ids."""
        for row, tokens in enumerate(generated):
            banned = self.banned(tokens)
            if banned:
                logits[row, sorted(banned)] = float("-inf")
        return logits


def greedy_next_token(logits: torch.Tensor) -> torch.Tensor:
    """(B, V) logits -> (B,) ids of the highest logit (the lowest id on ties)."""
    return logits.argmax(dim=-1)


def make_generator(config: GenerationConfig, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``config.seed`` (a fresh random seed when it is None)."""
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    return generator


def sample_next_token(
    logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator
) -> torch.Tensor:
    """(B, V) logits -> (B,) ids drawn after temperature, top-k and top-p (nucleus) filtering."""
    logits = logits.float() / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the best token always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def pair_requests(
    vision: Sequence[Sequence[Tensor] | Tensor], prompt: str | Sequence[str]
) -> tuple[list[list[Tensor]], list[str]]:
    """Requests as (their images' vision tokens, their prompt): one tensor means one image; one prompt
    string applies to every request."""
    requests = [[v] if isinstance(v, Tensor) else list(v) for v in vision]
    prompts = [prompt] * len(requests) if isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(requests):
        raise ValueError(f"{len(prompts)} prompts for {len(requests)} requests")
    return requests, prompts


def left_pad(embeds: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Prompts of (T_i, H) embeddings -> a (B, T, H) batch padded on the left, so all end where generation
    starts, and its (B, T) attention mask (0 = padding)."""
    lengths = torch.tensor([e.shape[0] for e in embeds])
    longest = int(lengths.max())
    batch = torch.stack([F.pad(e, (0, 0, longest - e.shape[0], 0)) for e in embeds])  # (B, T, H)
    mask = (torch.arange(longest)[None] >= (longest - lengths)[:, None]).long()  # (B, T)
    return batch, mask.to(batch.device)
