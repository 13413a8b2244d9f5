"""Renderer: validation, the layout's reconstruction invariant, drawing, geometry, redaction, page files.

Real fonts (DejaVu from matplotlib), no mocks; the whole file runs in a few seconds.
"""

from __future__ import annotations

import math
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from optical_memory.config import RenderConfig
from optical_memory.errors import InvalidInput, UnrenderableText
from optical_memory.render import Line, Renderer, Span, fallback_fonts, load_page_file, restore, stand_in

# Small pages wrap and paginate a lot: 20 columns x 9 lines.
NARROW = RenderConfig(page_side=160, font_size=12, line_height=15, margin=8)
TINY = RenderConfig(page_side=256, font_size=12, line_height=15, margin=8)
PROSE = (
    "Late September is a lovely time to go: the summer crowds thin out, the sea is still warm, and the "
    "vineyards in the Douro valley are in the middle of the harvest. With seven days I would suggest four "
    "nights in Lisbon and three in Porto.\n\nThe train between them takes a little under three hours."
)


@pytest.fixture(scope="module")
def r() -> Renderer:
    return Renderer(RenderConfig())


@pytest.fixture(scope="module")
def narrow() -> Renderer:
    return Renderer(NARROW)


def rebuild(lines: list[Line]) -> str:
    """The reconstruction rule: content of each line plus its join, final newline dropped."""
    out = "".join(ln.text[ln.label_len :] + ln.join for ln in lines)
    assert out.endswith("\n")
    return out[:-1]


def cells(text: str) -> int:
    return sum(
        0
        if unicodedata.category(c) in ("Mn", "Me", "Cf")
        else 2
        if unicodedata.east_asian_width(c) in ("W", "F")
        else 1
        for c in text
    )


def check_layout(renderer: Renderer, items: list[tuple[str | None, str]]) -> None:
    """Every invariant layout promises, for any items."""
    pages, spans = renderer.layout(items)
    flat = [ln for page in pages for ln in page]
    assert all(len(page) <= renderer.lines_per_page for page in pages)
    assert all(len(page) == renderer.lines_per_page for page in pages[:-1])
    assert all(cells(ln.text) <= renderer.columns for ln in flat)
    assert [ln.item for ln in flat] == sorted(ln.item for ln in flat)
    for number, (speaker, text) in enumerate(items):
        mine = [ln for ln in flat if ln.item == number]
        assert rebuild(mine) == text
        assert all(ln.join in (" ", "", "\n") for ln in mine)
        assert mine[-1].join == "\n"
        assert all(ln.label_len == 0 for ln in mine[1:])
        if speaker is not None:  # a long name is cut: "a-very-lo…: "
            label = mine[0].text[: mine[0].label_len]
            assert label.endswith(": ") and speaker.startswith(label.removesuffix(": ").removesuffix("…"))
        item_spans = [sp for sp in spans if sp.item == number]
        assert item_spans[0].char_start == 0 and item_spans[-1].char_end == len(text)
        # only the first span starts at char 0: the store restores the label by that
        assert all(sp.char_start > 0 for sp in item_spans[1:])
        assert [sp.page for sp in item_spans] == sorted({sp.page for sp in item_spans})
        shown = ""
        for sp in item_spans:
            on_page = pages[sp.page][sp.line_start : sp.line_end]
            assert all(ln.item == number for ln in on_page)
            last = Line(on_page[-1].text, number, "\n", on_page[-1].label_len)
            assert rebuild([*on_page[:-1], last]) == text[sp.char_start : sp.char_end]
            shown += text[sp.char_start : sp.char_end] + on_page[-1].join
            # a span laid out alone redraws its lines (how the store re-renders and repacks pages)
            alone, _ = renderer.layout(
                [(speaker if sp.char_start == 0 else None, text[sp.char_start : sp.char_end])]
            )
            assert [ln.text for page in alone for ln in page] == [ln.text for ln in on_page]
        assert shown[:-1] == text


# -- normalise -----------------------------------------------------------------------------------------


