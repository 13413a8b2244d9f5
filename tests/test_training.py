"""optical_memory.training on a toy model of the same architecture: the data stream (real renderer, real
docstring prose), the tokenizer, that training learns, that a resumed run equals an uninterrupted one, and
that an export loads through the strict ``from_pretrained`` path."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optical_memory.config import RenderConfig
from optical_memory.experiments import _prose_paragraphs
from optical_memory.model import GenerationConfig, from_pretrained
from optical_memory.model.config import ClipConfig, DecoderConfig, OCRConfig, SamConfig
from optical_memory.model.decoder import apply_rope
from optical_memory.model.preprocess import grid_tokens
from optical_memory.render import Renderer
from optical_memory.training import (
    CHAR_GRID,
    CHAR_VOCAB,
    COLLAPSE_GAP_NATS,
    COMPLETE_COLUMNS,
    CROP_BATCH,
    CROP_MARGIN,
    CROP_SIDES,
    ENCODER_PREFIXES,
    GUIDE_HEAD,
    GUIDE_SLOTS,
    LADDER,
    SPECIALS,
    BatchStream,
    PageStream,
    TrainConfig,
    Trainer,
    char_class,
    char_targets,
    collapse_alarms,
    conversation,
    evaluate_pages,
    glyph_rows,
    guide_keys,
    guide_loss,
    guide_slots,
    head_log_attention,
    held_out_crops,
    held_out_samples,
    main,
    neck_tokens,
    page_rows,
    scrambled,
    text_rms,
    training_paragraphs,
    vision_features,
)


def toy_config() -> OCRConfig:
    """The mini's structure at toy sizes: windowed and global SAM blocks, compressor, CLIP, MoE decoder."""
    return OCRConfig(
        sam=SamConfig(
            img_size=128,
            embed_dim=16,
            depth=2,
            num_heads=2,
            window_size=8,
            global_attn_indexes=(1,),
            out_chans=8,
            net_2_chans=16,
            net_3_chans=32,
        ),
        clip=ClipConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, image_size=56),
        decoder=DecoderConfig(
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            head_dim=16,
            intermediate_size=64,
            moe_intermediate_size=16,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            max_position_embeddings=2048,
        ),
    )


@pytest.fixture(scope="module")
def paragraphs():
    return training_paragraphs()


@pytest.fixture(scope="module")
def few(paragraphs):
    return paragraphs[:300]


def make_trainer(folder, few, *, init_from=None, init_encoder_from=None, new_settings=False, **config):
    config = {"steps": 40, "eval_every": 0, "min_lines": 2, "warmup": 2, **config}
    torch.manual_seed(0)
    return Trainer(
        folder,
        TrainConfig(**config),
        model_config=toy_config(),
        device="cpu",
        paragraphs=few,
        vocab_size=400,
        init_from=init_from,
        init_encoder_from=init_encoder_from,
        new_settings=new_settings,
    )


def test_training_prose_is_real_and_held_out(paragraphs):
    from pydoc_data.topics import topics

    assert len(paragraphs) > 5000  # NumPy's and SQLAlchemy's docstrings: ~13,000 paragraphs
    assert all(p.isascii() and len(p.split()) >= 8 for p in paragraphs)
    held_out = {p for doc in topics.values() for p in _prose_paragraphs(doc)}
    assert not held_out & set(paragraphs)
    assert any("array" in p for p in paragraphs) and any("SELECT" in p for p in paragraphs)


def test_stream_is_seeded_at_every_ladder_side_with_a_growing_curriculum(few):
    config = TrainConfig(steps=100, min_lines=3)
    stream, again = PageStream(few, config), PageStream(few, config)
    a, b = stream.sample(7, 1, 640), again.sample(7, 1, 640)
    assert a.text == b.text and a.image.tobytes() == b.image.tobytes()
    assert a.image.size == (640, 640)
    assert stream.sample(8, 1, 640).text != a.text
    assert stream.max_lines(0) == 3 and stream.max_lines(70) == stream.max_lines(99) == stream.full == 51
    assert stream.max_lines(35) == 3 + round(0.25 * 48)  # quadratic: a long start on short pages
    assert all(stream.sample(0, i, 256).lines <= 3 for i in range(10))
    assert {stream.side(step) for step in range(200)} == set(LADDER)
    batch = stream.batch(11)
    assert len({s.side for s in batch}) == 1  # DeepEncoder takes one size per batch
    other = PageStream(few, TrainConfig(steps=100, min_lines=3, seed=1))
    assert other.sample(7, 1, 640).text != a.text


def test_worker_processes_draw_the_same_batches_in_step_order(few):
    stream = PageStream(few, TrainConfig(steps=20))
    direct = list(BatchStream(stream, 3, 9))
    loader = torch.utils.data.DataLoader(
        BatchStream(stream, 3, 9), batch_size=None, num_workers=2, collate_fn=lambda b: b
    )
    pooled = list(loader)
    assert [step for step, _ in pooled] == [step for step, _ in direct] == list(range(3, 9))
    for (_, a), (_, b) in zip(direct, pooled, strict=True):
        assert [s.text for s in a] == [s.text for s in b]
        assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]


def test_conversations_carry_the_store_speaker_labels(few):
    import random

    turns = conversation(few, random.Random(0), 6)
    assert [s for s, _ in turns] == ["user", "assistant"] * 3
    stream = PageStream(few, TrainConfig(conversation_share=1.0, steps=10))
    text = stream.sample(9, 0, 1024).text  # past the curriculum: pages of up to 51 lines
    assert text.startswith("user: ") and "assistant: " in text


def test_tokenizer_puts_the_special_tokens_first_and_round_trips(tmp_path, few):
    trainer = make_trainer(tmp_path, few)
    tok = trainer.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in SPECIALS] == list(range(len(SPECIALS)))
    assert len(tok) == 400
    text = "user: The array's shape is (3, 4); call np.reshape(a, -1) ... 42%"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert trainer.model_config.decoder.vocab_size == 400
    assert trainer.model_config.decoder.image_token_id == SPECIALS.index("<image>") == 3


