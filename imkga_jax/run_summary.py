"""The one-screen summary the main job (`--mode=all`) ends with, and the stage timings it reads.

After a run of minutes a person wants to see, on one screen, what ran and for how long, how good
the model is, what its answers look like and where everything went: the data (name or folder,
sizes), which VGG16 weights and OCR engine made the features, the time of each stage, the
valid/test metrics, three test answers with their paths, and the workdir's files.

Times: the prepare stages from `prepared/stats.json` (`seconds_<stage>`, written when a stage ran),
prepare / train / eval as a whole from `WORKDIR/timings.json`, which `launch.py` writes through
`timed` (`{stage: {seconds, started, finished, up_to_date}}`). A stage found up to date keeps the
seconds of the run that did its work, marked "(earlier run)". Standard library and the project's
format modules only (no jax).

Example:
  >>> with timed('/tmp/w', 'train') as record:                          # doctest: +SKIP
  ...   record['up_to_date'] = not train.train_and_evaluate(config, '/tmp/w')
  >>> print(format_run_summary(config, '/tmp/w', metrics, rows))         # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any, Iterator, Mapping, Sequence

from imkga_jax import explain
from imkga_jax import files

TIMINGS_FILE = 'timings.json'
STAGES = ('prepare', 'train', 'eval')
RULE = '=' * 100


def read_json(path: str) -> dict[str, Any]:
  """A JSON object file, or {} when it is missing or unreadable (logged)."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    logging.warning('%s: unreadable (%s); the summary leaves it out', path, e)
    return {}
  return value if isinstance(value, dict) else {}


@contextlib.contextmanager
def timed(workdir: str, stage: str) -> Iterator[dict[str, Any]]:
  """Records the wall time of `stage` in `WORKDIR/timings.json` (also when the stage raises).

  Yields a dict; set `up_to_date=True` in it when the stage found nothing to do: the record then
  keeps the seconds of the earlier run that did the work (if there was one).
  """
  path = os.path.join(workdir, TIMINGS_FILE)
  record: dict[str, Any] = {'started': time.time()}
  files.ensure_workdir(workdir)
  timings = read_json(path)
  timings[stage] = {**timings.get(stage, {}), 'started': record['started'], 'running': True}
  files.write_json(path, timings)
  try:
    yield record
  finally:
    seconds = round(time.time() - record['started'], 2)
    timings = read_json(path)
    earlier = timings.get(stage, {})
    entry = {'started': record['started'], 'finished': time.time(), 'seconds': seconds,
             'up_to_date': bool(record.get('up_to_date'))}
    did_work_before = earlier.get('seconds') is not None and (
        not earlier.get('up_to_date') or earlier.get('check_seconds') is not None)
    if entry['up_to_date'] and did_work_before:   # keep the time of the run that did the work
      entry.update(seconds=earlier['seconds'], check_seconds=seconds)
    timings[stage] = entry
    files.write_json(path, timings)


def _seconds(value: float | None) -> str:
  if value is None:
    return '?'
  return f'{value:.1f} s' if value < 120 else f'{value / 60:.1f} min'


def stage_times(workdir: str, stats: Mapping[str, Any], eval_seconds: float | None = None) -> str:
  """One line per stage: `prepare 2.1 min (synthetic 3.1 s, kg 0.4 s, …)`, `train 10.2 min`, …"""
  timings = read_json(os.path.join(workdir, TIMINGS_FILE))
  parts = []
  for stage in STAGES:
    entry = timings.get(stage, {})
    seconds = entry.get('seconds')
    if stage == 'eval' and eval_seconds is not None:
      seconds = eval_seconds
    elif entry.get('running'):                 # running now: the time so far
      seconds = time.time() - entry['started']
    text = f'{stage} {_seconds(seconds)}'
    if entry.get('up_to_date') and stage != 'eval':
      text += ' (earlier run; up to date now)' if entry.get('check_seconds') is not None else (
          ' (up to date)')
    if stage == 'prepare':
      order = ('synthetic', 'kg', 'features', 'trajectories')
      found = sorted((k[len('seconds_'):] for k in stats if k.startswith('seconds_')),
                     key=lambda k: (order.index(k) if k in order else len(order), k))
      inner = [f'{k} {_seconds(stats["seconds_" + k])}' for k in found]
      if inner:
        text += f' ({", ".join(inner)})'
    parts.append(text)
  return '\n            '.join(parts)


