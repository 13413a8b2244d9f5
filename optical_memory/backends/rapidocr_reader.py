"""RapidOCR reader: PP-OCR text detection + recognition in ONNX Runtime, on CPU, fully offline.

RapidOCR 3.x ships its PP-OCRv6 detection and recognition models inside the wheel; this reader points
the engine at those files explicitly, so the engine's download path is never taken. The angle
classifier is off (``Global.use_cls``): on rendered pages it flips about a quarter of the lines upside
down. RapidOCR's own line ordering scrambles lines that are only a few pixels tall, so lines are sorted
here: top to bottom by box centre, then left to right.

Small pages need no help by default: the detector already enlarges any image whose shorter side is
below ``det_limit_side_len`` (736) and the recogniser resizes every line crop to 48 px high. Enlarging the
page first (``upscale_to``, Lanczos, boxes mapped back) was measured on 16px DejaVu Sans Mono pages
shrunk 1024 -> 640 -> 512 -> 384 -> 256 and did not help: to 1024 it made CER at 384 px 20x worse (the
recogniser drops spaces), to 768 it was within noise (384: 0.005 vs 0.003, 256: 0.12 vs 0.13). So the
default is None, and the option stays for other page designs. Either way nothing is invented: the stored
small page already lost what it lost.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InvalidInput, MissingDependency
from ..types import TextLine

log = logging.getLogger(__name__)

_INSTALL = "pip install 'rapidocr>=3,<4' onnxruntime"


class RapidOCRReader:
    """Reader backed by RapidOCR (PP-OCRv6 small det + rec, ONNX Runtime, CPU).

    ``upscale_to``: pages whose longer side is below this are enlarged to it before reading (None: never;
    see the module notes for why that is the default).
    ``text_score``: lines the recogniser is less sure of than this are dropped (RapidOCR's default 0.5).
    ``det_limit_side_len``: the detector enlarges images whose shorter side is below this (RapidOCR's
    default 736; 480 or 1024 read 384 px and 256 px pages worse).
    ``threads``: ONNX Runtime intra-op threads (None: ONNX Runtime's default, one per core).
    """

    name = "rapidocr"

    def __init__(
        self,
        *,
        upscale_to: int | None = None,
        text_score: float = 0.5,
        det_limit_side_len: int = 736,
        threads: int | None = None,
    ) -> None:
        if upscale_to is not None and upscale_to < 32:
            raise InvalidInput(f"upscale_to must be None or at least 32 pixels, got {upscale_to!r}")
        if not 0.0 <= text_score <= 1.0:
            raise InvalidInput(f"text_score must be in [0, 1], got {text_score!r}")
        for module in ("rapidocr", "onnxruntime"):  # cheap presence check; the import happens on first read
            if importlib.util.find_spec(module) is None:
                raise MissingDependency(f"the RapidOCR reader needs {module}: {_INSTALL}")
        self.upscale_to = upscale_to
        self.text_score = text_score
        self.det_limit_side_len = det_limit_side_len
        self.threads = threads
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._engine is not None:
                return self._engine
            try:
                import onnxruntime  # noqa: F401  (rapidocr imports it only when the first model loads)
                import rapidocr
            except ImportError as e:
                raise MissingDependency(
                    f"the RapidOCR reader needs rapidocr and onnxruntime: {_INSTALL}"
                ) from e
            models = Path(rapidocr.__file__).resolve().parent / "models"
            det, rec = models / "PP-OCRv6_det_small.onnx", models / "PP-OCRv6_rec_small.onnx"
            for path in (det, rec):
                if not path.is_file():
                    raise MissingDependency(
                        f"RapidOCR model {str(path)!r} is missing from the installed wheel; "
                        f"this reader needs rapidocr 3.x with its bundled models: {_INSTALL}"
                    )
            threads = -1 if self.threads is None else int(self.threads)
            params = {
                "Global.use_cls": False,  # the angle classifier flips rendered lines
                "Global.text_score": self.text_score,
                "Global.log_level": "error",  # its "detection result is empty" is a warning on blank pages
                "Det.model_path": str(det),  # explicit paths: the engine never looks for a download
                "Rec.model_path": str(rec),
                "Det.limit_side_len": self.det_limit_side_len,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            }
            self._engine = rapidocr.RapidOCR(params=params)
            log.debug("RapidOCR ready (%s, %s)", det.name, rec.name)
            return self._engine

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        """Read each image: its text lines, top to bottom then left to right, boxes in its own pixels."""
        if isinstance(images, Image.Image):
            raise InvalidInput("read() takes a sequence of images; wrap a single image in a list")
        return [self._read_one(image) for image in images]

    def read_lines(self, images: Sequence[Image.Image]) -> list[str]:
        """Read each image as one line of text: the recogniser alone, no detection ("" for a blank image
        or a line it is less sure of than ``text_score``, as a page read drops it)."""
        if isinstance(images, Image.Image):
            raise InvalidInput("read_lines() takes a sequence of images; wrap a single image in a list")
        out = [""] * len(images)
        todo = [(i, image) for i, image in enumerate(images) if min(image.size) > 0 and not is_blank(image)]
        if not todo:
            return out
        crops = [np.asarray(image.convert("RGB")) for _, image in todo]
        engine = self._load()
        with self._lock:
            # One line a call: RapidOCR's batches of six, padded to the widest, read 40 lines 1.35-1.5x
            # slower on 2 cores (the same text). Whole pages keep its batches: at 256 px they read better.
            results = [engine.recognize_txt([crop]) for crop in crops]
        for (i, _), result in zip(todo, results, strict=True):
            text, score = result.txts[0], result.scores[0]
            out[i] = str(text) if score >= self.text_score else ""
        return out

    def _read_one(self, image: Image.Image) -> list[TextLine]:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        width, height = image.size
        if width == 0 or height == 0:
            return []
        if is_blank(image):
            return []  # saves a detector pass; RapidOCR would find nothing either
        scale = 1.0
        if self.upscale_to is not None and max(width, height) < self.upscale_to:
            scale = self.upscale_to / max(width, height)
            size = (round(width * scale), round(height * scale))
            image = image.resize(size, Image.Resampling.LANCZOS)
        engine = self._load()
        with self._lock:  # one ONNX session pair, used by one caller at a time
            result = engine(image)
        boxes, texts, scores = result.boxes, result.txts, result.scores
        if boxes is None or texts is None or scores is None:
            return []
        lines = []
        for quad, text, score in zip(np.asarray(boxes, dtype=np.float64), texts, scores, strict=True):
            xs, ys = quad[:, 0] / scale, quad[:, 1] / scale  # (4,) corners, back in the given image's pixels
            box = (
                float(max(xs.min(), 0.0)),
                float(max(ys.min(), 0.0)),
                float(min(xs.max(), width)),
                float(min(ys.max(), height)),
            )
            lines.append(TextLine(text=str(text), box=box, score=float(score)))
        return sort_lines(lines)


def is_blank(image: Image.Image) -> bool:
    """True when the image has (almost) no contrast, so there is nothing to read."""
    pixels = np.asarray(image.convert("L"))
    return pixels.size == 0 or int(pixels.max()) - int(pixels.min()) < 8


def sort_lines(lines: list[TextLine]) -> list[TextLine]:
    """Reading order: top to bottom by box centre, then left to right within a row.

    Two boxes share a row when their vertical centres are closer than half the smaller box height, so
    the pieces of one line that the detector split (or that sit in columns) are read left to right.
    """
    located = [line for line in lines if line.box is not None]
    rest = [line for line in lines if line.box is None]
    located.sort(key=lambda line: _centre_y(line))
    rows: list[list[TextLine]] = []
    for line in located:
        if rows:
            anchor = rows[-1][0]
            tolerance = 0.5 * min(_height(anchor), _height(line))
            if abs(_centre_y(line) - _centre_y(anchor)) <= tolerance:
                rows[-1].append(line)
                continue
        rows.append([line])
    ordered = [line for row in rows for line in sorted(row, key=lambda ln: ln.box[0] if ln.box else 0.0)]
    return ordered + rest


def _centre_y(line: TextLine) -> float:
    assert line.box is not None
    return (line.box[1] + line.box[3]) / 2


def _height(line: TextLine) -> float:
    assert line.box is not None
    return max(line.box[3] - line.box[1], 1.0)