def test_training_learns_a_batch(tmp_path, few):
    trainer = make_trainer(tmp_path, few, lr=3e-3)
    samples = trainer.stream.batch(0)
    first = trainer.loss(samples)[0].item()
    for _ in range(60):
        loss, n = trainer.loss(samples)
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    assert n > 0
    assert trainer.loss(samples)[0].item() < 0.5 * first


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, few):
    whole = make_trainer(tmp_path / "whole", few, steps=4)
    assert whole.train()["done"]
    cut = make_trainer(tmp_path / "part", few, steps=4)
    assert not cut.train(max_steps=2)["done"]  # a run that ends early, as a ten-minute run does
    resumed = make_trainer(tmp_path / "part", few, steps=4)
    assert resumed.step == 2
    assert resumed.train()["done"] and resumed.step == 4
    for key, value in whole.model.state_dict().items():  # equal up to float32 summation order
        torch.testing.assert_close(value, resumed.model.state_dict()[key], rtol=1e-4, atol=1e-6, msg=key)
    log = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"loss", "lr", "side", "lines", "tokens", "seconds", "elapsed_s"} <= set(log[0])
    assert [r["step"] for r in json.loads((tmp_path / "part" / "run.json").read_text())["runs"]] == [0, 2]
    with pytest.raises(ValueError, match="resume with the same settings"):
        make_trainer(tmp_path / "part", few, steps=5)


def test_a_run_carries_on_under_new_settings_that_build_the_same_model(tmp_path, few):
    first = make_trainer(tmp_path / "run", few, steps=3, char_loss=1.0)
    first.train()
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    head = {k: v.clone() for k, v in first.char_head.state_dict().items()}
    new = {"steps": 5, "lr": 5e-4, "sides": (1024, 640), "full_share": 0.5, "encoder_lr_scale": 0.1}
    carried = make_trainer(tmp_path / "run", few, char_loss=0.5, new_settings=True, **new)
    assert carried.step == 3 and carried.config.sides == (1024, 640)
    for key, value in weights.items():
        torch.testing.assert_close(carried.model.state_dict()[key], value, msg=key)
    for key, value in head.items():
        torch.testing.assert_close(carried.char_head.state_dict()[key], value, msg=key)
    encoder = [g for g in carried.optimizer.param_groups if g["lr_scale"] != 1.0]
    assert len(encoder) == 2 and all(g["lr_scale"] == 0.1 for g in encoder)  # the new settings' own
    assert carried.train()["done"] and carried.step == 5
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert log[3]["lr"] < 5e-4  # the new schedule: 5e-4 at its peak
    again = make_trainer(tmp_path / "run", few, char_loss=0.5, **new)  # saved under the new settings now
    assert again.step == 5
    for built in ({"char_loss": 0.0}, {"windowed_sam": True}, {"char_columns": 8}):
        with pytest.raises(ValueError, match=f"another model or heads: {next(iter(built))} "):
            make_trainer(tmp_path / "run", few, new_settings=True, **{"char_loss": 0.5, **new, **built})


def test_held_out_pages_can_be_cut_to_their_first_lines():
    full = held_out_samples(1, sides=[1024])
    [cut] = held_out_samples(1, lines=2, sides=[1024])
    assert len(full) == 1 and full[0].lines > 2
    assert cut.lines == 2 and cut.text == "\n".join(full[0].text.split("\n")[:2])
    assert [s.side for s in held_out_samples(1, lines=1)] == list(LADDER)
    with pytest.raises(ValueError, match="lines must be at least 1, got 0"):
        held_out_samples(1, lines=0)


def test_held_out_crops_are_drawn_at_the_full_pages_density():
    [page] = held_out_samples(1, sides=[1024])
    crops = {side: held_out_crops(1, side=side, lines=3)[0] for side in CROP_SIDES}
    for side, crop in crops.items():
        assert crop.image.size == (side, side) and crop.side == crop.page_side == side
        assert crop.lines == 3 and len(crop.text.split("\n")) == 3
        # the same document from its start, in lines of the crop's width: the glyphs keep their size
        assert page.text.split()[:4] == crop.text.split()[:4]
        assert (
            max(map(len, crop.text.split("\n")))
            <= (side - 2 * CROP_MARGIN) // Renderer(RenderConfig()).cell_width
        )
    widths = [max(map(len, crops[side].text.split("\n"))) for side in CROP_SIDES]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # a wider crop, longer lines
    with pytest.raises(ValueError, match="one of \\(256, 384, 512, 640, 768\\), got 1024"):
        held_out_crops(1, side=1024)
    with pytest.raises(ValueError, match="lines must be at least 1, got 0"):
        held_out_crops(1, lines=0)


def test_held_out_loss_is_logged_per_side(tmp_path, few):
    trainer = make_trainer(tmp_path, few, steps=1, eval_every=1)
    trainer.train()
    [record] = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert set(record["held_out_loss"]) == {str(s) for s in LADDER}
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["train_licence"] and run["parameters"] > 0 and run["runs"][0]["step"] == 0
    # benchmarks/summarise_runs.py keeps what the run measured beyond its folder
    script = Path(__file__).parents[1] / "benchmarks" / "summarise_runs.py"
    out = tmp_path / "runs.json"
    command = [sys.executable, str(script), str(tmp_path), "--out", str(out)]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert tmp_path.name in shown and "gap, 1024 px" in shown
    [summary] = json.loads(out.read_text())["runs"]
    assert summary["steps"] == 1 and summary["train_config"]["eval_every"] == 1
    assert summary["evaluations"][0]["gap"] == record["held_out"]["gap"]
    assert summary["loss_means_per_window"] == [{"steps": [1, 1], "loss": record["loss"]}]


def blind(trainer):
    """Make the model blind to its pages: a frozen zero projector gives every page the same vision tokens."""
    projector = trainer.model.model.projector.layers
    with torch.no_grad():
        projector.weight.zero_()
        projector.bias.zero_()
    projector.requires_grad_(False)


def test_the_collapse_instruments_are_measured_per_side(tmp_path, few):
    trainer = make_trainer(tmp_path, few)
    pages = held_out_samples(1)
    result = evaluate_pages(trainer.model, pages, greedy_pages=1)
    assert set(result) == {"loss", "blank_loss", "gap", "vision_rms", "precision"}
    for metric in result.values():
        assert set(metric) == set(LADDER)
    for side in LADDER:
        assert result["gap"][side] == pytest.approx(
            result["blank_loss"][side] - result["loss"][side], abs=2e-4
        )
        assert result["vision_rms"][side] > 0 and 0.0 <= result["precision"][side] <= 1.0
    assert trainer.model.training  # evaluation leaves the model as it found it
    # an untrained encoder still tells pages apart, a little: its tokens differ from a blank page's
    assert any(abs(result["gap"][side]) > 0 for side in LADDER)
    blind(trainer)
    assert set(evaluate_pages(trainer.model, pages, greedy_pages=0)["gap"].values()) == {0.0}


