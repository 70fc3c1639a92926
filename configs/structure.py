"""Structure-only knowledge graphs (triple files, no images): the RL variant (return-to-go, no features).

`--config=configs/structure.py:NAME` with NAME a benchmark whose sizes are set here (`umls`,
`kinship`, `wn18rr`) or empty for any other KG; add `,smoke` for a run of seconds. A named benchmark
also sets `data.name` (imkga_jax/datasets.py): UMLS and Kinship ship inside the package, WN18RR is
read from the dataset cache (downloaded on first use where a network exists). `--config.data.root`
still wins over the name. The dataset changes sizes, steps and, for WN18RR, the unknown-entity
policy only ('keep': its test split names entities train never shows, which the published figures
keep); every ranking and decoding rule is the generic default.

  python launch.py --config=configs/structure.py:umls --workdir=/tmp/umls
  python launch.py --config=configs/structure.py: --config.data.root=PATH/TO/TRIPLES --workdir=/tmp/kg
"""
from configs import default

# Per benchmark: model width, training steps, batch size. The steps are a ceiling: the parameters are
# selected on valid every train.eval_every steps and training stops after train.patience evaluations
# without a better one (6,000 steps: UMLS's valid MRR still rose from 3,000 to 6,000).
SIZES = {
    '': dict(emb_dim=128, num_steps=6000, batch_size=256),
    'umls': dict(emb_dim=128, num_steps=6000, batch_size=256),
    'kinship': dict(emb_dim=128, num_steps=6000, batch_size=256),
    'wn18rr': dict(emb_dim=128, num_steps=3000, batch_size=256),
}


def get_config(arg: str = ''):
  parts = [p.strip() for p in (arg or '').split(',')]
  name, smoke = parts[0], 'smoke' in parts[1:]
  if name not in SIZES or any(p not in ('smoke',) for p in parts[1:]):
    raise ValueError(f'configs/structure.py: argument {arg!r} must be NAME[,smoke] with NAME one of '
                     f'{sorted(SIZES)} ("" for any other KG)')
  sizes = SIZES[name]
  config = default.get_config()
  config.data.layout = 'triples'
  config.data.name = name
  if name == 'wn18rr':
    config.data.unknown_entities = 'keep'
  config.features.enabled = False
  config.model.variant = 'rl'
  config.model.emb_dim = sizes['emb_dim']
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.mlp_dim = 2 * sizes['emb_dim']
  config.train.batch_size = sizes['batch_size']
  config.train.num_steps = sizes['num_steps']
  config.decode.beam_size = 64
  return default.smoke(config) if smoke else config
