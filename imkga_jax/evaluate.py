"""Evaluation and prediction: decode with the selected checkpoint, rank, explain, write the files.

`run_evaluation` decodes every valid/test query in both directions with the jitted beam search
(`imkga_jax.evaluator`), ranks them with the shared filtered ranker (`imkga_jax.ranking`, priors of
`config.ranking.priors` applied; with `decode.direct_weight='valid'` the weight of the direct
answers against the paths is chosen on the valid split first) and writes `WORKDIR/metrics.json`
(`{"valid"|"test": {"tail"|"head"|"both": {mrr, hits@1, hits@3, hits@10, reached, queries},
"paths": {path_share, faithful_share}}, "valid": {"selection": ...}}`),
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
from typing import Any

import jax
import ml_collections

from imkga_jax import evaluator as evaluator_lib
from imkga_jax import explain
from imkga_jax import files
from imkga_jax import ranking
from imkga_jax import run_summary

METRICS_FILE = 'metrics.json'
BY_RELATION_FILE = 'metrics_by_relation.json'
EXPLANATIONS_FILE = 'explanations.jsonl'
EVAL_STATE_FILE = 'eval_state.json'
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
  latest = checkpoints.selected_step(workdir, config)
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
  evaluator = evaluator_lib.Evaluator.restore(config, workdir)
  metrics, rows = {}, []
  choose = config.decode.direct_weight == 'valid'
  splits = eval_splits(config)
  if choose and 'valid' not in splits:  # the weight is chosen on valid, whatever is reported
    splits = ('valid',) + splits
  for split in splits:
    metrics[split] = evaluator.split(split, rows if split == 'test' else None,
                                     choose_weight=choose and split == 'valid')
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
  evaluator = evaluator_lib.Evaluator.restore(config, workdir)
  rows = evaluator.predict(query)
  if explain_png:
    from imkga_jax import explain_png as png_lib  # pylint: disable=g-import-not-at-top
    kg = evaluator.kg
    head_id, relation_id = evaluator_lib.parse_query(kg, query)
    head = kg.entities[head_id]
    size = png_lib.draw(explain_png, head, kg.relation_name(relation_id), rows,
                        kg.images.get(head, ()),
                        png_lib.ocr_text_of(os.path.join(workdir, 'prepared'), kg, head))
    logging.info('explanation picture of %s written to %s (%dx%d)', query, explain_png, *size)
  print(explain.predictions_json(query, rows) if output_format == 'json'
        else explain.format_predictions(query, rows))
  return rows
