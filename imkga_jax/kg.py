"""The knowledge graph: vocabularies, id triples, inverse relations, filter sets, the prepared form.

One token space serves the whole project (DESIGN.md §3):

  <pad>=0 <bos>=1 <eos>=2 <mask>=3 | r_0 … r_{R-1} | r_0⁻¹ … r_{R-1}⁻¹ | e_0 … e_{E-1}

Relation ids inside id triples run over `0 … 2R-1` once inverses are added: relation `r + R` is the
inverse of `r`. The readers of raw KG folders (both layouts, their policies) are in `readers.py`.

Example:
  >>> kg = KnowledgeGraph.load('workdir/prepared')                  # doctest: +SKIP
  >>> kg.num_entities, kg.num_relations, len(kg.train)              # doctest: +SKIP
  (135, 46, 5216)
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from imkga_jax import files

PAD, BOS, EOS, MASK = 0, 1, 2, 3
SPECIAL_TOKENS = ('<pad>', '<bos>', '<eos>', '<mask>')
NUM_SPECIAL = len(SPECIAL_TOKENS)
SPLITS = ('train', 'valid', 'test')
INVERSE_SUFFIX = '_inv'
# Policies for valid/test triples with an entity or relation unseen in train.
UNKNOWN_POLICIES = ('error', 'skip', 'keep')
# Policies for repeated triples (in train, within valid/test, and valid/test triples also in train).
DUPLICATE_POLICIES = ('keep', 'drop', 'error')
# Policies for input files reached through a symlink that leaves the data root.
OUTSIDE_LINK_POLICIES = ('error', 'skip', 'follow')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')

OPENBG_PREFIX = 'OpenBG-IMG_'
OPENBG_SPLIT_FILES = {'train': 'OpenBG-IMG_train.tsv', 'valid': 'OpenBG-IMG_dev.tsv',
                      'test': 'OpenBG-IMG_test.tsv'}
OPENBG_ENTITY_TEXT = 'OpenBG-IMG_entity2text.tsv'
OPENBG_RELATION_TEXT = 'OpenBG-IMG_relation2text.tsv'
OPENBG_IMAGES = 'OpenBG-IMG_images'

VOCAB_FILE = 'vocab.json'
TRIPLES_FILE = 'triples.npz'
RULES_FILE = 'rules.json'  # the mined rules (data_prep/trajectories.py); decoding may read them


class KGFormatError(ValueError):
  """Bad KG input; the message names the file (and line) and says how to fix it."""


@dataclasses.dataclass(frozen=True)
class TokenSpace:
  """The one token layout of the project (hashable, so it can be a static argument under `jit`).

  `<pad>=0 <bos>=1 <eos>=2 <mask>=3 | r_0 … r_{R-1} | r_0⁻¹ … r_{R-1}⁻¹ | e_0 … e_{E-1}`. Relation
  ids run over `[0, 2R)` (`r + R` is the inverse of `r`), entity ids over `[0, E)`. Every method works
  on Python ints, numpy arrays and jax arrays alike.

  Example:
    >>> space = TokenSpace(num_relations=2, num_entities=3)
    >>> space.num_tokens, space.entity_token(0), space.relation_token(3), space.inverse_relation(1)
    (11, 8, 7, 3)
  """
  num_relations: int  # R base relations (2R relation tokens)
  num_entities: int

  @property
  def relation_offset(self) -> int:
    return NUM_SPECIAL

  @property
  def entity_offset(self) -> int:
    return NUM_SPECIAL + 2 * self.num_relations

  @property
  def num_tokens(self) -> int:
    return self.entity_offset + self.num_entities

  def entity_token(self, eid):
    return eid + self.entity_offset

  def relation_token(self, rid):
    """Token of relation id `rid` in `[0, 2R)` (inverses included)."""
    return rid + self.relation_offset

  def is_entity(self, tok):
    return tok >= self.entity_offset

  def is_relation(self, tok):
    return (tok >= self.relation_offset) & (tok < self.entity_offset)

  def token_to_entity(self, tok):
    return tok - self.entity_offset

  def token_to_relation(self, tok):
    return tok - self.relation_offset

  def inverse_relation(self, rid):
    """Id of the inverse of relation id `rid` in `[0, 2R)`."""
    return (rid + self.num_relations) % (2 * self.num_relations)


@dataclasses.dataclass
class KnowledgeGraph:
  """A KG with entity/relation vocabularies and `[n, 3]` int32 id triples per split.

  Attributes:
    entities: entity names; id = position.
    relations: base relation names (without inverses); id = position.
    train, valid, test: `[n, 3]` int32 arrays of (head, relation, tail) ids, relation ids < R.
    entity_text: optional human-readable text per entity name.
    relation_text: optional human-readable text per relation name.
    images: entity name -> image file paths (absolute), only for entities that have images.
    source: where the graph was read from (for messages).
    read_stats: counts of the readers' decisions (skips, repeats, links; readers.py), for stats.json;
      empty for a graph loaded from its prepared form.
  """
  entities: list[str]
  relations: list[str]
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  entity_text: dict[str, str] = dataclasses.field(default_factory=dict)
  relation_text: dict[str, str] = dataclasses.field(default_factory=dict)
  images: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  source: str = ''
  read_stats: dict[str, int] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self._entity_index = {e: i for i, e in enumerate(self.entities)}
    self._relation_index = {r: i for i, r in enumerate(self.relations)}
    self._filter = None

  # ------------------------------------------------------------------ sizes and ids
  @property
  def num_entities(self) -> int:
    return len(self.entities)

  @property
  def num_relations(self) -> int:
    """Number of base relations R (the token space holds 2R relation tokens)."""
    return len(self.relations)

  @property
  def space(self) -> TokenSpace:
    """The token layout of this graph."""
    return TokenSpace(self.num_relations, self.num_entities)

  def split(self, name: str) -> np.ndarray:
    if name not in SPLITS:
      raise KeyError(f'unknown split {name!r}; expected one of {SPLITS}')
    return getattr(self, name)

  def entity_id(self, name: str) -> int:
    try:
      return self._entity_index[name]
    except KeyError:
      raise KeyError(f'unknown entity {name!r} in the KG read from {self.source!r}') from None

  def relation_id(self, name: str) -> int:
    """Id of a relation name; `name + '_inv'` gives the inverse id `r + R`."""
    if name in self._relation_index:
      return self._relation_index[name]
    if name.endswith(INVERSE_SUFFIX) and name[:-len(INVERSE_SUFFIX)] in self._relation_index:
      return self._relation_index[name[:-len(INVERSE_SUFFIX)]] + self.num_relations
    raise KeyError(f'unknown relation {name!r} in the KG read from {self.source!r}')

  def relation_name(self, rid: int) -> str:
    """Name of relation id `rid` in `[0, 2R)`; inverses get the `_inv` suffix."""
    base = self.relations[rid % self.num_relations]
    return base + INVERSE_SUFFIX if rid >= self.num_relations else base

  def token_name(self, tok: int) -> str:
    """Readable name of one token: special, relation (with `_inv`) or entity."""
    tok, space = int(tok), self.space
    if tok < NUM_SPECIAL:
      return SPECIAL_TOKENS[tok]
    if tok < space.entity_offset:
      return self.relation_name(space.token_to_relation(tok))
    return self.entities[space.token_to_entity(tok)]

  @property
  def vocabulary(self) -> list[str]:
    """All token names in id order."""
    return (list(SPECIAL_TOKENS) + list(self.relations)
            + [r + INVERSE_SUFFIX for r in self.relations] + list(self.entities))

  # ------------------------------------------------------------------ triples
  def with_inverses(self, split: str | np.ndarray) -> np.ndarray:
    """`[2n, 3]`: the split's triples followed by their inverses `(t, r + R, h)`."""
    triples = self.split(split) if isinstance(split, str) else np.asarray(split)
    inverse = np.stack([triples[:, 2], triples[:, 1] + self.num_relations, triples[:, 0]], axis=1)
    return np.concatenate([triples, inverse.astype(triples.dtype)], axis=0)

  def all_triples(self) -> np.ndarray:
    """`[n, 3]` train + valid + test, both directions."""
    return np.concatenate([self.with_inverses(s) for s in SPLITS], axis=0)

  def filter_index(self) -> dict[tuple[int, int], np.ndarray]:
    """`(head, relation) -> sorted array of every known true tail`, train+valid+test, both directions."""
    if self._filter is None:
      self._filter = build_answer_index(self.all_triples())
    return self._filter

  def filter_csr(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Known answers of `queries` `[q, 2]` (head, relation) in CSR form: `(indptr [q+1], tails)`."""
    index = self.filter_index()
    rows = [index.get((int(h), int(r)), np.zeros(0, np.int32)) for h, r in queries]
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(x) for x in rows])
    tails = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)
    return indptr, tails

  def has_image(self) -> np.ndarray:
    """`[E] bool`: whether each entity has at least one image."""
    mask = np.zeros(self.num_entities, bool)
    mask[np.asarray([self.entity_id(name) for name in self.images], np.int64)] = True
    return mask

  def stats(self) -> dict[str, int]:
    return {'entities': self.num_entities, 'relations': self.num_relations,
            'train': int(len(self.train)), 'valid': int(len(self.valid)), 'test': int(len(self.test)),
            'entities_with_images': len(self.images), **self.read_stats}

  # ------------------------------------------------------------------ prepared form
  def save(self, directory: str) -> None:
    """Writes `vocab.json` and `triples.npz` into `directory` (atomically, file by file)."""
    os.makedirs(directory, exist_ok=True)
    vocab = {'special_tokens': list(SPECIAL_TOKENS), 'relations': self.relations,
             'entities': self.entities, 'entity_text': self.entity_text,
             'relation_text': self.relation_text, 'images': self.images, 'source': self.source}
    files.atomic_write_text(os.path.join(directory, VOCAB_FILE),
                            json.dumps(vocab, ensure_ascii=False))
    files.atomic_save_npz(os.path.join(directory, TRIPLES_FILE), train=self.train,
                          valid=self.valid, test=self.test)

  @classmethod
  def load(cls, directory: str) -> 'KnowledgeGraph':
    """Reads what `save` wrote."""
    vocab_path = os.path.join(directory, VOCAB_FILE)
    triples_path = os.path.join(directory, TRIPLES_FILE)
    for path in (vocab_path, triples_path):
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path} is missing; run `launch.py --mode=prepare` first')
    with open(vocab_path, encoding='utf-8-sig') as f:
      try:
        vocab = json.load(f)
      except json.JSONDecodeError as e:
        raise KGFormatError(f'{vocab_path}:{e.lineno}: not valid JSON ({e.msg}); re-run '
                            '`launch.py --mode=prepare`') from None
    if tuple(vocab.get('special_tokens', ())) != SPECIAL_TOKENS:
      raise KGFormatError(f'{vocab_path}: special tokens {vocab.get("special_tokens")} differ from '
                          f'{list(SPECIAL_TOKENS)}; re-run prepare with this version')
    with np.load(triples_path) as arrays:
      splits = {s: arrays[s].astype(np.int32) for s in SPLITS}
    return cls(entities=vocab['entities'], relations=vocab['relations'], **splits,
               entity_text=vocab.get('entity_text', {}), relation_text=vocab.get('relation_text', {}),
               images=vocab.get('images', {}), source=vocab.get('source', directory))


def build_answer_index(triples: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
  """`(h, r) -> sorted unique tails` for `[n, 3]` id triples."""
  triples = np.asarray(triples)
  if len(triples) == 0:
    return {}
  order = np.lexsort((triples[:, 2], triples[:, 1], triples[:, 0]))
  t = triples[order]
  keys = t[:, 0].astype(np.int64) * (2 ** 32) + t[:, 1]
  starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
  ends = np.r_[starts[1:], len(t)]
  return {(int(t[s, 0]), int(t[s, 1])): np.unique(t[s:e, 2]).astype(np.int32)
          for s, e in zip(starts, ends)}
