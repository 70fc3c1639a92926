"""Evaluation and prediction: decode with the latest checkpoint, rank, explain, write the files.

`run_evaluation` decodes every valid/test query in both directions with the jitted beam search
(`imkga_jax.decode`), ranks them with the shared filtered ranker (`imkga_jax.ranking`, priors of
`config.ranking.priors` applied) and writes `WORKDIR/metrics.json` (`{"valid"|"test": {"tail"|"head"|
"both": {mrr, hits@1, hits@3, hits@10, reached, queries}, "paths": {path_share, faithful_share}}}`),
`WORKDIR/metrics_by_relation.json` and `WORKDIR/explanations.jsonl` (the top
`decode.num_explanations` answers of each test query with their paths, `imkga_jax.explain`).

Example:
  $ python launch.py --config=configs/synthetic.py --workdir=W --mode=eval
  $ python launch.py --config=configs/synthetic.py --workdir=W --mode=predict \\
      --query='product_0001|ships_from'
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
from imkga_jax import run_summary
from imkga_jax import step_models

METRICS_FILE = 'metrics.json'
BY_RELATION_FILE = 'metrics_by_relation.json'
EXPLANATIONS_FILE = 'explanations.jsonl'
EVAL_STATE_FILE = 'eval_state.json'
def build_decoder(model: Any, kg: kg_lib.KnowledgeGraph, config: ml_collections.ConfigDict,
                  prepared_dir: str, batch_sharding: NamedSharding | None = None
                  ) -> decode.DecodeFn:
  """The jitted decoder of an IMKGA model for `config.decode`; the direct form is offered to the
  queries preparation trained it for (`prepared.direct_table`)."""
  from imkga_jax import sharding  # pylint: disable=g-import-not-at-top
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  d = config.decode
  branch = model.branches[step_models.branch_index(tuple(model.branches), d.branch)]
  shards = 1 if batch_sharding is None else sharding.batch_shards(batch_sharding)
  if d.batch_size % shards:
    raise ValueError(f'decode.batch_size={d.batch_size} must be divisible by the {shards} '
                     'devices of the data axis; set --config.decode.batch_size')
  return decode.make_decode_fn(
      # Only the branch decoding reads runs.
      lambda params, context: step_models.imkga_step_model(
          *imkga.select_branch(model, params, branch), context),
      kg.space, beam_size=d.beam_size, max_len=prepared_lib.config_sequence_length(config),
      rtg_constants=rtg_lib.constants_from_config(config, kg.space),
      constraint=grammar.GraphConstraint.from_kg(kg) if d.constrained else None,
      finish_width=d.finish_width, complete_last=d.complete_last, aggregation=d.aggregation,
      length_norm=d.length_norm, direct=prepared_lib.direct_table(kg, prepared_dir),
      batch_sharding=batch_sharding)


class Evaluator:
  """A model ready to decode (`restore` builds one from a workdir): ranks splits, answers queries."""

  def __init__(self, config: ml_collections.ConfigDict, kg: kg_lib.KnowledgeGraph, params: Any,
               table: Mapping[str, Any], decode_fn: decode.DecodeFn, step: int = 0):
    self.config, self.kg, self.params, self.table, self.decode, self.step = (
        config, kg, params, table, decode_fn, step)
    self.priors = priors_lib.Priors.from_names(kg, config.ranking.priors)

  @classmethod
  def restore(cls, config: ml_collections.ConfigDict, workdir: str) -> 'Evaluator':
    """The latest checkpoint of `workdir`, its prepared KG and features, and the decoder."""
    from imkga_jax import checkpoints, sharding  # pylint: disable=g-import-not-at-top
    prepared = os.path.join(workdir, 'prepared')
    kg = kg_lib.KnowledgeGraph.load(prepared)
    model, params, step = checkpoints.restore_params(config, workdir, kg)
    f = config.features
    table = prepared_lib.load_features(prepared, kg.num_entities, f.fig_dim, f.ocr_dim)
    mesh = sharding.make_mesh(config.mesh)
    decode_fn = build_decoder(model, kg, config, prepared,
                              sharding.batch_sharding(mesh, config.mesh.rules))
    return cls(config, kg, params, table, decode_fn, step)

  def score(self, queries: np.ndarray) -> tuple[np.ndarray, decode.DecodeResult]:
    """`ranking.ScoreFn`: entity scores of `[b, 3]` queries, and the decode result (for paths)."""
    result = jax.device_get(self.decode(self.params, self.table, jnp.asarray(queries, jnp.int32)))
    return result.score, result

  def split(self, split: str, explain_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metrics of one split: tail, head, both, by relation, and path statistics (`paths`)."""
    d, kg = self.config.decode, self.kg
    edges, stats = explain.TrainEdges(kg), explain.PathStats()

    def on_batch(direction, queries, scores, ranks, result):
      stats.add(edges, kg.space, queries[:, 0], scores, result.path)
      if explain_rows is not None:
        carried = explain.support(result.score, result.best)
        for i, query in enumerate(queries):
          explain_rows.append(explain.explanation_row(
              kg, split, direction, query, ranks[i],
              explain.answers(kg, scores[i], result.path[i], d.num_explanations, carried[i])))

    ranked = ranking.rank_split(self.score, kg, split, batch_size=d.batch_size,
                                max_queries=d.max_queries, priors=self.priors, on_batch=on_batch)
    return dict(ranking.summarize(kg, ranked), paths=stats.as_dict())

  def predict(self, query: str) -> list[dict[str, Any]]:
    """The best `decode.num_explanations` answers of `'HEAD|RELATION'`, each `{rank, entity, score,
    path, hops, known}` (`known`: a true triple of any split)."""
    kg = self.kg
    head, relation = parse_query(kg, query)
    queries = np.tile(np.asarray([[head, relation, 0]], np.int32), (self.config.decode.batch_size, 1))
    scores, result = self.score(queries)
    scores = self.priors.apply(scores[:1], queries[:1, 1])
    rows = explain.answers(kg, scores[0], result.path[0], self.config.decode.num_explanations,
                           explain.support(result.score[0], result.best[0]))
    known = {kg.entities[t] for t in kg.filter_index().get((head, relation), ())}
    return [dict(a, rank=i + 1, known=a['entity'] in known) for i, a in enumerate(rows)]


