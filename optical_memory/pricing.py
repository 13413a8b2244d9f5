"""What an image costs the model that receives it: each provider family's published rule, as data.

    image (width, height) -> the size the provider resizes it to -> the tokens it is billed and counted as

A context in image mode is read by the agent's own chat model, not by DeepEncoder, and every family
prices images its own way: OpenAI's tiles (low or high detail) or 32 px patches, Anthropic's pixels over
750, Gemini's 258-token tiles, Qwen-VL's 28 px patch grid, DeepEncoder's 16 px patches. Each rule is one
frozen dataclass with the published constants and resize limits; ``TARGETS`` names the common models.
The rules were written from the providers' documentation (their worked examples are unit tests), which
changes: pass your own instance for a model not listed, or one whose price moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .config import vision_tokens
from .errors import InvalidInput
from .validation import shown


@runtime_checkable
class ImagePricing(Protocol):
    """A provider's image rule: the size it resizes an image to, and the tokens that image costs."""

    @property
    def name(self) -> str: ...

    def resize(self, width: int, height: int) -> tuple[int, int]: ...

    def tokens(self, width: int, height: int) -> int: ...


def _fit(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, int(width * scale)), max(1, int(height * scale))


@dataclass(frozen=True)
class Tiles:
    """OpenAI's tile rule (GPT-4o, GPT-4.1, GPT-5 and kin): high detail fits the image in ``box`` x ``box``,
    then scales its shorter side to ``short_side`` (down only), and costs ``base`` plus ``per_tile`` for
    each ``tile`` px tile it covers; low detail costs ``base`` whatever the size (the model sees 512 px)."""

    name: str
    base: int = 85
    per_tile: int = 170
    tile: int = 512
    box: int = 2048
    short_side: int = 768
    detail: str = "high"

    def resize(self, width: int, height: int) -> tuple[int, int]:
        if self.detail == "low":
            return _fit(width, height, min(1.0, self.tile / max(width, height)))
        if max(width, height) > self.box:
            width, height = _fit(width, height, self.box / max(width, height))
        if min(width, height) > self.short_side:
            width, height = _fit(width, height, self.short_side / min(width, height))
        return width, height

    def tokens(self, width: int, height: int) -> int:
        if self.detail == "low":
            return self.base
        w, h = self.resize(width, height)
        return self.base + self.per_tile * math.ceil(w / self.tile) * math.ceil(h / self.tile)


@dataclass(frozen=True)
class Patches:
    """OpenAI's patch rule (GPT-4.1 mini and nano, o4-mini): ``patch`` px patches, at most ``cap`` of them
    (a larger image is shrunk until its whole patches fit), times the model's ``multiplier``."""

    name: str
    patch: int = 32
    cap: int = 1536
    multiplier: float = 1.0

    def resize(self, width: int, height: int) -> tuple[int, int]:
        p = self.patch
        if math.ceil(width / p) * math.ceil(height / p) <= self.cap:
            return width, height
        shrink = math.sqrt(self.cap * p * p / (width * height))
        w, h = width * shrink, height * shrink
        shrink *= min(math.floor(w / p) / (w / p), math.floor(h / p) / (h / p))  # whole patches across
        return max(1, int(width * shrink)), max(1, int(height * shrink))

    def patches(self, width: int, height: int) -> int:
        w, h = self.resize(width, height)
        return min(self.cap, math.ceil(w / self.patch) * math.ceil(h / self.patch))

    def tokens(self, width: int, height: int) -> int:
        return math.ceil(self.patches(width, height) * self.multiplier)


