"""DeepSeek-3B-MoE, the language decoder of DeepSeek-OCR, with a KV cache and a batched decoding loop.

Follows DeepSeek-V2 (arXiv 2405.04434) in its ``use_mla: false`` form, which is what DeepSeek-OCR ships:
pre-norm RMSNorm blocks; plain multi-head attention with Llama rotary position embeddings (RoPE over the
whole head, ``rotate_half`` layout, RoFormer / Llama); SwiGLU MLPs; and DeepSeekMoE layers (arXiv
2401.06066): a softmax router choosing the top-k of many small routed experts, plus always-on shared
experts. Layers below ``first_k_dense_replace`` use one wide dense MLP instead.

Attribute names are the checkpoint's keys (``model.layers.{i}.mlp.experts.{j}.gate_proj.weight``, ...), so
the official weights load with a strict key and shape check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig
from .generation import (
    GenerateOutput,
    GenerationConfig,
    greedy_next_token,
    make_generator,
    sample_next_token,
)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled by a learned weight in the input's dtype."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        input_dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(input_dtype)


def rope_cos_sin(
    position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Llama RoPE tables for (B, T) positions -> cos, sin of shape (B, 1, T, head_dim), computed in float32.

    Computed on the fly (no buffer), so a model built on the meta device and then loaded needs no fix-up.
    """
    exponents = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (head_dim / 2,)
    angles = position_ids.float()[..., None] * inv_freq  # (B, T, head_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, head_dim): both halves share angles
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Per-layer keys and values, each (B, heads, T, head_dim), grown by concatenation at every step."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        """How many positions are cached (0 before the first forward)."""
        first = self.keys[0]
        return 0 if first is None else first.shape[2]

    def append(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Adds this step's key/value for ``layer``; returns the whole cached key/value for attention."""
        old_key, old_value = self.keys[layer], self.values[layer]
        if old_key is not None and old_value is not None:
            key = torch.cat((old_key, key), dim=2)
            value = torch.cat((old_value, value), dim=2)
        self.keys[layer], self.values[layer] = key, value
        return key, value