def test_collapse_alarms_fire_on_a_flat_gap_or_runaway_vision_tokens():
    def evaluation(gap, rms=1.0):
        return {"gap": {1024: gap, 640: gap, 256: 2.0}, "vision_rms": {1024: rms, 640: rms}}

    flat, reading = evaluation(0.0), evaluation(0.6)
    assert collapse_alarms([flat], text_scale=0.02) == []  # one flat evaluation: it may still open
    [alarm] = collapse_alarms([flat, evaluation(COLLAPSE_GAP_NATS / 2)], text_scale=0.02)
    assert "ENCODER COLLAPSE" in alarm and "[1024, 640] px" in alarm  # the illegible 256 px gap is no alibi
    assert collapse_alarms([flat, reading], text_scale=0.02) == []
    assert collapse_alarms([reading, flat], text_scale=0.02) == []
    [alarm] = collapse_alarms([evaluation(0.6, rms=4000.0)], text_scale=0.02)
    assert "RUNAWAY" in alarm and "4000" in alarm
    assert collapse_alarms([evaluation(0.6, rms=0.33)], text_scale=0.02) == []  # initialisation's ratio


def test_training_warns_when_the_model_does_not_read_its_pages(tmp_path, few, caplog):
    trainer = make_trainer(tmp_path, few, steps=3, warmup=1, eval_every=1, eval_greedy_pages=0)
    blind(trainer)
    with caplog.at_level(logging.WARNING, logger="optical_memory.training"):
        trainer.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert set(log[0]["held_out"]) == {"loss", "blank_loss", "gap", "vision_rms", "precision", "text_rms"}
    assert log[0]["held_out"]["text_rms"] == pytest.approx(text_rms(trainer.model), rel=0.5)
    assert "alarms" not in log[1]  # warmup's evaluation does not count; one after it is not yet a trend
    assert any("ENCODER COLLAPSE" in a for a in log[2]["alarms"])
    assert any("ENCODER COLLAPSE" in r.getMessage() for r in caplog.records)


def test_the_encoder_trains_at_its_own_learning_rate(tmp_path, few):
    trainer = make_trainer(tmp_path, few, steps=2, encoder_lr_scale=0.1)
    trainer.train(max_steps=1)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    grouped = [names[id(p)] for g in trainer.optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(names.values())  # every parameter in exactly one group
    encoder = set()
    for group in trainer.optimizer.param_groups:
        kinds = {names[id(p)].startswith(ENCODER_PREFIXES) for p in group["params"]}
        assert len(kinds) == 1
        assert group["lr"] == pytest.approx(trainer.lr(0) * (0.1 if kinds == {True} else 1.0))
        if kinds == {True}:
            encoder |= {names[id(p)] for p in group["params"]}
    assert any(".sam_model." in n for n in encoder) and any(".projector." in n for n in encoder)
    assert not any(n.startswith(("model.layers.", "model.embed_tokens", "lm_head")) for n in encoder)


def test_training_can_keep_to_the_legible_sides(few):
    stream = PageStream(few, TrainConfig(steps=100, sides=(1024, 640)))
    assert {stream.side(step) for step in range(200)} == {1024, 640}
    with pytest.raises(ValueError, match="subset of the ladder"):
        TrainConfig(sides=(1000,))


def test_scrambled_pages_hold_text_the_language_prior_cannot_guess(few):
    import random

    text = "the quick brown fox jumps over the lazy dog again and again"
    outs = [scrambled(text, random.Random(i)) for i in range(20)]
    shuffled = [o for o in outs if sorted(o.split()) == sorted(text.split())]
    strings = [o for o in outs if o not in shuffled]
    assert shuffled and strings and text not in outs  # both kinds, never the prose as it was
    assert all(len(o.split()) == len(text.split()) and o.isascii() for o in strings)
    plain = PageStream(few, TrainConfig(steps=10, conversation_share=0.0))
    mixed = PageStream(few, TrainConfig(steps=10, scramble_share=1.0, conversation_share=0.0))
    pairs = [(plain.sample(9, i, 1024).text, mixed.sample(9, i, 1024).text) for i in range(6)]
    assert all(a != b for a, b in pairs)  # the same paragraphs, drawn scrambled
    with pytest.raises(ValueError, match="scramble_share"):
        TrainConfig(scramble_share=1.5)


def test_crops_are_small_pages_at_the_full_page_density(few):
    stream = PageStream(few, TrainConfig(steps=10, crop_share=0.5, sides=(1024, 640)))
    crops = [step for step in range(200) if stream.crop_side(step) is not None]
    assert 60 < len(crops) < 140  # about half the batches
    assert {stream.crop_side(step) for step in crops} == {256, 384}  # the default crop_sides
    batch = stream.batch(crops[0])
    side = batch[0].side
    assert len(batch) == CROP_BATCH[side] and {(s.side, s.page_side) for s in batch} == {(side, side)}
    assert all(s.image.size == (side, side) for s in batch)
    glyphs = stream.renderer_for(side)
    assert glyphs.cell_width == stream.renderer.cell_width  # the same glyphs as on a full page
    assert glyphs.config.margin == CROP_MARGIN and glyphs.lines_per_page == (side - 2 * CROP_MARGIN) // 19
    # its character targets are its own geometry's: the first line's first letters in token (0, 0)
    first = batch[0].text.split("\n")[0]
    targets = char_targets(batch[0].text, side, glyphs)
    row = targets[0].view(CHAR_GRID, CHAR_GRID)[0]  # points 8 px down: on line 0 (8-26 px)
    assert row[0] == char_class(first[0])  # 8 px across: the first cell (8-16 px)
    assert PageStream(few, TrainConfig(steps=10)).crop_side(crops[0]) is None  # off by default


def test_larger_crops_carry_the_reading_order_towards_a_full_page(few):
    stream = PageStream(few, TrainConfig(steps=10, min_lines=60, crop_share=1.0, crop_sides=(512, 768)))
    drawn = {stream.crop_side(step) for step in range(40)}
    assert drawn == {512, 768}  # only the sides asked for, each drawn
    for side in drawn:
        step = next(step for step in range(40) if stream.crop_side(step) == side)
        batch = stream.batch(step)
        assert len(batch) == CROP_BATCH[side] and all(s.image.size == (side, side) for s in batch)
        assert max(s.lines for s in batch) <= stream.renderer_for(side).lines_per_page
        assert stream.renderer_for(side).cell_width == stream.renderer.cell_width
    for bad in [(), (1024,), (256, 300)]:
        with pytest.raises(ValueError, match=f"crop_sides must be some of .*, got {re.escape(str(bad))}"):
            TrainConfig(crop_sides=bad)


def test_a_share_of_pages_hold_every_line_the_curriculum_allows(few):
    def lines(full_share):
        stream = PageStream(few, TrainConfig(steps=10, min_lines=51, full_share=full_share))
        return [stream.sample(step, 0, 1024).lines for step in range(40)]

    even, half, full = lines(0.0), lines(0.5), lines(1.0)
    assert sum(n == 51 for n in even) <= 4  # drawn evenly from 1-51, a page is rarely full
    assert 10 <= sum(n == 51 for n in half) <= 30
    assert all(n == 51 for n in full)  # passages are added until the page is full
    with pytest.raises(ValueError, match=r"full_share must be between 0 and 1, got 1\.5"):
        TrainConfig(full_share=1.5)


def test_the_command_line_names_a_bad_side(capsys):
    for option, value in [("--crop-sides", "384,5l2"), ("--sides", "1024,"), ("--crop-sides", "1024")]:
        with pytest.raises(SystemExit):
            main([option, value])
        assert value in capsys.readouterr().err


def test_a_crop_step_trains_with_the_character_loss(tmp_path, few):
    trainer = make_trainer(tmp_path / "run", few, steps=4, char_loss=1.0, crop_share=1.0)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r.get("crop") is True and r["side"] in CROP_SIDES and r["char_loss"] > 0 for r in records)


