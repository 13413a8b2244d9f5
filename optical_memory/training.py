"""Train optical-mini, the small optical compressor this project ships: one command, seeded, resumable.

    python -m optical_memory.training                  # train (or resume) in build/optical-mini, then export
    python -m optical_memory.training --minutes 10     # one ~10 minute run that checkpoints; run it again

Model. ``OCRConfig.mini()``: DeepEncoder's structure (windowed SAM blocks and a global one, neck, the 16x
convolutional compressor, a CLIP transformer, the projector, the newline and view-separator embeddings) and
a DeepSeek MoE decoder, at 12M parameters. It is trained end to end from random weights.

Data, generated on the fly by the store's own ``Renderer``, never stored:

* prose: the docstrings of two packages this project installs, NumPy (BSD-3-Clause) and SQLAlchemy (MIT),
  read from their source files with ``ast`` (nothing is imported), prose paragraphs only (the filter of
  ``experiments``: no headings, no indented code or tables, ASCII, at least 8 words);
* synthetic conversations: user and assistant turns (with the store's speaker labels) built from those
  sentences and from templates filled with random names, numbers, dates and identifiers.

Held out: ``experiments.forgetting`` measures the model on the Python Language Reference topics
(``pydoc_data``, PSF License), a different source; any training paragraph that also occurs there is
dropped. Every sample is a page at one side of the forgetting ladder (1024, 640, 512, 384, 256 px), shrunk
by the same Lanczos chain as the store's aging, so one model serves every tier. A curriculum grows the
text on a page from one line to a full page over the first 70% of training.

Tokenizer: a byte-level BPE of 4,096 ids trained here on the training text (special tokens first, so
``<image>`` is id 3). cl100k_base would cost 100k x 256 x 2 embedding rows, 51 MB in bfloat16, more than the
whole model may weigh; bytes alone would make a page ~4x longer to generate. Trained on the training
prose only, so it has seen no held-out text.

Runs. Everything is seeded: sample ``i`` of the stream is drawn from ``Random(seed, i)``, so a resumed run
sees exactly the data an uninterrupted one would. A run ends at ``--minutes`` or at ``--steps`` and leaves
``state.pt`` (weights, optimiser, step) in the run folder; the next run resumes from it. ``log.jsonl``
records every step (loss, learning rate, side, lines, tokens, seconds) and, at each evaluation, the
collapse instruments per side (``evaluate_pages``: held-out loss with the real page and with a blank one,
the vision tokens' RMS, greedy precision); a run whose gap stays ~0 or whose vision tokens run away logs
a warning (``collapse_alarms``). ``--char-loss W`` adds the auxiliary character loss: a training-only head
(never exported, so the checkpoint keeps the official layout) reads from each vision token the characters
under a grid of points in its cell, where the renderer drew them (``char_targets``). ``run.json`` holds
the hardware and versions. ``export`` writes the official checkpoint layout (config.json, safetensors,
tokenizer) that ``model.from_pretrained`` loads strictly.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import random
import re
import string
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .config import AgingPolicy, RenderConfig
from .experiments import _prose_paragraphs, char_precision, shrink_chain
from .hardware import cpu_name
from .model import DEFAULT_PROMPT, DeepseekOCR, GenerationConfig, OCRConfig
from .model.decoder import Attention, apply_rope
from .model.generation import left_pad
from .model.loading import config_to_json
from .model.preprocess import PIXELS_PER_TOKEN, get_mode, grid_tokens, prepare
from .model.testing import BOS, EOS, EXTRA_SPECIALS, PAD, write_tokenizer_config
from .render import Line, Renderer

log = logging.getLogger(__name__)

TRAIN_PACKAGES = ("numpy", "sqlalchemy")
TRAIN_SOURCE = "docstrings of NumPy and SQLAlchemy (the installed versions), prose paragraphs only"
TRAIN_LICENCE = "NumPy: BSD-3-Clause; SQLAlchemy: MIT"
SPECIALS = (BOS, EOS, PAD, "<image>", *EXTRA_SPECIALS)  # ids 0, 1, 2, 3, ...
VOCAB_SIZE = 4096
CHAR_VOCAB = len(SPECIALS) + 256  # a byte-level BPE this size learns no merges: one id a byte
LADDER = tuple(t.side for t in AgingPolicy().tiers)  # 1024, 640, 512, 384, 256
# How often each side is drawn, and pages per batch there (a batch is one side: DeepEncoder takes one size).
# The legible rungs are drawn most: reading is learnt there first, and carries down the ladder.
SIDE_WEIGHTS = {1024: 0.3, 640: 0.3, 512: 0.2, 384: 0.12, 256: 0.08}
BATCH = {1024: 2, 640: 3, 512: 4, 384: 4, 256: 4}  # times TrainConfig.batch_scale
# Crops: small pages drawn at the full page's density (the 1024 px page's glyphs, 9 px wide), a few vision
# tokens each, so that reading in order is learnt on 16-36 tokens before a page of 256. A crop batch is one
# side; it holds CROP_BATCH[side] pages (times batch_scale): 0.5-1.2 million pixels, against 2.1 for a 1024 px
# batch. The larger crops (64-144 tokens) carry that order to grids nearer a full page's 16 x 16
# (TrainConfig.crop_sides).
CROP_BATCH = {256: 8, 384: 6, 512: 4, 640: 3, 768: 2}
CROP_SIDES = tuple(CROP_BATCH)
CROP_MARGIN = 8

# Collapse alarms. The first optical-mini's encoder collapsed: its held-out loss with the real page equalled
# the loss with a blank page to 4 decimals, and its vision tokens grew to ~10^5 times the text embeddings'
# RMS (the decoder RMS-normalises every position, so the loss never pushed back on their scale).
LEGIBLE = (1024, 640)  # the sides where a reading model must gain from the image first
COLLAPSE_GAP_NATS = 0.05  # blank-page loss minus real-page loss below this at every legible side: not reading
RUNAWAY_RMS = 1000.0  # vision-token RMS over text-embedding RMS above this: runaway (~16 at initialisation)
GREEDY_PAGES = 1  # held-out pages per side read greedily at each evaluation
# The auxiliary character loss: a training-only head reads, from each vision token alone, the character
# under each point of a CHAR_GRID x CHAR_GRID grid over the token's 64 px cell (positions from the renderer's
# geometry). It makes the encoder's output carry the page, which the decoder's loss alone did not force.
# Its points are 16 px apart: closer than a line is tall (19 px) but not than a character is wide (9 px), so
# at the cells' centres a 1024 px page's grid never lands on 43% of its character columns (2, 4, 6, 9, ...).
# TrainConfig.char_columns = COMPLETE_COLUMNS puts them 8 px apart across, on every character of a page.
CHAR_GRID = 4
COMPLETE_COLUMNS = 8
CHAR_CLASSES = 96  # 0: none on a line (a space, the margin, past its end); 1-94: ASCII 33-126; 95: any other
# DeepEncoder's parameters (SAM, CLIP, projector, the newline and view-separator embeddings), by name
ENCODER_PREFIXES = (
    "model.sam_model.",
    "model.vision_model.",
    "model.projector.",
    "model.image_newline",
    "model.view_seperator",
)

# The settings that decide which model and training heads a run builds: a run carried on under new settings
# (``Trainer(new_settings=True)``) must keep them. For the loss weights that switch a head on
# (LOSS_SWITCHES) only whether they are on counts.
LOSS_SWITCHES = ("char_loss", "neck_char_loss", "guide_slot")
BUILT_SETTINGS = ("windowed_sam", "char_query", "char_hidden", "char_columns", *LOSS_SWITCHES)


def _built(name: str, value: Any) -> Any:
    return value > 0 if name in LOSS_SWITCHES else value


# The attention guide (TrainConfig.guide_attention): heads of the decoder's last layer but one (the first
# TrainConfig.guide_heads of them) are taught, from each position that predicts a text token, to look at
# the vision token that holds that token's first character (positions from the renderer), so that where to
# read is given, not searched for.
GUIDE_HEAD = 0
# The slot guide (TrainConfig.guide_slot): the guided layer's output, at each position that predicts a text
# token, names the point of the character grid (CHAR_GRID rows x COMPLETE_COLUMNS, the points the encoder's
# character head reads) under that token's first character, inside the cell the guide points the head at:
# which cell says where to look, the slot what to read there.
GUIDE_SLOTS = CHAR_GRID * COMPLETE_COLUMNS


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    seed: int = 0
    steps: int = 3500  # the schedule's length: warmup, then cosine decay to 10% at `steps`
    lr: float = 1e-3
    warmup: int = 150
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    # Pages grow from `min_lines` lines to full over this share of `steps`, quadratically: a long start on
    # pages of a line or two, where the first text token always sits on the first row of vision tokens
    # and reading in order can be learnt before long pages are.
    curriculum: float = 0.7
    min_lines: int = 1  # the most lines a page holds at step 0
    # The share of pages that hold all the lines the curriculum allows; the rest hold 1 to that many,
    # evenly. Drawn evenly, a page's last rows are in few pages: row 45 of 51 is in one page in seven.
    full_share: float = 0.0
    batch_scale: int = 1  # pages per batch = BATCH[side] * batch_scale (raise it on a GPU)
    conversation_share: float = 0.35
    eval_every: int = 250
    eval_greedy_pages: int = GREEDY_PAGES  # held-out pages per side each evaluation reads greedily
    checkpoint_minutes: float = 5.0
    # The encoder's (SAM, CLIP, projector, newline and separator) learning rate as a share of `lr`: the
    # collapsed mini trained it at the decoder's 1e-3; a 10x lower one avoided the collapse in crop runs.
    encoder_lr_scale: float = 1.0
    # The ladder sides pages are drawn at, with SIDE_WEIGHTS renormalised over them: (1024, 640) trains on
    # legible pages only, where glyphs are at least 6 px wide, until the model reads.
    sides: tuple[int, ...] = LADDER
    # The auxiliary character loss's weight beside the decoder's loss (0: off). In crop runs it kept the
    # image alive where the decoder's loss alone collapsed the encoder within 100 steps.
    char_loss: float = 0.0
    # A new model's SAM without its global-attention block (windowed blocks only; CLIP still attends over
    # the whole page): on a CPU that block was 60% of a 1024 px step (benchmarks/profile_train.py).
    windowed_sam: bool = False
    # The share of prose pages whose words are shuffled (half) or replaced by random strings (half): text
    # the language prior cannot guess, so that the loss falls only by reading the page.
    scramble_share: float = 0.0
    # The share of batches that are crops (at full density) instead of pages at `sides`, and their sides.
    crop_share: float = 0.0
    crop_sides: tuple[int, ...] = (256, 384)
    # The character head told where its points are (the jittered grid's offset), so that every target is
    # the one character under a known point; without it the head guesses among the few a jittered point
    # may land on, and its loss has a floor well above 0 (CharHead).
    char_query: bool = False
    # The decoder's loss's weight (0: the encoder is pretrained on the character loss alone, and the decoder
    # is not run: DeepSeek-OCR's own first stage trained DeepEncoder before the decoder read from it).
    decoder_loss: float = 1.0
    # Deep supervision: the character loss also read from the SAM neck's features (each vision token's 4 x 4
    # patches, before the 16x compressor), with this weight relative to `char_loss`. In a probe on fresh
    # 256 px crops (800 steps, one thread) held-out accuracy on characters other than spaces reached 75% from
    # the neck's features, 35% from the projected tokens alone and 50% from them with this head beside.
    neck_char_loss: float = 0.0
    # Jitter the character grid in training (below 1024 px its points are further apart than a line is
    # tall, so without jitter some lines are never scored). At the full page's density (1024 px pages and
    # crops) the grid at the cells' centres scores every line: in the probe above a blind head there learnt
    # 30% of the characters by step 500, a told head on a jittered grid 7%.
    char_jitter: bool = True
    # The character head's hidden width (0: a linear map from each vision token). The decoder reads the
    # tokens through attention and MLPs, not a linear map, so a head with one hidden layer asks of the
    # encoder what the decoder will, rather than that every character be linearly separable in 256 dims.
    char_hidden: int = 0
    # Points across each token's cell in the character grid (CHAR_GRID rows of them): CHAR_GRID scores
    # 57% of a 1024 px page's character columns, COMPLETE_COLUMNS all of them.
    char_columns: int = CHAR_GRID
    # The encoder (ENCODER_PREFIXES) frozen: run without gradients, its weights as they start (from
    # ``init_from``). DeepSeek-OCR's second stage trained its decoder on a frozen encoder; here it is the
    # stage after the encoder is pretrained on the character loss, and the step costs no encoder backward.
    freeze_encoder: bool = False
    # The attention guide's weight beside the decoder's loss (0: off; GUIDE_HEAD). A training-only loss on
    # one head's attention: the exported checkpoint's layout and the model's computation are unchanged.
    guide_attention: float = 0.0
    # How many heads the guide teaches (heads GUIDE_HEAD, GUIDE_HEAD + 1, ...; each head's value map sees
    # a quarter of a vision token's width in the mini, so one guided head passes on a quarter of the cell).
    guide_heads: int = 1
    # The slot guide's weight beside the decoder's loss (0: off; GUIDE_SLOTS): a training-only linear head
    # on the guided layer's output, never exported.
    guide_slot: float = 0.0

    def __post_init__(self) -> None:
        if not self.sides or any(side not in LADDER for side in self.sides):
            raise ValueError(f"sides must be a non-empty subset of the ladder {LADDER}, got {self.sides}")
        if not self.encoder_lr_scale > 0:
            raise ValueError(f"encoder_lr_scale must be positive, got {self.encoder_lr_scale}")
        if not self.char_loss >= 0:
            raise ValueError(f"char_loss must be >= 0, got {self.char_loss}")
        if not self.decoder_loss >= 0 or not (self.decoder_loss > 0 or self.char_loss > 0):
            raise ValueError(
                f"decoder_loss must be >= 0 and it or char_loss positive, got {self.decoder_loss} and "
                f"{self.char_loss}"
            )
        if not self.neck_char_loss >= 0 or (self.neck_char_loss > 0 and not self.char_loss > 0):
            raise ValueError(
                f"neck_char_loss must be >= 0, and it needs char_loss > 0, got {self.neck_char_loss} and "
                f"{self.char_loss}"
            )
        if not self.char_hidden >= 0 or (self.char_hidden and self.char_query):
            raise ValueError(
                f"char_hidden must be >= 0, and it does not combine with char_query, got {self.char_hidden}"
            )
        if not self.char_columns >= 1:
            raise ValueError(f"char_columns must be >= 1, got {self.char_columns}")
        if self.freeze_encoder and (self.char_loss > 0 or not self.decoder_loss > 0):
            raise ValueError(
                "freeze_encoder trains the decoder alone: it needs decoder_loss > 0 and char_loss 0, got "
                f"{self.decoder_loss} and {self.char_loss}"
            )
        if not self.guide_attention >= 0 or (self.guide_attention > 0 and not self.decoder_loss > 0):
            raise ValueError(
                f"guide_attention must be >= 0, and it needs decoder_loss > 0, got {self.guide_attention} "
                f"and {self.decoder_loss}"
            )
        if not self.guide_heads >= 1:
            raise ValueError(f"guide_heads must be at least 1, got {self.guide_heads}")
        if not self.guide_slot >= 0 or (self.guide_slot > 0 and not self.decoder_loss > 0):
            raise ValueError(
                f"guide_slot must be >= 0, and it needs decoder_loss > 0, got {self.guide_slot} and "
                f"{self.decoder_loss}"
            )
        for name in ("scramble_share", "crop_share", "conversation_share", "full_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if not self.crop_sides or not set(self.crop_sides) <= set(CROP_SIDES):
            raise ValueError(f"crop_sides must be some of {CROP_SIDES}, got {self.crop_sides}")


# -- data ----------------------------------------------------------------------------------------------------


def training_paragraphs() -> list[str]:
    """Prose paragraphs of the training packages' docstrings, minus any that the held-out corpus holds."""
    from pydoc_data.topics import topics

    held_out = {p for doc in topics.values() for p in _prose_paragraphs(doc)}
    out: list[str] = []
    for package in TRAIN_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"the training prose comes from {package!r}, which is not installed")
        root = Path(spec.origin).parent
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.relative_to(root).parts:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        out.extend(p for p in _prose_paragraphs(doc) if p not in held_out)
    return out


