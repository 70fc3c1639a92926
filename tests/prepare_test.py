"""Tests of data_prep/prepare.py: input fingerprints, the workdir lock, errors that name their cause."""
import json
import logging
import os
import subprocess
import sys

import pytest

from configs import default
from data_prep import prepare
from data_prep import trajectories
from imkga_jax import config_check
from imkga_jax import files
from tests import files_test

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def kg_folder(root, num_train=400):
  """`num_train` distinct train triples over 60 entities; valid/test inside train."""
  os.makedirs(root, exist_ok=True)
  rows = [(f'e{i % 60}', f'r{i // 60}', f'e{(7 * i + 3) % 60}') for i in range(num_train)]
  with open(os.path.join(root, 'train.txt'), 'w') as f:
    f.writelines('\t'.join(r) + '\n' for r in rows)
  for split in ('valid', 'test'):
    with open(os.path.join(root, f'{split}.txt'), 'w') as f:
      f.write('e1\tr0\te2\n')
  return str(root)


def config_for(root):
  config = default.get_config()
  config.data.root, config.data.layout = root, 'triples'
  config.features.enabled = False
  return config


@pytest.fixture
def stub_trajectories(monkeypatch):
  """The trajectories stage as a counter (its own tests are in trajectories_test.py)."""
  calls = []

  def build(kg, config, out):
    calls.append(len(kg.train))
    return {'trajectories': len(kg.train)}
  monkeypatch.setattr(trajectories, 'build_trajectories', build)
  return calls


def read_stats(workdir):
  with open(os.path.join(workdir, 'prepared', 'stats.json')) as f:
    return json.load(f)


def test_editing_train_reruns_kg_and_later_stages(tmp_path, stub_trajectories, caplog):
  root = kg_folder(tmp_path / 'raw')
  workdir = str(tmp_path / 'w')
  config = config_for(root)
  prepare.prepare(config, workdir)
  assert read_stats(workdir)['train'] == 400 and stub_trajectories == [400]
  with caplog.at_level(logging.INFO):
    prepare.prepare(config, workdir)                             # nothing changed: all skipped
  assert stub_trajectories == [400] and 'stage kg is up to date' in caplog.text
  kg_folder(tmp_path / 'raw', num_train=200)                     # train.txt cut to 200 lines
  prepare.prepare(config, workdir)
  assert read_stats(workdir)['train'] == 200 and stub_trajectories == [400, 200]
  # Same size and mtime, other bytes: the content hash sees it.
  path = os.path.join(root, 'train.txt')
  data, st = open(path, 'rb').read(), os.stat(path)
  with open(path, 'wb') as f:
    f.write(data.replace(b'e1\tr1', b'e2\tr1', 1))
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
  prepare.prepare(config, workdir)
  assert stub_trajectories == [400, 200, 200]


def test_duplicates_reach_stats_json(tmp_path, stub_trajectories):
  root = kg_folder(tmp_path / 'raw', num_train=100)
  with open(os.path.join(root, 'train.txt'), 'a') as f:
    f.write('e0\tr0\te3\n')                                     # the first train triple again
  with open(os.path.join(root, 'test.txt'), 'a') as f:
    f.write('e0\tr0\te3\n')                                     # a train triple in test
  prepare.prepare(config_for(root), str(tmp_path / 'w'))
  stats = read_stats(str(tmp_path / 'w'))
  assert stats['train_duplicates'] == 1 and stats['test_in_train'] == 1 and stats['train'] == 101
  config = config_for(root)
  config.data.duplicates = 'drop'
  prepare.prepare(config, str(tmp_path / 'w'))
  stats = read_stats(str(tmp_path / 'w'))
  assert stats['train'] == 100 and stats['test'] == 1 and stats['duplicates_dropped'] == 2


def test_errors_name_their_cause(tmp_path, stub_trajectories):
  root = kg_folder(tmp_path / 'raw')
  with pytest.raises(FileNotFoundError, match=r"data.root .*nowhere' does not exist"):
    prepare.prepare(config_for(str(tmp_path / 'nowhere')), str(tmp_path / 'w1'))
  (tmp_path / 'afile').write_text('x')
  with pytest.raises(NotADirectoryError, match="afile' is a file, not a folder"):
    prepare.prepare(config_for(root), str(tmp_path / 'afile'))
  config = config_for(root)
  config.rules.max_length = 7
  with pytest.raises(config_check.ConfigError, match='rules.max_length = 7'):
    prepare.prepare(config, str(tmp_path / 'w2'))
  assert not os.path.exists(tmp_path / 'w2')
  assert stub_trajectories == []


def test_second_writer_stops_at_once_naming_the_holder(tmp_path, stub_trajectories):
  workdir = str(tmp_path / 'w')
  holder = subprocess.Popen(
      [sys.executable, '-c', files_test.HOLD.format(root=ROOT, workdir=workdir)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'LOCKED'
    with pytest.raises(files.WorkdirLockedError, match=f'in use by process {holder.pid}'):
      prepare.prepare(config_for(kg_folder(tmp_path / 'raw')), workdir)
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)
  assert stub_trajectories == [] and not os.path.exists(os.path.join(workdir, 'prepared'))
