"""Validates config values up front so a bad value stops the run at once, naming its key and range.

Without it a bad value surfaces late and far from its cause: `train.batch_size=0` after ~25 s of model
building as a division by zero, `decode.beam_size=-3` as a `lax.top_k` shape error, an unknown
`--config.model.widht` as `AttributeError: "'widht'"`. `CHECKS` is the one table of rules (one row
per key: the allowed values in words and a predicate) and `CROSS_CHECKS` the few rules between keys;
`validate` applies both and reports every violation in one error. `launch.py` calls it before any
stage, and so do the library entry points (`data_prep.prepare.prepare`, `train.train_and_evaluate`,
`checkpoints.restore_params` and `checkpoints.latest_step`, which evaluation goes through).

When a key is added to configs/default.py, add its row here (tests/config_check_test.py checks that
every row names an existing key and that the value lists match the modules that own them).

Example:
  >>> from configs import default                                   # doctest: +SKIP
  >>> config = default.get_config(); config.train.batch_size = 0    # doctest: +SKIP
  >>> validate(config)                                              # doctest: +SKIP
  ConfigError: 1 bad config value:
    train.batch_size = 0: must be an integer >= 1 (--config.train.batch_size=N)
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
from typing import Any, Callable, Sequence

from imkga_jax import kg as kg_lib

# Value lists owned by modules this one must not import (data_prep) or that import jax/flax; the
# test checks them against their owners (models.imkga.VARIANTS, vgg16.LAYERS, ocr.ENGINES,
# decode.AGGREGATIONS, priors.PRIORS, ...).
VARIANTS = ('no_img', 'mkg', 'rl', 'mkg_rl')
FEATURE_VARIANTS = ('mkg', 'mkg_rl')
EMBED_DROPOUT = ('all', 'except_first', 'actions', 'none')
VGG_LAYERS = ('predictions', 'fc2', 'gap')
OCR_ENGINES = ('rapidocr', 'easyocr')
BRANCHES = ('fig', 'ocr', 'concat')
AGGREGATIONS = ('max', 'sum')
PRIORS = ('answer_type', 'functional_inverse')
DATASET_NAMES = ('umls', 'kinship', 'wn18rr', 'fb15k237', 'openbg_img')   # datasets.NAMES


class ConfigError(ValueError):
  """Config values out of range; the message names every bad key, its value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """One row of the table: `key` (dotted), what is allowed (in words) and the predicate."""
  key: str
  allowed: str
  ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(low: int | None = None, high: int | None = None) -> tuple[str, Callable[[Any], bool]]:
  """An integer in `[low, high]` (either end open when None)."""
  words = ('an integer' + (f' >= {low}' if low is not None else '')
           + (f' and <= {high}' if high is not None else ''))
  return words, lambda v: (_is_int(v) and (low is None or v >= low)
                           and (high is None or v <= high))


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> tuple[str, Callable[[Any], bool]]:
  """A finite number between `low` and `high` (each end closed unless `*_open`)."""
  parts = []
  if low is not None:
    parts.append(f'{">" if low_open else ">="} {low}')
  if high is not None:
    parts.append(f'{"<" if high_open else "<="} {high}')
  words = 'a finite number' + (' ' + ' and '.join(parts) if parts else '')

  def ok(v):
    if not _is_number(v) or not math.isfinite(v):
      return False
    if low is not None and (v < low or (low_open and v == low)):
      return False
    return high is None or not (v > high or (high_open and v == high))
  return words, ok


def one_of(values: Sequence[Any]) -> tuple[str, Callable[[Any], bool]]:
  return f'one of {", ".join(map(repr, values))}', lambda v: v in tuple(values)


def boolean() -> tuple[str, Callable[[Any], bool]]:
  return 'True or False', lambda v: isinstance(v, bool)


def positive_or_nan() -> tuple[str, Callable[[Any], bool]]:
  # NaN is let through on purpose: tests/train_test.py uses it to exercise the non-finite-loss stop.
  return 'a number > 0', lambda v: _is_number(v) and not v <= 0


def string() -> tuple[str, Callable[[Any], bool]]:
  return 'a string', lambda v: isinstance(v, str)


def url_or_empty() -> tuple[str, Callable[[Any], bool]]:
  return ("'' or a URL (https://..., http://... or file:///...)",
          lambda v: isinstance(v, str) and (not v or v.startswith(('https://', 'http://', 'file://'))))


