"""DeepSeek-OCR (v1) configuration: frozen, keyword-only dataclasses holding the official values.

Values follow the released ``config.json`` of ``deepseek-ai/DeepSeek-OCR`` and the DeepEncoder builders
(``build_sam_vit_b``, ``build_clip_l``); ``OCRConfig.tiny()`` keeps every structural feature (windowed and
global SAM blocks, a dense first decoder layer then MoE layers, shared experts) at small sizes for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class SamConfig:
    """SAM-ViT-B image encoder plus DeepEncoder's neck and 16x convolutional compressor."""

    img_size: int = 1024  # sizes the absolute pos-embed (64 x 64) and global rel-pos tables only
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    out_chans: int = 256  # neck width
    net_2_chans: int = 512  # first stride-2 conv of the compressor
    net_3_chans: int = 1024  # second; equals the CLIP width, since CLIP takes these as patch embeddings
    eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    """CLIP-L/14 vision transformer, fed SAM features instead of its own patch embeddings."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 224  # sizes the position table: (224/14)^2 + 1 = 257 rows
    patch_size: int = 14  # the patch conv is in the checkpoint but unused
    eps: float = 1e-5

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """DeepSeek-3B-MoE (DeepseekV2 without MLA): 12 layers, layer 0 dense, layers 1-11 MoE."""

    vocab_size: int = 129280  # the tokenizer defines ids 0..128826; the rest are padding rows
    hidden_size: int = 1280
    num_layers: int = 12
    num_heads: int = 10  # plain multi-head attention (use_mla false), no GQA
    head_dim: int = 128
    intermediate_size: int = 6848  # the dense MLP of the first layer(s)
    first_k_dense_replace: int = 1
    moe_intermediate_size: int = 896
    n_routed_experts: int = 64
    num_experts_per_tok: int = 6
    n_shared_experts: int = 2  # one MLP of width n_shared_experts * moe_intermediate_size (1792)
    norm_topk_prob: bool = False  # the top-6 softmax weights are used as they are, not renormalised
    routed_scaling_factor: float = 1.0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 2
    image_token_id: int = 128815

    @property
    def shared_intermediate_size(self) -> int:
        return self.n_shared_experts * self.moe_intermediate_size


@dataclass(frozen=True, kw_only=True)
class OCRConfig:
    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self) -> None:
        if self.sam.net_3_chans != self.clip.hidden_size:
            raise ValueError(
                f"CLIP takes SAM's compressed features as patch embeddings: sam.net_3_chans "
                f"({self.sam.net_3_chans}) must equal clip.hidden_size ({self.clip.hidden_size})"
            )

    @property
    def projector_input_dim(self) -> int:
        return self.clip.hidden_size + self.sam.net_3_chans  # CLIP features first, then SAM: 2048

    @classmethod
    def tiny(cls) -> OCRConfig:
        """Same structure at toy sizes, for tests: random checkpoints of a few MB, CPU forward in ms."""
        return cls(
            sam=SamConfig(
                img_size=128,
                embed_dim=32,
                depth=4,
                num_heads=2,
                window_size=3,  # 128 px -> 8 x 8 patches: windows pad to 9 x 9
                global_attn_indexes=(1, 3),
                out_chans=16,
                net_2_chans=24,
                net_3_chans=48,
            ),
            clip=ClipConfig(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, image_size=56),
            decoder=DecoderConfig(
                vocab_size=320,
                hidden_size=64,
                num_layers=3,
                num_heads=4,
                head_dim=16,
                intermediate_size=160,
                moe_intermediate_size=32,
                n_routed_experts=8,
                num_experts_per_tok=3,
                max_position_embeddings=1024,
                image_token_id=300,
            ),
        )

    @classmethod
    def mini(cls, *, vocab_size: int = 4096, image_token_id: int = 3) -> OCRConfig:
        """The optical-mini model this project trains and ships (``optical_memory.training``): DeepEncoder's
        structure (windowed SAM blocks with one global block, neck, the 16x compressor, a CLIP transformer,
        the linear projector) and a DeepSeek MoE decoder (a dense first layer, then routed plus shared
        experts), at sizes a CPU trains in hours and reads a page with in about a second. Every vision
        token still covers 64 x 64 pixels, so the ladder's token counts (256/100/64/36/16) are unchanged."""
        return cls(
            sam=SamConfig(
                embed_dim=96,
                depth=4,
                num_heads=4,
                global_attn_indexes=(
                    3,
                ),  # one global block: attention over 4,096 patches is the cost at 1024 px
                out_chans=96,
                net_2_chans=192,
                net_3_chans=256,
            ),
            clip=ClipConfig(hidden_size=256, num_layers=2, num_heads=4, intermediate_size=768),
            decoder=DecoderConfig(
                vocab_size=vocab_size,  # a byte-level BPE trained on the training prose (see training.py)
                hidden_size=256,
                num_layers=4,
                num_heads=4,
                head_dim=64,
                intermediate_size=768,
                moe_intermediate_size=256,
                n_routed_experts=8,
                num_experts_per_tok=2,
                n_shared_experts=1,
                max_position_embeddings=4096,
                image_token_id=image_token_id,  # the tokenizer puts its special tokens first
            ),
        )
