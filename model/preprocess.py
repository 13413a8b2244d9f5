"""Images to DeepEncoder views, and prompts to token ids with the right number of image positions.

Follows the released DeepSeek-OCR preprocessing (``infer()`` and ``tokenize_with_images``): Tiny and Small
stretch the page to a square, Base and Large pad it to one with grey 127 keeping the aspect ratio, Gundam
adds 640 px tiles chosen by InternVL's aspect-ratio rule beside a padded 1024 px global view. Pixels are
normalised with mean = std = 0.5, to [-1, 1]. Any other square side works too (the memory's fading tiers
use 384 and 256 px): up to 640 it is stretched like Small, above it is padded like Base.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageOps

PAD_GREY = (127, 127, 127)  # int(0.5 * 255): the normalised image is 0 there
STRETCH_MAX = 640  # sides up to this are stretched, larger ones padded (official image_size <= 640 rule)
TILE_THRESHOLD = 640  # Gundam tiles a page only when a side exceeds this (hard-coded 640 upstream)
PIXELS_PER_TOKEN = 64  # patch 16, then two stride-2 convolutions


@dataclass(frozen=True, kw_only=True)
class Mode:
    """A resolution mode: the global view's side, and for crop modes the tile side and tile count range."""

    name: str
    base_size: int
    image_size: int
    crop_mode: bool = False
    min_crops: int = 2
    max_crops: int = 9  # HF infer() uses 9; the official vLLM scripts 6 ("if your GPU memory is small")

    def __post_init__(self) -> None:
        for what in ("base_size", "image_size"):
            side = getattr(self, what)
            if not isinstance(side, int) or side < 16 or side % 16:
                raise ValueError(f"{what} must be a positive multiple of 16 pixels, got {side!r}")
        if self.crop_mode and not 1 <= self.min_crops <= self.max_crops:
            raise ValueError(f"need 1 <= min_crops <= max_crops, got {self.min_crops!r}, {self.max_crops!r}")


MODES: dict[str, Mode] = {
    "tiny": Mode(name="tiny", base_size=512, image_size=512),
    "small": Mode(name="small", base_size=640, image_size=640),
    "base": Mode(name="base", base_size=1024, image_size=1024),
    "large": Mode(name="large", base_size=1280, image_size=1280),
    "gundam": Mode(name="gundam", base_size=1024, image_size=640, crop_mode=True),
}


def get_mode(mode: str | int | Mode) -> Mode:
    """A mode by name ("tiny" ... "gundam"), by square side in pixels (e.g. 384), or as given."""
    if isinstance(mode, Mode):
        return mode
    if isinstance(mode, str):
        if mode.lower() not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)} or a side in pixels")
        return MODES[mode.lower()]
    if isinstance(mode, int) and not isinstance(mode, bool):
        named = next((m for m in MODES.values() if not m.crop_mode and m.base_size == mode), None)
        return named or Mode(name=f"{mode}px", base_size=mode, image_size=mode)
    raise ValueError(f"mode must be a name, a side in pixels or a Mode, got {mode!r}")


def grid_tokens(side: int) -> int:
    """Vision tokens per row (and column) of a square view of ``side`` pixels: 1024 -> 16, 640 -> 10."""
    return math.ceil(side / PIXELS_PER_TOKEN)


def tile_grid(width: int, height: int, mode: Mode) -> tuple[int, int]:
    """Gundam's tiling (columns, rows) for a ``width`` x ``height`` image; (1, 1) means no tiles.

    InternVL's rule: among grids with min_crops..max_crops tiles (by increasing tile count), take the one
    whose aspect ratio is closest to the image's; on a tie prefer the larger grid when the image has more
    than half its pixel area.
    """
    if not mode.crop_mode or (width <= TILE_THRESHOLD and height <= TILE_THRESHOLD):
        return (1, 1)
    aspect = width / height
    candidates = sorted(
        {
            (cols, rows)
            for n in range(mode.min_crops, mode.max_crops + 1)
            for cols in range(1, n + 1)
            for rows in range(1, n + 1)
            if mode.min_crops <= cols * rows <= mode.max_crops
        },
        key=lambda g: g[0] * g[1],
    )
    best, best_diff = (1, 1), math.inf
    for cols, rows in candidates:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * mode.image_size**2 * cols * rows:
            best = (cols, rows)
    return best