def vgg_weights() -> tuple[str, Callable[[Any], bool]]:
  suffixes = ('.h5', '.pth', '.pt', '.safetensors')
  return ("'random' or the path of a .h5, .weights.h5, .pth or .safetensors file",
          lambda v: isinstance(v, str) and (v in ('random', '') or v.endswith(suffixes)))


def split_list() -> tuple[str, Callable[[Any], bool]]:
  def ok(v):
    parts = [s.strip() for s in v.split(',') if s.strip()] if isinstance(v, str) else []
    return bool(parts) and all(p in ('valid', 'test') for p in parts)
  return "'valid', 'test' or 'valid,test'", ok


def mesh_shape() -> tuple[str, Callable[[Any], bool]]:
  return ('a tuple of integers >= 1, one of them may be -1',
          lambda v: (isinstance(v, (tuple, list)) and all(_is_int(x) and (x >= 1 or x == -1)
                                                          for x in v)
                     and sum(x == -1 for x in v) <= 1))


def _rules(*rows: tuple[str, tuple[str, Callable[[Any], bool]]]) -> tuple[Rule, ...]:
  return tuple(Rule(key, words, ok) for key, (words, ok) in rows)


PROBABILITY = number(0.0, 1.0)
CHECKS: tuple[Rule, ...] = _rules(
    ('seed', integer(0)),
    # data
    ('data.layout', one_of(('auto', 'triples', 'openbg'))),
    ('data.name', one_of(('',) + DATASET_NAMES)),
    ('data.cache_dir', string()),
    ('data.url', url_or_empty()),
    ('data.synthetic', boolean()),
    ('data.unknown_entities', one_of(kg_lib.UNKNOWN_POLICIES)),
    ('data.duplicates', one_of(kg_lib.DUPLICATE_POLICIES)),
    ('data.outside_links', one_of(kg_lib.OUTSIDE_LINK_POLICIES)),
    # synthetic KG
    ('synthetic.num_products', integer(1)),
    ('synthetic.num_brands', integer(1)),
    ('synthetic.num_shops', integer(1)),
    ('synthetic.num_regions', integer(1)),
    ('synthetic.image_size', integer(32)),
    ('synthetic.num_imageless_products', integer(0)),
    ('synthetic.num_couriers', integer(1)),
    ('synthetic.image_only_fraction', PROBABILITY),
    # features
    ('features.enabled', boolean()),
    ('features.vgg_layer', one_of(VGG_LAYERS)),
    ('features.vgg_weights', vgg_weights()),
    ('features.vgg_image_size', integer(32)),
    ('features.batch_size', integer(1)),
    ('features.ocr_engine', one_of(OCR_ENGINES)),
    ('features.ocr_vector_dim', integer(1)),
    ('features.ngram_min', integer(1)),
    ('features.ngram_max', integer(1)),
    ('features.fig_dim', integer(1)),
    ('features.ocr_dim', integer(1)),
    ('features.max_mentions', integer(0)),
    ('features.ae_steps', integer(0)),
    ('features.ae_learning_rate', number(0, low_open=True)),
    ('features.ae_batch_size', integer(1)),
    ('features.ae_segments', integer(1)),
    ('features.ae_hidden', integer(1)),
    ('features.ocr_min_chars', integer(0)),
    ('features.max_image_pixels', integer(1)),
    # rules
    ('rules.max_length', integer(1, 3)),
    ('rules.min_support', integer(1)),
    ('rules.min_confidence', PROBABILITY),
    ('rules.sample_rows', integer(1)),
    ('rules.dense_max_entities', integer(0)),
    ('rules.num_walks', integer(0)),
    ('rules.candidates_per_head', integer(1)),
    ('rules.max_rules_per_head', integer(1)),
    ('rules.paths_per_triple', integer(1)),
    ('rules.paths_per_rule', integer(1)),
    ('rules.grounding_fanout', integer(1)),
    # trajectories and return-to-go
    ('trajectories.max_hops', integer(1)),
    ('trajectories.negative_share', number(0)),
    ('trajectories.also_direct', one_of(('none', 'image_heads', 'all'))),
    ('trajectories.num_shards', integer(1)),
    ('rtg.r_good', number()),
    ('rtg.r_bad', number()),
    ('rtg.r_step', number()),
    ('rtg.missing_similarity', number(-1.0, 1.0)),
    ('rtg.target_dropout', PROBABILITY),
    # model, masks, loss, optimiser
    ('model.variant', one_of(VARIANTS)),
    ('model.emb_dim', integer(1)),
    ('model.num_layers', integer(1)),
    ('model.num_heads', integer(1)),
    ('model.mlp_dim', integer(1)),
    ('model.dropout_rate', number(0.0, 1.0, high_open=True)),
    ('model.dtype', one_of(('float32', 'bfloat16'))),
    ('model.query_product', boolean()),
    ('model.embed_std', number(0)),
    ('model.null_std', number(0)),
    ('model.embed_dropout', one_of(EMBED_DROPOUT)),
    ('masks.p_k', PROBABILITY),
    ('masks.p_m', PROBABILITY),
    ('masks.p_3', PROBABILITY),
    ('loss.label_smoothing', number(0.0, 1.0, low_open=True)),
    ('loss.beta', number(0)),
    ('loss.typed_head', boolean()),
    ('optim.learning_rate', positive_or_nan()),
    ('optim.warmup_steps', integer(0)),
    ('optim.weight_decay', number(0)),
    ('optim.clip_norm', number(0, low_open=True)),
    ('optim.alpha', number(0)),
    ('optim.noise_scale', number(0)),
    ('optim.modulation_start', integer(0)),
    ('optim.modulation_end', integer(-1)),
    # training, mesh
    ('train.batch_size', integer(1)),
    ('train.num_steps', integer(1)),
    ('train.log_every', integer(1)),
    ('train.checkpoint_every', integer(1)),
    ('train.shuffle_buffer', integer(1)),
    ('train.steps_per_call', integer(1)),
    ('train.direct_batch_size', integer(0)),
    ('train.eval_every', integer(0)),
    ('train.patience', integer(0)),
    ('train.select_queries', ('-1 (all) or an integer >= 1', lambda v: _is_int(v) and (v == -1 or v >= 1))),
    ('mesh.shape', mesh_shape()),
    ('mesh.num_processes', integer(1)),
    ('mesh.process_id', integer(-1)),
    # decoding and evaluation
    ('decode.beam_size', integer(1)),
    ('decode.batch_size', integer(1)),
    ('decode.branch', one_of(BRANCHES)),
    ('decode.constrained', boolean()),
    ('decode.aggregation', one_of(AGGREGATIONS)),
    ('decode.length_norm', boolean()),
    ('decode.complete_last', boolean()),
    ('decode.complete_direct', boolean()),
    ('decode.direct_weight', ("'valid', 'model' or a number in [0, 1]", lambda v: _weight_ok(v))),
    ('decode.finish_width', integer(0)),
    ('decode.num_explanations', integer(0)),
    ('decode.max_queries', ('-1 (all) or an integer >= 1', lambda v: _is_int(v) and (v == -1 or v >= 1))),
    ('decode.splits', split_list()),
    ('ranking.priors', ('a tuple of NAME=THRESHOLD, NAME in ' + str(PRIORS) + ', 0 < THRESHOLD <= 1',
                        lambda v: _priors_ok(v))),
)


