"""DeepEncoder halves (model/sam.py, model/clip.py): checkpoint layout, shapes, interpolation, and parity
with transformers' SAM, DeepSeek-OCR-2 SAM and CLIP implementations on identical random weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optical_memory.model.clip import VisionTransformer
from optical_memory.model.config import ClipConfig, OCRConfig, SamConfig
from optical_memory.model.sam import ImageEncoderViT, get_rel_pos, window_partition, window_unpartition

SHAPES_FILE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "reference"
    / "deepseek_ocr_v1_checkpoint_shapes.json"
)

# Small-but-not-trivial configs for parity: an 8 x 8 native grid, windows of 3 (padded to 9), two global
# blocks, four heads of 16.
PARITY_SAM = SamConfig(
    img_size=128,
    embed_dim=64,
    depth=4,
    num_heads=4,
    window_size=3,
    global_attn_indexes=(1, 3),
    out_chans=32,
    net_2_chans=48,
    net_3_chans=64,
)
PARITY_CLIP = ClipConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, image_size=56)


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a random, well-scaled value (zero-initialised tables would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if any(key in name for key in ("pos_embed", "rel_pos", "position_embedding", "class_embedding")):
                p.copy_(0.5 * noise)
            elif p.dim() >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))  # fan-in scaling
            elif name.endswith("weight"):  # LayerNorm gains
                p.copy_(1.0 + 0.2 * noise)
            else:  # biases
                p.copy_(0.1 * noise)
    return module.eval()


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


# ---------------------------------------------------------------- checkpoint layout


def _checkpoint_shapes(prefix: str) -> dict[str, list[int]]:
    if not SHAPES_FILE.is_file():
        pytest.skip(f"checkpoint shape table not found at {SHAPES_FILE}")
    shapes = json.loads(SHAPES_FILE.read_text())["shapes"]
    return {k[len(prefix) :]: list(v) for k, v in shapes.items() if k.startswith(prefix)}


@pytest.mark.parametrize(
    ("prefix", "build"),
    [
        ("model.sam_model.", lambda: ImageEncoderViT(SamConfig())),
        ("model.vision_model.", lambda: VisionTransformer(ClipConfig())),
    ],
    ids=["sam", "clip"],
)
def test_full_size_state_dict_matches_checkpoint(prefix: str, build) -> None:
    expected = _checkpoint_shapes(prefix)
    with torch.device("meta"):
        module = build()
    ours = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert sorted(set(ours) - set(expected)) == []  # nothing the checkpoint lacks (e.g. position_ids)
    assert sorted(set(expected) - set(ours)) == []
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("side", [128, 192, 256, 320, 144])
def test_output_shapes(side: int) -> None:
    cfg = OCRConfig.tiny()
    sam, clip = ImageEncoderViT(cfg.sam).eval(), VisionTransformer(cfg.clip).eval()
    q = math.ceil(side / 64)
    with torch.no_grad():
        feats = sam(torch.randn(2, 3, side, side))
        out = clip(feats)
    assert feats.shape == (2, cfg.sam.net_3_chans, q, q)
    assert out.shape == (2, q * q + 1, cfg.clip.hidden_size)
    assert torch.isfinite(out).all()


def test_rejects_side_not_multiple_of_patch() -> None:
    sam = ImageEncoderViT(OCRConfig.tiny().sam)
    with pytest.raises(ValueError, match="100"):
        sam(torch.randn(1, 3, 100, 128))


def test_clip_rejects_wrong_channel_count() -> None:
    clip = VisionTransformer(OCRConfig.tiny().clip)
    with pytest.raises(ValueError, match="48"):
        clip(torch.randn(1, 7, 2, 2))


@pytest.mark.parametrize(("h", "w", "ws"), [(8, 8, 3), (9, 9, 3), (10, 7, 4), (5, 5, 14)])
def test_window_partition_round_trip(h: int, w: int, ws: int) -> None:
    x = torch.randn(2, h, w, 5)
    windows, padded = window_partition(x, ws)
    assert windows.shape == (2 * math.ceil(h / ws) * math.ceil(w / ws), ws, ws, 5)
    assert padded == (math.ceil(h / ws) * ws, math.ceil(w / ws) * ws)
    assert torch.equal(windows[0, : min(ws, h), : min(ws, w)], x[0, : min(ws, h), : min(ws, w)])
    assert torch.equal(window_unpartition(windows, ws, padded, (h, w)), x)


# ---------------------------------------------------------------- position interpolation


def test_sam_pos_embed_identity_at_native_grid_and_resized_elsewhere() -> None:
    sam = randomise(ImageEncoderViT(PARITY_SAM))
    g = PARITY_SAM.grid
    assert sam.abs_pos(g, g) is sam.pos_embed
    assert sam.abs_pos(12, 5).shape == (1, 12, 5, PARITY_SAM.embed_dim)
    # Orientation: a grid that varies only down the rows keeps doing so, with rows and columns resized apart.
    with torch.no_grad():
        sam.pos_embed.copy_(torch.randn(1, g, 1, PARITY_SAM.embed_dim).expand(1, g, g, -1))
    resized = sam.abs_pos(12, 5)
    torch.testing.assert_close(resized, resized[:, :, :1].expand_as(resized))
    assert not torch.allclose(resized[:, 0], resized[:, -1])
    # Values: antialiased bicubic in float32 over the (h, w) axes.
    expected = F.interpolate(
        sam.pos_embed.permute(0, 3, 1, 2), size=(12, 5), mode="bicubic", antialias=True, align_corners=False
    ).permute(0, 2, 3, 1)
    torch.testing.assert_close(resized, expected)


def test_clip_positions_identity_at_native_grid_and_resized_elsewhere() -> None:
    clip = randomise(VisionTransformer(PARITY_CLIP))
    emb = clip.embeddings
    g, C = PARITY_CLIP.grid, PARITY_CLIP.hidden_size
    table = emb.position_embedding.weight
    assert torch.equal(emb.positions(g, g), table)
    for h, w in [(10, 10), (2, 2), (3, 7)]:
        pos = emb.positions(h, w)
        assert pos.shape == (1 + h * w, C)
        assert torch.equal(pos[0], table[0])  # CLS row untouched
        grid = table[1:].reshape(g, g, C).permute(2, 0, 1)[None]  # (1, C, g, g), row-major grid
        expected = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        torch.testing.assert_close(pos[1:], expected[0].permute(1, 2, 0).reshape(h * w, C))


def test_rel_pos_identity_at_native_size() -> None:
    n = 8
    table = torch.randn(2 * n - 1, 16)
    rel = get_rel_pos(n, n, table)
    assert rel.shape == (n, n, 16)
    for i in range(n):
        for j in range(n):
            assert torch.equal(rel[i, j], table[i - j + n - 1])


@pytest.mark.parametrize(("q", "k"), [(12, 12), (5, 5), (6, 10), (10, 6), (8, 8)])
def test_rel_pos_interpolation_matches_transformers(q: int, k: int) -> None:
    from transformers.models.sam.modeling_sam import SamVisionAttention

    table = torch.randn(15, 16)  # sized for a side of 8
    ours = get_rel_pos(q, k, table)
    assert ours.shape == (q, k, 16)
    theirs = SamVisionAttention.get_rel_pos(None, q, k, table)  # uses no instance state
    torch.testing.assert_close(ours, theirs)


# ---------------------------------------------------------------- parity with transformers


def _hf_sam_state_dict(sam: ImageEncoderViT, *, with_compressor: bool) -> dict[str, torch.Tensor]:
    """Our SAM keys -> transformers' SamVisionEncoder keys (DeepSeek-OCR-2's adds proj.conv1/conv2)."""
    renames = {
        "patch_embed.proj.": "patch_embed.projection.",
        "neck.0.": "neck.conv1.",
        "neck.1.": "neck.layer_norm1.",
        "neck.2.": "neck.conv2.",
        "neck.3.": "neck.layer_norm2.",
        "net_2.": "proj.conv1.",
        "net_3.": "proj.conv2.",
    }
    out = {}
    for key, value in sam.state_dict().items():
        if key.startswith(("net_2.", "net_3.")) and not with_compressor:
            continue
        new = (
            key.replace("blocks.", "layers.")
            .replace(".norm1.", ".layer_norm1.")
            .replace(".norm2.", ".layer_norm2.")
        )
        for old, rep in renames.items():
            if new.startswith(old):
                new = rep + new[len(old) :]
        out[new] = value
    return out


def _hf_sam_kwargs(cfg: SamConfig) -> dict:
    return dict(
        hidden_size=cfg.embed_dim,
        output_channels=cfg.out_chans,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        mlp_ratio=cfg.mlp_ratio,
        layer_norm_eps=cfg.eps,
        window_size=cfg.window_size,
        global_attn_indexes=list(cfg.global_attn_indexes),
        use_abs_pos=True,
        use_rel_pos=True,
        qkv_bias=True,
        hidden_act="gelu",
    )


def test_sam_body_and_neck_match_transformers_sam() -> None:
    from transformers import SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionEncoder

    ours = randomise(ImageEncoderViT(PARITY_SAM), seed=1)
    config = SamVisionConfig(**_hf_sam_kwargs(PARITY_SAM))
    config._attn_implementation = "eager"  # an independent attention path from ours (SDPA + bias)
    theirs = SamVisionEncoder(config).eval()
    theirs.load_state_dict(_hf_sam_state_dict(ours, with_compressor=False), strict=True)

    captured: dict[str, torch.Tensor] = {}
    ours.neck.register_forward_hook(lambda _m, _i, out: captured.__setitem__("neck", out))
    x = torch.randn(
        2, 3, PARITY_SAM.img_size, PARITY_SAM.img_size, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        final = ours(x)
        expected = theirs(pixel_values=x).last_hidden_state
    assert_close_scaled(captured["neck"], expected)
    with torch.no_grad():
        assert_close_scaled(final, ours.net_3(ours.net_2(expected)))


@pytest.mark.parametrize("side", [128, 96, 160, 192])
def test_sam_with_compressor_matches_transformers_deepseek_ocr2_at_any_side(side: int) -> None:
    """DeepSeek-OCR-2 kept v1's SAM + compressor, with the same position-grid and rel-pos resizing."""
    from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2SamVisionConfig
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2SamVisionEncoder

    ours = randomise(ImageEncoderViT(PARITY_SAM), seed=3)
    config = DeepseekOcr2SamVisionConfig(
        **_hf_sam_kwargs(PARITY_SAM), downsample_channels=[PARITY_SAM.net_2_chans, PARITY_SAM.net_3_chans]
    )
    config._attn_implementation = "eager"
    theirs = DeepseekOcr2SamVisionEncoder(config).eval()
    theirs.load_state_dict(_hf_sam_state_dict(ours, with_compressor=True), strict=True)

    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = ours(x)
        expected = theirs(pixel_values=x).last_hidden_state
    assert got.shape == (1, PARITY_SAM.net_3_chans, math.ceil(side / 64), math.ceil(side / 64))
    assert_close_scaled(got, expected)


