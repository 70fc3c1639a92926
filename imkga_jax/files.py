"""File-system helpers every stage shares: atomic writes, fingerprints, the workdir lock.

* `atomic_write` (and `atomic_write_text`, `write_json`, `atomic_save_npz` on top of it) writes to a
  temporary file in the target's own folder, fsyncs it and `os.replace`s it over the target, so a
  reader sees the old file or the new one, never half of one, even after a crash.
* `fingerprint` is a stable sha256 of a JSON-able value; `fingerprint_files` describes input files
  (size, mtime and, where asked, a content hash) so a stage re-runs when its inputs change.
* `workdir_lock` is an advisory `fcntl.flock` on `WORKDIR/.imkga.lock` holding the owner's pid:
  a second prepare/train on the same workdir stops at once, naming that pid. The kernel releases
  the lock when its process exits, however it exits.

numpy and the standard library only (DESIGN.md §2).

Example:
  >>> with workdir_lock('/tmp/w', 'train'):                      # doctest: +SKIP
  ...   write_json('/tmp/w/state.json', {'step': 3})
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import threading
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

LOCK_FILE = '.imkga.lock'
_CHUNK = 1 << 20


# ============================================================================ atomic writes
def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Runs `write(f)` on a temporary binary file beside `path`, then fsyncs and renames it to `path`.

  The temporary file is removed when `write` raises; `path` is then untouched.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
  """Makes the rename itself durable (best effort: some file systems refuse fsync on folders)."""
  fd = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(fd)
  except OSError as e:
    if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
      raise
  finally:
    os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def write_json(path: str, value: Any) -> None:
  """`atomic_write_text` of `value` as indented JSON with sorted keys and a final newline."""
  atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
  """`np.savez(path, **arrays)` atomically (the name is kept as given: no `.npz` is appended)."""
  atomic_write(path, lambda f: np.savez(f, **arrays))


# ============================================================================ fingerprints
def fingerprint(value: Any) -> str:
  """Stable sha256 (hex) of a JSON-able value: key order and whitespace do not matter.

  >>> fingerprint({'a': 1, 'b': [2, 3]}) == fingerprint({'b': [2, 3], 'a': 1})
  True
  """
  text = json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=False)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def file_digest(path: str) -> str:
  """sha256 (hex) of a file's bytes, read in chunks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def fingerprint_files(paths: Iterable[str], content: bool = True) -> list[dict[str, Any]]:
  """`[{path, size, mtime_ns[, sha256]}]` per file, in the order given (stat follows symlinks).

  Args:
    paths: files to describe.
    content: also hash each file's bytes. Size and mtime catch an edited or replaced file in
      practice; the hash also catches an edit that keeps both (copied with `cp -p`, same length).
      Use `content=False` for many large files (image folders), where hashing costs more than the
      stage it guards.
  """
  out = []
  for path in paths:
    st = os.stat(path)
    entry = {'path': os.path.abspath(path), 'size': st.st_size, 'mtime_ns': st.st_mtime_ns}
    if content:
      entry['sha256'] = file_digest(path)
    out.append(entry)
  return out


# ============================================================================ reading
class NotRegularFileError(OSError):
  """A path that should be a regular file is a FIFO, socket, device or folder."""


def open_regular(path: str) -> BinaryIO:
  """Opens `path` for binary reading if it is a regular file (symlinks followed).

  Opened with O_NONBLOCK, so a FIFO does not block the open, then checked with fstat on the open
  descriptor (no window between the check and the read); anything but a regular file is closed and
  refused.

  Raises:
    NotRegularFileError: `path` is not a regular file (the message says what it is).
    OSError: it cannot be opened.
  """
  fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      raise NotRegularFileError(errno.EINVAL, f'not a regular file ({file_kind(mode)})', path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, 'rb')
  except BaseException:
    os.close(fd)
    raise


def file_kind(mode: int) -> str:
  """'folder', 'FIFO', 'socket', 'character device', 'block device' or 'regular file'."""
  for test, name in ((stat.S_ISDIR, 'folder'), (stat.S_ISFIFO, 'FIFO'), (stat.S_ISSOCK, 'socket'),
                     (stat.S_ISCHR, 'character device'), (stat.S_ISBLK, 'block device')):
    if test(mode):
      return name
  return 'regular file' if stat.S_ISREG(mode) else 'special file'


# ============================================================================ workdir
def ensure_workdir(workdir: str, create: bool = True) -> str:
  """Creates `workdir` if needed (with `create`); a path that is not a folder is an error naming it."""
  if not workdir:
    raise ValueError('--workdir is empty: pass --workdir=DIR (a folder; created if missing)')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir {workdir!r} is a file, not a folder; pass the path of a '
                             'folder (it is created if missing)')
  if create:
    os.makedirs(workdir, exist_ok=True)
  return workdir


class WorkdirLockedError(RuntimeError):
  """Another process holds the workdir lock; the message names its pid and the lock file."""


_held: dict[str, list] = {}        # realpath of a locked workdir -> [fd, depth]
_held_guard = threading.Lock()


@contextlib.contextmanager
def workdir_lock(workdir: str, what: str) -> Iterator[str]:
  """Holds the advisory lock of `workdir` for the duration of the `with` block.

  Re-entrant within one process (prepare inside a locked launch, for instance). The lock is a
  `fcntl.flock` on `WORKDIR/.imkga.lock`, which holds `"<pid> <what>"` while locked; it is released
  when the block exits (also on an exception) and by the kernel when the process dies.

  Args:
    workdir: the folder to lock (created if missing; a file is an error).
    what: the holder's activity for the message another process gets ('prepare', 'train').

  Yields:
    The lock file's path.

  Raises:
    WorkdirLockedError: another process holds the lock (its pid is in the message).
  """
  ensure_workdir(workdir)
  key = os.path.realpath(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  with _held_guard:
    if key in _held:
      _held[key][1] += 1
    else:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode('utf-8', 'replace').strip() or 'unknown'
        os.close(fd)
        pid, _, activity = holder.partition(' ')
        raise WorkdirLockedError(
            f'{workdir} is in use by process {pid} ({activity or "unknown activity"}; lock file '
            f'{path}). Wait for it to finish or stop it, or use another --workdir; two writers '
            'would overwrite each other\'s checkpoints and prepared files.') from None
      os.ftruncate(fd, 0)
      os.pwrite(fd, f'{os.getpid()} {what}\n'.encode(), 0)
      _held[key] = [fd, 1]
  try:
    yield path
  finally:
    with _held_guard:
      _held[key][1] -= 1
      if _held[key][1] == 0:
        fd = _held.pop(key)[0]
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
