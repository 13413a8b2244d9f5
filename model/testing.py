"""Small checkpoints in the official layout, made on the spot: random weights and a byte-level tokenizer.

Tests (and anyone without the 6.7 GB download) use these to exercise the real loading path: the files,
key names and config shape are those of ``deepseek-ai/DeepSeek-OCR``; only the sizes and the weights
differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import DecoderConfig, OCRConfig
from .loading import config_to_json
from .ocr import DeepseekOCR

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
# the official special ids above 128815, placed after <image> in the same order
EXTRA_SPECIALS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "<td>", "</td>")


def transformers_text_config(cfg: DecoderConfig, *, attn_implementation: str = "eager") -> Any:
    """transformers' ``DeepseekOcr2TextConfig`` describing the same decoder as ``cfg`` (DeepSeek-OCR 2 keeps
    v1's MoE decoder): the independent implementation the parity tests and the benchmark compare against."""
    import transformers

    # accepted at run time by every transformers config, though not in its typed signature
    runtime: dict[str, Any] = {"attn_implementation": attn_implementation}
    return transformers.DeepseekOcr2TextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,  # MHA, no MLA
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        n_routed_experts=cfg.n_routed_experts,
        n_shared_experts=cfg.n_shared_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        moe_intermediate_size=cfg.moe_intermediate_size,
        routed_scaling_factor=cfg.routed_scaling_factor,
        topk_method="greedy",  # softmax scores, plain top-k, no renormalisation
        mlp_layer_types=[
            "dense" if i < cfg.first_k_dense_replace else "sparse" for i in range(cfg.num_layers)
        ],
        **runtime,
    )


def random_model(cfg: OCRConfig | None = None, *, seed: int = 0) -> DeepseekOCR:
    """A DeepseekOCR with seeded random weights: norms near 1, everything else N(0, 0.02)."""
    cfg = cfg or OCRConfig.tiny()
    generator = torch.Generator().manual_seed(seed)
    model = DeepseekOCR(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if _is_norm_weight(name):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)
    return model.eval()


def materialise_random(
    module: torch.nn.Module, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Give a module built on the meta device random weights, fast: N(0, 0.02), norm weights 1. For
    full-size benchmarks, where the constructors' own initialisation of 3.3B parameters would take minutes.
    Non-persistent buffers are not restored: use it on modules without them (ours compute RoPE on the fly)."""
    module = module.to(dtype=dtype).to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if _is_norm_weight(name):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return module.eval()


def _is_norm_weight(name: str) -> bool:
    module, _, leaf = name.rpartition(".")
    last = module.rpartition(".")[2]
    return leaf == "weight" and (
        "norm" in last or "layrnorm" in last or module.endswith(("neck.1", "neck.3"))
    )


def write_tokenizer(folder: Path, cfg: OCRConfig) -> None:
    """A byte-level BPE tokenizer (no merges) with the official special tokens at the config's ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    image_id = cfg.decoder.image_token_id
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {BOS: 0, EOS: 1, PAD: 2}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    if len(vocab) > image_id:
        raise ValueError(f"image_token_id {image_id} collides with the {len(vocab)} byte-level tokens")
    while len(vocab) < image_id:
        vocab[f"<unused_{len(vocab)}>"] = len(vocab)
    specials = ("<image>", *EXTRA_SPECIALS)
    for token in specials:
        vocab[token] = len(vocab)
    if len(vocab) > cfg.decoder.vocab_size:
        raise ValueError(f"the tokenizer needs {len(vocab)} ids but vocab_size is {cfg.decoder.vocab_size}")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (BOS, EOS, PAD, *specials)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    write_tokenizer_config(folder)


def write_tokenizer_config(folder: Path) -> None:
    """``tokenizer_config.json`` beside a ``tokenizer.json`` holding the official special tokens."""
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": PAD,
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": 1_000_000,  # counting a long page's text is fine
            },
            indent=1,
        )
    )


def write_checkpoint(
    folder: str | Path,
    model: DeepseekOCR | None = None,
    *,
    shards: int = 1,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write ``model`` (default: a seeded random tiny one) in the official layout: config.json, safetensors
    (one file, or ``shards`` files plus model.safetensors.index.json), tokenizer.json and its config."""
    from safetensors.torch import save_file

    model = model or random_model()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_json(model.config), indent=1))
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    keys = sorted(state)
    if shards == 1:
        save_file(state, str(folder / "model-00001-of-000001.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:06d}.safetensors"
            part = {k: state[k] for k in keys[i::shards]}
            save_file(part, str(folder / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
        )
    write_tokenizer(folder, model.config)
    return folder