_NAMES = ("Ada", "Bo", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hana", "Ines", "Jun", "Kofi", "Lena")
_ASKS = (
    "Can you remind me what we decided about {x}?",
    "What was the number {name} gave for {x}?",
    "Please summarise the thread on {x} before {date}.",
    "I moved the meeting with {name} to {date} at {time}.",
    "The build {id} failed again at step {n}; the log says {x}.",
    "Order #{n} for {name} ships on {date}, tracking {id}.",
    "Remember that {name} prefers {x} over the old approach.",
    "Set the budget to ${n}.{cents} and the limit to {n2} requests per minute.",
)


def _fill(template: str, rng: random.Random, topic: str) -> str:
    return template.format(
        x=topic,
        name=rng.choice(_NAMES),
        date=f"{rng.randint(2020, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        time=f"{rng.randint(0, 23):02d}:{rng.choice(('00', '15', '30', '45'))}",
        id="".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(6, 10))),
        n=rng.randint(2, 99999),
        n2=rng.randint(2, 999),
        cents=f"{rng.randint(0, 99):02d}",
    )


def _sentences(paragraph: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", paragraph) if s]


def conversation(paragraphs: Sequence[str], rng: random.Random, turns: int) -> list[tuple[str, str]]:
    """A synthetic chat of ``turns`` (speaker, text) items: questions from templates, answers from prose."""
    items: list[tuple[str, str]] = []
    for i in range(turns):
        para = rng.choice(paragraphs)
        words = para.split()
        k = rng.randint(0, max(0, len(words) - 3))
        topic = " ".join(words[k : k + rng.randint(1, 3)]).strip(".,;:()")
        if i % 2 == 0:
            items.append(("user", _fill(rng.choice(_ASKS), rng, topic)))
        else:
            sents = _sentences(para)
            j = rng.randrange(len(sents))
            items.append(("assistant", " ".join(sents[j : j + rng.randint(1, 4)])))
    return items


@dataclass(frozen=True)
class Sample:
    image: Image.Image  # at ``side``
    side: int
    text: str  # the page's lines joined by "\n", what a perfect reader returns
    lines: int
    page_side: int = 1024  # the side it was drawn at: RenderConfig's page, or a crop's own side


_RANDOM_CHARS = string.ascii_letters + string.digits + string.punctuation


def scrambled(text: str, rng: random.Random) -> str:
    """``text``'s words shuffled, or (half the time) as many random strings of printable ASCII."""
    words = text.split()
    if rng.random() < 0.5:
        rng.shuffle(words)
        return " ".join(words)
    return " ".join("".join(rng.choices(_RANDOM_CHARS, k=rng.randint(1, 10))) for _ in words)


def crop_renderer(side: int, page: RenderConfig | None = None) -> Renderer:
    """A renderer of ``side`` px crops: ``page``'s glyphs and lines (the store's page by default) on a small
    page with a thin margin."""
    return Renderer(dataclasses.replace(page or RenderConfig(), page_side=side, margin=CROP_MARGIN))


class PageStream:
    """Sample ``i`` (deterministic in ``seed`` and ``i``): a page of prose or chat at one ladder side, or a
    crop: a small page drawn at the full page's density."""

    def __init__(self, paragraphs: Sequence[str], config: TrainConfig, *, render: RenderConfig | None = None):
        if not paragraphs:
            raise ValueError("no training paragraphs")
        self.paragraphs = list(paragraphs)
        self.config = config
        self.renderer = Renderer(render or RenderConfig())
        self.full = self.renderer.lines_per_page
        self.crop_renderers = {side: crop_renderer(side, self.renderer.config) for side in CROP_SIDES}

    def renderer_for(self, page_side: int) -> Renderer:
        """The renderer that draws pages of ``page_side``: the store's, or a crop's."""
        if page_side == self.renderer.config.page_side:
            return self.renderer
        return self.crop_renderers[page_side]

    def max_lines(self, step: int) -> int:
        """The curriculum: the most lines a page may hold at ``step``."""
        cfg = self.config
        grow = min(1.0, step / max(1, cfg.curriculum * cfg.steps))
        return round(cfg.min_lines + grow**2 * (self.full - cfg.min_lines))

    def side(self, step: int) -> int:
        """The side of step ``step``'s batch at the ladder (crops aside: see ``crop_side``)."""
        rng = random.Random(f"{self.config.seed}:side:{step}")
        sides = [side for side in SIDE_WEIGHTS if side in self.config.sides]
        return rng.choices(sides, weights=[SIDE_WEIGHTS[side] for side in sides])[0]

    def crop_side(self, step: int) -> int | None:
        """The side of step ``step``'s batch if it is a crop batch, else None."""
        rng = random.Random(f"{self.config.seed}:crop:{step}")
        if self.config.crop_share and rng.random() < self.config.crop_share:
            return rng.choice(self.config.crop_sides)
        return None

    def passage(self, rng: random.Random) -> list[tuple[str | None, str]]:
        """A chat of 2-24 turns, or 12 paragraphs of prose (some scrambled): ``(speaker, text)`` items."""
        if rng.random() < self.config.conversation_share:
            return list(conversation(self.paragraphs, rng, turns=rng.randint(2, 24)))
        start = rng.randrange(len(self.paragraphs))
        text = "\n".join(self.paragraphs[start : start + 12])
        if self.config.scramble_share and rng.random() < self.config.scramble_share:
            text = scrambled(text, rng)
        return [(None, text)]

    def page_lines(self, rng: random.Random, n_lines: int, renderer: Renderer | None = None) -> list[Line]:
        """The first ``n_lines`` lines of a page, filled with passages until it holds them: one passage fills
        22 of a 1024 px page's 51 lines on average, and only 0.3% of pages asked to be full were."""
        renderer = renderer or self.renderer
        items: list[tuple[str | None, str]] = []
        while True:
            items += [(speaker, renderer.normalise(text)) for speaker, text in self.passage(rng)]
            pages, _ = renderer.layout(items)
            if len(pages) > 1 or len(pages[0]) >= n_lines:
                return pages[0][:n_lines]

    def sample(self, step: int, index: int, side: int, *, crop: bool = False) -> Sample:
        """Page ``index`` of step ``step``'s batch at ``side``; ``crop``: drawn at that side, unshrunk."""
        rng = random.Random(f"{self.config.seed}:page:{step}:{index}")
        renderer = self.crop_renderers[side] if crop else self.renderer
        most = min(self.max_lines(step), renderer.lines_per_page)
        # `full_share` 0 draws no extra number from `rng`: the lines a page holds are drawn as before it.
        full = self.config.full_share and rng.random() < self.config.full_share
        n_lines = most if full else rng.randint(1, most)
        lines = self.page_lines(rng, n_lines, renderer)
        page = renderer.draw(lines)
        image = page if crop else shrink_chain(page, [side])[side]  # the page itself at its own side
        text = "\n".join(line.text for line in lines)
        return Sample(image, side, text, len(lines), renderer.config.page_side)

    def batch(self, step: int) -> list[Sample]:
        crop = self.crop_side(step)
        if crop is not None:
            pages = CROP_BATCH[crop] * self.config.batch_scale
            return [self.sample(step, i, crop, crop=True) for i in range(pages)]
        side = self.side(step)
        return [self.sample(step, i, side) for i in range(BATCH[side] * self.config.batch_scale)]


class BatchStream(torch.utils.data.IterableDataset[tuple[int, list[Sample]]]):
    """``(step, batch)`` for steps ``[start, stop)`` of a ``PageStream``, in step order. Under a DataLoader
    with ``n`` workers, worker ``k`` draws steps ``start + k, start + k + n, ...``; the loader takes one
    from each worker in turn, so the order (and, since a batch depends only on its step, the data) is the
    same with any number of workers. On a GPU the page drawing is the bottleneck without them."""

    def __init__(self, stream: PageStream, start: int, stop: int) -> None:
        self.stream, self.start, self.stop = stream, start, stop

    def __iter__(self) -> Iterator[tuple[int, list[Sample]]]:
        info = torch.utils.data.get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.start + k, self.stop, n):
            yield step, self.stream.batch(step)


