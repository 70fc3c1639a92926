"""Tests of imkga_jax/datasets.py: packaged UMLS/Kinship, the cache, downloads from file:// URLs,
folders filled by hand, verification, and what happens offline."""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

from PIL import Image
import pytest

from configs import default
from configs import structure
from data_prep import prepare
from imkga_jax import config_check
from imkga_jax import datasets
from imkga_jax import readers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
SHARED = os.path.join(ROOT, '..', 'shared', 'datasets')
TINY = {'train.txt': b'a\tr\tb\nb\tr\tc\nc\ts\ta\n', 'valid.txt': b'a\ts\tc\n',
        'test.txt': b'b\ts\ta\n'}


@pytest.fixture
def tiny(monkeypatch):
  """A cached dataset 'tiny' with recorded digests (the WN18RR kind) and 'loose' without (FB15k-237's)."""
  sha = {k: hashlib.sha256(v).hexdigest() for k, v in TINY.items()}
  for spec in (datasets.Dataset('tiny', 'a tiny KG', tuple(TINY), sha256=sha, source='tests'),
               datasets.Dataset('loose', 'a tiny KG, digests unrecorded', tuple(TINY),
                                source='tests')):
    monkeypatch.setitem(datasets.DATASETS, spec.name, spec)
  return sha


def _tar(path, members, mode='w:gz'):
  with tarfile.open(path, mode) as t:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  return f'file://{path}'


def _zip(path, members):
  with zipfile.ZipFile(path, 'w') as z:
    for name, data in members.items():
      z.writestr(name, data)
  return f'file://{path}'


# ------------------------------------------------------------------ packaged datasets
@pytest.mark.parametrize('name,sizes', [('umls', (135, 46, 5216, 652, 661)),
                                        ('kinship', (104, 25, 8544, 1068, 1074))])
def test_packaged_dataset_reads_with_published_statistics(name, sizes):
  root = datasets.resolve(name)
  assert root == os.path.join(ROOT, 'imkga_jax', 'dataset_files', name)
  kg = readers.load_kg(root)
  assert (kg.num_entities, kg.num_relations, len(kg.train), len(kg.valid), len(kg.test)) == sizes


def test_packaged_files_have_the_recorded_sha256_and_equal_the_shared_copies():
  for name in ('umls', 'kinship'):
    spec = datasets.DATASETS[name]
    for f in spec.files:
      path = os.path.join(datasets.PACKAGE_FOLDER, name, f)
      with open(path, 'rb') as fh:
        data = fh.read()
      assert hashlib.sha256(data).hexdigest() == spec.sha256[f], path
      shared = os.path.join(SHARED, name, f)
      if os.path.exists(shared):                         # byte-identical to ../shared (PyKEEN's)
        with open(shared, 'rb') as fh:
          assert fh.read() == data, shared


def test_a_built_wheel_carries_the_packaged_files(tmp_path):
  src = tmp_path / 'src'                                    # a copy: the build writes build/
  src.mkdir()
  for item in ('setup.cfg', 'pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(ROOT, item), src / item)
  for item in ('imkga_jax', 'data_prep'):
    shutil.copytree(os.path.join(ROOT, item), src / item,
                    ignore=shutil.ignore_patterns('__pycache__'))
  proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                         '--no-build-isolation', '-w', str(tmp_path / 'dist'), str(src)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  (wheel,) = (tmp_path / 'dist').glob('imkga_jax-*.whl')
  with zipfile.ZipFile(wheel) as z:
    for name in ('umls', 'kinship'):
      for f, digest in datasets.DATASETS[name].sha256.items():
        data = z.read(f'imkga_jax/dataset_files/{name}/{f}')
        assert hashlib.sha256(data).hexdigest() == digest, (name, f)


def test_a_changed_packaged_file_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, 'PACKAGE_FOLDER', str(tmp_path))
  shutil.copytree(os.path.join(ROOT, 'imkga_jax', 'dataset_files', 'umls'), tmp_path / 'umls')
  with open(tmp_path / 'umls' / 'valid.txt', 'a', encoding='utf-8') as f:
    f.write('x\ty\tz\n')
  with pytest.raises(datasets.DatasetError, match=r'valid\.txt: sha256 .* differs .*reinstall'):
    datasets.resolve('umls')


# ------------------------------------------------------------------ downloads (file:// URLs)
def test_download_from_a_file_url_extracts_verifies_and_is_kept(tmp_path, tiny):
  url = _tar(tmp_path / 'tiny.tar.gz', {f'tiny/{k}': v for k, v in TINY.items()})
  root = datasets.resolve('tiny', cache=str(tmp_path / 'cache'), url=url)
  assert root == str(tmp_path / 'cache' / 'tiny')
  assert sorted(os.listdir(root)) == sorted(TINY)           # no archive, no checksums.json left
  assert readers.load_kg(root).num_entities == 3
  os.remove(tmp_path / 'tiny.tar.gz')                       # second use: no download needed
  assert datasets.resolve('tiny', cache=str(tmp_path / 'cache'), url=url) == root


