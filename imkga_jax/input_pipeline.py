"""Training examples from the trajectory TFRecords: tf.data → per-process numpy batches.

`data_prep.trajectories` writes `PREPARED/trajectories/` with a TFDS builder (three packed features,
see there); this module reads it with `tfds.builder_from_directory` (no import of data_prep), takes
this process's slice (`tfds.split_for_jax_process`), shuffles with a seed, repeats, batches and
unpacks into the dict of the contract (contracts.md):

  head_token [B] int32, relation_token [B] int32, target [B] int32 (entity id),
  actions [B, L] int32, rtg [B, L] float32, kind [B] int32 (0 rule path, 1 direct, 2 negative)

with B = config.train.batch_size // process_count and L = 2 * config.trajectories.max_hops + 1.

Target dropout (DESIGN §3): every example is stored with two return-to-go rows, computed with the true
image similarity to the target and with the target's image treated as missing (½R̂_1 for every entity
action, as at decode time). Here each example takes the second row with probability
`config.rtg.target_dropout`, drawn with a stateless RNG from (seed, process, batch index): a fresh draw
every epoch, the same draws for the same seed.

Same seed (and process split) ⇒ same batches in the same order: file order, shuffle buffer and dropout
are seeded and the tf.data pipeline runs with `deterministic=True`. TensorFlow is imported inside the
functions, and tf.data runs on a private pool of `READER_THREADS` threads.

Example:
  >>> it = create_train_iterator('/tmp/w/prepared', config)                    # doctest: +SKIP
  >>> batch = next(it); batch['actions'].shape                                    # doctest: +SKIP
  (256, 7)
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, NamedTuple

import numpy as np

from imkga_jax import prepared
from imkga_jax.kg import EOS

BUILDER_NAME = 'imkga_trajectories'
# Column of the trajectory kind in the packed `query` feature.
QUERY_KIND = prepared.QUERY_FIELDS.index('kind')
# Steps of a direct trajectory `t <eos>`.
DIRECT_STEPS = 2
# Threads of the tf.data reader (its private pool keeps TensorFlow from taking every core).
READER_THREADS = 2


class TrajectoryInfo(NamedTuple):
  """What was written: number of training examples and action sequence length L."""
  num_examples: int
  seq_len: int


def trajectories_dir(prepared_dir: str) -> str:
  return prepared.path(prepared_dir, prepared.TRAJECTORIES_DIR)


def _import_tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:  # the reader must not take accelerator memory from JAX
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError as e:  # TF was initialised earlier in this process: nothing to hide any more
    logging.debug('input_pipeline: could not hide GPUs from TensorFlow: %s', e)
  return tf


def _builder(prepared_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = trajectories_dir(prepared_dir)
  if not os.path.exists(os.path.join(path, 'dataset_info.json')):
    raise FileNotFoundError(f'{path}/dataset_info.json is missing: the trajectories were not '
                            'written; run `launch.py --mode=prepare` first')
  return tfds.builder_from_directory(path)


def trajectory_info(prepared_dir: str) -> TrajectoryInfo:
  """Number of written training examples and L, read from the dataset's metadata."""
  builder = _builder(prepared_dir)
  return TrajectoryInfo(num_examples=int(builder.info.splits['train'].num_examples),
                        seq_len=int(builder.info.features['actions'].shape[0]))


