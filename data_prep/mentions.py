"""Which entities the text read from an entity's image names (evidence for the direct answer).

An entity's *keys* are the runs of up to `MAX_WORDS` consecutive words of its name and of its entity
text (entity2text), lower-cased and split into words at anything that is not a letter or digit
(`brand_red_bull` gives `brand red bull`, `red bull`, `bull`, ...). A key is *distinctive* when exactly one entity has it (`kavren`; not
`brand`) and it is long enough (`MIN_LATIN` characters in Latin letters and digits, `MIN_OTHER` in
other scripts). The OCR text of entity h *names* entity e ≠ h when one of e's distinctive keys occurs
in it: as whole words (up to `MAX_WORDS` of them) for Latin keys, as a substring of a word for keys
in scripts written without spaces (CJK: `耐克` inside `耐克运动鞋`). Every entity keeps the
`max_mentions` it names with the longest keys (`features.max_mentions`).

No threshold of any KG decides anything here; the model learns per relation how much a named
entity counts (`models/imkga.py`, `mention_weight`), so a KG whose images name nothing useful
learns to ignore it.

Example:
  >>> names = ['brand_kavren', 'brand_solvi', 'product_0001']
  >>> texts = {'brand_kavren': 'brand KAVREN'}
  >>> named_entities(names, texts, ['', '', 'KAVREN 500 ml'], max_mentions=2).tolist()
  [[-1, -1], [-1, -1], [0, -1]]
"""
from __future__ import annotations

import collections
import re
from typing import Mapping, Sequence

import numpy as np

MIN_LATIN = 3     # shortest key in Latin letters and digits (shorter words name too many things)
MIN_OTHER = 2     # shortest key in other scripts (one CJK character names too many things)
MAX_WORDS = 4     # longest key in words
MAX_CHARS = 16    # longest key matched inside a word of a script without spaces
_SPLIT = re.compile(r'[\W_]+', re.UNICODE)


def words(text: str) -> list[str]:
  """Lower-cased words of `text` (split at anything but letters and digits)."""
  return [w for w in _SPLIT.split((text or '').lower()) if w]


def _long_enough(key: str) -> bool:
  return len(key) >= (MIN_LATIN if key.isascii() else MIN_OTHER)


def _runs(split: list[str]) -> set[str]:
  """Every run of 1..`MAX_WORDS` consecutive words, joined by one space."""
  return {' '.join(split[i:i + n]) for n in range(1, MAX_WORDS + 1)
          for i in range(len(split) - n + 1)}


def keys_of(name: str, text: str = '') -> set[str]:
  """An entity's keys: every run of up to `MAX_WORDS` consecutive words of its name and of its
  text (`brand red bull`, `red bull`, `bull`, ...) that is long enough."""
  return {k for source in (name, text) for k in _runs(words(source)) if _long_enough(k)}


def distinctive_keys(names: Sequence[str], texts: Mapping[str, str]) -> dict[str, int]:
  """`{key: entity id}` of the keys exactly one entity has."""
  owners: dict[str, set[int]] = collections.defaultdict(set)
  for i, name in enumerate(names):
    for key in keys_of(name, texts.get(name, '')):
      owners[key].add(i)
  return {key: next(iter(ids)) for key, ids in owners.items() if len(ids) == 1}


def candidates(text: str) -> set[str]:
  """Every string of `text` a key could match: runs of up to `MAX_WORDS` words, and the substrings
  of the words outside the Latin script."""
  split = words(text)
  out = _runs(split)
  for word in split:
    if not word.isascii():
      out.update(word[a:b] for a in range(len(word))
                 for b in range(a + MIN_OTHER, min(len(word), a + MAX_CHARS) + 1))
  return out


def named_entities(names: Sequence[str], texts: Mapping[str, str], ocr_texts: Sequence[str],
                   max_mentions: int) -> np.ndarray:
  """`[len(names), max_mentions]` int32: the entities each entity's OCR text names (longest key
  first, then by id), -1 after the last.

  Args:
    names: entity names, id = position.
    texts: entity texts by name (entity2text; may be empty).
    ocr_texts: the OCR text of each entity's image ('' where none was read).
    max_mentions: entities kept per entity (0: none).
  """
  out = np.full((len(names), max(int(max_mentions), 0)), -1, np.int32)
  if not max_mentions or not any(ocr_texts):
    return out
  index = distinctive_keys(names, texts)
  for head, text in enumerate(ocr_texts):
    if not text:
      continue
    found: dict[int, int] = {}
    for key in candidates(text):
      entity = index.get(key)
      if entity is not None and entity != head:
        found[entity] = max(found.get(entity, 0), len(key))
    best = sorted(found, key=lambda e: (-found[e], e))[:max_mentions]
    out[head, :len(best)] = best
  return out
