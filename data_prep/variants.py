"""The paper's dataset variants (§4.1.2, §4.7, Tables 2, 4) derived from an OpenBG-IMG folder.

* `complete-img` (OpenBG-Complete-IMG+, §4.1.2): train and valid keep only the triples whose HEAD entity
  has an image; test is unchanged.
* `masked-<x>` (OpenBG-IMG+x%, §4.7): the paper masks training data "by controlling the frequency of a
  head entity with image information" without giving the procedure. Table 4 fixes what it must do:
  #Train is ≈ x % of the source's train in every row (158527/0.80 ≈ 138479/0.70 ≈ 92648/0.47 ≈
  68599/0.35 ≈ 55397/0.28 ≈ 198k, OpenBG-IMG+ has 197269) and the 70 % row equals Complete-IMG+.
  So x is read as the share of the source's train (and, separately, valid) triples kept, image-head triples
  first. Per split, with `target = max(1, round(x/100 * n))`:
    - target >= #image-head triples: keep every image-head triple plus a seeded random subset of the
      other triples up to the target (80 % adds imageless heads back on top of Complete-IMG+);
    - otherwise keep only image-head triples, thinning each image head h to `max(1, round(f * c_h))`
      of its `c_h` triples (chosen with the seed), with the one factor f whose total is closest to the
      target (bisection). Every image head keeps a triple, so every image entity still occurs in train.
  The random choice is one uniform key per triple, so for one seed the variants are nested
  (masked-28 ⊂ masked-35 ⊂ …); the same seed gives byte-identical folders.

An image entity is one whose `OpenBG-IMG_images/<entity>/` holds at least one image file (the reader's
definition). Each variant is written in the same layout, kept triples in their input line order, with the
text tables copied and one symlink (a copy where symlinks fail) per image entity still occurring in the
derived train (the reader rejects image folders of entities absent from train); dropped image entities
are counted and logged. Test stays unchanged, so some valid/test entities may be absent from a derived
train: read such folders with `--config.data.unknown_entities=keep`. The image folders are symlinks
into the source KG, outside the variant's root: read them with `--config.data.outside_links=follow`.

Example:
  >>> splits = read_layout('/tmp/kg')                               # doctest: +SKIP
  >>> rows = [stats_row(splits, 'source'), stats_row(complete_img(splits), 'complete-img')]  # doctest: +SKIP
  >>> print(format_table(rows))                                     # doctest: +SKIP
  $ python -m data_prep.variants --src=/tmp/kg --out=/tmp/kg_variants --shares=80,70,47,35,28
  $ python launch.py --config=configs/openbg.py --config.data.root=/tmp/kg_variants/masked-47 \\
      --config.data.unknown_entities=keep --config.data.outside_links=follow --workdir=/tmp/m47
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from imkga_jax import kg as kg_lib
from imkga_jax import readers

Triple = tuple[str, str, str]
DERIVED = ('train', 'valid')                     # the splits a variant changes; test never changes
VARIANT_FILE = 'variant.json'
STATS_FILE = 'stats.md'
COLUMNS = ('Dataset', '#Ent', '#Rel', '#Train', '#Valid', '#Test', '#images')
KEEP_HINT = ('test is unchanged, so a derived folder can hold valid/test entities absent from its '
             'train: read it with --config.data.unknown_entities=keep (and, as its image folders '
             'link to the source, --config.data.outside_links=follow)')


@dataclasses.dataclass(frozen=True)
class Splits:
  """Raw string triples per split (input line order) and the entities that have an image folder.

  Attributes:
    train, valid, test: `(head, relation, tail)` name triples.
    image_entities: entities with at least one image file.
    info: how a variant was derived (per-split targets, factor), written into `variant.json`.
  """
  train: tuple[Triple, ...]
  valid: tuple[Triple, ...]
  test: tuple[Triple, ...]
  image_entities: frozenset[str]
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def split(self, name: str) -> tuple[Triple, ...]:
    return getattr(self, name)


def read_layout(src: str) -> Splits:
  """Reads the split files and the image entities of an OpenBG-IMG layout folder.

  Args:
    src: folder with `OpenBG-IMG_{train,dev,test}.tsv` and optionally `OpenBG-IMG_images/<entity>/*`.

  Returns:
    The raw triples and image entities (every image entity, whether or not it occurs in a split).

  Raises:
    KGFormatError: a missing split file, a bad line (file:line), a file where an entity folder belongs.

  Example:
    >>> len(read_layout('/tmp/kg').train)                           # doctest: +SKIP
    26355
  """
  if not os.path.isdir(src):
    raise kg_lib.KGFormatError(f'--src={src}: not a folder')
  rows = {}
  for split, fname in kg_lib.OPENBG_SPLIT_FILES.items():
    path = os.path.join(src, fname)
    if not os.path.isfile(path):
      raise kg_lib.KGFormatError(f'--src={src}: missing {fname} (the {split} split); the folder must '
                                 'be in the OpenBG-IMG layout (see imkga_jax/kg.py)')
    rows[split] = tuple((h, r, t) for _, h, r, t in readers.read_triple_lines(path))
  images_root = os.path.join(src, kg_lib.OPENBG_IMAGES)
  images, empty = set(), 0
  if os.path.isdir(images_root):
    for name in sorted(os.listdir(images_root)):
      folder = os.path.join(images_root, name)
      if not os.path.isdir(folder):
        raise kg_lib.KGFormatError(f'{folder}: expected one folder per entity inside {images_root}')
      if any(f.lower().endswith(kg_lib.IMAGE_SUFFIXES) for f in os.listdir(folder)):
        images.add(name)
      else:
        empty += 1
  if empty:
    logging.warning('%s: %d entity folders hold no image file (%s); those entities count as imageless',
                    images_root, empty, '/'.join(kg_lib.IMAGE_SUFFIXES))
  return Splits(**rows, image_entities=frozenset(images))


def _entities(triples: Sequence[Triple]) -> set[str]:
  return {e for h, _, t in triples for e in (h, t)}


def _derive(splits: Splits, train: Sequence[Triple], valid: Sequence[Triple],
            info: Mapping[str, Any]) -> Splits:
  """New Splits with test unchanged and the image entities restricted to those in the new train."""
  in_train = _entities(train)
  dropped = sorted(splits.image_entities - in_train)
  if dropped:
    logging.warning('%d of %d image entities occur in no derived train triple and lose their image '
                    'folder (e.g. %s)', len(dropped), len(splits.image_entities), dropped[:3])
  return Splits(tuple(train), tuple(valid), splits.test, splits.image_entities & in_train,
                {**info, 'image_entities_dropped': len(dropped)})


def complete_img(splits: Splits) -> Splits:
  """OpenBG-Complete-IMG+: train and valid keep the triples whose head has an image; test unchanged.

  Example:
    >>> complete_img(read_layout('/tmp/kg')).train[0]               # doctest: +SKIP
    ('product_0000', 'brand', 'brand_kavur')
  """
  kept = {s: [x for x in splits.split(s) if x[0] in splits.image_entities] for s in DERIVED}
  info = {s: {'source': len(splits.split(s)), 'kept': len(kept[s])} for s in DERIVED}
  return _derive(splits, kept['train'], kept['valid'], info)


def _thin_counts(counts: np.ndarray, factor: float) -> np.ndarray:
  """`max(1, round(factor * count))` per head, rounding halves up (monotone in `factor`)."""
  return np.maximum(1, np.floor(factor * counts + 0.5)).astype(np.int64)


def _mask_split(triples: Sequence[Triple], images: frozenset[str], share: float,
                rng: np.random.Generator) -> tuple[list[Triple], dict[str, Any]]:
  """Indices kept by `masked` for one split (see the module docstring), in input order."""
  n = len(triples)
  keys = rng.random(n)                           # [n] one key per triple: nested across shares
  target = max(1, int(round(share / 100 * n))) if n else 0
  is_img = np.array([h in images for h, _, _ in triples], bool)  # [n]
  img_idx, other_idx = np.flatnonzero(is_img), np.flatnonzero(~is_img)
  info = {'source': n, 'target': target, 'image_head_triples': len(img_idx)}
  if target >= len(img_idx):
    extra = other_idx[np.argsort(keys[other_idx], kind='stable')[:target - len(img_idx)]]
    keep = np.concatenate([img_idx, extra])
    info.update(mode='fill', factor=1.0)
  else:
    heads = [triples[i][0] for i in img_idx]
    names, group = np.unique(np.array(heads), return_inverse=True)  # group: [n_img] head index
    counts = np.bincount(group, minlength=len(names))             # [H]
    lo, hi = 0.0, 1.0                            # _thin_counts(lo) < target <= _thin_counts(hi)
    if _thin_counts(counts, 0.0).sum() >= target:
      hi = 0.0
      logging.warning('masked %g%%: target %d is below the %d image heads; keeping one triple per '
                      'image head', share, target, len(names))
    else:
      for _ in range(64):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _thin_counts(counts, mid).sum() < target else (lo, mid)
    below, above = _thin_counts(counts, lo).sum(), _thin_counts(counts, hi).sum()
    factor = lo if hi > 0 and target - below < above - target else hi
    quota = _thin_counts(counts, factor)         # [H]
    order = np.lexsort((keys[img_idx], group))   # by head, then by key
    sorted_group = group[order]
    starts = np.searchsorted(sorted_group, np.arange(len(names)))  # [H] first position of each head
    rank = np.arange(len(order)) - starts[sorted_group]            # rank of a triple within its head
    keep = img_idx[order[rank < quota[sorted_group]]]
    info.update(mode='thin', factor=float(factor), image_heads=len(names))
  keep = np.sort(keep)
  info['kept'] = len(keep)
  return [triples[i] for i in keep], info


def masked(splits: Splits, share: float, seed: int = 0) -> Splits:
  """OpenBG-IMG+x%: keeps `share` % of train and of valid, image-head triples first; test unchanged.

  Args:
    splits: the source (`read_layout`).
    share: x in (0, 100].
    seed: seeds the choice (split by split); same seed ⇒ same triples, nested across shares.

  Returns:
    The derived splits; `info` holds per split the target, mode ('fill' or 'thin') and factor f.

  Example:
    >>> m = masked(read_layout('/tmp/kg'), 47, seed=0)             # doctest: +SKIP
    >>> m.info['train']['mode'], len(m.train)                       # doctest: +SKIP
    ('thin', 12387)
  """
  if not 0 < share <= 100:
    raise ValueError(f'--shares: share {share} must be in (0, 100] (percent of train/valid kept)')
  kept, info = {}, {'share': share}
  for i, split in enumerate(DERIVED):
    rng = np.random.default_rng((seed, i))
    kept[split], info[split] = _mask_split(splits.split(split), splits.image_entities, share, rng)
  return _derive(splits, kept['train'], kept['valid'], info)


def _link_or_copy(src: str, dst: str) -> bool:
  """Symlinks `dst` -> `src`; copies where the filesystem refuses symlinks. True if copied."""
  try:
    os.symlink(src, dst, target_is_directory=True)
    return False
  except OSError as err:
    logging.debug('symlink %s -> %s failed (%s); copying', dst, src, err)
    shutil.copytree(src, dst)
    return True


def write_variant(splits: Splits, src: str, out: str, meta: Mapping[str, Any],
                  overwrite: bool = False) -> dict[str, int]:
  """Writes one variant folder in the OpenBG-IMG layout (via `out + '.tmp'`, renamed at the end).

  Args:
    splits: the derived splits (`complete_img`, `masked`).
    src: the source folder (text tables and image folders are taken from it).
    out: the variant folder to write.
    meta: name, seed, x… written into `variant.json` with the counts and `splits.info`.
    overwrite: replace an existing `out`.

  Returns:
    Counts: train, valid, test, image entities linked/copied/dropped, valid/test triples with an
    entity or relation absent from the derived train.

  Example:
    >>> s = read_layout('/tmp/kg')                                  # doctest: +SKIP
    >>> meta = {'name': 'complete-img', 'seed': 0, 'x': None}
    >>> write_variant(complete_img(s), '/tmp/kg', '/tmp/v/complete-img', meta)  # doctest: +SKIP
  """
  for split in kg_lib.SPLITS:
    if not splits.split(split):
      raise ValueError(f'variant {meta.get("name")!r}: the derived {split} split is empty (the reader '
                       f'rejects empty splits); the source {src} has too few image-head triples')
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f'{out} already exists; delete it or pass --overwrite')
  tmp = out + '.tmp'
  if os.path.lexists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  for split, fname in kg_lib.OPENBG_SPLIT_FILES.items():
    with open(os.path.join(tmp, fname), 'w', encoding='utf-8', newline='\n') as f:
      f.writelines('\t'.join(x) + '\n' for x in splits.split(split))
  for fname in (kg_lib.OPENBG_ENTITY_TEXT, kg_lib.OPENBG_RELATION_TEXT):
    if os.path.isfile(os.path.join(src, fname)):
      shutil.copyfile(os.path.join(src, fname), os.path.join(tmp, fname))
  in_train = _entities(splits.train)
  linked = sorted(splits.image_entities & in_train)
  dropped = len(splits.image_entities) - len(linked) + splits.info.get('image_entities_dropped', 0)
  copied = 0
  if linked:
    os.makedirs(os.path.join(tmp, kg_lib.OPENBG_IMAGES))
  for name in linked:
    source = os.path.realpath(os.path.join(src, kg_lib.OPENBG_IMAGES, name))
    copied += _link_or_copy(source, os.path.join(tmp, kg_lib.OPENBG_IMAGES, name))
  if copied:
    logging.warning('%s: symlinks failed; copied %d image folders', out, copied)
  relations = {r for _, r, _ in splits.train}
  unseen = {s: sum(h not in in_train or t not in in_train or r not in relations
                   for h, r, t in splits.split(s)) for s in ('valid', 'test')}
  counts = {'train': len(splits.train), 'valid': len(splits.valid), 'test': len(splits.test),
            'image_entities_linked': len(linked), 'image_folders_copied': copied,
            'image_entities_dropped': dropped, 'valid_unseen_in_train': unseen['valid'],
            'test_unseen_in_train': unseen['test']}
  record = {**meta, 'source': os.path.abspath(src), 'counts': counts, 'derivation': dict(splits.info)}
  with open(os.path.join(tmp, VARIANT_FILE), 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write('\n')
  if os.path.isdir(out) and not os.path.islink(out):
    shutil.rmtree(out)
  elif os.path.lexists(out):
    os.remove(out)
  os.replace(tmp, out)
  logging.info('%s: %s', out, counts)
  return counts


def stats_row(folder_or_splits: str | Splits, name: str | None = None) -> dict[str, Any]:
  """One row of the paper's Table 2/4: entities, relations and image entities occurring in any split.

  Args:
    folder_or_splits: an OpenBG-IMG layout folder or `Splits`.
    name: the Dataset column; defaults to the folder's base name.

  Example:
    >>> stats_row('/tmp/kg')['#Train']                              # doctest: +SKIP
    26355
  """
  if isinstance(folder_or_splits, Splits):
    splits, default = folder_or_splits, 'splits'
  else:
    splits, default = read_layout(folder_or_splits), os.path.basename(
        os.path.normpath(folder_or_splits))
  every = splits.train + splits.valid + splits.test
  entities = _entities(every)
  return {'Dataset': name or default, '#Ent': len(entities), '#Rel': len({r for _, r, _ in every}),
          '#Train': len(splits.train), '#Valid': len(splits.valid), '#Test': len(splits.test),
          '#images': len(splits.image_entities & entities)}


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """A markdown table of `stats_row` rows (columns `COLUMNS`).

  Example:
    >>> print(format_table([{'Dataset': 'x', '#Ent': 3, '#Rel': 1, '#Train': 2, '#Valid': 1,
    ...                      '#Test': 1, '#images': 1}]))
    | Dataset | #Ent | #Rel | #Train | #Valid | #Test | #images |
    |---|---:|---:|---:|---:|---:|---:|
    | x | 3 | 1 | 2 | 1 | 1 | 1 |
  """
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|---|' + '---:|' * (len(COLUMNS) - 1)]
  lines += ['| ' + ' | '.join(str(row[c]) for c in COLUMNS) + ' |' for row in rows]
  return '\n'.join(lines)


def _parse_shares(text: str) -> list[float]:
  """`'80,47.5'` -> `[80, 47.5]`; a ValueError naming --shares for bad or duplicate values."""
  try:
    shares = [float(x) for x in text.split(',') if x.strip()]
    shares = [int(x) if x.is_integer() else x for x in shares]
  except ValueError:
    raise ValueError(f'--shares={text!r}: expected comma-separated numbers such as 80,70,47') from None
  bad = [x for x in shares if not 0 < x <= 100]
  if bad or not shares or len(set(shares)) != len(shares):
    raise ValueError(f'--shares={text!r}: every share must be in (0, 100], given once, at least one'
                     f'{"; out of range: " + str(bad) if bad else ""}')
  return shares


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """CLI: writes OUT/complete-img, OUT/masked-<x>…, prints and writes (OUT/stats.md) the table.

  Returns:
    The table rows (source first).

  Example:
    $ python -m data_prep.variants --src=/tmp/kg --out=/tmp/kg_variants --seed=0
  """
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--src', required=True, help='source folder in the OpenBG-IMG layout')
  parser.add_argument('--out', required=True, help='output folder; one sub-folder per variant')
  parser.add_argument('--variants', default='complete-img,masked', help='complete-img and/or masked')
  parser.add_argument('--shares', default='80,70,47,35,28', help='x of masked-<x>, percent kept')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--overwrite', action='store_true',
                      help='write into a non-empty --out, replacing the variant folders written')
  args = parser.parse_args(argv)
  variants = [v.strip() for v in args.variants.split(',') if v.strip()]
  unknown = sorted(set(variants) - {'complete-img', 'masked'})
  if unknown or not variants:
    raise ValueError(f'--variants={args.variants!r}: unknown {unknown}; use complete-img and/or masked')
  shares = _parse_shares(args.shares) if 'masked' in variants else []
  if os.path.isfile(args.out) or (os.path.isdir(args.out) and os.listdir(args.out)
                                  and not args.overwrite):
    raise FileExistsError(f'--out={args.out} exists and is not an empty folder; choose another or '
                          'pass --overwrite')
  source = read_layout(args.src)
  jobs = [('complete-img', None, lambda: complete_img(source))] if 'complete-img' in variants else []
  jobs += [(f'masked-{x:g}', x, lambda x=x: masked(source, x, args.seed)) for x in shares]
  rows = [stats_row(source, os.path.basename(os.path.normpath(args.src)) + ' (source)')]
  for name, share, derive in jobs:
    folder = os.path.join(args.out, name)
    counts = write_variant(derive(), args.src, folder,
                           {'name': name, 'seed': args.seed, 'x': share}, overwrite=args.overwrite)
    rows.append(stats_row(folder, name))
    logging.info('%s: %d valid and %d test triples use an entity or relation absent from its train',
                 name, counts['valid_unseen_in_train'], counts['test_unseen_in_train'])
  table = format_table(rows)
  with open(os.path.join(args.out, STATS_FILE), 'w', encoding='utf-8') as f:
    f.write(table + '\n')
  print(table)
  print(f'\nNote: {KEEP_HINT}, e.g. python launch.py --config.data.root={args.out}/{jobs[-1][0]} '
        '--config.data.unknown_entities=keep --config.data.outside_links=follow ...')
  return rows


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO)
  main()
