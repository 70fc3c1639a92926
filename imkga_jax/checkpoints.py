"""Checkpoints of a workdir: orbax items, the vocabulary they were trained on, corrupt-step fallback.

Layout: `WORKDIR/checkpoints/<step>/` holds three orbax items,

* `params`    — the model parameters (`StandardSave`),
* `opt_state` — the optimiser state (`StandardSave`), so evaluation restores the parameters alone,
  without building the optimiser,
* `meta`      — JSON: the step, and the vocabulary (entity and relation names in id order) with
  its sha256 (`vocabulary_hash`).

Resume (`restore_state`) and evaluation (`restore_params`) refuse a checkpoint whose vocabulary is
not the prepared KG's (`VocabularyMismatchError`, saying what changed: counts and the first
differing names), and parameters whose shapes are not the model's (`CheckpointMismatchError`,
naming the parameter) instead of an orbax shape error. A newest step that cannot be read
(truncated or garbled files) is reported with its path and the previous step is used, logged;
training moves the unreadable step to `WORKDIR/checkpoints_corrupt/` so it can be written again.

`check_resume_config` binds the checkpoints to the config sections they depend on
(`WORKDIR/train_config.json`), once a checkpoint exists.

Checkpoints written before this layout (one `default` item holding `TrainState(step, params,
opt_state)`) are still read by `restore_params` (parameters only; their vocabulary was not recorded,
so only shapes are checked, with a warning); training does not resume from them.

Example:
  >>> model, params, step = restore_params(config, workdir, kg)      # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import orbax.checkpoint as ocp

from imkga_jax import config_check
from imkga_jax import files
from imkga_jax import kg as kg_lib
from imkga_jax import sharding
from imkga_jax.models import imkga

CHECKPOINT_DIR = 'checkpoints'
TRAIN_CONFIG_FILE = 'train_config.json'
# Config sections a checkpoint depends on; resuming with different values is refused.
CHECKPOINT_KEYS = ('seed', 'model', 'masks', 'loss', 'optim', 'trajectories')
# Keys added after runs were made whose default is not what those runs did: a saved config without
# one was made with this value (`check_resume_config`), e.g. the whole-vocabulary head.
BEHAVIOUR_BEFORE_KEY = {'loss.typed_head': False}
CORRUPT_DIR = 'checkpoints_corrupt'
MAX_TO_KEEP = 3  # newest training checkpoints kept (the one selected on valid is kept apart)
LEGACY_ITEM = 'default'
FORMAT = 2
# What reading a damaged step raises (orbax/tensorstore: ValueError incl. JSONDecodeError; the file
# system: OSError; a garbled metadata tree: KeyError/TypeError).
UNREADABLE = (ValueError, OSError, KeyError, TypeError)


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit this run (vocabulary, parameter shapes); the message says what differs."""


class VocabularyMismatchError(CheckpointMismatchError):
  """The checkpoint was trained on another vocabulary than the prepared KG's."""


class NoReadableCheckpointError(RuntimeError):
  """Every checkpoint step of the workdir failed to read; the message lists them with their errors."""


# ============================================================================ vocabulary
def vocabulary(kg: kg_lib.KnowledgeGraph) -> dict[str, list[str]]:
  """Entity and relation names in id order: what the token ids of a checkpoint mean."""
  return {'entities': list(kg.entities), 'relations': list(kg.relations)}


def vocabulary_hash(kg: kg_lib.KnowledgeGraph) -> str:
  return files.fingerprint(vocabulary(kg))


def _first_difference(old: list[str], new: list[str]) -> str | None:
  """'#i: old name (checkpoint) vs new name (prepared)' at the first id where the lists differ."""
  for i in range(max(len(old), len(new))):
    a = repr(old[i]) if i < len(old) else '(none)'
    b = repr(new[i]) if i < len(new) else '(none)'
    if a != b:
      return f'#{i}: {a} (checkpoint) vs {b} (prepared)'
  return None