def count_image_tokens(width: int, height: int, mode: str | int | Mode) -> int:
    """``<image>`` positions one image takes in the prompt: vision tokens plus a newline per row plus the
    view separator. Tiny 73, Small 111, Base 273, Large 421; Gundam 273 + (10 rows)(10 cols + 1)."""
    m = get_mode(mode)
    q = grid_tokens(m.base_size)
    total = q * (q + 1) + 1  # global view with a newline per row, then the separator
    cols, rows = tile_grid(width, height, m)
    if (cols, rows) != (1, 1):
        t = grid_tokens(m.image_size)
        total += (rows * t) * (cols * t + 1)  # the stitched tile grid, a newline per row
    return total


@dataclass
class Views:
    """One image's normalised views: the global view and, in crop mode, its tiles in row-major order."""

    global_view: torch.Tensor  # (3, base, base)
    tiles: torch.Tensor | None  # (cols * rows, 3, image, image) or None
    grid: tuple[int, int]  # (cols, rows); (1, 1) without tiles

    @property
    def num_tokens(self) -> int:
        q = grid_tokens(self.global_view.shape[-1])
        total = q * (q + 1) + 1
        if self.tiles is not None:
            t = grid_tokens(self.tiles.shape[-1])
            total += (self.grid[1] * t) * (self.grid[0] * t + 1)
        return total


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) float32 in [-1, 1] (ToTensor, then Normalize(mean=0.5, std=0.5))."""
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = pixels.view(image.height, image.width, 3).permute(2, 0, 1)  # (3, H, W)
    return pixels.float().div(255.0).sub(0.5).div(0.5)


def square(image: Image.Image, side: int) -> Image.Image:
    """Stretch to ``side`` x ``side`` when side <= 640, else pad with grey keeping the aspect ratio."""
    if side <= STRETCH_MAX:
        return image.resize((side, side), Image.Resampling.BICUBIC)
    return ImageOps.pad(image, (side, side), method=Image.Resampling.BICUBIC, color=PAD_GREY)


def prepare(image: Image.Image, mode: str | int | Mode) -> Views:
    """Views of one page image for ``mode``."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    m = get_mode(mode)
    image = ImageOps.exif_transpose(image).convert("RGB")
    cols, rows = tile_grid(image.width, image.height, m)
    if not m.crop_mode:
        return Views(global_view=to_tensor(square(image, m.base_size)), tiles=None, grid=(1, 1))
    global_view = ImageOps.pad(
        image, (m.base_size, m.base_size), method=Image.Resampling.BICUBIC, color=PAD_GREY
    )
    if (cols, rows) == (1, 1):
        return Views(global_view=to_tensor(global_view), tiles=None, grid=(1, 1))
    s = m.image_size
    stretched = image.resize((s * cols, s * rows), Image.Resampling.BICUBIC)
    tiles = [
        to_tensor(stretched.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)))
        for r in range(rows)
        for c in range(cols)
    ]
    return Views(global_view=to_tensor(global_view), tiles=torch.stack(tiles), grid=(cols, rows))


def prompt_ids(
    tokenizer: object,
    prompt: str,
    image_tokens: Sequence[int],
    *,
    image_token: str = "<image>",
    image_token_id: int,
    bos_token_id: int,
) -> list[int]:
    """BOS + the raw prompt with each ``<image>`` expanded to its number of image positions.

    DeepSeek-OCR uses the "plain" conversation format: no roles, no system prompt, no EOS.
    """
    pieces = prompt.split(image_token)
    if len(pieces) - 1 != len(image_tokens):
        raise ValueError(
            f"the prompt has {len(pieces) - 1} {image_token!r} placeholders but {len(image_tokens)} images "
            f"were given: {prompt!r}"
        )
    encode = tokenizer.encode  # type: ignore[attr-defined]
    ids = [bos_token_id]
    for i, piece in enumerate(pieces):
        if piece:
            ids += encode(piece, add_special_tokens=False)
        if i < len(image_tokens):
            ids += [image_token_id] * image_tokens[i]
    return ids
