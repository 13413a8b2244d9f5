"""DeepSeek-OCR 2 through transformers' own implementation, behind the interface of our v1 model.

DeepSeek-OCR 2 ("Visual Causal Flow", arXiv 2601.20552) keeps the v1 decoder and replaces the encoder:
SAM-base and its conv compressor (896 channels) feed a Qwen2-0.5B-style LM used as an encoder, whose learned
queries (``query_1024``: 256 for the 1024 px global view, ``query_768``: 144 per 768 px tile) attend causally
to the visual tokens; only the query outputs are kept and projected to the decoder width. There are no row
newlines, only the view separator: an image is [tiles' queries] + [global 256] + [separator], 257 to 1121
positions.

transformers ships it (``DeepseekOcr2ForConditionalGeneration``, ``DeepseekOcr2Processor``; converted
checkpoint ``deepseek-community/DeepSeek-OCR-2``), so this file does not re-implement it: it wraps the model,
its processor and tokenizer, and speaks the same language as :class:`optical_memory.model.ocr.DeepseekOCR`:
``encode`` (images -> per image the embeddings the decoder receives at its ``<image>`` positions),
``generate`` (those embeddings + a prompt -> text, via transformers' ``generate`` on ``inputs_embeds``
with our :class:`~optical_memory.model.generation.NoRepeatNGram` guard as a logits processor) and ``read``.
transformers is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .generation import GenerationConfig, NoRepeatNGram, left_pad, pair_requests
from .loading import CheckpointError

log = logging.getLogger(__name__)

REPO_ID = (
    "deepseek-community/DeepSeek-OCR-2"  # the transformers-format conversion of deepseek-ai/DeepSeek-OCR-2
)
_DOWNLOAD = f"hf download {REPO_ID} --local-dir <folder>  (or: huggingface-cli download ...)"
DEFAULT_PROMPT = "<image>\nFree OCR."

# Modes by name. DeepSeek-OCR 2 has learned queries for two views only, the processor's global side (1024) and
# its tile side (768), so only these exist (v1's tiny/small/large and arbitrary sides have no counterpart):
#   "gundam": tiles beside the global view (the official default: base_size=1024, image_size=768, crop_mode)
#   "base":   the global view alone, padded to a square (256 + 1 positions at 1024 px)
#   "small":  the tile-sized view alone (the official crop_mode=False; 144 + 1 positions at 768 px)
# An int selects a single view of that side, which must be one of the two.
MODE_NAMES = ("gundam", "base", "small")


class NoRepeatNGramLogitsProcessor:
    """Our :class:`NoRepeatNGram` guard as a transformers logits processor (the ``LogitsProcessor`` protocol,
    ``__call__(input_ids, scores) -> scores``; duck-typed so this module need not import transformers).

    The guard looks at generated tokens only (the official vLLM rule), so the first ``prompt_length`` columns
    of ``input_ids`` are skipped: 0 when generating from ``inputs_embeds`` (transformers then passes only the
    new tokens), the prompt length when generating from ``input_ids``.
    """

    def __init__(self, guard: NoRepeatNGram, *, prompt_length: int = 0) -> None:
        self.guard = guard
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :].tolist()  # B lists of ids
        return self.guard.apply(scores, generated)


class DeepseekOCR2:
    """DeepSeek-OCR 2 (transformers' ``DeepseekOcr2ForConditionalGeneration`` + ``DeepseekOcr2Processor``).

    Build it with :func:`from_pretrained_ocr2`. ``model``, ``processor`` and ``tokenizer`` are the wrapped
    transformers objects.
    """

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token: str = processor.image_token
        self.image_token_id: int = int(model.config.image_token_id)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # -- modes and token counts ------------------------------------------------------------------------------

    def mode_kwargs(self, mode: str | int = "gundam") -> dict[str, Any]:
        """The image-processor options of a mode (see ``MODE_NAMES``): crop_to_patches, size, tile_size."""
        image_processor = self.processor.image_processor
        side, tile = int(image_processor.size["height"]), int(image_processor.tile_size)
        if isinstance(mode, str) and mode.lower() == "gundam":
            return {"crop_to_patches": True, "size": {"height": side, "width": side}, "tile_size": tile}
        if isinstance(mode, str):
            single = {"base": side, "small": tile}.get(mode.lower())
        elif isinstance(mode, int) and not isinstance(mode, bool):
            single = mode if mode in (side, tile) else None
        else:
            raise ValueError(f"mode must be a name or a side in pixels, got {mode!r}")
        if single is None:
            raise ValueError(
                f"DeepSeek-OCR 2 has no mode {mode!r}: its encoder has learned queries only for a {side} px "
                f"global view and {tile} px tiles; use one of {', '.join(MODE_NAMES)}, {side} or {tile}"
            )
        # Without cropping the processor sizes the single view by tile_size, so both are set to the side.
        return {"crop_to_patches": False, "size": {"height": single, "width": single}, "tile_size": single}

    def count_image_tokens(self, width: int, height: int, mode: str | int = "gundam") -> int:
        """Positions one ``width`` x ``height`` image takes in the prompt in ``mode``, as the processor counts
        them (e.g. gundam: 256 + 144 per tile + 1 separator; tiles only when a side exceeds 768)."""
        from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
            get_optimal_tiled_canvas,
        )

        kwargs = self.mode_kwargs(mode)
        tile = kwargs["tile_size"]
        crops = 0
        if kwargs["crop_to_patches"] and max(width, height) > tile:
            ip = self.processor.image_processor
            cols, rows = get_optimal_tiled_canvas(
                (height, width), (tile, tile), ip.min_patches, ip.max_patches
            )
            crops = cols * rows
        text = self.processor.replace_image_token({"num_local_patches": [crops]}, 0, **kwargs)
        return len(text) // len(self.image_token)

    # -- encoder ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode(
        self, images: Sequence[Image.Image], mode: str | int = "gundam", *, batch_size: int = 8
    ) -> list[torch.Tensor]:
        """Page images -> per image, its vision embeddings (positions, hidden) exactly as the decoder receives
        them at its ``<image>`` positions: [tiles] + [global view] + [view separator], from transformers'
        ``get_image_features``. Images go through the vision tower in groups of about ``batch_size`` views
        (global views and tiles together; an image is never split across groups).
        """
        if isinstance(images, Image.Image):
            images = [images]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        kwargs = self.mode_kwargs(mode)
        out: list[torch.Tensor] = []
        group: list[tuple[Any, int]] = []  # (processed image, its token count), flushed at batch_size views
        views = 0
        for image in images:
            features = self.processor.image_processor(image, return_tensors="pt", **kwargs)
            group.append((features, self.count_image_tokens(image.width, image.height, mode)))
            views += 1 + int(features["num_local_patches"].sum())
            if views >= batch_size:
                out += self._encode_group(group)
                group, views = [], 0
        if group:
            out += self._encode_group(group)
        return out

    def _encode_group(self, group: list[tuple[Any, int]]) -> list[torch.Tensor]:
        """transformers' get_image_features over a group of processed images: one (positions, hidden) each."""
        processed = [f for f, _ in group]
        pixels = torch.cat([f["pixel_values"] for f in processed]).to(self.device, self.dtype)  # (G, 3, S, S)
        locals_ = [f["pixel_values_local"] for f in processed if "pixel_values_local" in f]
        tiles = torch.cat(locals_).to(self.device, self.dtype) if locals_ else None  # (L, 3, T, T), all tiles
        crops = [int(f["num_local_patches"].sum()) for f in processed]
        features = self.model.get_image_features(
            pixel_values=pixels, pixel_values_local=tiles, num_local_patches=crops
        ).pooler_output  # G tensors (tiles * 144 + 256 + 1, hidden) at the real sizes
        for (_, expected), seq in zip(group, features, strict=True):
            if seq.shape[0] != expected:
                raise RuntimeError(
                    f"the vision tower gave {seq.shape[0]} embeddings where the processor counts {expected} "
                    f"image tokens: the processor's sizes do not match the model's learned queries"
                )
        return list(features)

    # -- decoder ---------------------------------------------------------------------------------------------

    def prompt_ids(self, prompt: str, image_tokens: Sequence[int]) -> list[int]:
        """Token ids of ``prompt`` with its i-th ``<image>`` expanded to ``image_tokens[i]`` positions,
        tokenized as the processor does it (the tokenizer's own special tokens, e.g. BOS, included)."""
        pieces = prompt.split(self.image_token)
        if len(pieces) - 1 != len(image_tokens):
            raise ValueError(
                f"the prompt has {len(pieces) - 1} {self.image_token!r} placeholders but {len(image_tokens)} "
                f"images were given: {prompt!r}"
            )
        text = pieces[0] + "".join(
            self.image_token * n + p for n, p in zip(image_tokens, pieces[1:], strict=True)
        )
        ids: list[int] = self.tokenizer(text)["input_ids"]
        if ids.count(self.image_token_id) != sum(image_tokens):
            raise ValueError(
                f"tokenizing the prompt gave {ids.count(self.image_token_id)} image tokens "
                f"(id {self.image_token_id}), expected {sum(image_tokens)}: {prompt!r}"
            )
        return ids

    def embed_prompt(self, vision: Sequence[torch.Tensor], prompt: str) -> torch.Tensor:
        """Token embeddings (T, hidden) of ``prompt``, the image positions filled by ``vision`` in order."""
        input_ids = torch.tensor(self.prompt_ids(prompt, [v.shape[0] for v in vision]), device=self.device)
        embeds = self.model.get_input_embeddings()(input_ids)  # (T, hidden)
        if any(v.ndim != 2 or v.shape[-1] != embeds.shape[-1] for v in vision):
            raise ValueError(
                f"vision embeddings must be (positions, {embeds.shape[-1]}) tensors from encode(); "
                f"got shapes {[tuple(v.shape) for v in vision]}"
            )
        if vision:
            is_image = input_ids == self.image_token_id  # (T,)
            embeds = embeds.masked_scatter(is_image[:, None], torch.cat(list(vision)).to(embeds))
        return embeds

    @torch.inference_mode()
    def generate_ids(
        self,
        vision: Sequence[Sequence[torch.Tensor] | torch.Tensor],
        prompt: str | Sequence[str] = DEFAULT_PROMPT,
        *,
        config: GenerationConfig | None = None,
    ) -> list[list[int]]:
        """Per request, the generated token ids (EOS and what follows excluded). See :meth:`generate`."""
        config = config or GenerationConfig()
        requests, prompts = pair_requests(vision, prompt)
        if not requests:
            return []
        batch, mask = left_pad([self.embed_prompt(v, p) for v, p in zip(requests, prompts, strict=True)])
        generation_config, eos = self._hf_generation_config(config)
        processors: list[Any] = []
        guard = config.no_repeat_guard()
        if guard is not None:
            # From inputs_embeds, transformers' input_ids hold the new tokens only: no prompt to skip.
            processors.append(NoRepeatNGramLogitsProcessor(guard))
        from transformers import LogitsProcessorList

        with _seeded(config.seed):
            new = self.model.generate(
                inputs_embeds=batch,
                attention_mask=mask,
                generation_config=generation_config,
                logits_processor=LogitsProcessorList(processors),
            )  # (B, n): with inputs_embeds alone, transformers returns only the new tokens
        tokens = []
        for row in new.tolist():
            stop = next((i for i, t in enumerate(row) if t in eos), len(row))
            tokens.append(row[:stop])
        return tokens

    def generate(
        self,
        vision: Sequence[Sequence[torch.Tensor] | torch.Tensor],
        prompt: str | Sequence[str] = DEFAULT_PROMPT,
        *,
        config: GenerationConfig | None = None,
    ) -> list[str]:
        """Read text out of vision embeddings: one string per request.

        ``vision[i]`` holds the embeddings (from :meth:`encode`) of request i's ``<image>`` placeholders (a
        single tensor for one image). Requests are left-padded and decoded as one batch by transformers'
        ``generate``, greedy or sampling per ``config``, with the no-repeat n-gram guard when
        ``config.ngram_size`` is set.
        """
        tokens = self.generate_ids(vision, prompt, config=config)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]

    def read(
        self,
        images: Sequence[Image.Image],
        mode: str | int = "gundam",
        *,
        prompt: str = DEFAULT_PROMPT,
        config: GenerationConfig | None = None,
    ) -> list[str]:
        """OCR: encode each image and generate its text with ``prompt`` (default "Free OCR.")."""
        return self.generate(self.encode(images, mode), prompt, config=config)

    def _hf_generation_config(self, config: GenerationConfig) -> tuple[Any, set[int]]:
        """A transformers GenerationConfig that decodes as ``config`` says, and the set of EOS ids.

        Every field that shapes the decoding is set (the sampling ones when sampling), so nothing in
        the checkpoint's generation_config.json (which fills unset fields) changes it; transformers' own
        no-repeat rule is off (ours replaces it).
        """
        from transformers import GenerationConfig as HFGenerationConfig

        defaults = self.model.generation_config
        eos_ids = defaults.eos_token_id if defaults.eos_token_id is not None else self.tokenizer.eos_token_id
        eos = {int(eos_ids)} if isinstance(eos_ids, int) else {int(t) for t in eos_ids or ()}
        if not eos:
            raise ValueError("the model defines no EOS token id (generation_config.eos_token_id)")
        pad = defaults.pad_token_id
        if pad is None:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(eos)
        # Greedy leaves the sampling fields unset: transformers ignores them then (and warns if they are set).
        sampling = {"temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p}
        generation_config = HFGenerationConfig(
            max_new_tokens=config.max_new_tokens,
            do_sample=config.do_sample,
            num_beams=1,
            no_repeat_ngram_size=0,
            repetition_penalty=1.0,
            eos_token_id=sorted(eos),
            pad_token_id=pad,
            **(sampling if config.do_sample else {}),
        )
        return generation_config, eos


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seeds torch's global generators (transformers samples from them) for the block, then restores them."""
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _check_folder(folder: Path) -> None:
    """Raise CheckpointError naming what to download unless ``folder`` is a complete checkpoint."""
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"no config.json in {str(folder)!r}; download {REPO_ID}: {_DOWNLOAD}")
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "deepseek_ocr2":
        raise CheckpointError(
            f"{folder}/config.json has model_type {config.get('model_type')!r}, not 'deepseek_ocr2': this "
            f"loader needs the transformers-format conversion {REPO_ID} (not the original "
            f"deepseek-ai/DeepSeek-OCR-2 remote-code layout): {_DOWNLOAD}"
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(
                f"{folder} is incomplete: the index lists {', '.join(missing)} but they are absent; "
                f"download them: {_DOWNLOAD}"
            )
    elif not any(folder.glob("*.safetensors")):
        raise CheckpointError(f"no *.safetensors weights in {folder}; download {REPO_ID}: {_DOWNLOAD}")
    absent = []
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        absent.append("tokenizer.json")
    if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        absent.append("processor_config.json / preprocessor_config.json")
    if absent:
        raise CheckpointError(
            f"{folder} is incomplete: no {' or '.join(absent)}; download {REPO_ID}: {_DOWNLOAD}"
        )


def from_pretrained_ocr2(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> DeepseekOCR2:
    """DeepSeek-OCR 2 from a local folder in the transformers layout (``deepseek-community/DeepSeek-OCR-2``).

    Nothing is downloaded (``local_files_only``): a missing or incomplete folder is a :class:`CheckpointError`
    naming what to fetch. The weights must match the model exactly: a missing, unexpected or mis-shaped
    tensor is an error too (transformers alone would only log it and leave random weights).
    """
    from transformers import AutoProcessor, DeepseekOcr2ForConditionalGeneration

    folder = Path(folder)
    _check_folder(folder)
    loaded: Any = DeepseekOcr2ForConditionalGeneration.from_pretrained(  # (model, info) with loading info
        str(folder), dtype=dtype, local_files_only=True, output_loading_info=True
    )
    model, info = loaded
    problems = [
        f"{len(keys)} {what} (e.g. {', '.join(str(k) for k in list(keys)[:3])})"
        for what, keys in (
            ("missing", sorted(info.get("missing_keys") or ())),
            ("unexpected", sorted(info.get("unexpected_keys") or ())),
            ("mis-shaped", list(info.get("mismatched_keys") or ())),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"the weights in {folder} do not match DeepSeek-OCR 2: {'; '.join(problems)}. "
            f"Re-download the folder: {_DOWNLOAD}"
        )
    processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    model = model.to(device)
    log.info("loaded DeepSeek-OCR 2 from %s (%s, %s)", folder, dtype, device)
    return DeepseekOCR2(model, processor)