def _weight_ok(value: Any) -> bool:
  if value in ('valid', 'model'):
    return True
  try:
    return 0.0 <= float(value) <= 1.0
  except (TypeError, ValueError):
    return False


def _priors_ok(value: Any) -> bool:
  if isinstance(value, str) or not isinstance(value, (tuple, list)):
    return False
  for item in value:
    name, sep, threshold = str(item).partition('=')
    try:
      if name not in PRIORS or not sep or not 0.0 < float(threshold) <= 1.0:
        return False
    except ValueError:
      return False
  return True

# (keys, predicate over the config, what must hold) — rules that tie keys together.
CROSS_CHECKS: tuple[tuple[tuple[str, ...], Callable[[Any], bool], str], ...] = (
    (('data.name', 'data.synthetic'),
     lambda c: not (c.data.name and c.data.synthetic),
     'at most one of them: a named dataset or the generated synthetic KG'),
    (('features.ngram_min', 'features.ngram_max'),
     lambda c: c.features.ngram_min <= c.features.ngram_max, 'ngram_min <= ngram_max'),
    (('model.emb_dim', 'model.num_heads'),
     lambda c: c.model.emb_dim % c.model.num_heads == 0, 'emb_dim divisible by num_heads'),
    (('rules.max_length', 'trajectories.max_hops'),
     lambda c: c.rules.max_length <= c.trajectories.max_hops, 'rules.max_length <= max_hops'),
    (('decode.branch', 'model.variant'),
     lambda c: c.decode.branch == 'concat' or c.model.variant in FEATURE_VARIANTS,
     "branch 'fig'/'ocr' only with a feature variant (mkg, mkg_rl)"),
)


