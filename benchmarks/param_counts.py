"""Prints the parameter counts of the IMKGA-SM model for configs and variants (no training, no data).

Shapes come from `jax.eval_shape(model.init, …)`, so nothing is allocated.

Vocabulary sizes (tokens = 4 specials + 2·relations + entities):
* `openbg`: the paper's OpenBG-IMG+ (136 relations, 28,891 entities) → 29,167 tokens;
* `synthetic`: the embedded generator's entity and relation lists at the config's counts
  (data_prep/synthetic.py name lists), unless `--prepared=DIR` points at a prepared
  folder whose vocab.json gives the exact figure;
* any other config: `--num_tokens=N` (default 1000).

Usage:
  python benchmarks/param_counts.py                      # synthetic and openbg, all variants
  python benchmarks/param_counts.py --configs=default --num_tokens=5000
"""
import argparse
import importlib.util
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top
import flax.linen as nn  # pylint: disable=g-import-not-at-top

from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top

OPENBG_TOKENS = 4 + 2 * 136 + 28_891


def load_config(name: str):
  """`get_config()` of configs/<name>.py, imported by path (no absl flags)."""
  path = os.path.join(REPO, 'configs', f'{name}.py')
  if not os.path.exists(path):
    raise FileNotFoundError(f'param_counts: {path} does not exist; pass --configs with names of '
                            'files in configs/.')
  spec = importlib.util.spec_from_file_location(f'_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def synthetic_tokens(config) -> tuple[int, str]:
  """Token count of the synthetic KG at this config's sizes, from the generator's name lists."""
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  s = config.synthetic
  entities = (s.num_products + s.num_imageless_products + s.num_brands + len(synthetic.COLOURS)
              + len(synthetic.CATEGORIES) + len(synthetic.STYLES) + s.num_shops + s.num_regions
              + s.num_couriers)
  relations = len(synthetic.RELATIONS)
  return 4 + 2 * relations + entities, f'{entities} entities, {relations} relations (generator lists)'


def vocab_tokens(prepared: str) -> tuple[int, str]:
  with open(os.path.join(prepared, 'vocab.json')) as f:
    vocab = json.load(f)
  entities, relations = len(vocab['entities']), len(vocab['relations'])
  return 4 + 2 * relations + entities, f'{entities} entities, {relations} relations ({prepared})'


def count(config, num_tokens: int) -> dict[str, int]:
  """Parameter counts: total, shared (token embedding + output bias), per branch."""
  model = imkga.build_model(config, num_tokens)
  abstract = jax.eval_shape(model.init, jax.random.key(0), imkga.dummy_inputs(model.config))
  params = nn.unbox(abstract['params'])
  total = sum(x.size for x in jax.tree.leaves(params))
  branches = sum(x.size for x in jax.tree.leaves(params['branches']))
  return {'total': total, 'shared': total - branches,
          'per_branch': branches // len(model.branches), 'branches': len(model.branches)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='synthetic,openbg', help='comma-separated config names')
  parser.add_argument('--variants', default=','.join(imkga.VARIANTS))
  parser.add_argument('--prepared', default='', help='prepared dir for the synthetic vocabulary')
  parser.add_argument('--num_tokens', type=int, default=1000, help='vocabulary of other configs')
  args = parser.parse_args(argv)
  print('| config | variant | tokens | emb/layers/heads/mlp | branches | shared | per branch '
        '| total |')
  print('|---|---|---|---|---|---|---|---|')
  notes = []
  for name in args.configs.split(','):
    config = load_config(name)
    if name == 'openbg':
      tokens, note = OPENBG_TOKENS, '136 relations, 28,891 entities (paper, Table 2)'
    elif name == 'synthetic':
      tokens, note = vocab_tokens(args.prepared) if args.prepared else synthetic_tokens(config)
    else:
      tokens, note = args.num_tokens, '--num_tokens'
    notes.append(f'{name}: {tokens} tokens = {note}')
    m = config.model
    for variant in args.variants.split(','):
      config.model.variant = variant
      c = count(config, tokens)
      print(f'| {name} | {variant} | {tokens:,} | {m.emb_dim}/{m.num_layers}/{m.num_heads}/'
            f'{m.mlp_dim} | {c["branches"]} | {c["shared"]:,} | {c["per_branch"]:,} '
            f'| {c["total"]:,} |')
  print()
  for note in notes:
    print(f'- {note}')


if __name__ == '__main__':
  main()
