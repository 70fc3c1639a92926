"""The embedded multimodal e-commerce KG (data_prep/synthetic.py), sized for a laptop CPU.

`python launch.py --config=configs/synthetic.py --workdir=/tmp/imkga` generates, prepares, trains and
evaluates it in one go. It changes sizes and steps only (every decoding and ranking rule is the
generic default): VGG16 reads 112×112 images and gives its 512-d global-average-pooled conv
features (`gap`, a quarter of the FLOPs of 224×224 `predictions`); h_fig / h_ocr have 16 dimensions
instead of 8 / 3; one rule path per triple; a small model (64-d, 2 layers) at batch 128.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.synthetic = True
  config.features.vgg_layer = 'gap'
  config.features.vgg_image_size = 112
  config.features.fig_dim = 16
  config.features.ocr_dim = 16
  config.rules.paths_per_triple = 1
  config.model.variant = 'mkg_rl'
  config.model.emb_dim = 64
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.mlp_dim = 128
  config.train.batch_size = 128
  config.train.num_steps = 3000
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 100
  config.decode.beam_size = 64
  # The main job evaluates a seeded sample of 400 valid and 400 test triples (both directions) to
  # stay within its time on a 2-core CPU; --config.decode.max_queries=-1 evaluates every triple.
  config.decode.max_queries = 400
  return config
