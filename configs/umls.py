"""UMLS, structure only (no images): the RL variant (return-to-go, no features).

Run with `--config.data.root=../shared/datasets/umls` (a folder of train/valid/test triple files).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.layout = 'triples'
  config.features.enabled = False
  config.model.variant = 'rl'
  config.model.emb_dim = 128
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.mlp_dim = 256
  config.train.batch_size = 256
  config.train.num_steps = 3000
  config.decode.beam_size = 64
  return config
