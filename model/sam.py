"""SAM-ViT-B image encoder with DeepEncoder's 16x convolutional compressor: the first half of DeepEncoder.

Provenance: the ViT follows Segment Anything's image encoder (Kirillov et al. 2023), itself the ViTDet
backbone (Li et al. 2022): a plain ViT whose blocks attend inside non-overlapping windows except a few
global blocks, with an absolute position grid and MViTv2's decomposed relative positions (Li et al.
2022). DeepSeek-OCR (Wei et al. 2025, "DeepEncoder") keeps SAM's neck and appends two stride-2 3x3
convolutions (``net_2``, ``net_3``) that cut the token count 16x; it also resizes the position grid and
the relative-position tables so the encoder runs at any side, not only the 1024 px it was trained at.

Attribute names are the checkpoint's keys below ``model.sam_model.``. Shapes for a side S (multiple of 16):

    pixels (B, 3, S, S) -> patches (B, S/16, S/16, C) -> blocks -> neck (B, out, S/16, S/16)
    -> net_2 (B, net_2_chans, S/32, S/32) -> net_3 (B, net_3_chans, S/64, S/64)   (sides rounded up)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SamConfig


def resize_bicubic_aa(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a (N, C, H, W) grid to ``size`` with antialiased bicubic, computed in float32.

    This is how DeepEncoder resizes both position grids (SAM's and CLIP's). The result comes back in the
    input's dtype and on its device; on Apple MPS, which has no antialiased bicubic kernel, the resize
    runs on the CPU.
    """
    src = grid.to(torch.float32)
    if src.device.type == "mps":
        src = src.cpu()
    out = F.interpolate(src, size=size, mode="bicubic", antialias=True, align_corners=False)
    return out.to(device=grid.device, dtype=grid.dtype)


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis: (q_size, k_size, D).

    ``rel_pos`` (L, D) holds one row per offset. When L is not the ``2 * max(q_size, k_size) - 1`` rows
    this axis needs (a global block at a side other than the pretraining one), the table is first
    resized by linear interpolation (in float32), as in MViTv2 and SAM.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        table = rel_pos.to(torch.float32).t().unsqueeze(0)  # (1, D, L)
        table = F.interpolate(table, size=max_rel_dist, mode="linear")  # (1, D, max_rel_dist)
        rel_pos = table.squeeze(0).t().to(rel_pos.dtype)  # (max_rel_dist, D)
    # When the two sides differ, the shorter one's coordinates are stretched to the longer one's.
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)  # (q, k), >= 0
    return rel_pos[relative_coords.long()]  # (q_size, k_size, D)


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Split (B, H, W, C) into (B * nW, window, window, C) windows, zero-padding H and W up to a multiple
    of the window. Returns the windows and the padded (Hp, Wp)."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C)
    Hp, Wp = H + pad_h, W + pad_w
    x = x.reshape(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)  # (B * nW, ws, ws, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: Tensor, window_size: int, padded: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window, window, C) -> (B, H, W, C), padding dropped."""
    Hp, Wp = padded
    H, W = hw
    B = windows.shape[0] // ((Hp // window_size) * (Wp // window_size))
    x = windows.reshape(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)  # (B, Hp, Wp, C)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()  # (B, H, W, C)
    return x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (SAM's neck norm)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p, W/p, C), channels last."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, h, w, C)


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.gelu(self.lin1(x)))  # exact (erf) GELU, as nn.GELU()


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) grid with decomposed relative positions.

    ``rel_size`` is the side the relative tables are sized for: the window for windowed blocks, the
    pretraining patch grid for global ones (tables of 2 * rel_size - 1 rows, resized when the grid differs).
    """

    def __init__(self, dim: int, num_heads: int, rel_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)  # rows [q | k | v]
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        N = H * W
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1)  # (B, N, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, N, hd)

        # Decomposed relative positions (MViTv2): the bias between query (qh, qw) and key (kh, kw) is
        # <q, Rh[qh, kh]> + <q, Rw[qw, kw]>, taken from the unscaled q; SDPA then applies 1/sqrt(hd) to
        # q.k only, which is exactly SAM's (q * scale) @ k.T + rel terms.
        Rh = get_rel_pos(H, H, self.rel_pos_h)  # (H, H, hd)
        Rw = get_rel_pos(W, W, self.rel_pos_w)  # (W, W, hd)
        r_q = q.reshape(B, self.num_heads, H, W, -1)  # (B, nh, H, W, hd)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh)  # (B, nh, H, W, kH)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw)  # (B, nh, H, W, kW)
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, self.num_heads, N, N)  # keys row-major

        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nh, N, hd)
        out = out.transpose(1, 2).reshape(B, H, W, C)  # (B, H, W, C)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm ViT block; ``window_size`` 0 means global attention."""

    def __init__(self, cfg: SamConfig, window_size: int) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=cfg.eps)
        self.attn = Attention(dim, cfg.num_heads, rel_size=window_size if window_size > 0 else cfg.grid)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps)
        self.mlp = MLPBlock(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, padded = window_partition(x, self.window_size)  # (B * nW, ws, ws, C)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, (H, W))  # (B, H, W, C)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM-ViT-B + neck + DeepEncoder compressor: (B, 3, S, S) -> (B, net_3_chans, ceil(S/64), ceil(S/64))."""

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C, out = cfg.embed_dim, cfg.out_chans
        self.patch_embed = PatchEmbed(cfg.patch_size, C)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid, cfg.grid, C))  # (1, grid, grid, C)
        self.blocks = nn.ModuleList(
            Block(cfg, window_size=0 if i in cfg.global_attn_indexes else cfg.window_size)
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(C, out, kernel_size=1, bias=False),
            LayerNorm2d(out, eps=cfg.eps),
            nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out, eps=cfg.eps),
        )
        # The 16x compressor: each stride-2 conv halves the side (rounding up) and widens the channels.
        self.net_2 = nn.Conv2d(out, cfg.net_2_chans, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(
            cfg.net_2_chans, cfg.net_3_chans, kernel_size=3, stride=2, padding=1, bias=False
        )

    def abs_pos(self, h: int, w: int) -> Tensor:
        """The absolute position grid for an (h, w) patch grid: (1, h, w, C), the parameter itself at the
        pretraining grid, else resized bicubically with antialiasing (in float32)."""
        pos = self.pos_embed
        if pos.shape[1] == h and pos.shape[2] == w:
            return pos
        grid = resize_bicubic_aa(pos.permute(0, 3, 1, 2), (h, w))  # (1, C, h, w)
        return grid.permute(0, 2, 3, 1)  # (1, h, w, C)

    def forward(self, x: Tensor) -> Tensor:
        p = self.cfg.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"image sides must be multiples of the patch size {p}, got {tuple(x.shape[-2:])}"
            )
        x = x.to(self.patch_embed.proj.weight.dtype)
        x = self.patch_embed(x)  # (B, h, w, C)
        x = x + self.abs_pos(x.shape[1], x.shape[2])
        for block in self.blocks:
            x = block(x)
        x = self.neck(x.permute(0, 3, 1, 2))  # (B, out, h, w)
        x = self.net_2(x)  # (B, net_2_chans, ceil(h/2), ceil(w/2))
        return self.net_3(x)  # (B, net_3_chans, ceil(h/4), ceil(w/4))