def create_train_dataset(prepared_dir: str, config: Any, *, process_index: int | None = None,
                         process_count: int | None = None, seed: int | None = None,
                         repeat: bool = True, skip_batches: int = 0,
                         exclude_direct: bool = False):
  """This process's `tf.data.Dataset` of unpacked batches (see the module docstring).

  Args:
    prepared_dir: the prepared folder (holds `trajectories/`).
    config: project config (`train.batch_size`, `train.shuffle_buffer`, `rtg.target_dropout`,
      `trajectories.max_hops`, `seed`).
    process_index, process_count: this process and how many read; default `jax.process_*()`.
    seed: shuffling and target-dropout seed; default `config.seed`.
    repeat: repeat forever (training) or stop after one pass over this process's examples.
    skip_batches: batches to drop first (a resumed run continues the stream it was reading: the
      batches after the skipped ones are those an uninterrupted run reads at that step).
    exclude_direct: leave the direct trajectories `t <eos>` out (training draws them from
      `read_direct` as short sequences instead, `train.direct_batch_size`).

  Returns:
    A `tf.data.Dataset` of dicts with the keys of `prepared.EXAMPLE_KEYS`, batch dimension
    `config.train.batch_size // process_count`, remainder dropped.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf = _import_tf()
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  seed = int(config.seed if seed is None else seed)
  batch_size = int(config.train.batch_size)
  if batch_size % process_count:
    raise ValueError(f'config.train.batch_size={batch_size} is not divisible by the {process_count} '
                     'processes; pick a multiple of the process count')
  local_batch = batch_size // process_count
  builder = _builder(prepared_dir)
  stored_len = int(builder.info.features['actions'].shape[0])
  if stored_len != prepared.config_sequence_length(config):
    raise ValueError(f'{trajectories_dir(prepared_dir)} holds sequences of length {stored_len} but '
                     f'config.trajectories.max_hops={config.trajectories.max_hops} needs '
                     f'{prepared.config_sequence_length(config)}; re-run prepare or set '
                     f'max_hops={(stored_len - 1) // 2}')
  num_local = int(builder.info.splits['train'].num_examples) // process_count
  if num_local < local_batch:
    raise ValueError(f'process {process_index} of {process_count} gets {num_local} trajectories, '
                     f'fewer than one batch of {local_batch}; lower config.train.batch_size')

  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = READER_THREADS
  options.threading.max_intra_op_parallelism = 1
  # The stored order is already a seeded permutation (TFDS shuffling off); reading it shuffled is
  # intended, so TFDS's guard for ordered datasets is off (it still logs "Dataset is an ordered
  # dataset ... will not be read in order": expected).
  read_config = tfds.ReadConfig(options=options, shuffle_seed=seed, try_autocache=False,
                               enable_ordering_guard=False)
  split = tfds.split_for_jax_process('train', process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config)
  if exclude_direct:
    ds = ds.filter(lambda x: x['query'][QUERY_KIND] != prepared.KIND_DIRECT)
  ds = ds.shuffle(int(config.train.shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(local_batch, drop_remainder=True)
  dropout = float(config.rtg.target_dropout)
  stream = tf.constant(seed * 1_000_003 + process_index, tf.int64)

  def unpack(index, batch):
    coin = tf.random.stateless_uniform([local_batch], seed=tf.stack([stream, index]))
    unknown = coin < dropout  # [B] use the target-unknown return-to-go
    out = {name: batch['query'][:, i] for i, name in enumerate(prepared.QUERY_FIELDS)}
    out['actions'] = batch['actions']
    out['rtg'] = tf.where(unknown[:, None], batch['rtg'][:, 1], batch['rtg'][:, 0])  # [B, L]
    return out

  ds = ds.enumerate()
  if skip_batches:
    ds = ds.skip(int(skip_batches))  # before unpacking: indices (and dropout draws) stay aligned
  ds = ds.map(unpack, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(2).with_options(options)


def create_train_iterator(prepared_dir: str, config: Any, *, process_index: int | None = None,
                          process_count: int | None = None, seed: int | None = None,
                          skip_batches: int = 0, exclude_direct: bool = False
                          ) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator of this process's numpy batches (see `create_train_dataset`).

  `skip_batches` drops that many batches first (resuming at a step: the same stream continues).

  Example:
    >>> batch = next(create_train_iterator(prepared, config))           # doctest: +SKIP
    >>> sorted(batch)                                                    # doctest: +SKIP
    ['actions', 'head_token', 'kind', 'relation_token', 'rtg', 'target']
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = create_train_dataset(prepared_dir, config, process_index=process_index,
                            process_count=process_count, seed=seed, repeat=True,
                            skip_batches=skip_batches, exclude_direct=exclude_direct)
  return iter(tfds.as_numpy(ds))


def read_direct(prepared_dir: str) -> dict[str, np.ndarray]:
  """Every direct trajectory `t <eos>` of the prepared folder, in stored order, cut to its
  `DIRECT_STEPS` steps (one pass over the shards; every process reads them all).

  Returns:
    `{'head_token' [N], 'relation_token' [N], 'actions' [N, 2] int32, 'rtg' [N, 2, 2] float32}`:
    the two return-to-go rows of each (true similarity, target unknown) as stored.

  Example:
    >>> read_direct(prepared)['actions'][0]                              # doctest: +SKIP
    array([152,   2], dtype=int32)
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _import_tf()
  ds = _builder(prepared_dir).as_dataset(split='train', shuffle_files=False)
  parts = {'head_token': [], 'relation_token': [], 'actions': [], 'rtg': []}
  for batch in tfds.as_numpy(ds.batch(8192)):
    keep = batch['query'][:, QUERY_KIND] == prepared.KIND_DIRECT
    parts['head_token'].append(batch['query'][keep, 0])
    parts['relation_token'].append(batch['query'][keep, 1])
    parts['actions'].append(batch['actions'][keep, :DIRECT_STEPS])
    parts['rtg'].append(batch['rtg'][keep][:, :, :DIRECT_STEPS])
  out = {key: np.concatenate(v) if v else np.zeros((0,), np.int32) for key, v in parts.items()}
  out['head_token'] = out['head_token'].astype(np.int32)
  out['relation_token'] = out['relation_token'].astype(np.int32)
  out['actions'] = out['actions'].reshape(-1, DIRECT_STEPS).astype(np.int32)
  out['rtg'] = out['rtg'].reshape(-1, 2, DIRECT_STEPS).astype(np.float32)
  bad = np.flatnonzero(out['actions'][:, 1] != EOS)
  if len(bad):
    raise ValueError(f'{trajectories_dir(prepared_dir)}: {len(bad)} direct trajectories do not end '
                     f'with <eos> after their answer (first: actions {out["actions"][bad[0]]}); '
                     'run `launch.py --mode=prepare` again')
  return out
