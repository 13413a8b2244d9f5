"""Real chat text end to end on full-size (1024 px) pages: emoji, CJK, kana, Hangul, Devanagari, Arabic,
Hebrew, symbols, agent tool-call JSON and characters no font has. Nothing is refused; every turn is drawn,
read back by the real RapidOCR reader, and characters drawn as stand-ins come back as themselves."""

from __future__ import annotations

from test_render import CHAT, NEWER_THAN_THE_FONTS

import optical_memory as om
from optical_memory.config import AgingPolicy, StoreConfig

SCOPE = "chat"


def test_a_mixed_script_chat_is_stored_drawn_and_recalled_at_1024px(tmp_path, embedder, reader):
    config = StoreConfig(aging=AgingPolicy(text_turns=0))  # every turn goes to a 1024 px page at once
    turns = [{"role": who, "text": text} for who, text in CHAT]
    turns.append({"role": "user", "text": f"new ones: {NEWER_THAN_THE_FONTS} and a private \ue000 glyph"})
    with om.open(tmp_path / "store", config=config, embedder=embedder, reader=reader) as store:
        ids = store.add_many(turns, scope=SCOPE)
        assert len(ids) == len(turns)  # 0 refused turns
        assert [store.recall(i).text for i in ids] == [t["text"] for t in turns]  # retained: exact
        store.age()
        recalled = [store.recall(i, read=True) for i in ids]
        assert [(r.tier, r.source) for r in recalled] == [("1024", reader.name)] * len(ids)
        for r in recalled:
            assert r.text.strip(), f"memory {r.id} read back empty"  # every turn leaves readable ink
        assert "that fixed it" in recalled[0].text and "日本語" in recalled[1].text
        assert '"tool": "search"' in recalled[3].text
        last = recalled[-1].text  # the stand-ins were read off the page and restored
        assert "\U0001f972" in last and "\U0001fae0" in last and "\ue000" in last, last
        info = store.memory_info(ids[-1])
        assert set(info.metadata["_stand_ins"].values()) == {"\U0001f972", "\U0001fae0", "\ue000"}
