"""DeepSeek-OCR as a whole: modes and token counts, the full-size module tree against the official key list,
the vision-token layout, and the round trip through a checkpoint written in the official layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from optical_memory.model import preprocess
from optical_memory.model.config import OCRConfig
from optical_memory.model.generation import GenerationConfig
from optical_memory.model.loading import CheckpointError, from_pretrained
from optical_memory.model.ocr import DeepseekOCR
from optical_memory.model.testing import random_model, write_checkpoint

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
SHAPES = REFERENCE / "deepseek_ocr_v1_checkpoint_shapes.json"


def page(width: int, height: int, text: str = "optical memory") -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for y in range(8, height - 16, 24):
        draw.text((8, y), f"{text} {y}", fill="black")
    return image


# -- modes and token counts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "positions"), [("tiny", 73), ("small", 111), ("base", 273), ("large", 421), (384, 43), (256, 21)]
)
def test_token_counts_of_square_modes(mode, positions):
    assert preprocess.count_image_tokens(1000, 700, mode) == positions
    views = preprocess.prepare(page(300, 200), mode)
    assert views.tiles is None and views.num_tokens == positions


@pytest.mark.parametrize(
    ("size", "grid"),
    [
        ((600, 600), (1, 1)),  # no side above 640: global view only
        ((1920, 1280), (3, 2)),  # 3:2
        ((1280, 1920), (2, 3)),
        ((1000, 1000), (2, 2)),  # 2x2 and 3x3 tie on aspect: the larger grid only past half its area
        ((2000, 2000), (3, 3)),
        ((3000, 1000), (3, 1)),
        ((900, 3200), (1, 4)),
        ((4000, 4000), (3, 3)),
    ],
)
def test_gundam_tiling_and_counts(size, grid):
    w, h = size
    assert preprocess.tile_grid(w, h, preprocess.MODES["gundam"]) == grid
    cols, rows = grid
    expected = 273 if grid == (1, 1) else 273 + (10 * rows) * (10 * cols + 1)
    assert preprocess.count_image_tokens(w, h, "gundam") == expected
    views = preprocess.prepare(page(w, h), "gundam")
    assert views.global_view.shape == (3, 1024, 1024)
    assert views.num_tokens == expected
    if grid == (1, 1):
        assert views.tiles is None
    else:
        assert views.tiles is not None and views.tiles.shape == (cols * rows, 3, 640, 640)


def test_gundam_examples_from_the_reference():
    assert preprocess.count_image_tokens(1920, 1280, "gundam") == 893  # 3 x 2 tiles
    assert preprocess.count_image_tokens(3000, 3000, "gundam") == 1203  # 3 x 3 tiles


def test_stretch_and_pad_rules():
    wide = page(800, 400)
    small = preprocess.prepare(wide, "small").global_view  # stretched: no grey bands
    assert small.shape == (3, 640, 640) and small[:, :40].mean() > 0.9
    base = preprocess.prepare(wide, "base").global_view  # padded with grey 127 -> 127/255*2-1 ~ 0
    assert base.shape == (3, 1024, 1024)
    assert base[:, :200].abs().max() < 0.01  # top band is padding
    assert base.min() >= -1 and base.max() <= 1


def test_bad_modes_and_prompts_are_named():
    with pytest.raises(ValueError, match="'huge'"):
        preprocess.get_mode("huge")
    with pytest.raises(ValueError, match="100"):
        preprocess.get_mode(100)
    with pytest.raises(ValueError, match="2 '<image>' placeholders but 1"):
        preprocess.prompt_ids(object(), "<image><image>", [5], image_token_id=9, bos_token_id=0)


# -- full-size structure ----------------------------------------------------------------------------------


def test_full_size_model_matches_the_official_checkpoint_keys():
    if not SHAPES.is_file():
        pytest.skip(f"reference key list not found at {SHAPES}")
    reference = json.loads(SHAPES.read_text())
    with torch.device("meta"):
        model = DeepseekOCR(OCRConfig())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) - set(reference["shapes"]) == set()
    assert set(reference["shapes"]) - set(ours) == set()
    assert ours == reference["shapes"]
    assert len(ours) == reference["n_tensors"] == 2710
    assert sum(p.numel() for p in model.parameters()) == reference["n_params"] == 3_336_106_240


# -- encode layout ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> DeepseekOCR:
    return random_model(OCRConfig.tiny(), seed=0)


def test_encode_layout_has_newlines_and_separator(tiny):
    [seq] = tiny.encode([page(200, 150)], 256)  # 256 px: 4 x 4 tokens
    assert seq.shape == (4 * 5 + 1, tiny.config.decoder.hidden_size)
    rows = seq[:-1].view(4, 5, -1)
    assert torch.equal(rows[:, 4], tiny.model.image_newline.expand(4, -1))
    assert torch.equal(seq[-1], tiny.model.view_seperator)
    assert not torch.equal(rows[0, 0], rows[1, 0])


def test_encode_batches_without_changing_results(tiny):
    images = [page(200, 150, "a"), page(120, 300, "b"), page(256, 256, "c")]
    together = tiny.encode(images, 192, batch_size=3)
    alone = [tiny.encode([im], 192, batch_size=1)[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gundam_encode_stitches_tiles_row_major(tiny):
    mode = preprocess.Mode(name="toy-gundam", base_size=128, image_size=64, crop_mode=True)
    image = page(1400, 700)  # a side above 640: tiled
    views = preprocess.prepare(image, mode)
    cols, rows = views.grid
    assert rows >= 2 and cols == 2 * rows  # 2:1 aspect
    [seq] = tiny.encode([image], mode)
    assert seq.shape == (views.num_tokens, tiny.config.decoder.hidden_size)
    with torch.inference_mode():
        tile_feats = tiny.model.encode_views(views.tiles)  # (cols * rows, 1, C): a 64 px tile is one token
    # the stitched grid, row by row, each row closed by a newline; then the global view and the separator
    for r in range(rows):
        row = seq[r * (cols + 1) : (r + 1) * (cols + 1)]
        torch.testing.assert_close(row[:cols], tile_feats[r * cols : (r + 1) * cols, 0])
        assert torch.equal(row[cols], tiny.model.image_newline)
    [global_only] = tiny.encode([image.resize((128, 64))], mode)  # no side above 640: no tiles
    assert global_only.shape[0] == 2 * 3 + 1
    with torch.inference_mode():
        global_feats = tiny.model.encode_views(views.global_view[None])[0]  # (2 * 2, C)
    torch.testing.assert_close(
        seq[rows * (cols + 1) :], tiny.model.layout(global_feats, None, (1, 1)), rtol=1e-4, atol=1e-5
    )


# -- checkpoint round trip --------------------------------------------------------------------------------


def test_round_trip_through_the_official_layout(tmp_path, tiny):
    folder = write_checkpoint(tmp_path / "ckpt", tiny, dtype=torch.float32)
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    loaded = from_pretrained(folder, dtype=torch.float32)
    assert loaded.config == tiny.config
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    images = [page(300, 200)]
    torch.testing.assert_close(loaded.encode(images, 256)[0], tiny.encode(images, 256)[0])
    tiny.tokenizer = loaded.tokenizer
    config = GenerationConfig(max_new_tokens=12, ngram_size=None)
    text = loaded.read(images, 256, config=config)
    assert text == tiny.read(images, 256, config=config)
    assert isinstance(text[0], str)


def test_sharded_bf16_checkpoint_loads(tmp_path, tiny):
    folder = write_checkpoint(tmp_path / "sharded", tiny, shards=3)
    assert len(list(folder.glob("*.safetensors"))) == 3
    loaded = from_pretrained(folder)  # bfloat16 by default
    assert loaded.dtype == torch.bfloat16
    [seq] = loaded.encode([page(300, 200)], 256)
    assert seq.dtype == torch.bfloat16 and torch.isfinite(seq.float()).all()
    [text] = loaded.read([page(300, 200)], 256, config=GenerationConfig(max_new_tokens=4))
    assert isinstance(text, str)


def _rewrite(folder: Path, edit) -> None:
    [path] = folder.glob("*.safetensors")
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_bad_checkpoints_are_clear_errors(tmp_path, tiny):
    with pytest.raises(CheckpointError, match=r"no config\.json.*deepseek-ai/DeepSeek-OCR"):
        from_pretrained(tmp_path / "absent")

    missing = write_checkpoint(tmp_path / "missing", tiny)
    _rewrite(missing, lambda s: s.pop("model.view_seperator"))
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. model.view_seperator\)"):
        from_pretrained(missing)

    extra = write_checkpoint(tmp_path / "extra", tiny)
    _rewrite(extra, lambda s: s.update({"model.unknown.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"1 unexpected.*model\.unknown\.weight"):
        from_pretrained(extra)

    shaped = write_checkpoint(tmp_path / "shaped", tiny)
    _rewrite(shaped, lambda s: s.update({"model.norm.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"model.norm.weight has shape \(3,\)"):
        from_pretrained(shaped)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((missing / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        from_pretrained(empty)