def eval_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits named by `config.decode.splits` ('valid,test' by default), checked."""
  splits = tuple(s.strip() for s in config.decode.splits.split(',') if s.strip())
  if not splits or any(s not in ('valid', 'test') for s in splits):
    raise ValueError(f'decode.splits={config.decode.splits!r}: give valid, test or valid,test')
  return splits


def _fingerprint(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
  return {'checkpoint_step': int(step), **{k: json.loads(config[k].to_json())
                                           for k in ('decode', 'rtg', 'ranking')}}


def run_evaluation(config: ml_collections.ConfigDict, workdir: str, summary: bool = False
                   ) -> dict[str, Any]:
  """`--mode=eval`: metrics of the latest checkpoint (module docstring). Skipped, returning the
  stored metrics, when they were made from the same checkpoint step and settings; `summary` also
  prints the metrics table and three example answers with their paths."""
  from imkga_jax import checkpoints  # pylint: disable=g-import-not-at-top
  state_path = os.path.join(workdir, EVAL_STATE_FILE)
  latest = checkpoints.latest_step(workdir, config)
  if latest is not None and os.path.exists(state_path):
    with open(state_path, encoding='utf-8') as f:
      done = json.load(f)
    if done == _fingerprint(config, latest):
      logging.info('evaluation of checkpoint step %d is up to date (%s), skipped', latest,
                   state_path)
      with open(os.path.join(workdir, METRICS_FILE), encoding='utf-8') as f:
        metrics = json.load(f)
      if summary:
        print(run_summary.format_run_summary(
            config, workdir, metrics, explain.read_jsonl(os.path.join(workdir, EXPLANATIONS_FILE))))
      return metrics
  evaluator = Evaluator.restore(config, workdir)
  metrics, rows = {}, []
  for split in eval_splits(config):
    metrics[split] = evaluator.split(split, rows if split == 'test' else None)
  by_relation = {split: m.pop('by_relation') for split, m in metrics.items()}
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, BY_RELATION_FILE), by_relation)
    files.write_json(os.path.join(workdir, METRICS_FILE), metrics)
    explain.write_jsonl(os.path.join(workdir, EXPLANATIONS_FILE), rows)
    files.write_json(state_path, _fingerprint(config, evaluator.step))
  logging.info('evaluation of checkpoint step %d (beam %d, %s):\n%s', evaluator.step,
               config.decode.beam_size,
               'constrained' if config.decode.constrained else 'unconstrained',
               ranking.format_metrics(metrics))
  if summary:
    print(run_summary.format_run_summary(config, workdir, metrics, rows))
  return metrics


def parse_query(kg: kg_lib.KnowledgeGraph, query: str) -> tuple[int, int]:
  """`'HEAD|RELATION'` in names (RELATION may end in `_inv`) -> (head id, relation id in [0, 2R))."""
  parts = query.split('|')
  if len(parts) != 2 or not all(p.strip() for p in parts):
    raise ValueError(f"--query={query!r}: expected 'HEAD|RELATION' in names, e.g. "
                     f"'{kg.entities[0]}|{kg.relations[0]}'")
  return kg.entity_id(parts[0].strip()), kg.relation_id(parts[1].strip())


def run_prediction(config: ml_collections.ConfigDict, workdir: str, query: str,
                   output_format: str = 'table', explain_png: str = '') -> list[dict[str, Any]]:
  """`--mode=predict --query='HEAD|RELATION'`: prints and returns the ranked answers with paths.

  Args:
    config: the run's config.
    workdir: the trained workdir.
    query: `'HEAD|RELATION'` in names.
    output_format: 'table' (readable, `explain.format_predictions`) or 'json'
      (`explain.predictions_json`: the same rows, machine-readable).
    explain_png: also draw the head's image, its OCR text and the top answers' paths to this PNG
      (`explain_png.draw`); '' = none.
  """
  if output_format not in ('table', 'json'):
    raise ValueError(f"--format={output_format!r}: expected 'table' or 'json'")
  evaluator = Evaluator.restore(config, workdir)
  rows = evaluator.predict(query)
  if explain_png:
    from imkga_jax import explain_png as png_lib  # pylint: disable=g-import-not-at-top
    kg = evaluator.kg
    head_id, relation_id = parse_query(kg, query)
    head = kg.entities[head_id]
    size = png_lib.draw(explain_png, head, kg.relation_name(relation_id), rows,
                        kg.images.get(head, ()),
                        png_lib.ocr_text_of(os.path.join(workdir, 'prepared'), kg, head))
    logging.info('explanation picture of %s written to %s (%dx%d)', query, explain_png, *size)
  print(explain.predictions_json(query, rows) if output_format == 'json'
        else explain.format_predictions(query, rows))
  return rows
