"""Golden figures: the landed tree's training and evaluation, reproduced to 1e-6.

`tests/data/golden_metrics.json` was written by `python -m tests.golden_test --write` on the tree of
commit b69c9db (before the evaluation layer was split into ranking / priors / explain and the decoder
was restructured). The runs below train small IMKGA-SM models (the `rl` variant, and `mkg_rl` with
fixed fake features, so the modality modulation is exercised) and a ComplEx baseline on a generated
KG, then evaluate them with several decoding settings. Any refactoring that changes no figure must
reproduce every metric to 1e-6.
"""
import json
import os
import sys

import numpy as np
import pytest

GOLDEN = os.path.join(os.path.dirname(__file__), 'data', 'golden_metrics.json')


def golden_kg_folder(path):
  """A KG with 2-hop compositions (lives_in ∘ in_country = citizen_of), a functional relation and
  noise, large enough that valid/test give non-trivial ranks."""
  rng = np.random.default_rng(7)
  people = [f'p{i}' for i in range(60)]
  cities = [f'c{i}' for i in range(10)]
  countries = [f'k{i}' for i in range(3)]
  rows = [(c, 'in_country', countries[i % 3]) for i, c in enumerate(cities)]
  for p in people:
    c = cities[rng.integers(len(cities))]
    rows.append((p, 'lives_in', c))
    rows.append((p, 'citizen_of', countries[cities.index(c) % 3]))
    for q in rng.choice(len(people), 2, replace=False):
      rows.append((p, 'knows', people[q]))
    if rng.random() < 0.5:
      rows.append((p, 'works_in', cities[rng.integers(len(cities))]))
  rows = sorted(set(rows))
  order = rng.permutation(len(rows))
  rows = [rows[i] for i in order]
  splits = {'train': rows[:-40], 'valid': rows[-40:-20], 'test': rows[-20:]}
  names = {x for r in splits['train'] for x in (r[0], r[1], r[2])}
  os.makedirs(path, exist_ok=True)
  for split, part in splits.items():
    part = [r for r in part if {r[0], r[1], r[2]} <= names]
    with open(os.path.join(path, f'{split}.txt'), 'w') as f:
      f.writelines('\t'.join(r) + '\n' for r in part)
  return path


def base_config(raw, variant):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data.root = raw
  config.data.layout = 'triples'
  config.features.enabled = False
  config.model.variant = variant
  config.model.emb_dim = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.mlp_dim = 64
  config.rules.paths_per_triple = 2
  config.trajectories.num_shards = 2
  config.train.batch_size = 32
  config.train.num_steps = 150
  config.train.log_every = 50
  config.train.checkpoint_every = 150
  config.train.shuffle_buffer = 256
  config.optim.warmup_steps = 5
  config.optim.learning_rate = 3e-3
  config.decode.beam_size = 8
  config.decode.batch_size = 8
  config.decode.max_queries = -1
  config.decode.splits = 'valid,test'
  config.train.steps_per_call = 1  # the landed loop: one call per step, no selection on valid
  config.train.eval_every = 0
  config.train.direct_batch_size = 0  # the landed loop: direct trajectories in the main batch
  config.loss.typed_head = False  # the landed loss: the whole vocabulary at every step
  config.trajectories.also_direct = 'none'  # the landed default
  # The landed decoder: the direct answers compete for the beam's slots, one scoring rule.
  config.decode.complete_direct = False
  config.decode.direct_weight = 'model'
  return config


# Decoding settings evaluated on each trained model. The landed tree's keys were: score='max' (now
# aggregation 'max' with length_norm) or 'sum' (aggregation 'sum' without it); complete_last and
# finish_width; decode.min_type_match=0.2 and decode.min_functionality=0.95 (now ranking.priors).
MAX = dict(aggregation='max', length_norm=True)
SUM = dict(aggregation='sum', length_norm=False)
DECODINGS = {
    'plain_beam': dict(MAX, complete_last=False, finish_width=0, constrained=False),
    'default': dict(MAX, complete_last=True, finish_width=256, constrained=False),
    'sum_constrained': dict(SUM, complete_last=True, finish_width=64, constrained=True),
    'sum_priors': dict(SUM, complete_last=True, finish_width=64, constrained=True,
                       priors=('answer_type=0.2', 'functional_inverse=0.95')),
}


def _strip(metrics):
  return {split: {d: {k: float(v) for k, v in m.items()} for d, m in by_dir.items()
                  if d in ('tail', 'head', 'both')} for split, by_dir in metrics.items()}


def golden_runs(base):
  """Trains and evaluates every golden run under folder `base`; returns `{run: metrics}`."""
  import shutil  # pylint: disable=g-import-not-at-top
  from data_prep import prepare  # pylint: disable=g-import-not-at-top
  from imkga_jax import evaluate, train  # pylint: disable=g-import-not-at-top
  from imkga_jax.baselines import train as baseline_train  # pylint: disable=g-import-not-at-top
  from configs import baselines  # pylint: disable=g-import-not-at-top
  from tests.train_test import write_fake_features  # pylint: disable=g-import-not-at-top
  raw = golden_kg_folder(os.path.join(base, 'raw'))
  out = {}
  for variant in ('rl', 'mkg_rl'):
    workdir = os.path.join(base, variant)
    config = base_config(raw, variant)
    prepare.prepare(config, workdir)
    if variant == 'mkg_rl':
      write_fake_features(workdir, config)
    train.train_and_evaluate(config, workdir)
    for name, settings in DECODINGS.items():
      for key, value in settings.items():
        if key == 'priors':
          config.ranking.priors = value
        else:
          config.decode[key] = value
      os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
      for f in ('eval_state.json',):
        if os.path.exists(os.path.join(workdir, f)):
          os.remove(os.path.join(workdir, f))
      out[f'{variant}/{name}'] = _strip(evaluate.run_evaluation(config, workdir))
  for types in (0.0, 0.2):  # the landed baseline.min_type_match
    config = baselines.get_config('complex,default')
    config.data.root = raw
    config.data.layout = 'triples'
    config.baseline.num_epochs = 20
    config.baseline.eval_every = 5
    config.baseline.progress_bar = False
    config.ranking.priors = (f'answer_type={types}',) if types else ()
    workdir = os.path.join(base, f'complex_{types}')
    shutil.copytree(os.path.join(base, 'rl', 'prepared'), os.path.join(workdir, 'prepared'))
    result = baseline_train.train_and_evaluate(config, workdir)
    out[f'complex/types_{types}'] = _strip({s: result[s] for s in ('valid', 'test')})
  return out


@pytest.mark.slow
def test_landed_figures_are_reproduced(tmp_path):
  with open(GOLDEN, encoding='utf-8') as f:
    golden = json.load(f)
  got = golden_runs(str(tmp_path))
  assert sorted(got) == sorted(golden)
  for run, metrics in golden.items():
    for split, by_dir in metrics.items():
      for direction, values in by_dir.items():
        for key, value in values.items():
          assert got[run][split][direction][key] == pytest.approx(value, abs=1e-6), (
              run, split, direction, key)


if __name__ == '__main__':
  if '--write' in sys.argv:
    import tempfile  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as tmp:
      result = golden_runs(tmp)
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1, sort_keys=True)
      f.write('\n')
    print(json.dumps({k: v['test']['both']['mrr'] for k, v in result.items()}, indent=1))
