"""Tests of imkga_jax/config_check.py: every bad value names its key and range, unknown keys."""
import os
import subprocess
import sys
import time

import pytest

from configs import default
from data_prep import ocr
from data_prep import vgg16
from imkga_jax import config_check
from imkga_jax import decode
from imkga_jax import priors
from imkga_jax.models import imkga

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


@pytest.mark.parametrize('key,value,allowed', [
    ('train.batch_size', 0, 'an integer >= 1'),
    ('train.batch_size', -4, 'an integer >= 1'),
    ('decode.beam_size', 0, 'an integer >= 1'),
    ('decode.beam_size', -3, 'an integer >= 1'),
    ('decode.batch_size', 0, 'an integer >= 1'),
    ('train.checkpoint_every', 0, 'an integer >= 1'),
    ('train.log_every', 0, 'an integer >= 1'),
    ('model.variant', 'foo', "one of 'no_img', 'mkg', 'rl', 'mkg_rl'"),
    ('data.duplicates', 'ignore', "one of 'keep', 'drop', 'error'"),
    ('data.outside_links', 'yes', "one of 'error', 'skip', 'follow'"),
    ('features.max_image_pixels', 0, 'an integer >= 1'),
    ('loss.label_smoothing', 0.0, 'a finite number > 0.0 and <= 1.0'),
    ('masks.p_3', 1.5, 'a finite number >= 0.0 and <= 1.0'),
    ('decode.splits', 'train', "'valid', 'test' or 'valid,test'"),
    ('mesh.shape', (-1, -1), 'a tuple of integers >= 1, one of them may be -1'),
])
def test_bad_value_names_key_and_allowed_range(key, value, allowed):
  config = default.get_config()
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(config_check.ConfigError) as info:
    config_check.validate(config)
  message = str(info.value)
  assert f'{key} = {value!r}: must be {allowed}' in message and f'--config.{key}=' in message


def test_every_problem_is_reported_at_once_and_cross_checks():
  config = default.get_config()
  config.train.batch_size, config.decode.beam_size = 0, -3
  config.model.emb_dim, config.model.num_heads = 30, 4
  config.model.variant, config.decode.branch = 'rl', 'fig'
  found = config_check.problems(config)
  assert len(found) == 4, found
  assert any('model.emb_dim = 30, model.num_heads = 4: need emb_dim divisible' in p for p in found)
  assert any("decode.branch = 'fig', model.variant = 'rl'" in p for p in found)
  config.model.num_heads = 0                       # a bad value skips the cross check it is part of
  assert not any('divisible' in p for p in config_check.problems(config))


@pytest.mark.parametrize('name,arg', [('default', None), ('synthetic', None), ('openbg', None),
                                      ('structure', 'umls'), ('structure', 'kinship'),
                                      ('structure', 'wn18rr'), ('default', 'smoke')])
def test_shipped_configs_pass(name, arg):
  module = __import__(f'configs.{name}', fromlist=['get_config'])
  config = module.get_config() if arg is None else module.get_config(arg)
  assert config_check.problems(config) == []


def test_table_names_existing_keys_and_the_owners_values():
  keys = set(config_check.flat_keys(default.get_config()))
  assert [r.key for r in config_check.CHECKS if r.key not in keys] == []
  for cross_keys, _, _ in config_check.CROSS_CHECKS:
    assert set(cross_keys) <= keys
  assert config_check.VARIANTS == imkga.VARIANTS
  assert config_check.EMBED_DROPOUT == imkga.EMBED_DROPOUT
  assert config_check.BRANCHES == imkga.FEATURE_BRANCHES
  assert config_check.VGG_LAYERS == vgg16.LAYERS
  assert config_check.OCR_ENGINES == ocr.ENGINES
  assert config_check.AGGREGATIONS == decode.AGGREGATIONS
  assert config_check.PRIORS == tuple(priors.PRIORS)
  assert set(config_check.FEATURE_VARIANTS) == {
      v for v in imkga.VARIANTS if imkga.ModelConfig(vocab_size=5, variant=v).use_features}


def test_unknown_keys_message():
  config = default.get_config()
  message = config_check.unknown_keys_message(config, ['model.emb_dim', 'train.batchsize',
                                                       'model.widht', 'modl.emb_dim'])
  lines = message.splitlines()
  assert len(lines) == 3
  assert lines[0].startswith('--config.train.batchsize: no such config key; nearest valid keys: '
                             'train.batch_size')
  assert lines[1].startswith('--config.model.widht: no such config key') and 'emb_dim' in lines[1]
  assert 'model.emb_dim' in lines[2]
  assert config_check.unknown_keys_message(config, ['model.emb_dim']) is None


def _launch(*args):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  start = time.time()
  proc = subprocess.run([sys.executable, 'launch.py', '--config=configs/structure.py', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)
  return proc, time.time() - start


def test_launch_reports_an_unknown_key_with_the_nearest_ones(tmp_path):
  proc, _ = _launch(f'--workdir={tmp_path}', '--config.model.widht=3')
  assert proc.returncode != 0
  assert '--config.model.widht: no such config key' in proc.stderr and 'emb_dim' in proc.stderr
  assert 'AttributeError' not in proc.stderr and 'Traceback' not in proc.stderr


def test_launch_refuses_bad_values_before_any_stage(tmp_path):
  proc, _ = _launch(f'--workdir={tmp_path / "w"}', '--config.data.root=/nowhere',
                    '--config.train.batch_size=0', '--config.decode.beam_size=-3')
  assert proc.returncode != 0
  assert 'train.batch_size = 0: must be an integer >= 1' in proc.stderr
  assert 'decode.beam_size = -3: must be an integer >= 1' in proc.stderr
  assert not os.path.exists(tmp_path / 'w')                      # nothing was started
