"""What may be read under a KG's data root: regular files inside it, and the image folders.

* A file reached through a symlink whose target leaves the data root (`realpath` outside
  `realpath(root)`) follows `data.outside_links`: 'error' (the default), 'skip' (an image left out,
  counted) or 'follow' (read anyway, counted; the variant folders `data_prep/variants.py` writes
  link their image folders to the source KG). A triple or text file outside the root cannot be
  skipped: it is read only with 'follow'.
* Image names that are not regular files (a FIFO or device named `x.jpg`, a folder, a broken
  symlink) are counted and left out; the bytes are later read with `files.open_regular`, which
  refuses them again rather than block.

Standard library only (DESIGN.md §2: the readers import numpy and the stdlib, no more).
"""
from __future__ import annotations

import logging
import os
import stat
from typing import Iterable, Iterator

from imkga_jax import files
from imkga_jax.kg import IMAGE_SUFFIXES, OUTSIDE_LINK_POLICIES, KGFormatError


def _inside(path: str, real_root: str) -> bool:
  real = os.path.realpath(path)
  return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def check_text_input(path: str, root: str, outside_links: str, counts: dict[str, int]) -> str:
  """`path` if it may be read; a text input whose symlink leaves `root` needs 'follow'."""
  if not _inside(path, os.path.realpath(root)):
    if outside_links != 'follow':
      raise KGFormatError(
          f'{path}: a symlink leading outside data.root {root!r} (to {os.path.realpath(path)!r}); '
          'copy the file into the KG folder or set --config.data.outside_links=follow')
    counts['inputs_outside_root'] = counts.get('inputs_outside_root', 0) + 1
    logging.warning('%s: read through a symlink outside data.root (data.outside_links=follow)', path)
  return path


def image_candidates(images_root: str) -> Iterator[tuple[str, str]]:
  """`(entity folder name, file path)` of every file with an image suffix, sorted, unchecked."""
  for name in sorted(os.listdir(images_root)):
    folder = os.path.join(images_root, name)
    if not os.path.isdir(folder):
      raise KGFormatError(f'{folder}: expected one folder per entity inside {images_root}')
    for f in sorted(os.listdir(folder)):
      if f.lower().endswith(IMAGE_SUFFIXES):
        yield name, os.path.join(folder, f)


def read_image_folders(images_root: str, known: Iterable[str], root: str | None = None,
                       outside_links: str = 'error', counts: dict[str, int] | None = None
                       ) -> dict[str, list[str]]:
  """`entity -> sorted image paths` from `images_root/<entity>/*`.

  A folder named after an entity that is not in the KG is an error (it would be silently unused).
  Files that are not regular files (FIFO, device, folder, broken symlink) are counted
  (`images_not_regular`), logged and left out; symlinks leaving `root` follow `outside_links`
  (counted as `images_outside_root` when followed, `images_outside_root_skipped` when skipped).
  Whether each file decodes is checked when features are extracted (data_prep/features.py).

  Args:
    images_root: the `OpenBG-IMG_images` folder.
    known: entity names of the KG.
    root: the data root the images must stay inside (default: the folder above `images_root`).
    outside_links: 'error', 'skip' or 'follow' (module docstring).
    counts: a dict the counts are added to.
  """
  if outside_links not in OUTSIDE_LINK_POLICIES:
    raise ValueError(f'data.outside_links must be one of {OUTSIDE_LINK_POLICIES}, got '
                     f'{outside_links!r}')
  counts = {} if counts is None else counts
  if not os.path.isdir(images_root):
    return {}
  real_root = os.path.realpath(root if root is not None else os.path.dirname(images_root))
  known = set(known)
  images: dict[str, list[str]] = {}
  odd, outside = [], []
  for name in sorted(os.listdir(images_root)):
    if name not in known and os.path.isdir(os.path.join(images_root, name)):
      raise KGFormatError(f'{os.path.join(images_root, name)}: image folder for entity {name!r}, '
                          'which occurs in no training triple; remove the folder or add the entity')
  for name, path in image_candidates(images_root):
    try:
      mode = os.stat(path).st_mode
    except OSError as e:                                    # a broken symlink, a vanished file
      odd.append(f'{path} ({e.strerror})')
      continue
    if not stat.S_ISREG(mode):
      odd.append(f'{path} ({files.file_kind(mode)})')
      continue
    if not _inside(path, real_root):
      if outside_links == 'error':
        raise KGFormatError(
            f'{path}: a symlink leading outside data.root {real_root!r} (to '
            f'{os.path.realpath(path)!r}); copy the image into the KG folder, or set '
            '--config.data.outside_links=skip (leave such images out, counted) or follow (read them)')
      outside.append(path)
      if outside_links == 'skip':
        continue
    images.setdefault(name, []).append(path)
  counts['images_not_regular'] = len(odd)
  if odd:
    logging.warning('%s: %d image name(s) that are not regular files left out: %s', images_root,
                    len(odd), ', '.join(odd[:5]) + (' ...' if len(odd) > 5 else ''))
  if outside_links == 'skip':
    counts['images_outside_root_skipped'] = len(outside)
  else:
    counts['images_outside_root'] = len(outside)
  if outside:
    logging.warning('%s: %d image(s) reached through symlinks outside data.root %s %s '
                    '(data.outside_links=%s), e.g. %s', images_root, len(outside), real_root,
                    'left out' if outside_links == 'skip' else 'read', outside_links, outside[0])
  return images
