"""The step-0 classifier on its own: how IMKGA-SM's direct answers `t <eos>` fit and generalise.

The direct answers rank every entity from the logits at the first state token `C_0` (the query and
R̂ only). This script measures that classifier apart from the paths, on a prepared folder:

* `--workdir=W`: the parameters a run selected on valid (or `--step`), as `launch.py --mode=eval`
  restores them;
* `--train_steps=N`: a fresh model trained on the direct trajectories alone, with the real model,
  masks, label-smoothed path loss and optimiser chain of the config (`train.make_optimizer`, its
  schedule stretched over N steps, `train.direct_batch_size` trajectories per step), reported six
  times.

Ranks are `ranking.filtered_ranks`' (tie-averaged), as evaluation ranks them. Printed per report:
the raw MRR of the step-0 entity logits on 2,000 seeded train direct trajectories, beside its
ceiling (every answer of a train query ranked above every other entity, in some order: a query with
m answers averages H_m / m), and the filtered MRR on every valid triple, both directions, the direct
answers alone (the standard protocol; `--by_relation` splits both per query relation). Nothing is
written.

Usage (run `launch.py --mode=prepare` first, or point at any run's workdir):
  python benchmarks/direct_probe.py --config=configs/synthetic.py --prepared=W/prepared \
      --train_steps=1500
  python benchmarks/direct_probe.py --config=configs/synthetic.py --prepared=W/prepared \
      --train_steps=1500 --config.optim.learning_rate=1e-3
  python benchmarks/direct_probe.py --config=configs/structure.py:kinship --workdir=W --by_relation
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np
import optax
from ml_collections import config_flags

from imkga_jax import checkpoints
from imkga_jax import config_check
from imkga_jax import input_pipeline
from imkga_jax import kg as kg_lib
from imkga_jax import losses
from imkga_jax import masks
from imkga_jax import prepared as prepared_lib
from imkga_jax import ranking
from imkga_jax import train as train_lib
from imkga_jax.models import imkga

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a configs/*.py file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained run: read its selected parameters.')
_STEP = flags.DEFINE_integer('step', None, 'With --workdir: this checkpoint step instead.')
_PREPARED = flags.DEFINE_string('prepared', None, 'The prepared folder (default WORKDIR/prepared).')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 0, 'Train a fresh model on the direct '
                                    'trajectories alone for this many steps (0: --workdir).')
_BY_RELATION = flags.DEFINE_bool('by_relation', False, 'Also print both MRRs per query relation.')
_SAMPLE = 2000  # train direct trajectories ranked per report


class Probe:
  """The prepared folder's direct trajectories and valid triples, and the step-0 ranking of both."""

  def __init__(self, config, prepared_dir: str):
    self.kg = kg_lib.KnowledgeGraph.load(prepared_dir)
    space = self.kg.space
    self.offset = space.entity_offset
    f = config.features
    self.table = (prepared_lib.load_features(prepared_dir, self.kg.num_entities, f.fig_dim,
                                             f.ocr_dim, max_mentions=f.max_mentions,
                                             entity_offset=self.offset)
                  if imkga.ModelConfig.from_config(config, space.num_tokens).use_features else {})
    self.direct = input_pipeline.read_direct(prepared_dir)
    if not len(self.direct['head_token']):
      raise ValueError(f'{prepared_dir}: no direct trajectory `t <eos>` to probe '
                       '(trajectories.also_direct is "none"?)')
    d = self.direct
    # Train sample and the ceiling of its raw MRR (H_m / m for a query with m train answers).
    self.sample = np.random.default_rng(0).choice(len(d['head_token']),
                                                  min(_SAMPLE, len(d['head_token'])), replace=False)
    keys = d['head_token'].astype(np.int64) * space.num_tokens + d['relation_token']
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    answers = counts[inverse][self.sample]
    harmonic = np.cumsum(1.0 / np.arange(1, answers.max() + 1))
    self.ceiling = harmonic[answers - 1] / answers
    # Every valid triple, both directions, with its known answers (train + valid + test).
    self.valid = self.kg.with_inverses('valid')
    self.indptr, self.known = self.kg.filter_csr(self.valid[:, :2])
    r_good = float(config.rtg.r_good)
    self.valid_inputs = self._inputs(
        (self.valid[:, 0] + self.offset).astype(np.int32),
        space.relation_token(self.valid[:, 1]).astype(np.int32),
        np.full((len(self.valid), 2), r_good, np.float32))

  def _inputs(self, head_token, relation_token, rtg, actions=None):
    x = {'head_token': head_token, 'relation_token': relation_token, 'rtg': rtg,
         'actions': (actions if actions is not None else
                     np.tile(np.asarray([[0, kg_lib.EOS]], np.int32), (len(head_token), 1)))}
    if self.table:
      x.update(prepared_lib.head_features(self.table, head_token - self.offset))
    return x

  def train_inputs(self, rows: np.ndarray, rtg_row: np.ndarray) -> dict:
    """Direct trajectories `rows` with their true-similarity (0) or target-unknown (1) R̂ row."""
    d = self.direct
    return self._inputs(d['head_token'][rows], d['relation_token'][rows],
                        d['rtg'][rows, rtg_row], d['actions'][rows])

  def report(self, entity_logits, label: str) -> None:
    """Prints the train raw and valid filtered MRR of `entity_logits(inputs) -> [q, E]`."""
    d = self.direct
    rows = self.sample
    train = entity_logits(self.train_inputs(rows, np.ones(len(rows), np.int64)))
    no_filter = np.zeros(len(rows) + 1, np.int64), np.zeros(0, np.int32)  # raw ranks
    train_rr = 1.0 / ranking.filtered_ranks(train, d['actions'][rows, 0] - self.offset, *no_filter)
    valid = np.concatenate([entity_logits({k: v[lo:lo + 1024] for k, v in
                                           self.valid_inputs.items()})
                            for lo in range(0, len(self.valid), 1024)])
    valid_rr = 1.0 / ranking.filtered_ranks(valid, self.valid[:, 2], self.indptr, self.known)
    print(f'{label}: train raw MRR {train_rr.mean():.3f} (ceiling {self.ceiling.mean():.3f}), '
          f'valid filtered MRR {valid_rr.mean():.3f} ({len(self.valid)} queries)', flush=True)
    if _BY_RELATION.value:
      train_rel = d['relation_token'][rows] - self.kg.space.relation_offset
      for r in np.unique(np.concatenate([train_rel, self.valid[:, 1]])):
        name = self.kg.relation_name(int(r))
        t, v = train_rel == r, self.valid[:, 1] == r
        tm = f'{train_rr[t].mean():.3f}/{self.ceiling[t].mean():.3f}' if t.any() else '—'
        vm = f'{valid_rr[v].mean():.3f}' if v.any() else '—'
        print(f'  {name:<30} train {tm:<13} ({t.sum():>4})  valid {vm} ({v.sum()})')


