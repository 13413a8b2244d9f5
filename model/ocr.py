"""DeepSeek-OCR: DeepEncoder (SAM-ViT-B -> 16x compressor -> CLIP-L -> linear projector) feeding the
DeepSeek-3B-MoE decoder, with the official module tree so a checkpoint loads by a strict key check.

Follows ``DeepseekOCRForCausalLM`` of the released model: the decoder's ``model`` also holds the vision
modules (``model.sam_model``, ``model.vision_model``, ``model.projector``, ``model.image_newline``,
``model.view_seperator`` [sic]). The two operations the memory needs are :meth:`DeepseekOCR.encode`
(page images -> vision tokens) and :meth:`DeepseekOCR.generate` (vision tokens + prompt -> text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from .clip import VisionTransformer
from .config import OCRConfig
from .decoder import DeepseekV2ForCausalLM, DeepseekV2Model
from .generation import GenerationConfig, left_pad, pair_requests
from .preprocess import Mode, Views, get_mode, prepare, prompt_ids
from .sam import ImageEncoderViT

DEFAULT_PROMPT = "<image>\nFree OCR."


class Projector(nn.Module):
    """``MlpProjector(projector_type="linear")``: one Linear from the 2048-wide fused features."""

    def __init__(self, input_dim: int, n_embed: int) -> None:
        super().__init__()
        self.layers = nn.Linear(input_dim, n_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DeepseekOCRModel(DeepseekV2Model):
    """The decoder body plus DeepEncoder, under the checkpoint's ``model.`` prefix."""

    def __init__(self, cfg: OCRConfig) -> None:
        super().__init__(cfg.decoder)
        hidden = cfg.decoder.hidden_size
        self.sam_model = ImageEncoderViT(cfg.sam)
        self.vision_model = VisionTransformer(cfg.clip)
        self.projector = Projector(cfg.projector_input_dim, hidden)
        scale = 1 / math.sqrt(hidden)
        self.image_newline = nn.Parameter(torch.randn(hidden) * scale)
        self.view_seperator = nn.Parameter(torch.randn(hidden) * scale)  # [sic], the checkpoint's spelling

    def encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """Square views (N, 3, S, S) -> projected vision features (N, q*q, hidden), q = ceil(S/64)."""
        sam = self.sam_model(pixels)  # (N, 1024, q, q)
        clip = self.vision_model(sam)[:, 1:]  # (N, q*q, 1024), CLS dropped
        fused = torch.cat([clip, sam.flatten(2).transpose(1, 2)], dim=-1)  # (N, q*q, 2048): CLIP first
        return self.projector(fused)  # (N, q*q, hidden)

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """(rows, cols, C) -> (rows * (cols + 1), C): an ``image_newline`` closes every row."""
        rows = grid.shape[0]
        newline = self.image_newline.to(grid.dtype).expand(rows, 1, -1)  # (rows, 1, C)
        return torch.cat([grid, newline], dim=1).flatten(0, 1)

    def layout(
        self, global_feats: torch.Tensor, tile_feats: torch.Tensor | None, grid: tuple[int, int]
    ) -> Any:
        """One image's sequence of embeddings: [stitched tiles] + [global view] + [view separator].

        global_feats: (q*q, C); tile_feats: (cols*rows, t*t, C) in row-major tile order, or None.
        (The released config says ``global_view_pos: "head"`` but the released code puts it after the
        tiles; this follows the code.)
        """
        c = global_feats.shape[-1]
        q = math.isqrt(global_feats.shape[0])
        parts = []
        if tile_feats is not None:
            cols, rows = grid
            t = math.isqrt(tile_feats.shape[1])
            tiles = tile_feats.view(rows, cols, t, t, c)  # (rows, cols, t, t, C)
            stitched = tiles.permute(0, 2, 1, 3, 4).reshape(rows * t, cols * t, c)  # (rows*t, cols*t, C)
            parts.append(self._with_newlines(stitched))
        parts.append(self._with_newlines(global_feats.view(q, q, c)))
        parts.append(self.view_seperator.to(global_feats.dtype)[None])  # (1, C)
        return torch.cat(parts)