def test_clip_transformer_matches_transformers_clip_encoder() -> None:
    from transformers import CLIPVisionConfig
    from transformers.models.clip.modeling_clip import CLIPEncoder

    ours = randomise(VisionTransformer(PARITY_CLIP), seed=5)
    config = CLIPVisionConfig(
        hidden_size=PARITY_CLIP.hidden_size,
        intermediate_size=PARITY_CLIP.intermediate_size,
        num_hidden_layers=PARITY_CLIP.num_layers,
        num_attention_heads=PARITY_CLIP.num_heads,
        image_size=PARITY_CLIP.image_size,
        patch_size=PARITY_CLIP.patch_size,
        hidden_act="quick_gelu",
        layer_norm_eps=PARITY_CLIP.eps,
    )
    config._attn_implementation = "eager"
    theirs = CLIPEncoder(config).eval()
    state = {}
    for key, value in ours.transformer.state_dict().items():
        if ".qkv_proj." in key:  # fused rows [q | k | v] -> three projections
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                state[key.replace("qkv_proj", name)] = part
        else:
            state[key] = value
    theirs.load_state_dict(state, strict=True)

    feats = torch.randn(2, PARITY_CLIP.hidden_size, 3, 5, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        inputs = ours.pre_layrnorm(ours.embeddings(feats))  # (B, 1 + 15, C)
        expected = theirs(inputs_embeds=inputs).last_hidden_state
        got = ours(feats)
    assert got.shape == (2, 16, PARITY_CLIP.hidden_size)
    assert_close_scaled(got, expected)


def test_clip_embeddings_prepend_cls_and_add_positions() -> None:
    clip = randomise(VisionTransformer(PARITY_CLIP), seed=7)
    emb = clip.embeddings
    feats = torch.randn(2, PARITY_CLIP.hidden_size, 2, 3)
    with torch.no_grad():
        out = emb(feats)
        pos = emb.positions(2, 3)
    torch.testing.assert_close(out[:, 0], (emb.class_embedding + pos[0]).expand(2, -1))
    torch.testing.assert_close(out[1, 1 + 1 * 3 + 2], feats[1, :, 1, 2] + pos[1 + 1 * 3 + 2])  # row 1, col 2


# ---------------------------------------------------------------- bfloat16


def test_bf16_forward_runs_and_tracks_fp32() -> None:
    cfg = OCRConfig.tiny()
    sam = randomise(ImageEncoderViT(cfg.sam), seed=8)
    clip = randomise(VisionTransformer(cfg.clip), seed=9)
    x = torch.randn(2, 3, 192, 192, generator=torch.Generator().manual_seed(10))  # resized positions
    with torch.no_grad():
        ref = clip(sam(x))
        sam.to(torch.bfloat16)
        clip.to(torch.bfloat16)
        feats = sam(x)  # float32 pixels are cast to the weights' dtype
        out = clip(feats)
    assert feats.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    rel_err = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel_err < 0.05, rel_err


def test_layer_norm_eps_follow_config() -> None:
    sam_cfg = SamConfig(img_size=64, embed_dim=16, depth=2, num_heads=2, window_size=2, eps=1e-3)
    clip_cfg = ClipConfig(
        hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, image_size=28, eps=1e-4
    )
    sam_eps = {m.eps for m in ImageEncoderViT(sam_cfg).modules() if hasattr(m, "eps")}
    clip_eps = {m.eps for m in VisionTransformer(clip_cfg).modules() if isinstance(m, nn.LayerNorm)}
    assert sam_eps == {1e-3}
    assert clip_eps == {1e-4}
