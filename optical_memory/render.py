"""Text -> page images: validation, normalisation, word-wrapped layout on a monospace cell grid, drawing.

Geometry (all in pixels of a full-resolution ``page_side`` page): line ``i`` occupies the band
``[margin + i * line_height, margin + (i + 1) * line_height)``; column ``c`` starts at
``margin + c * cell_width``. ``cell_width`` is the primary font's advance as FreeType renders it (hinted, so a
whole number of pixels: DejaVu Sans Mono at 15 px is 9 px, giving 108 columns x 51 lines on a 1024 px page).
Wide characters (East Asian "W"/"F") take two cells, combining marks none.

Drawing does not hand whole lines to Pillow: Pillow re-rasterises every glyph on every call (~10 us a
glyph, ~45 ms a page), so each glyph is rasterised once into a cell-sized tile and pages are composed
from cached tiles with numpy (~2 ms a page). Every glyph is clipped to its own line band, so painting a
band white (``redact``) removes that line and nothing else.

Layout records how each line joins the next (``Line.join``), so a reader's lines can be stitched back
into the stored text exactly (see ``Renderer.layout``).
"""

from __future__ import annotations

import fnmatch
import functools
import glob
import logging
import math
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, ImageSequence

from .config import RenderConfig
from .errors import InvalidInput, UnrenderableText

log = logging.getLogger(__name__)

# The fallback chain after DejaVu Sans Mono, config.fallback_font_paths and DejaVu Sans: Debian's Noto and
# Symbola fonts, looked for in these folders (first folder that has a file wins), each pattern sorted by
# name, in this order. A character takes the first font whose cmap has it, so the order is the policy: the
# Noto Sans script fonts (Latin, Greek, Cyrillic, then every script by name), CJK, symbols and emoji,
# then the serif-only scripts (Tibetan, Tangut, ...). No pip package ships these fonts (checked
# 2026-12-03: `symbola` and `noto` on PyPI are unrelated projects); `make fonts` installs the Debian ones.
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts")
FALLBACK_FONT_GLOBS = (
    "NotoSans-Regular.ttf",
    "NotoSans[A-Z]*-Regular.ttf",  # one per script; Display/Mono/Symbols/Math excluded below
    "NotoSansCJK-Regular.ttc",
    "NotoSansCJK*-Regular.[ot]t[cf]",
    "NotoSansSymbols-Regular.ttf",
    "NotoSansSymbols2-Regular.ttf",
    "NotoSansMath-Regular.ttf",
    "Symbola*.ttf",  # monochrome emoji (Unicode 13) and the symbols Noto lacks
    "NotoMusic-Regular.ttf",
    "NotoSerif[A-Z]*-Regular.ttf",  # scripts with no sans cut
)
_NOT_A_SCRIPT = re.compile(r"NotoSans(Display|Mono|Symbols2?|Math|CJK\w*)-")
CJK_TTC_INDEX = 2  # NotoSansCJK-Regular.ttc holds JP, KR, SC, TC, HK (then the Mono cuts): 2 is SC

# A file's pages are all decoded before any is stored: bound what a small file can make us decode. A PDF
# can list one page object 100,000 times in 600 kB; Pillow refuses images over twice MAX_IMAGE_PIXELS but
# only warns (and decodes) between once and twice, so a 97 kB PNG would decode to 10,000 x 10,000 pixels.
MAX_FILE_PAGES = 1000  # pages of a PDF, frames of a TIFF
INK = 224  # a grey darker than this is ink (a line's edges, for reading one line alone)
MAX_PAGE_PIXELS = 89_478_485  # Pillow's MAX_IMAGE_PIXELS default: a page scanned at 9,000 x 9,000 fits

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # category Cc except \t \n \r
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _font_dirs() -> list[str]:
    import matplotlib

    return [os.path.join(matplotlib.get_data_path(), "fonts", "ttf"), "/usr/share/fonts"]


@functools.cache
def _find_font(name: str) -> str | None:
    for folder in _font_dirs():
        found = sorted(glob.glob(os.path.join(folder, "**", name), recursive=True))
        if found:
            return found[0]
    return None


