"""Training and evaluation of the embedding baselines (TransE, DistMult, ComplEx, RotatE, TuckER).

Standard recipe (Lacroix et al. 2018; Dettmers et al. 2018; Ruffinelli et al. 2020):

* reciprocal relations: training uses `kg.with_inverses('train')`, so head prediction `(?, r, t)` is
  the tail query `(t, r + R, ?)`; evaluation asks both directions the same way;
* 1-N scoring against every entity, with either
  - `baseline.training='1vsall'`: one example per train triple, softmax cross entropy with label
    smoothing, or
  - `baseline.training='kvsall'`: one example per distinct train query `(h, r)` with all its known
    train answers as targets, binary cross entropy with label smoothing (ConvE / TuckER);
* or negative sampling, `baseline.training='negsample'` (TransE / RotatE papers): one example per
  train triple scored against `baseline.num_negatives` uniformly drawn entities of its own, with
  RotatE's self-adversarial loss `-log σ(s⁺) - Σ_i softmax(α s⁻)_i log σ(-s⁻_i)`; its cost does not
  grow with the number of entities, which matters for the L1 distance models on large graphs;
* Adam, optional N3 (ComplEx/DistMult) or L2 regularisation of the batch's embeddings, dropout;
* model selection on the validation MRR (both directions) every `baseline.eval_every` epochs, with
  patience; the test metrics are those of the best validation checkpoint (kept in memory).

Ranks are computed by the project's shared filtered ranker (`imkga_jax.ranking`, with the priors of
`config.ranking.priors`), so the baselines and IMKGA-SM are measured by the same code. Outputs in WORKDIR: `metrics.json`
(`{"valid"|"test": {"tail"|"head"|"both": {mrr, hits@1, hits@3, hits@10, reached}}}`),
`metrics_by_relation.json` (`{"test": {relation: {"tail"|"head"|"both": metrics}}}`, IMKGA-SM's
layout, `ranking.metrics_by_relation`) and `baseline_history.json` (loss and validation MRR per
evaluation).

Run: `python -m imkga_jax.baselines.train --config=configs/baselines.py:complex,umls
      --workdir=/tmp/complex_umls` (UMLS ships in the package: `data.name`, imkga_jax/datasets.py)
"""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from imkga_jax import datasets
from imkga_jax import files
from imkga_jax import kg as kg_lib
from imkga_jax import priors as priors_lib
from imkga_jax import ranking
from imkga_jax import readers
from imkga_jax.baselines import models

METRICS_FILE = 'metrics.json'
BY_RELATION_FILE = 'metrics_by_relation.json'
HISTORY_FILE = 'baseline_history.json'
TRAINING_MODES = ('1vsall', 'kvsall', 'negsample')
REGULARIZERS = {'none': 0, 'l2': 2, 'n3': 3}  # name -> power of the per-coordinate modulus.


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training; `batch_stats` is `{}` for models without batch norm."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState


def load_graph(config: ml_collections.ConfigDict, workdir: str) -> kg_lib.KnowledgeGraph:
  """The prepared KG in `WORKDIR/prepared`, or else the raw KG at `config.data.root` or of
  `config.data.name` (logged)."""
  prepared = os.path.join(workdir, 'prepared')
  if os.path.exists(os.path.join(prepared, kg_lib.VOCAB_FILE)):
    return kg_lib.KnowledgeGraph.load(prepared)
  root = '' if config.data.synthetic else datasets.root_from_config(config.data)
  if root:
    logging.info('%s has no prepared KG; reading the raw KG at %s', prepared, root)
    return readers.load_kg_from_config(config.data, root)
  raise FileNotFoundError(f'{prepared}/{kg_lib.VOCAB_FILE} is missing and neither config.data.root '
                          'nor config.data.name names a raw KG: run `launch.py --mode=prepare` with '
                          'this workdir first, or pass --config.data.name=NAME or '
                          '--config.data.root=PATH/TO/TRIPLES')


def build(config: ml_collections.ConfigDict, graph: kg_lib.KnowledgeGraph) -> nn.Module:
  """The model named by `config.baseline.model` with its hyper-parameters from the config."""
  b = config.baseline
  hyper = b.hyper.to_dict() if b.get('hyper') else {}
  return models.build_model(b.model, graph.num_entities, 2 * graph.num_relations, b.dim, **hyper)


