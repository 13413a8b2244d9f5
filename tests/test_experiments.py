"""The forgetting experiment: its corpus, its metrics, one real tiny run, and its command line."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from optical_memory import experiments
from optical_memory.cli import main
from optical_memory.config import RenderConfig, vision_tokens
from optical_memory.errors import InvalidInput
from optical_memory.render import Renderer


def test_corpus_bins_hold_600_to_1300_tokens_and_fit_one_page(counter):
    renderer = Renderer(RenderConfig())
    bins = experiments.build_corpus(6, seed=1, renderer=renderer, counter=counter)
    assert len(bins) == 6 and len({b.text for b in bins}) == 6
    for b in bins:
        assert 600 <= b.tokens <= 1300 and b.tokens == counter.count(b.text)
        pages, _ = renderer.paginate_document(b.text)
        assert len(pages) == 1 and b.lines == len(pages[0]) <= renderer.lines_per_page
        assert b.text == renderer.normalise(b.text) and b.text.isascii()
    assert experiments.build_corpus(6, seed=1, counter=counter) == bins  # seeded
    assert experiments.build_corpus(2, seed=2, counter=counter)[0] != bins[0]
    assert "pydoc_data.topics" in experiments.CORPUS_SOURCE and "PSF" in experiments.CORPUS_LICENCE
    with pytest.raises(InvalidInput, match="the corpus holds"):
        experiments.build_corpus(10_000, counter=counter)


def test_char_precision_is_one_minus_normalised_edit_distance():
    assert experiments.char_precision("the cat sat", "the  cat\nsat ") == 1.0  # whitespace runs collapse
    assert experiments.char_precision("the cat sat", "") == 0.0
    assert experiments.char_precision("", "") == 1.0
    assert experiments.char_precision("abcdefghij", "abcdXfghij") == pytest.approx(0.9)  # 1 edit / 10
    assert experiments.char_precision("abcd", "abcdefgh") == pytest.approx(0.5)  # 4 insertions / max len 8
    assert experiments.char_precision("abc", "xyz") == 0.0


def test_lcs_and_token_scores():
    assert experiments.lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook pair
    assert experiments.lcs_length([1, 2, 3], []) == 0
    assert (
        experiments.lcs_length(list(range(200)), list(range(0, 200, 2))) == 100
    )  # wider than a machine word
    split = str.split  # words stand in for tokens
    assert experiments.token_scores("a b c d", "a b c d", split) == (1.0, 1.0)
    assert experiments.token_scores("a b c d", "", split) == (0.0, 0.0)
    assert experiments.token_scores("a b c d", "a x c", split) == (pytest.approx(2 / 3), 0.5)  # LCS "a c"


def test_shrink_chain_follows_the_ladder_and_checks_sides():
    page = Renderer(RenderConfig()).draw(["The forgetting ladder, shrunk one rung at a time."])
    images = experiments.shrink_chain(page, [1024, 512, 300])
    assert {s: im.size for s, im in images.items()} == {1024: (1024,) * 2, 512: (512,) * 2, 300: (300,) * 2}
    assert images[1024] is page
    via_640 = page.resize((640, 640), Image.Resampling.LANCZOS).resize((512, 512), Image.Resampling.LANCZOS)
    assert images[512].tobytes() == via_640.tobytes()  # 512 is made from the 640 rung, as the store does
    from_384 = via_640.resize((384, 384), Image.Resampling.LANCZOS).resize(
        (300, 300), Image.Resampling.LANCZOS
    )
    assert images[300].tobytes() == from_384.tobytes()  # off the ladder: from the nearest rung above
    for bad in (2048, 16):
        with pytest.raises(InvalidInput, match=str(bad)):
            experiments.shrink_chain(page, [bad])


@pytest.mark.slow
def test_a_real_tiny_run_writes_four_consistent_files(tmp_path, reader):
    report = experiments.forgetting(
        tmp_path, readers=("rapidocr", "meanpool"), sides=(1024, 640), pages=1, command="pytest"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "forgetting.png",
        "results.csv",
        "summary.json",
        "summary.md",
    ]
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["reader"], int(r["side"])) for r in rows] == [("rapidocr", 1024), ("rapidocr", 640)]
    for r in rows:
        compression = int(r["text_tokens"]) / vision_tokens(int(r["side"]))
        assert float(r["compression"]) == pytest.approx(compression, abs=5e-5)  # written to 4 decimals
        assert 0.0 <= float(r["precision"]) <= 1.0 and 0.0 <= float(r["token_precision"]) <= 1.0
    assert float(rows[0]["precision"]) >= 0.95
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["command"] == "pytest" and "PSF" in summary["corpus"]["licence"]
    assert [(s["side"], s["precision_mean"]) for s in summary["summary"]] == [
        (int(r["side"]), float(r["precision"])) for r in rows
    ]
    assert "needs a DeepSeek-OCR checkpoint" in summary["not_run"]["meanpool"]
    assert "| rapidocr | 1024 | 256 | 1 |" in (tmp_path / "summary.md").read_text() == report.markdown
    assert Image.open(tmp_path / "forgetting.png").size[0] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sides", "1024,2048"], "page sides must be whole pixels in [32, 1024], got 2048"),
        (["--sides", "1024,big"], "--sides must be a comma-separated list, got '1024,big'"),
        (["--readers", "rapidocr,easyocr"], "unknown reader 'easyocr'; known: rapidocr, tesseract"),
        (["--pages", "0"], "pages must be >= 1, got 0"),
    ],
)
def test_cli_experiment_errors_are_one_line_with_exit_code_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "experiment", "forgetting", "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("optical-memory: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