@functools.cache
def fallback_fonts() -> tuple[_Font, ...]:
    """The installed fonts of ``FALLBACK_FONT_GLOBS`` in chain order (cached: the folders are walked once)."""
    installed: dict[str, str] = {}  # file name -> path; the first folder (then the first path) wins
    for folder in FONT_DIRS:
        for root, dirs, names in sorted(os.walk(os.path.expanduser(folder))):
            dirs.sort()
            for name in names:
                installed.setdefault(name, os.path.join(root, name))
    files: list[str] = []
    for pattern in FALLBACK_FONT_GLOBS:
        for name in sorted(fnmatch.filter(installed, pattern)):
            if installed[name] not in files and not (
                pattern.startswith("NotoSans[") and _NOT_A_SCRIPT.match(name)
            ):
                files.append(installed[name])
    cjk = [f for f in files if os.path.basename(f).startswith("NotoSansCJK")]
    files = [f for f in files if f not in cjk[1:]]  # one CJK cut is enough: the first found
    return tuple(_Font(f, _ttc_index(f)) for f in files)


def _ttc_index(path: str) -> int:
    if not path.lower().endswith(".ttc"):
        return 0
    from fontTools.ttLib import TTCollection

    with TTCollection(path, lazy=True) as collection:
        return min(CJK_TTC_INDEX, len(collection.fonts) - 1)


