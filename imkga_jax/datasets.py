"""Datasets by name (`--config.data.name=umls`), so running a benchmark needs no copy of it beside the checkout.

The PyKEEN / TFDS way: a name resolves to a folder the readers (`readers.load_kg`) read.

* **Packaged**: `umls` and `kinship` ship inside the package (`imkga_jax/dataset_files/<name>/`, about
  0.5 MB each, byte-identical to the copies inside the `pykeen` wheel). Their sha256 are recorded here
  (`DATASETS`) and checked on every use.
* **Cached**: `wn18rr`, `fb15k237` and `openbg_img` live in `cache_dir()/<name>`, where `cache_dir()`
  is `data.cache_dir`, else `$IMKGA_DATASETS_DIR`, else `$XDG_CACHE_HOME/imkga_jax/datasets`, else
  `~/.cache/imkga_jax/datasets`. A folder that lacks a file is filled on first use by downloading the
  dataset's archive (`Dataset.url`, or `data.url` for a mirror or a local `file://` copy; `.tar`,
  `.tar.gz`, `.tgz` or `.zip`, the needed files found by name at any depth). Without a network, or
  for OpenBG-IMG (its download page needs an account), the error says which files to put in which
  folder.
* **Verified**: every file's sha256 is compared with the recorded one. WN18RR's are recorded here
  (computed from the standard ConvE split); for the others the digests are recorded in
  `<folder>/checksums.json` at first download (or at the first use of a folder filled by hand) and
  checked on every later use. A mismatch names the file, both digests and the fix. Digests are of
  the bytes with `\\r\\n` read as `\\n` (`text_digest`), so a copy with Windows line endings (which the
  readers accept) verifies too; for a file without `\\r` it is the plain sha256 (`sha256sum`). Image
  folders (OpenBG-IMG_images) are checked to exist, not hashed (hashing thousands of images on every
  run would cost more than the stage it guards).

`data.root` keeps working and wins: with `data.root` set, that folder is read as it is and
`data.name` only labels the run (logged); nothing is downloaded or verified. Standard library, tqdm
and the project's leaf modules only (no jax/flax: `data_prep` and the readers import this module).

Example:
  >>> root = resolve('umls')                                    # doctest: +SKIP
  >>> readers.load_kg(root).num_entities                        # doctest: +SKIP
  135
  >>> resolve('wn18rr', cache='/tmp/cache', url='file:///tmp/WN18RR.tar.gz')   # doctest: +SKIP
  '/tmp/cache/wn18rr'
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import tqdm

from imkga_jax import files
from imkga_jax import kg as kg_lib

ENV_CACHE = 'IMKGA_DATASETS_DIR'
CHECKSUMS_FILE = 'checksums.json'
PACKAGE_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dataset_files')
TRIPLE_FILES = ('train.txt', 'valid.txt', 'test.txt')
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


class DatasetError(RuntimeError):
  """A dataset by name cannot be used; the message names the folder, the files and the fix."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset known by name.

  Attributes:
    name: the value of `data.name`.
    title: what it is, for messages.
    files: files the folder must hold (relative paths).
    folders: folders it must hold (checked to exist, not hashed).
    sha256: recorded `text_digest` per file; files missing here are recorded at first use.
    url: archive downloaded when a file is missing ('' = none: the files are placed by hand).
    source: where to get the files by hand (for the error message).
    packaged: ships inside the package (`PACKAGE_FOLDER/<name>`) rather than in the cache.
  """
  name: str
  title: str
  files: tuple[str, ...]
  folders: tuple[str, ...] = ()
  sha256: Mapping[str, str] = dataclasses.field(default_factory=dict)
  url: str = ''
  source: str = ''
  packaged: bool = False


_CONVE = 'https://github.com/TimDettmers/ConvE/raw/master/'
DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset('umls', 'UMLS (135 entities, 46 relations; biomedical ontology)', TRIPLE_FILES,
            sha256={'train.txt': '873ef4925516b83e7f6f8cc02b4be51d848828710a7f65a956f0ac4a9e452f35',
                    'valid.txt': '025c98f8a4891e2a6582ec5b40ee0d904031edad9c52554522f4b7904820c98e',
                    'test.txt': 'a7eb529a3d2810fcc96341ccc97c625a5e202f8389673aa6bd317eeebbb79014'},
            source=_CONVE + 'umls.tar.gz', packaged=True),
    Dataset('kinship', 'Kinship (104 entities, 25 relations; Alyawarra kinship terms)', TRIPLE_FILES,
            sha256={'train.txt': '738612111a6acf0e39662bde24c7e72a4d1edf20931beea077da367dda689731',
                    'valid.txt': 'c56f8630a583178b1e569f11a64aa535ae1ce0b0912d8b1e24716be2b37f04da',
                    'test.txt': '05e5733265761d55be9c05bfaff5a8d0808df46f9c1e9d66cc3f2fe114e43d88'},
            source=_CONVE + 'kinship.tar.gz', packaged=True),
    Dataset('wn18rr', 'WN18RR (40,943 entities, 11 relations; WordNet without inverse leakage)',
            TRIPLE_FILES,
            sha256={'train.txt': '038612e783c215ee5f3ca9fbfca27b8d0739be1028fe4ee7c174aecf0b83d5df',
                    'valid.txt': '453ce7202afa58094a04d2b1560ee2b02660f1c260b32ce6651c8ccedd1028ab',
                    'test.txt': '0383bceaaa1096cf3c03ec021ed0048068e2355dbfc0239b292cefdac821cec5'},
            url=_CONVE + 'WN18RR.tar.gz', source=_CONVE + 'WN18RR.tar.gz'),
    Dataset('fb15k237', 'FB15k-237 (14,541 entities, 237 relations; Freebase without inverse leakage)',
            TRIPLE_FILES, url=_CONVE + 'FB15k-237.tar.gz', source=_CONVE + 'FB15k-237.tar.gz'),
    Dataset('openbg_img', 'OpenBG-IMG (multimodal e-commerce KG, the paper\'s source dataset)',
            tuple(kg_lib.OPENBG_SPLIT_FILES.values()) + (kg_lib.OPENBG_ENTITY_TEXT,
                                                         kg_lib.OPENBG_RELATION_TEXT),
            folders=(kg_lib.OPENBG_IMAGES,),
            source='the CCKS2022 task-3 page on tianchi.aliyun.com (an account is needed; see '
                   'github.com/OpenBGBenchmark/OpenBG-IMG), renamed to the OpenBG-IMG layout '
                   '(README "Data formats")'),
)}
NAMES = tuple(DATASETS)


# ============================================================================ folders
def cache_dir(cache: str = '') -> str:
  """The cache root: `cache` (data.cache_dir), else $IMKGA_DATASETS_DIR, else the XDG cache."""
  if cache:
    return os.path.abspath(os.path.expanduser(cache))
  if os.environ.get(ENV_CACHE):
    return os.path.abspath(os.path.expanduser(os.environ[ENV_CACHE]))
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'imkga_jax', 'datasets')


def get(name: str) -> Dataset:
  """The dataset called `name`; an unknown name is an error listing the known ones."""
  if name not in DATASETS:
    raise ValueError(f'data.name={name!r} is not a known dataset; use one of {", ".join(NAMES)}, '
                     'or read any folder with --config.data.root=PATH')
  return DATASETS[name]


def folder(name: str, cache: str = '') -> str:
  """Where dataset `name` lives: inside the package, or `cache_dir(cache)/<name>`."""
  spec = get(name)
  return os.path.join(PACKAGE_FOLDER, name) if spec.packaged else os.path.join(cache_dir(cache), name)


def text_digest(path: str) -> str:
  """sha256 (hex) of a file's bytes with every `\\r\\n` read as `\\n` (= `sha256sum` without `\\r`)."""
  digest, carry = hashlib.sha256(), b''
  with files.open_regular(path) as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      chunk = carry + chunk
      carry = b'\r' if chunk.endswith(b'\r') else b''
      digest.update(chunk[:len(chunk) - len(carry)].replace(b'\r\n', b'\n'))
  digest.update(carry)
  return digest.hexdigest()