def kvsall_examples(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Distinct queries `[q, 2]` of `[n, 3]` triples with their answers in CSR form (indptr, tails)."""
  index = kg_lib.build_answer_index(train)
  queries = np.asarray(sorted(index), np.int32).reshape(-1, 2)
  indptr = np.zeros(len(queries) + 1, np.int64)
  indptr[1:] = np.cumsum([len(index[tuple(q)]) for q in queries])
  tails = np.concatenate([index[tuple(q)] for q in queries]).astype(np.int32)
  return queries, indptr, tails


def _multi_hot(rows: np.ndarray, indptr: np.ndarray, tails: np.ndarray, num_entities: int):
  """`[len(rows), E]` float32 with 1 at each row's answers."""
  labels = np.zeros((len(rows), num_entities), np.float32)
  counts = indptr[rows + 1] - indptr[rows]
  row_ids = np.repeat(np.arange(len(rows)), counts)
  cols = np.concatenate([tails[indptr[r]:indptr[r + 1]] for r in rows])
  labels[row_ids, cols] = 1.0
  return labels


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """Returns the jitted `train_step(state, batch, rng) -> (state, loss)`.

  `batch` holds `heads [B]`, `relations [B]`, `tails [B]` and, for KvsAll, `labels [B, E]` (`tails`
  is then one answer per row, used only by the regulariser) or, for negative sampling,
  `negatives [B, K]` entity ids.
  """
  b = config.baseline
  power = REGULARIZERS[b.regularizer]
  smoothing = b.label_smoothing

  def loss_fn(params, state, batch, rng):
    variables = {'params': params}
    mutable = []
    if state.batch_stats:
      variables['batch_stats'] = state.batch_stats
      mutable = ['batch_stats']
    candidates = None
    if 'negatives' in batch:  # Each row's own answer, then its negatives.
      candidates = jnp.concatenate([batch['tails'][:, None], batch['negatives']], 1)  # [B, 1 + K]
    scores, updates = model.apply(variables, batch['heads'], batch['relations'], train=True,
                                  candidates=candidates, rngs={'dropout': rng},
                                  mutable=mutable)  # [B, E] or [B, 1 + K]
    num_entities = scores.shape[-1]
    if 'negatives' in batch:  # Self-adversarial negative sampling (Sun et al. 2019).
      positive, negative = scores[:, 0], scores[:, 1:]  # [B], [B, K]
      weights = jax.lax.stop_gradient(jax.nn.softmax(b.adversarial_temperature * negative, -1))
      loss = -0.5 * (jax.nn.log_sigmoid(positive).mean()
                     + jnp.sum(weights * jax.nn.log_sigmoid(-negative), -1).mean())
    elif 'labels' in batch:  # KvsAll: binary cross entropy against all known answers.
      labels = (1.0 - smoothing) * batch['labels'] + smoothing / num_entities  # [B, E]
      loss = optax.sigmoid_binary_cross_entropy(scores, labels).mean()
    else:  # 1vsAll: softmax cross entropy against the one answer.
      labels = optax.smooth_labels(jax.nn.one_hot(batch['tails'], num_entities), smoothing)
      loss = optax.softmax_cross_entropy(scores, labels).mean()
    if power:
      factors = model.apply(variables, batch['heads'], batch['relations'], batch['tails'],
                            method='factors')
      reg = sum(jnp.sum(f ** power) for f in factors) / scores.shape[0]
      loss = loss + b.reg_weight * reg
    return loss, updates.get('batch_stats', {})

  @functools.partial(jax.jit, donate_argnums=(0,))
  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), loss

  return train_step


def make_scorer(model: nn.Module) -> Callable:
  """Jitted `score(params, batch_stats, heads [B], relations [B]) -> [B, E]` in inference mode."""
  @jax.jit
  def score(params, batch_stats, heads, relations):
    variables = {'params': params}
    if batch_stats:
      variables['batch_stats'] = batch_stats
    return model.apply(variables, heads, relations, train=False)
  return score


