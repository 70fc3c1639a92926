"""The offline stages in order: raw KG -> `WORKDIR/prepared/`.

Stages (each skipped when its outputs exist and were made from the same config and inputs, by
fingerprint):

1. `synthetic` — only with `data.synthetic=True`: writes the embedded KG into `WORKDIR/raw`.
2. `kg`        — reads the raw KG, writes `vocab.json`, `triples.npz`.
3. `features`  — with `features.enabled`: VGG16 + OCR + Eq. 3-7 reduction -> `features.npz`.
4. `trajectories` — rules, grounded paths, return-to-go, TFRecord shards.

A stage's fingerprint covers its config keys, those of the earlier stages and, from `kg` on, the raw
KG's input files (`readers.input_files`): size, mtime and sha256 of every triple and text file, size
and mtime of every image (hashing an image folder would cost more than the stage it guards; an edit
that keeps an image's size and mtime is not noticed). So an edited `train.txt` re-runs `kg` and
everything after it. The config is validated first (`imkga_jax.config_check`) and the workdir is
locked for the run (`files.workdir_lock`). Every stage's statistics are merged into
`prepared/stats.json`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import ml_collections

from imkga_jax import config_check
from imkga_jax import datasets
from imkga_jax import files
from imkga_jax import kg as kg_lib
from imkga_jax import readers

# Config sections each stage depends on (a change in any of them re-runs the stage and the later ones).
STAGE_KEYS = {
    'synthetic': ('seed', 'synthetic'),
    'kg': ('data',),
    'features': ('features',),
    'trajectories': ('rules', 'trajectories', 'rtg'),
}
STAGES = tuple(STAGE_KEYS)
FINGERPRINT_FILE = 'fingerprints.json'
STATS_FILE = 'stats.json'


def raw_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Folder of the raw KG: `WORKDIR/raw` (or `data.root`) for the synthetic KG, else `data.root`,
  else the folder of `data.name` (`datasets.root_from_config`: downloaded and verified as needed)."""
  if config.data.synthetic:
    return config.data.root or os.path.join(workdir, 'raw')
  root = datasets.root_from_config(config.data)
  if not root:
    raise ValueError('config.data.root and config.data.name are both empty: pass '
                     f'--config.data.name=NAME (one of {", ".join(datasets.NAMES)}) or '
                     '--config.data.root=PATH/TO/KG (a folder of train/valid/test triples or the '
                     'OpenBG-IMG layout)')
  return root


def prepared_dir(workdir: str) -> str:
  return os.path.join(workdir, 'prepared')


def input_manifest(config: ml_collections.ConfigDict, root: str) -> list[dict[str, Any]]:
  """What the `kg` stage reads from `root`: every text file hashed, every image by size and mtime."""
  found = readers.input_files(root, config.data.layout)
  return (files.fingerprint_files(found['text'], content=True)
          + files.fingerprint_files(found['images'], content=False))


# Keys left out of the fingerprints: they say only where the raw files come from (data.name,
# data.cache_dir, data.url: the files themselves are fingerprinted through `inputs`), so a workdir
# prepared from `data.root` before these keys existed stays up to date.
LOCATION_KEYS = {'data': ('name', 'cache_dir', 'url')}


# Keys that became constants, with the value they had: counted as present, so workdirs prepared
# while they were config keys stay up to date.
RETIRED_KEYS = {'features': {'concurrent_ocr': True, 'ocr_det_limit_side_len': 224},
                'rules': {'max_pairs_per_product': 2_000_000}}


def _fingerprinted(key: str, value: Any) -> Any:
  """The JSON value of config section `key` as the fingerprint sees it (`LOCATION_KEYS` left out,
  `RETIRED_KEYS` put back; `features.vgg_weights` 'random' counted as '', its older spelling, so old
  workdirs match)."""
  value = json.loads(value.to_json()) if hasattr(value, 'to_json') else value
  if isinstance(value, dict):
    value = {k: v for k, v in value.items() if k not in LOCATION_KEYS.get(key, ())}
    value.update(RETIRED_KEYS.get(key, {}))
    if key == 'features' and value.get('vgg_weights') == 'random':
      value['vgg_weights'] = ''
  return value


