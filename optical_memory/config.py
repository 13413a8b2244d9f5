"""Configuration: frozen, keyword-only dataclasses holding the real defaults.

``StoreConfig.tiny()`` is the preset the tests use (small pages, short ladder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import InvalidInput
from .validation import shown

#: DeepEncoder (DeepSeek-OCR) turns a side x side page into (side/16)^2 patches and then compresses them
#: 16x with two stride-2 convolutions: 1024 -> 256 vision tokens, 640 -> 100, 512 -> 64.
PATCH = 16
CONV_COMPRESSION = 16


def vision_tokens(side: int) -> int:
    """DeepEncoder's vision-token cost of a square page of ``side`` pixels (1024 -> 256, 640 -> 100)."""
    if side <= 0:
        raise InvalidInput(f"page side must be positive, got {side!r}")
    return math.ceil((side / PATCH) ** 2 / CONV_COMPRESSION)


# build_context(recent_share="auto"): the newest turns that always go in, the conversation's last two
# exchanges (what "it", "that" and "the second one" point at), within AUTO_RECENT_SHARE of the budget; older
# turns of the text tier go in only as hits for the question, ranked with the paged memories for k places.
RECENT_TURNS = 4
AUTO_RECENT_SHARE = 0.5


def recent_rule(recent_share: object) -> tuple[float, int | None]:
    """A ``recent_share`` option as (the recent turns' share of the budget, the most of them; None: no
    limit): "auto" or a number within [0, 1]; anything else raises ``InvalidInput`` naming it."""
    if recent_share == "auto":
        return AUTO_RECENT_SHARE, RECENT_TURNS
    if (
        not isinstance(recent_share, (int, float))
        or isinstance(recent_share, bool)
        or not 0.0 <= recent_share <= 1.0
    ):
        raise InvalidInput(
            f"recent_share must be 'auto' or a number within [0, 1], got {shown(recent_share)}"
        )
    return float(recent_share), None


@dataclass(frozen=True, kw_only=True)
class RenderConfig:
    """How text becomes a page image. Sizes are in pixels of the full-resolution page."""

    page_side: int = 1024
    # Hinted 15 px DejaVu Sans Mono is 9 px wide: 108 columns x 51 lines on a 1024 px page, which holds
    # ~1,000 cl100k tokens of English chat: Base-tier compression ~4x, Small ~10x, Tiny ~15x.
    # (The glyphs are 18 px tall: a line height under 19 would clip descenders.)
    font_size: int = 15
    line_height: int = 19
    margin: int = 24
    font_path: str | None = None  # None: DejaVu Sans Mono from matplotlib's bundled fonts
    fallback_font_paths: tuple[str, ...] = ()  # tried in order, before DejaVu Sans and the Noto chain
    tab_size: int = 4
    speaker_labels: bool = True  # prefix each turn's first line with "role: "

    def __post_init__(self) -> None:
        for name in ("page_side", "font_size", "line_height", "tab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InvalidInput(f"RenderConfig.{name} must be a positive int, got {value!r}")
        if self.margin < 0 or 2 * self.margin + self.line_height > self.page_side:
            raise InvalidInput(
                f"RenderConfig.margin {self.margin!r} leaves no room on a {self.page_side}px page"
            )

    @property
    def lines_per_page(self) -> int:
        return (self.page_side - 2 * self.margin) // self.line_height


@dataclass(frozen=True, kw_only=True)
class Tier:
    """One rung of the forgetting ladder: pages are kept at ``side`` pixels while they are within
    ``max_turns`` turns of the newest turn of their scope and ``max_age_s`` seconds old (None: no limit).
    """

    side: int
    max_turns: int | None = None
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.side, int) or self.side < 32:
            raise InvalidInput(f"Tier.side must be an int >= 32, got {self.side!r}")
        if self.max_turns is not None and self.max_turns < 0:
            raise InvalidInput(f"Tier.max_turns must be >= 0 or None, got {self.max_turns!r}")
        if self.max_age_s is not None and self.max_age_s < 0:
            raise InvalidInput(f"Tier.max_age_s must be >= 0 or None, got {self.max_age_s!r}")

    @property
    def name(self) -> str:
        return str(self.side)

    @property
    def vision_tokens(self) -> int:
        return vision_tokens(self.side)

    def holds(self, *, turns: int, age_s: float) -> bool:
        return (self.max_turns is None or turns <= self.max_turns) and (
            self.max_age_s is None or age_s <= self.max_age_s
        )