def entity_logits_fn(model, offset: int):
  """`(params, inputs) -> [q, E]`: the concat branch's step-0 logits of the entities, jitted."""
  @jax.jit
  def fn(params, inputs):
    return model.apply({'params': params}, inputs)[-1, :, 0, offset:]
  return fn


def train_alone(config, probe: Probe, steps: int) -> None:
  """Trains a fresh model on the direct trajectories alone and reports six times."""
  config.train.num_steps = steps  # the schedule spans the probe
  model = imkga.build_model(config, probe.kg.space.num_tokens)
  batch = config.train.direct_batch_size or config.train.batch_size
  params = jax.jit(model.init)(jax.random.key(config.seed),
                               probe.train_inputs(np.arange(2), np.ones(2, np.int64)))['params']
  tx = train_lib.make_optimizer(config, model.branches)
  opt_state = tx.init(params)
  modulated = all(m in model.branches for m in train_lib.MODALITIES)

  direct = jax.device_put(probe.direct)
  table = jax.device_put(probe.table)

  @jax.jit
  def step(params, opt_state, rng):
    draw_rng, mask_rng, dropout_rng = jax.random.split(rng, 3)
    # The draw of the train loop's direct stream: R̂ target-unknown with rtg.target_dropout.
    inputs = train_lib.direct_batch(direct, draw_rng, batch, config.rtg.target_dropout)
    if table:
      inputs.update(prepared_lib.head_features(table, inputs['head_token'] - probe.offset))
    masked, mask3 = masks.apply_masks(mask_rng, inputs, config.masks, train=True)

    def loss_fn(p):
      logits = model.apply({'params': p}, masked, train=True, rngs={'dropout': dropout_rng})
      return losses.path_loss(logits, inputs['actions'], mask3, model.branches,
                              epsilon=config.loss.label_smoothing, beta=config.loss.beta,
                              token_keep=masked['token_keep'])

    (loss, per_branch), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    extra = ({'modality_losses': {m: per_branch[m] for m in train_lib.MODALITIES}}
             if modulated else {})
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state, loss

  logits = entity_logits_fn(model, probe.offset)
  count = len(probe.direct['head_token'])
  start = time.time()
  for n in range(steps + 1):
    if n % max(steps // 6, 1) == 0 or n == steps:
      probe.report(lambda x: np.asarray(logits(params, x)),
                   f'step {n} ({n * batch / count:.1f} passes, {time.time() - start:.0f} s)')
    if n == steps:
      break
    params, opt_state, _ = step(params, opt_state,
                                jax.random.fold_in(jax.random.key(config.seed), n))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  config_check.validate(config)
  if not _WORKDIR.value and not (_PREPARED.value and _TRAIN_STEPS.value):
    raise app.UsageError('give --workdir (a trained run) or --prepared with --train_steps')
  prepared_dir = _PREPARED.value or os.path.join(_WORKDIR.value, 'prepared')
  probe = Probe(config, prepared_dir)
  if _TRAIN_STEPS.value:
    train_alone(config, probe, _TRAIN_STEPS.value)
    return
  model, params, step = checkpoints.restore_params(config, _WORKDIR.value, probe.kg,
                                                   step=_STEP.value)
  logits = entity_logits_fn(model, probe.offset)
  probe.report(lambda x: np.asarray(logits(params, x)), f'{_WORKDIR.value} step {step}')


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