def test_a_download_that_differs_from_the_recorded_sha256_is_refused(tmp_path, tiny):
  url = _zip(tmp_path / 'bad.zip', {**TINY, 'test.txt': b'b\ts\tc\n'})
  with pytest.raises(datasets.DatasetError, match=r'test\.txt: sha256 .* differs .* recorded'):
    datasets.resolve('tiny', cache=str(tmp_path / 'c'), url=url)


def test_unrecorded_digests_are_recorded_at_first_download_and_checked_after(tmp_path, tiny):
  url = _zip(tmp_path / 'loose.zip', {f'Release/{k}': v for k, v in TINY.items()})
  root = datasets.resolve('loose', cache=str(tmp_path / 'c'), url=url)
  with open(os.path.join(root, datasets.CHECKSUMS_FILE), encoding='utf-8') as f:
    record = json.load(f)
  assert record['source'] == url
  assert record['files'] == {k: hashlib.sha256(v).hexdigest() for k, v in TINY.items()}
  with open(os.path.join(root, 'train.txt'), 'ab') as f:
    f.write(b'c\tr\ta\n')
  with pytest.raises(datasets.DatasetError, match=r'train\.txt: sha256 .*checksums\.json'):
    datasets.resolve('loose', cache=str(tmp_path / 'c'))


def test_windows_line_endings_verify_against_the_unix_digest(tmp_path, tiny):
  crlf = {k: v.replace(b'\n', b'\r\n') for k, v in TINY.items()}
  url = _tar(tmp_path / 'crlf.tar', crlf, mode='w')
  root = datasets.resolve('tiny', cache=str(tmp_path / 'c'), url=url)
  with open(os.path.join(root, 'train.txt'), 'rb') as f:
    assert f.read() == crlf['train.txt']                    # kept as downloaded
  assert datasets.text_digest(os.path.join(root, 'train.txt')) == tiny['train.txt']


def test_archive_without_a_needed_file_or_with_two_candidates(tmp_path, tiny):
  url = _tar(tmp_path / 'short.tgz', {'train.txt': TINY['train.txt']})
  with pytest.raises(datasets.DatasetError, match=r'holds no valid\.txt, test\.txt'):
    datasets.resolve('tiny', cache=str(tmp_path / 'c'), url=url)
  url = _tar(tmp_path / 'two.tgz', {**{f'a/{k}': v for k, v in TINY.items()},
                                    'b/train.txt': TINY['train.txt']})
  with pytest.raises(datasets.DatasetError, match=r'2 members could be train\.txt .*a/train\.txt'):
    datasets.resolve('tiny', cache=str(tmp_path / 'c2'), url=url)


def test_openbg_img_from_a_local_archive_brings_the_image_folder(tmp_path):
  png = io.BytesIO()
  Image.new('RGB', (8, 8), (200, 10, 10)).save(png, format='PNG')
  triples = b'p1\tcolour\tred\np2\tcolour\tred\n'
  members = {'OpenBG/OpenBG-IMG_train.tsv': triples, 'OpenBG/OpenBG-IMG_dev.tsv': triples[:13],
             'OpenBG/OpenBG-IMG_test.tsv': triples[13:],
             'OpenBG/OpenBG-IMG_entity2text.tsv': b'p1\tproduct one\n',
             'OpenBG/OpenBG-IMG_relation2text.tsv': b'colour\tthe colour\n',
             'OpenBG/OpenBG-IMG_images/p1/0.png': png.getvalue(),
             'OpenBG/OpenBG-IMG_images/../../evil.txt': b'x'}
  root = datasets.resolve('openbg_img', cache=str(tmp_path / 'c'),
                          url=_zip(tmp_path / 'openbg.zip', members))
  kg = readers.load_kg(root)
  assert kg.entity_text == {'p1': 'product one'} and list(kg.images) == ['p1']
  assert not os.path.exists(tmp_path / 'evil.txt') and not os.path.exists(tmp_path / 'c' / 'evil.txt')
  assert datasets.DATASETS['openbg_img'].sha256 == {}       # so the digests went to checksums.json
  assert os.path.exists(os.path.join(root, datasets.CHECKSUMS_FILE))


# ------------------------------------------------------------------ offline, by hand
def test_offline_error_names_every_file_and_the_folder(tmp_path, tiny):
  cache = tmp_path / 'c'
  with pytest.raises(datasets.DatasetError) as info:
    datasets.resolve('tiny', cache=str(cache), url=f'file://{tmp_path}/no-network.tar.gz')
  message = str(info.value)
  assert 'downloading file://' in message and 'failed' in message
  for f in TINY:
    assert f'  {cache / "tiny" / f}\n' in message
  assert '--config.data.root=PATH' in message and datasets.ENV_CACHE in message


def test_openbg_img_without_url_says_what_to_put_where(tmp_path):
  with pytest.raises(datasets.DatasetError, match='there is no public download URL') as info:
    datasets.resolve('openbg_img', cache=str(tmp_path))
  for name in ('OpenBG-IMG_train.tsv', 'OpenBG-IMG_dev.tsv', 'OpenBG-IMG_test.tsv',
               'OpenBG-IMG_entity2text.tsv', 'OpenBG-IMG_relation2text.tsv', 'OpenBG-IMG_images/'):
    assert str(tmp_path / 'openbg_img' / name) in str(info.value)


