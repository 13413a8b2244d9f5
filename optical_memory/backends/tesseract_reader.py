"""Tesseract reader: the LSTM engine of Tesseract 5 through ``tesserocr`` (in-process), else ``pytesseract``.

Faster than RapidOCR on full-size pages (about 1.5 s per 1024px page on 2 cores, RapidOCR about 6 s) but
with a cliff-shaped forgetting curve (16px monospace pages: CER 0.0004 at 1024px, 0.013 at 640, 0.08 at
512, nothing read at 384). Needs Debian's ``tesseract-ocr tesseract-ocr-eng`` (``eng.traineddata``) and
one of the two Python bindings.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import InvalidInput, MissingDependency
from ..types import TextLine
from .rapidocr_reader import is_blank, sort_lines

log = logging.getLogger(__name__)

_INSTALL = "pip install 'optical-memory[tesseract]' and apt-get install tesseract-ocr tesseract-ocr-eng"

# Where distributions put tessdata; TESSDATA_PREFIX, when set, is tried first.
_TESSDATA_DIRS = (
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
    "/opt/homebrew/share/tessdata",
    "/opt/local/share/tessdata",
)


def find_tessdata(lang: str = "eng") -> Path | None:
    """The first tessdata folder holding ``{lang}.traineddata``, or None."""
    candidates = []
    prefix = os.environ.get("TESSDATA_PREFIX")
    if prefix:
        candidates += [Path(prefix), Path(prefix) / "tessdata"]
    candidates += [Path(d) for d in _TESSDATA_DIRS]
    for folder in candidates:
        if (folder / f"{lang}.traineddata").is_file():
            return folder
    return None


def _find_binding() -> str:
    """ "tesserocr" if it imports, else "pytesseract" if that imports; else MissingDependency."""
    try:
        import tesserocr  # noqa: F401

        return "tesserocr"
    except ImportError:
        pass
    try:
        import pytesseract  # noqa: F401

        return "pytesseract"
    except ImportError as e:
        raise MissingDependency(f"the Tesseract reader needs tesserocr or pytesseract: {_INSTALL}") from e


class TesseractReader:
    """Reader backed by Tesseract 5 (LSTM engine, page segmentation ``psm``, language ``lang``).

    Lines come back in reading order with their boxes in the given image's pixels and Tesseract's
    line confidence scaled to [0, 1]. The engine is started on the first ``read``.
    """

    name = "tesseract"

    def __init__(self, *, lang: str = "eng", psm: int = 3, tessdata: str | os.PathLike[str] | None = None):
        self.lang = lang
        self.psm = psm  # 3: fully automatic page segmentation (Tesseract's own default)
        # Fail at construction, not at the first read, when the extra or the language data is missing.
        self._backend = _find_binding()
        found = Path(tessdata) if tessdata is not None else find_tessdata(lang)
        if found is None or not (found / f"{lang}.traineddata").is_file():
            where = repr(str(found)) if found else "TESSDATA_PREFIX or the usual tessdata folders"
            raise MissingDependency(
                f"no {lang}.traineddata in {where}; the Tesseract reader needs: {_INSTALL}"
            )
        self.tessdata = found
        self._api: Any = None
        self._lock = threading.Lock()

    # -- engine ------------------------------------------------------------------------------------------

    def _load(self) -> None:
        if self._api is not None:
            return
        if self._backend == "tesserocr":
            import tesserocr

            self._api = tesserocr.PyTessBaseAPI(
                path=str(self.tessdata) + os.sep,
                lang=self.lang,
                psm=self.psm,
                oem=tesserocr.OEM.LSTM_ONLY,
                variables={"debug_file": os.devnull},  # its notes ("Empty page!!") are not for stderr
            )
        else:
            import pytesseract

            try:
                pytesseract.get_tesseract_version()
            except pytesseract.TesseractNotFoundError as e:
                raise MissingDependency(f"pytesseract found no tesseract binary: {_INSTALL}") from e
            self._api = pytesseract
        log.debug("Tesseract reader ready (%s, %s)", self._backend, self.tessdata)

    # -- reading -----------------------------------------------------------------------------------------

    def read(self, images: Sequence[Image.Image]) -> list[list[TextLine]]:
        """Read each image: its text lines, top to bottom then left to right, boxes in its own pixels."""
        if isinstance(images, Image.Image):
            raise InvalidInput("read() takes a sequence of images; wrap a single image in a list")
        with self._lock:
            self._load()
            return [self._read_one(image) for image in images]

    def _read_one(self, image: Image.Image) -> list[TextLine]:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        if image.width == 0 or image.height == 0 or is_blank(image):
            return []
        read = self._read_tesserocr if self._backend == "tesserocr" else self._read_pytesseract
        lines = read(image)
        return sort_lines([line for line in lines if line.text])

    def _read_tesserocr(self, image: Image.Image) -> list[TextLine]:
        from tesserocr import RIL, iterate_level

        api = self._api
        api.SetImage(image)
        api.Recognize()
        lines = []
        for line in iterate_level(api.GetIterator(), RIL.TEXTLINE):
            try:
                text = line.GetUTF8Text(RIL.TEXTLINE)
            except RuntimeError:  # "No text returned": an empty page yields one empty line
                continue
            box = line.BoundingBox(RIL.TEXTLINE)  # (x0, y0, x1, y1) in pixels, or None
            if not text or box is None:
                continue
            score = max(0.0, min(1.0, line.Confidence(RIL.TEXTLINE) / 100.0))
            x0, y0, x1, y1 = (float(v) for v in box)
            lines.append(TextLine(text=" ".join(text.split()), box=(x0, y0, x1, y1), score=score))
        api.Clear()
        return lines

    def _read_pytesseract(self, image: Image.Image) -> list[TextLine]:
        pytesseract = self._api
        # OpenMP threads inside one tesseract process fight each other on small machines (20 s a page
        # instead of 1.3 s); one thread per process unless the caller chose otherwise.
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        config = f"--psm {self.psm} --oem 1 --tessdata-dir {shlex.quote(str(self.tessdata))}"
        data = pytesseract.image_to_data(image, lang=self.lang, config=config, output_type="dict")
        words: dict[tuple[int, int, int], list[int]] = {}
        for i, word in enumerate(data["text"]):
            if word and word.strip() and int(data["level"][i]) == 5:
                key = (int(data["block_num"][i]), int(data["par_num"][i]), int(data["line_num"][i]))
                words.setdefault(key, []).append(i)
        lines = []
        for idx in words.values():
            x0 = min(int(data["left"][i]) for i in idx)
            y0 = min(int(data["top"][i]) for i in idx)
            x1 = max(int(data["left"][i]) + int(data["width"][i]) for i in idx)
            y1 = max(int(data["top"][i]) + int(data["height"][i]) for i in idx)
            confs = [float(data["conf"][i]) for i in idx if float(data["conf"][i]) >= 0]
            score = max(0.0, min(1.0, sum(confs) / len(confs) / 100.0)) if confs else 0.0
            text = " ".join(data["text"][i].strip() for i in idx)
            lines.append(TextLine(text=text, box=(float(x0), float(y0), float(x1), float(y1)), score=score))
        return lines

    def close(self) -> None:
        """Free the Tesseract engine (it restarts on the next ``read``)."""
        with self._lock:
            if self._backend == "tesserocr" and self._api is not None:
                self._api.End()
            self._api = None
