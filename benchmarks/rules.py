"""Rule mining + path grounding: wall time and peak memory per dataset (issue 4).

Each dataset runs in a fresh child process (so its peak RSS is its own): load the KG, build the
train graph, mine rules, ground every train triple and its inverse — repeated `--repeats` times with a
fresh graph (no warm caches), median reported. With `--write` it also times the rest of the stage
(negatives, return-to-go, TFDS TFRecord writing) into a temporary folder, once. The dataset name
`synthetic` generates the embedded default KG (data_prep/synthetic.py, default config) into a temporary
folder first and reports the confidence of ships_from ← sold_by ∧ located_in. `--exact_check`
compares the default sampled scoring with exact scoring (all rows, no pair cap), every rule with
support ≥ 1 kept: seconds of each and the Pearson correlation of the confidences both found.

Usage (from the repository root):
  PYTHONPATH=. python benchmarks/rules.py \
      --datasets=../shared/datasets/WN18RR,../shared/datasets/kinship,synthetic
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def exact_check(kg, config) -> dict:
  """Sampled (config as given) vs exact scoring of every rule with support >= 1."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_prep import rules  # pylint: disable=g-import-not-at-top
  found, seconds = [], []
  for exact in (False, True):
    cfg = copy.deepcopy(config)
    cfg.rules.min_confidence, cfg.rules.min_support, cfg.rules.max_rules_per_head = 0.0, 1, 10**9
    if exact:
      cfg.rules.sample_rows = 10**9  # every row, and (rules.PAIRS_PER_SAMPLED_ROW times it) every pair
    start = time.perf_counter()
    ruleset = rules.mine_rules(kg, cfg)
    seconds.append(round(time.perf_counter() - start, 2))
    found.append({(h, b): c for h, v in ruleset.rules.items() for c, b in v})
  common = sorted(set(found[0]) & set(found[1]))
  a, b = (np.asarray([f[k] for k in common]) for f in found)
  return {'sampled_seconds': seconds[0], 'exact_seconds': seconds[1], 'rules_sampled': len(found[0]),
          'rules_exact': len(found[1]), 'common': len(common),
          'pearson': round(float(np.corrcoef(a, b)[0, 1]), 4),
          'mean_abs_diff': round(float(np.abs(a - b).mean()), 4)}


def run_one(root: str, repeats: int, write: bool, check: bool) -> dict:
  """Measures one dataset in this process (called in the child)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from data_prep import grounding  # pylint: disable=g-import-not-at-top
  from data_prep import rules
  from data_prep import train_graph
  from data_prep import trajectories
  from imkga_jax import readers

  config = default.get_config()
  with tempfile.TemporaryDirectory() as tmp:
    if root == 'synthetic':
      from data_prep import synthetic  # pylint: disable=g-import-not-at-top
      synthetic.generate_from_config(config, os.path.join(tmp, 'synthetic'))
      root = os.path.join(tmp, 'synthetic')
    kg = readers.load_kg(root, unknown='keep')
  queries = kg.with_inverses('train')
  rss_before = _peak_rss_mb()
  times, mine_times, ground_times = [], [], []
  for _ in range(repeats):
    start = time.perf_counter()
    graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
    ruleset = rules.mine_rules(kg, config, graph=graph)
    mined = time.perf_counter()
    paths = grounding.ground_paths(graph, ruleset, queries,
                                   paths_per_triple=config.rules.paths_per_triple,
                                   paths_per_rule=config.rules.paths_per_rule,
                                   fanout=config.rules.grounding_fanout, seed=config.seed,
                                   max_length=config.trajectories.max_hops)
    end = time.perf_counter()
    times.append(end - start)
    mine_times.append(mined - start)
    ground_times.append(end - mined)
  grounded = len(np.unique(paths.query))
  out = {'dataset': os.path.basename(os.path.normpath(root)), 'entities': kg.num_entities,
         'relations': kg.num_relations, 'train': int(len(kg.train)),
         'seconds_median': round(statistics.median(times), 2),
         'seconds_all': [round(t, 2) for t in times],
         'mine_seconds_median': round(statistics.median(mine_times), 2),
         'ground_seconds_median': round(statistics.median(ground_times), 2),
         'peak_rss_mb': round(_peak_rss_mb(), 1), 'rss_before_mining_mb': round(rss_before, 1),
         'rules': ruleset.stats['rules'], 'rules_per_length': ruleset.stats['rules_per_length'],
         'scoring': ruleset.stats['scoring'], 'rule_paths': int(len(paths.query)),
         'paths_per_hops': {str(n): int((paths.hops == n).sum()) for n in (1, 2, 3)},
         'queries': int(len(queries)), 'direct_share_of_queries':
             round(1 - grounded / len(queries), 4)}
  if 'ships_from' in kg.relations:
    named = ruleset.to_json(kg)['ships_from']
    out['ships_from<-sold_by,located_in'] = next(
        (c for c, body in named if body == ['sold_by', 'located_in']), None)
  if check:
    out['exact_check'] = exact_check(kg, config)
  if write:
    with tempfile.TemporaryDirectory() as tmp:
      start = time.perf_counter()
      stats = trajectories.build_trajectories(kg, config, tmp)
      out['full_stage_seconds'] = round(time.perf_counter() - start, 2)
      out['writing_seconds'] = stats['trajectories']['writing_seconds']
      out['examples'] = stats['trajectories']['examples']
      out['peak_rss_mb_with_writing'] = round(_peak_rss_mb(), 1)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--datasets', default='../shared/datasets/WN18RR,../shared/datasets/kinship',
                      help='comma-separated raw KG folders')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--write', action='store_true', help='also time the whole stage once')
  parser.add_argument('--exact_check', action='store_true',
                      help='also compare sampled with exact rule scoring')
  parser.add_argument('--one', default='', help=argparse.SUPPRESS)  # child mode
  args = parser.parse_args(argv)
  if args.one:
    result = run_one(args.one, args.repeats, args.write, args.exact_check)
    print('RESULT ' + json.dumps(result), flush=True)
    return
  for root in args.datasets.split(','):
    cmd = [sys.executable, __file__, f'--one={root}', f'--repeats={args.repeats}']
    cmd += ['--write'] if args.write else []
    cmd += ['--exact_check'] if args.exact_check else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
    if proc.returncode or not lines:
      raise RuntimeError(f'benchmark of {root} failed (exit {proc.returncode}):\n'
                         f'{proc.stderr[-3000:]}')
    print(json.dumps(json.loads(lines[-1][len('RESULT '):]), indent=1), flush=True)


if __name__ == '__main__':
  main()
