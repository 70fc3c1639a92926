"""Tests of imkga_jax/files.py: atomic writes, fingerprints, open_regular, the workdir lock."""
import doctest
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from imkga_jax import files

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'sub' / 'x.json')
  files.write_json(path, {'b': 1, 'a': [1, 2]})
  files.write_json(path, {'c': 'é'})
  with open(path, encoding='utf-8') as f:
    assert json.load(f) == {'c': 'é'}
  files.atomic_save_npz(str(tmp_path / 'sub' / 't.npz'), a=np.arange(3))
  with np.load(str(tmp_path / 'sub' / 't.npz')) as z:
    np.testing.assert_array_equal(z['a'], np.arange(3))
  assert sorted(os.listdir(tmp_path / 'sub')) == ['t.npz', 'x.json']


def test_failed_write_keeps_the_old_file(tmp_path):
  path = str(tmp_path / 'x.txt')
  files.atomic_write_text(path, 'old')

  def explode(f):
    f.write(b'half of the new')
    raise RuntimeError('disk on fire')
  with pytest.raises(RuntimeError, match='disk on fire'):
    files.atomic_write(path, explode)
  assert open(path).read() == 'old' and os.listdir(tmp_path) == ['x.txt']


def test_fingerprints(tmp_path):
  assert files.fingerprint({'a': 1, 'b': [2]}) == files.fingerprint({'b': [2], 'a': 1})
  assert files.fingerprint({'a': 1}) != files.fingerprint({'a': 2})
  p = tmp_path / 'f.txt'
  p.write_text('abc')
  one = files.fingerprint_files([str(p)])
  assert one[0]['size'] == 3 and len(one[0]['sha256']) == 64
  st = os.stat(p)
  p.write_text('abd')                                    # same size, same mtime: only the hash sees it
  os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
  two = files.fingerprint_files([str(p)])
  assert two[0]['size'] == one[0]['size'] and two[0]['mtime_ns'] == one[0]['mtime_ns']
  assert two[0]['sha256'] != one[0]['sha256']
  assert 'sha256' not in files.fingerprint_files([str(p)], content=False)[0]


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path):
  fifo = str(tmp_path / 'x.jpg')
  os.mkfifo(fifo)
  code = textwrap.dedent(f'''
      import sys; sys.path.insert(0, {ROOT!r})
      from imkga_jax import files
      try:
        files.open_regular({fifo!r})
      except files.NotRegularFileError as e:
        print('REFUSED', e)
  ''')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
  assert 'REFUSED' in proc.stdout and 'FIFO' in proc.stdout and fifo in proc.stdout, proc.stderr
  with pytest.raises(files.NotRegularFileError, match='folder'):
    files.open_regular(str(tmp_path))
  (tmp_path / 'ok.txt').write_text('fine')
  with files.open_regular(str(tmp_path / 'ok.txt')) as f:
    assert f.read() == b'fine'


HOLD = textwrap.dedent('''
    import sys; sys.path.insert(0, {root!r})
    from imkga_jax import files
    with files.workdir_lock({workdir!r}, 'train'):
      print('LOCKED', flush=True)
      sys.stdin.readline()
''')


def test_workdir_lock_names_the_holder_and_is_released(tmp_path):
  workdir = str(tmp_path / 'w')
  holder = subprocess.Popen([sys.executable, '-c', HOLD.format(root=ROOT, workdir=workdir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'LOCKED'
    with pytest.raises(files.WorkdirLockedError, match=rf'in use by process {holder.pid} \(train'):
      with files.workdir_lock(workdir, 'prepare'):
        pass
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)
  with files.workdir_lock(workdir, 'prepare') as lock:        # released on the holder's exit
    with files.workdir_lock(workdir, 'train'):                # re-entrant in one process
      assert open(lock).read().split() == [str(os.getpid()), 'prepare']
  with pytest.raises(ValueError, match='boom'):
    with files.workdir_lock(workdir, 'train'):
      raise ValueError('boom')
  with files.workdir_lock(workdir, 'train'):                  # released on the exception
    pass


def test_workdir_that_is_a_file(tmp_path):
  (tmp_path / 'w').write_text('not a folder')
  with pytest.raises(NotADirectoryError, match=r"--workdir .*w' is a file, not a folder"):
    files.workdir_lock(str(tmp_path / 'w'), 'train').__enter__()


def test_docstring_examples():
  assert doctest.testmod(files).failed == 0