def test_normalise_rewrites_newlines_tabs_and_trailing_space(r: Renderer) -> None:
    assert r.normalise("\n\n  a\tb  \r\nc\rd\n\n \n") == "  a b\nc\nd"
    assert r.normalise("x\n\n\ny") == "x\n\n\ny"  # blank lines inside the text survive


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", ["empty"]),
        (" \n\t \r\n", ["whitespace", "' \\n"]),
        (b"bytes", ["str", "bytes"]),
        (None, ["str", "NoneType"]),
        ("ring\x07bell", ["U+0007", "position 4"]),
        ("ok\ud800no", ["surrogate", "U+D800", "position 2"]),
    ],
)
def test_normalise_rejects_bad_input_naming_it(r: Renderer, value: object, words: list[str]) -> None:
    with pytest.raises(InvalidInput) as e:
        r.normalise(value)  # type: ignore[arg-type]
    for word in words:
        assert word in str(e.value)


def test_characters_no_font_has_become_visible_stand_ins(r: Renderer) -> None:
    text, stand_ins = r.prepare("private \U0010fffd use and \U0010fffd again, \ue000 too")
    assert text == "private [U+10FFFD] use and [U+10FFFD] again, [U+E000] too"
    assert stand_ins == {"[U+10FFFD]": "\U0010fffd", "[U+E000]": "\ue000"}
    assert restore(text, stand_ins) == "private \U0010fffd use and \U0010fffd again, \ue000 too"
    assert stand_in("\u2603") == "[U+2603 SNOWMAN]"  # a named character shows its name
    assert r.normalise(text) == text  # stand-ins are drawable text themselves


def test_values_that_are_not_text_are_unrenderable(r: Renderer) -> None:
    for value in (b"bytes", None, 42, ["a"]):
        with pytest.raises(UnrenderableText, match=type(value).__name__) as e:
            r.normalise(value)  # type: ignore[arg-type]
        assert e.value.value is value and isinstance(e.value, InvalidInput)


# Real chat text: emoji (with skin tones, ZWJ sequences, flags, variation selectors), CJK, kana, Hangul,
# Devanagari, Arabic, Hebrew, Greek, Cyrillic, math and dingbats, and an agent's tool-call JSON.
CHAT = [
    ("user", "thanks 👍🏽 that fixed it!! 🎉🎉 ❤️ 👨‍👩‍👧 🇯🇵 ✔︎"),
    ("assistant", "日本語の説明です。ひらがな、カタカナ、漢字 — 中文也可以 / 한국어도 됩니다"),
    ("user", "नमस्ते दुनिया · مرحبا بالعالم · שלום עולם · Καλημέρα · Привет"),
    ("assistant", '{"tool": "search", "args": {"q": "∑ ∫ ≠ ≤ ★ ☃ ⚡ → ✓"}} 🤖'),
    ("user", "😂😂😂 lol 🙏 🔥 💯"),
]
NEWER_THAN_THE_FONTS = "🥲 🫠"  # Unicode 13 and 14 emoji: Debian's Symbola 2.60 stops at Unicode 10


@pytest.mark.skipif(not fallback_fonts(), reason="Debian's Noto/Symbola fonts are not installed (make fonts)")
def test_mixed_script_chat_is_drawn_by_real_fonts_not_stand_ins(r: Renderer) -> None:
    drawn = {c for _, text in CHAT for c in text if not c.isspace() and not r._missing(c)}
    missing = [c for _, text in CHAT for c in text if r._missing(c)]
    assert not missing, [f"U+{ord(c):04X}" for c in missing]
    fonts = {os.path.basename(r._specs[r._font_for(c)].path) for c in drawn if r._font_for(c) >= 0}
    assert {"NotoSansCJK-Regular.ttc", "NotoSansDevanagari-Regular.ttf"} <= fonts
    assert any(f.startswith("Symbola") or f.startswith("NotoSansSymbols") for f in fonts)  # emoji
    text, stand_ins = r.prepare(NEWER_THAN_THE_FONTS)
    assert text == "[U+1F972 SMILING FACE WITH TEAR] [U+1FAE0 MELTING FACE]" and len(stand_ins) == 2