def test_the_run_summary_splits_the_loss_by_kind_of_batch(tmp_path, few):
    trainer = make_trainer(tmp_path, few, steps=8, crop_share=0.5, sides=(1024,))
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    kinds: dict[str, list[float]] = {}
    for r in records:
        kinds.setdefault(f"{'crop ' if r.get('crop') else ''}{r['side']}", []).append(r["loss"])
    assert len(kinds) >= 2 and "1024" in kinds  # pages and crops of at least one side
    script = Path(__file__).parents[1] / "benchmarks" / "summarise_runs.py"
    out = tmp_path / "runs.json"
    subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--out", str(out)], check=True, capture_output=True
    )
    [window] = json.loads(out.read_text())["runs"][0]["loss_means_per_window"]
    assert window["loss_by_side"] == pytest.approx({k: sum(v) / len(v) for k, v in kinds.items()}, abs=1e-4)


def test_a_character_head_told_where_its_points_are_learns_what_a_blind_one_cannot(tmp_path, few):
    # one page, its grid jittered every step, each token a fixed distinct vector: told the offset, the head
    # can name every point's character; blind to it, it can only guess among those a point may land on
    def ce(trainer, samples, feats, steps):
        losses = []
        for step in steps:
            logits, targets = trainer.char_logits(samples, feats, step=step)
            losses.append(F.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=-100))
        return torch.stack(losses).mean()

    finals = {}
    for query in (False, True):
        trainer = make_trainer(tmp_path / str(query), few, steps=200, char_loss=1.0, char_query=query)
        samples = [trainer.stream.sample(150, 0, 640)]
        shape = vision_features(trainer.model, samples).shape  # 10 x 10 tokens of the toy's width, 32
        torch.manual_seed(0)
        feats = torch.randn(shape)
        opt = torch.optim.Adam(trainer.char_head.parameters(), lr=3e-3)
        for step in range(400):
            loss = ce(trainer, samples, feats, [step])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            finals[query] = float(ce(trainer, samples, feats, range(1000, 1016)))  # jitters never seen
    assert finals[True] < 0.5 * finals[False]


def test_the_encoder_can_be_pretrained_on_the_character_loss_alone(tmp_path, few):
    trainer = make_trainer(tmp_path / "run", few, steps=3, char_loss=1.0, char_query=True, decoder_loss=0.0)
    decoder = {n: p.clone() for n, p in trainer.model.named_parameters() if n.startswith("model.layers.")}
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all("loss" not in r and r["char_loss"] > 0 and r["tokens"] == 0 for r in records)
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in decoder.items())  # the decoder was not run
    accuracy = trainer.evaluate(held_out_samples(1))["char_accuracy"]
    assert set(accuracy) == set(LADDER) and all(0.0 <= a <= 1.0 for a in accuracy.values())
    with pytest.raises(ValueError, match="decoder_loss"):
        TrainConfig(decoder_loss=0.0)  # and no character loss: nothing to train


def test_an_encoder_pretrained_alone_is_evaluated_without_its_untrained_decoder(tmp_path, few, monkeypatch):
    import optical_memory.training as training

    trainer = make_trainer(tmp_path / "run", few, steps=3, char_loss=1.0, decoder_loss=0.0, char_hidden=64)
    assert isinstance(trainer.char_head.out, torch.nn.Sequential)  # one hidden layer, 64 wide
    assert trainer.char_head.out[0].out_features == 64
    trainer.train()
    monkeypatch.setattr(training, "evaluate_pages", None)  # a greedy read here would be a TypeError
    out = trainer.evaluate(held_out_samples(1))
    assert out["gap"] == out["loss"] == out["precision"] == {}
    assert set(out["vision_rms"]) == set(out["char_accuracy"]) == set(out["glyph_accuracy"]) == set(LADDER)
    assert all(v > 0 for v in out["vision_rms"].values())
    folder = trainer.export(tmp_path / "export")
    loaded = from_pretrained(folder, dtype=torch.float32)  # strict: the official layout, no head
    assert set(loaded.state_dict()) == set(trainer.model.state_dict())
    with pytest.raises(ValueError, match="char_hidden"):
        TrainConfig(char_loss=1.0, char_hidden=-1)


def test_glyph_accuracy_scores_only_the_points_on_a_character(tmp_path, few, monkeypatch):
    trainer = make_trainer(tmp_path / "run", few, steps=1, char_loss=1.0, decoder_loss=0.0)
    samples = [s for s in held_out_samples(1) if s.side == 1024]

    def says_space(group, feats, *, step=None):  # a head that names every point a space
        logits, targets = Trainer.char_logits(trainer, group, feats, step=step)
        spaces = torch.full_like(logits, -1e4)
        spaces[..., 0] = 0.0
        return spaces, targets

    monkeypatch.setattr(trainer, "char_logits", says_space)
    out = trainer.evaluate(samples)
    _, targets = Trainer.char_logits(trainer, samples, vision_features(trainer.model, samples))
    scored = targets[targets != -100]
    assert out["char_accuracy"][1024] == round(float((scored == 0).float().mean()), 4) > 0.1
    assert out["glyph_accuracy"][1024] == 0.0


