"""The DeepSeek-3B-MoE decoder: checkpoint structure, parity with transformers, caching, batching, decoding.

The parity reference is transformers' ``DeepseekOcr2TextModel`` (DeepSeek-OCR 2 reuses DeepSeek-OCR's MoE
decoder: MHA with Llama RoPE, a dense first layer, softmax top-k routing without renormalisation, shared
experts). It stores each layer's routed experts fused ((E, 2I, H) gate+up and (E, H, I) down) and has no
``norm_topk_prob`` switch, so that flag is checked against a naive all-experts computation instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from optical_memory.model.config import DecoderConfig, OCRConfig
from optical_memory.model.decoder import DeepseekV2ForCausalLM, DeepseekV2Model, KVCache, MoE
from optical_memory.model.generation import (
    GenerateOutput,
    GenerationConfig,
    NoRepeatNGram,
    make_generator,
    sample_next_token,
)
from optical_memory.model.testing import transformers_text_config

SHAPES_JSON = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "reference"
    / "deepseek_ocr_v1_checkpoint_shapes.json"
)
DECODER_PREFIXES = ("lm_head.", "model.embed_tokens.", "model.norm.", "model.layers.")
NO_GUARD = GenerationConfig(ngram_size=None)


def tiny_cfg(**changes: object) -> DecoderConfig:
    return dataclasses.replace(OCRConfig.tiny().decoder, **changes)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Well-spread random weights: distinct routing and logits, so greedy choices are not near-ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim == 1:  # the RMSNorm weights
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("embed_tokens.weight"):
                param.copy_(noise)
            else:
                param.copy_(noise / math.sqrt(param.shape[1]))


def make_lm(cfg: DecoderConfig, seed: int = 0) -> DeepseekV2ForCausalLM:
    lm = DeepseekV2ForCausalLM(cfg).eval()
    randomize(lm, seed)
    return lm


def left_pad(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Left-pads (T_i, H) prompts with zeros -> embeddings (B, T, H) and mask (B, T)."""
    T, H = max(r.shape[0] for r in rows), rows[0].shape[1]
    embeds = torch.zeros(len(rows), T, H)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        embeds[i, T - r.shape[0] :] = r
        mask[i, T - r.shape[0] :] = 1
    return embeds, mask


def prompt(lm: DeepseekV2ForCausalLM, ids: list[int]) -> Tensor:
    with torch.no_grad():
        return lm.model.embed_tokens(torch.tensor(ids))  # (T, H)


PROMPTS = [[0, 17, 45, 201, 9, 33, 78], [0, 250, 3], [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 100]]


# ---- full-size structure ----------------------------------------------------------------------------


def test_full_size_state_dict_matches_the_checkpoint_keys_and_shapes() -> None:
    if not SHAPES_JSON.exists():
        pytest.skip(f"checkpoint shape list not found at {SHAPES_JSON}")
    shapes = json.loads(SHAPES_JSON.read_text())["shapes"]
    expected = {k: tuple(v) for k, v in shapes.items() if k.startswith(DECODER_PREFIXES)}
    with torch.device("meta"):
        lm = DeepseekV2ForCausalLM(DecoderConfig())
    ours = {k: tuple(v.shape) for k, v in lm.state_dict().items()}
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: s for k, s in ours.items() if expected[k] != s} == {}
    assert sum(p.numel() for p in lm.parameters()) == 2_934_734_080
    assert lm.model.embed_tokens.padding_idx is None


def test_model_accepts_further_attributes_and_an_external_model() -> None:
    cfg = tiny_cfg()

    class WithVision(DeepseekV2Model):
        def __init__(self, cfg: DecoderConfig) -> None:
            super().__init__(cfg)
            self.projector = torch.nn.Linear(4, cfg.hidden_size)

    lm = DeepseekV2ForCausalLM(cfg, WithVision(cfg))
    assert "model.projector.weight" in lm.state_dict()
    assert "model.embed_tokens.weight" in lm.state_dict()


# ---- parity with transformers' DeepseekOcr2TextModel ------------------------------------------------


