"""Image token pricing of the families agents use, against the providers' own worked examples (and, for
Qwen-VL, against transformers' own resize of the Qwen2-VL processor)."""

from __future__ import annotations

import math

import pytest

from optical_memory.errors import InvalidInput
from optical_memory.pricing import TARGETS, Patches, Pixels, Tiles, pricing


def test_openai_tiles_match_the_documented_examples():
    gpt4o = TARGETS["gpt-4o"]
    assert gpt4o.resize(1024, 1024) == (768, 768) and gpt4o.tokens(1024, 1024) == 765  # 4 tiles
    assert gpt4o.resize(2048, 4096) == (768, 1536) and gpt4o.tokens(2048, 4096) == 1105  # 6 tiles
    assert TARGETS["gpt-4o:low"].tokens(4096, 8192) == 85  # low detail: a flat 85
    assert gpt4o.tokens(512, 512) == 85 + 170  # small images are not scaled up
    assert TARGETS["gpt-4o-mini"].tokens(1024, 1024) == 2833 + 4 * 5667


def test_openai_patches_match_the_documented_examples():
    mini = TARGETS["gpt-4.1-mini"]
    assert isinstance(mini, Patches)
    assert mini.patches(1024, 1024) == 1024  # 32 x 32 patches, under the cap
    assert mini.resize(1800, 2400) == (1056, 1408) and mini.patches(1800, 2400) == 1452  # shrunk to fit
    assert mini.tokens(1024, 1024) == math.ceil(1024 * 1.62)  # billed with the model's multiplier
    assert Patches("any").patches(8000, 8000) <= 1536


def test_anthropic_pixels_match_the_documented_examples():
    claude = TARGETS["claude"]
    assert claude.tokens(200, 200) == 54
    assert claude.tokens(1000, 1000) == 1334
    assert claude.tokens(1092, 1092) == 1590 and claude.resize(1092, 1092) == (1092, 1092)
    w, h = claude.resize(3000, 2000)  # shrunk, aspect kept, within 1568 px and ~1,600 tokens
    assert max(w, h) <= 1568 and claude.tokens(3000, 2000) <= 1600 and abs(w / h - 1.5) < 0.01
    assert Pixels("long", max_tokens=10**9).resize(4000, 1000) == (1568, 392)  # the long-edge limit alone


def test_gemini_tiles_and_deepencoder_modes():
    gemini = TARGETS["gemini-2"]
    assert gemini.tokens(384, 384) == 258 and gemini.tokens(600, 400) == 258
    assert gemini.tokens(1024, 1024) == 4 * 258
    deepseek = TARGETS["deepseek-ocr"]
    assert [deepseek.tokens(s, s) for s in (1024, 640, 512)] == [256, 100, 64]
    assert deepseek.resize(1024, 300) == (1024, 1024) and deepseek.tokens(1024, 300) == 256  # padded square


def test_qwen_patch_grid_resizes_as_the_qwen2_vl_processor_does():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    qwen = TARGETS["qwen2.5-vl"]
    for width, height in [(1024, 1024), (256, 256), (500, 20), (3000, 4000), (1024, 300), (64, 64)]:
        h, w = smart_resize(height, width)
        assert qwen.resize(width, height) == (w, h), (width, height)
        assert qwen.tokens(width, height) == (w // 28) * (h // 28) + 2


def test_targets_are_named_or_given_as_rules():
    assert pricing("claude") is TARGETS["claude"]
    mine = Tiles("my-model", base=100, per_tile=200)
    assert pricing(mine) is mine and mine.tokens(1024, 1024) == 100 + 4 * 200
    with pytest.raises(InvalidInput, match="'gpt-9'"):
        pricing("gpt-9")
    with pytest.raises(InvalidInput, match="42"):
        pricing(42)  # type: ignore[arg-type]