@functools.cache
def _coverage(path: str, index: int) -> frozenset[int]:
    """Code points the font's cmap maps (cached per process: a CJK cmap takes ~0.3 s to read)."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=index, lazy=True) as font:
            return frozenset(font.getBestCmap() or ())
    except Exception as e:  # fontTools raises a zoo of errors (TTLibError, struct.error, ...) on bad files
        raise InvalidInput(f"cannot read font {path!r}: {e}") from None


@functools.cache
def _cells(ch: str) -> int:
    """Grid cells a character takes: 0 for marks and invisible format characters, 2 for wide ones."""
    if unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _invisible(ch: str) -> bool:
    """Format characters (ZWJ, soft hyphen, BOM) and variation selectors: no glyph, nothing drawn."""
    return (
        unicodedata.category(ch) == "Cf" or "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef"
    )


def stand_in(ch: str) -> str:
    """The visible stand-in drawn for a character no font has: ``[U+1FAE8 SHAKING FACE]``, ``[U+E000]``."""
    name = unicodedata.name(ch, "")
    return f"[U+{ord(ch):04X} {name}]" if name else f"[U+{ord(ch):04X}]"


STAND_INS = "_stand_ins"  # a memory's metadata key: {stand-in drawn: character no font has} (see prepare)


def restore(text: str, stand_ins: dict[str, str] | None) -> str:
    """``text`` with the stand-ins ``Renderer.prepare`` recorded turned back into their characters."""
    for shown_as, ch in (stand_ins or {}).items():
        text = text.replace(shown_as, ch)
    return text


def _width(text: str) -> int:
    return len(text) if text.isascii() else sum(_cells(c) for c in text)


def _fit(s: str, pos: int, cells: int) -> int:
    """Largest ``end`` with ``s[pos:end]`` at most ``cells`` wide (zero-width characters always fit)."""
    if s.isascii():
        return min(len(s), pos + cells)
    used = 0
    end = pos
    while end < len(s):
        used += _cells(s[end])
        if used > cells:
            break
        end += 1
    return end


@dataclass(frozen=True)
class Line:
    """One drawn line. ``text[label_len:]`` is content from the item's text; ``join`` is what stands between
    this line's content and the next line's in that text: " " (soft wrap at a space), "" (hard wrap inside
    a word) or "\\n" (a newline in the source, and always on an item's last line)."""

    text: str
    item: int
    join: str
    label_len: int = 0


@dataclass(frozen=True)
class Span:
    """Where one item landed: lines ``[line_start, line_end)`` of ``page`` show the item's
    ``text[char_start:char_end]`` (an item continued on another page has one span per page)."""

    item: int
    page: int
    line_start: int
    line_end: int
    char_start: int
    char_end: int


@dataclass(frozen=True)
class _Font:
    path: str
    index: int


class Renderer:
    """Validates, lays out and draws text for one ``RenderConfig``. Deterministic: same input, same pixels."""

    def __init__(self, config: RenderConfig) -> None:
        self.config = config
        primary = config.font_path or _find_font("DejaVuSansMono.ttf")
        if primary is None:
            raise InvalidInput(
                "DejaVu Sans Mono not found (it ships with matplotlib); set RenderConfig.font_path"
            )
        specs = [_Font(primary, 0)]
        for path in config.fallback_font_paths:
            specs.append(_Font(path, 0))
        sans = _find_font("DejaVuSans.ttf")
        if sans is not None:
            specs.append(_Font(sans, 0))
        specs.extend(fallback_fonts())
        for spec in specs:
            if not os.path.isfile(spec.path):
                raise InvalidInput(f"font file not found: {spec.path!r}")
        self._specs = specs
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}
        self._which: dict[str, int] = {}  # character -> index into self._specs, -1: no font has it
        self._tiles: dict[tuple[str, int], np.ndarray] = {}  # (character, cells) -> coverage tile

        font = self._font(0)
        ascent, descent = font.getmetrics()
        # The hinted advance: what FreeType actually draws, a whole number of pixels (16 px DejaVu Sans
        # Mono: 9.63 unhinted -> 10 drawn).
        self.cell_width = max(1, round(font.getlength("M")))
        self.baseline = max(0, (config.line_height - ascent - descent) // 2) + ascent
        self.columns = (config.page_side - 2 * config.margin) // self.cell_width
        self.lines_per_page = config.lines_per_page
        if self.columns < 2:  # a wide character needs two cells on a fresh line
            raise InvalidInput(
                f"RenderConfig leaves {self.columns} column(s) of {self.cell_width}px on a "
                f"{config.page_side}px page; at least 2 are needed"
            )
        log.debug("renderer: %d columns x %d lines, fonts %s", self.columns, self.lines_per_page, specs)

    def _font(self, index: int) -> ImageFont.FreeTypeFont:
        font = self._fonts.get(index)
        if font is None:
            spec = self._specs[index]
            # BASIC layout: no shaping library involved, so geometry is the same wherever Pillow runs.
            try:
                font = ImageFont.truetype(
                    spec.path, self.config.font_size, index=spec.index, layout_engine=ImageFont.Layout.BASIC
                )
            except OSError as e:
                raise InvalidInput(f"cannot load font {spec.path!r}: {e}") from None
            self._fonts[index] = font
        return font

    def _font_for(self, ch: str) -> int:
        which = self._which.get(ch)
        if which is None:
            which = next((i for i, s in enumerate(self._specs) if ord(ch) in _coverage(s.path, s.index)), -1)
            self._which[ch] = which
        return which

    # -- validation ----------------------------------------------------------------------------------------

    def normalise(self, text: str) -> str:
        """The text as it will be stored and drawn (see ``prepare``), stand-ins in place."""
        return self.prepare(text)[0]

    def prepare(self, text: str) -> tuple[str, dict[str, str]]:
        """``(normalised text, stand-ins)``, or ``InvalidInput`` naming what is wrong.

        Rejects lone surrogates and control characters other than tab and newline (``UnrenderableText``
        for a value that is not a str at all). Then: CRLF and CR become LF, tabs are expanded to
        ``tab_size`` tab stops, trailing whitespace is stripped from every line, and blank lines at the
        start and end are dropped. A character no font in the chain can draw (a private-use code point, an
        emoji newer than the fonts) is replaced by a visible stand-in, ``[U+1FAE8 SHAKING FACE]``
        (``[U+E000]`` when it has no name); the returned mapping is ``{stand-in: character}``, so the
        caller can record it and nothing is lost silently. Never refuses valid text.
        """
        if not isinstance(text, str):
            raise UnrenderableText(text)
        bad = _SURROGATE.search(text)
        if bad:
            raise InvalidInput(
                f"text holds a lone surrogate U+{ord(bad.group()):04X} at position {bad.start()} "
                "(not valid Unicode; was it decoded with errors='surrogateescape'?)"
            )
        found = [(m.start(), m.group()) for m in _CONTROL.finditer(text)]
        if found:
            shown = ", ".join(f"U+{ord(c):04X} at position {i}" for i, c in found[:10])
            raise InvalidInput(
                f"text holds {len(found)} control character(s) ({shown}); only \\n and \\t are allowed"
            )
        unix = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(self.config.tab_size)
        lines = [line.rstrip() for line in unix.split("\n")]
        kept = [i for i, line in enumerate(lines) if line]
        if not kept:
            raise InvalidInput(f"text is empty or only whitespace: {text[:40]!r}")
        normalised = "\n".join(lines[kept[0] : kept[-1] + 1])
        missing = [c for c in dict.fromkeys(normalised) if c != "\n" and self._missing(c)]
        stand_ins = {stand_in(c): c for c in missing}
        for shown_as, c in stand_ins.items():
            normalised = normalised.replace(c, shown_as)
        return normalised, stand_ins

    def _missing(self, ch: str) -> bool:
        return self._font_for(ch) < 0 and not _invisible(ch) and not ch.isspace()  # spaces need no glyph

    # -- layout --------------------------------------------------------------------------------------------

    def layout(self, items: Sequence[tuple[str | None, str]]) -> tuple[list[list[Line]], list[Span]]:
        """Pack ``(speaker, normalised text)`` items into pages of word-wrapped lines.

        Items follow one another line after line and may continue onto the next page (one span per page).
        A line breaks at the last space that lets it fit; that one space becomes the join and is not
        drawn (any other spaces of a run stay on the lines, so nothing is lost). A line with no space to
        break at (a word longer than a line, or only indentation before the space) is cut where it is full
        (join ""). The invariant::

            "".join(ln.text[ln.label_len:] + ln.join for ln in item_lines)[:-1] == text

        holds for every item, and ``text[char_start:char_end]`` is exactly what a span's lines show.
        A line depends only on the text from its start to one character past its end, so laying out
        ``text[char_start:char_end]`` alone (labelled if ``char_start == 0``) redraws a span's lines exactly:
        pages can be re-rendered, or an open page repacked, from their spans.
        """
        flat: list[tuple[Line, int, int]] = []  # (line, char_start, char_end)
        for number, (speaker, text) in enumerate(items):
            if not isinstance(text, str):
                raise InvalidInput(f"item {number} text must be a str, got {type(text).__name__}")
            label = ""
            if speaker is not None and self.config.speaker_labels:
                if not isinstance(speaker, str) or "\n" in speaker:
                    raise InvalidInput(f"item {number} speaker must be a one-line str, got {speaker!r}")
                label = self._label(speaker)
            flat.extend(self._wrap(number, label, text))

        pages: list[list[Line]] = []
        spans: list[Span] = []
        for at in range(0, len(flat), self.lines_per_page):
            page = flat[at : at + self.lines_per_page]
            pages.append([line for line, _, _ in page])
            start = 0
            for i in range(1, len(page) + 1):
                if i == len(page) or page[i][0].item != page[start][0].item:
                    spans.append(
                        Span(
                            item=page[start][0].item,
                            page=len(pages) - 1,
                            line_start=start,
                            line_end=i,
                            char_start=page[start][1],
                            char_end=page[i - 1][2],
                        )
                    )
                    start = i
        return pages, spans

    def _wrap(self, item: int, label: str, text: str) -> list[tuple[Line, int, int]]:
        out: list[tuple[Line, int, int]] = []
        base = 0
        for s in text.split("\n"):
            pos = 0
            while True:
                head = label if not out else ""
                room = self.columns - _width(head)
                end = _fit(s, pos, room)
                if end == len(s):
                    join = "\n"
                    cut = next_pos = end
                else:
                    brk = s.rfind(" ", pos, end + 1)  # a space at `end` (the first char left over) will do
                    if brk > pos and s[pos:brk].strip(" "):
                        join, cut, next_pos = " ", brk, brk + 1
                    else:  # no space to break at, or only indentation before it
                        join, cut, next_pos = "", end, end
                    assert end > pos, "every line has room for a wide character"
                line = Line(text=head + s[pos:cut], item=item, join=join, label_len=len(head))
                out.append((line, base + pos, base + cut))
                if join == "\n":
                    break
                pos = next_pos
            base += len(s) + 1
        return out

    def _label(self, speaker: str) -> str:
        """``"speaker: "``; a name wider than half a line is cut ("a-very-lo…: "), and a page too narrow for
        labels (under 8 columns) gets none. So the first line always holds text beside its label, and
        ``char_start == 0`` marks an item's first span."""
        label = f"{speaker}: "
        widest = self.columns // 2
        if _width(label) <= widest:
            return label
        if widest < 4:
            return ""
        return speaker[: _fit(speaker, 0, widest - 3)] + "…: "

    def paginate_document(self, text: str) -> tuple[list[list[Line]], list[Span]]:
        """``layout([(None, text)])``: one unlabelled item. ``text`` must be ``normalise``'s output."""
        return self.layout([(None, text)])

    # -- drawing -------------------------------------------------------------------------------------------

    def draw(self, lines: Sequence[Line] | Sequence[str]) -> Image.Image:
        """A ``page_side`` square grayscale ("L") page: black text on white, one line per band."""
        cfg = self.config
        if len(lines) > self.lines_per_page:
            raise InvalidInput(f"{len(lines)} lines do not fit a page of {self.lines_per_page}")
        page = np.full((cfg.page_side, cfg.page_side), 255, dtype=np.uint8)
        for i, line in enumerate(lines):
            text = line.text if isinstance(line, Line) else line
            if not isinstance(text, str):
                raise InvalidInput(f"line {i} must be a Line or a str, got {type(line).__name__}")
            if not text:
                continue
            if "\n" in text or _width(text) > self.columns:
                raise InvalidInput(f"line {i} does not fit one line of {self.columns} columns: {text!r}")
            strip = self._strip(text)
            if strip is None:
                continue
            top = cfg.margin + i * cfg.line_height
            page[top : top + cfg.line_height, cfg.margin : cfg.margin + strip.shape[1]] = 255 - strip
        return Image.fromarray(page)

    def _strip(self, text: str) -> np.ndarray | None:
        """Ink coverage of one line, (line_height, cells * cell_width) uint8; None if nothing is drawn."""
        tiles: list[np.ndarray] = []
        pending: list[str] = []  # marks with no base character yet (a line starting with a mark)
        for ch in text:
            cells = _cells(ch)
            if cells == 0:
                if _invisible(ch):
                    continue
                if not tiles:
                    pending.append(ch)
                    continue
                tiles[-1] = np.maximum(tiles[-1], self._tile(ch, tiles[-1].shape[1] // self.cell_width))
                continue
            tile = self._tile(ch, cells)
            for mark in pending:
                tile = np.maximum(tile, self._tile(mark, cells))
            pending.clear()
            tiles.append(tile)
        return np.concatenate(tiles, axis=1) if tiles else None

    def _tile(self, ch: str, cells: int) -> np.ndarray:
        """Ink coverage of ``ch`` in a ``cells``-wide cell, clipped to the line band (cached)."""
        tile = self._tiles.get((ch, cells))
        if tile is not None:
            return tile
        cw, height = self.cell_width, self.config.line_height
        width = cells * cw
        tile = np.zeros((height, width), dtype=np.uint8)
        which = self._font_for(ch)
        if which < 0 and not ch.isspace():  # only a label can get here (text has stand-ins): a hollow box
            tile[self.baseline - self.config.font_size * 2 // 3 : self.baseline, 1 : width - 1] = 255
            tile[self.baseline - self.config.font_size * 2 // 3 + 1 : self.baseline - 1, 2 : width - 2] = 0
        elif not ch.isspace():
            font = self._font(which)
            if which == 0 and cells == 1 and _cells(ch) == 1 and round(font.getlength(ch)) == cw:
                # A primary-font glyph on its own advance: drawn exactly as the font designs it.
                scratch = Image.new("L", (width, height), 0)
                ImageDraw.Draw(scratch).text((0, self.baseline), ch, font=font, fill=255, anchor="ls")
                tile = np.asarray(scratch, dtype=np.uint8).copy()
            else:
                # Fallback glyphs, wide glyphs and marks: the ink is centred in the cell(s).
                pad = 2 * self.config.font_size
                scratch = Image.new("L", (width + 2 * pad, height), 0)
                ImageDraw.Draw(scratch).text((pad, self.baseline), ch, font=font, fill=255, anchor="ls")
                box = scratch.getbbox()
                if box is not None:
                    ink = np.asarray(scratch, dtype=np.uint8)[:, box[0] : box[2]]
                    if ink.shape[1] > width:  # wider than its cells: keep the middle
                        cut = (ink.shape[1] - width) // 2
                        ink = ink[:, cut : cut + width]
                    left = (width - ink.shape[1]) // 2
                    tile[:, left : left + ink.shape[1]] = ink
        tile.flags.writeable = False
        self._tiles[(ch, cells)] = tile
        return tile

    # -- geometry ------------------------------------------------------------------------------------------

    def line_top(self, index: int, side: int) -> float:
        """Top of line ``index``'s band in an image of ``side`` pixels (a page scaled from ``page_side``)."""
        cfg = self.config
        return (cfg.margin + index * cfg.line_height) * side / cfg.page_side

    def line_at(self, y: float, side: int) -> int:
        """The line whose band holds ``y`` in an image of ``side`` pixels, clamped to the page's lines."""
        cfg = self.config
        at = (y * cfg.page_side / side - cfg.margin) / cfg.line_height
        return min(max(math.floor(at + 1e-9), 0), self.lines_per_page - 1)  # 1e-9: a band's top is its own

    def band_rows(self, line_start: int, line_end: int, side: int) -> tuple[int, int]:
        """The pixel rows ``[top, bottom)`` that lines ``[line_start, line_end)`` touch in an image of
        ``side`` pixels (at a downsampled side, a row shared with a neighbouring line is included)."""
        top = math.floor(self.line_top(line_start, side) + 1e-9)
        return top, min(math.ceil(self.line_top(line_end, side) - 1e-9), side)

    def line_px(self, side: int) -> float:
        """How tall a line is, in pixels, on a page shown at ``side`` pixels."""
        return self.config.line_height * side / self.config.page_side

    def line_band(
        self, image: Image.Image, index: int, *, height: int | None = None, cell_px: float | None = None
    ) -> Image.Image | None:
        """Line ``index`` of a page (at any side): its band, every pixel row it touches, cut to its ink with
        a cell's margin each side; None when nothing is drawn on it. With ``height`` and ``cell_px``, the
        band is scaled in one step (bilinear) to ``height`` pixels tall with character cells ``cell_px``
        wide."""
        side = image.height
        top, bottom = self.band_rows(index, index + 1, side)
        band = np.asarray(image.crop((0, top, image.width, bottom)).convert("L"))
        ink = np.flatnonzero(band.min(axis=0) < INK)
        if ink.size == 0:
            return None
        cell = self.cell_width * side / self.config.page_side
        pad = max(2, round(cell))
        out = image.crop((max(int(ink[0]) - pad, 0), top, min(int(ink[-1]) + 1 + pad, image.width), bottom))
        if height is not None and cell_px is not None:
            out = out.resize((max(1, round(out.width * cell_px / cell)), height), Image.Resampling.BILINEAR)
        return out

    def redact(self, image: Image.Image, line_start: int, line_end: int) -> Image.Image:
        """A copy of a page (at any side) with the bands of lines ``[line_start, line_end)`` painted white.

        Covers every pixel row the bands touch, so at a downsampled side a row shared with a neighbouring
        line is blanked too: nothing of the removed lines survives.
        """
        if not 0 <= line_start <= line_end <= self.lines_per_page:
            raise InvalidInput(
                f"lines [{line_start}, {line_end}) are not within a page of {self.lines_per_page} lines"
            )
        out = image.copy()
        if line_start == line_end:
            return out
        top, bottom = self.band_rows(line_start, line_end, image.height)
        ImageDraw.Draw(out).rectangle((0, top, image.width - 1, bottom - 1), fill="white")
        return out


def load_page_file(path: str | os.PathLike[str], side: int) -> list[Image.Image]:
    """Page images of a PDF (one per page) or an image file (one; a multi-page TIFF gives one per frame).

    Each page is scaled so its longer side is ``side`` and centred on a white ``side`` square, grayscale.
    """
    file = Path(path)
    if not file.exists():
        raise InvalidInput(f"no such file: {str(file)!r}")
    if not file.is_file():
        raise InvalidInput(f"not a file: {str(file)!r}")
    with open(file, "rb") as f:
        is_pdf = f.read(5) == b"%PDF-"
    pages = _pdf_pages(file, side) if is_pdf else _image_pages(file)
    if not pages:
        raise InvalidInput(f"{str(file)!r} has no pages")
    return [_fit_square(page, side) for page in pages]


def _pdf_pages(file: Path, side: int) -> list[Image.Image]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(file))
    except pdfium.PdfiumError as e:
        raise InvalidInput(f"cannot read PDF {str(file)!r}: {e}") from None
    out: list[Image.Image] = []
    try:
        if len(pdf) > MAX_FILE_PAGES:
            raise InvalidInput(f"PDF {str(file)!r} has {len(pdf)} pages, at most {MAX_FILE_PAGES} allowed")
        for i in range(len(pdf)):
            page = pdf[i]
            width, height = page.get_size()  # points
            out.append(page.render(scale=side / max(width, height, 1e-6)).to_pil())
            page.close()
        return out
    except pdfium.PdfiumError as e:  # a page the document lists but cannot load or draw
        raise InvalidInput(f"cannot read PDF {str(file)!r}: page {len(out) + 1}: {e}") from None
    finally:
        pdf.close()


def _image_pages(file: Path) -> list[Image.Image]:
    try:
        with Image.open(file) as image:
            frame_count = getattr(image, "n_frames", 1)
            if image.format == "TIFF" and frame_count > MAX_FILE_PAGES:
                raise InvalidInput(
                    f"{str(file)!r} has {frame_count} frames, at most {MAX_FILE_PAGES} allowed"
                )
            frames = ImageSequence.Iterator(image) if image.format == "TIFF" else [image]
            out = []
            for frame in frames:
                if frame.width * frame.height > MAX_PAGE_PIXELS:  # checked before a pixel is decoded
                    raise InvalidInput(
                        f"{str(file)!r} is {frame.width} x {frame.height} pixels, at most "
                        f"{MAX_PAGE_PIXELS:,} allowed (a decompression bomb?)"
                    )
                frame = ImageOps.exif_transpose(frame)
                if frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info:
                    rgba = frame.convert("RGBA")  # transparent pixels are paper, not black
                    frame = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
                out.append(frame.convert("L"))
            return out
    except InvalidInput:
        raise
    except Exception as e:  # Pillow's plugins raise a zoo on damaged files (OSError, KeyError, TypeError...)
        raise InvalidInput(f"cannot read {str(file)!r} as an image or PDF: {e}") from None


def _fit_square(image: Image.Image, side: int) -> Image.Image:
    image = image.convert("L")
    scale = side / max(image.size)
    size = (max(1, min(side, round(image.width * scale))), max(1, min(side, round(image.height * scale))))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (side, side), 255)
    canvas.paste(image, ((side - size[0]) // 2, (side - size[1]) // 2))
    return canvas