def reference_model(lm: DeepseekV2ForCausalLM):  # -> transformers DeepseekOcr2TextModel
    transformers = pytest.importorskip("transformers")
    cfg = lm.decoder_config
    ref_cfg = transformers_text_config(cfg, attn_implementation="eager")
    assert ref_cfg.head_dim == cfg.head_dim  # they derive it as hidden / heads
    ref = transformers.DeepseekOcr2TextModel(ref_cfg).eval()

    ours = lm.model.state_dict()
    mapped: dict[str, Tensor] = {}
    for key in ref.state_dict():
        if key.endswith("mlp.experts.gate_up_proj"):
            layer = key.removesuffix(".gate_up_proj")
            mapped[key] = torch.stack(
                [
                    torch.cat([ours[f"{layer}.{j}.gate_proj.weight"], ours[f"{layer}.{j}.up_proj.weight"]])
                    for j in range(cfg.n_routed_experts)
                ]
            )  # (E, 2I, H)
        elif key.endswith("mlp.experts.down_proj"):
            layer = key.removesuffix(".down_proj")
            mapped[key] = torch.stack(
                [ours[f"{layer}.{j}.down_proj.weight"] for j in range(cfg.n_routed_experts)]
            )  # (E, H, I)
        else:
            mapped[key] = ours[key]
    ref.load_state_dict(mapped, strict=True)
    return ref


def reference_logits(ref, lm: DeepseekV2ForCausalLM, embeds: Tensor, mask: Tensor) -> Tensor:
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = ref(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids).last_hidden_state
        return lm.lm_head(hidden).float()


@pytest.fixture(scope="module")
def lm_and_ref():
    lm = make_lm(tiny_cfg(), seed=0)
    return lm, reference_model(lm)


def test_logits_match_reference(lm_and_ref) -> None:
    lm, ref = lm_and_ref
    embeds = torch.randn(2, 13, lm.decoder_config.hidden_size, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 13, dtype=torch.long)
    with torch.no_grad():
        hidden = lm.model(embeds, attention_mask=mask)
        ours = lm(embeds, attention_mask=mask)
        theirs_hidden = ref(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(hidden, theirs_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, reference_logits(ref, lm, embeds, mask), atol=1e-4, rtol=1e-5)
    assert ours.dtype == torch.float32 and ours.shape == (2, 13, lm.decoder_config.vocab_size)


def test_left_padded_batch_matches_reference_and_unpadded_rows(lm_and_ref) -> None:
    lm, ref = lm_and_ref
    rows = [prompt(lm, ids) for ids in PROMPTS]
    embeds, mask = left_pad(rows)
    with torch.no_grad():
        ours = lm(embeds, attention_mask=mask)
    theirs = reference_logits(ref, lm, embeds, mask)
    real = mask.bool()
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=1e-5)
    for i, row in enumerate(rows):  # padding changes nothing for the real tokens
        with torch.no_grad():
            alone = lm(row[None], attention_mask=torch.ones(1, row.shape[0], dtype=torch.long))[0]
        torch.testing.assert_close(ours[i][real[i]], alone, atol=1e-4, rtol=1e-5)


