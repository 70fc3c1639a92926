"""A trained IMKGA model as a scorer: its decoder built from the config, splits ranked, the weight of
the direct answers against the paths chosen on the valid split, single queries answered.

Example:
  >>> evaluator = Evaluator.restore(config, workdir)                       # doctest: +SKIP
  >>> evaluator.split('valid', choose_weight=True)['selection']           # doctest: +SKIP
  >>> evaluator.predict('product_0001|ships_from')[0]['path']              # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from imkga_jax import decode
from imkga_jax import explain
from imkga_jax import files
from imkga_jax import grammar
from imkga_jax import kg as kg_lib
from imkga_jax import prepared as prepared_lib
from imkga_jax import priors as priors_lib
from imkga_jax import ranking
from imkga_jax import rtg as rtg_lib
from imkga_jax import step_models


def branch_step_model(model: Any, config: ml_collections.ConfigDict):
  """`(params, context) -> StepModel` of the branch `decode.branch` alone (only what decoding
  reads runs)."""
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  branch = model.branches[step_models.branch_index(tuple(model.branches), config.decode.branch)]
  return lambda params, context: step_models.imkga_step_model(
      *imkga.select_branch(model, params, branch), context)


def build_decoder(model: Any, kg: kg_lib.KnowledgeGraph, config: ml_collections.ConfigDict,
                  prepared_dir: str, batch_sharding: NamedSharding | None = None
                  ) -> decode.DecodeFn:
  """The jitted decoder of an IMKGA model for `config.decode`; the direct form is offered to the
  queries preparation trained it for (`prepared.direct_table`)."""
  from imkga_jax import sharding  # pylint: disable=g-import-not-at-top
  d = config.decode
  shards = 1 if batch_sharding is None else sharding.batch_shards(batch_sharding)
  if d.batch_size % shards:
    raise ValueError(f'decode.batch_size={d.batch_size} must be divisible by the {shards} '
                     'devices of the data axis; set --config.decode.batch_size')
  return decode.make_decode_fn(
      branch_step_model(model, config), kg.space, beam_size=d.beam_size, max_len=prepared_lib.config_sequence_length(config),
      rtg_constants=rtg_lib.constants_from_config(config, kg.space),
      constraint=grammar.GraphConstraint.from_kg(kg) if d.constrained else None,
      finish_width=d.finish_width, complete_last=d.complete_last,
      complete_direct=d.complete_direct, aggregation=d.aggregation,
      length_norm=d.length_norm, direct=prepared_lib.direct_table(kg, prepared_dir),
      batch_sharding=batch_sharding)


# Weights of the direct answers against the paths tried on the valid split (`decode.combine`):
# None is the model's own weighting (its aggregation over every path, the direct form included).
DIRECT_WEIGHTS = (None, 1.0, 0.98, 0.95, 0.9, 0.8, 0.5, 0.0)


def direct_weight_of(value: str) -> float | None:
  """`decode.direct_weight` ('model', 'valid' or a number in [0, 1]) -> a weight; None for 'model'
  and, until the valid split has chosen one, for 'valid'."""
  if value in ('model', 'valid'):
    return None
  try:
    weight = float(value)
  except ValueError:
    weight = -1.0
  if not 0.0 <= weight <= 1.0:
    raise ValueError(f"decode.direct_weight={value!r}: expected 'valid', 'model' or a number in "
                     '[0, 1]')
  return weight


class Evaluator:
  """A model ready to decode (`restore` builds one from a workdir): ranks splits, answers queries."""

  def __init__(self, config: ml_collections.ConfigDict, kg: kg_lib.KnowledgeGraph, params: Any,
               table: Mapping[str, Any], decode_fn: decode.DecodeFn, step: int = 0):
    self.config, self.kg, self.params, self.table, self.decode, self.step = (
        config, kg, params, table, decode_fn, step)
    self.priors = priors_lib.Priors.from_names(kg, config.ranking.priors)
    self.direct_weight = direct_weight_of(config.decode.direct_weight)

  @classmethod
  def restore(cls, config: ml_collections.ConfigDict, workdir: str) -> 'Evaluator':
    """The selected checkpoint of `workdir` (`checkpoints.restore_params`: the best on valid when
    training selected one, else the latest), its prepared KG and features, and the decoder."""
    from imkga_jax import checkpoints, sharding  # pylint: disable=g-import-not-at-top
    prepared = os.path.join(workdir, 'prepared')
    kg = kg_lib.KnowledgeGraph.load(prepared)
    model, params, step = checkpoints.restore_params(config, workdir, kg)
    f = config.features
    table = prepared_lib.load_features(prepared, kg.num_entities, f.fig_dim, f.ocr_dim,
                                       max_mentions=f.max_mentions,
                                       entity_offset=kg.space.entity_offset)
    mesh = sharding.make_mesh(config.mesh)
    decode_fn = build_decoder(model, kg, config, prepared,
                              sharding.batch_sharding(mesh, config.mesh.rules))
    return cls(config, kg, params, table, decode_fn, step)

  def decode_batch(self, queries: np.ndarray) -> decode.DecodeResult:
    return jax.device_get(self.decode(self.params, self.table, jnp.asarray(queries, jnp.int32)))

  def combined(self, result: decode.DecodeResult, weight: float | None) -> np.ndarray:
    return decode.combine(np.asarray(result.direct), np.asarray(result.paths),
                          self.config.decode.aggregation, weight)

  def score(self, queries: np.ndarray) -> tuple[np.ndarray, decode.DecodeResult]:
    """`ranking.ScoreFn`: entity scores of `[b, 3]` queries, and the decode result (for paths)."""
    result = self.decode_batch(queries)
    return self.combined(result, self.direct_weight), result

  def split(self, split: str, explain_rows: list[dict[str, Any]] | None = None,
            choose_weight: bool = False, max_queries: int | None = None,
            path_stats: bool = True, desc: str = '') -> dict[str, Any]:
    """Metrics of one split: tail, head, both, by relation, and path statistics (`paths`).

    With `choose_weight` every weight of `DIRECT_WEIGHTS` ranks the split (one decoding), the one
    with the best MRR (both directions) becomes `self.direct_weight`, and the metrics are its own;
    `selection` then lists the MRR of each. `max_queries` (None: `decode.max_queries`) ranks a
    seeded subset of that many triples per direction; without `path_stats` (and `explain_rows`)
    only the ranks are computed (`paths` is then absent).
    """
    d, kg = self.config.decode, self.kg
    weights = DIRECT_WEIGHTS if choose_weight else (self.direct_weight,)
    per_batch = path_stats or explain_rows is not None  # anything beyond the ranks to collect
    edges = explain.TrainEdges(kg) if per_batch else None
    stats = {w: explain.PathStats() for w in weights}
    rows: dict[Any, list[dict[str, Any]]] = {w: [] for w in weights}

    def score_fn(queries):
      result = self.decode_batch(queries)
      return {w: self.combined(result, w) for w in weights}, result

    def on_batch(direction, queries, scores, ranks, result):
      carried = explain.support(result.score, result.best)
      for w in weights:
        stats[w].add(edges, kg.space, queries[:, 0], scores[w], result.path)
        if explain_rows is not None:
          rows[w].extend(explain.explanation_row(
              kg, split, direction, query, ranks[w][i],
              explain.answers(kg, scores[w][i], result.path[i], d.num_explanations, carried[i]))
              for i, query in enumerate(queries))

    ranked = ranking.rank_split(score_fn, kg, split, batch_size=d.batch_size,
                                max_queries=d.max_queries if max_queries is None else max_queries,
                                priors=self.priors, desc=desc,
                                on_batch=on_batch if per_batch else None)
    summaries = {w: ranking.summarize(kg, ranked[w]) for w in weights}
    chosen = max(weights, key=lambda w: summaries[w]['both']['mrr']) if choose_weight else weights[0]
    out = dict(summaries[chosen], **({'paths': stats[chosen].as_dict()} if path_stats else {}))
    if choose_weight:
      self.direct_weight = chosen
      out['selection'] = {'direct_weight': 'model' if chosen is None else chosen,
                          'mrr_by_direct_weight': {'model' if w is None else str(w):
                                                   summaries[w]['both']['mrr'] for w in weights}}
    if explain_rows is not None:
      explain_rows.extend(rows[chosen])
    return out

  def predict(self, query: str) -> list[dict[str, Any]]:
    """The best `decode.num_explanations` answers of `'HEAD|RELATION'`, each `{rank, entity, score,
    path, hops, support, known}` (`known`: a true triple of any split)."""
    kg = self.kg
    head, relation = parse_query(kg, query)
    queries = np.tile(np.asarray([[head, relation, 0]], np.int32), (self.config.decode.batch_size, 1))
    scores, result = self.score(queries)
    scores = self.priors.apply(scores[:1], queries[:1, 1])
    rows = explain.answers(kg, scores[0], result.path[0], self.config.decode.num_explanations,
                           explain.support(result.score[0], result.best[0]))
    known = {kg.entities[t] for t in kg.filter_index().get((head, relation), ())}
    return [dict(a, rank=i + 1, known=a['entity'] in known) for i, a in enumerate(rows)]


def parse_query(kg: kg_lib.KnowledgeGraph, query: str) -> tuple[int, int]:
  """`'HEAD|RELATION'` in names (RELATION may end in `_inv`) -> (head id, relation id in [0, 2R))."""
  parts = query.split('|')
  if len(parts) != 2 or not all(p.strip() for p in parts):
    raise ValueError(f"--query={query!r}: expected 'HEAD|RELATION' in names, e.g. "
                     f"'{kg.entities[0]}|{kg.relations[0]}'")
  return kg.entity_id(parts[0].strip()), kg.relation_id(parts[1].strip())


class ValidSelector:
  """Model selection on the valid split during training (`train.eval_every`, `train.patience`).

  Every evaluation ranks a seeded subset of the valid split (`train.select_queries` triples per
  direction, the same ones each time) exactly as evaluation ranks it: beam search with the paths
  and the direct answers, the ranking priors, and, with `decode.direct_weight='valid'`, every
  weight of `DIRECT_WEIGHTS` (the best one's MRR counts). It keeps the parameters with the best MRR
  (both directions) in `WORKDIR/checkpoints_best/`, which evaluation restores, and asks to stop
  after `train.patience` evaluations without a better one. The history (MRR and chosen weight per
  evaluation) is in `WORKDIR/selection.json` (so a resumed run keeps counting).
  """
  FILE = 'selection.json'

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, kg: kg_lib.KnowledgeGraph,
               model: Any, table: Mapping[str, jax.Array]):
    self.config, self.workdir, self.kg = config, workdir, kg
    decode_fn = build_decoder(model, kg, config, os.path.join(workdir, 'prepared'))
    self._evaluator = Evaluator(config, kg, None, table, decode_fn)
    self.path = os.path.join(workdir, self.FILE)
    saved = {}
    if os.path.exists(self.path):
      with open(self.path, encoding='utf-8') as f:
        saved = json.load(f)
    self.history = saved.get('history', [])
    self.best_step, self.best_mrr = saved.get('best_step'), saved.get('best_mrr', -1.0)

  def evaluate(self, step: int, params: Any) -> bool:
    """Ranks the valid subset with `params` of `step`; True when training should stop."""
    d, ev = self.config.decode, self._evaluator
    ev.params, ev.direct_weight = params, direct_weight_of(d.direct_weight)
    metrics = ev.split('valid', choose_weight=d.direct_weight == 'valid',
                       max_queries=self.config.train.select_queries, path_stats=False,
                       desc='select')
    mrr = float(metrics['both']['mrr'])
    weight = metrics.get('selection', {}).get('direct_weight', d.direct_weight)
    self.history.append({'step': int(step), 'valid_mrr': mrr, 'direct_weight': weight})
    logging.info('step %d: valid MRR %.4f (direct weight %s; best %.4f)', step, mrr, weight,
                 self.best_mrr)
    if mrr > self.best_mrr:
      self.best_step, self.best_mrr = int(step), mrr
      from imkga_jax import checkpoints  # pylint: disable=g-import-not-at-top
      checkpoints.save_best(self.workdir, step, params, self.kg, mrr)  # every process: orbax syncs
    if jax.process_index() == 0:
      files.write_json(self.path, {'history': self.history, 'best_step': self.best_step,
                                   'best_mrr': self.best_mrr})
    since = [h for h in self.history if h['step'] > self.best_step]
    return bool(self.config.train.patience) and len(since) >= self.config.train.patience
