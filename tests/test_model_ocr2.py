"""DeepSeek-OCR 2 through transformers: a tiny random checkpoint in the transformers layout (config, weights,
byte-level tokenizer, processor) loaded by ``from_pretrained_ocr2``; token counts against the processor, and
encode + generate against transformers' own end-to-end ``generate`` on the same inputs.

The tiny sizes keep the real token counts: DeepSeek-OCR 2's learned queries are hard-coded (256 for the global
view, 144 per tile) and the query set is picked by the SAM output size (<= 144 patches: tiles), so the global
view must give a 16 x 16 SAM grid after the 4x compressor and a tile 12 x 12. With SAM patches of 2 px that is
a 128 px global view and 96 px tiles (instead of 1024 / 768 with 16 px patches); every width is tiny. SAM
attention is windowed only (one global layer over the 64 x 64 grid would cost ~0.3 s per view) and its weights
are drawn with std 0.02 (the default 1e-10 gives denormal floats: very slow, and blind to the image).
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from optical_memory.model.generation import GenerationConfig
from optical_memory.model.loading import CheckpointError
from optical_memory.model.ocr2 import (
    REPO_ID,
    DeepseekOCR2,
    NoRepeatNGramLogitsProcessor,
    from_pretrained_ocr2,
)

GLOBAL, TILE, SAM_PATCH = 128, 96, 2  # 64 x 64 and 48 x 48 SAM grids -> 16 x 16 and 12 x 12 after compression
IMAGE_TOKEN_ID = 3
PROMPT = "<image>\nFree OCR."
GREEDY = GenerationConfig(max_new_tokens=8, ngram_size=None)


def write_tiny_checkpoint(folder: Path) -> None:
    """A random DeepSeek-OCR 2 in the layout of deepseek-community/DeepSeek-OCR-2, tiny enough for CPU."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import (
        DeepseekOcr2Config,
        DeepseekOcr2ForConditionalGeneration,
        DeepseekOcr2Processor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
        DeepseekOcr2ImageProcessorPil,
    )

    specials = ["<bos>", "<eos>", "<pad>", "<image>"]  # ids 0..3, then the 256 byte-level symbols
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    assert tokenizer.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID

    config = DeepseekOcr2Config(
        vision_config={
            "sam_config": {
                "hidden_size": 16,
                "output_channels": 8,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": GLOBAL,
                "patch_size": SAM_PATCH,
                "window_size": 8,
                "global_attn_indexes": [],  # windowed only: global attention over 64 x 64 costs ~0.3 s a view
                "initializer_range": 0.02,  # the default 1e-10 gives denormal weights: slow, image-blind
                "mlp_dim": 32,
                "downsample_channels": [16, 32],
            },
            "encoder_config": {
                "vocab_size": 1,  # the encoder LM has no token embedding in use
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 1024,
            },
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "moe_intermediate_size": 16,
            "mlp_layer_types": ["dense", "sparse", "sparse"],
            "max_position_embeddings": 2048,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 2,
        },
        image_token_id=IMAGE_TOKEN_ID,
    )
    torch.manual_seed(0)
    model = DeepseekOcr2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # large vision embeddings, so that the generated text depends on the image
        model.model.multi_modal_projector.weight.normal_(std=1.0)
    model.save_pretrained(folder)
    image_processor = DeepseekOcr2ImageProcessorPil(size={"height": GLOBAL, "width": GLOBAL}, tile_size=TILE)
    processor = DeepseekOcr2Processor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=SAM_PATCH, downsample_ratio=4
    )
    processor.save_pretrained(folder)


def page(width: int, height: int, seed: int) -> Image.Image:
    noise = np.random.default_rng(seed).normal(128, 60, size=(height, width)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(noise).convert("RGB")  # seeded: PIL's effect_noise is not
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), f"page {seed}", fill="black")
    draw.rectangle((seed * 7 % width, 10, seed * 7 % width + 20, 30), fill="white")
    return image