def reference_greedy(ref, lm: DeepseekV2ForCausalLM, ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding over the reference model, recomputing the whole sequence each step (no cache)."""
    tokens = list(ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        embeds = lm.model.embed_tokens(torch.tensor(tokens))[None]
        logits = reference_logits(ref, lm, embeds, torch.ones(1, len(tokens), dtype=torch.long))
        nxt = int(logits[0, -1].argmax())
        if nxt == lm.decoder_config.eos_token_id:
            break
        out.append(nxt)
        tokens.append(nxt)
    return out


def test_greedy_generation_matches_reference(lm_and_ref) -> None:
    lm, ref = lm_and_ref
    with torch.no_grad():
        expected = [reference_greedy(ref, lm, ids, 12) for ids in PROMPTS]
    embeds, mask = left_pad([prompt(lm, ids) for ids in PROMPTS])
    got = lm.generate_tokens(
        embeds, attention_mask=mask, config=dataclasses.replace(NO_GUARD, max_new_tokens=12)
    )
    assert got.tokens == expected
    assert len({tuple(t) for t in expected}) == len(expected)  # the prompts lead to different outputs


# ---- MoE routing details ------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm_topk_prob", "scale"), [(False, 1.0), (True, 1.0), (False, 2.5)])
def test_moe_matches_a_naive_all_experts_computation(norm_topk_prob: bool, scale: float) -> None:
    cfg = tiny_cfg(norm_topk_prob=norm_topk_prob, routed_scaling_factor=scale)
    moe = MoE(cfg)
    randomize(moe, seed=3)
    x = torch.randn(2, 9, cfg.hidden_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = moe(x)
        tokens = x.reshape(-1, cfg.hidden_size)
        probs = (tokens @ moe.gate.weight.T).softmax(-1)  # (N, E)
        kth = probs.topk(cfg.num_experts_per_tok, dim=-1).values[:, -1:]
        weights = torch.where(probs >= kth, probs, torch.zeros_like(probs))  # (N, E), zero off the top-k
        if norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights * scale
        every = torch.stack([e(tokens) for e in moe.experts], dim=1)  # (N, E, H)
        expected = (weights[..., None] * every).sum(1) + moe.shared_experts(tokens)
    torch.testing.assert_close(got.reshape(-1, cfg.hidden_size), expected, atol=1e-5, rtol=1e-5)
    total = weights.sum(-1)  # renormalised weights sum to the scale; raw top-k probabilities to less
    if norm_topk_prob:
        torch.testing.assert_close(total, torch.full_like(total, scale))
    else:
        assert total.max() < scale


def test_moe_runs_each_expert_once_on_only_its_tokens() -> None:
    cfg = tiny_cfg()
    moe = MoE(cfg)
    randomize(moe, seed=5)
    seen: list[int] = []
    hooks = [e.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0])) for e in moe.experts]
    with torch.no_grad():
        moe(torch.randn(1, 10, cfg.hidden_size))
    for h in hooks:
        h.remove()
    assert len(seen) <= cfg.n_routed_experts
    assert sum(seen) == 10 * cfg.num_experts_per_tok


def test_bfloat16_forward_and_generation_run_on_cpu() -> None:
    lm = make_lm(tiny_cfg()).to(torch.bfloat16)
    embeds, mask = left_pad([prompt(lm, ids).float() for ids in PROMPTS[:2]])
    logits = lm(embeds.to(torch.bfloat16), attention_mask=mask)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    out = lm.generate_tokens(
        embeds.to(torch.bfloat16), attention_mask=mask, config=GenerationConfig(max_new_tokens=4)
    )
    assert all(len(t) == 4 or why == "eos" for t, why in zip(out.tokens, out.stopped, strict=True))


# ---- KV cache -----------------------------------------------------------------------------------------


def test_cached_decoding_gives_the_full_forward_logits() -> None:
    lm = make_lm(tiny_cfg(), seed=1)
    ids = [[0, 4, 9, 16, 25, 36, 49, 64, 81, 100, 121, 144], [0, 7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 11]]
    full_embeds = torch.stack([prompt(lm, row) for row in ids])  # (B, 12, H)
    full_embeds, mask = full_embeds.clone(), torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0  # the second row is left-padded by three
    full_embeds[1, :3] = 0.0
    with torch.no_grad():
        full = lm(full_embeds, attention_mask=mask)
        cache = KVCache(lm.decoder_config.num_layers)
        pieces = [lm(full_embeds[:, :5], attention_mask=mask[:, :5], cache=cache)]  # prefill
        pieces.append(lm(full_embeds[:, 5:8], attention_mask=mask[:, :8], cache=cache))  # a 3-token chunk
        for t in range(8, 12):  # then one token at a time
            pieces.append(lm(full_embeds[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache))
    assert cache.length == 12 and cache.keys[0] is not None
    assert cache.keys[0].shape == (2, lm.decoder_config.num_heads, 12, lm.decoder_config.head_dim)
    stepped = torch.cat(pieces, dim=1)
    real = mask.bool()
    torch.testing.assert_close(stepped[real], full[real], atol=1e-4, rtol=1e-5)


def test_attention_mask_hides_padding_and_never_empties_a_row() -> None:
    valid = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    mask, is_causal = DeepseekV2Model._attention_mask(valid, past=2, T=3)
    assert mask is not None and mask.shape == (2, 1, 3, 5) and not is_causal
    assert mask[0, 0].tolist() == [
        [False, False, True, False, False],
        [False, False, True, True, False],
        [False, False, True, True, True],
    ]
    assert mask[1, 0].tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]
    prefill, _ = DeepseekV2Model._attention_mask(valid[:, :3], past=0, T=3)
    assert prefill is not None
    assert prefill[0, 0].any(dim=-1).all()  # pad queries see themselves: no all-masked row, no NaN
    assert not prefill[0, 0, 2, :2].any()  # the real query sees no pad key
    assert DeepseekV2Model._attention_mask(valid[1:], past=0, T=5) == (None, True)  # SDPA's own causal path
    assert DeepseekV2Model._attention_mask(valid[1:], past=4, T=1) == (None, False)


def test_mask_shape_is_checked() -> None:
    lm = make_lm(tiny_cfg())
    cache = KVCache(lm.decoder_config.num_layers)
    x = torch.randn(1, 3, lm.decoder_config.hidden_size)
    lm(x, attention_mask=torch.ones(1, 3), cache=cache)
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        lm(x[:, :1], attention_mask=torch.ones(1, 1), cache=cache)


# ---- generation ---------------------------------------------------------------------------------------


def test_batched_generation_equals_per_row_generation() -> None:
    lm = make_lm(tiny_cfg(), seed=2)
    config = GenerationConfig(max_new_tokens=10, ngram_size=3, window_size=10)
    rows = [prompt(lm, ids) for ids in PROMPTS]
    embeds, mask = left_pad(rows)
    batched = lm.generate_tokens(embeds, attention_mask=mask, config=config)
    singles = [
        lm.generate_tokens(r[None], attention_mask=torch.ones(1, r.shape[0]), config=config) for r in rows
    ]
    assert batched.tokens == [s.tokens[0] for s in singles]
    assert batched.stopped == [s.stopped[0] for s in singles]


def test_max_new_tokens_is_respected() -> None:
    lm = make_lm(tiny_cfg(), seed=2)
    embeds, mask = left_pad([prompt(lm, ids) for ids in PROMPTS])
    out = lm.generate_tokens(
        embeds, attention_mask=mask, config=dataclasses.replace(NO_GUARD, max_new_tokens=3)
    )
    long = lm.generate_tokens(
        embeds, attention_mask=mask, config=dataclasses.replace(NO_GUARD, max_new_tokens=9)
    )
    assert isinstance(out, GenerateOutput)
    assert [len(t) for t in out.tokens] == [3, 3, 3] and out.stopped == ["length"] * 3
    assert [t[:3] for t in long.tokens] == out.tokens and [len(t) for t in long.tokens] == [9, 9, 9]


def test_eos_stops_its_row_and_leaves_the_others_running() -> None:
    cfg = tiny_cfg()
    lm = make_lm(cfg, seed=2)
    config = dataclasses.replace(NO_GUARD, max_new_tokens=10)
    embeds, mask = left_pad([prompt(lm, ids) for ids in PROMPTS[:2]])
    free = lm.generate_tokens(embeds, attention_mask=mask, config=config).tokens
    assert cfg.eos_token_id not in free[0] + free[1]
    # Make a token that row 0 emits at step >= 1 (and row 1 never does) the EOS id; the weights are unchanged.
    step = next(k for k in range(1, 10) if free[0][k] not in free[0][:k] + free[1])
    stopping = DeepseekV2ForCausalLM(dataclasses.replace(cfg, eos_token_id=free[0][step])).eval()
    stopping.load_state_dict(lm.state_dict())
    out = stopping.generate_tokens(embeds, attention_mask=mask, config=config)
    assert out.tokens == [free[0][:step], free[1]]
    assert out.stopped == ["eos", "length"]


def test_generate_rejects_right_padding() -> None:
    lm = make_lm(tiny_cfg())
    embeds = torch.randn(1, 4, lm.decoder_config.hidden_size)
    with pytest.raises(ValueError, match="left-padded"):
        lm.generate_tokens(embeds, attention_mask=torch.tensor([[1, 1, 1, 0]]), config=NO_GUARD)


def cycling_lm(cycle: list[int]) -> DeepseekV2ForCausalLM:
    """A model whose greedy choice after token t is cycle[(i + 1) % len], for t = cycle[i] (else cycle[0]).

    Every block writes zeros to the residual stream, so the final hidden state is the normed embedding of
    the current token, and lm_head maps that embedding onto the next token of the cycle.
    """
    cfg = tiny_cfg()
    lm = make_lm(cfg, seed=7)
    with torch.no_grad():
        for name, param in lm.model.layers.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
        lm.model.norm.weight.fill_(1.0)
        emb = lm.model.embed_tokens.weight
        unit = emb / emb.norm(dim=-1, keepdim=True)  # (V, H)
        successor = {t: cycle[(i + 1) % len(cycle)] for i, t in enumerate(cycle)}
        head = torch.zeros_like(lm.lm_head.weight)
        head[cycle[0]] = unit[[t for t in range(cfg.vocab_size) if t not in successor]].sum(0)
        for t, nxt in successor.items():
            head[nxt] = 3.0 * unit[t]
        head[cycle[1]] += 0.5 * unit[cycle[0]]  # a clear runner-up after the cycle start
        lm.lm_head.weight.copy_(head)
    return lm


def test_no_repeat_guard_breaks_a_repetition_loop() -> None:
    cycle = [10, 11, 12, 13]
    lm = cycling_lm(cycle)
    embeds = prompt(lm, [0, 50, 10])[None]
    mask = torch.ones(1, 3)
    looping = lm.generate_tokens(
        embeds, attention_mask=mask, config=dataclasses.replace(NO_GUARD, max_new_tokens=16)
    )
    assert looping.tokens[0] == (cycle[1:] + cycle[:1]) * 4 and looping.stopped == ["length"]

    guarded_cfg = GenerationConfig(max_new_tokens=16, ngram_size=3, window_size=16)
    guarded = lm.generate_tokens(embeds, attention_mask=mask, config=guarded_cfg).tokens[0]
    assert guarded[:6] == looping.tokens[0][:6]  # the loop starts ...
    assert guarded[6] != looping.tokens[0][6]  # ... and is cut the moment a 3-gram would repeat
    for end in range(3, len(guarded) + 1):  # no 3-gram occurs twice in any 16-token window
        window = guarded[max(0, end - 16) : end]
        grams = [tuple(window[i : i + 3]) for i in range(len(window) - 2)]
        assert len(grams) == len(set(grams)), (end, guarded)

    whitelisted = dataclasses.replace(guarded_cfg, whitelist_token_ids=tuple(cycle))
    assert lm.generate_tokens(embeds, attention_mask=mask, config=whitelisted).tokens == looping.tokens


# ---- NoRepeatNGram on hand-made sequences ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ([1, 2], set()),  # shorter than n
        ([1, 2, 3], set()),  # one n-gram, whose prefix is not the current suffix
        ([1, 2, 3, 1, 2], {3}),
        ([1, 2, 3, 1, 4], set()),
        ([5, 6, 7, 5, 6, 8, 5, 6], {7, 8}),
        ([4, 4, 4], {4}),  # the n-gram ending right now counts too
    ],
)
def test_no_repeat_ngram_bans(generated: list[int], expected: set[int]) -> None:
    assert NoRepeatNGram(ngram_size=3, window_size=100).banned(generated) == expected


def test_no_repeat_ngram_window_boundary() -> None:
    seq = [1, 2, 3, 9, 8, 7, 6, 1, 2]  # the earlier (1, 2, 3) starts at index 0; len 9
    assert NoRepeatNGram(ngram_size=3, window_size=9).banned(seq) == {3}
    assert NoRepeatNGram(ngram_size=3, window_size=8).banned(seq) == set()


def test_no_repeat_ngram_whitelist() -> None:
    seq = [1, 2, 3, 1, 2, 4, 1, 2]
    assert NoRepeatNGram(ngram_size=3, window_size=50, whitelist=(3,)).banned(seq) == {4}
    assert NoRepeatNGram(ngram_size=3, window_size=50, whitelist=(3, 4)).banned(seq) == set()


def test_no_repeat_ngram_agrees_with_a_set_of_ngrams_formulation() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(2, 5, (1,), generator=gen))
        window = int(torch.randint(n, 30, (1,), generator=gen))
        seq = torch.randint(0, 4, (int(torch.randint(0, 40, (1,), generator=gen)),), generator=gen).tolist()
        start = max(0, len(seq) - window)
        grams = {tuple(seq[i : i + n]) for i in range(start, len(seq) - n + 1)}
        tail = tuple(seq[len(seq) - n + 1 :]) if len(seq) >= n else None
        expected = {t for t in range(4) if tail is not None and (*tail, t) in grams}
        assert NoRepeatNGram(ngram_size=n, window_size=window).banned(seq) == expected, (n, window, seq)


def test_no_repeat_ngram_apply_masks_rows_independently() -> None:
    guard = NoRepeatNGram(ngram_size=2, window_size=10)
    logits = torch.zeros(2, 6)
    guard.apply(logits, [[1, 2, 1], [3, 4]])
    assert logits[0].tolist() == [0, 0, float("-inf"), 0, 0, 0]
    assert logits[1].tolist() == [0.0] * 6


def test_generation_config_defaults_are_the_official_ones() -> None:
    config = GenerationConfig()
    assert (config.max_new_tokens, config.do_sample, config.ngram_size, config.window_size) == (
        8192,
        False,
        20,
        50,
    )
    assert config.whitelist_token_ids == (128821, 128822)
    guard = config.no_repeat_guard()
    assert guard is not None and guard.ngram_size == 20 and guard.whitelist == {128821, 128822}
    assert GenerationConfig(ngram_size=0).no_repeat_guard() is None
    assert GenerationConfig(ngram_size=None).no_repeat_guard() is None


@pytest.mark.parametrize(
    ("changes", "shown"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens.*0"),
        ({"temperature": -0.5}, "-0.5"),
        ({"do_sample": True, "temperature": 0.0}, "temperature.*0.0"),
        ({"top_k": -1}, "top_k.*-1"),
        ({"top_p": 0.0}, "top_p.*0.0"),
        ({"top_p": 1.5}, "top_p.*1.5"),
        ({"seed": -3}, "seed.*-3"),
        ({"ngram_size": -2}, "ngram_size.*-2"),
        ({"window_size": 0}, "window_size.*0"),
        ({"ngram_size": 30, "window_size": 20}, "window_size \\(20\\).*ngram_size \\(30\\)"),
        ({"whitelist_token_ids": (1, -4)}, "-4"),
    ],
)
def test_generation_config_rejects_bad_values(changes: dict[str, object], shown: str) -> None:
    with pytest.raises(ValueError, match=shown):
        GenerationConfig(**changes)


# ---- sampling -------------------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible() -> None:
    lm = make_lm(tiny_cfg(), seed=4)
    embeds, mask = left_pad([prompt(lm, ids) for ids in PROMPTS])
    hot = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=3.0, seed=123, ngram_size=None)
    first = lm.generate_tokens(embeds, attention_mask=mask, config=hot).tokens
    assert lm.generate_tokens(embeds, attention_mask=mask, config=hot).tokens == first
    other = lm.generate_tokens(embeds, attention_mask=mask, config=dataclasses.replace(hot, seed=124)).tokens
    assert other != first
    greedy = lm.generate_tokens(
        embeds, attention_mask=mask, config=dataclasses.replace(NO_GUARD, max_new_tokens=8)
    )
    top1 = lm.generate_tokens(embeds, attention_mask=mask, config=dataclasses.replace(hot, top_k=1)).tokens
    assert top1 == greedy.tokens


def test_top_k_and_top_p_keep_only_the_allowed_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    gen = make_generator(GenerationConfig(do_sample=True, seed=0), torch.device("cpu"))
    top_k = sample_next_token(logits, GenerationConfig(do_sample=True, top_k=2), gen)
    assert set(top_k.tolist()) == {0, 1}
    top_p = sample_next_token(logits, GenerationConfig(do_sample=True, top_p=0.7), gen)  # 0.5 + 0.3 >= 0.7
    assert set(top_p.tolist()) == {0, 1}
    everything = sample_next_token(logits, GenerationConfig(do_sample=True), gen)
    assert set(everything.tolist()) == {0, 1, 2, 3}
