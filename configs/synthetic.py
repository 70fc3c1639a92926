"""The embedded multimodal e-commerce KG (data_prep/synthetic.py), sized for a laptop CPU.

`python launch.py --config=configs/synthetic.py --workdir=/tmp/imkga` generates, prepares, trains and
evaluates it in one go.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.synthetic = True
  config.model.variant = 'mkg_rl'
  # A small model: the synthetic KG has ~3k entities and a 2-core CPU should train it in minutes.
  config.model.emb_dim = 128
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.mlp_dim = 256
  config.train.batch_size = 256
  config.train.num_steps = 2000
  config.train.log_every = 100
  config.train.checkpoint_every = 500
  config.optim.warmup_steps = 100
  config.decode.beam_size = 64
  # The main job evaluates a seeded sample of 400 triples per split (both directions) to stay within
  # its time budget on a 2-core CPU; --config.decode.max_queries=-1 evaluates every triple.
  config.decode.max_queries = 400
  return config