def test_glyph_accuracy_is_given_per_row_of_vision_tokens(tmp_path, few, monkeypatch):
    trainer = make_trainer(tmp_path / "run", few, steps=1, char_loss=1.0, decoder_loss=0.0)
    samples = [s for s in held_out_samples(1) if s.side == 1024]

    def reads_the_top_half(group, feats, *, step=None):  # names every point of rows 0-7, none below
        logits, targets = Trainer.char_logits(trainer, group, feats, step=step)
        oracle = torch.nn.functional.one_hot(targets.clamp(min=0), logits.shape[-1]).float()
        cells = torch.arange(targets.shape[1]) < targets.shape[1] // 2
        return torch.where(cells[None, :, None, None], oracle, 1.0 - oracle), targets

    monkeypatch.setattr(trainer, "char_logits", reads_the_top_half)
    rows = trainer.evaluate(samples)["glyph_rows"][1024]
    assert len(rows) == 16 and rows[:8] == [1.0] * 8  # a full held-out page: glyphs on every row
    assert rows[8:] == [0.0] * 8
    assert json.loads(json.dumps(rows)) == rows  # logged as it is
    hits, glyphs = torch.zeros(1, 4, 2, dtype=torch.bool), torch.zeros(1, 4, 2, dtype=torch.bool)
    hits[0, 0, 0] = glyphs[0, 0, 0] = glyphs[0, 1, 1] = True  # row 0: 1 of 2 named; row 1: no glyph
    assert glyph_rows(hits, glyphs) == [0.5, None]


def test_a_decoder_trains_on_a_frozen_pretrained_encoder(tmp_path, few):
    first = make_trainer(tmp_path / "encoder", few, steps=2, char_loss=1.0, decoder_loss=0.0, lr=3e-3)
    first.train()
    export = first.export(tmp_path / "export")
    trainer = make_trainer(tmp_path / "decoder", few, steps=3, freeze_encoder=True, init_from=export)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "decoder" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 0 and r["tokens"] > 0 and "char_loss" not in r for r in records)
    after = dict(trainer.model.named_parameters())
    encoder = [n for n in before if n.startswith(ENCODER_PREFIXES)]
    assert encoder and all(torch.equal(after[n], before[n]) for n in encoder)  # as exported, no decay
    assert not torch.equal(
        after["model.layers.0.mlp.gate_proj.weight"], before["model.layers.0.mlp.gate_proj.weight"]
    )
    for bad in ({"char_loss": 1.0}, {"decoder_loss": 0.0, "char_loss": 1.0}):
        with pytest.raises(ValueError, match="freeze_encoder"):
            TrainConfig(freeze_encoder=True, **bad)


def test_a_neck_head_reads_the_characters_before_the_compressor_and_is_not_exported(tmp_path, few):
    trainer = make_trainer(tmp_path / "run", few, steps=3, char_loss=1.0, neck_char_loss=1.0, lr=3e-3)
    samples = trainer.stream.batch(1)
    tokens = grid_tokens(samples[0].side) ** 2
    _, _, char = trainer.losses(samples)
    assert trainer._neck is not None and neck_tokens(trainer._neck, trainer.neck_patches).shape[1] == tokens
    assert trainer.neck_char is not None and char.item() > trainer.neck_char.item() > 1.0  # both terms
    neck = trainer.char_head.neck.weight.clone()
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["neck_char_loss"] > 0 for r in records)
    assert not torch.equal(trainer.char_head.neck.weight, neck)  # trained, and saved in state.pt with it
    resumed = make_trainer(tmp_path / "run", few, steps=3, char_loss=1.0, neck_char_loss=1.0, lr=3e-3)
    assert torch.equal(resumed.char_head.neck.weight, trainer.char_head.neck.weight)
    folder = trainer.export(tmp_path / "export")
    loaded = from_pretrained(folder, dtype=torch.float32)  # strict: the official layout, no head
    assert set(loaded.state_dict()) == set(trainer.model.state_dict())
    with pytest.raises(ValueError, match="neck_char_loss"):
        TrainConfig(neck_char_loss=1.0)  # no character loss to read beside


def test_a_new_run_starts_from_an_exported_checkpoint(tmp_path, few):
    first = make_trainer(tmp_path / "first", few, steps=1)
    first.train()
    export = first.export(tmp_path / "export")
    second = make_trainer(tmp_path / "second", few, steps=3, init_from=export)
    assert second.step == 0 and second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    for key, value in first.model.state_dict().items():  # the export's weights, bfloat16 as exported
        torch.testing.assert_close(second.model.state_dict()[key], value.bfloat16().float(), msg=key)
    second.train(max_steps=1)
    assert json.loads((tmp_path / "second" / "run.json").read_text())["init_from"] == str(export)
    again = make_trainer(tmp_path / "second", few, steps=3, init_from=export)
    assert again.step == 1  # a run folder with state.pt resumes: init_from only seeds a new one
    torch.testing.assert_close(again.model.state_dict(), second.model.state_dict())
    # as the command line resumes it, with no model config given: the architecture is the checkpoint's
    config = TrainConfig(steps=3, eval_every=0, min_lines=2, warmup=2)
    cli = Trainer(tmp_path / "second", config, device="cpu", paragraphs=few, vocab_size=400, init_from=export)
    assert cli.step == 1 and cli.model_config == second.model_config


def test_a_new_decoder_of_another_vocabulary_starts_on_an_exported_encoder(tmp_path, few):
    first = make_trainer(tmp_path / "first", few, steps=1)
    first.train()
    export = first.export(tmp_path / "export")
    torch.manual_seed(0)
    config = TrainConfig(steps=3, eval_every=0, min_lines=2, warmup=2, freeze_encoder=True)
    chars = Trainer(
        tmp_path / "chars",
        config,
        device="cpu",
        paragraphs=few,
        vocab_size=CHAR_VOCAB,
        init_encoder_from=export,
    )
    # one id a character: the byte-level tokenizer learnt no merges, and reads back any text
    assert len(chars.tokenizer) == CHAR_VOCAB
    text = "naïve café, x = 1;\n  done 🙂"
    ids = chars.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode()) and chars.tokenizer.decode(ids) == text
    assert chars.model_config.decoder.vocab_size == CHAR_VOCAB
    assert (
        chars.model_config.sam == first.model_config.sam
        and chars.model_config.clip == first.model_config.clip
    )
    started = chars.model.state_dict()
    for key, value in first.model.state_dict().items():
        if key.startswith(ENCODER_PREFIXES):  # the export's encoder, bfloat16 as exported
            torch.testing.assert_close(started[key], value.bfloat16().float(), msg=key)
        elif key.startswith("model.layers."):  # a decoder of its own, from random weights
            assert not torch.equal(started[key], value), key
    chars.train(max_steps=1)
    info = json.loads((tmp_path / "chars" / "run.json").read_text())
    assert info["init_encoder_from"] == str(export) and info["vocab_size"] == CHAR_VOCAB
    again = Trainer(tmp_path / "chars", config, device="cpu", paragraphs=few, init_encoder_from=export)
    assert again.step == 1 and len(again.tokenizer) == CHAR_VOCAB  # resumed with its own tokenizer
    torch.testing.assert_close(again.model.state_dict(), chars.model.state_dict())
    # a decoder carried onto an encoder trained apart: the first's decoder, another run's encoder
    apart = make_trainer(tmp_path / "apart", few, steps=1, seed=1)
    apart.train()
    both = make_trainer(
        tmp_path / "both", few, init_from=export, init_encoder_from=apart.export(tmp_path / "a")
    )
    assert both.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    moved, trained = both.model.state_dict(), apart.model.state_dict()
    for key, value in first.model.state_dict().items():
        want = trained[key] if key.startswith(ENCODER_PREFIXES) else value
        torch.testing.assert_close(moved[key], want.bfloat16().float(), msg=key)
    assert not torch.equal(moved["model.projector.layers.weight"], started["model.projector.layers.weight"])
    deeper = dataclasses.replace(toy_config(), clip=dataclasses.replace(toy_config().clip, num_layers=2))
    other = Trainer(
        tmp_path / "other", config, model_config=deeper, device="cpu", paragraphs=few, vocab_size=400
    )
    other_export = other.export(tmp_path / "other-export")  # an encoder of another architecture
    with pytest.raises(ValueError, match="not of the architecture of the one in"):
        make_trainer(tmp_path / "no", few, init_from=export, init_encoder_from=other_export)
    with pytest.raises(
        ValueError, match=f"{tmp_path / 'chars'} holds no config.json"
    ):  # a run, not an export
        make_trainer(tmp_path / "new", few, init_encoder_from=tmp_path / "chars")
    with pytest.raises(ValueError, match="windowed_sam"):
        Trainer(
            tmp_path / "new",
            TrainConfig(windowed_sam=True),
            device="cpu",
            paragraphs=few,
            init_encoder_from=export,
        )