def held_out_samples(
    pages: int = 2, *, seed: int = 0, lines: int | None = None, sides: Sequence[int] = LADDER
) -> list[Sample]:
    """Pages of the held-out corpus (``experiments.build_corpus``) at ``sides`` of the ladder: full pages,
    or cut to their first ``lines`` lines (what a model early in its curriculum may already read)."""
    from .experiments import build_corpus

    if lines is not None and lines < 1:
        raise ValueError(f"lines must be at least 1, got {lines}")
    renderer = Renderer(RenderConfig())
    out = []
    for b in build_corpus(pages, seed=seed, renderer=renderer):
        kept = renderer.paginate_document(b.text)[0][0][:lines]
        page = renderer.draw(kept)
        text = "\n".join(line.text for line in kept)
        for side, image in shrink_chain(page, list(sides)).items():
            out.append(Sample(image, side, text, len(kept)))
    return out


def held_out_crops(
    pages: int = 2, *, side: int = CROP_SIDES[0], seed: int = 0, lines: int | None = None
) -> list[Sample]:
    """Crops (``CROP_SIDES``) of the held-out corpus: ``pages`` of its documents drawn on ``side`` px pages
    at the full page's density, as training draws its crops, each the first page of a document (cut to its
    first ``lines`` lines)."""
    from .experiments import build_corpus

    if side not in CROP_SIDES:
        raise ValueError(f"a crop's side must be one of {CROP_SIDES}, got {side}")
    if lines is not None and lines < 1:
        raise ValueError(f"lines must be at least 1, got {lines}")
    renderer = crop_renderer(side)
    out = []
    for b in build_corpus(pages, seed=seed, renderer=Renderer(RenderConfig())):
        kept = renderer.paginate_document(b.text)[0][0][:lines]
        text = "\n".join(line.text for line in kept)
        out.append(Sample(renderer.draw(kept), side, text, len(kept), side))
    return out


def glyph_rows(hits: torch.Tensor, glyphs: torch.Tensor) -> list[float | None]:
    """The share of ``glyphs`` that are ``hits`` in each row of vision tokens, top to bottom (None for a row
    without a glyph); both are (B, q*q, P) masks over the character head's points."""
    q = math.isqrt(glyphs.shape[1])
    named = (hits & glyphs).view(glyphs.shape[0], q, q, -1).sum((0, 2, 3))
    total = glyphs.view(glyphs.shape[0], q, q, -1).sum((0, 2, 3))
    return [round(float(n / t), 4) if t else None for n, t in zip(named, total, strict=True)]


def blank_page(sample: Sample) -> Sample:
    """``sample`` with its page wiped white: the control that tells reading from guessing."""
    return dataclasses.replace(sample, image=Image.new(sample.image.mode, sample.image.size, "white"))


# -- loss and the collapse instruments ----------------------------------------------------------------------


def vision_features(model: DeepseekOCR, samples: Sequence[Sample]) -> torch.Tensor:
    """The projected vision tokens of pages of one side, (B, q*q, hidden), as the decoder receives them."""
    side = samples[0].side
    assert all(s.side == side for s in samples)
    pixels = torch.stack([prepare(s.image, get_mode(side)).global_view for s in samples]).to(model.device)
    return model.model.encode_views(pixels)  # (B, q*q, H)


@dataclass
class PageRows:
    """A batch as the decoder is trained on it: each row the model's own OCR prompt (``embed_prompt``: BOS,
    the page's vision tokens, the prompt text) followed by the page's text and EOS, left-padded as
    ``generate`` pads its prompts."""

    embeds: torch.Tensor  # (B, T, H)
    mask: torch.Tensor  # (B, T): 1 for real positions, 0 for the left padding
    labels: torch.Tensor  # (B, T): position t's next token, -100 where nothing is predicted
    vision_starts: list[int]  # each row's first vision position (its BOS is one before)


def page_rows(
    model: DeepseekOCR, samples: Sequence[Sample], *, feats: torch.Tensor | None = None
) -> PageRows:
    """The decoder's training rows for ``samples``; ``feats``: their vision features when the caller has
    them already."""
    assert model.tokenizer is not None
    body = model.model
    feats = vision_features(model, samples) if feats is None else feats  # (B, q*q, H)
    eos = model.config.decoder.eos_token_id
    rows, targets = [], []
    for feat, s in zip(feats, samples, strict=True):
        vision = body.layout(feat, None, (1, 1))  # (q*(q+1)+1, H): newlines and the separator
        prompt = model.embed_prompt([vision], DEFAULT_PROMPT)  # (P, H)
        text_ids = torch.tensor([*model.tokenizer.encode(s.text, add_special_tokens=False), eos])
        rows.append(torch.cat([prompt, body.embed_tokens(text_ids.to(model.device))]))  # (P + N, H)
        target = torch.full((rows[-1].shape[0],), -100, dtype=torch.long)
        target[prompt.shape[0] - 1 : -1] = text_ids  # position t predicts token t + 1
        targets.append(target)
    batch, mask = left_pad(rows)  # the mask hides the padding
    labels = torch.stack([F.pad(t, (batch.shape[1] - t.shape[0], 0), value=-100) for t in targets])
    starts = [batch.shape[1] - row.shape[0] + 1 for row in rows]  # past the padding and BOS
    return PageRows(batch, mask, labels.to(model.device), starts)


