"""Plain value types returned by the public API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: A memory's tier: "text" (recent turn, kept verbatim), a page side in pixels ("1024", "640", ...),
#: or "forgotten" (image dropped; the row, gist vector and metadata remain).
TierName = str
Kind = Literal["turn", "document"]


@dataclass(frozen=True)
class TextLine:
    """One line a reader found. ``box`` is (x0, y0, x1, y1) in pixels of the image it was given."""

    text: str
    box: tuple[float, float, float, float] | None = None
    score: float = 1.0


@dataclass(frozen=True)
class Hit:
    """A search result: the memory ``id``, its ``score`` (cosine, BM25 or fused: see ``search``'s ``mode``),
    the page holding its best chunk (None while the memory is still in the text tier) and its current tier."""

    id: int
    score: float
    tier: TierName
    page_id: int | None
    scope: str
    kind: Kind
    role: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # text tokens on the hit's page over the page's DeepEncoder vision tokens at its tier (None: no page)
    compression: float | None = None


@dataclass(frozen=True)
class MemoryInfo:
    """A memory as ``memories()`` lists it, without its text (``recall`` reads that): its ``created_at``
    timestamp (epoch seconds), current tier, metadata, and ``expires_at`` (epoch seconds; None: never)."""

    id: int
    scope: str
    kind: Kind
    role: str | None
    created_at: float
    tier: TierName
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None


@dataclass(frozen=True)
class PagePlace:
    """Where a memory is on one of its pages: the page's ``page_id`` and current ``tier``, and the band of
    the page its lines take, ``top`` and ``bottom`` as shares of the page's height (0.0 to 1.0; both None
    on a scan, a PDF page or an image, which have no line grid)."""

    page_id: int
    tier: TierName
    top: float | None
    bottom: float | None


@dataclass(frozen=True)
class Recall:
    """A memory read back as text. ``source`` is "retained" (verbatim text from the store) or the name of
    the reader that read the page images at their current tier."""

    id: int
    text: str
    tier: TierName
    source: str
    role: str | None = None


@dataclass(frozen=True)
class ContextItem:
    """One memory placed in a context: its recalled text or image part and what it cost."""

    id: int
    origin: Literal["recent", "retrieved"]
    tier: TierName
    tokens: int  # what it costs in the context (text tokens, or vision tokens for an image)
    text_tokens: int  # what the same content costs as text (a whole page's text for an image part)
    score: float | None = None


@dataclass(frozen=True)
class Context:
    """What ``build_context`` returns.

    ``parts`` are chat content parts in the OpenAI/LangChain shape: ``{"type": "text", "text": ...}`` and,
    in image mode, ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``.
    ``text`` joins the text parts. ``used_tokens`` is what the parts cost (images in ``target``'s image
    tokens, DeepEncoder's vision tokens by default; text in the tokens ``text_counter`` names: the store's
    counter, cl100k_base unless ``counter=`` gave another, whatever the target, as no other provider's
    tokenizer ships offline); ``saved_tokens`` is what
    the same content would have cost as text (for an image, the text of the lines it shows, in proportion
    to its page's), minus ``used_tokens``.

    In vision mode the parts are ``{"type": "vision", "page_id": ..., "positions": ...}`` and text parts,
    and ``inputs_embeds`` (1, T, hidden) with ``attention_mask`` (1, T) are the DeepSeek decoder's input,
    T == ``used_tokens`` exactly (BOS, text in the decoder's own tokens, and each page's vision tokens).

    ``damaged`` lists the pages a hit was on that were left out because their image is missing or corrupt
    (in every mode: neither their pixels, their cached read nor their vision tokens are served until
    ``verify(repair=True)`` heals them). A memory whose text is retained is still recalled in text mode.
    """

    mode: str
    parts: list[dict[str, Any]]
    items: list[ContextItem]
    budget_tokens: int
    used_tokens: int
    saved_tokens: int
    inputs_embeds: Any = None
    attention_mask: Any = None
    damaged: list[int] = field(default_factory=list)  # page ids left out: image missing or corrupt
    target: str | None = None  # image mode: whose pricing ``used_tokens`` counts the images in
    text_counter: str | None = None  # whose tokens the text parts count in ("decoder": vision mode's own)

    @property
    def text(self) -> str:
        return "\n".join(p["text"] for p in self.parts if p.get("type") == "text")


@dataclass(frozen=True)
class TierStats:
    tier: TierName
    memories: int
    pages: int
    text_tokens: int
    vision_tokens: int  # DeepEncoder cost of the pages at this tier (0 for text and forgotten)
    compression: float | None  # text_tokens / vision_tokens
    bytes: int  # blob bytes on disk (text bytes for the text tier)


@dataclass(frozen=True)
class Stats:
    memories: int
    pages: int
    scopes: int
    text_tokens: int
    vision_tokens: int
    bytes_on_disk: int
    tiers: list[TierStats]


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found (and, with ``repair=True``, what it did)."""

    pages_checked: int
    missing_blobs: list[int] = field(default_factory=list)  # page ids
    corrupt_blobs: list[int] = field(default_factory=list)  # page ids
    orphan_blobs: list[str] = field(default_factory=list)  # blob file names with no row
    damaged_vision: list[int] = field(default_factory=list)  # page ids whose vision-token blob is bad
    lexical_orphans: int = 0  # lexical index rows whose gist vector is gone (removed by repair)
    rerendered: list[int] = field(default_factory=list)  # page ids re-drawn from what is still known
    from_cache: list[int] = field(default_factory=list)  # of those, drawn from their tier's cached read
    marked_lost: list[int] = field(default_factory=list)  # page ids that could not be healed
    index_rebuilt: bool = False
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not (
            self.missing_blobs
            or self.corrupt_blobs
            or self.orphan_blobs
            or self.damaged_vision
            or self.lexical_orphans
        )