def missing(spec: Dataset, root: str) -> list[str]:
  """The files and folders (with a trailing '/') of `spec` that `root` lacks."""
  out = [f for f in spec.files if not os.path.isfile(os.path.join(root, f))]
  return out + [d + '/' for d in spec.folders if not os.path.isdir(os.path.join(root, d))]


# ============================================================================ resolving
def resolve(name: str, cache: str = '', url: str = '') -> str:
  """The folder of dataset `name`, downloaded if needed and verified.

  Args:
    name: one of `NAMES`.
    cache: the cache root (`data.cache_dir`; '' = $IMKGA_DATASETS_DIR or the XDG cache).
    url: download from here instead of `Dataset.url` (`data.url`: a mirror, a `file://` copy).

  Returns:
    The absolute path of a folder holding every file of the dataset.

  Raises:
    DatasetError: files missing and no download possible (the message lists the files and the
      folder to put them in), or a file whose sha256 differs from the recorded one.
  """
  spec = get(name)
  root = folder(name, cache)
  if spec.packaged:
    if missing(spec, root):
      raise DatasetError(f'data.name={name}: the packaged files {", ".join(missing(spec, root))} '
                         f'are missing from {root}; reinstall the package (pip install imkga-jax) '
                         f'or put them there (from {spec.source})')
    verify(spec, root)
    return root
  lacking, source = missing(spec, root), ''
  if lacking:
    source = url or spec.url
    if not source:
      raise DatasetError(_place_by_hand(spec, root, lacking, 'there is no public download URL'))
    try:
      download(spec, root, source)
    except (urllib.error.URLError, OSError, tarfile.TarError, zipfile.BadZipFile) as e:
      raise DatasetError(_place_by_hand(spec, root, missing(spec, root),
                                        f'downloading {source} failed ({e})')) from e
  verify(spec, root, source)
  return root


