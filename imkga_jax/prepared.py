"""The prepared folder's format, shared by the stages that write it and the code that reads it.

`WORKDIR/prepared/` holds:

| file | written by | holds |
|---|---|---|
| `vocab.json`, `triples.npz` | `data_prep.prepare` (`KnowledgeGraph.save`) | names, texts, images; id triples |
| `features.npz` | `data_prep.features` | per entity: `image_vector`, `image_present`, `ocr_text`, `ocr_vector`, `ocr_present`, `h_fig`, `h_ocr`, `mentions` (the entities its OCR text names, -1 after the last) |
| `rules.json` | `data_prep.trajectories` | mined rules `{head relation: [[confidence, [body relations]], …]}` |
| `trajectories/` | `data_prep.trajectories` | TFRecord shards: `query [4]`, `actions [L]`, `rtg [2, L]` |
| `format.json` | `data_prep.trajectories` | `FORMAT_KEYS`: the sequence length and what preparation decided about the direct form |
| `stats.json`, `fingerprints.json` | `data_prep.prepare` | statistics; which config made each stage |

A trajectory is `L = 2 * max_hops + 1` action tokens `r1 e1 … rn t <eos> <pad>…` (or the direct form
`t <eos> <pad>…`) of one of the kinds `KIND_NAMES`. Decoding offers the direct form exactly to the
queries preparation trained it for (`direct_form` of `format.json`): no key of the decode section
has to repeat a trajectory setting.

Example:
  >>> sequence_length(3)
  7
  >>> sorted(dummy_inputs(7, fig_dim=8, ocr_dim=3, batch_size=2))[:3]
  ['actions', 'fig', 'fig_present']
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from imkga_jax import files
from imkga_jax import kg as kg_lib

VOCAB_FILE = kg_lib.VOCAB_FILE
TRIPLES_FILE = kg_lib.TRIPLES_FILE
FEATURES_FILE = 'features.npz'
RULES_FILE = 'rules.json'
TRAJECTORIES_DIR = 'trajectories'
FORMAT_FILE = 'format.json'
STATS_FILE = 'stats.json'
FINGERPRINT_FILE = 'fingerprints.json'

KIND_RULE, KIND_DIRECT, KIND_NEGATIVE = 0, 1, 2
KIND_NAMES = ('rule', 'direct', 'negative')
# Column order of the packed `query` feature of a stored trajectory.
QUERY_FIELDS = ('head_token', 'relation_token', 'target', 'kind')
# Keys of an unpacked training batch.
EXAMPLE_KEYS = ('head_token', 'relation_token', 'target', 'actions', 'rtg', 'kind')
# Per-entity model inputs, and the features.npz arrays they come from.
# `mentions`: the tokens of the entities the head's OCR text names (-1 after the last).
FEATURE_KEYS = ('fig', 'ocr', 'fig_present', 'ocr_present', 'mentions')
FEATURE_SOURCES = {'fig': 'h_fig', 'ocr': 'h_ocr', 'fig_present': 'image_present',
                   'ocr_present': 'ocr_present', 'mentions': 'mentions'}
# Which query heads may answer in the direct form `t <eos>` (format.json `direct_form.heads`).
DIRECT_HEADS = ('all', 'image_heads')
FORMAT_KEYS = ('seq_len', 'direct_form')


def sequence_length(max_hops: int) -> int:
  """L = 2 * max_hops + 1 action tokens (`r1 e1 … rn t <eos>`)."""
  return 2 * int(max_hops) + 1


def config_sequence_length(config: Any) -> int:
  """`sequence_length` of `config.trajectories.max_hops`."""
  return sequence_length(config.trajectories.max_hops)


def path(prepared_dir: str, name: str) -> str:
  return os.path.join(prepared_dir, name)


# ============================================================================ format.json
def direct_form(config: Any) -> dict[str, Any]:
  """What preparation decides about the direct form `t <eos>` from `config.trajectories`.

  `heads`: 'image_heads' when only queries whose head has an image get it beside their paths
  (`trajectories.also_direct='image_heads'`), else 'all' (with 'none' the direct form is trained
  for the queries no rule grounds, which decoding cannot tell apart).
  """
  return {'heads': 'image_heads' if config.trajectories.also_direct == 'image_heads' else 'all'}


def write_format(prepared_dir: str, config: Any) -> dict[str, Any]:
  """Writes `format.json` for trajectories made with `config`; returns what it wrote."""
  info = {'seq_len': config_sequence_length(config), 'direct_form': direct_form(config)}
  files.write_json(path(prepared_dir, FORMAT_FILE), info)
  return info


def read_format(prepared_dir: str) -> dict[str, Any]:
  """`format.json` of a prepared folder (error naming the file and the fix when absent or old)."""
  file = path(prepared_dir, FORMAT_FILE)
  try:
    with open(file, encoding='utf-8') as f:
      info = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'{file} is missing: the trajectories were made by an older version '
                            'or not at all; run `launch.py --mode=prepare` again') from None
  missing = [k for k in FORMAT_KEYS if k not in info]
  if missing or info['direct_form'].get('heads') not in DIRECT_HEADS:
    raise ValueError(f'{file}: lacks {missing} or has an unknown direct_form {info.get("direct_form")}'
                     '; run `launch.py --mode=prepare` again')
  return info


def direct_table(kg: kg_lib.KnowledgeGraph, prepared_dir: str) -> np.ndarray:
  """`[2R, E] bool`: may query (head e, relation r) answer in the direct form (`format.json`)."""
  heads = np.ones(kg.num_entities, bool)
  if read_format(prepared_dir)['direct_form']['heads'] == 'image_heads':
    heads = kg.has_image()
  return np.broadcast_to(heads[None, :], (2 * kg.num_relations, kg.num_entities))


# ============================================================================ features
def load_features(prepared_dir: str, num_entities: int, fig_dim: int, ocr_dim: int,
                  required_by: str | None = None, max_mentions: int = 0,
                  entity_offset: int = 0) -> dict[str, np.ndarray]:
  """Per-entity `FEATURE_KEYS` arrays from features.npz.

  Without the file the table is zeros / False (no mentions), which only variants that read no
  features may use: `required_by` (the variant's name, when it reads them) makes a missing file an
  error naming it. `mentions` (`[E, max_mentions]`) holds tokens (entity id + `entity_offset`); a
  file written without them (fake features in tests) names nothing.
  """
  if max_mentions and entity_offset <= 0:
    raise ValueError(f'load_features: max_mentions={max_mentions} needs the entity_offset of the '
                     'token space (kg.space.entity_offset) to turn entity ids into tokens')
  file = path(prepared_dir, FEATURES_FILE)
  table = {'fig': np.zeros((num_entities, fig_dim), np.float32),
           'ocr': np.zeros((num_entities, ocr_dim), np.float32),
           'fig_present': np.zeros((num_entities,), bool),
           'ocr_present': np.zeros((num_entities,), bool),
           'mentions': np.full((num_entities, max_mentions), -1, np.int32)}
  if not os.path.exists(file):
    if required_by:
      raise FileNotFoundError(
          f'{file} is missing, and model.variant={required_by!r} reads image and OCR features: '
          'run `launch.py --mode=prepare` with --config.features.enabled=True (it writes the file), '
          'or use a variant without features (--config.model.variant=rl or no_img)')
    return table
  with np.load(file) as f:
    for key, source in FEATURE_SOURCES.items():
      if key == 'mentions' and source not in f:
        continue
      value = f[source]
      if value.shape != table[key].shape:
        raise ValueError(f'{file}: {source} has shape {value.shape}, expected {table[key].shape} '
                         '(features and config/KG disagree; re-run --mode=prepare)')
      table[key] = value.astype(table[key].dtype)
  named = table['mentions']
  table['mentions'] = np.where(named >= 0, named + entity_offset, -1).astype(np.int32)
  return table


def head_features(table: Mapping[str, Any], heads: Any) -> dict[str, Any]:
  """The query heads' rows of the feature table (numpy or jax arrays; works inside jit): the one
  join of features to queries, for training and decoding alike."""
  return {key: table[key][heads] for key in FEATURE_KEYS}


def dummy_inputs(seq_len: int, fig_dim: int, ocr_dim: int, batch_size: int = 1,
                 max_mentions: int = 0) -> dict[str, np.ndarray]:
  """Zero model inputs of the right shapes and dtypes (for `init` and `jax.eval_shape`)."""
  b = batch_size
  return {'head_token': np.zeros((b,), np.int32), 'relation_token': np.zeros((b,), np.int32),
          'actions': np.zeros((b, seq_len), np.int32), 'rtg': np.zeros((b, seq_len), np.float32),
          'fig': np.zeros((b, fig_dim), np.float32), 'ocr': np.zeros((b, ocr_dim), np.float32),
          'fig_present': np.zeros((b,), bool), 'ocr_present': np.zeros((b,), bool),
          'mentions': np.full((b, max_mentions), -1, np.int32),
          'token_keep': np.ones((b, 2 * seq_len), bool)}