def _default_ladder() -> tuple[Tier, ...]:
    # Each rung holds 4x the turns of the one before: an agent's last ~64 turns stay sharp, its last
    # thousand readable at 512px (RapidOCR CER ~0.05%), and only histories beyond ~16k turns (~1.6M text
    # tokens) are forgotten. With RapidOCR, 1024/640/512 read back near-perfectly, 384 with a few
    # errors a page, 256 barely.
    return (
        Tier(side=1024, max_turns=64),
        Tier(side=640, max_turns=256),
        Tier(side=512, max_turns=1024),
        Tier(side=384, max_turns=4096),
        Tier(side=256, max_turns=16384),
    )


@dataclass(frozen=True, kw_only=True)
class AgingPolicy:
    """The forgetting curve: text (the newest ``text_turns`` turns) -> each tier in order -> forgotten.

    A page only ever moves down the ladder; ``forget=False`` keeps pages at the last tier forever.
    """

    text_turns: int = 16
    tiers: tuple[Tier, ...] = field(default_factory=_default_ladder)
    forget: bool = True

    def __post_init__(self) -> None:
        if self.text_turns < 0:
            raise InvalidInput(f"AgingPolicy.text_turns must be >= 0, got {self.text_turns!r}")
        if not self.tiers:
            raise InvalidInput("AgingPolicy.tiers must name at least one tier")
        sides = [t.side for t in self.tiers]
        if sides != sorted(sides, reverse=True) or len(set(sides)) != len(sides):
            raise InvalidInput(f"AgingPolicy.tiers must have strictly falling sides, got {sides!r}")

    def tier_index(self, *, turns: int, age_s: float) -> int | None:
        """Index of the tier a page of this turn distance and age belongs to; None means forgotten."""
        for i, tier in enumerate(self.tiers):
            if tier.holds(turns=turns, age_s=age_s):
                return i
        return None if self.forget else len(self.tiers) - 1

    def ttl_tier_index(self, *, elapsed_s: float, ttl_s: float) -> int | None:
        """Index of the tier a page of a memory with a time to live belongs to, ``elapsed_s`` into its
        ``ttl_s``; None means forgotten.

        The lifetime is cut into ``n + 1`` equal slices for ``n`` tiers: tier ``i`` is held while
        ``elapsed_s <= ttl_s * (i + 1) / (n + 1)``, and the last slice is forgotten (with ``forget=False``,
        kept at the last tier). At ``ttl_s`` the memory expires and ``age`` deletes it. With the default
        five tiers and a ttl of an hour: 1024px for the first 10 minutes, 640px until 20, ... 256px until
        50, forgotten until 60, then gone.
        """
        n = len(self.tiers)
        for i in range(n):
            if elapsed_s <= ttl_s * (i + 1) / (n + 1):
                return i
        return None if self.forget else n - 1


#: How a search can rank (``StoreConfig.retrieval``, ``search(mode=...)``).
RETRIEVAL_MODES = ("hybrid", "dense", "lexical")