class Attention(nn.Module):
    """Multi-head self-attention (no GQA, no biases) with RoPE on queries and keys."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        width = cfg.num_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, width, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, width, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, width, bias=False)
        self.o_proj = nn.Linear(width, cfg.hidden_size, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, is_causal: bool, cache: KVCache | None
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, T, D)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, T, D)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(self.layer_idx, k, v)  # (B, heads, past + T, D)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # (B, T, heads * D)
        return self.o_proj(out)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """The MoE gate: a bias-free linear map to one logit per routed expert (key ``mlp.gate.weight``)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        nn.init.normal_(self.weight, std=0.02)
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.routed_scaling_factor = cfg.routed_scaling_factor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, H) tokens -> float32 weights (N, k) and expert ids (N, k)."""
        scores = F.linear(x.float(), self.weight.float()).softmax(dim=-1)  # (N, E), in float32
        weights, experts = torch.topk(scores, self.top_k, dim=-1, sorted=False)  # (N, k)
        if self.norm_topk_prob and self.top_k > 1:  # off in DeepSeek-OCR: the raw softmax probs are used
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, experts


class MoE(nn.Module):
    """DeepSeekMoE: top-k routed experts weighted by the router, plus the shared experts (one wide MLP)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(
            MLP(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts)
        )
        self.shared_experts = MLP(cfg.hidden_size, cfg.shared_intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        B, T, H = x.shape
        tokens = x.reshape(B * T, H)  # (N, H)
        weights, experts = self.gate(tokens)  # (N, k) each
        k = experts.shape[1]

        # Group the N * k (token, expert) assignments by expert, so each expert runs once on its tokens.
        flat_experts = experts.reshape(-1)  # (N * k,)
        order = torch.argsort(flat_experts, stable=True)  # assignment indices, grouped by expert
        counts = torch.bincount(flat_experts, minlength=len(self.experts)).tolist()
        token_of = order // k  # (N * k,) the token each sorted assignment belongs to
        routed_inputs = tokens[token_of]  # (N * k, H), grouped by expert
        outputs, start = [], 0
        for j, count in enumerate(counts):  # only the experts that got tokens run (6 of 64 when decoding)
            if count:
                outputs.append(self.experts[j](routed_inputs[start : start + count]))  # (count_j, H)
                start += count
        routed = torch.cat(outputs) if outputs else tokens.new_zeros(0, H)  # (N * k, H), sorted order

        # Weight each assignment in float32 (like the router) and sum back onto its token.
        routed = routed.float() * weights.reshape(-1)[order, None]  # (N * k, H)
        combined = torch.zeros(B * T, H, dtype=torch.float32, device=x.device).index_add_(0, token_of, routed)
        return combined.to(x.dtype).view(B, T, H) + self.shared_experts(x)  # (B, T, H)


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then h + mlp(norm(h)); the MLP is dense or MoE by depth."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp: nn.Module = (
            MLP(cfg.hidden_size, cfg.intermediate_size) if layer_idx < cfg.first_k_dense_replace else MoE(cfg)
        )

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, is_causal: bool, cache: KVCache | None
    ) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class DeepseekV2Model(nn.Module):
    """Embedding table, decoder layers and final norm (checkpoint prefix ``model.``).

    ``forward`` takes embeddings, not ids, because DeepSeek-OCR scatters vision features into the
    embedded prompt before the first layer; a subclass adds the vision modules under this same prefix.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.decoder_config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)  # no padding_idx, as released
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, inputs_embeds: Tensor, *, attention_mask: Tensor, cache: KVCache | None = None
    ) -> Tensor:
        """(B, T, H) embeddings -> (B, T, H) normed hidden states.

        ``attention_mask`` is (B, past + T), 1 for real tokens and 0 for left padding, covering the cached
        positions too. Positions count real tokens only, so a left-padded row starts at position 0. With
        ``cache``, this step's keys and values are appended to it.
        """
        B, T, _ = inputs_embeds.shape
        past = cache.length if cache is not None else 0
        if attention_mask.shape != (B, past + T):
            raise ValueError(
                f"attention_mask must be (batch, cached + new) = {(B, past + T)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        valid = attention_mask.to(device=inputs_embeds.device, dtype=torch.bool)  # (B, past + T)
        position_ids = (valid.long().cumsum(dim=-1) - 1).clamp(min=0)[:, past:]  # (B, T)
        mask, is_causal = self._attention_mask(valid, past, T)
        cos, sin = rope_cos_sin(
            position_ids, self.decoder_config.head_dim, self.decoder_config.rope_theta, inputs_embeds.dtype
        )

        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask, is_causal, cache)
        return self.norm(x)

    @staticmethod
    def _attention_mask(valid: Tensor, past: int, T: int) -> tuple[Tensor | None, bool]:
        """Boolean (B, 1, T, past + T) mask (True = may attend), or None with SDPA's own causal flag.

        A query sees real keys at or before its own position. Every query also sees itself, so the rows of
        padding queries are never fully masked (which would give NaN); no real query ever sees a pad key.
        """
        if bool(valid.all()):
            if past == 0:
                return None, T > 1  # plain causal prefill
            if T == 1:
                return None, False  # one new token sees the whole cache
        query_pos = torch.arange(past, past + T, device=valid.device)[:, None]  # (T, 1)
        key_pos = torch.arange(past + T, device=valid.device)[None, :]  # (1, past + T)
        allowed = (key_pos <= query_pos) & valid[:, None, :]  # (B, T, past + T)
        allowed = allowed | (key_pos == query_pos)
        return allowed[:, None], False  # (B, 1, T, past + T)


class DeepseekV2ForCausalLM(nn.Module):
    """The decoder plus its untied output head, and a batched greedy / sampling decoding loop."""

    def __init__(self, cfg: DecoderConfig, model: DeepseekV2Model | None = None) -> None:
        super().__init__()
        self.decoder_config = cfg
        self.model = model if model is not None else DeepseekV2Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(
        self, inputs_embeds: Tensor, *, attention_mask: Tensor, cache: KVCache | None = None
    ) -> Tensor:
        """(B, T, H) embeddings -> (B, T, V) float32 logits (see ``DeepseekV2Model.forward``)."""
        return self.lm_head(self.model(inputs_embeds, attention_mask=attention_mask, cache=cache)).float()

    @torch.inference_mode()
    def generate_tokens(
        self, inputs_embeds: Tensor, *, attention_mask: Tensor, config: GenerationConfig
    ) -> GenerateOutput:
        """Decodes after a left-padded (B, T, H) prompt until EOS or ``config.max_new_tokens``, per row.

        The prompt is run once (prefill), then one token per step through the KV cache. A row that has
        stopped is fed ``pad_token_id`` and its later logits are ignored. Returned ids exclude EOS.
        """
        cfg = self.decoder_config
        B = inputs_embeds.shape[0]
        if attention_mask.shape != inputs_embeds.shape[:2]:
            raise ValueError(
                f"attention_mask must be (batch, prompt) = {tuple(inputs_embeds.shape[:2])}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if not bool(attention_mask[:, -1].all()):
            raise ValueError(
                "prompts must be left-padded: the last position of every row must be a real token"
            )
        device = inputs_embeds.device
        guard = config.no_repeat_guard()
        generator = make_generator(config, device) if config.do_sample else None

        cache = KVCache(len(self.model.layers))
        mask = attention_mask.to(device=device, dtype=torch.long)  # (B, T), grows by one column per step
        hidden = self.model(inputs_embeds, attention_mask=mask, cache=cache)[:, -1:]  # (B, 1, H)
        tokens: list[list[int]] = [[] for _ in range(B)]
        stopped: list[str | None] = [None] * B
        for step in range(config.max_new_tokens):
            logits = self.lm_head(hidden[:, -1]).float()  # (B, V)
            if guard is not None:
                guard.apply(logits, tokens)
            if generator is not None:
                next_ids = sample_next_token(logits, config, generator)
            else:
                next_ids = greedy_next_token(logits)
            chosen = next_ids.tolist()
            for row, token in enumerate(chosen):
                if stopped[row] is not None:
                    chosen[row] = cfg.pad_token_id
                elif token == cfg.eos_token_id:
                    stopped[row] = "eos"
                else:
                    tokens[row].append(token)
            if all(reason is not None for reason in stopped) or step == config.max_new_tokens - 1:
                break
            next_input = torch.tensor(chosen, device=self.model.embed_tokens.weight.device)[:, None]  # (B, 1)
            embeds = self.model.embed_tokens(next_input).to(device)  # (B, 1, H)
            mask = torch.cat((mask, mask.new_ones(B, 1)), dim=1)  # (B, past + 1)
            hidden = self.model(embeds, attention_mask=mask, cache=cache)  # (B, 1, H)
        return GenerateOutput(tokens=tokens, stopped=[reason or "length" for reason in stopped])