def fingerprints(config: ml_collections.ConfigDict,
                 inputs: list[dict[str, Any]] | None = None) -> dict[str, str]:
  """Cumulative fingerprint per stage: a stage's hash covers its keys and those of earlier stages,
  and from `kg` on the input files `inputs` (`input_manifest`)."""
  out, parts = {}, []
  for stage in STAGES:
    for key in STAGE_KEYS[stage]:
      parts.append([key, _fingerprinted(key, config[key])])
    if stage == 'kg':
      parts.append(['inputs', inputs])
    out[stage] = files.fingerprint(parts)[:16]
  return out


def _read_json(path: str, default):
  if not os.path.exists(path):
    return default
  with open(path, encoding='utf-8') as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      logging.warning('%s:%d: not valid JSON (%s); treated as absent, so every stage re-runs', path,
                      e.lineno, e.msg)
      return default


def prepare(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every stage that is not done yet; returns the merged statistics (also in stats.json).

  Raises:
    config_check.ConfigError: a config value out of range (before anything is read or written).
    files.WorkdirLockedError: another process prepares or trains in `workdir`.
  """
  config_check.validate(config)
  with files.workdir_lock(workdir, 'prepare'):
    return _prepare(config, workdir)


def _prepare(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  out = prepared_dir(workdir)
  os.makedirs(out, exist_ok=True)
  wanted = fingerprints(config)
  done = _read_json(os.path.join(out, FINGERPRINT_FILE), {})
  stats = _read_json(os.path.join(out, STATS_FILE), {})
  root = raw_dir(config, workdir)
  kg = None

  def run(stage: str, fn: Callable[[], dict]) -> None:
    nonlocal stats
    if done.get(stage) == wanted[stage]:
      logging.info('prepare: stage %s is up to date (fingerprint %s), skipped', stage, wanted[stage])
      return
    logging.info('prepare: running stage %s', stage)
    start = time.time()
    stage_stats = fn() or {}
    stage_stats[f'seconds_{stage}'] = round(time.time() - start, 2)
    stats.update(stage_stats)
    done[stage] = wanted[stage]
    # Later stages depend on this one: forget them so they re-run.
    for later in STAGES[STAGES.index(stage) + 1:]:
      done.pop(later, None)
    files.write_json(os.path.join(out, STATS_FILE), stats)
    files.write_json(os.path.join(out, FINGERPRINT_FILE), done)

  def load() -> kg_lib.KnowledgeGraph:
    nonlocal kg
    if kg is None:
      kg = kg_lib.KnowledgeGraph.load(out)
    return kg

  if config.data.synthetic:
    def synthetic():
      from data_prep import synthetic as synthetic_lib  # pylint: disable=g-import-not-at-top
      result = synthetic_lib.generate_from_config(config, root, overwrite=True)
      return {'synthetic_' + k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    run('synthetic', synthetic)
  else:
    done.pop('synthetic', None)
    wanted.pop('synthetic', None)

  # The raw KG exists now (the synthetic stage may have written it): fingerprint its files.
  wanted.update({k: v for k, v in fingerprints(config, input_manifest(config, root)).items()
                 if k != 'synthetic'})

  def read_kg():
    nonlocal kg
    kg = readers.load_kg_from_config(config.data, root)
    kg.save(out)
    return {**kg.stats(), 'data_name': config.data.name, 'data_root': os.path.abspath(root)}
  run('kg', read_kg)

  if config.features.enabled:
    def features():
      from data_prep import features as features_lib  # pylint: disable=g-import-not-at-top
      return features_lib.build_features(load(), config, out)
    run('features', features)
  else:
    wanted['features'] = 'disabled'
    if done.get('features') != 'disabled':
      stale = os.path.join(out, 'features.npz')
      if os.path.exists(stale):
        os.remove(stale)
      run('features', lambda: {'images': 0})

  def trajectories():
    from data_prep import trajectories as trajectories_lib  # pylint: disable=g-import-not-at-top
    return trajectories_lib.build_trajectories(load(), config, out)
  run('trajectories', trajectories)
  return stats
