"""OCR text → hashed character n-gram vector (deterministic across runs and machines).

The text is lower-cased and framed by one space on each side (so word starts and ends are n-grams
of their own); every character n-gram with `ngram_min ≤ n ≤ ngram_max` is hashed with CRC-32 (not
Python's salted `hash`) into `dim` buckets, counted, and the vector is L2-normalised. Empty text →
the zero vector.

Example:
  >>> v = hashed_ngrams('ACME', dim=64)
  >>> v.shape, round(float((v * v).sum()), 6)
  ((64,), 1.0)
"""
from __future__ import annotations

from typing import Sequence
import zlib

import numpy as np


def hashed_ngrams(text: str, dim: int, ngram_min: int = 1, ngram_max: int = 3) -> np.ndarray:
  """Hashed character n-gram counts of `text`, L2-normalised. Returns `[dim]` float32."""
  if dim < 1 or not 1 <= ngram_min <= ngram_max:
    raise ValueError(f'hashed_ngrams: need dim >= 1 and 1 <= ngram_min <= ngram_max, got dim={dim}, '
                     f'ngram_min={ngram_min}, ngram_max={ngram_max} (config keys '
                     'features.ocr_vector_dim, features.ngram_min, features.ngram_max)')
  vec = np.zeros(dim, np.float32)
  text = text.strip().lower()
  if not text:
    return vec
  framed = f' {text} '
  for n in range(ngram_min, ngram_max + 1):
    for i in range(len(framed) - n + 1):
      vec[zlib.crc32(framed[i:i + n].encode('utf-8')) % dim] += 1.0
  return vec / np.linalg.norm(vec)


def vectorise(texts: Sequence[str | None], dim: int, ngram_min: int = 1,
              ngram_max: int = 3) -> np.ndarray:
  """`hashed_ngrams` of each text (None → zeros). Returns `[len(texts), dim]` float32."""
  out = np.zeros((len(texts), dim), np.float32)
  for i, text in enumerate(texts):
    if text:
      out[i] = hashed_ngrams(text, dim, ngram_min, ngram_max)
  return out