def check_vocabulary(meta: dict[str, Any], kg: kg_lib.KnowledgeGraph, where: str) -> None:
  """Raises `VocabularyMismatchError` when `meta` (a checkpoint's) records another vocabulary."""
  if meta.get('vocabulary_hash') == vocabulary_hash(kg):
    return
  lines = []
  for kind in ('entities', 'relations'):
    old, new = list(meta.get(kind, [])), list(getattr(kg, kind))
    diff = _first_difference(old, new)
    lines.append(f'{kind} {len(old)} (checkpoint) vs {len(new)} (prepared)'
                 + (f', first difference {diff}' if diff else ', same names'))
  raise VocabularyMismatchError(
      f'{where}: the checkpoint was trained on another vocabulary than the prepared KG '
      f'({kg.source or "prepared/"}): {"; ".join(lines)}. Its embeddings would sit on the wrong '
      'entities. Re-prepare from the KG the checkpoints were made with, or use a new --workdir.')


# ============================================================================ layout of the params
def param_layout(config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh
                 ) -> tuple[Callable[[jax.Array], Any], Any, Any]:
  """`(init_params, abstract_params, param_sharding)` from `jax.eval_shape`; nothing allocated.

  Shardings come from the logical axis names on the parameters and `config.mesh.rules`.
  """
  inputs = imkga.dummy_inputs(model.config, batch_size=2)

  def init_boxed(rng):
    return model.init({'params': rng, 'dropout': rng}, inputs, train=False)['params']

  def init_params(rng):
    return nn.meta.unbox(init_boxed(rng))

  rng = jax.random.key(config.seed)
  param_sharding = sharding.logical_shardings(jax.eval_shape(init_boxed, rng), mesh,
                                              config.mesh.rules)
  return init_params, jax.eval_shape(init_params, rng), param_sharding