def test_a_windowed_sam_drops_the_global_block_and_exports_its_own_architecture(tmp_path, few):
    trainer = make_trainer(tmp_path / "windowed", few, steps=1, windowed_sam=True)
    assert trainer.model_config.sam.global_attn_indexes == ()
    assert all(block.window_size > 0 for block in trainer.model.model.sam_model.blocks)
    trainer.train()
    export = trainer.export(tmp_path / "export")
    loaded = from_pretrained(export, dtype=torch.float32)  # strict: its config.json says windowed only
    assert loaded.config.sam.global_attn_indexes == ()
    with pytest.raises(ValueError, match="windowed_sam"):
        make_trainer(tmp_path / "new", few, windowed_sam=True, init_from=export)
    assert not (tmp_path / "new" / "tokenizer.json").exists()  # refused before anything was copied
    with pytest.raises(ValueError, match="same settings"):  # its state.pt was trained windowed
        make_trainer(tmp_path / "windowed", few, steps=1)


def test_character_targets_follow_the_renderer_geometry():
    renderer = Renderer(RenderConfig())
    margin, line_height, cell = renderer.config.margin, renderer.config.line_height, renderer.cell_width
    lines = ["Hello world", "x = 1"]

    def drawn(y, x):  # the class of the character the renderer drew at page pixel (y, x); -100: no line
        row, col = (y - margin) // line_height, (x - margin) // cell
        if y < margin or row >= len(lines):
            return -100
        return char_class(lines[row][col]) if x >= margin and col < len(lines[row]) else 0

    targets = char_targets("\n".join(lines), 1024, renderer)
    assert targets.shape == (16 * 16, CHAR_GRID**2)
    # token (0, 0) covers page pixels 0-63, its points at 8, 24, 40 and 56 px each way
    expected = [[drawn(y, x) for x in (8, 24, 40, 56)] for y in (8, 24, 40, 56)]
    assert targets[0].view(4, 4).tolist() == expected
    assert expected[1] == [0, *(char_class(c) for c in "Hel")] and expected[0] == [-100] * 4  # the margins
    assert targets[1:16].max() > 0  # the rest of the lines, to the right
    assert (targets[16:] == -100).all()  # below the page's two lines nothing is scored
    # at 512 px a token covers 128 page pixels: its points at 8, 24, 40, 56 px of the page as the encoder
    # sees it are 16, 48, 80, 112 px of the page as drawn, 32 px apart: line 0 (24-42 px) falls between
    small = char_targets("\n".join(lines), 512, renderer)
    points = (16, 48, 80, 112)
    assert small.shape == (8 * 8, 16)
    assert small[0].view(4, 4).tolist() == [[drawn(y, x) for x in points] for y in points]
    assert small[0].view(4, 4)[1, 1] == char_class("=")  # line 1, "x = 1"
    # started 12 px into the cell instead of 8 (8 px further down and right on the page), it lands on line 0
    shifted = char_targets("\n".join(lines), 512, renderer, offset=(12.0, 12.0))
    assert shifted[0].view(4, 4).tolist() == [[drawn(y + 8, x + 8) for x in points] for y in points]
    assert shifted[0].view(4, 4)[0, 0] == char_class("H")
    assert char_class(" ") == 0 and char_class("!") == 1 and char_class("~") == 94 and char_class("é") == 95