@dataclass(frozen=True)
class Pixels:
    """Anthropic's rule (Claude): ``width * height / per_tokens`` tokens, after an image whose long edge is
    over ``long_edge`` px or whose cost is over ``max_tokens`` is shrunk, aspect kept, within both."""

    name: str
    per_tokens: int = 750
    long_edge: int = 1568
    max_tokens: int = 1600

    def resize(self, width: int, height: int) -> tuple[int, int]:
        scale = min(1.0, self.long_edge / max(width, height))
        scale = min(scale, math.sqrt(self.max_tokens * self.per_tokens / (width * height)))
        return (width, height) if scale >= 1.0 else _fit(width, height, scale)

    def tokens(self, width: int, height: int) -> int:
        w, h = self.resize(width, height)
        return math.ceil(w * h / self.per_tokens)


@dataclass(frozen=True)
class FixedTiles:
    """Gemini 2.x: an image with both sides at most ``small`` px costs ``per_tile``; a larger one is cut
    into ``tile`` x ``tile`` tiles of ``per_tile`` tokens each."""

    name: str
    per_tile: int = 258
    small: int = 384
    tile: int = 768

    def resize(self, width: int, height: int) -> tuple[int, int]:
        return width, height

    def tokens(self, width: int, height: int) -> int:
        if width <= self.small and height <= self.small:
            return self.per_tile
        return self.per_tile * math.ceil(width / self.tile) * math.ceil(height / self.tile)


@dataclass(frozen=True)
class PatchGrid:
    """Qwen2-VL / Qwen2.5-VL: the image is resized to whole multiples of ``factor`` px (14 px patches merged
    2 x 2) with its pixels kept within [``min_pixels``, ``max_pixels``], one token per ``factor`` square,
    plus ``wrap`` tokens (<|vision_start|>, <|vision_end|>)."""

    name: str
    factor: int = 28
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    wrap: int = 2

    def resize(self, width: int, height: int) -> tuple[int, int]:
        f = self.factor
        h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
        if h * w > self.max_pixels:
            beta = math.sqrt(height * width / self.max_pixels)
            h, w = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
        elif h * w < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
        return w, h

    def tokens(self, width: int, height: int) -> int:
        w, h = self.resize(width, height)
        return (w // self.factor) * (h // self.factor) + self.wrap


@dataclass(frozen=True)
class DeepEncoder:
    """DeepSeek-OCR's DeepEncoder, as this store feeds it: an image padded to a square of its longer side,
    16 px patches compressed 16x (1024 px -> 256 tokens, 640 -> 100, 512 -> 64; the store's pages)."""

    name: str = "deepseek-ocr"

    def resize(self, width: int, height: int) -> tuple[int, int]:
        side = max(width, height)
        return side, side

    def tokens(self, width: int, height: int) -> int:
        return vision_tokens(max(width, height))


#: Named targets. The constants are the providers' published ones at the time of writing.
TARGETS: dict[str, ImagePricing] = {
    "deepseek-ocr": DeepEncoder(),
    "gpt-4o": Tiles("gpt-4o"),
    "gpt-4o:low": Tiles("gpt-4o:low", detail="low"),
    "gpt-4.1": Tiles("gpt-4.1"),
    "gpt-4o-mini": Tiles("gpt-4o-mini", base=2833, per_tile=5667),
    "gpt-4.1-mini": Patches("gpt-4.1-mini", multiplier=1.62),
    "gpt-4.1-nano": Patches("gpt-4.1-nano", multiplier=2.46),
    "o4-mini": Patches("o4-mini", multiplier=1.72),
    "claude": Pixels("claude"),
    "gemini-2": FixedTiles("gemini-2"),
    "qwen2.5-vl": PatchGrid("qwen2.5-vl"),
}


def pricing(target: str | ImagePricing) -> ImagePricing:
    """The pricing rule for a target name in ``TARGETS``, or a rule object as it is."""
    if isinstance(target, str):
        if target not in TARGETS:
            raise InvalidInput(f"target must be one of {', '.join(map(repr, TARGETS))}, got {shown(target)}")
        return TARGETS[target]
    if not isinstance(target, ImagePricing):
        raise InvalidInput(f"target must be a target name or an ImagePricing rule, got {shown(target)}")
    return target
