"""The knowledge graph: vocabularies, id triples, inverse relations, filter sets, readers.

One token space serves the whole project (DESIGN.md §3):

  <pad>=0 <bos>=1 <eos>=2 <mask>=3 | r_0 … r_{R-1} | r_0⁻¹ … r_{R-1}⁻¹ | e_0 … e_{E-1}

Relation ids inside id triples run over `0 … 2R-1` once inverses are added: relation `r + R` is the
inverse of `r`. Readers accept two layouts:

* a folder of `train`, `valid` and `test` triple files (`.txt` or `.tsv`, tab or whitespace
  separated, `\\r\\n` tolerated) — the layout of the public benchmarks;
* the OpenBG-IMG layout: `OpenBG-IMG_{train,dev,test}.tsv`, `OpenBG-IMG_entity2text.tsv`,
  `OpenBG-IMG_relation2text.tsv` and `OpenBG-IMG_images/<entity>/*`.

Bad input raises `KGFormatError` naming the file and line. A valid/test triple whose entity or relation
never occurs in train is an error, or with `unknown='skip'` a counted, logged skip, or with
`unknown='keep'` (what the published WN18RR numbers assume) kept with the new names added to the
vocabulary, also counted and logged.

Example:
  >>> kg = load_kg('../shared/datasets/umls')                      # doctest: +SKIP
  >>> kg.num_entities, kg.num_relations, len(kg.train)              # doctest: +SKIP
  (135, 46, 5216)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PAD, BOS, EOS, MASK = 0, 1, 2, 3
SPECIAL_TOKENS = ('<pad>', '<bos>', '<eos>', '<mask>')
NUM_SPECIAL = len(SPECIAL_TOKENS)
SPLITS = ('train', 'valid', 'test')
INVERSE_SUFFIX = '_inv'
# Policies for valid/test triples with an entity or relation unseen in train.
UNKNOWN_POLICIES = ('error', 'skip', 'keep')
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
            'entities_with_images': len(self.images)}

  # ------------------------------------------------------------------ prepared form
  def save(self, directory: str) -> None:
    """Writes `vocab.json` and `triples.npz` into `directory` (atomically, file by file)."""
    os.makedirs(directory, exist_ok=True)
    vocab = {'special_tokens': list(SPECIAL_TOKENS), 'relations': self.relations,
             'entities': self.entities, 'entity_text': self.entity_text,
             'relation_text': self.relation_text, 'images': self.images, 'source': self.source}
    atomic_write_text(os.path.join(directory, VOCAB_FILE), json.dumps(vocab, ensure_ascii=False))
    tmp = os.path.join(directory, TRIPLES_FILE + '.tmp.npz')
    np.savez(tmp, train=self.train, valid=self.valid, test=self.test)
    os.replace(tmp, os.path.join(directory, TRIPLES_FILE))

  @classmethod
  def load(cls, directory: str) -> 'KnowledgeGraph':
    """Reads what `save` wrote."""
    vocab_path = os.path.join(directory, VOCAB_FILE)
    triples_path = os.path.join(directory, TRIPLES_FILE)
    for path in (vocab_path, triples_path):
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path} is missing; run `launch.py --mode=prepare` first')
    with open(vocab_path, encoding='utf-8') as f:
      vocab = json.load(f)
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


# ==================================================================== readers
def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file (readers never see half a file)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, value: Any) -> None:
  """`atomic_write_text` of `value` as indented JSON with sorted keys and a final newline."""
  atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


def _split_fields(line: str) -> list[str]:
  return line.split('\t') if '\t' in line else line.split()


def read_triple_lines(path: str) -> list[tuple[int, str, str, str]]:
  """Reads one triple file: `(line_number, head, relation, tail)` for every non-blank line.

  Raises:
    KGFormatError: a line without exactly three non-empty fields, naming file and line.
  """
  rows = []
  with open(path, encoding='utf-8', newline='') as f:
    for lineno, raw in enumerate(f, start=1):
      line = raw.rstrip('\r\n')
      if not line.strip():
        continue
      fields = [x.strip() for x in _split_fields(line)]
      if len(fields) != 3 or not all(fields):
        raise KGFormatError(f'{path}:{lineno}: expected 3 fields (head, relation, tail) separated by '
                            f'a tab or spaces, got {len(fields)}: {line[:120]!r}')
      rows.append((lineno, fields[0], fields[1], fields[2]))
  if not rows:
    raise KGFormatError(f'{path}: the split is empty; every split needs at least one triple')
  return rows


def read_text_table(path: str) -> dict[str, str]:
  """Reads `key<TAB>text` lines (entity2text / relation2text)."""
  table = {}
  with open(path, encoding='utf-8', newline='') as f:
    for lineno, raw in enumerate(f, start=1):
      line = raw.rstrip('\r\n')
      if not line.strip():
        continue
      key, sep, text = line.partition('\t')
      if not sep or not key.strip():
        raise KGFormatError(f'{path}:{lineno}: expected `key<TAB>text`, got {line[:120]!r}')
      table[key.strip()] = text.strip()
  return table


def _index_splits(split_rows: Mapping[str, Sequence[tuple[int, str, str, str]]],
                  split_paths: Mapping[str, str], unknown: str) -> tuple[list, list, dict]:
  """Builds vocabularies from train and id arrays for every split, applying the unknown policy."""
  if unknown not in UNKNOWN_POLICIES:
    raise ValueError(f'data.unknown_entities must be one of {UNKNOWN_POLICIES}, got {unknown!r}')
  entities: dict[str, int] = {}
  relations: dict[str, int] = {}
  for _, h, r, t in split_rows['train']:
    for e in (h, t):
      entities.setdefault(e, len(entities))
    relations.setdefault(r, len(relations))
  arrays = {}
  for split in SPLITS:
    ids, skipped, kept = [], 0, 0
    for lineno, h, r, t in split_rows[split]:
      missing = [x for x in (h, t) if x not in entities]
      if r not in relations:
        missing.append(f'relation {r}')
      if missing and unknown == 'keep':
        kept += 1
        for e in (h, t):
          entities.setdefault(e, len(entities))
        relations.setdefault(r, len(relations))
      elif missing:
        if unknown == 'error':
          raise KGFormatError(
              f'{split_paths[split]}:{lineno}: {", ".join(map(repr, missing))} never occurs in the '
              f'training split; remove the triple or set --config.data.unknown_entities to skip or keep')
        skipped += 1
        continue
      ids.append((entities[h], relations[r], entities[t]))
    if skipped:
      logging.warning('%s: skipped %d of %d triples with an entity or relation unseen in train '
                      '(data.unknown_entities=skip)', split_paths[split], skipped, len(split_rows[split]))
    if kept:
      logging.warning('%s: %d of %d triples have an entity or relation unseen in train; kept, with '
                      'the new names added to the vocabulary (data.unknown_entities=keep)',
                      split_paths[split], kept, len(split_rows[split]))
    if not ids:
      raise KGFormatError(f'{split_paths[split]}: no usable triple left in the {split} split')
    arrays[split] = np.asarray(ids, np.int32).reshape(-1, 3)
  return list(entities), list(relations), arrays


def _find_split_file(root: str, split: str) -> str:
  names = {'train': ('train',), 'valid': ('valid', 'dev', 'validation'), 'test': ('test',)}[split]
  for name in names:
    for ext in ('.txt', '.tsv', ''):
      path = os.path.join(root, name + ext)
      if os.path.isfile(path):
        return path
  raise KGFormatError(f'{root}: no {split} file found (looked for '
                      f'{", ".join(n + e for n in names for e in (".txt", ".tsv"))})')


def read_triple_folder(root: str, unknown: str = 'error') -> KnowledgeGraph:
  """Reads a folder with `train`, `valid` (or `dev`) and `test` triple files."""
  paths = {s: _find_split_file(root, s) for s in SPLITS}
  rows = {s: read_triple_lines(p) for s, p in paths.items()}
  entities, relations, arrays = _index_splits(rows, paths, unknown)
  return KnowledgeGraph(entities, relations, **arrays, source=os.path.abspath(root))


def read_openbg(root: str, unknown: str = 'error') -> KnowledgeGraph:
  """Reads the OpenBG-IMG layout (see the module docstring)."""
  paths = {s: os.path.join(root, f) for s, f in OPENBG_SPLIT_FILES.items()}
  for split, path in paths.items():
    if not os.path.isfile(path):
      raise KGFormatError(f'{root}: missing {os.path.basename(path)} (the {split} split of the '
                          'OpenBG-IMG layout)')
  rows = {s: read_triple_lines(p) for s, p in paths.items()}
  entities, relations, arrays = _index_splits(rows, paths, unknown)
  entity_text, relation_text = {}, {}
  path = os.path.join(root, OPENBG_ENTITY_TEXT)
  if os.path.isfile(path):
    entity_text = read_text_table(path)
  path = os.path.join(root, OPENBG_RELATION_TEXT)
  if os.path.isfile(path):
    relation_text = read_text_table(path)
  images = read_image_folders(os.path.join(root, OPENBG_IMAGES), set(entities))
  return KnowledgeGraph(entities, relations, **arrays, entity_text=entity_text,
                        relation_text=relation_text, images=images, source=os.path.abspath(root))


def read_image_folders(images_root: str, known: Iterable[str]) -> dict[str, list[str]]:
  """`entity -> sorted image paths` from `images_root/<entity>/*`.

  A folder named after an entity that is not in the KG is an error (it would be silently unused).
  Whether each file decodes is checked when features are extracted (data_prep/features.py).
  """
  if not os.path.isdir(images_root):
    return {}
  known = set(known)
  images = {}
  for name in sorted(os.listdir(images_root)):
    folder = os.path.join(images_root, name)
    if not os.path.isdir(folder):
      raise KGFormatError(f'{folder}: expected one folder per entity inside {images_root}')
    if name not in known:
      raise KGFormatError(f'{folder}: image folder for entity {name!r}, which occurs in no training '
                          'triple; remove the folder or add the entity')
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if files:
      images[name] = files
  return images


def detect_layout(root: str) -> str:
  """'openbg' if the folder holds `OpenBG-IMG_train.tsv`, else 'triples'."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'data.root {root!r} is not a folder')
  if os.path.isfile(os.path.join(root, OPENBG_SPLIT_FILES['train'])):
    return 'openbg'
  return 'triples'


def load_kg(root: str, layout: str = 'auto', unknown: str = 'error') -> KnowledgeGraph:
  """Reads a raw KG folder in either layout (`layout` 'auto', 'triples' or 'openbg')."""
  if layout == 'auto':
    layout = detect_layout(root)
  if layout == 'triples':
    return read_triple_folder(root, unknown)
  if layout == 'openbg':
    return read_openbg(root, unknown)
  raise ValueError(f"data.layout must be 'auto', 'triples' or 'openbg', got {layout!r}")