def _data_line(config: Any, stats: Mapping[str, Any]) -> str:
  name = config.data.get('name', '') or ('synthetic' if config.data.synthetic else 'triples')
  root = stats.get('data_root') or config.data.root or '?'
  sizes = ', '.join(f'{stats[k]:,} {k}' for k in ('entities', 'relations') if k in stats)
  splits = ' / '.join(f'{stats[k]:,}' for k in ('train', 'valid', 'test') if k in stats)
  return f'{name} ({root}): {sizes}; train/valid/test {splits}'


def _features_line(config: Any, stats: Mapping[str, Any]) -> str:
  if not config.features.enabled:
    return 'none (features.enabled=False: a structure-only run)'
  weights = stats.get('vgg_weights', config.features.vgg_weights or 'random')
  weights = 'random (seeded, NOT ImageNet)' if weights == 'random' else weights
  ocr = f'OCR {config.features.ocr_engine} on {stats.get("images", "?")} images'
  if 'ocr_brand_exact' in stats:
    ocr += f', brand read exactly on {stats["ocr_brand_exact"]:.1%}'
  return f'VGG16 {config.features.vgg_layer}, weights {weights}\n            {ocr}'



def _answers_line(metrics: Mapping[str, Any]) -> str:
  """Where the valid MRR comes from, when evaluation chose the direct weight on valid: the direct
  answers alone, the paths alone and the chosen mixture ('' otherwise). A weak part shows here
  (e.g. a step-0 classifier that ranks no better than chance while the paths carry the run)."""
  selection = metrics.get('valid', {}).get('selection')
  if not selection:
    return ''
  by_weight = selection.get('mrr_by_direct_weight', {})
  chosen = selection.get('direct_weight')
  parts = [f'{label} {by_weight[key]:.3f}' for key, label in
           (('1.0', 'direct answers alone'), ('0.0', 'paths alone')) if key in by_weight]
  mix = by_weight.get(str(chosen))  # the evaluator keys the weights as str(w), 'model' for None
  if mix is not None:
    parts.append(f'chosen weight {chosen} {mix:.3f}')
  return 'valid MRR of ' + ', '.join(parts) if parts else ''


def _files_lines(workdir: str) -> list[str]:
  w = os.path.abspath(workdir)
  out = []
  prepared = os.path.join(w, 'prepared')
  listing = sorted(f + ('/' if os.path.isdir(os.path.join(prepared, f)) else '')
                   for f in os.listdir(prepared) if not f.startswith('.')) if os.path.isdir(
                       prepared) else []
  for rel, what in (('prepared', ', '.join(listing)),
                    ('checkpoints', 'orbax checkpoints (the latest is restored by eval/predict)'),
                    ('metrics.json', 'metrics (also metrics_by_relation.json)'),
                    ('explanations.jsonl', 'the top answers of every test query, with paths'),
                    (TIMINGS_FILE, 'stage times')):
    path = os.path.join(w, rel)
    if os.path.exists(path):
      out.append(f'  {path + ("/" if os.path.isdir(path) else ""):<60} {what}')
  out.append(f'  TensorBoard: tensorboard --logdir={w}')
  return out


def format_run_summary(config: Any, workdir: str, metrics: Mapping[str, Any],
                       rows: Sequence[Mapping[str, Any]], eval_seconds: float | None = None,
                       examples: int = 3) -> str:
  """The summary (module docstring): data, features, stage times, metrics, `examples` answers
  with paths (`explain.format_summary`), files."""
  stats = read_json(os.path.join(workdir, 'prepared', 'stats.json'))
  lines = ['', RULE, f'Run summary of {os.path.abspath(workdir)}',
           f'  data      {_data_line(config, stats)}',
           f'  features  {_features_line(config, stats)}',
           f'  time      {stage_times(workdir, stats, eval_seconds)}']
  answers = _answers_line(metrics)
  if answers:
    lines.append(f'  answers   {answers}')
  lines.append(explain.format_summary(metrics, rows, examples))
  lines += ['', 'Files:'] + _files_lines(workdir) + [RULE]
  return '\n'.join(lines)
