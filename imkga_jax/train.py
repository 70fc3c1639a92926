"""Training: sharded, jitted train step, orbax checkpoints with resume, metrics (DESIGN.md §6).

`train_and_evaluate(config, workdir)` reads `WORKDIR/prepared/` (written by `--mode=prepare`), trains
IMKGA-SM and writes orbax checkpoints to `WORKDIR/checkpoints/` (`checkpoints.py`: parameters,
optimiser state and the vocabulary they belong to) and TensorBoard events to `WORKDIR/`.
Restarting it resumes from the latest readable checkpoint and ends with the same parameters as an
uninterrupted run of the same seed: the batch order and every random number are functions of
(seed, step). The config is validated first, and the workdir is locked while training
(`files.workdir_lock`; by process 0 of a multi-process run).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from clu import metric_writers
from tqdm import tqdm

from imkga_jax import checkpoints
from imkga_jax import config_check
from imkga_jax import evaluator
from imkga_jax import files
from imkga_jax import grammar
from imkga_jax import input_pipeline
from imkga_jax import kg as kg_lib
from imkga_jax import losses
from imkga_jax import masks
from imkga_jax import sharding
from imkga_jax import prepared
from imkga_jax.models import imkga
from imkga_jax.optim import PerIndex
from imkga_jax.optim import modality_modulation

MODALITIES = ('fig', 'ocr')
FEATURES_FILE = 'features.npz'
# fold_in constant of the direct stream's randomness (the main batch's keys stay as they were).
DIRECT_STREAM = 7


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the message names the step."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ============================================================================ optimiser
def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up to `optim.learning_rate`, then cosine decay to 10% at `train.num_steps`."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.optim.learning_rate,
      warmup_steps=config.optim.warmup_steps,
      decay_steps=max(config.train.num_steps, config.optim.warmup_steps + 1),
      end_value=0.1 * config.optim.learning_rate)


def modality_labels(params: Any, branches: tuple[str, ...]) -> Any:
  """Labels for `modality_modulation`: each branch-stacked leaf is labelled per index of its branch
  axis ('fig' and 'ocr' for those branches' slices, None for concat); every other leaf None."""
  per_branch = PerIndex(tuple(b if b in MODALITIES else None for b in branches))
  return jax.tree_util.tree_map_with_path(
      lambda path, _: per_branch if imkga.is_branch_stacked(path) else None, params)


def make_optimizer(config: ml_collections.ConfigDict, branches: tuple[str, ...]
                   ) -> optax.GradientTransformationExtraArgs:
  """`chain(modality_modulation, clip_by_global_norm, adamw(schedule))` (DESIGN.md §5)."""
  parts = []
  if all(m in branches for m in MODALITIES):
    end = config.optim.modulation_end
    parts.append(modality_modulation(
        lambda params: modality_labels(params, branches), alpha=config.optim.alpha,
        noise_scale=config.optim.noise_scale, key=jax.random.PRNGKey(config.seed),
        start_step=config.optim.modulation_start, end_step=None if end < 0 else end))
  parts += [optax.clip_by_global_norm(config.optim.clip_norm),
            optax.adamw(learning_rate_schedule(config), weight_decay=config.optim.weight_decay)]
  return optax.chain(*parts)


# ============================================================================ train step
def direct_batch(direct: Mapping[str, jax.Array], rng: jax.Array, size: int, target_dropout: float
                 ) -> dict[str, jax.Array]:
  """`size` direct trajectories `t <eos>` drawn (with replacement) from `direct`
  (`input_pipeline.read_direct`), each with the target-unknown return-to-go row with probability
  `target_dropout` (as the input pipeline does for the main batch); works inside jit."""
  pick_rng, coin_rng = jax.random.split(rng)
  index = jax.random.randint(pick_rng, (size,), 0, direct['head_token'].shape[0])  # [Bd]
  unknown = jax.random.bernoulli(coin_rng, target_dropout, (size,))  # [Bd]
  rtg = direct['rtg'][index]  # [Bd, 2, 2]
  return {'head_token': direct['head_token'][index],
          'relation_token': direct['relation_token'][index],
          'actions': direct['actions'][index],
          'rtg': jnp.where(unknown[:, None], rtg[:, 1], rtg[:, 0])}


def train_step(state: TrainState, batch: Mapping[str, jax.Array], table: Mapping[str, jax.Array],
               rng: jax.Array, *, model: nn.Module, tx: optax.GradientTransformationExtraArgs,
               config: ml_collections.ConfigDict, entity_offset: int,
               direct_sharding: jax.sharding.Sharding | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step; pure, jitted once. Randomness = fold_in(rng, step).

  With `table['direct']` (the direct trajectories, `input_pipeline.read_direct`) the step also
  draws `train.direct_batch_size` of them as 2-step sequences `t <eos>` and adds their path loss
  (same masks, label smoothing and β) to the main batch's: the step-0 classifier over all entities
  trains on short sequences instead of ones padded to 2·max_hops+1 steps. `direct_sharding` lays
  that batch out like the main one.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  mask_rng, dropout_rng = jax.random.split(step_rng)
  streams = [(batch, mask_rng)]
  if 'direct' in table:
    direct_rng = jax.random.fold_in(step_rng, DIRECT_STREAM)
    draw_rng, direct_mask_rng = jax.random.split(direct_rng)
    extra_batch = direct_batch(table['direct'], draw_rng, config.train.direct_batch_size,
                               config.rtg.target_dropout)
    if direct_sharding is not None:
      extra_batch = jax.lax.with_sharding_constraint(extra_batch, direct_sharding)
    streams.append((extra_batch, direct_mask_rng))
  prepared_streams = []
  for stream, stream_rng in streams:
    stream = dict(stream, **prepared.head_features(table, stream['head_token'] - entity_offset))
    inputs, mask3 = masks.apply_masks(stream_rng, stream, config.masks, train=True)
    prepared_streams.append((stream['actions'], inputs, mask3))

  space = kg_lib.TokenSpace((entity_offset - kg_lib.NUM_SPECIAL) // 2,
                            model.config.vocab_size - entity_offset)

  def loss_fn(params):
    totals, per_branch = [], {}
    for i, (targets, inputs, mask3) in enumerate(prepared_streams):
      rngs = {'dropout': jax.random.fold_in(dropout_rng, i) if i else dropout_rng}
      if config.loss.typed_head:  # each step scores and normalises over what the grammar allows
        groups = grammar.head_groups(targets.shape[1], space)
        scored = losses.typed_token_loss(
            model.apply({'params': params}, inputs, train=True, rngs=rngs, heads=groups), groups,
            targets, config.loss.label_smoothing, space, model.config.num_steps)  # [K, B, L] loss
      else:
        scored = model.apply({'params': params}, inputs, train=True, rngs=rngs)  # [K, B, L, V]
      stream_total, stream_losses = losses.path_loss(
          scored, targets, mask3, model.branches,
          epsilon=config.loss.label_smoothing, beta=config.loss.beta,
          token_keep=inputs['token_keep'])
      totals.append(stream_total)
      for b, v in stream_losses.items():
        per_branch[b] = per_branch.get(b, 0.0) + v
    return sum(totals), (per_branch, totals[1:])

  (loss, (per_branch, direct_totals)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  direct_loss = direct_totals[0] if direct_totals else None
  extra = {}
  if all(m in model.branches for m in MODALITIES):
    extra['modality_losses'] = {m: per_branch[m] for m in MODALITIES}
  updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
  metrics.update({f'loss_{b}': v for b, v in per_branch.items()})
  if direct_loss is not None:
    metrics['loss_direct_stream'] = direct_loss
  if extra:
    modulation = opt_state[0]
    metrics['modulation_ratio'] = modulation.ratio
    for i, m in enumerate(sorted(MODALITIES)):
      metrics[f'modulation_coeff_{m}'] = modulation.coefficients[i]
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


# ============================================================================ state
def state_layout(config: ml_collections.ConfigDict, model: nn.Module,
                 tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
                 ) -> tuple[Callable[[jax.Array], TrainState], TrainState, TrainState]:
  """`(init_fn, abstract_state, state_sharding)`: shapes from `jax.eval_shape`, nothing allocated.

  Parameter shardings come from the logical axis names on the parameters and `config.mesh.rules`;
  optimiser moments follow their parameters; scalars (step, modulation state) are replicated.
  """
  init_params, _, param_sharding = checkpoints.param_layout(config, model, mesh)

  def init(rng):
    params = init_params(rng)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params))

  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  replicated = sharding.replicated(mesh)
  opt_sharding = follow_params(abstract.opt_state, abstract.params, param_sharding, replicated)
  state_sharding = TrainState(step=replicated, params=param_sharding, opt_state=opt_sharding)
  return init, abstract, state_sharding


def follow_params(opt_state: Any, params: Any, param_sharding: Any, default: Any) -> Any:
  """Shardings for an optimiser state: a leaf whose key path ends with a parameter's path (and has its
  shape) gets that parameter's sharding (Adam's moments); any other leaf gets `default`.

  (`optax.tree_map_params` would do this, but it initialises the optimiser on a placeholder object,
  which the modulation transform rightly rejects because it cannot label it.)
  """
  by_path = {}
  for (path, leaf), shard in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                 jax.tree.leaves(param_sharding)):
    by_path[tuple(path)] = (leaf.shape, shard)

  def pick(path, leaf):
    for start in range(len(path)):
      match = by_path.get(tuple(path[start:]))
      if match is not None and match[0] == leaf.shape:
        return match[1]
    return default

  return jax.tree_util.tree_map_with_path(pick, opt_state)


