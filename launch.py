"""Entry point: `python launch.py --config=configs/synthetic.py --workdir=DIR [--mode=all]`.

Parses flags and calls one library function per stage; all logic lives in importable modules.
The config is validated (`imkga_jax.config_check`) before any stage runs, and an override naming
no config key is reported with the nearest valid keys.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from imkga_jax import config_check
from imkga_jax import datasets
from imkga_jax import run_summary

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a configs/*.py file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for prepared data, checkpoints, metrics.')
_MODE = flags.DEFINE_enum('mode', 'all', ['prepare', 'train', 'eval', 'predict', 'all'],
                          'Stage to run; `all` runs prepare -> train -> eval, skipping what is done.')
_QUERY = flags.DEFINE_string('query', None, "With --mode=predict: 'HEAD|RELATION' in names.")
_FORMAT = flags.DEFINE_enum('format', 'table', ['table', 'json'],
                            'With --mode=predict: a readable table or machine-readable JSON.')
_EXPLAIN_PNG = flags.DEFINE_string('explain_png', '', 'With --mode=predict: also draw the head\'s '
                                   'image, its OCR text and the top answers\' paths to this PNG.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's flag parsing; an unknown `--config.KEY` gets the key and the nearest valid keys.

  (ml_collections' config_flags raises a bare `AttributeError: "'widht'"` / `KeyError` for it.)
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    try:
      config_check.check_override_keys(argv)
    except config_check.ConfigError as e:
      sys.stderr.write(f'FATAL Flags parsing error:\n{e}\n')
      sys.exit(1)
    raise


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  try:
    config_check.validate(config)
  except config_check.ConfigError as e:
    raise app.UsageError(str(e)) from None
  logging.info('mode=%s workdir=%s config:\n%s', mode, workdir, config)
  try:
    run(config, workdir, mode)
  except datasets.DatasetError as e:         # files to fetch by hand: the message is the help
    sys.stderr.write(f'FATAL {e}\n')
    sys.exit(1)


def run(config, workdir: str, mode: str) -> None:
  """Runs the stages of `mode` in order."""
  # Each stage's wall time goes to WORKDIR/timings.json (the end summary of `all` reads it).
  if mode in ('prepare', 'all'):
    from data_prep import prepare  # pylint: disable=g-import-not-at-top
    with run_summary.timed(workdir, 'prepare'):
      prepare.prepare(config, workdir)
  if mode in ('train', 'all'):
    from imkga_jax import train  # pylint: disable=g-import-not-at-top
    from configs import default  # pylint: disable=g-import-not-at-top
    with run_summary.timed(workdir, 'train') as record:
      record['up_to_date'] = not train.train_and_evaluate(config, workdir,
                                                          defaults=default.get_config())
  if mode in ('eval', 'all'):
    from imkga_jax import evaluate  # pylint: disable=g-import-not-at-top
    with run_summary.timed(workdir, 'eval'):
      evaluate.run_evaluation(config, workdir, summary=(mode == 'all'))
  if mode == 'predict':
    if not _QUERY.value:
      raise app.UsageError("--mode=predict needs --query='HEAD|RELATION'")
    from imkga_jax import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.run_prediction(config, workdir, _QUERY.value, _FORMAT.value, _EXPLAIN_PNG.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