def root_from_config(data: Any) -> str:
  """The raw KG folder the `data` config section names: `data.root` if set (it wins: `data.name`
  only labels the run), else the resolved `data.name`, else ''."""
  if data.root:
    if data.get('name'):
      logging.info('data.root=%s is set: it is read as it is; data.name=%s only labels the run '
                   '(not downloaded, not verified)', data.root, data.name)
    return data.root
  if data.get('name'):
    return resolve(data.name, data.get('cache_dir', ''), data.get('url', ''))
  return ''


def _place_by_hand(spec: Dataset, root: str, lacking: list[str], why: str) -> str:
  where = [f'  {os.path.join(root, f)}' for f in lacking]
  return (f'data.name={spec.name}: {spec.title} is not in {root} and {why}.\n'
          f'Put these {len(lacking)} file(s)/folder(s) there by hand:\n' + '\n'.join(where) + '\n'
          f'(get them from {spec.source}; the folder is set by --config.data.cache_dir or '
          f'${ENV_CACHE}, a mirror by --config.data.url=URL, e.g. file:///path/archive.tar.gz), or '
          'read a folder of your own with --config.data.root=PATH.')


# ============================================================================ verifying
def recorded(spec: Dataset, root: str) -> dict[str, str]:
  """The digests a folder is checked against: `spec.sha256`, then `checksums.json` for the rest."""
  path = os.path.join(root, CHECKSUMS_FILE)
  found: dict[str, str] = {}
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      try:
        found = dict(json.load(f).get('files', {}))
      except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise DatasetError(f'{path}: not a checksums file written by imkga_jax ({e}); delete it to '
                           'record the digests of the files now in the folder') from None
  return {**found, **spec.sha256}


def verify(spec: Dataset, root: str, source: str = '') -> None:
  """Checks every file of `spec` in `root` against its recorded digest; records the unrecorded.

  Raises:
    DatasetError: a file whose digest differs (naming it, both digests and the fix).
  """
  known = recorded(spec, root)
  new: dict[str, str] = {}
  for name in spec.files:
    path = os.path.join(root, name)
    found = text_digest(path)
    if name not in known:
      new[name] = found
    elif found != known[name]:
      where = 'imkga_jax/datasets.py' if name in spec.sha256 else os.path.join(root, CHECKSUMS_FILE)
      fix = ('reinstall the package' if spec.packaged else
             f'delete {path} to download it again (or put the original there), or read your copy '
             f'unverified with --config.data.root={root}')
      raise DatasetError(f'{path}: sha256 {found} differs from the one recorded for '
                         f'data.name={spec.name} ({known[name]}, in {where}): the file was changed '
                         f'or is another version; {fix}')
  if new and not spec.packaged:
    how = source or 'found in the folder (placed by hand or by an earlier version)'
    logging.warning('data.name=%s: recorded the sha256 of %s in %s (%s); later runs check them',
                    spec.name, ', '.join(sorted(new)), os.path.join(root, CHECKSUMS_FILE), how)
    files.write_json(os.path.join(root, CHECKSUMS_FILE), {
        'dataset': spec.name, 'digest': 'sha256 of the bytes with \\r\\n read as \\n',
        'source': how, 'recorded': datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'),
        'files': {**{k: v for k, v in known.items() if k not in spec.sha256}, **new}})


# ============================================================================ downloading
def download(spec: Dataset, root: str, url: str) -> None:
  """Downloads the archive at `url` and extracts the files and folders `root` lacks.

  The archive is written to a temporary file inside `root` (removed afterwards); every extracted
  file is written atomically, so an interrupted download leaves no half file behind. Files already
  in `root` are kept. `resolve` verifies the folder afterwards (and records the digests that
  `spec.sha256` lacks in `checksums.json`).
  """
  os.makedirs(root, exist_ok=True)
  logging.info('data.name=%s: downloading %s into %s', spec.name, url, root)
  fd, archive = tempfile.mkstemp(dir=root, prefix='.download.', suffix='.part')
  try:
    with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
      total = int(r.headers.get('Content-Length') or 0) or None
      with tqdm.tqdm(total=total, unit='B', unit_scale=True, desc=f'download {spec.name}') as bar:
        for chunk in iter(lambda: r.read(_CHUNK), b''):
          out.write(chunk)
          bar.update(len(chunk))
    extract(spec, root, archive, url)
  finally:
    if os.path.exists(archive):
      os.remove(archive)