# ============================================================================ loop
def run_steps(one_step: Callable, state: TrainState, batches: Mapping[str, jax.Array],
              table: Mapping[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict]:
  """`one_step` over the leading axis of `batches` (`lax.scan`): k optimisation steps in one call,
  whose buffers XLA allocates once. Every step draws the randomness of its own step number, so the
  result equals k single calls. Returns the state and each step's metrics `[k]`."""
  return jax.lax.scan(lambda s, batch: one_step(s, batch, table, rng), state, batches)


def stacked_batches(batches: Iterator[dict[str, np.ndarray]], start: int, t: Any,
                    batch_sharding: NamedSharding, stacked: NamedSharding
                    ) -> Iterator[tuple[int, dict[str, jax.Array]]]:
  """`(k, global batch)` for the calls from step `start` to `t.num_steps`: k = `t.steps_per_call`
  steps stacked on a leading axis, fewer where a log, save or evaluation step comes first."""
  events = [e for e in (t.log_every, t.checkpoint_every, t.eval_every) if e]
  step = start
  while step < t.num_steps:
    k = min([t.steps_per_call, t.num_steps - step] + [e - step % e for e in events])
    if k == 1:
      yield 1, sharding.global_batch(next(batches), batch_sharding)
    else:
      group = [next(batches) for _ in range(k)]
      local = {key: np.stack([b[key] for b in group]) for key in group[0]}  # [k, B, ...]
      yield k, sharding.global_batch(local, stacked, batch_axis=1)
    step += k


def prefetch(items: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Keeps `size` items ahead: their host-to-device copies overlap the running step."""
  queue = collections.deque()
  for item in items:
    queue.append(item)
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def check_finite(pending: list[tuple[int, int, dict]], workdir: str, manager: Any
                 ) -> dict[str, float]:
  """Reads the metrics of the calls since the last check (one host sync per log/save/eval step,
  not per step); a NaN or infinite loss stops the run naming the step range it appeared in.

  Returns:
    The metrics of the last step, as floats.
  """
  values = jax.device_get([m for _, _, m in pending])
  for (first, k, _), m in zip(pending, values):
    losses = np.atleast_1d(np.asarray(m['loss']))
    if not np.all(np.isfinite(losses)):
      bad = first + 1 + int(np.flatnonzero(~np.isfinite(losses))[0])
      manager.wait_until_finished()
      good = manager.latest_step()
      raise NonFiniteLossError(
          f'loss is {float(losses[bad - first - 1])} at step {bad}; stopped without saving (steps '
          f'{first + 1}..{first + k} were checked together). ' + (
              f'The last good checkpoint is step {good} in {checkpoints.directory(workdir)}'
              if good is not None else f'No checkpoint was written in {workdir} yet.'))
  return {key: float(np.atleast_1d(np.asarray(v))[-1]) for key, v in values[-1].items()}


def direct_stream(config: ml_collections.ConfigDict, prepared_dir: str
                  ) -> tuple[dict[str, np.ndarray] | None, bool]:
  """`(direct trajectories or None, leave them out of the main stream)` for
  `train.direct_batch_size` (0: None, False). They stay in the main stream too when too few other
  trajectories remain for one batch per process (logged)."""
  size = config.train.direct_batch_size
  if not size:
    return None, False
  direct = input_pipeline.read_direct(prepared_dir)
  count = len(direct['head_token'])
  if not count:
    logging.warning('train.direct_batch_size=%d but %s holds no direct trajectory: no direct '
                    'stream', size, input_pipeline.trajectories_dir(prepared_dir))
    return None, False
  others = input_pipeline.trajectory_info(prepared_dir).num_examples - count
  local_batch = config.train.batch_size // jax.process_count()
  exclude = others // jax.process_count() >= local_batch
  logging.info('direct stream: %d direct trajectories, %d per step as 2-step sequences; %s', count,
               size, 'the main stream reads the other %d' % others if exclude else
               'they stay in the main stream too (only %d others, fewer than a batch)' % others)
  return direct, exclude


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices: list[jax.Device] | None = None,
                       on_metrics: Callable[[int, dict[str, float]], None] | None = None,
                       defaults: ml_collections.ConfigDict | None = None) -> dict[str, float]:
  """Trains to `config.train.num_steps`, resuming from the latest readable checkpoint.

  Args:
    config: the full config (configs/default.py).
    workdir: holds `prepared/` (from --mode=prepare); checkpoints and events are written here.
    devices: devices of the mesh (default: all).
    on_metrics: called as `on_metrics(step, metrics)` at every logging step.
    defaults: the default config (configs/default.py); lets a run resume whose saved config predates
      a key now at its default (`checkpoints.check_resume_config`).

  Returns:
    The metrics of the last logging step (empty when there was nothing left to train).

  Raises:
    config_check.ConfigError: a config value out of range (before anything is built).
    files.WorkdirLockedError: another process trains or prepares in `workdir`.
    checkpoints.CheckpointMismatchError: the checkpoints belong to another vocabulary or model.
    NonFiniteLossError: the loss became NaN or infinite (the message names the step).
  """
  config_check.validate(config)
  sharding.maybe_initialize_distributed(config.mesh)
  with contextlib.ExitStack() as stack:
    files.ensure_workdir(workdir)
    if jax.process_index() == 0:
      stack.enter_context(files.workdir_lock(workdir, 'train'))
    return _train(config, workdir, devices, on_metrics, defaults)


def _train(config: ml_collections.ConfigDict, workdir: str, devices: list[jax.Device] | None,
           on_metrics: Callable[[int, dict[str, float]], None] | None,
           defaults: ml_collections.ConfigDict | None) -> dict[str, float]:
  prepared_dir = os.path.join(workdir, 'prepared')
  kg = kg_lib.KnowledgeGraph.load(prepared_dir)
  checkpoints.check_resume_config(config, workdir, defaults)
  model = imkga.build_model(config, kg.space.num_tokens)
  tx = make_optimizer(config, model.branches)
  mesh = sharding.make_mesh(config.mesh, devices)
  batch_sharding = sharding.batch_sharding(mesh, config.mesh.rules)
  replicated = sharding.replicated(mesh)

  global_batch = config.train.batch_size
  if global_batch % jax.process_count() or global_batch % mesh.shape[config.mesh.axes[0]]:
    raise ValueError(f'train.batch_size={global_batch} must be divisible by the number of processes '
                     f'({jax.process_count()}) and by the data axis ({mesh.shape[config.mesh.axes[0]]})')
  if config.train.direct_batch_size % mesh.shape[config.mesh.axes[0]]:
    raise ValueError(f'train.direct_batch_size={config.train.direct_batch_size} must be divisible by '
                     f'the data axis ({mesh.shape[config.mesh.axes[0]]})')
  table = jax.device_put(prepared.load_features(
      prepared_dir, kg.num_entities, config.features.fig_dim, config.features.ocr_dim,
      required_by=config.model.variant if model.config.use_features else None,
      max_mentions=config.features.max_mentions, entity_offset=kg.space.entity_offset), replicated)
  direct, exclude_direct = direct_stream(config, prepared_dir)
  if direct is not None:
    table = dict(table, direct=jax.device_put(direct, replicated))

  init, abstract, state_sharding = state_layout(config, model, tx, mesh)
  manager = checkpoints.manager(workdir, checkpoints.MAX_TO_KEEP)
  restored = checkpoints.restore_state(
      workdir, manager, kg, checkpoints.restore_target(abstract.params, state_sharding.params),
      checkpoints.restore_target(abstract.opt_state, state_sharding.opt_state))
  if restored is not None:
    start_step, params, opt_state = restored
    state = TrainState(step=jax.device_put(jnp.asarray(start_step, jnp.int32), replicated),
                       params=params, opt_state=opt_state)
    logging.info('resumed from checkpoint step %d', start_step)
  else:
    start_step = 0
    state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(config.seed))
  one_step = functools.partial(train_step, model=model, tx=tx, config=config,
                               entity_offset=kg.space.entity_offset,
                               direct_sharding=batch_sharding)
  stacked = NamedSharding(mesh, P(None, *batch_sharding.spec))  # [k, batch, ...]
  step_fns = {}

  def step_fn(k):
    """The jitted run of k steps (one `train_step` when k = 1, a `lax.scan` of them otherwise)."""
    if k not in step_fns:
      if k == 1:
        step_fns[k] = jax.jit(one_step, in_shardings=(state_sharding, batch_sharding, replicated,
                                                      replicated),
                              out_shardings=(state_sharding, replicated), donate_argnums=(0,))
      else:
        step_fns[k] = jax.jit(functools.partial(run_steps, one_step),
                              in_shardings=(state_sharding, stacked, replicated, replicated),
                              out_shardings=(state_sharding, replicated), donate_argnums=(0,))
    return step_fns[k]

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config_check.flatten(config).items()
                          if isinstance(v, (int, float, str, bool))})
  schedule = learning_rate_schedule(config)
  t = config.train
  batches = input_pipeline.create_train_iterator(prepared_dir, config, skip_batches=start_step,
                                                 exclude_direct=exclude_direct)
  selector = (evaluator.ValidSelector(config, workdir, kg, model, table) if t.eval_every
              else None)
  rng = jax.random.key(config.seed)
  last, pending = {}, []
  timer_start, timer_steps = time.time(), 0
  bar = tqdm(total=t.num_steps, initial=start_step, desc='train', unit='step',
             disable=jax.process_index() > 0)
  step = start_step
  for k, batch in prefetch(stacked_batches(batches, step, t, batch_sharding, stacked)):
    state, metrics = step_fn(k)(state, batch, table, rng)  # no host transfer here
    if pending:  # one call queued behind the running one, not all: the bar counts finished steps
      jax.block_until_ready(pending[-1][2])  # a wait, no transfer: the running call stays fed
      bar.update(pending[-1][1])
    pending.append((step, k, metrics))
    step += k
    timer_steps += k
    events = [e for e, every in (('log', t.log_every), ('save', t.checkpoint_every),
                                 ('eval', t.eval_every)) if every and step % every == 0]
    if events or step == t.num_steps:
      last = check_finite(pending, workdir, manager)  # the metrics of the last step
      bar.update(k)
      pending = []
    if 'log' in events or step == t.num_steps:
      elapsed = time.time() - timer_start
      last['learning_rate'] = float(schedule(step - 1))
      last['trajectories_per_second'] = timer_steps * global_batch / max(elapsed, 1e-9)
      writer.write_scalars(step, last)
      if on_metrics is not None:
        on_metrics(step, last)
      bar.set_postfix(loss=f'{last["loss"]:.4f}')
      timer_start, timer_steps = time.time(), 0
    if 'save' in events or step == t.num_steps:
      checkpoints.save(manager, step, state.params, state.opt_state, kg)
    if selector is not None and ('eval' in events or step == t.num_steps):
      stop = selector.evaluate(step, state.params)
      writer.write_scalars(step, {'valid_mrr_selection': selector.history[-1]['valid_mrr']})
      if stop:
        if step % t.checkpoint_every:
          checkpoints.save(manager, step, state.params, state.opt_state, kg)
        logging.info('no better valid MRR for %d evaluations: stopped at step %d (best: step %d, '
                     'valid MRR %.4f)', t.patience, step, selector.best_step, selector.best_mrr)
        break
    if step >= t.num_steps:
      break
  bar.close()
  manager.wait_until_finished()
  writer.flush()
  return last