SMALL = (80, 60)  # no side above the tile: global view only
WIDE = (300, 100)  # 3:1, tiled 3 x 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("deepseek-ocr-2")
    write_tiny_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ocr2(folder: Path) -> DeepseekOCR2:
    return from_pretrained_ocr2(folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [page(*SMALL, seed=1), page(*WIDE, seed=2)]


def processor_inputs(
    ocr2: DeepseekOCR2, image: Image.Image, mode: str = "gundam", prompt: str = PROMPT
) -> dict:
    """transformers' own preprocessing of one request, as a user of the processor would call it."""
    return dict(ocr2.processor(images=[image], text=prompt, return_tensors="pt", **ocr2.mode_kwargs(mode)))


# -- loading ----------------------------------------------------------------------------------------------


def test_loads_the_converted_layout(ocr2, folder):
    from transformers import DeepseekOcr2ForConditionalGeneration

    assert isinstance(ocr2.model, DeepseekOcr2ForConditionalGeneration)
    assert not ocr2.model.training
    assert ocr2.image_token_id == IMAGE_TOKEN_ID and ocr2.image_token == "<image>"
    assert ocr2.dtype == torch.float32 and ocr2.device == torch.device("cpu")
    assert from_pretrained_ocr2(folder).dtype == torch.bfloat16  # the default dtype


def test_missing_folder_names_the_download(tmp_path):
    with pytest.raises(CheckpointError, match=f"no config.json.*{REPO_ID}.*hf download"):
        from_pretrained_ocr2(tmp_path / "absent")


def test_incomplete_or_wrong_folders_are_errors(folder, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(folder / "config.json", partial)
    with pytest.raises(CheckpointError, match=f"no \\*.safetensors weights.*{REPO_ID}"):
        from_pretrained_ocr2(partial)
    shutil.copy(folder / "model.safetensors", partial)
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json"):
        from_pretrained_ocr2(partial)

    original = tmp_path / "original"  # the remote-code layout of deepseek-ai/DeepSeek-OCR-2
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"model_type": "deepseek_vl_v2"}))
    with pytest.raises(CheckpointError, match=f"model_type 'deepseek_vl_v2'.*{REPO_ID}"):
        from_pretrained_ocr2(original)

    deeper = tmp_path / "deeper"  # weights that do not fit the config: a strict error, not random weights
    shutil.copytree(folder, deeper)
    config = json.loads((deeper / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 4
    config["text_config"]["mlp_layer_types"].append("sparse")
    (deeper / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing.*language_model\.layers\.3\."):
        from_pretrained_ocr2(deeper, dtype=torch.float32)


# -- modes and token counts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "small", "wide"),
    [
        ("gundam", 256 + 1, 3 * 144 + 256 + 1),  # the wide page is tiled 3 x 1
        ("base", 256 + 1, 256 + 1),  # the global view alone
        ("small", 144 + 1, 144 + 1),  # the tile-sized view alone
        (GLOBAL, 256 + 1, 256 + 1),
        (TILE, 144 + 1, 144 + 1),
    ],
)
def test_encode_gives_the_processors_token_counts(ocr2, images, mode, small, wide):
    vision = ocr2.encode(images, mode)
    assert [v.shape for v in vision] == [(small, 32), (wide, 32)]
    for image, v in zip(images, vision, strict=True):
        ids = processor_inputs(ocr2, image, mode)["input_ids"]
        assert int((ids == IMAGE_TOKEN_ID).sum()) == v.shape[0] == ocr2.count_image_tokens(*image.size, mode)


def test_unsupported_modes_are_refused(ocr2, images):
    for mode in ("tiny", "large", 384, True):
        with pytest.raises(ValueError, match="mode"):
            ocr2.encode(images, mode)


def test_encode_is_get_image_features_in_any_batching(ocr2, images):
    many = [*images, page(200, 400, seed=3)]  # the tall page is tiled 1 x 2
    one_by_one = ocr2.encode(many, "gundam", batch_size=1)
    together = ocr2.encode(many, "gundam", batch_size=64)
    for image, a, b in zip(many, one_by_one, together, strict=True):
        inputs = processor_inputs(ocr2, image)
        with torch.no_grad():
            reference = ocr2.model.get_image_features(
                pixel_values=inputs["pixel_values"],
                pixel_values_local=inputs.get("pixel_values_local"),
                num_local_patches=inputs["num_local_patches"],
            ).pooler_output[0]
        torch.testing.assert_close(a, reference)
        torch.testing.assert_close(b, reference, rtol=1e-4, atol=1e-5)
        assert torch.equal(a[-1], ocr2.model.model.view_separator)  # the layout ends with the separator


# -- generation -------------------------------------------------------------------------------------------


def transformers_end_to_end(ocr2: DeepseekOCR2, image: Image.Image, prompt: str = PROMPT) -> list[int]:
    """Greedy tokens from transformers' own pipeline: processor -> generate(pixel_values=...), EOS cut."""
    inputs = processor_inputs(ocr2, image, prompt=prompt)
    with torch.no_grad():
        out = ocr2.model.generate(**inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    return new[: new.index(1)] if 1 in new else new


def test_prompt_ids_are_the_processors(ocr2, images):
    for image in images:
        count = ocr2.count_image_tokens(*image.size)
        expected = processor_inputs(ocr2, image)["input_ids"][0].tolist()
        assert ocr2.prompt_ids(PROMPT, [count]) == expected
    with pytest.raises(ValueError, match="1 '<image>' placeholders but 2 images"):
        ocr2.prompt_ids(PROMPT, [257, 257])


def test_encode_then_generate_equals_transformers_generate(ocr2, images):
    vision = ocr2.encode(images, "gundam")
    ours = [ocr2.generate_ids([v], PROMPT, config=GREEDY)[0] for v in vision]
    theirs = [transformers_end_to_end(ocr2, image) for image in images]
    assert ours == theirs
    assert ours[0] != ours[1]  # the text depends on the image, so the comparison means something
    assert ocr2.generate_ids(vision, PROMPT, config=GREEDY) == ours  # left-padded batch, same tokens
    texts = ocr2.read(images, "gundam", config=GREEDY)  # encode + generate
    assert texts == [ocr2.tokenizer.decode(t, skip_special_tokens=True) for t in ours]


def test_prompt_text_and_several_images_per_request(ocr2, images):
    vision = ocr2.encode(images, "small")
    prompt = "<image>\n<image>\nCompare."
    ids = ocr2.prompt_ids(prompt, [145, 145])
    assert ids.count(IMAGE_TOKEN_ID) == 290 and ids[0] == 0  # BOS from the tokenizer, as the processor does
    assert len(ocr2.generate([vision], prompt, config=GREEDY)) == 1
    assert ocr2.generate([], config=GREEDY) == []
    with pytest.raises(ValueError, match=r"vision embeddings must be \(positions, 32\)"):
        ocr2.generate([vision[0][:, :16]], config=GREEDY)
    with pytest.raises(ValueError, match="2 prompts for 1 requests"):
        ocr2.generate([vision[0]], [PROMPT, PROMPT], config=GREEDY)


def test_no_repeat_ngram_guard_runs_inside_transformers_generate(ocr2, images):
    vision = ocr2.encode(images[:1], "base")
    loose = ocr2.generate_ids(vision, config=GenerationConfig(max_new_tokens=24, ngram_size=None))[0]
    guarded = ocr2.generate_ids(
        vision,
        config=GenerationConfig(max_new_tokens=24, ngram_size=2, window_size=50, whitelist_token_ids=()),
    )[0]

    def bigrams(tokens: list[int]) -> list[tuple[int, int]]:
        return list(itertools.pairwise(tokens))

    assert len(set(bigrams(loose))) < len(bigrams(loose))  # the random model loops without the guard
    assert len(set(bigrams(guarded))) == len(bigrams(guarded))  # and repeats no bigram with it
    assert guarded != loose


def test_the_adapter_skips_the_prompt(ocr2):
    from optical_memory.model.generation import NoRepeatNGram

    guard = NoRepeatNGram(ngram_size=2, window_size=10)
    adapter = NoRepeatNGramLogitsProcessor(guard, prompt_length=3)
    input_ids = torch.tensor([[7, 8, 7, 5, 6, 5]])  # the prompt's 7 8 7 would ban 8; the new 5 6 5 bans 6
    scores = adapter(input_ids, torch.zeros(1, 10))
    assert torch.isinf(scores[0]).nonzero().flatten().tolist() == [6]


def test_sampling_is_seeded_and_leaves_the_global_generator_alone(ocr2, images):
    vision = ocr2.encode(images[:1], "base")
    config = GenerationConfig(max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9, temperature=1.5, seed=7)
    state = torch.random.get_rng_state()
    first = ocr2.generate_ids(vision, config=config)
    assert torch.equal(state, torch.random.get_rng_state())
    assert ocr2.generate_ids(vision, config=config) == first
    others = [
        ocr2.generate_ids(vision, config=GenerationConfig(**{**vars(config), "seed": s})) for s in (1, 2, 3)
    ]
    assert any(o != first for o in others)
