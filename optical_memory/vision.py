"""Vision tokens: each readable page encoded by the configured encoder at the tier it is in now, kept as a
float16 ``.npy`` blob beside the page. Tokens are derived data: a stale, missing or damaged set is dropped
and encoded again. Aging calls :func:`sync_vision` after pages move; vision-mode context reads them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

import numpy as np
from PIL import Image
from sqlalchemy import select

from .core import Core
from .db import PageRow, VisionRow
from .errors import BlobError, InvalidInput
from .validation import SQL_INT, page_id_fits, shown

log = logging.getLogger(__name__)


def sync_vision(core: Core, page_ids: Iterable[int] | None = None, *, batch_size: int = 16) -> int:
    encoder = core.encoder
    if encoder is None:
        return 0
    with core.lock:
        with core.session() as s:
            query = (
                select(PageRow.id, PageRow.blob)
                .outerjoin(VisionRow, VisionRow.page_id == PageRow.id)
                .where(PageRow.blob.is_not(None))
                .where(
                    (VisionRow.page_id.is_(None))
                    | (VisionRow.page_blob != PageRow.blob)
                    | (VisionRow.encoder != encoder.name)
                )
                .order_by(PageRow.id)
            )
            if page_ids is not None:
                wanted = list(page_ids)
                if not all(isinstance(i, int) and not isinstance(i, bool) for i in wanted):
                    raise InvalidInput(f"page_ids must be ints, got {shown(wanted)}")
                query = query.where(PageRow.id.in_([i for i in wanted if -SQL_INT <= i < SQL_INT]))
            todo = [(pid, blob) for pid, blob in s.execute(query) if blob]
        done = 0
        for start in range(0, len(todo), batch_size):
            batch, images = [], []
            for page_id, blob in todo[start : start + batch_size]:
                try:
                    images.append(Image.open(io.BytesIO(core.blobs.get(blob))))
                except BlobError as e:  # moved by another process since listed, or damaged: verify()
                    log.info("page %d: not encoded: %s", page_id, e)
                    continue
                batch.append((page_id, blob))
            arrays = encoder.encode(images) if images else []
            stale: list[str] = []
            with core.write() as w:
                s = w.s
                for (page_id, page_blob), tokens in zip(batch, arrays, strict=True):
                    page = s.get(PageRow, page_id)
                    if page is None or page.blob != page_blob:
                        continue  # deleted or moved by another process while it was encoded
                    buffer = io.BytesIO()
                    np.save(buffer, np.ascontiguousarray(tokens, dtype=np.float16), allow_pickle=False)
                    old = s.get(VisionRow, page_id)
                    if old is not None:
                        stale.append(old.blob)
                        s.delete(old)
                        s.flush()
                    s.add(
                        VisionRow(
                            page_id=page_id,
                            encoder=encoder.name,
                            page_blob=page_blob,
                            blob=core.blobs.put(buffer.getvalue(), suffix=".npy"),
                            positions=int(tokens.shape[0]),
                            dim=int(tokens.shape[1]),
                        )
                    )
            core.sweep(stale)
            done += len(batch)
        return done


def vision_tokens(core: Core, page_id: int) -> np.ndarray | None:
    if not page_id_fits(page_id):
        return None
    with core.lock:
        with core.session() as s:
            row = s.get(VisionRow, page_id)
            page = s.get(PageRow, page_id)
            if row is None or page is None or page.blob != row.page_blob:
                return None  # none, or stale: the page changed since it was encoded
            name = row.blob
        try:
            return np.load(io.BytesIO(core.blobs.get(name)), allow_pickle=False)
        except BlobError as e:
            log.warning("page %d: dropping unreadable vision tokens: %s", page_id, e)
            with core.write() as w:
                stale = core.drop_vision(w.s, [page_id])
            core.sweep(stale)
            return None