def test_the_attention_guide_points_each_token_at_the_cell_of_its_first_character(tmp_path, few):
    tokenizer = make_trainer(tmp_path / "run", few).tokenizer
    renderer = Renderer(RenderConfig())  # margin 24 px, lines 19 px, characters 9 px: 7 a 64 px token
    lines = ["Hello world, naïve", "", "x = 1;" + " " * 24 + "done"]  # "done" at column 30
    text = "\n".join(lines)
    ids = tokenizer.encode(text, add_special_tokens=False)
    keys = guide_keys(text, tokenizer, 1024, renderer)
    assert len(keys) == len(ids) + 1 and keys[-1] == -1  # one per token the decoder predicts; none for EOS
    # the cell (row, column) of 16 x 16 that holds each character, from the geometry: line 0 at 24-43 px
    # down, line 2 at 62-81 px (row 1); column c at 24 + 9c to 33 + 9c px across
    cell = {"H": (0, 0), "w": (0, 1), "n": (0, 2), "x": (1, 0), "1": (1, 1), "d": (1, 4)}
    index = {"H": 0, "w": 6, "n": 13, "x": len(lines[0]) + 2, "1": len(lines[0]) + 6, "d": text.index("done")}
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    firsts = {}
    for (start, end), key in zip(offsets, keys, strict=False):
        first = next((i for i in range(start, end) if not text[i].isspace()), None)
        if first is None:
            assert key == -1  # a token of spaces or newlines alone is not guided
        else:
            firsts[first] = key
    for char, at in index.items():
        row, column = cell[char]
        assert firsts[at] == row * 17 + column, char  # each row of 16 tokens ends in its newline token
    # the page as drawn has ink in every cell a key names
    page = renderer.draw(renderer.layout([(None, text)])[0][0])
    ink = torch.from_numpy(np.asarray(page.convert("L")) < 128)  # (1024, 1024)
    for key in (k for k in keys if k >= 0):
        row, column = divmod(key, 17)
        assert ink[row * 64 : (row + 1) * 64, column * 64 : (column + 1) * 64].any(), key
    # at 512 px a token covers 128 px of the page: all three lines sit on the first row of 8 tokens
    small = guide_keys(text, tokenizer, 512, renderer)
    assert small[0] == 0 and {k // 9 for k in small if k >= 0} == {0}


def test_the_guided_head_is_the_attention_the_layer_computes(tmp_path, few):
    trainer = make_trainer(tmp_path / "run", few, guide_attention=1.0)
    samples = trainer.stream.batch(3)[:2]
    samples[1] = dataclasses.replace(samples[1], text=samples[1].text.split("\n")[0])  # rows left-padded
    attention = trainer.guided
    d = attention.head_dim
    head = slice(GUIDE_HEAD * d, (GUIDE_HEAD + 1) * d)
    for batch, padded in ((samples, True), (samples[:1], False)):  # the model's mask, and its causal flag
        rows = page_rows(trainer.model, batch)
        assert rows.mask.all() != padded
        with torch.no_grad():
            trainer.model(rows.embeds, attention_mask=rows.mask)
        x, cos, sin, _, _ = trainer._seen
        assert (trainer._seen[3] is not None) == padded
        weights = head_log_attention(attention, trainer._seen, GUIDE_HEAD).exp()  # (B, T, T)
        v = F.linear(x, attention.v_proj.weight[head])  # (B, T, D)
        mask, is_causal = trainer.model.model._attention_mask(rows.mask.bool(), 0, x.shape[1])
        q = F.linear(x, attention.q_proj.weight[head])[:, None]
        k = F.linear(x, attention.k_proj.weight[head])[:, None]
        expected = F.scaled_dot_product_attention(
            apply_rope(q, cos, sin), apply_rope(k, cos, sin), v[:, None], attn_mask=mask, is_causal=is_causal
        )[:, 0]
        real = rows.mask.bool()
        torch.testing.assert_close((weights @ v)[real], expected[real], atol=1e-5, rtol=1e-4)


def learn_alone(trainer, samples, term, steps=30):
    """Train on one term of ``trainer.losses`` alone ("guide", "slot"), on one batch, with Adam at 3e-3."""
    optimizer = torch.optim.Adam(trainer.trained_parameters(), lr=3e-3)
    for _ in range(steps):
        trainer.losses(samples)
        optimizer.zero_grad()
        getattr(trainer, term).backward()
        optimizer.step()


def test_the_attention_guide_teaches_a_head_where_to_look_and_is_not_exported(tmp_path, few):
    trainer = make_trainer(tmp_path / "run", few, steps=2, guide_attention=1.0, lr=3e-3)
    samples = trainer.stream.batch(1)
    trainer.losses(samples)
    first = trainer.guide.item()
    assert first > 0
    learn_alone(trainer, samples, "guide")
    trainer.losses(samples)
    assert trainer.guide.item() < 0.7 * first
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["guide_loss"] > 0 and r["loss"] > 0 for r in records)
    exported = from_pretrained(trainer.export(tmp_path / "export"), device="cpu")
    assert exported.state_dict().keys() == trainer.model.state_dict().keys()
    plain = make_trainer(tmp_path / "plain", few, steps=1)
    plain.train()
    assert plain.guide is None and "guide_loss" not in (tmp_path / "plain" / "log.jsonl").read_text()
    with pytest.raises(ValueError, match="guide_attention"):
        TrainConfig(guide_attention=1.0, decoder_loss=0.0, char_loss=1.0)
    with pytest.raises(ValueError, match="guide_attention must be >= 0"):
        TrainConfig(guide_attention=-1.0)


def test_each_slot_the_guide_names_is_the_grid_point_on_the_tokens_first_character(tmp_path, few):
    tokenizer = make_trainer(tmp_path / "run", few).tokenizer
    renderer = Renderer(RenderConfig())
    text = "\n".join(["Hello world, naive reader: ~42 {x}", "", "    indented = [1, 2]  # and done"] * 3)
    ids = tokenizer.encode(text, add_special_tokens=False)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for side in (1024, 512):
        keys = guide_keys(text, tokenizer, side, renderer)
        slots = guide_slots(text, tokenizer, side, renderer)
        assert len(slots) == len(ids) + 1 and [s < 0 for s in slots] == [k < 0 for k in keys]
        assert all(0 <= s < GUIDE_SLOTS for s in slots if s >= 0)
    # at 1024 px the grid has a point on every character: the one the guide names is the token's first,
    # as the encoder's character head is asked it
    grid = char_targets(text, 1024, renderer, columns=COMPLETE_COLUMNS)  # (16 * 16, GUIDE_SLOTS)
    keys, slots = guide_keys(text, tokenizer, 1024, renderer), guide_slots(text, tokenizer, 1024, renderer)
    guided = [(span, key, slot) for span, key, slot in zip(offsets, keys, slots, strict=False) if key >= 0]
    assert len(guided) > 20
    for (start, end), key, slot in guided:
        first = next(text[i] for i in range(start, end) if not text[i].isspace())
        row, column = divmod(key, 17)  # rows of 16 tokens and their newline
        assert grid[row * 16 + column, slot] == char_class(first), (first, key, slot)


def test_the_slot_guide_is_learnt_resumed_and_not_exported(tmp_path, few):
    trainer = make_trainer(tmp_path / "run", few, steps=2, guide_attention=1.0, guide_slot=1.0, lr=3e-3)
    samples = trainer.stream.batch(1)
    trainer.losses(samples)
    first = trainer.slot.item()
    assert first > 0
    trainer.slot.backward()  # it reads the guided layer's output: the layers up to it learn, not the last
    layers = trainer.model.model.layers
    assert layers[-2].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert layers[-1].self_attn.q_proj.weight.grad is None
    learn_alone(trainer, samples, "slot")
    trainer.losses(samples)
    assert trainer.slot.item() < 0.9 * first
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["slot_loss"] > 0 and r["guide_loss"] > 0 for r in records)
    exported = from_pretrained(trainer.export(tmp_path / "export"), device="cpu")
    assert exported.state_dict().keys() == trainer.model.state_dict().keys()  # no slot head in the checkpoint
    resumed = make_trainer(tmp_path / "run", few, steps=2, guide_attention=1.0, guide_slot=1.0, lr=3e-3)
    torch.testing.assert_close(resumed.slot_head.state_dict(), trainer.slot_head.state_dict())
    with pytest.raises(ValueError, match="guide_slot must be >= 0"):
        TrainConfig(guide_slot=-1.0)
    with pytest.raises(ValueError, match="guide_slot"):
        TrainConfig(guide_slot=1.0, decoder_loss=0.0, char_loss=1.0)


