"""Reading image files safely, one way for VGG16 and OCR: regular files only, size checked first.

* `read_bytes` opens only regular files (`files.open_regular`: O_NONBLOCK + fstat, so a FIFO named
  `x.jpg` is refused instead of blocking the run forever).
* `decode` reads the header first and refuses an image of more than `max_pixels` pixels before a
  single pixel is decoded (config key `features.max_image_pixels`); `set_pixel_limit` also sets
  Pillow's own decompression-bomb limit to it.
* `first_readable` tries an entity's images in order until one decodes.

Every refusal is an `UnreadableImage` whose message names the file and the reason; callers count and
log them (`data_prep/features.py` reports them in stats.json).

Example:
  >>> index, rgb, failures = first_readable(['a/1.jpg', 'a/2.jpg'], max_pixels=40_000_000)  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import io
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from imkga_jax import files

DEFAULT_MAX_PIXELS = 40_000_000


class UnreadableImage(ValueError):
  """An image file that is not read; `over_limit` when it has more pixels than allowed."""

  def __init__(self, path: str, reason: str, over_limit: bool = False):
    super().__init__(f'{path}: {reason}')
    self.path, self.reason, self.over_limit = path, reason, over_limit


def set_pixel_limit(max_pixels: int) -> None:
  """Sets Pillow's decompression-bomb limit (process-wide; Pillow offers no other way)."""
  Image.MAX_IMAGE_PIXELS = int(max_pixels)


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
  """`set_pixel_limit` for the duration of a `with` block; the previous limit is put back."""
  saved = Image.MAX_IMAGE_PIXELS
  set_pixel_limit(max_pixels)
  try:
    yield
  finally:
    Image.MAX_IMAGE_PIXELS = saved


def read_bytes(path: str) -> bytes:
  """The bytes of a regular image file (symlinks followed), or `UnreadableImage`."""
  try:
    with files.open_regular(path) as f:
      return f.read()
  except OSError as e:
    raise UnreadableImage(path, f'cannot be read: {e.strerror or e}') from None


def check_size(img: Image.Image, path: str, max_pixels: int) -> None:
  width, height = img.size
  if width * height > max_pixels:
    raise UnreadableImage(path, f'{width}x{height} = {width * height:,} pixels, more than '
                                f'features.max_image_pixels={max_pixels:,}; not decoded',
                          over_limit=True)


@contextlib.contextmanager
def _reading(path: str):
  """Turns what Pillow raises on bad bytes into `UnreadableImage` naming `path`."""
  try:
    yield
  except UnreadableImage:
    raise
  except Image.DecompressionBombError as e:
    raise UnreadableImage(path, f'{e}; not decoded', over_limit=True) from None
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    raise UnreadableImage(path, f'{type(e).__name__}: {e}') from None


def decode_header(data: bytes, path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
  """`(width, height)` from the header alone; `UnreadableImage` when over `max_pixels` or no image."""
  with _reading(path), Image.open(io.BytesIO(data)) as img:
    check_size(img, path, max_pixels)
    return img.size


def decode(data: bytes, path: str, max_pixels: int = DEFAULT_MAX_PIXELS,
           size: int | None = None) -> np.ndarray:
  """RGB uint8 `[H, W, 3]` (resized bilinearly to `[size, size, 3]` when `size` is given).

  Raises:
    UnreadableImage: more than `max_pixels` pixels (checked on the header, before decoding), or
      bytes Pillow cannot decode (truncated, not an image).
  """
  with _reading(path), Image.open(io.BytesIO(data)) as img:   # reads the header only
    check_size(img, path, max_pixels)
    rgb = img.convert('RGB')                                    # decodes
    if size is not None and rgb.size != (size, size):
      rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def load(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, size: int | None = None) -> np.ndarray:
  """`decode(read_bytes(path))`."""
  return decode(read_bytes(path), path, max_pixels, size)


def first_readable(candidates: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS,
                   size: int | None = None
                   ) -> tuple[int, np.ndarray | None, list[UnreadableImage]]:
  """`(index, image, failures)` of the first of `candidates` that decodes (`-1, None` if none)."""
  failures = []
  for i, path in enumerate(candidates):
    try:
      return i, load(path, max_pixels, size), failures
    except UnreadableImage as e:
      failures.append(e)
  return -1, None, failures
