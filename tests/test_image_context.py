"""Image-mode contexts on real pages with the real RapidOCR reader: each hit as the band of its page that
holds it, bands of one page merged, priced in the target model's own image tokens, and sent at the
cheapest size the target's resize leaves legible (checked here by reading the image that was sent)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

import optical_memory as om
from optical_memory.config import AgingPolicy, Tier
from optical_memory.metrics import cer
from optical_memory.pricing import TARGETS

pytestmark = pytest.mark.slow  # real OCR

SCOPE = "home"
FACT = "Before I forget: the wifi password at the lake cabin is heron-4417, all lowercase."
FILLER = [f"Filler turn {i} is about the weather on day {i} of the trip." for i in range(60)]


def sent(part: dict) -> Image.Image:
    data = part["image_url"]["url"].removeprefix("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.fixture
def store(tmp_path, embedder, reader):
    with om.open(tmp_path / "s", embedder=embedder, reader=reader, aging=AgingPolicy(text_turns=0)) as s:
        s.add(FACT, scope=SCOPE, role="user")
        s.add_many([{"text": t, "role": "assistant"} for t in FILLER], scope=SCOPE)
        s.age()
        yield s


def images_of(ctx: om.Context) -> list[Image.Image]:
    return [sent(p) for p in ctx.parts if p["type"] == "image_url"]


def test_an_image_context_sends_the_band_of_the_hit_priced_in_the_targets_tokens(store, reader):
    query = "What is the wifi password at the lake cabin?"
    whole = store.build_context(query, budget_tokens=4000, mode="image", scope=SCOPE, k=1, crop_margin=None)
    [page] = images_of(whole)
    assert page.size == (1024, 1024) and whole.used_tokens == 256  # DeepEncoder's, without a target

    for target in ("gpt-4o", "claude", "qwen2.5-vl"):
        ctx = store.build_context(query, budget_tokens=4000, mode="image", scope=SCOPE, k=1, target=target)
        assert ctx.target == target
        [band] = images_of(ctx)
        price = TARGETS[target]
        assert band.height < 200 and ctx.used_tokens == price.tokens(*band.size)
        assert ctx.used_tokens < price.tokens(1024, 1024)  # a band costs less than its page
        # what the target is sent still reads: the fact, read from the image as the target resizes it
        seen = band.resize(price.resize(*band.size), Image.Resampling.LANCZOS)
        read = " ".join(line.text for line in reader.read([seen])[0])
        assert "heron-4417" in read, (target, band.size, read)
    tiles = store.build_context(query, budget_tokens=4000, mode="image", scope=SCOPE, k=1, target="gpt-4o")
    [band] = images_of(tiles)
    # half size would fit one 512 px tile, but its glyphs would be 4.5 px, under MIN_CELL_PX; 9/16 or more
    # still takes two tiles, so no smaller size saves anything and the band goes as it is
    assert band.width == 1024 and tiles.used_tokens == 85 + 170 * 2


def test_hits_on_one_page_share_one_image_and_the_account_adds_up(store):
    ctx = store.build_context("weather on the trip", budget_tokens=4000, mode="image", scope=SCOPE, k=4)
    retrieved = [i for i in ctx.items if i.origin == "retrieved"]
    assert len(retrieved) == 4 and len(images_of(ctx)) < 4  # merged bands
    assert sum(i.tokens for i in ctx.items) == ctx.used_tokens


def test_image_options_are_checked(store):
    with pytest.raises(om.InvalidInput, match="'gpt-9'"):
        store.build_context("x", budget_tokens=100, mode="image", target="gpt-9")
    with pytest.raises(om.InvalidInput, match="mode='image' only"):
        store.build_context("x", budget_tokens=100, mode="text", target="claude")
    with pytest.raises(om.InvalidInput, match="crop_margin"):
        store.build_context("x", budget_tokens=100, mode="image", crop_margin=-1)


def test_a_band_holds_the_hits_lines_and_a_margin_of_one_line(store, reader):
    ctx = store.build_context("wifi password", budget_tokens=4000, mode="image", scope=SCOPE, k=1)
    [band] = images_of(ctx)
    lines = [line.text for line in reader.read([band])[0]]
    assert len(lines) == 2 and cer(FACT, lines[0].removeprefix("user: ")) == 0.0  # its line, and one more


def test_a_target_that_rounds_sizes_gets_an_image_it_keeps_as_it_is(tmp_path, embedder, reader):
    """Qwen-VL rounds each side to 28 px: a three-line band of a 512 px page (38 px tall) would reach it 28 px
    tall, its lines squashed past reading. The band is padded with white to a size on its grid instead."""
    aging = AgingPolicy(text_turns=0, tiers=(Tier(side=1024, max_turns=0), Tier(side=512)))
    with om.open(tmp_path / "s", embedder=embedder, reader=reader, aging=aging) as store:
        store.add(FACT, scope=SCOPE, role="user")
        store.add_many([{"text": t, "role": "assistant"} for t in FILLER], scope=SCOPE)
        store.age()
        query = "What is the wifi password at the lake cabin?"
        ctx = store.build_context(
            query, budget_tokens=4000, mode="image", scope=SCOPE, k=1, target="qwen2.5-vl"
        )
        [band] = images_of(ctx)
        price = TARGETS["qwen2.5-vl"]
        assert price.resize(*band.size) == band.size and band.height % 28 == 0  # nothing left to rescale
        assert ctx.used_tokens == price.tokens(*band.size)
        read = " ".join(line.text for line in reader.read([band])[0])
        assert "heron-4417" in read, (band.size, read)


def test_with_a_target_the_bands_of_several_pages_are_stacked_into_one_image(tmp_path, embedder, reader):
    """Each image pays its own overhead (OpenAI's 85-token base and whole 512 px tiles, Gemini's 258-token
    tile, Qwen-VL's wrap tokens and the half-white last row of its grid): bands of different pages share one
    image where that is cheaper and the target keeps it as it is, and still read. Claude's price is per
    pixel: stacking gains it nothing, so its bands go apart."""
    codes = [f"gate code {i}{i}{i}-K{i}" for i in range(1, 5)]
    with om.open(tmp_path / "s", embedder=embedder, reader=reader, aging=AgingPolicy(text_turns=0)) as store:
        for code in codes:  # each on its own page: a page's worth of filler after it
            store.add(f"The barn by the lake has a {code}, remember it.", scope=SCOPE, role="user")
            store.add_many([{"text": t, "role": "assistant"} for t in FILLER], scope=SCOPE)
        store.age()
        query = "What is the gate code of the barn by the lake?"
        alone = store.build_context(query, budget_tokens=10**6, mode="image", scope=SCOPE, k=4)
        assert len(images_of(alone)) == 4  # without a target: one image a page
        for target, images in (("gpt-4o", 1), ("gemini-2", 1), ("qwen2.5-vl", 1), ("claude", 4)):
            ctx = store.build_context(
                query, budget_tokens=10**6, mode="image", scope=SCOPE, k=4, target=target
            )
            price = TARGETS[target]
            sent = images_of(ctx)
            assert len(sent) == images, (target, [image.size for image in sent])
            assert all(price.resize(*image.size) == image.size for image in sent)  # seen as it is sent
            assert ctx.used_tokens == sum(price.tokens(*image.size) for image in sent)
            assert ctx.used_tokens == sum(i.tokens for i in ctx.items)
            read = " ".join(line.text for page in reader.read(sent) for line in page)
            assert all(code in read for code in codes), (target, [image.size for image in sent], read)
            if target == "gpt-4o":  # four images would cost a base and a tile each, at least
                assert ctx.used_tokens < 4 * (85 + 170)