def test_a_folder_filled_by_hand_is_verified_or_recorded(tmp_path, tiny):
  for name in ('tiny', 'loose'):
    os.makedirs(tmp_path / name)
    for f, data in TINY.items():
      (tmp_path / name / f).write_bytes(data)
    assert datasets.resolve(name, cache=str(tmp_path)) == str(tmp_path / name)
  assert not os.path.exists(tmp_path / 'tiny' / datasets.CHECKSUMS_FILE)   # recorded in the code
  with open(tmp_path / 'loose' / datasets.CHECKSUMS_FILE, encoding='utf-8') as f:
    assert 'placed by hand' in json.load(f)['source']
  (tmp_path / 'tiny' / 'valid.txt').write_bytes(b'a\tr\tc\n')
  with pytest.raises(datasets.DatasetError, match=r'valid\.txt: sha256 .*datasets\.py.*delete'):
    datasets.resolve('tiny', cache=str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'WN18RR')),
                    reason='needs ../shared/datasets/WN18RR to build a local WN18RR archive')
def test_wn18rr_recorded_sha256_match_the_standard_split(tmp_path):
  with tarfile.open(tmp_path / 'WN18RR.tar.gz', 'w:gz') as t:
    t.add(os.path.join(SHARED, 'WN18RR'), arcname='WN18RR')
  root = datasets.resolve('wn18rr', cache=str(tmp_path / 'c'),
                          url=f'file://{tmp_path}/WN18RR.tar.gz')
  assert sorted(os.listdir(root)) == ['test.txt', 'train.txt', 'valid.txt']


def test_cache_dir_order(monkeypatch, tmp_path):
  monkeypatch.delenv(datasets.ENV_CACHE, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert datasets.cache_dir() == str(tmp_path / 'xdg' / 'imkga_jax' / 'datasets')
  monkeypatch.setenv(datasets.ENV_CACHE, str(tmp_path / 'env'))
  assert datasets.folder('wn18rr') == str(tmp_path / 'env' / 'wn18rr')
  assert datasets.cache_dir(str(tmp_path / 'key')) == str(tmp_path / 'key')
  assert datasets.folder('umls', str(tmp_path / 'key')).endswith('imkga_jax/dataset_files/umls')


# ------------------------------------------------------------------ the config
def test_root_wins_over_name_and_the_structure_configs_need_no_root(tmp_path, caplog):
  config = structure.get_config('umls')
  assert config.data.name == 'umls' and config.data.root == ''
  assert prepare.raw_dir(config, str(tmp_path)) == datasets.resolve('umls')
  config.data.root = str(tmp_path)
  assert prepare.raw_dir(config, str(tmp_path)) == str(tmp_path)
  assert structure.get_config('').data.name == ''
  with pytest.raises(ValueError, match='data.root and config.data.name are both empty'):
    prepare.raw_dir(structure.get_config(''), str(tmp_path))


def test_config_rules_for_the_new_keys():
  assert config_check.DATASET_NAMES == datasets.NAMES
  config = default.get_config()
  config.data.name, config.data.url = 'fb15k', 'ftp://mirror/x.tgz'
  found = config_check.problems(config)
  assert any(p.startswith("data.name = 'fb15k': must be one of '', 'umls'") for p in found)
  assert any(p.startswith("data.url = 'ftp://mirror/x.tgz'") for p in found)
  config = default.get_config()
  config.data.name, config.data.synthetic = 'umls', True
  assert any('at most one of them' in p for p in config_check.problems(config))
  with pytest.raises(ValueError, match="data.name='nope' is not a known dataset"):
    datasets.resolve('nope')


def test_launch_without_the_files_stops_with_what_to_put_where(tmp_path):
  env = dict(os.environ, IMKGA_DATASETS_DIR=str(tmp_path / 'cache'))
  proc = subprocess.run(
      [sys.executable, 'launch.py', '--config=configs/structure.py:wn18rr', '--mode=prepare',
       f'--workdir={tmp_path / "w"}', f'--config.data.url=file://{tmp_path}/offline.tar.gz'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert 'FATAL data.name=wn18rr: WN18RR' in proc.stderr and 'Traceback' not in proc.stderr
  for f in ('train.txt', 'valid.txt', 'test.txt'):
    assert f'  {tmp_path / "cache" / "wn18rr" / f}\n' in proc.stderr


def test_where_the_files_come_from_does_not_change_the_fingerprints():
  base = prepare.fingerprints(structure.get_config('umls'), [])
  moved = structure.get_config('umls')
  moved.data.name, moved.data.cache_dir, moved.data.url = '', '/elsewhere', 'file:///x.tgz'
  moved.features.vgg_weights = ''                       # the older spelling of 'random'
  assert prepare.fingerprints(moved, []) == base
  moved.features.vgg_weights = '/w/vgg16.weights.h5'
  assert prepare.fingerprints(moved, [])['features'] != base['features']
  moved.data.unknown_entities = 'keep'                  # a data key that changes what is read
  assert prepare.fingerprints(moved, [])['kg'] != base['kg']