#: Models a store can use as its reader and encoder (``StoreConfig.model``).
MODELS = ("deepseek-ocr", "optical-mini")


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """Everything ``optical_memory.open(path, **options)`` accepts besides backend objects."""

    render: RenderConfig = field(default_factory=RenderConfig)
    aging: AgingPolicy = field(default_factory=AgingPolicy)
    # False is true optical memory: once a turn is rendered only its hash, gist vector and page survive.
    retain_text: bool = False
    database_url: str | None = None  # None: SQLite file inside the store folder
    embedder: str = "minilm"
    reader: str | None = None  # None: the model's reader when a model is configured, else "rapidocr"
    # model="deepseek-ocr" reads pages back through DeepSeek-OCR's MoE decoder and keeps their vision tokens;
    # model_dir is the checkpoint folder (None: $OPTICAL_MEMORY_MODEL_DIR); nothing is ever downloaded.
    # model="optical-mini" does the same with the small model of that architecture that ships in this
    # package (model_dir None: the shipped weights), on any CPU.
    model: str | None = None
    model_dir: str | None = None
    encoder: str | None = None  # None: the model's encoder when a model is configured, else no vision tokens
    # reader="vllm-server": the OpenAI-compatible ``vllm serve`` endpoint; the served model's name is
    # model_dir when given (``vllm serve <folder>`` serves it under that name), else the hub id.
    model_url: str | None = None
    model_device: str = "cpu"
    # None: the model's own default: bfloat16 for DeepSeek-OCR (float32 on a CPU without native bfloat16,
    # AVX2 only, where bfloat16 matmuls run ~20x slower: optical_memory.hardware), float32 for optical-mini
    # (its small matmuls decode 1.6x slower in bfloat16 on this project's CPU: 4.32 vs 2.63 ms a token,
    # benchmarks/bench_mini.py)
    model_dtype: str | None = None
    # Gist embeddings are taken over chunks of this many words (MiniLM truncates at 256 word pieces).
    chunk_words: int = 160
    # "chunks": one vector per chunk_words words of a memory. "sentences": one per sentence (longer ones
    # split at chunk_words), so a fact stated in a long turn is not averaged with the rest of it. A memory
    # scores its best vector either way. Sentences found planted facts that chunks missed (README,
    # Benchmarks) at the price of more vectors. Applies to memories added from then on.
    gist: str = "chunks"
    # How search ranks (RETRIEVAL_MODES): "hybrid" scores each chunk on its gist vector's cosine and its
    # lexical BM25 together; "dense" and "lexical" use one of them. search(mode=...) overrides it.
    retrieval: str = "hybrid"

    def __post_init__(self) -> None:
        for name in ("embedder", "reader", "encoder"):  # names here; objects go to optical_memory.open
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(
                    f"StoreConfig.{name} is a backend name, got a {type(value).__name__}: pass the object "
                    f"to optical_memory.open(path, {name}=...) instead"
                )
        if self.render.page_side != self.aging.tiers[0].side:
            raise InvalidInput(
                f"the first aging tier ({self.aging.tiers[0].side}px) must equal the page side "
                f"({self.render.page_side}px): pages are rendered at the top tier"
            )
        if self.chunk_words < 8:
            raise InvalidInput(f"chunk_words must be >= 8, got {self.chunk_words!r}")
        if self.gist not in ("chunks", "sentences"):
            raise InvalidInput(f"gist must be 'chunks' or 'sentences', got {self.gist!r}")
        if self.retrieval not in RETRIEVAL_MODES:
            known = ", ".join(map(repr, RETRIEVAL_MODES))
            raise InvalidInput(f"retrieval must be one of {known}, got {self.retrieval!r}")
        if self.model not in (None, *MODELS):
            raise InvalidInput(
                f"unknown model {self.model!r}; known: {', '.join(map(repr, MODELS))} (or None for none)"
            )
        if self.reader == "vllm-server" and not self.model_url:
            raise InvalidInput(
                "reader='vllm-server' needs model_url='http://<host>:<port>' (the vllm serve endpoint)"
            )
        if self.model_dtype not in (None, "bfloat16", "float16", "float32"):
            raise InvalidInput(
                f"model_dtype must be 'bfloat16', 'float16' or 'float32', got {self.model_dtype!r}"
            )

    @property
    def reader_name(self) -> str:
        """The reader backend in effect: ``reader`` if named, else the model's when one is configured."""
        if self.reader is not None:
            return self.reader
        return self.model or "rapidocr"

    @property
    def encoder_name(self) -> str | None:
        """The vision-token encoder in effect: ``encoder`` if named, else the model's, else none."""
        if self.encoder is not None:
            return self.encoder
        return self.model

    @classmethod
    def tiny(cls, **overrides: object) -> StoreConfig:
        """Small pages and a short ladder, for tests: 256px pages, text -> 256 -> 128 -> 64 -> forgotten."""
        options: dict[str, object] = {
            "render": RenderConfig(page_side=256, font_size=12, line_height=15, margin=8),
            "aging": AgingPolicy(
                text_turns=2,
                tiers=(Tier(side=256, max_turns=4), Tier(side=128, max_turns=8), Tier(side=64, max_turns=16)),
            ),
        }
        options.update(overrides)
        return cls(**options)  # type: ignore[arg-type]