def test_the_guide_can_teach_every_head_of_its_layer(tmp_path, few):
    trainer = make_trainer(tmp_path / "run", few, guide_attention=1.0, guide_heads=2)  # the toy's 2 heads
    samples = trainer.stream.batch(1)
    keys = [guide_keys(s.text, trainer.tokenizer, s.side, trainer.stream.renderer) for s in samples]
    rows = page_rows(trainer.model, samples)
    pairs = []  # (row, query position, key position): each text token's predictor and its cell
    for b, (row_keys, start) in enumerate(zip(keys, rows.vision_starts, strict=True)):
        queries = (rows.labels[b] != -100).nonzero().flatten().tolist()
        pairs += [(b, q, k + start) for q, k in zip(queries, row_keys, strict=True) if k >= 0]
    index = tuple(torch.tensor(column) for column in zip(*pairs, strict=True))

    def log_attention_to_keys() -> torch.Tensor:
        """Each head's mean log attention, over the guided positions, to the cell it is told to look at."""
        now = page_rows(trainer.model, samples)  # the rows as the model embeds them now
        trainer.model(now.embeds, attention_mask=now.mask)
        return torch.stack(
            [head_log_attention(trainer.guided, trainer._seen, h)[index].mean() for h in (0, 1)]
        )

    with torch.no_grad():
        before = log_attention_to_keys()
        trainer.losses(samples)
        assert trainer.guide.item() == pytest.approx(-before.mean().item(), rel=1e-5)  # both heads' mean
        one = guide_loss(trainer.guided, trainer._seen, rows, keys)
        assert one.item() == pytest.approx(-before[0].item(), rel=1e-5)  # the default: head 0 alone
    learn_alone(trainer, samples, "guide")
    with torch.no_grad():
        after = log_attention_to_keys()
    assert (after.exp() > 2 * before.exp()).all(), (before, after)  # each head learnt where to look
    with pytest.raises(ValueError, match="guide heads 3 from head 0: the layer has 2"):
        guide_loss(trainer.guided, trainer._seen, rows, keys, heads=3)
    with pytest.raises(ValueError, match="guide_heads must be at least 1, got 0"):
        TrainConfig(guide_attention=1.0, guide_heads=0)
    with pytest.raises(ValueError, match="guide_heads 3: the decoder's layers have 2"):
        make_trainer(tmp_path / "three", few, guide_attention=1.0, guide_heads=3)


def test_a_complete_grid_scores_every_character_column_the_default_grid_misses_some():
    renderer = Renderer(RenderConfig())
    printable = "".join(chr(c) for c in range(33, 127))  # 94 distinct characters, one a column
    line = printable + printable[: renderer.columns - len(printable)]
    scored = {}
    for columns in (CHAR_GRID, COMPLETE_COLUMNS):
        targets = char_targets(line, 1024, renderer, columns=columns)
        assert targets.shape == (16 * 16, CHAR_GRID * columns)
        scored[columns] = set(targets[targets > 0].tolist())
    assert scored[COMPLETE_COLUMNS] == {char_class(c) for c in printable}  # every column of line 0
    # 16 px apart across 9 px characters: about 4 in 7 columns, the same on every line
    assert 0.5 < len(scored[CHAR_GRID]) / len(printable) < 0.65
    # 8 points across a token, at 4, 12, ..., 60 px; the text starts at the 24 px margin, 9 px a character
    row = char_targets(line, 1024, renderer, columns=COMPLETE_COLUMNS)[0].view(CHAR_GRID, COMPLETE_COLUMNS)[1]
    assert row.tolist() == [0, 0, 0, *(char_class(line[(x - 24) // 9]) for x in range(28, 64, 8))]


def test_a_head_on_the_complete_grid_trains_and_evaluates(tmp_path, few):
    trainer = make_trainer(
        tmp_path / "run", few, steps=2, char_loss=1.0, neck_char_loss=1.0, char_columns=COMPLETE_COLUMNS
    )
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["char_loss"] > 0 and r["neck_char_loss"] > 0 for r in records)
    samples = [s for s in held_out_samples(1) if s.side == 1024]
    logits, targets = trainer.char_logits(samples, vision_features(trainer.model, samples))
    assert targets.shape == (1, 16 * 16, CHAR_GRID * COMPLETE_COLUMNS) and logits.shape[:3] == targets.shape
    assert set(trainer.evaluate(samples)["char_accuracy"]) == {1024}
    with pytest.raises(ValueError, match="char_columns"):
        TrainConfig(char_columns=0)


def test_the_character_loss_trains_a_head_the_export_leaves_out(tmp_path, few):
    trainer = make_trainer(tmp_path / "run", few, steps=30, char_loss=1.0, lr=3e-3)
    trainer.train(max_steps=1)
    [record] = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert record["char_loss"] > 1.0  # a fresh head: about ln(96) = 4.6 nats
    samples = trainer.stream.batch(1)
    first = trainer.losses(samples)[2].item()
    for _ in range(30):
        loss, _, char = trainer.losses(samples)
        trainer.optimizer.zero_grad()
        (loss + char).backward()
        trainer.optimizer.step()
    assert trainer.losses(samples)[2].item() < 0.7 * first  # the vision tokens learn to carry the page
    trainer.save()
    folder = trainer.export(tmp_path / "export")
    model = from_pretrained(folder, dtype=torch.float32)  # strict: the head is not in the checkpoint
    assert set(model.state_dict()) == set(trainer.model.state_dict())
    resumed = make_trainer(tmp_path / "run", few, steps=30, char_loss=1.0, lr=3e-3)
    assert resumed.char_head is not None
    torch.testing.assert_close(resumed.char_head.state_dict(), trainer.char_head.state_dict())


def test_export_loads_through_the_strict_path_and_reads(tmp_path, few):
    trainer = make_trainer(tmp_path / "run", few, steps=1)
    trainer.train()
    folder = trainer.export(tmp_path / "export")
    model = from_pretrained(folder, dtype=torch.float32)
    assert model.config == trainer.model_config
    for key, value in trainer.model.state_dict().items():
        assert torch.allclose(value.bfloat16().float(), model.state_dict()[key]), key
    page = trainer.stream.sample(0, 0, 384).image
    [text] = model.read([page], 384, config=GenerationConfig(max_new_tokens=5))
    assert isinstance(text, str)