def score_fn(score: Callable, state: TrainState) -> ranking.ScoreFn:
  """The trained model as the shared ranker's `score_fn` (`[b, 3]` queries -> `[b, E]` scores)."""
  return lambda queries: score(state.params, state.batch_stats, queries[:, 0], queries[:, 1])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.baseline.model` on the KG of `workdir` and writes its metrics.

  Args:
    config: a config from `configs/baselines.py` (needs the `baseline` section and `seed`).
    workdir: folder with `prepared/` (or a raw KG at `config.data.root` / of `config.data.name`);
      outputs go here.

  Returns:
    The metrics dict also written to `WORKDIR/metrics.json`, plus `'by_relation'` (test queries
    per relation) and `'train_seconds'`.

  Example:
    >>> from configs import baselines                                 # doctest: +SKIP
    >>> config = baselines.get_config('complex,umls')                 # doctest: +SKIP
    >>> train_and_evaluate(config, '/tmp/complex')['test']['both']    # doctest: +SKIP
  """
  b = config.baseline
  if b.training not in TRAINING_MODES:
    raise ValueError(f'baseline.training must be one of {TRAINING_MODES}, got {b.training!r}')
  if b.regularizer not in REGULARIZERS:
    raise ValueError(f'baseline.regularizer must be one of {sorted(REGULARIZERS)}, '
                     f'got {b.regularizer!r}')
  os.makedirs(workdir, exist_ok=True)
  graph = load_graph(config, workdir)
  model = build(config, graph)
  train = graph.with_inverses('train')  # [2n, 3]
  if b.training == 'kvsall':
    queries, indptr, answers = kvsall_examples(train)
  else:
    queries, indptr, answers = train[:, :2], None, None
  num_examples = len(queries)
  batch_size = min(b.batch_size, num_examples)
  steps_per_epoch = max(1, num_examples // batch_size)  # The last partial batch is reshuffled away.

  rng = jax.random.key(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)
  dummy = jnp.zeros((2,), jnp.int32)
  variables = model.init({'params': init_rng, 'dropout': init_rng}, dummy, dummy)
  tx = optax.adam(b.learning_rate)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                     batch_stats=variables.get('batch_stats', {}),
                     opt_state=tx.init(variables['params']))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('baseline %s: %d entities, %d relations (x2), %d train examples (%s), %d params',
               b.model, graph.num_entities, graph.num_relations, num_examples, b.training, num_params)
  train_step = make_train_step(model, tx, config)
  score = make_scorer(model)
  np_rng = np.random.default_rng(config.seed)

  history, best, best_mrr, bad_evals = [], None, -1.0, 0
  start_time = time.time()
  bar = tqdm.trange(b.num_epochs, desc=f'{b.model}', unit='epoch', disable=not b.progress_bar)
  for epoch in bar:
    order = np_rng.permutation(num_examples)
    losses = []
    for s in range(steps_per_epoch):
      rows = order[s * batch_size:(s + 1) * batch_size]
      batch = {'heads': queries[rows, 0], 'relations': queries[rows, 1]}
      if b.training == 'kvsall':
        batch['labels'] = _multi_hot(rows, indptr, answers, graph.num_entities)
        batch['tails'] = answers[indptr[rows]]
      else:
        batch['tails'] = train[rows, 2]
      if b.training == 'negsample':
        batch['negatives'] = np_rng.integers(0, graph.num_entities, (len(rows), b.num_negatives),
                                             dtype=np.int32)
      state, loss = train_step(state, batch, dropout_rng)
      losses.append(loss)
    epoch_loss = float(np.mean(jax.device_get(losses)))
    if not np.isfinite(epoch_loss):
      raise FloatingPointError(f'baseline {b.model}: loss is {epoch_loss} in epoch {epoch + 1} '
                               f'(step {int(state.step)}); lower baseline.learning_rate')
    if (epoch + 1) % b.eval_every == 0 or epoch + 1 == b.num_epochs:
      valid = ranking.summarize(graph, ranking.rank_split(
          score_fn(score, state), graph, 'valid', batch_size=b.eval_batch_size))
      valid_mrr = valid['both']['mrr']
      history.append({'epoch': epoch + 1, 'step': int(state.step), 'loss': epoch_loss,
                      'valid_mrr': valid_mrr, 'seconds': time.time() - start_time})
      bar.set_postfix(loss=f'{epoch_loss:.4f}', valid_mrr=f'{valid_mrr:.3f}')
      logging.info('%s epoch %d loss %.4f valid MRR %.4f', b.model, epoch + 1, epoch_loss, valid_mrr)
      if valid_mrr > best_mrr:
        best = jax.tree.map(jnp.copy, state)  # The next step donates `state`.
        best_mrr, bad_evals = valid_mrr, 0
      else:
        bad_evals += 1
        if b.patience and bad_evals >= b.patience:
          logging.info('%s: no better valid MRR for %d evaluations; stopping after epoch %d',
                       b.model, bad_evals, epoch + 1)
          break
  train_seconds = time.time() - start_time

  metrics, priors = {}, priors_lib.Priors.from_names(graph, config.ranking.priors)
  for split in ('valid', 'test'):
    metrics[split] = ranking.summarize(graph, ranking.rank_split(
        score_fn(score, best), graph, split, batch_size=b.eval_batch_size,
        max_queries=b.max_queries, priors=priors))
  by_relation = metrics['test'].pop('by_relation')
  metrics['valid'].pop('by_relation')
  files.write_json(os.path.join(workdir, METRICS_FILE), metrics)
  files.write_json(os.path.join(workdir, BY_RELATION_FILE), {'test': by_relation})
  files.write_json(os.path.join(workdir, HISTORY_FILE), history)
  logging.info('%s test (both): %s; trained %.1f s', b.model, metrics['test']['both'], train_seconds)
  return dict(metrics, by_relation=by_relation, train_seconds=train_seconds)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  metrics = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  print(ranking.format_metrics({k: metrics[k] for k in ('valid', 'test')}))
  print(f'trained in {metrics["train_seconds"]:.1f} s')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'configs/baselines.py:MODEL[,BASE]',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Folder with prepared/ (or use --config.data.root).')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