def restore_target(abstract: Any, shardings: Any) -> Any:
  """`jax.ShapeDtypeStruct`s with shardings: what orbax restores into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


def _check_shapes(saved: Any, target: Any, where: str) -> None:
  """Names the first parameter whose saved shape differs from the model's (before orbax fails)."""
  saved_flat = {jax.tree_util.keystr(p): leaf for p, leaf in
                jax.tree_util.tree_flatten_with_path(saved)[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    name = jax.tree_util.keystr(path)
    old = saved_flat.get(name)
    if old is None:
      raise CheckpointMismatchError(f'{where}: the checkpoint has no parameter {name}; it was made '
                                    'with another model configuration. Use a new --workdir.')
    if tuple(old.shape) != tuple(leaf.shape):
      raise CheckpointMismatchError(
          f'{where}: parameter {name} has shape {tuple(old.shape)} in the checkpoint, '
          f'{tuple(leaf.shape)} in this model: the checkpoint was made with another vocabulary size '
          'or model configuration. Re-prepare from the KG the checkpoints were made with, restore '
          'the config, or use a new --workdir.')


# ============================================================================ manager
def directory(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def manager(workdir: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
  """The orbax CheckpointManager of `workdir` (items params, opt_state, meta)."""
  return ocp.CheckpointManager(
      directory(workdir),
      item_handlers={'params': ocp.StandardCheckpointHandler(),
                     'opt_state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


BEST_DIR = 'checkpoints_best'


def best_manager(workdir: str) -> ocp.CheckpointManager:
  """The manager of `WORKDIR/checkpoints_best/`: the parameters training selected on the valid split
  (one step: items params, meta with the valid MRR)."""
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, BEST_DIR)),
      item_handlers={'params': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


def save_best(workdir: str, step: int, params: Any, kg: kg_lib.KnowledgeGraph,
              valid_mrr: float) -> None:
  """Keeps `params` of `step` as the selected ones (replacing the previous selection)."""
  mngr = best_manager(workdir)
  meta = {'format': FORMAT, 'step': int(step), 'valid_mrr': float(valid_mrr),
          'vocabulary_hash': vocabulary_hash(kg), **vocabulary(kg)}
  mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                          meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()


def best_step(workdir: str) -> int | None:
  """The step of the parameters selected on valid (None when training selected none)."""
  folder = os.path.join(workdir, BEST_DIR)
  steps = [int(d) for d in os.listdir(folder) if d.isdigit()] if os.path.isdir(folder) else []
  return max(steps) if steps else None


def selected_step(workdir: str, config: ml_collections.ConfigDict | None = None) -> int | None:
  """The step evaluation restores: the one selected on valid, else the newest."""
  best = best_step(workdir)
  return best if best is not None else latest_step(workdir, config)


def latest_step(workdir: str, config: ml_collections.ConfigDict | None = None) -> int | None:
  """The newest checkpoint step of `workdir` (None without one); validates `config` when given."""
  if config is not None:
    config_check.validate(config)
  files.ensure_workdir(workdir, create=False)
  folder = directory(workdir)
  if not os.path.isdir(folder):
    return None
  steps = [int(d) for d in os.listdir(folder) if d.isdigit()]
  return max(steps) if steps else None


# ============================================================================ config binding
def _config_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The CHECKPOINT_KEYS sections of `config` as plain JSON values."""
  return {k: json.loads(config[k].to_json()) if hasattr(config[k], 'to_json') else config[k]
          for k in CHECKPOINT_KEYS}


def check_resume_config(config: ml_collections.ConfigDict, workdir: str,
                        defaults: ml_collections.ConfigDict | None = None) -> None:
  """Refuses to resume checkpoints made with a different model/optimiser configuration.

  The saved `train_config.json` only counts once a checkpoint exists: a run that failed before its
  first checkpoint (a bad variant, a NaN at step 1) does not block its corrected rerun, whose
  config then replaces the file. With `defaults` (the full default config), a key the saved file
  lacks — one added to the code after the run was made — counts as unchanged when its current value
  is the behaviour the run was made with: its default, or its `BEHAVIOUR_BEFORE_KEY` value where
  a later default changed what the code does; the saved file then gains the key.
  """
  path = os.path.join(workdir, TRAIN_CONFIG_FILE)
  current = _config_fingerprint(config)
  if os.path.exists(path) and latest_step(workdir) is None:
    logging.info('%s: no checkpoint exists yet, so the config saved by an earlier attempt does not '
                 'bind this run; replaced', path)
  elif os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      try:
        saved = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{e.lineno}: not valid JSON ({e.msg}); it records the config the '
                         f'checkpoints in {workdir} were made with: restore it, or use a new '
                         '--workdir') from None
    if saved == current:
      return
    old, new = config_check.flatten(saved), config_check.flatten(current)
    known = config_check.flatten(_config_fingerprint(defaults)) if defaults is not None else {}
    added = {k for k in new if k not in old and k in known
             and new[k] == BEHAVIOUR_BEFORE_KEY.get(k, known[k])}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in added)
    if changed:
      raise ValueError(f'{path}: the checkpoints in {workdir} were made with different config '
                       f'values {changed}; use a new --workdir or restore the old values')
    logging.info('%s: keys added since the run was made, at their defaults: %s', path, sorted(added))
  if jax.process_index() == 0:
    files.write_json(path, current)


# ============================================================================ save and restore
def save(mngr: ocp.CheckpointManager, step: int, params: Any, opt_state: Any,
         kg: kg_lib.KnowledgeGraph) -> None:
  """Saves step `step` (asynchronously; `mngr.wait_until_finished()` waits for it)."""
  meta = {'format': FORMAT, 'step': int(step), 'vocabulary_hash': vocabulary_hash(kg),
          **vocabulary(kg)}
  mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                          opt_state=ocp.args.StandardSave(opt_state),
                                          meta=ocp.args.JsonSave(meta)))


def _step_dir(workdir: str, step: int) -> str:
  return os.path.join(directory(workdir), str(step))


def _is_legacy(workdir: str, step: int) -> bool:
  step_dir = _step_dir(workdir, step)
  return (os.path.isdir(os.path.join(step_dir, LEGACY_ITEM))
          and not os.path.isdir(os.path.join(step_dir, 'params')))


def _read_step(mngr: ocp.CheckpointManager, workdir: str, step: int, kg: kg_lib.KnowledgeGraph,
               params_target: Any, opt_target: Any | None) -> tuple[Any, Any]:
  """`(params, opt_state or None)` of one step (new layout), vocabulary and shapes checked first."""
  where = os.path.join(str(mngr.directory), str(step))
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  if not isinstance(meta, dict):
    raise ValueError(f'{where}/meta: expected a JSON object, got {type(meta).__name__}')
  check_vocabulary(meta, kg, where)
  _check_shapes(mngr.item_metadata(step)['params'].tree, params_target, where + '/params')
  items = {'params': ocp.args.StandardRestore(params_target)}
  if opt_target is not None:
    items['opt_state'] = ocp.args.StandardRestore(opt_target)
  out = mngr.restore(step, args=ocp.args.Composite(**items))
  return out['params'], out.get('opt_state') if opt_target is not None else None


def _read_legacy_params(workdir: str, step: int, params_target: Any) -> Any:
  """The parameters of a checkpoint written before this layout (`default` = TrainState)."""
  path = os.path.join(_step_dir(workdir, step), LEGACY_ITEM)
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  saved = checkpointer.metadata(path).item_metadata.tree
  _check_shapes(saved['params'], params_target, path + ' params')
  logging.warning('%s: checkpoint from before checkpoints recorded their vocabulary; only the '
                  'parameter shapes are checked against the prepared KG', path)
  restore_args = jax.tree.map(
      lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
      params_target)
  out = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item={'params': params_target}, restore_args={'params': restore_args},
      partial_restore=True))
  return out['params']


def _fall_back(workdir: str, read: Callable[[int], Any], steps: list[int], move: bool) -> tuple[int, Any]:
  """`(step, read(step))` of the newest step that reads; unreadable ones are logged (and moved)."""
  failures = []
  for step in sorted(steps, reverse=True):
    try:
      value = read(step)
    except CheckpointMismatchError:
      raise
    except UNREADABLE as e:
      path = _step_dir(workdir, step)
      failures.append(f'{path}: {type(e).__name__}: {str(e)[:300]}')
      move = move and jax.process_index() == 0          # one process moves; all skip the step
      if move:
        target = os.path.join(workdir, CORRUPT_DIR, str(step))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(path, target)
      logging.error('checkpoint %s cannot be read (%s: %s)%s; trying the previous step', path,
                    type(e).__name__, str(e)[:300], f', moved to {target}' if move else '')
      continue
    if failures:
      logging.warning('using checkpoint step %d: %d newer step(s) could not be read', step,
                      len(failures))
    return step, value
  raise NoReadableCheckpointError('no checkpoint could be read:\n  ' + '\n  '.join(failures)
                                  + '\nRemove them (or use a new --workdir) to train from scratch.')


def restore_state(workdir: str, mngr: ocp.CheckpointManager, kg: kg_lib.KnowledgeGraph,
                  params_target: Any, opt_target: Any) -> tuple[int, Any, Any] | None:
  """`(step, params, opt_state)` of the newest readable step to resume from, or None without one.

  Raises:
    VocabularyMismatchError / CheckpointMismatchError: the checkpoint does not fit this run.
    NoReadableCheckpointError: steps exist and none reads.
  """
  steps = list(mngr.all_steps())
  if not steps:
    return None
  legacy = [s for s in steps if _is_legacy(workdir, s)]
  if legacy:
    raise CheckpointMismatchError(
        f'{_step_dir(workdir, max(legacy))}: checkpoint written before checkpoints recorded their '
        'vocabulary (one "default" item); evaluation can read it, training cannot resume from it. '
        'Use a new --workdir to train.')
  step, (params, opt_state) = _fall_back(
      workdir, lambda s: _read_step(mngr, workdir, s, kg, params_target, opt_target), steps,
      move=True)
  mngr.reload()
  return step, params, opt_state


def restore_params(config: ml_collections.ConfigDict, workdir: str, kg: kg_lib.KnowledgeGraph,
                   step: int | None = None) -> tuple[nn.Module, Any, int]:
  """Loads `(model, params, step)` for evaluation: of the given step, else of the parameters training
  selected on the valid split (`save_best`), else of the newest readable checkpoint.

  Builds only the model (no optimiser): the abstract parameters come from `jax.eval_shape`.

  Raises:
    FileNotFoundError: the workdir has no checkpoint.
    VocabularyMismatchError / CheckpointMismatchError: the checkpoint does not fit.
  """
  config_check.validate(config)
  files.ensure_workdir(workdir, create=False)
  model = imkga.build_model(config, kg.space.num_tokens)
  mesh = sharding.make_mesh(config.mesh)
  _, abstract, param_sharding = param_layout(config, model, mesh)
  target = restore_target(abstract, param_sharding)
  best = best_step(workdir)
  if step is None and best is not None:
    params, _ = _read_step(best_manager(workdir), workdir, best, kg, target, None)
    return model, params, int(best)
  steps = [step] if step is not None else (
      [int(d) for d in os.listdir(directory(workdir)) if d.isdigit()]
      if os.path.isdir(directory(workdir)) else [])
  if not steps:
    raise FileNotFoundError(f'no checkpoint in {directory(workdir)}; run --mode=train first')
  mngr = manager(workdir)

  def read(s):
    if _is_legacy(workdir, s):
      return _read_legacy_params(workdir, s, target)
    return _read_step(mngr, workdir, s, kg, target, None)[0]

  found, params = _fall_back(workdir, read, steps, move=False)
  return model, params, int(found)