class DeepseekOCR(DeepseekV2ForCausalLM):
    """DeepSeek-OCR v1. Build with :func:`optical_memory.model.from_pretrained` to get real weights."""

    model: DeepseekOCRModel

    def __init__(self, cfg: OCRConfig | None = None, *, tokenizer: Any = None) -> None:
        cfg = cfg or OCRConfig()
        super().__init__(cfg.decoder, model=DeepseekOCRModel(cfg))
        self.config = cfg
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @torch.inference_mode()
    def encode(
        self, images: Sequence[Image.Image], mode: str | int | Mode = "base", *, batch_size: int = 8
    ) -> list[torch.Tensor]:
        """Page images -> per image, its vision tokens (positions, hidden) exactly as the decoder sees them:
        vision features with row newlines and the view separator (Base: 273 x 1280, Small: 111 x 1280).

        Views of the same side are batched through DeepEncoder, ``batch_size`` at a time.
        """
        if isinstance(images, Image.Image):
            images = [images]
        m = get_mode(mode)
        views: list[Views] = [prepare(image, m) for image in images]
        globals_ = self._encode_batched([v.global_view for v in views], batch_size)
        tiles = [v.tiles for v in views if v.tiles is not None]
        flat_tiles = self._encode_batched([t for block in tiles for t in block], batch_size)
        out, used = [], 0
        for v, g in zip(views, globals_, strict=True):
            tile_feats = None
            if v.tiles is not None:
                n = v.tiles.shape[0]
                tile_feats = torch.stack(flat_tiles[used : used + n])  # (n, t*t, C)
                used += n
            seq = self.model.layout(g, tile_feats, v.grid)
            assert seq.shape[0] == v.num_tokens, (seq.shape, v.num_tokens)
            out.append(seq)
        return out

    def _encode_batched(self, pixels: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        for start in range(0, len(pixels), batch_size):
            batch = torch.stack(pixels[start : start + batch_size]).to(self.device, self.dtype)
            feats.extend(self.model.encode_views(batch).unbind(0))
        return feats

    def embed_prompt(self, vision: Sequence[torch.Tensor], prompt: str) -> torch.Tensor:
        """Token embeddings of BOS + ``prompt`` with the image positions filled by ``vision`` in order."""
        cfg = self.config.decoder
        ids = prompt_ids(
            self._tokenizer(),
            prompt,
            [v.shape[0] for v in vision],
            image_token_id=cfg.image_token_id,
            bos_token_id=cfg.bos_token_id,
        )
        input_ids = torch.tensor(ids, device=self.device)
        embeds = self.model.embed_tokens(input_ids)  # (T, hidden)
        if vision:
            is_image = input_ids == cfg.image_token_id  # (T,)
            embeds = embeds.masked_scatter(is_image[:, None], torch.cat(list(vision)).to(embeds.dtype))
        return embeds

    @torch.inference_mode()
    def generate(
        self,
        vision: Sequence[Sequence[torch.Tensor] | torch.Tensor],
        prompt: str | Sequence[str] = DEFAULT_PROMPT,
        *,
        config: GenerationConfig | None = None,
    ) -> list[str]:
        """Read text out of vision tokens: one string per request.

        ``vision[i]`` holds the vision tokens (from :meth:`encode`) of request i's ``<image>`` placeholders
        (a single tensor for one image). Requests are left-padded and decoded as one batch.
        """
        config = config or GenerationConfig()
        requests, prompts = pair_requests(vision, prompt)
        if not requests:
            return []
        batch, mask = left_pad([self.embed_prompt(v, p) for v, p in zip(requests, prompts, strict=True)])
        result = self.generate_tokens(batch, attention_mask=mask, config=config)
        tok = self._tokenizer()
        return [tok.decode(t, skip_special_tokens=True) for t in result.tokens]

    def read(
        self,
        images: Sequence[Image.Image],
        mode: str | int | Mode = "base",
        *,
        prompt: str = DEFAULT_PROMPT,
        config: GenerationConfig | None = None,
    ) -> list[str]:
        """OCR: encode each image and generate its text with ``prompt`` (default "Free OCR.")."""
        return self.generate(self.encode(images, mode), prompt, config=config)

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: load it with from_pretrained(folder)")
        return self.tokenizer
