"""Text baselines for optical compression, at the same token budget as a page's vision tokens.

"Optical context compression is just (bad) autoencoding" (arXiv 2512.03643) asks that every optical
result be shown beside simple text compressors given the same number of decoder positions. Two are here,
both over the page's own text (so they need the store's ``retain_text=True`` audit mode):

* ``mean_pool``: the page's text-token embeddings (the decoder's own embedding table) averaged over ``n``
  contiguous runs, so ``n`` vectors stand in for the ``n`` vision tokens;
* ``truncate``: the first ``n`` tokens of the page's text, as text.

``build_context(mode="vision", page_form="meanpool" | "truncate")`` uses them in place of a page's tokens.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInput

PAGE_FORMS = ("vision", "meanpool", "truncate")


def mean_pool(embeddings: np.ndarray, n: int) -> np.ndarray:
    """(T, D) token embeddings -> (n, D): the mean of each of ``n`` contiguous, near-equal runs of tokens.

    With fewer tokens than ``n`` the result has T rows (one per token): a pooled baseline never pads.
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InvalidInput(f"mean_pool needs a non-empty (tokens, dim) array, got shape {embeddings.shape}")
    if n < 1:
        raise InvalidInput(f"mean_pool needs n >= 1, got {n!r}")
    runs = np.array_split(embeddings.astype(np.float32), min(n, embeddings.shape[0]))
    return np.stack([run.mean(axis=0) for run in runs])  # (min(n, T), D)


def truncate_ids(ids: list[int], n: int) -> list[int]:
    """The first ``n`` token ids."""
    if n < 0:
        raise InvalidInput(f"truncate needs n >= 0, got {n!r}")
    return ids[:n]
