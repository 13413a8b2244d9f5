"""Quickstart: store a few turns, let them age into page images, search and recall them.

.venv/bin/python examples/quickstart.py
"""

import tempfile

import optical_memory as om
from optical_memory import AgingPolicy

# keep only the newest 2 turns as text so the older ones become pages at once
with tempfile.TemporaryDirectory() as folder, om.open(folder, aging=AgingPolicy(text_turns=2)) as store:
    store.add("My sister Ingrid lives in Tromsø and is allergic to cashews.", scope="alice", role="user")
    store.add("Noted: no cashews for Ingrid.", scope="alice", role="assistant")
    store.add("What should I cook on Friday?", scope="alice", role="user")
    store.add("A lentil curry; it has no nuts at all.", scope="alice", role="assistant")
    print(store.age())  # packs the two older turns into a 1024px page

    hit = store.search("What is Ingrid allergic to?", scope="alice", k=1)[0]
    # The page is not full, so the store still keeps its turns' text and recall(hit.id) would return it
    # (source "retained"); read=True makes the OCR reader (RapidOCR) read the page image instead.
    recall = store.recall(hit.id, read=True)
    print(f"[{recall.tier} px, read by {recall.source}] {recall.text}")

    ctx = store.build_context("What can Ingrid not eat?", budget_tokens=500, scope="alice")
    print(ctx.text)
    print(f"{ctx.used_tokens} tokens used, {ctx.saved_tokens} saved")