def test_mixed_script_chat_renders_every_turn_deterministically(r: Renderer) -> None:
    items = [(who, r.normalise(text)) for who, text in CHAT]
    pages, spans = r.layout(items)
    assert sorted({sp.item for sp in spans}) == list(range(len(CHAT)))
    first = [np.asarray(r.draw(page)) for page in pages]
    again = Renderer(r.config)  # a fresh renderer: its own tile cache, same pixels
    assert all(np.array_equal(a, np.asarray(again.draw(page))) for a, page in zip(first, pages, strict=True))
    for _who, text in items:  # every turn leaves ink on its own line band
        assert text and (255 - np.asarray(r.draw([text[: r.columns // 2]]))).sum() > 0


def test_normalise_accepts_invisible_format_characters(r: Renderer) -> None:
    text = "soft\u00adhyphen, zero\u200bwidth, heart \u2764\ufe0f, ideographic\u3000space"
    assert r.normalise(text) == text
    r.draw([text])


# -- layout --------------------------------------------------------------------------------------------

ALPHABET = st.sampled_from(
    [chr(c) for c in range(0x20, 0x7F)]
    + ["\n"] * 8
    + [" "] * 16
    + list("àéîõüßÀÉÑçøæ¡¿«»")
    + list("αβγδεζηθλμξπσωΩΣΔ")
    + list("абвгдежзийклмнопрстуфхцчшщыэюяЖЩЯ")
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(ALPHABET, min_size=1, max_size=120), min_size=1, max_size=4),
    speakers=st.lists(st.sampled_from([None, "user", "assistant", "a-very-long-role-name"]), min_size=4),
)
def test_layout_reconstructs_every_item_exactly(
    narrow: Renderer, texts: list[str], speakers: list[str | None]
) -> None:
    items = []
    for text, speaker in zip(texts, speakers, strict=False):
        try:
            items.append((speaker, narrow.normalise(text)))
        except InvalidInput:
            continue
    assume(items)
    check_layout(narrow, items)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.sampled_from(list("ab  漢字\u0301\u200d\n")), max_size=120))
def test_layout_reconstructs_wide_and_zero_width_text(narrow: Renderer, text: str) -> None:
    # layout itself takes any str (fonts are normalise's business), even an empty one
    check_layout(narrow, [("user", text), (None, text)])


@settings(max_examples=50, deadline=None)
@given(st.text(ALPHABET, min_size=1, max_size=200))
def test_normalise_is_idempotent(text: str) -> None:
    renderer = Renderer(NARROW)
    try:
        once = renderer.normalise(text)
    except InvalidInput:
        return
    assert renderer.normalise(once) == once


def test_layout_wraps_at_spaces_and_keeps_extra_spaces(narrow: Renderer) -> None:
    assert narrow.columns == 20
    pages, _ = narrow.layout([(None, "the quick brown fox jumps  over   the lazy dog")])
    assert [(ln.text, ln.join) for ln in pages[0]] == [
        ("the quick brown fox", " "),
        ("jumps  over   the", " "),
        ("lazy dog", "\n"),
    ]


def test_layout_hard_wraps_long_words(narrow: Renderer) -> None:
    pages, _ = narrow.layout([(None, "see " + "x" * 45 + " end")])
    assert [(ln.text, ln.join) for ln in pages[0]] == [
        ("see", " "),
        ("x" * 20, ""),
        ("x" * 20, ""),
        ("xxxxx end", "\n"),
    ]
    # indentation is not a place to break: the line is cut instead
    pages, _ = narrow.layout([(None, "    " + "y" * 30)])
    assert [(ln.text, ln.join) for ln in pages[0]] == [("    " + "y" * 16, ""), ("y" * 14, "\n")]


def test_layout_keeps_blank_lines(narrow: Renderer) -> None:
    pages, spans = narrow.layout([("user", "one\n\ntwo"), (None, "x\n\n\ny")])
    assert [ln.text for ln in pages[0]] == ["user: one", "", "two", "x", "", "", "y"]
    assert [(sp.line_start, sp.line_end, sp.char_start, sp.char_end) for sp in spans] == [
        (0, 3, 0, 8),
        (3, 7, 0, 5),
    ]


def test_layout_labels_first_line_only(r: Renderer) -> None:
    pages, _ = r.layout([("user", PROSE), ("assistant", "ok"), (None, "no label")])
    lines = pages[0]
    firsts = [ln for i, ln in enumerate(lines) if i == 0 or lines[i - 1].item != ln.item]
    assert [ln.text[: ln.label_len] for ln in firsts] == ["user: ", "assistant: ", ""]
    assert sum(1 for ln in lines if ln.label_len) == 2
    assert sum(1 for ln in lines if ln.text.startswith("user:")) == 1
    unlabelled = Renderer(RenderConfig(speaker_labels=False))
    pages, _ = unlabelled.layout([("user", PROSE)])
    assert all(ln.label_len == 0 for ln in pages[0])
    assert pages[0][0].text.startswith("Late September")


def test_layout_cuts_labels_wider_than_half_a_line(narrow: Renderer) -> None:
    pages, _ = narrow.layout([("r" * 30, "hello"), ("漢" * 10, "漢字")])
    assert [(ln.text, ln.join, ln.label_len) for ln in pages[0]] == [
        ("rrrrrrr…: hello", "\n", 10),
        ("漢漢漢…: 漢字", "\n", 6),
    ]


def test_item_spanning_pages_has_a_span_per_page(narrow: Renderer) -> None:
    text = narrow.normalise(" ".join(f"word{i:03d}" for i in range(60)))  # 60 x 8 chars: 30 lines
    pages, spans = narrow.layout([("user", "hi"), (None, text), ("assistant", "bye")])
    assert [len(p) for p in pages] == [9, 9, 9, 5]
    mine = [sp for sp in spans if sp.item == 1]
    assert [(sp.page, sp.line_start, sp.line_end) for sp in mine] == [
        (0, 1, 9),
        (1, 0, 9),
        (2, 0, 9),
        (3, 0, 4),
    ]
    # two 8-char words (16 chars with the joins) a line; the page breaks fall on soft wraps
    assert [sp.char_start for sp in mine] == [0, 16 * 8, 16 * 17, 16 * 26]
    assert [sp.char_end for sp in mine] == [16 * 8 - 1, 16 * 17 - 1, 16 * 26 - 1, len(text)]
    assert text[mine[1].char_start : mine[1].char_end].startswith("word016 word017")
    assert spans[-1] == Span(item=2, page=3, line_start=4, line_end=5, char_start=0, char_end=3)


def test_wide_characters_take_two_cells(r: Renderer) -> None:
    pages, _ = r.layout([(None, "漢" * 100)])
    per_line = r.columns // 2
    expected = [per_line] * (100 // per_line) + ([100 % per_line] if 100 % per_line else [])
    assert [len(ln.text) for ln in pages[0]] == expected
    pages, _ = r.layout([(None, "e\u0301" * r.columns)])  # combining marks take none
    assert len(pages[0]) == 1


def test_layout_is_deterministic_and_paginate_document_is_one_item(r: Renderer) -> None:
    text = r.normalise(PROSE * 20)
    assert r.layout([(None, text)]) == r.layout([(None, text)]) == r.paginate_document(text)


# -- drawing -------------------------------------------------------------------------------------------


def test_draw_is_deterministic(r: Renderer) -> None:
    pages, _ = r.layout([("user", r.normalise(PROSE * 4)), ("assistant", "Ωμέγα, Привет, café ☕")])
    first = r.draw(pages[0])
    assert (first.mode, first.size) == ("L", (1024, 1024))
    again = Renderer(RenderConfig()).draw(pages[0])  # fresh glyph cache
    assert first.tobytes() == again.tobytes() == r.draw([ln.text for ln in pages[0]]).tobytes()


def ink_columns(image: Image.Image, renderer: Renderer, line: int) -> np.ndarray:
    cfg = renderer.config
    top = cfg.margin + line * cfg.line_height
    band = np.asarray(image)[top : top + cfg.line_height]
    return np.flatnonzero((band < 128).any(axis=0))


def test_draw_puts_characters_on_the_cell_grid(r: Renderer) -> None:
    cw, m = r.cell_width, r.config.margin
    image = r.draw(["", "   |", "☕|", "e\u0301|", "W" * r.columns])
    assert (np.asarray(image)[: m + r.config.line_height] == 255).all()  # an empty line draws nothing
    bar = ink_columns(image, r, 1)
    assert bar.min() >= m + 3 * cw and bar.max() < m + 4 * cw
    wide = ink_columns(image, r, 2)  # "☕" takes cells 0-1, "|" cell 2
    assert wide.max() >= m + 2 * cw and wide[wide < m + 2 * cw].max() >= m + cw // 2
    mark = ink_columns(image, r, 3)  # the accent sits over the "e", the bar in the next cell
    assert mark[mark < m + cw].size and mark[mark >= m + cw].min() >= m + cw
    full = ink_columns(image, r, 4)
    assert full.max() < m + r.columns * cw <= r.config.page_side - m


def test_draw_rejects_what_does_not_fit(r: Renderer) -> None:
    with pytest.raises(InvalidInput, match="does not fit"):
        r.draw(["x" * (r.columns + 1)])
    too_many = r.lines_per_page + 1
    with pytest.raises(InvalidInput, match=f"{too_many} lines"):
        r.draw(["x"] * too_many)
    box = np.asarray(r.draw(["\U0010fffd"]))  # no font has it (a label can hold it): a hollow box, not a gap
    assert (box < 128).sum() > 0


# -- geometry and redaction ----------------------------------------------------------------------------


@pytest.mark.parametrize("side", [1024, 640, 256])
def test_line_top_and_line_at_are_inverse(r: Renderer, side: int) -> None:
    scale = side / r.config.page_side
    for index in range(r.lines_per_page):
        top = r.line_top(index, side)
        cfg = r.config
        assert top == pytest.approx((cfg.margin + cfg.line_height * index) * scale)
        assert r.line_at(top, side) == index
        assert r.line_at(top + (cfg.line_height - 0.1) * scale, side) == index
    assert r.line_at(0, side) == 0
    assert r.line_at(side, side) == r.lines_per_page - 1


@pytest.mark.parametrize("side", [1024, 640, 256])
def test_redact_blanks_exactly_the_band_of_those_lines(r: Renderer, side: int) -> None:
    lines = [("#" * r.columns)] * r.lines_per_page
    page = r.draw(lines).resize((side, side), Image.Resampling.LANCZOS)
    before = np.asarray(page)
    after = np.asarray(r.redact(page, 5, 9))
    top = math.floor(r.line_top(5, side))
    bottom = math.ceil(r.line_top(9, side))
    assert (after[top:bottom] == 255).all()
    assert (after[:top] == before[:top]).all() and (after[bottom:] == before[bottom:]).all()
    assert (before[top:bottom] < 128).any()
    assert np.array_equal(np.asarray(r.redact(page, 3, 3)), before)
    with pytest.raises(InvalidInput, match="not within a page"):
        r.redact(page, r.lines_per_page - 2, r.lines_per_page + 2)


# -- page files ----------------------------------------------------------------------------------------


def _drawing(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle((10, 10, size[0] - 11, size[1] - 11), fill="black")
    return image


def test_load_page_file_pdf(tmp_path: Path) -> None:
    path = tmp_path / "doc.pdf"
    first, second = _drawing((600, 300)), _drawing((200, 400))
    first.save(path, "PDF", resolution=72, save_all=True, append_images=[second])
    pages = load_page_file(path, 256)
    assert [(p.mode, p.size) for p in pages] == [("L", (256, 256))] * 2
    wide = np.asarray(pages[0])
    dark = np.flatnonzero((wide < 128).any(axis=1))
    # 600 x 300 fitted to 256 x 128, centred: white bands above and below
    assert dark.min() == pytest.approx(64 + 4, abs=2) and dark.max() == pytest.approx(191 - 4, abs=2)
    tall = np.asarray(pages[1])
    dark = np.flatnonzero((tall < 128).any(axis=0))
    assert dark.min() == pytest.approx(64 + 6, abs=2) and dark.max() == pytest.approx(191 - 6, abs=2)


def test_load_page_file_png_on_white(tmp_path: Path) -> None:
    path = tmp_path / "shot.png"
    image = Image.new("RGBA", (100, 50), (0, 0, 0, 0))  # transparent black is paper, not ink
    ImageDraw.Draw(image).rectangle((40, 20, 59, 29), fill=(0, 0, 0, 255))
    image.save(path)
    (page,) = load_page_file(str(path), 200)
    pixels = np.asarray(page)
    assert page.mode == "L" and page.size == (200, 200)
    assert pixels[0, 0] == 255 and pixels[100, 100] < 64
    assert (pixels[:50] == 255).all() and (pixels[150:] == 255).all()


def test_load_page_file_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"no such file.*missing\.png"):
        load_page_file(tmp_path / "missing.png", 256)
    notes = tmp_path / "notes.txt"
    notes.write_text("plain text is the store's business")
    with pytest.raises(InvalidInput, match=r"notes\.txt"):
        load_page_file(notes, 256)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 and then nothing")
    with pytest.raises(InvalidInput, match=r"broken\.pdf"):
        load_page_file(broken, 256)
    with pytest.raises(InvalidInput, match="not a file"):
        load_page_file(tmp_path, 256)
