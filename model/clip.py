"""CLIP-L/14 vision transformer fed SAM features as patch embeddings: the second half of DeepEncoder.

Provenance: the body is OpenAI CLIP's ViT-L/14 vision tower (Radford et al. 2021): a CLS token, learned
absolute positions, a pre-transformer LayerNorm (``pre_layrnorm``, the checkpoint's spelling), pre-norm
blocks with quick-GELU MLPs. DeepSeek-OCR (Wei et al. 2025, "DeepEncoder") removes the patch convolution
from the path (its weight stays in the checkpoint, unused) and feeds the SAM compressor's (B, 1024, h, w)
output in its place; the 16 x 16 position grid is resized bicubically with antialiasing to (h, w). There
is no post-LayerNorm and the caller drops the CLS token.

Attribute names are the checkpoint's keys below ``model.vision_model.``. The checkpoint has no
``position_ids`` buffer: positions are the embedding table's rows, read directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ClipConfig
from .sam import resize_bicubic_aa


def quick_gelu(x: Tensor) -> Tensor:
    """CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


class CLIPVisionEmbeddings(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        C = cfg.hidden_size
        self.grid = cfg.grid
        self.class_embedding = nn.Parameter(torch.randn(C))
        # In the checkpoint but never applied: DeepEncoder passes SAM features instead of pixels.
        self.patch_embedding = nn.Conv2d(3, C, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.grid * cfg.grid + 1, C)  # CLS row, then the grid

    def positions(self, h: int, w: int) -> Tensor:
        """Position rows for CLS plus an (h, w) grid: (1 + h*w, C). The CLS row is kept as is; the grid
        rows are the table itself at the pretraining grid, else resized bicubically with antialiasing."""
        table = self.position_embedding.weight  # (1 + grid*grid, C)
        if h == self.grid and w == self.grid:
            return table
        cls_pos, grid = table[:1], table[1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (1, C, grid, grid)
        grid = resize_bicubic_aa(grid, (h, w))  # (1, C, h, w)
        grid = grid.permute(0, 2, 3, 1).reshape(h * w, -1)  # (h*w, C)
        return torch.cat([cls_pos, grid], dim=0)  # (1 + h*w, C)

    def forward(self, patch_embeds: Tensor) -> Tensor:
        B, _, h, w = patch_embeds.shape
        tokens = patch_embeds.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls = self.class_embedding.expand(B, 1, -1)  # (B, 1, C)
        x = torch.cat([cls, tokens], dim=1)  # (B, 1 + h*w, C)
        return x + self.positions(h, w)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with a fused [q | k | v] projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv_proj = nn.Linear(dim, dim * 3)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, L, C = x.shape
        qkv = self.qkv_proj(x).reshape(B, L, 3, self.num_heads, -1)  # (B, L, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, L, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, L, hd), scale 1/sqrt(hd)
        out = out.transpose(1, 2).reshape(B, L, C)  # (B, L, C)
        return self.out_proj(out)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        C = cfg.hidden_size
        self.layer_norm1 = nn.LayerNorm(C, eps=cfg.eps)
        self.self_attn = Attention(C, cfg.num_heads)
        self.layer_norm2 = nn.LayerNorm(C, eps=cfg.eps)
        self.mlp = MLP(C, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class VisionTransformer(nn.Module):
    """CLIP-L body over SAM features: (B, C, h, w) -> (B, 1 + h*w, C), CLS first (the caller drops it)."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps)  # sic: the checkpoint's spelling
        self.transformer = Transformer(cfg)

    def forward(self, patch_embeds: Tensor) -> Tensor:
        if patch_embeds.shape[1] != self.cfg.hidden_size:
            raise ValueError(
                f"patch_embeds must have {self.cfg.hidden_size} channels (B, C, h, w), "
                f"got shape {tuple(patch_embeds.shape)}"
            )
        patch_embeds = patch_embeds.to(self.embeddings.class_embedding.dtype)
        x = self.embeddings(patch_embeds)  # (B, 1 + h*w, C)
        x = self.pre_layrnorm(x)
        return self.transformer(x)
