"""Fault probe (issue 22): every hostile or careless input end to end, one row each, on a small KG.

Builds a 400-triple subset of UMLS in both layouts (a triple folder, and the OpenBG-IMG layout with
entity texts and a few rendered product images), then runs each case through the library entry
points a user reaches through `launch.py` (prepare, train, evaluation restore, weight loading, and
`launch.py` itself for the command-line cases) and prints a table:

  case | outcome | error names file/key | anything lost

"error names file/key" is yes when the error (or the logged, counted decision) names the file,
the state-dict key or the config key it is about; "anything lost" is yes when data was silently
changed or destroyed (checkpoints overwritten, a stale prepared KG reused, foreign bytes read).

Usage:
  python benchmarks/faults.py --out=/tmp/faults [--umls=UMLS_FOLDER] [--only=SUBSTRING]

(`--umls` defaults to the copy shipped in the package, `imkga_jax/dataset_files/umls`.)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from PIL import Image  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import structure  # pylint: disable=g-import-not-at-top,wrong-import-position
from data_prep import prepare  # pylint: disable=g-import-not-at-top,wrong-import-position
from data_prep import vgg16_weights  # pylint: disable=g-import-not-at-top,wrong-import-position
from imkga_jax import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from imkga_jax import kg as kg_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from imkga_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests import vgg16_weights_test  # pylint: disable=g-import-not-at-top,wrong-import-position

ROWS: list[tuple[str, str, str, str]] = []
TINY = {'model.emb_dim': 32, 'model.num_layers': 1, 'model.num_heads': 2, 'model.mlp_dim': 64,
        'train.batch_size': 16, 'train.num_steps': 6, 'train.checkpoint_every': 3,
        'train.log_every': 3, 'train.shuffle_buffer': 64, 'optim.warmup_steps': 2,
        'trajectories.num_shards': 2, 'rules.paths_per_triple': 2, 'decode.beam_size': 8,
        'decode.batch_size': 8, 'decode.max_queries': 6}


# ============================================================================ the KG
def write_rows(path: str, rows, prefix: bytes = b'') -> None:
  with open(path, 'wb') as f:
    f.write(prefix + ''.join('\t'.join(r) + '\n' for r in rows).encode('utf-8'))


def umls_subset(umls: str, n: int = 400) -> dict[str, list[tuple[str, str, str]]]:
  def read(name):
    with open(os.path.join(umls, name), encoding='utf-8') as f:
      return [tuple(line.split()) for line in f if line.strip()]
  train_rows = read('train.txt')[:n]
  names = {x for h, r, t in train_rows for x in (h, r, t)}
  inside = lambda rows: [r for r in rows if set(r) <= names][:40]
  return {'train': train_rows, 'valid': inside(read('valid.txt')), 'test': inside(read('test.txt'))}


def triple_folder(path: str, splits) -> str:
  os.makedirs(path, exist_ok=True)
  for split, rows in splits.items():
    write_rows(os.path.join(path, f'{split}.txt'), rows)
  return path


def openbg_folder(path: str, splits, image_entities: int = 6) -> str:
  os.makedirs(path, exist_ok=True)
  for split, name in (('train', 'train'), ('valid', 'dev'), ('test', 'test')):
    write_rows(os.path.join(path, f'OpenBG-IMG_{name}.tsv'), splits[split])
  entities = sorted({x for h, _, t in splits['train'] for x in (h, t)})
  write_rows(os.path.join(path, 'OpenBG-IMG_entity2text.tsv'),
             [(e, e.replace('_', ' ')) for e in entities])
  for i, name in enumerate(entities[:image_entities]):
    folder = os.path.join(path, 'OpenBG-IMG_images', name)
    os.makedirs(folder, exist_ok=True)
    Image.new('RGB', (64, 64), (40 * i % 256, 120, 200)).save(os.path.join(folder, 'main.png'))
  return path


def config_for(root: str, layout: str, features: bool = False, **overrides):
  config = structure.get_config('umls')
  config.data.root, config.data.layout = root, layout
  config.features.enabled = features
  config.features.vgg_layer, config.features.vgg_image_size = 'gap', 32
  config.features.ae_steps, config.features.ae_segments = 20, 8
  for key, value in {**TINY, **overrides}.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


# ============================================================================ running a case
class Capture(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.records: list[str] = []

  def emit(self, record):
    self.records.append(record.getMessage())


def case(name: str):
  def wrap(fn: Callable[[], tuple[str, bool | None, bool]]):
    def run():
      handler = Capture()
      logging.getLogger().addHandler(handler)
      start = time.time()
      try:
        with contextlib.redirect_stderr(io.StringIO()):
          outcome, named, lost = fn(handler)
      except Exception as e:  # pylint: disable=broad-except  (a row per crash, not a dead probe)
        outcome, named, lost = f'UNEXPECTED {type(e).__name__}: {str(e)[:160]}', False, True
        traceback.print_exc()
      finally:
        logging.getLogger().removeHandler(handler)
      yes = lambda b: '—' if b is None else ('yes' if b else 'no')
      outcome = outcome if len(outcome) <= 200 else outcome[:197] + '...'
      ROWS.append((name, f'{outcome} ({time.time() - start:.0f} s)', yes(named), yes(lost)))
      print(f'| {" | ".join(ROWS[-1])} |', flush=True)
    run.case_name = name
    return run
  return wrap


def expect_error(fn: Callable[[], Any], *needles: str) -> tuple[str, bool]:
  """Runs `fn`, expecting an exception whose message contains every needle."""
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    text = f'{type(e).__name__}: {e}'
    return f'error: {" ".join(text.split())}', all(n in str(e) for n in needles)
  return 'no error', False


def launch(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.run([sys.executable, 'launch.py', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


def listing(path: str) -> list[str]:
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


# ============================================================================ the cases
def build_cases(out: str, splits) -> list[Callable[[], None]]:
  tri = lambda name: triple_folder(os.path.join(out, 'raw', name), splits)
  obg = lambda name: openbg_folder(os.path.join(out, 'raw', name), splits)
  work = lambda name: os.path.join(out, 'work', name)
  cases = []
  add = lambda fn: cases.append(fn) or fn

  # ---------------------------------------------------------------- 1. .pth memory safety
  for label, record in (('offset past its storage', ('0', 10 ** 9, (4,), (1,))),
                        ('stride past its storage', ('0', 0, (64, 64), (1 << 20, 1))),
                        ('overflowing stride', ('0', 0, (2, 2), (1 << 62, 1 << 62))),
                        ('zero stride over a huge size', ('0', 0, (1 << 20, 1 << 20), (0, 0)))):
    @add
    @case(f'.pth: {label}')
    def _(log, record=record, label=label):
      path = os.path.join(out, 'weights', label.replace(' ', '_') + '.pth')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      vgg16_weights_test.write_records(path, {'features.0.weight': record})
      outcome, named = expect_error(lambda: vgg16_weights.load_weights(path), path,
                                    "'features.0.weight'")
      return outcome, named, False

  # ---------------------------------------------------------------- 2. stale data
  for layout, make in (('triples', tri), ('openbg', obg)):
    @add
    @case(f'[{layout}] train cut from 400 to 200 lines after prepare')
    def _(log, layout=layout, make=make):
      root = make(f'cut_{layout}')
      workdir = work(f'cut_{layout}')
      # 'skip': the cut leaves some valid/test entities without a train triple.
      config = config_for(root, layout, **{'data.unknown_entities': 'skip'})
      prepare.prepare(config, workdir)
      train_file = os.path.join(root, 'train.txt' if layout == 'triples' else 'OpenBG-IMG_train.tsv')
      write_rows(train_file, splits['train'][:200])
      mark = len(log.records)
      stats = prepare.prepare(config, workdir)
      reran = [m.split()[-1] for m in log.records[mark:] if m.startswith('prepare: running stage')]
      return (f"stages re-run {reran}: train {stats['train']} triples, valid {stats['valid']} "
              f"(unseen-entity triples skipped, counted)", None, stats['train'] != 200)

  # ---------------------------------------------------------------- 3. checkpoints bound to data
  base = work('trained')
  base_root = tri('trained')

  @add
  @case('train once (the checkpoints the next cases use)')
  def _(log):
    config = config_for(base_root, 'triples')
    prepare.prepare(config, base)
    train.train_and_evaluate(config, base)
    return f'checkpoints {listing(checkpoints.directory(base))}', None, False

  def copy(name: str) -> str:
    target = work(name)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    return target

  for label, rename in (('every entity renamed, same counts', lambda e: 'x_' + e),
                        ('another vocabulary size', None)):
    @add
    @case(f'resume after re-prepare: {label}')
    def _(log, label=label, rename=rename):
      workdir = copy('vocab_' + label.split()[0])
      renamed = {s: [(rename(h), r, rename(t)) if rename else (h, r, t) for h, r, t in rows]
                 for s, rows in splits.items()}
      if rename is None:
        renamed['train'] = renamed['train'] + [('newcomer', splits['train'][0][1], 'other_one')]
      root = triple_folder(os.path.join(out, 'raw', 'vocab_' + label.split()[0]), renamed)
      config = config_for(root, 'triples', **{'train.num_steps': 9})
      prepare.prepare(config, workdir)
      before = listing(checkpoints.directory(workdir))
      outcome, named = expect_error(lambda: train.train_and_evaluate(config, workdir),
                                    'checkpoint', 'first difference')
      eval_outcome, eval_named = expect_error(
          lambda: checkpoints.restore_params(config, workdir, kg_lib.KnowledgeGraph.load(
              os.path.join(workdir, 'prepared'))), 'first difference')
      said = outcome[outcome.find('entities '):outcome.find('. Its')] if named else outcome
      return (f'resume {"and evaluation " if eval_named else ""}refused: {said}', named and eval_named,
              listing(checkpoints.directory(workdir)) != before)

  # ---------------------------------------------------------------- 4. one writer per workdir
  @add
  @case('two trainings on one workdir')
  def _(log):
    workdir = copy('two_writers')
    shutil.rmtree(checkpoints.directory(workdir))
    os.remove(os.path.join(workdir, checkpoints.TRAIN_CONFIG_FILE))
    code = (f'import sys; sys.path.insert(0, {ROOT!r}); from benchmarks import faults; '
            f'from imkga_jax import train; c = faults.config_for({base_root!r}, "triples", '
            f'**{{"train.num_steps": 60, "train.checkpoint_every": 20}}); '
            f'train.train_and_evaluate(c, {workdir!r})')
    first = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    lock = os.path.join(workdir, '.imkga.lock')
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(lock) and open(lock).read().strip()):
      time.sleep(0.2)
    outcome, named = expect_error(
        lambda: train.train_and_evaluate(config_for(base_root, 'triples'), workdir),
        f'process {first.pid}', lock)
    first.wait(timeout=900)
    return (f'second: {outcome[:120]}; first finished rc {first.returncode}', named,
            first.returncode != 0 or listing(checkpoints.directory(workdir)) != ['20', '40', '60'])

  # ---------------------------------------------------------------- 5. images
  def image_kg(name: str) -> str:
    root = obg(name)
    images = os.path.join(root, 'OpenBG-IMG_images')
    first, second, third = sorted(os.listdir(images))[:3]
    os.mkfifo(os.path.join(images, first, 'a_fifo.jpg'))                 # before main.png
    Image.new('L', (10000, 10000), 128).save(os.path.join(images, second, 'a_huge.jpg'),
                                             quality=50)                 # 100 megapixels
    with open(os.path.join(images, third, 'a_bad.jpg'), 'wb') as f:
      f.write(b'\xff\xd8\xff truncated')
    return root

  @add
  @case('[openbg] FIFO x.jpg, 100-MP JPEG, bad first image (features on)')
  def _(log):
    root = image_kg('images')
    workdir = work('images')
    stats = prepare.prepare(config_for(root, 'openbg', features=True), workdir)
    keys = ('images_not_regular', 'images_over_pixel_limit', 'images_fallback',
            'images_unreadable', 'image_files_unreadable')
    logged = any('a_fifo.jpg' in m for m in log.records) and any(
        'a_huge.jpg' in m for m in log.records) and any('a_bad.jpg' in m for m in log.records)
    return (', '.join(f'{k}={stats.get(k)}' for k in keys), logged,
            stats.get('images_unreadable') != 0)

  @add
  @case('[openbg] image symlink leaving data.root (default error, then skip)')
  def _(log):
    root = obg('links')
    secret = os.path.join(out, 'secret.png')
    Image.new('RGB', (8, 8)).save(secret)
    entity = sorted(os.listdir(os.path.join(root, 'OpenBG-IMG_images')))[0]
    link = os.path.join(root, 'OpenBG-IMG_images', entity, 'b.png')
    os.symlink(secret, link)
    outcome, named = expect_error(lambda: prepare.prepare(config_for(root, 'openbg'), work('links')),
                                  link, 'outside_links')
    stats = prepare.prepare(config_for(root, 'openbg', **{'data.outside_links': 'skip'}),
                            work('links'))
    return (f'{outcome[:90]}; with skip: images_outside_root_skipped='
            f'{stats.get("images_outside_root_skipped")}', named, False)

  # ---------------------------------------------------------------- 6. corrupt newest checkpoint
  for how in ('truncated', 'garbled JSON'):
    @add
    @case(f'newest checkpoint {how}')
    def _(log, how=how):
      workdir = copy('corrupt_' + how.split()[0])
      # The parameters selected on valid are kept apart (checkpoints_best/) and would be restored
      # intact; without them evaluation must fall back through the training steps, probed here.
      shutil.rmtree(os.path.join(workdir, checkpoints.BEST_DIR), ignore_errors=True)
      newest = os.path.join(checkpoints.directory(workdir), '6')
      for folder, _, names in os.walk(newest):
        for name in names:
          path = os.path.join(folder, name)
          if how == 'truncated':
            with open(path, 'r+b') as f:
              f.truncate(os.path.getsize(path) // 2)
          elif name == '_METADATA':
            with open(path, 'w') as f:
              f.write('{"tree_metadata": [')
      config = config_for(base_root, 'triples')
      kg = kg_lib.KnowledgeGraph.load(os.path.join(workdir, 'prepared'))
      _, _, step = checkpoints.restore_params(config, workdir, kg)
      train.train_and_evaluate(config, workdir)
      named = any(newest in m for m in log.records)
      return (f'evaluation used step {step}; training moved it to '
              f'{checkpoints.CORRUPT_DIR}/{listing(os.path.join(workdir, checkpoints.CORRUPT_DIR))}'
              f' and re-made {listing(checkpoints.directory(workdir))}', named, step != 3)

  # ---------------------------------------------------------------- 7. encodings
  for layout, make in (('triples', tri), ('openbg', obg)):
    @add
    @case(f'[{layout}] UTF-8 BOM at the start of every file')
    def _(log, layout=layout, make=make):
      root = make(f'bom_{layout}')
      for name in os.listdir(root):
        if name.endswith(('.txt', '.tsv')):
          path = os.path.join(root, name)
          data = open(path, 'rb').read()
          with open(path, 'wb') as f:
            f.write(b'\xef\xbb\xbf' + data)
      prepare.prepare(config_for(root, layout), work(f'bom_{layout}'))
      kg = kg_lib.KnowledgeGraph.load(os.path.join(work(f'bom_{layout}'), 'prepared'))
      bom = [e for e in kg.entities if '\ufeff' in e]
      texts = sum('\ufeff' in k for k in kg.entity_text)
      return (f'{kg.num_entities} entities, {len(bom)} with a BOM, {texts} texts keyed with one',
              None, bool(bom or texts))

    @add
    @case(f'[{layout}] Latin-1 byte in a split file')
    def _(log, layout=layout, make=make):
      root = make(f'latin1_{layout}')
      name = 'valid.txt' if layout == 'triples' else 'OpenBG-IMG_dev.tsv'
      with open(os.path.join(root, name), 'ab') as f:
        f.write('caf\xe9\tisa\tcell\n'.encode('latin-1'))
      outcome, named = expect_error(
          lambda: prepare.prepare(config_for(root, layout), work(f'latin1_{layout}')),
          f'{name}:{len(splits["valid"]) + 1}: not UTF-8', 'byte offset')
      return outcome, named, False

  # ---------------------------------------------------------------- 8. a failed run and its fix
  @add
  @case('--config.model.variant=foo, then the corrected rerun')
  def _(log):
    workdir = copy('fix')
    shutil.rmtree(checkpoints.directory(workdir))
    outcome, named = expect_error(
        lambda: train.train_and_evaluate(config_for(base_root, 'triples', **{
            'model.variant': 'foo'}), workdir), 'model.variant')
    metrics = train.train_and_evaluate(config_for(base_root, 'triples'), workdir)
    return f'{outcome[:90]}; rerun trained, loss {metrics["loss"]:.3f}', named, False

  # ---------------------------------------------------------------- 9. config values, weight files
  bad_values = (('train.batch_size', '0'), ('train.batch_size', '-4'), ('decode.beam_size', '0'),
                ('decode.beam_size', '-3'), ('decode.batch_size', '0'),
                ('train.checkpoint_every', '0'), ('model.widht', '3'))
  for key, value in bad_values:
    @add
    @case(f'launch.py --config.{key}={value}')
    def _(log, key=key, value=value):
      start = time.time()
      proc = launch('--config=configs/structure.py:umls', f'--workdir={work("cli")}',
                    f'--config.data.root={base_root}', f'--config.{key}={value}')
      message = [l for l in proc.stderr.splitlines() if key in l]
      return (f'rc {proc.returncode} after {time.time() - start:.1f} s: '
              f'{(message[-1] if message else proc.stderr[-120:]).strip()[:120]}',
              bool(message) and 'Traceback' not in proc.stderr, False)

  for suffix in ('.h5', '.safetensors', '.pth'):
    @add
    @case(f'text file named vgg16{suffix}')
    def _(log, suffix=suffix):
      path = os.path.join(out, 'weights', f'text{suffix}')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        f.write('not weights\n')
      outcome, named = expect_error(lambda: vgg16_weights.load_weights(path), path)
      return outcome, named, False

  # ---------------------------------------------------------------- 10. silent acceptance
  for layout, make in (('triples', tri), ('openbg', obg)):
    @add
    @case(f'[{layout}] duplicate train triple, train triple copied into test')
    def _(log, layout=layout, make=make):
      root = make(f'dup_{layout}')
      names = ('train.txt', 'test.txt') if layout == 'triples' else (
          'OpenBG-IMG_train.tsv', 'OpenBG-IMG_test.tsv')
      for name in names:
        with open(os.path.join(root, name), 'a') as f:
          f.write('\t'.join(splits['train'][0]) + '\n')
      stats = prepare.prepare(config_for(root, layout), work(f'dup_{layout}'))
      with open(os.path.join(work(f'dup_{layout}'), 'prepared', 'stats.json')) as f:
        saved = json.load(f)
      return (f"stats.json: train_duplicates={saved['train_duplicates']}, "
              f"test_in_train={saved['test_in_train']} (kept: data.duplicates=keep)",
              any(names[0] in m for m in log.records), False)

    @add
    @case(f'[{layout}] missing data root')
    def _(log, layout=layout):
      outcome, named = expect_error(
          lambda: prepare.prepare(config_for(os.path.join(out, 'nowhere'), layout), work('nowhere')),
          'nowhere', 'does not exist')
      return outcome, named, False

  @add
  @case('workdir that is a file (prepare, train, eval)')
  def _(log):
    path = os.path.join(out, 'a_file')
    with open(path, 'w') as f:
      f.write('x')
    config = config_for(base_root, 'triples')
    results = [expect_error(fn, path, 'is a file') for fn in (
        lambda: prepare.prepare(config, path), lambda: train.train_and_evaluate(config, path),
        lambda: checkpoints.latest_step(path, config))]
    return results[0][0][:120], all(n for _, n in results), False

  @add
  @case('features.npz absent, variant mkg_rl')
  def _(log):
    workdir = copy('no_features')
    shutil.rmtree(checkpoints.directory(workdir))
    outcome, named = expect_error(
        lambda: train.train_and_evaluate(config_for(base_root, 'triples', **{
            'model.variant': 'mkg_rl'}), workdir), 'features.npz', 'features.enabled')
    return outcome, named, False
  return cases


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='scratch folder (emptied first)')
  parser.add_argument('--umls', default=os.path.join(ROOT, 'imkga_jax', 'dataset_files', 'umls'))
  parser.add_argument('--only', default='', help='run only the cases whose name contains this')
  args = parser.parse_args(argv)
  logging.getLogger().setLevel(logging.INFO)                # the cases capture INFO and above;
  for handler in logging.getLogger().handlers:              # the console shows warnings only
    handler.setLevel(logging.WARNING)
  shutil.rmtree(args.out, ignore_errors=True)
  os.makedirs(args.out)
  splits = umls_subset(args.umls)
  print(f'UMLS subset: {len(splits["train"])} train, {len(splits["valid"])} valid, '
        f'{len(splits["test"])} test triples\n')
  print('| case | outcome | error names file/key | anything lost |\n|---|---|---|---|', flush=True)
  for run in build_cases(args.out, splits):
    if args.only in run.case_name or run.case_name.startswith('train once'):
      run()
  print('\n| case | outcome | error names file/key | anything lost |\n|---|---|---|---|')
  for row in ROWS:
    print(f'| {" | ".join(row)} |')


if __name__ == '__main__':
  main()
