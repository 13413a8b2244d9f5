"""Load DeepSeek-OCR from a local folder in the official layout, and write one (for tests).

A folder holds ``config.json``, the weights as one or several ``*.safetensors`` files (with
``model.safetensors.index.json`` when sharded), and the tokenizer files. The model is built on the meta
device and each tensor is materialised once, in the requested dtype, as it is read: a 3.3B-parameter
checkpoint loads in about its own size of memory (6.7 GB in bfloat16), not twice that. Loading is a
strict check: every key the model has must be in the files with the same shape, and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ClipConfig, DecoderConfig, OCRConfig, SamConfig
from .ocr import DeepseekOCR

log = logging.getLogger(__name__)

REPO_ID = "deepseek-ai/DeepSeek-OCR"
_DOWNLOAD = f"hf download {REPO_ID} --local-dir <folder>  (or: huggingface-cli download ...)"

# config.json field -> DecoderConfig field, where the names differ
_DECODER_FIELDS = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or does not match the model."""


def config_from_json(data: dict[str, Any]) -> OCRConfig:
    """OCRConfig from a DeepSeek-OCR ``config.json``.

    The official file describes the decoder (at the root and again under ``language_config``); the vision
    towers are fixed (SAM-ViT-B, CLIP-L) and take their defaults. Folders written by
    :func:`write_checkpoint` add an ``optical_memory`` block with the SAM and CLIP sizes.
    """
    lang = dict(data.get("language_config") or data)
    known = {f.name for f in dataclasses.fields(DecoderConfig)}
    decoder: dict[str, Any] = {}
    for key, value in lang.items():
        name = _DECODER_FIELDS.get(key, key)
        if name in known and value is not None:
            decoder[name] = tuple(value) if isinstance(value, list) else value
    if "head_dim" not in decoder and "hidden_size" in decoder and "num_heads" in decoder:
        decoder["head_dim"] = decoder["hidden_size"] // decoder["num_heads"]
    ours = data.get("optical_memory") or {}
    if "image_token_id" in ours:
        decoder["image_token_id"] = ours["image_token_id"]
    sam: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in (ours.get("sam") or {}).items()
    }
    return OCRConfig(
        sam=SamConfig(**sam), clip=ClipConfig(**(ours.get("clip") or {})), decoder=DecoderConfig(**decoder)
    )


def config_to_json(cfg: OCRConfig) -> dict[str, Any]:
    """A ``config.json`` in the official shape, plus the ``optical_memory`` block for the vision sizes."""
    d = cfg.decoder
    language = {
        "vocab_size": d.vocab_size,
        "hidden_size": d.hidden_size,
        "num_hidden_layers": d.num_layers,
        "num_attention_heads": d.num_heads,
        "num_key_value_heads": d.num_heads,
        "head_dim": d.head_dim,
        "intermediate_size": d.intermediate_size,
        "moe_intermediate_size": d.moe_intermediate_size,
        "n_routed_experts": d.n_routed_experts,
        "num_experts_per_tok": d.num_experts_per_tok,
        "n_shared_experts": d.n_shared_experts,
        "first_k_dense_replace": d.first_k_dense_replace,
        "norm_topk_prob": d.norm_topk_prob,
        "routed_scaling_factor": d.routed_scaling_factor,
        "rope_theta": d.rope_theta,
        "rms_norm_eps": d.rms_norm_eps,
        "max_position_embeddings": d.max_position_embeddings,
        "bos_token_id": d.bos_token_id,
        "eos_token_id": d.eos_token_id,
        "use_mla": False,
        "topk_method": "greedy",
        "scoring_func": "softmax",
    }
    return {
        "architectures": ["DeepseekOCRForCausalLM"],
        "model_type": "deepseek_vl_v2",
        **language,
        "language_config": language,
        "projector_config": {
            "projector_type": "linear",
            "input_dim": cfg.projector_input_dim,
            "n_embed": d.hidden_size,
        },
        "tile_tag": "2D",
        "torch_dtype": "bfloat16",
        "optical_memory": {
            "image_token_id": d.image_token_id,
            "sam": dataclasses.asdict(cfg.sam),
            "clip": dataclasses.asdict(cfg.clip),
        },
    }


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{folder} is incomplete: the index lists {', '.join(missing)} but they are absent; "
                f"download them: {_DOWNLOAD}"
            )
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {folder}; download {REPO_ID}: {_DOWNLOAD}")
    return files


def _set_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    owner_name, _, name = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[name] = value


def load_tokenizer(folder: str | Path) -> Any:
    """The fast tokenizer in ``tokenizer.json`` (the official one is a LlamaTokenizerFast; the file holds all
    of it, so the generic class loads it without Llama-specific rebuilding)."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise CheckpointError(f"no tokenizer.json in {str(folder)!r}; download {REPO_ID}: {_DOWNLOAD}")
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def from_pretrained(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> DeepseekOCR:
    """DeepSeek-OCR from a local folder in the official layout (``deepseek-ai/DeepSeek-OCR``).

    Nothing is downloaded: a missing or incomplete folder is an error naming what to fetch.
    """
    from safetensors import safe_open

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no config.json in {str(folder)!r}; download {REPO_ID}: {_DOWNLOAD}")
    cfg = config_from_json(json.loads((folder / "config.json").read_text()))
    files = _weight_files(folder)
    device = torch.device(device)
    with torch.device("meta"):
        model = DeepseekOCR(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    seen: set[str] = set()
    unexpected: list[str] = []
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
                if key not in expected:
                    unexpected.append(key)
                    continue
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != expected[key]:
                    raise CheckpointError(
                        f"{path.name}: {key} has shape {tuple(tensor.shape)}, "
                        f"the model expects {expected[key]}"
                    )
                _set_tensor(model, key, tensor.to(device=device, dtype=dtype))
                seen.add(key)
    missing = sorted(set(expected) - seen)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(sorted(unexpected)[:3])})")
        raise CheckpointError(
            f"the weights in {folder} do not match DeepSeek-OCR: {'; '.join(parts)}. "
            f"Re-download the folder: {_DOWNLOAD}"
        )
    _materialise_buffers(model, device)
    model.tokenizer = load_tokenizer(folder)
    log.info("loaded DeepSeek-OCR from %s (%d tensors, %s, %s)", folder, len(seen), dtype, device)
    return model.eval()


def _materialise_buffers(model: nn.Module, device: torch.device) -> None:
    """Non-persistent buffers (not in any checkpoint) are still on the meta device: rebuild them."""
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                reset = getattr(module, "reset_buffers", None)
                if reset is None:
                    raise CheckpointError(f"{type(module).__name__}.{name} is not in the checkpoint")
                reset(device)
                break
