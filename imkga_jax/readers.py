"""Readers of raw KG folders: triple files, text tables, image folders, layout detection, `load_kg`.

Two layouts (DESIGN.md §3):

* a folder of `train`, `valid` (or `dev`) and `test` triple files (`.txt` or `.tsv`, tab or
  whitespace separated, `\\r\\n` tolerated) — the layout of the public benchmarks;
* the OpenBG-IMG layout: `OpenBG-IMG_{train,dev,test}.tsv`, `OpenBG-IMG_entity2text.tsv`,
  `OpenBG-IMG_relation2text.tsv` and `OpenBG-IMG_images/<entity>/*`.

Every text file is UTF-8; a byte-order mark at its start is dropped, other bytes that are not UTF-8
raise `KGFormatError` naming the file, line and byte offset. Bad input raises `KGFormatError`
naming the file and line. Decisions a policy allows are counted, logged and returned in
`KnowledgeGraph.read_stats` (which `prepare` writes to stats.json):

* `unknown` (`data.unknown_entities`): a valid/test triple with an entity or relation never seen in
  train is an 'error', a 'skip' or, with 'keep' (what the published WN18RR numbers assume), kept
  with the new names added to the vocabulary.
* `duplicates` (`data.duplicates`): a train triple that occurs twice, a valid/test triple that
  occurs twice in its split, and a valid/test triple that is also a train triple are counted
  ('keep', the default: published splits are used as they are), removed ('drop': the later copy,
  and the valid/test copy of a train triple) or an 'error' naming both lines.
* `outside_links` (`data.outside_links`): files reached through a symlink that leaves the data
  root, and image names that are not regular files (`data_root.py`).

Example:
  >>> kg = load_kg(datasets.resolve('umls'))                       # doctest: +SKIP
  >>> kg.num_entities, kg.num_relations, len(kg.train)              # doctest: +SKIP
  (135, 46, 5216)
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from imkga_jax import data_root
from imkga_jax import files
from imkga_jax.kg import (DUPLICATE_POLICIES, OPENBG_ENTITY_TEXT, OPENBG_IMAGES,
                          OPENBG_RELATION_TEXT, OPENBG_SPLIT_FILES, SPLITS, UNKNOWN_POLICIES,
                          KGFormatError, KnowledgeGraph)

Row = tuple[int, str, str, str]       # (line number, head, relation, tail)
BOM = '\ufeff'


# ============================================================================ text files
def read_lines(path: str) -> Iterator[tuple[int, str]]:
  """`(line_number, text)` of every line of a UTF-8 file, line endings removed.

  Lines end at `\\n`, `\\r\\n` or a lone `\\r` (as Python's universal newlines). A byte-order mark at
  the start of the file is dropped.

  Raises:
    KGFormatError: bytes that are not UTF-8, naming the file, line and byte offset.
    files.NotRegularFileError: `path` is a FIFO, device or folder.
  """
  lineno, offset = 0, 0
  with files.open_regular(path) as f:
    for raw in f:                                           # splits at b'\n' only
      body = raw[:-1] if raw.endswith(b'\n') else raw
      pieces = body.split(b'\r')
      if len(pieces) > 1 and not pieces[-1] and raw.endswith(b'\n'):
        pieces.pop()                                        # '\r\n': one line end, not two
      start = offset
      for piece in pieces:
        lineno += 1
        try:
          text = piece.decode('utf-8')
        except UnicodeDecodeError as e:
          raise KGFormatError(
              f'{path}:{lineno}: not UTF-8 (byte 0x{piece[e.start]:02x} at byte offset '
              f'{start + e.start} of the file); re-encode the file as UTF-8, e.g. '
              f'`iconv -f latin1 -t utf-8`') from None
        if lineno == 1 and text.startswith(BOM):
          text = text[len(BOM):]
        yield lineno, text
        start += len(piece) + 1
      offset += len(raw)


def _split_fields(line: str) -> list[str]:
  return line.split('\t') if '\t' in line else line.split()


def read_triple_lines(path: str) -> list[Row]:
  """Reads one triple file: `(line_number, head, relation, tail)` for every non-blank line.

  Raises:
    KGFormatError: a line without exactly three non-empty fields, naming file and line.
  """
  rows = []
  for lineno, line in read_lines(path):
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
  for lineno, line in read_lines(path):
    if not line.strip():
      continue
    key, sep, text = line.partition('\t')
    if not sep or not key.strip():
      raise KGFormatError(f'{path}:{lineno}: expected `key<TAB>text`, got {line[:120]!r}')
    table[key.strip()] = text.strip()
  return table


# ============================================================================ vocabularies, policies
def _index_splits(split_rows: Mapping[str, Sequence[Row]], split_paths: Mapping[str, str],
                  unknown: str) -> tuple[list, list, dict, dict]:
  """Vocabularies from train and `(id array, line numbers)` per split, applying the unknown policy."""
  if unknown not in UNKNOWN_POLICIES:
    raise ValueError(f'data.unknown_entities must be one of {UNKNOWN_POLICIES}, got {unknown!r}')
  entities: dict[str, int] = {}
  relations: dict[str, int] = {}
  for _, h, r, t in split_rows['train']:
    for e in (h, t):
      entities.setdefault(e, len(entities))
    relations.setdefault(r, len(relations))
  arrays, lines = {}, {}
  for split in SPLITS:
    ids, linenos, skipped, kept = [], [], 0, 0
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
      linenos.append(lineno)
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
    lines[split] = linenos
  return list(entities), list(relations), arrays, lines


def apply_duplicates_policy(arrays: dict[str, np.ndarray], lines: Mapping[str, Sequence[int]],
                            split_paths: Mapping[str, str], policy: str) -> dict[str, int]:
  """Counts repeated triples (in place: drops them with `policy='drop'`); returns the counts.

  Counted: `train_duplicates` (a later copy of a train triple), `{valid,test}_duplicates` (a later
  copy within the split) and `{valid,test}_in_train` (valid/test lines holding a train triple: they
  leak the answer into training). With 'drop', also `duplicates_dropped` (lines removed).
  """
  if policy not in DUPLICATE_POLICIES:
    raise ValueError(f'data.duplicates must be one of {DUPLICATE_POLICIES}, got {policy!r}')
  train_first: dict[tuple, int] = {}
  counts, dropped = {}, 0
  for split in SPLITS:
    first: dict[tuple, int] = {}
    keep = np.ones(len(arrays[split]), bool)
    dup = in_train = 0
    for i, (triple, lineno) in enumerate(zip(map(tuple, arrays[split].tolist()), lines[split])):
      where = None
      if split != 'train' and triple in train_first:
        in_train += 1
        where = f'{split_paths["train"]}:{train_first[triple]}'
      if triple in first:
        dup += 1
        where = f'{split_paths[split]}:{first[triple]}'
      else:
        first[triple] = lineno
      if where is not None:
        if policy == 'error':
          raise KGFormatError(
              f'{split_paths[split]}:{lineno}: this triple repeats {where}; remove one copy, or set '
              '--config.data.duplicates=keep (count them) or drop (remove the later copy)')
        keep[i] = policy == 'keep'
    if split == 'train':
      train_first = first
      counts['train_duplicates'] = dup
    else:
      counts[f'{split}_duplicates'], counts[f'{split}_in_train'] = dup, in_train
    if dup or in_train:
      logging.warning('%s: %d repeated triple(s) within the %s split%s; %s (data.duplicates=%s)',
                      split_paths[split], dup, split,
                      '' if split == 'train' else f', {in_train} that are train triples',
                      'kept' if policy == 'keep' else 'dropped', policy)
    if not keep.all():
      dropped += int((~keep).sum())
      arrays[split] = arrays[split][keep]
      if not len(arrays[split]):
        raise KGFormatError(f'{split_paths[split]}: no triple left in the {split} split after '
                            'dropping repeats (data.duplicates=drop)')
  if policy == 'drop':
    counts['duplicates_dropped'] = dropped
  return counts


# ============================================================================ layouts
def _find_split_file(root: str, split: str) -> str:
  names = {'train': ('train',), 'valid': ('valid', 'dev', 'validation'), 'test': ('test',)}[split]
  for name in names:
    for ext in ('.txt', '.tsv', ''):
      path = os.path.join(root, name + ext)
      if os.path.isfile(path):
        return path
      if os.path.lexists(path) and ext:
        raise KGFormatError(f'{path}: the {split} split is not a regular file (a FIFO, folder or '
                            'broken symlink?); replace it with a text file of triples')
  raise KGFormatError(f'{root}: no {split} file found (looked for '
                      f'{", ".join(n + e for n in names for e in (".txt", ".tsv"))})')


def _openbg_paths(root: str) -> dict[str, str]:
  paths = {s: os.path.join(root, f) for s, f in OPENBG_SPLIT_FILES.items()}
  for split, path in paths.items():
    if not os.path.isfile(path):
      raise KGFormatError(f'{root}: missing {os.path.basename(path)} (the {split} split of the '
                          'OpenBG-IMG layout)')
  return paths


def split_paths(root: str, layout: str) -> dict[str, str]:
  """The triple file of each split of a raw KG folder in `layout` ('triples' or 'openbg')."""
  if layout == 'openbg':
    return _openbg_paths(root)
  return {s: _find_split_file(root, s) for s in SPLITS}


def _read(root: str, paths: Mapping[str, str], unknown: str, duplicates: str, outside_links: str,
          counts: dict[str, int]) -> tuple[list, list, dict]:
  rows = {s: read_triple_lines(data_root.check_text_input(p, root, outside_links, counts))
          for s, p in paths.items()}
  entities, relations, arrays, lines = _index_splits(rows, paths, unknown)
  counts.update(apply_duplicates_policy(arrays, lines, paths, duplicates))
  return entities, relations, arrays


def read_triple_folder(root: str, unknown: str = 'error', *, duplicates: str = 'keep',
                       outside_links: str = 'error') -> KnowledgeGraph:
  """Reads a folder with `train`, `valid` (or `dev`) and `test` triple files."""
  counts: dict[str, int] = {}
  entities, relations, arrays = _read(root, split_paths(root, 'triples'), unknown, duplicates,
                                      outside_links, counts)
  return KnowledgeGraph(entities, relations, **arrays, source=os.path.abspath(root),
                        read_stats=counts)


def read_openbg(root: str, unknown: str = 'error', *, duplicates: str = 'keep',
                outside_links: str = 'error') -> KnowledgeGraph:
  """Reads the OpenBG-IMG layout (see the module docstring)."""
  counts: dict[str, int] = {}
  entities, relations, arrays = _read(root, split_paths(root, 'openbg'), unknown, duplicates,
                                      outside_links, counts)
  tables = []
  for name in (OPENBG_ENTITY_TEXT, OPENBG_RELATION_TEXT):
    path = os.path.join(root, name)
    tables.append(read_text_table(data_root.check_text_input(path, root, outside_links, counts))
                  if os.path.isfile(path) else {})
  images = data_root.read_image_folders(os.path.join(root, OPENBG_IMAGES), set(entities), root,
                              outside_links, counts)
  return KnowledgeGraph(entities, relations, **arrays, entity_text=tables[0],
                        relation_text=tables[1], images=images, source=os.path.abspath(root),
                        read_stats=counts)


def check_root(root: str) -> None:
  """A data root that is missing or not a folder is an error saying so (not "no train file")."""
  if not root:
    raise ValueError('data.root is empty: pass --config.data.root=PATH/TO/KG')
  if not os.path.exists(root):
    raise FileNotFoundError(f'data.root {root!r} does not exist (resolved: '
                            f'{os.path.abspath(root)!r}); check --config.data.root')
  if not os.path.isdir(root):
    raise NotADirectoryError(f'data.root {root!r} is a file, not a folder; point '
                             '--config.data.root at the folder holding the split files')


def detect_layout(root: str) -> str:
  """'openbg' if the folder holds `OpenBG-IMG_train.tsv`, else 'triples'."""
  check_root(root)
  if os.path.isfile(os.path.join(root, OPENBG_SPLIT_FILES['train'])):
    return 'openbg'
  return 'triples'


def resolve_layout(root: str, layout: str) -> str:
  """`layout` itself, or the detected one for 'auto'; the root is checked either way."""
  check_root(root)
  if layout == 'auto':
    return detect_layout(root)
  if layout not in ('triples', 'openbg'):
    raise ValueError(f"data.layout must be 'auto', 'triples' or 'openbg', got {layout!r}")
  return layout


def load_kg(root: str, layout: str = 'auto', unknown: str = 'error', *, duplicates: str = 'keep',
            outside_links: str = 'error') -> KnowledgeGraph:
  """Reads a raw KG folder in either layout (`layout` 'auto', 'triples' or 'openbg').

  `unknown`, `duplicates` and `outside_links` are the policies of the module docstring.
  """
  layout = resolve_layout(root, layout)
  read = read_openbg if layout == 'openbg' else read_triple_folder
  return read(root, unknown, duplicates=duplicates, outside_links=outside_links)


def load_kg_from_config(data: Any, root: str | None = None) -> KnowledgeGraph:
  """`load_kg` with the keys of the config's `data` section: `root` (default `data.root`), the
  layout and the policies."""
  return load_kg(data.root if root is None else root, data.layout, data.unknown_entities,
                 duplicates=data.duplicates, outside_links=data.outside_links)


def input_files(root: str, layout: str) -> dict[str, list[str]]:
  """The files a read of `root` depends on: `{'text': [...], 'images': [...]}` (for fingerprints).

  Text files are the split files and, in the OpenBG-IMG layout, the text tables present; images
  are every regular file with an image suffix in the image folders.
  """
  layout = resolve_layout(root, layout)
  text = list(split_paths(root, layout).values())
  images = []
  if layout == 'openbg':
    text += [p for p in (os.path.join(root, OPENBG_ENTITY_TEXT),
                         os.path.join(root, OPENBG_RELATION_TEXT)) if os.path.isfile(p)]
    images_root = os.path.join(root, OPENBG_IMAGES)
    if os.path.isdir(images_root):
      images = [p for _, p in data_root.image_candidates(images_root) if os.path.isfile(p)]
  return {'text': text, 'images': images}