def _get(config: Any, key: str) -> tuple[bool, Any]:
  node = config
  for part in key.split('.'):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False, None
  return True, node


def problems(config: Any) -> list[str]:
  """One line per violated rule (empty when the config is fine). Keys the config lacks are skipped."""
  out, bad = [], set()
  for rule in CHECKS:
    found, value = _get(config, rule.key)
    if found and not rule.ok(value):
      bad.add(rule.key)
      out.append(f'{rule.key} = {value!r}: must be {rule.allowed} (--config.{rule.key}=...)')
  for keys, ok, words in CROSS_CHECKS:
    if all(_get(config, k)[0] for k in keys) and not bad & set(keys) and not ok(config):
      values = ', '.join(f'{k} = {_get(config, k)[1]!r}' for k in keys)
      out.append(f'{values}: need {words}')
  return out


def validate(config: Any) -> None:
  """Raises `ConfigError` listing every bad value of `config` (see `CHECKS`, `CROSS_CHECKS`)."""
  found = problems(config)
  if found:
    raise ConfigError(f'{len(found)} bad config value{"s" if len(found) > 1 else ""}:\n  '
                      + '\n  '.join(found))


# ============================================================================ unknown keys
def flat_keys(config: Any, prefix: str = '') -> list[str]:
  """Every dotted key of a (nested) ConfigDict, sections included (`model`, `model.emb_dim`, ...)."""
  keys = []
  for name, value in config.items():
    key = f'{prefix}{name}'
    keys.append(key)
    if hasattr(value, 'items') and not isinstance(value, dict):
      keys += flat_keys(value, key + '.')
  return keys


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """`{'a': {'b': 1}}` -> `{'a.b': 1}` (leaves: anything but a dict or ConfigDict)."""
  if hasattr(tree, 'to_dict'):                             # a ConfigDict
    tree = tree.to_dict()
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, f'{prefix}.{key}' if prefix else key))
  return out


def unknown_keys_message(config: Any, keys: Sequence[str]) -> str | None:
  """A message naming each key of `keys` the config lacks and the nearest valid keys, or None."""
  known = flat_keys(config)
  lines = []
  for key in keys:
    if key in known:
      continue
    section, _, leaf = key.rpartition('.')
    siblings = [k for k in known if k.rpartition('.')[0] == section and k != section]
    near = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    near += [k for k in difflib.get_close_matches(key, siblings, n=3, cutoff=0.5) if k not in near]
    line = f'--config.{key}: no such config key'
    if near:
      line += f'; nearest valid keys: {", ".join(near[:3])}'
    if siblings and (section in known or not section):
      line += f' (the keys of {section or "the config"}: ' + ', '.join(
          k.rpartition('.')[2] for k in siblings) + ')'
    lines.append(line)
  return '\n'.join(lines) if lines else None


def load_config_file(spec: str) -> Any:
  """`get_config()` of a config file given as `path[:argument]` (as `--config=` takes it)."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_imkga_config_for_check', path)
  if module_spec is None or module_spec.loader is None:
    raise FileNotFoundError(f'--config={spec}: cannot load {path!r} as a Python config file')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def override_keys(argv: Sequence[str]) -> tuple[str | None, list[str]]:
  """`(the --config file spec, the keys of every --config.KEY override)` in a command line."""
  spec, keys = None, []
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      spec = arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith('--config.'):
      keys.append(arg[len('--config.'):].split('=', 1)[0])
  return spec, keys


def check_override_keys(argv: Sequence[str]) -> None:
  """Raises `ConfigError` when a `--config.KEY` override names no key of the `--config` file."""
  spec, keys = override_keys(argv)
  if spec is None or not keys:
    return
  message = unknown_keys_message(load_config_file(spec), keys)
  if message:
    raise ConfigError(message)