@contextlib.contextmanager
def _members(archive: str) -> Iterator[list[tuple[str, Callable[[], BinaryIO]]]]:
  """`[(normalised member path, opener)]` of every regular file of a tar or zip archive; the
  openers work inside the `with` block."""
  if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
      yield [(_normal(i.filename), functools.partial(z.open, i)) for i in z.infolist()
             if not i.is_dir()]
  elif tarfile.is_tarfile(archive):
    with tarfile.open(archive, 'r:*') as t:
      yield [(_normal(i.name), functools.partial(t.extractfile, i)) for i in t.getmembers()
             if i.isfile()]
  else:
    raise tarfile.ReadError(f'{archive}: neither a tar nor a zip archive')


def _normal(member: str) -> str:
  member = member.replace('\\', '/')
  while member.startswith('./'):
    member = member[2:]
  return member


def _safe(relative: str) -> bool:
  return bool(relative) and not relative.startswith('/') and '..' not in relative.split('/')


def _plan(spec: Dataset, members: list[tuple[str, Any]], wanted: list[str], where: str
          ) -> dict[str, Any]:
  """`{relative path to write: opener}` for the files and folders `wanted`."""
  plan: dict[str, Any] = {}
  absent = []
  for need in wanted:
    name = need.rstrip('/')
    if need.endswith('/'):                                   # a folder: every file below it
      below = [(f'/{m}'.split(f'/{name}/', 1), o) for m, o in members if f'/{name}/' in f'/{m}']
      if not below:
        absent.append(need)
      top = min((parts[0] for parts, _ in below), key=len, default='')
      unsafe = [parts[1] for parts, _ in below if parts[0] == top and not _safe(parts[1])]
      plan.update({f'{name}/{parts[1]}': o for parts, o in below
                   if parts[0] == top and _safe(parts[1])})
      if unsafe:
        logging.warning('%s: left out %d member(s) of %s/ whose path leaves the folder: %s', where,
                        len(unsafe), name, ', '.join(unsafe[:5]))
      continue
    found = [(m, o) for m, o in members if m == name or m.endswith('/' + name)]
    depth = min((m.count('/') for m, _ in found), default=-1)
    best = [(m, o) for m, o in found if m.count('/') == depth]
    if len(best) > 1:
      raise DatasetError(f'{where}: {len(best)} members could be {name} for data.name={spec.name} '
                         f'({", ".join(m for m, _ in best)}); extract the right one to '
                         f'{name} in the dataset folder by hand')
    if best:
      plan[need] = best[0][1]
    else:
      absent.append(need)
  if absent:
    names = [m for m, _ in members]
    raise DatasetError(f'{where}: the archive holds no {", ".join(absent)} (needed by '
                       f'data.name={spec.name}); its files: {", ".join(names[:12])}'
                       + (' ...' if len(names) > 12 else ''))
  return plan


def extract(spec: Dataset, root: str, archive: str, where: str = '') -> list[str]:
  """Writes the files and folders `root` lacks from `archive` (tar, tar.gz, tgz or zip).

  A file `train.txt` is the member `train.txt` or `<any folder>/train.txt`, the shallowest one (two
  equally deep candidates are an error naming both); a folder `OpenBG-IMG_images` brings every file
  below the shallowest member folder of that name. Members are copied by content to paths built
  here (a member path with `..` is left out), so an archive cannot write outside `root`.

  Returns:
    The relative paths written, sorted.

  Raises:
    DatasetError: a needed file or folder the archive lacks, or an ambiguous member.
  """
  wanted = missing(spec, root)
  if not wanted:
    return []
  with _members(archive) as members:
    plan = _plan(spec, members, wanted, where or archive)
    for relative in tqdm.tqdm(sorted(plan), desc=f'extract {spec.name}', unit='files',
                              disable=len(plan) < 100):
      path = os.path.join(root, relative)
      with plan[relative]() as src:
        files.atomic_write(path, lambda f, s=src: shutil.copyfileobj(s, f, _CHUNK))
      os.chmod(path, 0o644)                                  # mkstemp's 0600 is for the temp file
  return sorted(plan)
