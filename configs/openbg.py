"""OpenBG-IMG+ with the paper's settings. Requires `--config.data.root=PATH` (OpenBG-IMG layout)."""
from configs import default


def get_config():
  config = default.get_config()
  config.data.layout = 'openbg'
  config.model.variant = 'mkg_rl'
  # The paper's best settings (§4.8): batch size 16, label smoothing 0.7, modulation alpha 0.6.
  config.train.batch_size = 16
  config.loss.label_smoothing = 0.7
  config.optim.alpha = 0.6
  config.train.num_steps = 200_000
  config.decode.beam_size = 256
  return config