def page_loss(
    model: DeepseekOCR, samples: Sequence[Sample], *, feats: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Mean next-token loss over the samples' text and EOS (``page_rows``), their pages as the image; and
    the count."""
    rows = page_rows(model, samples, feats=feats)
    return next_token_loss(model, rows)


def next_token_loss(model: DeepseekOCR, rows: PageRows) -> tuple[torch.Tensor, int]:
    logits = model(rows.embeds, attention_mask=rows.mask)  # (B, T, V)
    n = int((rows.labels != -100).sum())
    return F.cross_entropy(logits.flatten(0, 1), rows.labels.flatten(), ignore_index=-100), n


def rms(tensor: torch.Tensor) -> float:
    return float(tensor.detach().float().pow(2).mean().sqrt())


def text_rms(model: DeepseekOCR) -> float:
    """RMS of the text embeddings: the scale the vision tokens sit beside in the decoder's input."""
    return rms(model.model.embed_tokens.weight)


def char_class(ch: str) -> int:
    code = ord(ch)
    return 0 if ch == " " else code - 32 if 33 <= code <= 126 else CHAR_CLASSES - 1


def char_targets(
    text: str,
    side: int,
    renderer: Renderer,
    *,
    offset: tuple[float, float] | None = None,
    columns: int = CHAR_GRID,
) -> torch.Tensor:
    """The auxiliary loss's targets for a page of ``text`` (its lines joined by "\\n", ASCII) at ``side``:
    (q*q, CHAR_GRID * columns) classes of the character under each grid point of each vision token's cell,
    tokens in the encoder's row-major order, points row-major. A token covers a 64 px square of the page as
    the encoder sees it at ``side``, i.e. 64 * page_side / side pixels of the page as drawn; its grid points
    are 64 / CHAR_GRID apart down and 64 / ``columns`` across, starting ``offset`` (y, x) px into the cell
    (default: the grid's centres). Below 1024 px they are further apart than a line is tall: training
    jitters ``offset`` so that every line is read in turn."""
    cfg = renderer.config
    q = grid_tokens(side)
    lines = text.split("\n")
    table = torch.zeros(renderer.lines_per_page + 1, renderer.columns + 1, dtype=torch.long)  # last: none
    for i, line in enumerate(lines[: renderer.lines_per_page]):
        classes = [char_class(ch) for ch in line[: renderer.columns]]
        table[i, : len(classes)] = torch.tensor(classes, dtype=torch.long)
    down, across = PIXELS_PER_TOKEN / CHAR_GRID, PIXELS_PER_TOKEN / columns
    oy, ox = (down / 2, across / 2) if offset is None else offset
    origins = torch.arange(q)[:, None] * PIXELS_PER_TOKEN
    scale = cfg.page_side / side
    ys = (
        origins + torch.arange(CHAR_GRID) * down + oy
    ).flatten() * scale - cfg.margin  # (q*K,) below the top
    xs = (
        origins + torch.arange(columns) * across + ox
    ).flatten() * scale - cfg.margin  # (q*M,) right of left
    rows = torch.floor(ys / cfg.line_height).long()
    cols = torch.floor(xs / renderer.cell_width).long()
    on_line = (rows >= 0) & (rows < min(len(lines), renderer.lines_per_page))
    rows = torch.where(on_line, rows, renderer.lines_per_page)
    cols = torch.where((cols >= 0) & (cols < renderer.columns), cols, renderer.columns)
    grid = table[rows[:, None], cols[None, :]]  # (q*K, q*M): y, then x
    # points above, between or below the page's lines are not scored (-100): on a page of a few lines they
    # would be nearly all of them, and "nothing here" would be the whole lesson
    grid[~on_line] = -100
    return grid.view(q, CHAR_GRID, q, columns).permute(0, 2, 1, 3).reshape(q * q, CHAR_GRID * columns)


def guide_points(
    text: str, tokenizer: Any, side: int, renderer: Renderer
) -> list[tuple[float, float] | None]:
    """For each of ``text``'s tokens (as ``page_rows`` encodes it) and the EOS after them, the centre (x, y)
    of the token's first character other than whitespace on the page at ``side``, in its pixels; None for a
    token of whitespace alone, and for the EOS."""
    cfg = renderer.config
    scale = side / cfg.page_side
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    points: list[tuple[float, float] | None] = []
    for start, end in encoded["offset_mapping"]:
        first = next((i for i in range(start, end) if not text[i].isspace()), None)
        if first is None:
            points.append(None)
            continue
        line = text.count("\n", 0, first)
        column = first - (text.rfind("\n", 0, first) + 1)
        y = renderer.line_top(line, side) + renderer.line_px(side) / 2
        x = (cfg.margin + (column + 0.5) * renderer.cell_width) * scale
        points.append((x, y))
    return [*points, None]


def _cell(point: tuple[float, float], q: int) -> tuple[int, int]:
    """The (row, column) of the vision token whose cell holds ``point``, in a grid of q x q."""
    x, y = point
    return min(q - 1, int(y // PIXELS_PER_TOKEN)), min(q - 1, int(x // PIXELS_PER_TOKEN))


def guide_keys(text: str, tokenizer: Any, side: int, renderer: Renderer) -> list[int]:
    """The attention guide's targets for a page of ``text`` at ``side``: for each of its tokens and the EOS
    after them (``guide_points``), the vision token whose cell holds the token's first character other than
    whitespace, as its index in the page's layout (rows of q tokens, each row followed by its newline); -1
    for a token of whitespace alone, and for the EOS."""
    return keys_of(guide_points(text, tokenizer, side, renderer), side)


def guide_slots(text: str, tokenizer: Any, side: int, renderer: Renderer) -> list[int]:
    """The slot guide's targets, beside ``guide_keys``: the point of the character grid (CHAR_GRID rows
    x COMPLETE_COLUMNS, row-major) nearest each token's first character inside its cell; -1 where
    ``guide_keys`` has -1."""
    return slots_of(guide_points(text, tokenizer, side, renderer), side)


def keys_of(points: Sequence[tuple[float, float] | None], side: int) -> list[int]:
    """``guide_keys`` from a page's ``guide_points``."""
    q = grid_tokens(side)
    keys = []
    for point in points:
        if point is None:
            keys.append(-1)
            continue
        row, col = _cell(point, q)
        keys.append(row * (q + 1) + col)
    return keys


def slots_of(points: Sequence[tuple[float, float] | None], side: int) -> list[int]:
    """``guide_slots`` from a page's ``guide_points``."""
    q = grid_tokens(side)
    down, across = PIXELS_PER_TOKEN / CHAR_GRID, PIXELS_PER_TOKEN / COMPLETE_COLUMNS
    slots = []
    for point in points:
        if point is None:
            slots.append(-1)
            continue
        row, col = _cell(point, q)
        x, y = point[0] - col * PIXELS_PER_TOKEN, point[1] - row * PIXELS_PER_TOKEN
        slot_row = min(CHAR_GRID - 1, max(0, int(y // down)))
        slot_col = min(COMPLETE_COLUMNS - 1, max(0, int(x // across)))
        slots.append(slot_row * COMPLETE_COLUMNS + slot_col)
    return slots


def at_predictions(rows: PageRows, per_row: Sequence[Sequence[int]], what: str) -> torch.Tensor:
    """(B, T) targets on ``rows``' device: ``per_row[b][j]`` at the position that predicts row b's text
    token j (and its EOS), -1 there where the list has -1 and at every other position. ``what`` names the
    targets in the error when a list's length is not the row's count of predicted tokens."""
    targets = torch.full(rows.labels.shape, -1, dtype=torch.long)
    for b, row_targets in enumerate(per_row):
        queries = (rows.labels[b] != -100).nonzero().flatten().cpu()  # in order: text token j's predictor
        if len(queries) != len(row_targets):
            raise ValueError(f"row {b}: {len(row_targets)} {what} for {len(queries)} predicted tokens")
        targets[b, queries] = torch.tensor(row_targets, dtype=torch.long)
    return targets.to(rows.labels.device)


# What an attention layer's forward gets (DecoderLayer passes them): its normed input (B, T, H), the RoPE
# cos and sin, the model's boolean mask (B, 1, T, T; True = may attend) or None with its causal flag.
AttentionInput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, bool]


def head_log_attention(attention: Attention, seen: AttentionInput, head: int) -> torch.Tensor:
    """Log of head ``head``'s attention weights (B, T, T) in ``attention``, recomputed from what its forward
    got (``seen``), under the same mask."""
    x, cos, sin, mask, is_causal = seen
    d = attention.head_dim
    rows = slice(head * d, (head + 1) * d)
    q = apply_rope(F.linear(x, attention.q_proj.weight[rows])[:, None], cos, sin)[:, 0]  # (B, T, D)
    k = apply_rope(F.linear(x, attention.k_proj.weight[rows])[:, None], cos, sin)[:, 0]  # (B, T, D)
    scores = (q @ k.transpose(1, 2)).float() / math.sqrt(d)  # (B, T, T), scaled as SDPA scales them
    if mask is None:  # no padding: SDPA's own causal flag
        assert is_causal, "a one-token step has no attention to guide"
        T = scores.shape[1]
        mask = torch.ones(T, T, dtype=torch.bool, device=scores.device).tril()[None, None]
    return scores.masked_fill(~mask[:, 0], float("-inf")).log_softmax(-1)


def guide_loss(
    attention: Attention,
    seen: AttentionInput,
    rows: PageRows,
    keys: Sequence[Sequence[int]],
    *,
    heads: int = 1,
) -> torch.Tensor:
    """Mean negative log of the attention that heads GUIDE_HEAD .. GUIDE_HEAD + ``heads`` - 1 of
    ``attention`` pay, from each position that predicts a text token, to the vision token holding that
    token's first character (``keys``, one list per row, from ``guide_keys``). ``seen``: what the layer's
    forward got for ``rows``."""
    if not GUIDE_HEAD + heads <= attention.num_heads:
        raise ValueError(f"guide heads {heads} from head {GUIDE_HEAD}: the layer has {attention.num_heads}")
    shifted = [
        [key + start if key >= 0 else -1 for key in row_keys]  # layout index -> position in the row
        for row_keys, start in zip(keys, rows.vision_starts, strict=True)
    ]
    targets = at_predictions(rows, shifted, "guide keys")
    guided = targets >= 0
    if (
        not guided.any()
    ):  # only whitespace tokens: nothing to guide (a constant; the decoder's loss has grads)
        return torch.zeros((), device=targets.device)
    terms = []
    for head in range(GUIDE_HEAD, GUIDE_HEAD + heads):
        logp = head_log_attention(attention, seen, head)  # (B, T, T)
        picked = logp.gather(-1, targets[..., None].clamp(min=0))[..., 0]  # (B, T)
        terms.append(-picked[guided].mean())
    return torch.stack(terms).mean()


@torch.no_grad()
def evaluate_pages(
    model: DeepseekOCR, samples: Sequence[Sample], *, greedy_pages: int = GREEDY_PAGES
) -> dict[str, dict[int, float]]:
    """The collapse instruments, per side of the ladder the samples hold:

    ``loss`` on the real pages and ``blank_loss`` on the same texts with white pages; ``gap`` = blank_loss -
    loss, what the image is worth in nats per token (~0: the decoder guesses from its language prior alone);
    ``vision_rms``, the vision tokens' RMS; ``precision`` (1 - normalised edit distance) of a greedy read of
    the first ``greedy_pages`` pages, capped a little past each text's length (a model that does not read
    runs to the cap instead of stopping at EOS)."""
    was_training = model.training
    model.eval()
    out: dict[str, dict[int, float]] = {
        k: {} for k in ("loss", "blank_loss", "gap", "vision_rms", "precision")
    }
    try:
        for side in LADDER:
            group = [s for s in samples if s.side == side]
            if not group:
                continue
            feats = vision_features(model, group)
            real = float(page_loss(model, group, feats=feats)[0])
            blank = float(page_loss(model, [blank_page(s) for s in group])[0])
            out["loss"][side] = round(real, 4)
            out["blank_loss"][side] = round(blank, 4)
            out["gap"][side] = round(blank - real, 4) + 0.0  # + 0.0: no "-0.0" for a gap of nothing
            out["vision_rms"][side] = round(rms(feats), 4)
            read = group[:greedy_pages]
            if read:
                assert model.tokenizer is not None
                cap = max(len(model.tokenizer.encode(s.text, add_special_tokens=False)) for s in read) + 16
                texts = model.read([s.image for s in read], side, config=GenerationConfig(max_new_tokens=cap))
                scores = [char_precision(s.text, t) for s, t in zip(read, texts, strict=True)]
                out["precision"][side] = round(sum(scores) / len(scores), 4)
    finally:
        model.train(was_training)
    return out


def collapse_alarms(evaluations: Sequence[dict[str, dict[int, float]]], *, text_scale: float) -> list[str]:
    """What is wrong with a run, from its evaluations so far (oldest first; those after warmup): the gap
    stayed under ``COLLAPSE_GAP_NATS`` at every legible side in the last two, or the vision tokens' RMS
    in the last one is over ``RUNAWAY_RMS`` times ``text_scale`` (the text embeddings' RMS)."""
    alarms = []
    recent = evaluations[-2:]
    if len(recent) == 2 and all(
        any(side in e["gap"] for side in LEGIBLE)
        and all(e["gap"][side] < COLLAPSE_GAP_NATS for side in LEGIBLE if side in e["gap"])
        for e in recent
    ):
        gaps = {side: recent[-1]["gap"][side] for side in LEGIBLE if side in recent[-1]["gap"]}
        alarms.append(
            f"ENCODER COLLAPSE: over two evaluations the held-out loss with a blank page stayed within "
            f"{COLLAPSE_GAP_NATS} nats of the loss with the real page at {sorted(gaps, reverse=True)} px "
            f"(gap now {gaps}): the decoder is not reading the image"
        )
    if evaluations:
        runaway = {
            side: rms for side, rms in evaluations[-1]["vision_rms"].items() if rms > RUNAWAY_RMS * text_scale
        }
        if runaway:
            alarms.append(
                f"VISION TOKENS RUNAWAY: RMS {runaway} against text embeddings' {text_scale:.3g} (over "
                f"{RUNAWAY_RMS:g}x): the encoder's output scale is drifting, a sign of collapse"
            )
    return alarms


class CharHead(torch.nn.Module):
    """The auxiliary character loss's head (training only, never exported): from one vision token, the
    class of the character under each of its CHAR_GRID x ``columns`` points. ``query``: the points' offset in
    the cell (the grid's jitter) is an input, through Fourier features and a hidden layer, so the target is
    the one character under a known point; otherwise a linear map that cannot know where its points are.
    ``neck``: the width of a token's SAM-neck features (``neck_tokens``), for a linear head that reads the
    same targets there (deep supervision, ``TrainConfig.neck_char_loss``). ``hidden_width``: a blind head
    with one hidden layer of that width (0: linear)."""

    def __init__(
        self,
        hidden: int,
        *,
        query: bool = False,
        width: int = 512,
        frequencies: int = 4,
        neck: int | None = None,
        hidden_width: int = 0,
        columns: int = CHAR_GRID,
    ) -> None:
        super().__init__()
        out = CHAR_GRID * columns * CHAR_CLASSES
        self.query = query
        self.neck = None if neck is None else torch.nn.Linear(neck, out)
        self.out: torch.nn.Module
        if query:
            self.frequencies = frequencies
            self.features = torch.nn.Linear(hidden, width)
            self.offset = torch.nn.Linear(4 * frequencies, width)
            self.out = torch.nn.Linear(width, out)
        elif hidden_width:
            self.out = torch.nn.Sequential(
                torch.nn.Linear(hidden, hidden_width), torch.nn.GELU(), torch.nn.Linear(hidden_width, out)
            )
        else:
            self.out = torch.nn.Linear(hidden, out)
        for layer in self.modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, 0.0, 0.02)
                torch.nn.init.zeros_(layer.bias)

    def forward(self, feats: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``feats`` (B, T, H) and ``offsets`` (B, 2), the grid's (y, x) start as a share of its spacing in
        [0, 1): logits (B, T, CHAR_GRID * columns * CHAR_CLASSES)."""
        if not self.query:
            return self.out(feats)
        angles = offsets[:, :, None] * (
            2 * math.pi * 2.0 ** torch.arange(self.frequencies, device=offsets.device)
        )
        fourier = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (B, 4F)
        return self.out(F.gelu(self.features(feats) + self.offset(fourier)[:, None, :]))


def neck_tokens(neck: torch.Tensor, per: int) -> torch.Tensor:
    """SAM-neck features (B, C, per*q, per*q) regrouped as the vision tokens see them: (B, q*q, C*per*per),
    each token's per x per patches (the 64 px cell the compressor folds into one token; per = 64 / the SAM
    patch), tokens row-major."""
    b, c, h, w = neck.shape
    cells = neck.unfold(2, per, per).unfold(3, per, per)  # (B, C, q, q, per, per)
    return cells.permute(0, 2, 3, 1, 4, 5).reshape(b, (h // per) * (w // per), c * per * per)


# -- tokenizer -----------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterator[str] | Sequence[str], folder: Path, vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE over ``texts`` with the official special tokens first; written to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    write_tokenizer_config(folder)
    fast = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    for i, token in enumerate(SPECIALS):
        assert fast.convert_tokens_to_ids(token) == i, (token, i)
    return fast


# -- training ------------------------------------------------------------------------------------------------


class Trainer:
    """One run folder: the tokenizer, ``state.pt`` (resumable), ``log.jsonl``, ``run.json``."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        config: TrainConfig = TrainConfig(),
        *,
        model_config: OCRConfig | None = None,
        device: str = "auto",
        paragraphs: Sequence[str] | None = None,
        vocab_size: int = VOCAB_SIZE,
        workers: int = 0,
        init_from: str | os.PathLike[str] | None = None,
        init_encoder_from: str | os.PathLike[str] | None = None,
        new_settings: bool = False,
    ) -> None:
        """``model_config`` defaults to ``OCRConfig.mini()``; its decoder's ``vocab_size`` and
        ``image_token_id`` are set to the tokenizer's. ``paragraphs`` defaults to ``training_paragraphs()``.
        Tests pass small ones of both, and a small ``vocab_size`` for the tokenizer. ``workers`` processes
        draw the pages (0: the training process does).

        ``init_from``: a checkpoint folder in the official layout (an ``export``, such as the shipped
        weights) to start from instead of random weights: its config, weights and tokenizer. A run folder
        that holds ``state.pt`` resumes from it as always; ``init_from`` only seeds a new one.

        ``init_encoder_from``: such a checkpoint's encoder (``ENCODER_PREFIXES``) and architecture, with a
        new decoder from random weights and this run's own tokenizer (``vocab_size``): a decoder of another
        vocabulary trained on an encoder already pretrained. It too only seeds a new run. Given with
        ``init_from``, its encoder takes the place of that checkpoint's (of the same architecture): a decoder
        carried onto an encoder trained further.

        ``new_settings``: resume the folder's ``state.pt`` under ``config`` though it was saved under others
        (its step, weights, heads and optimiser carry on; the schedule follows the new ``steps`` and ``lr``),
        as long as the same model and heads are built (``BUILT_SETTINGS``). Without it, other settings are
        an error."""
        self.workers = workers
        self.new_settings = new_settings
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        seed_from = init_from if init_from is not None else init_encoder_from
        for folder_from in (init_from, init_encoder_from):
            if folder_from is not None and not (Path(folder_from) / "config.json").is_file():
                raise ValueError(f"{folder_from} holds no config.json: give a checkpoint folder (an export)")
        if seed_from is not None and config.windowed_sam:  # refused before the checkpoint is read
            raise ValueError(
                f"windowed_sam builds a new SAM without its global block; {seed_from} holds a checkpoint "
                "of its own architecture: start from random weights or drop windowed_sam"
            )
        start: dict[str, torch.Tensor] | None = None  # the weights a new run starts from
        if seed_from is not None:
            from .model.loading import config_from_json

            # the checkpoint's architecture, whether it seeds this run or state.pt resumes it
            model_config = config_from_json(json.loads((Path(seed_from) / "config.json").read_text()))
            if init_from is not None and init_encoder_from is not None:
                other = config_from_json(json.loads((Path(init_encoder_from) / "config.json").read_text()))
                if (other.sam, other.clip, other.decoder.hidden_size) != (
                    model_config.sam,
                    model_config.clip,
                    model_config.decoder.hidden_size,
                ):
                    raise ValueError(
                        f"the encoder in {init_encoder_from} is not of the architecture of the one in "
                        f"{init_from}: it cannot take that one's place"
                    )
            if not self.state_path.is_file():
                from .model import from_pretrained

                start = from_pretrained(seed_from, dtype=torch.float32).state_dict()
                if init_encoder_from is not None:  # the encoder alone, or in place of init_from's
                    encoder = start
                    if init_from is not None:
                        encoder = from_pretrained(init_encoder_from, dtype=torch.float32).state_dict()
                    encoder = {k: v for k, v in encoder.items() if k.startswith(ENCODER_PREFIXES)}
                    start = encoder if init_from is None else {**start, **encoder}
                if init_from is not None:
                    for name in ("tokenizer.json", "tokenizer_config.json"):
                        (self.folder / name).write_bytes((Path(init_from) / name).read_bytes())
        self.init_from = None if init_from is None else str(init_from)
        self.init_encoder_from = None if init_encoder_from is None else str(init_encoder_from)
        self.config = config
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        torch.manual_seed(config.seed)
        paragraphs = list(paragraphs) if paragraphs is not None else training_paragraphs()
        self.stream = PageStream(paragraphs, config)
        if (self.folder / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.folder), local_files_only=True)
        else:
            rng = random.Random(config.seed)
            chats = [
                "\n".join(f"{s}: {t}" for s, t in conversation(paragraphs, rng, 12)) for _ in range(2000)
            ]
            self.tokenizer = train_tokenizer([*paragraphs, *chats], self.folder, vocab_size)
        base = model_config or OCRConfig.mini()
        if config.windowed_sam:
            base = dataclasses.replace(base, sam=dataclasses.replace(base.sam, global_attn_indexes=()))
        self.model_config = dataclasses.replace(
            base,
            decoder=dataclasses.replace(
                base.decoder, vocab_size=len(self.tokenizer), image_token_id=SPECIALS.index("<image>")
            ),
        )
        self.model = DeepseekOCR(self.model_config, tokenizer=self.tokenizer).to(self.device)
        if start is None or init_from is None:
            self._init_weights()
        if start is not None:
            missing, unexpected = self.model.load_state_dict(start, strict=init_from is not None)
            assert not unexpected and not any(k.startswith(ENCODER_PREFIXES) for k in missing), missing
            log.info(
                "%s: starting from the %s in %s%s",
                self.folder,
                "encoder" if missing else "weights",
                seed_from,
                f", with the encoder in {init_encoder_from}" if init_from and init_encoder_from else "",
            )
        if config.freeze_encoder:  # no gradient: AdamW skips them, and losses() runs the encoder without one
            for name, param in self.model.named_parameters():
                if name.startswith(ENCODER_PREFIXES):
                    param.requires_grad_(False)
        self.char_head: CharHead | None = None  # training only: never exported
        if config.char_loss > 0:
            hidden = self.model_config.decoder.hidden_size
            sam = self.model_config.sam
            neck = sam.out_chans * self.neck_patches**2 if config.neck_char_loss else None
            self.char_head = CharHead(
                hidden,
                query=config.char_query,
                neck=neck,
                hidden_width=config.char_hidden,
                columns=config.char_columns,
            ).to(self.device)
            if neck is not None:
                self.model.model.sam_model.neck.register_forward_hook(self._keep_neck)
        self._neck: torch.Tensor | None = None  # the last SAM-neck output, for the neck's character head
        self.neck_char: torch.Tensor | None = None  # the last `losses` call's neck term (logged)
        self.guide: torch.Tensor | None = None  # the last `losses` call's attention-guide term (logged)
        self._seen: AttentionInput | None = None  # what the guided layer's forward last got
        guided_layer = self.model.model.layers[self.model_config.decoder.num_layers - 2]
        if config.guide_attention > 0:
            self.guided = guided_layer.self_attn
            if GUIDE_HEAD + config.guide_heads > self.guided.num_heads:
                raise ValueError(
                    f"guide_heads {config.guide_heads}: the decoder's layers have {self.guided.num_heads}"
                )
            self.guided.register_forward_pre_hook(self._keep_attention_input)
        self.slot_head: torch.nn.Linear | None = None  # training only: never exported
        self.slot: torch.Tensor | None = None  # the last `losses` call's slot-guide term (logged)
        self._guided_out: torch.Tensor | None = None  # the guided layer's last output (B, T, H)
        if config.guide_slot > 0:
            self.slot_head = torch.nn.Linear(self.model_config.decoder.hidden_size, GUIDE_SLOTS).to(
                self.device
            )
            guided_layer.register_forward_hook(self._keep_guided_output)
        self.optimizer = torch.optim.AdamW(
            self._param_groups(), lr=config.lr, betas=(0.9, 0.95), fused=self.device.type == "cuda"
        )
        self.step = 0
        self.elapsed = 0.0  # training seconds over all runs
        self._resume()

    def _init_weights(self) -> None:
        """N(0, 0.02) for linear and embedding weights (GPT-2's scheme); the modules' own init elsewhere."""
        for module in self.model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(module.weight, 0.0, 0.02)
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    torch.nn.init.zeros_(module.bias)

    def _param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on matrices but embeddings; the encoder's parameters at ``encoder_lr_scale`` x lr."""
        groups = []
        for encoder in (False, True):
            for decays in (True, False):
                params = [
                    p
                    for n, p in self.model.named_parameters()
                    if n.startswith(ENCODER_PREFIXES) == encoder
                    and (p.ndim >= 2 and "embed" not in n) == decays
                ]
                groups.append(
                    {
                        "params": params,
                        "weight_decay": self.config.weight_decay if decays else 0.0,
                        "lr_scale": self.config.encoder_lr_scale if encoder else 1.0,
                    }
                )
        for head in self.heads():
            groups.append({"params": list(head.parameters()), "weight_decay": 0.0, "lr_scale": 1.0})
        return groups

    def heads(self) -> list[torch.nn.Module]:
        """The training-only heads this run has (the character head, the slot guide's), never exported."""
        return [head for head in (self.char_head, self.slot_head) if head is not None]

    def trained_parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters, and the training-only heads'."""
        return [*self.model.parameters(), *(p for head in self.heads() for p in head.parameters())]

    # -- state ------------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.folder / "state.pt"

    def _resume(self) -> None:
        if not self.state_path.is_file():
            return
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        saved = {**dataclasses.asdict(TrainConfig()), **state["train_config"]}  # fields added since: defaults
        now = dataclasses.asdict(self.config)
        changed = {k: (saved[k], now[k]) for k in now if saved[k] != now[k]}
        if changed and not self.new_settings:
            raise ValueError(
                f"{self.state_path} was trained with {saved}, not {now}: resume with the same settings, use "
                "a new folder, or carry this run on under the new ones (new_settings, --new-settings)"
            )
        rebuilt = [k for k in BUILT_SETTINGS if _built(k, saved[k]) != _built(k, now[k])]
        if rebuilt:
            raise ValueError(
                f"{self.state_path} was trained with another model or heads: "
                + ", ".join(f"{k} {saved[k]!r}, now {now[k]!r}" for k in rebuilt)
                + "; start a new run from its export (--init-from) instead"
            )
        if changed:
            log.warning(
                "%s: carrying on from step %d under new settings: %s",
                self.folder,
                int(state["step"]),
                ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()),
            )
        self.model.load_state_dict(state["model"])
        if len(state["optimizer"]["param_groups"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"{self.state_path} was trained before the encoder had a learning rate of its own: export it "
                "and start a new run folder from the export (--init-from)"
            )
        if self.char_head is not None:
            self.char_head.load_state_dict(state["char_head"])
        if self.slot_head is not None:
            self.slot_head.load_state_dict(state["slot_head"])
        groups = [(g["weight_decay"], g["lr_scale"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, (weight_decay, lr_scale) in zip(self.optimizer.param_groups, groups, strict=True):
            group.update(weight_decay=weight_decay, lr_scale=lr_scale)  # the settings' own, if new
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        log.info("resumed %s at step %d (%.0f s trained)", self.folder, self.step, self.elapsed)

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "elapsed": self.elapsed,
                "train_config": dataclasses.asdict(self.config),
                "char_head": None if self.char_head is None else self.char_head.state_dict(),
                "slot_head": None if self.slot_head is None else self.slot_head.state_dict(),
            },
            tmp,
        )
        os.replace(tmp, self.state_path)

    def _log(self, record: dict[str, Any]) -> None:
        with (self.folder / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _write_run_info(self) -> None:
        info = {
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "train_source": TRAIN_SOURCE,
            "train_licence": TRAIN_LICENCE,
            "train_packages": {p: importlib.metadata.version(p) for p in TRAIN_PACKAGES},
            "train_config": dataclasses.asdict(self.config),
            "init_from": self.init_from,
            "init_encoder_from": self.init_encoder_from,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "vocab_size": len(self.tokenizer),
        }
        runs = []
        path = self.folder / "run.json"
        if path.is_file():
            runs = json.loads(path.read_text()).get("runs", [])
        runs.append(
            {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "step": self.step}
        )
        path.write_text(json.dumps({**info, "runs": runs}, indent=1))

    # -- one step -----------------------------------------------------------------------------------------

    @property
    def neck_patches(self) -> int:
        """SAM patches along a vision token's side (64 px over the patch size): 4 for DeepEncoder."""
        return PIXELS_PER_TOKEN // self.model_config.sam.patch_size

    def _keep_attention_input(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self._seen = args[:5]  # the normed input, cos, sin, mask, is_causal (not the cache)

    def _keep_neck(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._neck = output

    def _keep_guided_output(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._guided_out = output

    def lr(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    def loss(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, int]:
        """``page_loss`` of the model being trained."""
        return page_loss(self.model, samples)

    def losses(
        self, samples: Sequence[Sample], *, step: int | None = None
    ) -> tuple[torch.Tensor | None, int, torch.Tensor | None]:
        """The decoder's loss (None when its weight is 0: not run) and its token count, and the auxiliary
        character loss (None when off), from one encoder pass; ``step`` seeds the jitter of the character
        grid (None: the cells' centres). With ``neck_char_loss`` the character loss includes the neck's
        term at that weight; ``neck_char`` keeps that term alone. With ``guide_attention`` the attention
        guide's term is kept in ``guide``."""
        self.neck_char = self.guide = self.slot = None
        with torch.no_grad() if self.config.freeze_encoder else contextlib.nullcontext():
            feats = vision_features(self.model, samples)  # (B, q*q, H)
        loss, n = None, 0
        if self.config.decoder_loss > 0:
            rows = page_rows(self.model, samples, feats=feats)
            loss, n = next_token_loss(self.model, rows)
            if self.config.guide_attention > 0 or self.slot_head is not None:  # the pages' geometry, once
                points = [
                    guide_points(s.text, self.tokenizer, s.side, self.stream.renderer_for(s.page_side))
                    for s in samples
                ]
            if self.config.guide_attention > 0:
                assert self._seen is not None
                keys = [keys_of(p, s.side) for p, s in zip(points, samples, strict=True)]
                self.guide = guide_loss(self.guided, self._seen, rows, keys, heads=self.config.guide_heads)
            if self.slot_head is not None:
                slots = [slots_of(p, s.side) for p, s in zip(points, samples, strict=True)]
                self.slot = self.slot_loss(rows, slots)
        if self.char_head is None:
            return loss, n, None
        logits, targets = self.char_logits(samples, feats, step=step)
        flat = targets.flatten()
        if not (flat != -100).any():  # no point of any cell fell on a line: nothing to score
            return loss, n, logits.sum() * 0.0
        char = F.cross_entropy(logits.flatten(0, 2).float(), flat, ignore_index=-100)
        if self.char_head.neck is not None:
            assert self._neck is not None
            tokens = neck_tokens(self._neck, self.neck_patches)  # (B, q*q, C*16)
            neck = self.char_head.neck(tokens).view(*targets.shape, CHAR_CLASSES)
            self.neck_char = F.cross_entropy(neck.flatten(0, 2).float(), flat, ignore_index=-100)
            char = char + self.config.neck_char_loss * self.neck_char
        return loss, n, char

    def slot_loss(self, rows: PageRows, slots: Sequence[Sequence[int]]) -> torch.Tensor:
        """The slot guide's cross-entropy: from the guided layer's output at each position that predicts a
        text token, the grid point under that token's first character (``slots``, one list per row, from
        ``guide_slots``)."""
        assert self.slot_head is not None and self._guided_out is not None
        targets = at_predictions(rows, slots, "slots")
        slotted = targets >= 0
        if not slotted.any():
            return torch.zeros((), device=self.device)
        logits = self.slot_head(self._guided_out[slotted].float())
        return F.cross_entropy(logits, targets[slotted])

    def char_logits(
        self, samples: Sequence[Sample], feats: torch.Tensor, *, step: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The character head's logits (B, q*q, P, C) and their targets (B, q*q, P) for ``samples``, P =
        CHAR_GRID x ``char_columns`` points, the grid jittered by ``step``'s seed (None: at the cells'
        centres)."""
        assert self.char_head is not None
        side, columns = samples[0].side, self.config.char_columns
        spread = (PIXELS_PER_TOKEN / CHAR_GRID, PIXELS_PER_TOKEN / columns)  # between points: down, across
        offsets = [(spread[0] / 2, spread[1] / 2)] * len(samples)
        if step is not None and self.config.char_jitter:  # jittered grid points, seeded like the pages
            rngs = [random.Random(f"{self.config.seed}:char:{step}:{i}") for i in range(len(samples))]
            offsets = [(r.uniform(0, spread[0]), r.uniform(0, spread[1])) for r in rngs]
        renderer = self.stream.renderer_for(samples[0].page_side)
        targets = torch.stack(
            [
                char_targets(s.text, side, renderer, offset=o, columns=columns)
                for s, o in zip(samples, offsets, strict=True)
            ]
        )  # (B, q*q, P)
        where = torch.tensor(offsets, device=self.device) / torch.tensor(spread, device=self.device)  # [0, 1)
        logits = self.char_head(feats, where).view(*targets.shape, CHAR_CLASSES)  # (B, q*q, P, C)
        return logits, targets.to(self.device)

    def train(
        self, *, minutes: float | None = None, max_steps: int | None = None, progress: bool = False
    ) -> dict[str, Any]:
        """Train until ``config.steps``, or until this run has taken ``minutes`` or ``max_steps`` steps,
        checkpointing every ``config.checkpoint_minutes`` and at the end."""
        cfg = self.config
        stop = cfg.steps if max_steps is None else min(cfg.steps, self.step + max_steps)
        if self.step >= stop:
            return {"step": self.step, "elapsed_s": self.elapsed, "done": self.step >= cfg.steps}
        self._write_run_info()
        self.model.train()
        start = time.monotonic()
        last_save = start
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step")
        held_out = held_out_samples() if cfg.eval_every else []
        evaluations: list[dict[str, dict[int, float]]] = []  # this run's, after warmup: the alarms' history
        batches: Iterator[tuple[int, list[Sample]]] = iter(
            torch.utils.data.DataLoader(
                BatchStream(self.stream, self.step, stop),
                batch_size=None,
                num_workers=self.workers,
                collate_fn=lambda b: b,
                prefetch_factor=4 if self.workers else None,
            )
            if self.workers
            else BatchStream(self.stream, self.step, stop)
        )
        while self.step < stop:
            if minutes is not None and time.monotonic() - start >= minutes * 60:
                break
            t0 = time.monotonic()
            at, samples = next(batches)
            assert at == self.step, (at, self.step)
            lr = self.lr(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            with autocast if autocast is not None else contextlib.nullcontext():
                loss, n, char = self.losses(samples, step=self.step)
                weighted = [] if loss is None else [cfg.decoder_loss * loss]
                if char is not None:
                    weighted.append(cfg.char_loss * char)
                if self.guide is not None:
                    weighted.append(cfg.guide_attention * self.guide)
                if self.slot is not None:
                    weighted.append(cfg.guide_slot * self.slot)
                total = torch.stack(weighted).sum()
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.trained_parameters(), cfg.grad_clip)
            self.optimizer.step()
            dt = time.monotonic() - t0
            self.elapsed += dt
            self.step += 1
            record: dict[str, Any] = {
                "step": self.step,
                **({} if loss is None else {"loss": round(loss.item(), 4)}),
                "lr": lr,
                "grad_norm": round(float(norm), 3),
                **({} if char is None else {"char_loss": round(char.item(), 4)}),
                **({} if self.neck_char is None else {"neck_char_loss": round(self.neck_char.item(), 4)}),
                **({} if self.guide is None else {"guide_loss": round(self.guide.item(), 4)}),
                **({} if self.slot is None else {"slot_loss": round(self.slot.item(), 4)}),
                "side": samples[0].side,
                **({"crop": True} if samples[0].page_side != self.stream.renderer.config.page_side else {}),
                "pages": len(samples),
                "lines": sum(s.lines for s in samples),
                "tokens": n,
                "seconds": round(dt, 3),
                "elapsed_s": round(self.elapsed, 1),
            }
            if held_out and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                evaluation = self.evaluate(held_out)
                record["held_out_loss"] = evaluation["loss"]
                scale = text_rms(self.model)
                record["held_out"] = {**evaluation, "text_rms": scale}
                if self.step > cfg.warmup:
                    evaluations.append(evaluation)
                for alarm in collapse_alarms(evaluations, text_scale=scale):
                    log.warning("step %d: %s", self.step, alarm)
                    record.setdefault("alarms", []).append(alarm)
            self._log(record)
            if bar is not None:
                bar.update(1)
                shown = loss if loss is not None else char
                bar.set_postfix(loss=f"{0.0 if shown is None else shown.item():.3f}", side=samples[0].side)
            if time.monotonic() - last_save >= cfg.checkpoint_minutes * 60:
                self.save()
                last_save = time.monotonic()
        self.save()
        if bar is not None:
            bar.close()
        return {"step": self.step, "elapsed_s": self.elapsed, "done": self.step >= cfg.steps}

    def evaluate(self, samples: Sequence[Sample]) -> dict[str, dict[int, Any]]:
        """``evaluate_pages`` of the model being trained (full pages of the evaluation corpus), and with a
        character head, ``char_accuracy`` per side: the share of its points at the cells' centres whose
        character it names (what the encoder's output holds of the page, whether the decoder reads it), and
        ``glyph_accuracy``, the same over the points on a character other than a space (about a third of the
        points are spaces, so a head that only says "space" scores that much of ``char_accuracy``), and
        ``glyph_rows``, that per row of vision tokens, top to bottom (an encoder that reads the top of a page
        and not the bottom was trained on pages that were not full).

        When the encoder is pretrained alone (``decoder_loss`` 0) the decoder is untrained: its losses and a
        greedy read would say nothing and cost most of an evaluation, so only ``vision_rms`` and
        ``char_accuracy`` are measured."""
        if self.config.decoder_loss > 0:
            out = evaluate_pages(self.model, samples, greedy_pages=self.config.eval_greedy_pages)
        else:
            out = {k: {} for k in ("loss", "blank_loss", "gap", "vision_rms", "precision")}
        if self.char_head is not None:
            out["char_accuracy"], out["glyph_accuracy"] = {}, {}
            rows: dict[int, list[float | None]] = {}
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    for side in LADDER:
                        group = [s for s in samples if s.side == side]
                        if group:
                            feats = vision_features(self.model, group)
                            if self.config.decoder_loss == 0:
                                out["vision_rms"][side] = round(rms(feats), 4)
                            logits, targets = self.char_logits(group, feats)
                            scored = targets != -100
                            hits = (logits.argmax(-1) == targets) & scored
                            out["char_accuracy"][side] = round(
                                float(hits.sum() / scored.sum().clamp(min=1)), 4
                            )
                            glyphs = scored & (targets != 0)
                            out["glyph_accuracy"][side] = round(
                                float((hits & glyphs).sum() / glyphs.sum().clamp(min=1)), 4
                            )
                            rows[side] = glyph_rows(hits, glyphs)
            finally:
                self.model.train(was_training)
            return {**out, "glyph_rows": rows}
        return out

    def export(self, folder: str | os.PathLike[str], *, dtype: torch.dtype = torch.bfloat16) -> Path:
        """The official layout: config.json, one safetensors file, tokenizer.json and its config."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config_to_json(self.model_config), indent=1))
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / "model-00001-of-000001.safetensors"), metadata={"format": "pt"})
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_bytes((self.folder / name).read_bytes())
        return folder


def _sides(option: str, text: str) -> tuple[int, ...]:
    """``text``, comma-separated sides in pixels; a ValueError naming ``option`` and the bad one."""
    try:
        return tuple(int(side) for side in text.split(","))
    except ValueError:
        raise ValueError(f"{option} takes sides in pixels, comma-separated, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m optical_memory.training", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--run", default="build/optical-mini", help="run folder (resumed if it holds state.pt)"
    )
    parser.add_argument("--export", default=None, help="write the checkpoint here when the run ends")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--minutes", type=float, default=None, help="end this run after this long")
    parser.add_argument("--max-steps", type=int, default=None, help="end this run after this many steps")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument(
        "--batch-scale", type=int, default=TrainConfig.batch_scale, help="pages per batch x N"
    )
    parser.add_argument(
        "--init-from",
        default=None,
        help="start a new run from this checkpoint folder (e.g. optical_memory/weights/optical-mini)",
    )
    parser.add_argument(
        "--init-encoder-from",
        default=None,
        help="start a new run from this checkpoint's encoder: a new decoder, a tokenizer of --vocab-size; "
        "with --init-from, this encoder takes the place of that checkpoint's",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=VOCAB_SIZE,
        help=f"a new run's tokenizer: BPE ids, specials and the 256 bytes included ({CHAR_VOCAB}: one id a "
        "character of ASCII, no merges)",
    )
    parser.add_argument(
        "--encoder-lr-scale",
        type=float,
        default=TrainConfig.encoder_lr_scale,
        help="the encoder's learning rate as a share of --lr",
    )
    parser.add_argument(
        "--eval-every", type=int, default=TrainConfig.eval_every, help="steps between evaluations (0: none)"
    )
    parser.add_argument(
        "--char-loss",
        type=float,
        default=TrainConfig.char_loss,
        help="weight of the auxiliary character loss on the vision tokens (0: off)",
    )
    parser.add_argument(
        "--sides",
        default=",".join(map(str, LADDER)),
        help="ladder sides to train at, comma-separated (e.g. 1024,640: legible pages only)",
    )
    parser.add_argument(
        "--windowed-sam",
        action="store_true",
        help="a new model's SAM without its global-attention block (2.5x faster steps at 1024 px on a CPU)",
    )
    parser.add_argument(
        "--min-lines",
        type=int,
        default=TrainConfig.min_lines,
        help="the most lines a page holds at step 0 (the curriculum grows it to a full page)",
    )
    parser.add_argument(
        "--new-settings",
        action="store_true",
        help="carry a run folder's state.pt on under the settings given here (same model and heads): its "
        "step, weights and optimiser are kept, the schedule follows the new --steps and --lr",
    )
    parser.add_argument(
        "--full-share",
        type=float,
        default=TrainConfig.full_share,
        help="share of pages that hold as many lines as the curriculum allows; the rest hold 1 to that many",
    )
    parser.add_argument(
        "--char-query",
        action="store_true",
        help="tell the character head where its jittered points are (targets without ambiguity)",
    )
    parser.add_argument(
        "--neck-char-loss",
        type=float,
        default=TrainConfig.neck_char_loss,
        help="weight of the character loss read from the SAM neck too, relative to --char-loss (0: off)",
    )
    parser.add_argument(
        "--no-char-jitter",
        dest="char_jitter",
        action="store_false",
        help="score the character grid at the cells' centres in training too (for full-density pages)",
    )
    parser.add_argument(
        "--char-hidden",
        type=int,
        default=TrainConfig.char_hidden,
        help="the character head's hidden width (0: linear; e.g. 1024: one GELU layer, as a decoder reads)",
    )
    parser.add_argument(
        "--char-columns",
        type=int,
        default=TrainConfig.char_columns,
        help=f"points across a token in the character grid ({COMPLETE_COLUMNS}: every character at 1024 px)",
    )
    parser.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="train the decoder alone on a frozen encoder (e.g. one pretrained with --decoder-loss 0)",
    )
    parser.add_argument(
        "--guide-attention",
        type=float,
        default=TrainConfig.guide_attention,
        help="weight of the attention guide: a decoder head taught where on the page the next token is",
    )
    parser.add_argument(
        "--guide-heads",
        type=int,
        default=TrainConfig.guide_heads,
        help="how many heads of that layer the guide teaches (the first N)",
    )
    parser.add_argument(
        "--guide-slot",
        type=float,
        default=TrainConfig.guide_slot,
        help="weight of the slot guide: that layer's output names the point in the cell the next token is at",
    )
    parser.add_argument(
        "--decoder-loss",
        type=float,
        default=TrainConfig.decoder_loss,
        help="weight of the decoder's loss (0: pretrain the encoder on the character loss alone)",
    )
    parser.add_argument(
        "--scramble-share",
        type=float,
        default=TrainConfig.scramble_share,
        help="share of prose pages with shuffled words or random strings (0-1)",
    )
    parser.add_argument(
        "--crop-share",
        type=float,
        default=TrainConfig.crop_share,
        help="share of batches that are crops (--crop-sides) drawn at the full page's density (0-1)",
    )
    parser.add_argument(
        "--crop-sides",
        default=",".join(map(str, TrainConfig.crop_sides)),
        help=f"the crops' sides, comma-separated, among {','.join(map(str, CROP_SIDES))}",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes drawing pages (default: 0 on a CPU, 6 on a GPU)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        sides, crop_sides = (
            _sides(option, text)
            for option, text in (("--sides", args.sides), ("--crop-sides", args.crop_sides))
        )
        config = TrainConfig(
            seed=args.seed,
            steps=args.steps,
            lr=args.lr,
            batch_scale=args.batch_scale,
            encoder_lr_scale=args.encoder_lr_scale,
            sides=sides,
            char_loss=args.char_loss,
            eval_every=args.eval_every,
            windowed_sam=args.windowed_sam,
            scramble_share=args.scramble_share,
            crop_share=args.crop_share,
            crop_sides=crop_sides,
            char_query=args.char_query,
            min_lines=args.min_lines,
            full_share=args.full_share,
            decoder_loss=args.decoder_loss,
            neck_char_loss=args.neck_char_loss,
            char_jitter=args.char_jitter,
            char_hidden=args.char_hidden,
            freeze_encoder=args.freeze_encoder,
            guide_attention=args.guide_attention,
            guide_heads=args.guide_heads,
            guide_slot=args.guide_slot,
            char_columns=args.char_columns,
        )
    except ValueError as e:
        parser.error(str(e))
    if args.vocab_size < CHAR_VOCAB:
        parser.error(
            f"--vocab-size must be at least {CHAR_VOCAB} (the specials and 256 bytes), got {args.vocab_size}"
        )
    workers = args.workers
    if workers is None:
        workers = 6 if (args.device == "auto" and torch.cuda.is_available()) or "cuda" in args.device else 0
    try:
        trainer = Trainer(
            args.run,
            config,
            device=args.device,
            workers=workers,
            init_from=args.init_from,
            init_encoder_from=args.init_encoder_from,
            vocab_size=args.vocab_size,
            new_settings=args.new_settings,
        )
    except ValueError as e:
        parser.error(str(e))
    result = trainer.train(minutes=args.minutes, max_steps=args.max_steps, progress=True)
    if args.export:
        trainer.export(args.export)
    print(json.dumps({**result, "run": str(trainer.folder), "export": args.export}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
