"""The memory browser (``optical-memory serve``'s page at /) in a real headless Chromium (Debian's, driven by
Playwright), against a real server on loopback over a real store: a key typed in, the ladder, the timeline,
a page image at its tier with the memory highlighted and what the reader reads from it now, a search with
its hit highlighted on its page, and a context's token account; then the screenshot is checked.

Skips when Chromium or Playwright is missing (``.ci/run`` installs Debian's chromium).
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

import optical_memory as om
from optical_memory import StoreConfig

playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium)"),
]

from test_serve import LiveServer  # noqa: E402

from optical_memory.adapters.keys import KeyRing  # noqa: E402
from optical_memory.adapters.serve import make_app  # noqa: E402

# what Chromium needs here: no sandbox as root, and no calls home (the network is closed)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HIGHLIGHT = np.array([255, 159, 28])  # the highlight's border colour (browser.html's --hit)


def test_the_browser_shows_memory_fading_its_pages_search_hits_and_a_token_account(
    tmp_path, embedder, reader
):
    key = KeyRing(tmp_path / "store").create(["alice"], label="browser test")
    store = om.open(tmp_path / "store", config=StoreConfig.tiny(), embedder=embedder, reader=reader)
    parcels = [f"Turn {i}: the parcel for flat {i} is on shelf {i % 5}." for i in range(12)]
    turns = [store.add(text, scope="alice") for text in parcels]
    doc = store.add("The launch is on Friday at the harbour, gate 7.", scope="alice", kind="document")
    turns += [store.add(f"Turn {i}: noted, shelf {i % 5}.", scope="alice") for i in range(12, 14)]
    store.age()
    tiers = {store.memory_info(m).tier for m in [doc, *turns]}
    assert {"text", "256", "128"} <= tiers  # the ladder has something on several rungs

    with store, LiveServer(make_app(store)) as url, playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")

        page.wait_for_selector("#keybox:not([hidden])")  # the server has keys: the page asks for one
        page.fill("#key", key)
        page.click("#key-go")
        page.wait_for_selector(".memory")
        assert page.inner_text("#who") == f"key {key.split('_')[1]}"
        assert page.locator("#scope option").all_inner_texts() == ["alice"]
        assert page.locator(".memory").count() == 15
        rungs = page.locator(".rung")
        assert rungs.count() == 5  # text, 256, 128, 64, forgotten
        shown = {r.get_attribute("data-tier"): int(r.locator("b").inner_text()) for r in rungs.all()}
        listed = [m.tier for m in store.memories(scope="alice")]
        assert shown == {t: listed.count(t) for t in ("text", "256", "128", "64", "forgotten")}

        page.click(f'.memory[data-id="{doc}"]')
        page.wait_for_function(
            "() => { const i = document.querySelector('#detail-pages img'); return i && i.naturalWidth > 0; }"
        )
        place = store.memory_pages(doc)[0]
        assert page.locator("#detail-pages img").evaluate("i => i.naturalWidth") == int(place.tier)
        box = page.locator("#detail-pages .highlight").bounding_box()
        img = page.locator("#detail-pages img").bounding_box()
        assert box is not None and img is not None
        assert abs(box["y"] - (img["y"] + place.top * img["height"])) < 3  # the memory's lines, not the page
        page.wait_for_function(
            "() => !document.querySelector('#reader-text').textContent.includes('reading.')"
        )
        read = page.inner_text("#reader-text")
        assert "rapidocr at 256 px" in read and "harbour" in read  # what the reader reads from it now

        page.fill("#search-q", "when is the launch?")
        page.click("#search-go")
        page.wait_for_selector("#hits .hit .page img")
        first = page.locator("#hits .hit").first
        assert first.locator("a").inner_text() == f"#{doc}"
        assert first.locator(".highlight").count() == 1

        page.fill("#ctx-q", "when is the launch?")
        page.fill("#ctx-budget", "600")
        page.click("#ctx-go")
        page.wait_for_selector("#account table")
        account = page.inner_text("#account")
        assert "of 600 tokens used" in account and "cl100k_base" in account
        assert page.locator("#account tr").count() >= 2

        shot = page.screenshot(full_page=True)
        (tmp_path / "browser.png").write_bytes(shot)
        browser.close()
    assert errors == []

    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
    assert pixels.shape[1] == 1400 and pixels.shape[0] >= 1100
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # drawn, not a blank or an error page
    assert (np.abs(pixels.astype(int) - HIGHLIGHT).sum(axis=2) < 30).sum() > 500  # two highlighted bands
    # the page images themselves: dark glyphs inside the detail panel's picture
    assert (pixels.min(axis=2) < 60).sum() > 2000
