"""Tests of imkga_jax/models: shapes, Mask I (no leakage), branches, ∅ vectors, axes, variants."""
import functools
import importlib.util
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from imkga_jax import losses
from imkga_jax import masks
from imkga_jax.models import imkga

VARIANTS = imkga.VARIANTS
VOCAB = 37  # unique size, so vocab-sized parameters can be found by shape
STEPS = 5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(variant='mkg_rl', **kw):
  args = dict(vocab_size=VOCAB, num_steps=STEPS, variant=variant, emb_dim=16, num_layers=2,
              num_heads=2, mlp_dim=24, dropout_rate=0.1, attention_dropout_rate=0.1,
              fig_dim=4, ocr_dim=3)
  args.update(kw)
  return imkga.ModelConfig(**args)


def random_inputs(cfg, batch=3, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'head_token': rng.integers(4, cfg.vocab_size, batch).astype(np.int32),
      'relation_token': rng.integers(4, cfg.vocab_size, batch).astype(np.int32),
      'actions': rng.integers(4, cfg.vocab_size, (batch, cfg.num_steps)).astype(np.int32),
      'rtg': rng.normal(size=(batch, cfg.num_steps)).astype(np.float32),
      'fig': rng.normal(size=(batch, cfg.fig_dim)).astype(np.float32),
      'ocr': rng.normal(size=(batch, cfg.ocr_dim)).astype(np.float32),
      'fig_present': np.ones(batch, bool), 'ocr_present': np.ones(batch, bool),
      'mentions': np.where(rng.random((batch, cfg.max_mentions)) < 0.5, -1,
                           rng.integers(4, cfg.vocab_size, (batch, cfg.max_mentions))
                           ).astype(np.int32),
  }


@functools.lru_cache(maxsize=None)
def init(cfg, seed=0):
  model = imkga.IMKGA(cfg)
  variables = jax.jit(model.init)(jax.random.key(seed), imkga.dummy_inputs(cfg, 2))
  return model, nn.unbox(variables['params'])


@functools.lru_cache(maxsize=None)
def jitted_apply(cfg, train=False):
  """One jitted forward per (config, mode), shared by the tests (compiles are the slow part)."""
  model, params = init(cfg)
  rng = jax.random.key(7)
  return jax.jit(lambda x: model.apply({'params': params}, x, train=train, rngs={'dropout': rng}))


@pytest.mark.parametrize('variant', VARIANTS)
def test_shape_and_branches(variant):
  cfg = tiny_config(variant)
  model = imkga.IMKGA(cfg)
  inputs = random_inputs(cfg)
  variables = jax.eval_shape(model.init, jax.random.key(0), inputs)
  logits = jax.eval_shape(model.apply, variables, inputs)
  assert model.branches == (('fig', 'ocr', 'concat') if cfg.use_features else ('concat',))
  assert logits.shape == (len(model.branches), 3, STEPS, VOCAB)


@pytest.mark.parametrize('variant', VARIANTS)
def test_no_leakage_from_later_tokens(variant):
  """logits[:, :, n] is unchanged when actions[:, n:] and rtg[:, n+1:] change (Mask I).

  Run in train mode (dropout on, one fixed dropout key: identical dropout masks) with
  Mask II drops, the strictest setting.
  """
  cfg = tiny_config(variant)
  model, params = init(cfg)
  apply = jitted_apply(cfg, train=True)
  base_inputs = random_inputs(cfg)
  base_inputs['token_keep'] = np.random.default_rng(3).random((3, 2 * STEPS)) > 0.2
  base = np.asarray(apply(base_inputs))
  rng = np.random.default_rng(1)
  for n in range(STEPS):
    changed = dict(base_inputs)
    changed['actions'] = base_inputs['actions'].copy()
    changed['actions'][:, n:] = rng.integers(4, VOCAB, changed['actions'][:, n:].shape)
    changed['rtg'] = base_inputs['rtg'].copy()
    changed['rtg'][:, n + 1:] += rng.normal(size=changed['rtg'][:, n + 1:].shape) * 5
    out = np.asarray(apply(changed))
    np.testing.assert_allclose(out[:, :, :n + 1], base[:, :, :n + 1], rtol=0, atol=1e-6,
                               err_msg=f'step {n} sees a later token')
    if n + 1 < STEPS:  # the changed action a_n must reach step n+1, or the test proves nothing
      assert np.max(np.abs(out[:, :, n + 1] - base[:, :, n + 1])) > 1e-4


def test_rtg_gradient_is_causal():
  cfg = tiny_config('mkg_rl')
  model, params = init(cfg)
  inputs = random_inputs(cfg)

  def per_step(rtg):  # [L]: sum of the logits of each step
    logits = model.apply({'params': params}, {**inputs, 'rtg': rtg})
    return jnp.sum(logits, axis=(0, 1, 3))

  jac = np.asarray(jax.jit(jax.jacrev(per_step))(jnp.asarray(inputs['rtg'])))  # [L, B, L]
  for n in range(STEPS):
    assert np.all(jac[n][:, n + 1:] == 0), f'step {n} has gradient from later R̂'
    assert np.all(np.abs(jac[n][:, n]) > 0), f'step {n} ignores its own R̂'


@pytest.mark.parametrize('variant', ['no_img', 'mkg'])
def test_variants_without_rtg_ignore_it(variant):
  cfg = tiny_config(variant)
  model, params = init(cfg)
  inputs = random_inputs(cfg)
  apply = jitted_apply(cfg)
  other = {**inputs, 'rtg': inputs['rtg'] + 3.0}
  np.testing.assert_array_equal(apply(inputs), apply(other))
  del inputs['rtg']
  np.testing.assert_array_equal(apply(inputs), apply(other))
  width = 2 * cfg.emb_dim + (cfg.fig_dim + cfg.ocr_dim if cfg.use_features else 0)
  assert params['branches']['state_proj']['kernel'].shape[1] == width  # R̂ dropped


def test_each_branch_sees_only_its_modality():
  cfg = tiny_config('mkg_rl')
  model, params = init(cfg)
  apply = jitted_apply(cfg)
  inputs = random_inputs(cfg)
  base = np.asarray(apply(inputs))
  fig = np.asarray(apply({**inputs, 'fig': inputs['fig'] + 1.0}))
  ocr = np.asarray(apply({**inputs, 'ocr': inputs['ocr'] + 1.0}))
  k = {b: i for i, b in enumerate(model.branches)}
  np.testing.assert_array_equal(fig[k['ocr']], base[k['ocr']])
  np.testing.assert_array_equal(ocr[k['fig']], base[k['fig']])
  for changed, branch in ((fig, 'fig'), (fig, 'concat'), (ocr, 'ocr'), (ocr, 'concat')):
    assert np.max(np.abs(changed[k[branch]] - base[k[branch]])) > 1e-4, branch


def test_absent_modality_uses_learned_null_vector():
  cfg = tiny_config('mkg_rl')
  model, params = init(cfg)
  apply = jitted_apply(cfg)
  inputs = random_inputs(cfg)
  absent = {**inputs, 'fig_present': np.array([False, True, False])}
  out = np.asarray(apply(absent))
  # The values of an absent modality are never read …
  np.testing.assert_array_equal(apply({**absent, 'fig': absent['fig'] * 0 + 9.0})[:, 0],
                                out[:, 0])
  # … the branch's ∅ vector stands in: feeding it as a present feature gives the same logits.
  for k in range(len(model.branches)):
    null = np.asarray(params['branches']['null_fig'][k])
    fig = inputs['fig'].copy()
    fig[0] = null
    same = np.asarray(apply({**inputs, 'fig': fig}))
    np.testing.assert_allclose(same[k, 0], out[k, 0], atol=1e-5)
  assert np.max(np.abs(out[0, 0] - np.asarray(apply(inputs))[0, 0])) > 1e-4


def test_token_keep_drops_embeddings():
  cfg = tiny_config('rl')
  model, params = init(cfg)
  apply = jitted_apply(cfg)
  inputs = random_inputs(cfg)
  keep = np.ones((3, 2 * STEPS), bool)
  keep[:, 3] = False  # a_1
  base, dropped = np.asarray(apply(inputs)), np.asarray(apply({**inputs, 'token_keep': keep}))
  np.testing.assert_array_equal(dropped[:, :, :2], base[:, :, :2])
  assert np.max(np.abs(dropped[:, :, 2:] - base[:, :, 2:])) > 1e-4
  # A dropped token's content is gone: changing a_1 no longer matters.
  other = inputs['actions'].copy()
  other[:, 1] = (other[:, 1] + 1 - 4) % (VOCAB - 4) + 4
  np.testing.assert_allclose(apply({**inputs, 'actions': other, 'token_keep': keep}), dropped,
                             atol=1e-6)


def test_logical_axes_and_tied_head():
  cfg = tiny_config('mkg_rl')
  model = imkga.IMKGA(cfg)
  boxed = jax.eval_shape(model.init, jax.random.key(0), imkga.dummy_inputs(cfg))['params']
  specs = nn.get_partition_spec(boxed)
  assert tuple(specs['token_embedding']) == ('vocab', 'embed')
  assert tuple(specs['output_bias']) == ('vocab',)
  flat = jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
  shapes = dict((jax.tree_util.keystr(p), v.shape) for p, v in
                jax.tree_util.tree_flatten_with_path(nn.unbox(boxed))[0])
  for path, spec in flat:
    name = jax.tree_util.keystr(path)
    assert len(spec) == len(shapes[name]), name
    if imkga.is_branch_stacked(path):
      assert spec[0] == 'branch' and shapes[name][0] == 3, name
      if "'blocks'" in name:
        assert spec[1] == 'layers' and shapes[name][1] == cfg.num_layers, name
  # Tied head: no other parameter has a vocabulary-sized axis.
  vocab_sized = sorted(n for n, s in shapes.items() if VOCAB in s)
  assert vocab_sized == ["['output_bias']", "['token_embedding']"]
  assert all(jax.tree.leaves(jax.tree.map(lambda x: x.dtype == jnp.float32, nn.unbox(boxed))))


def test_bfloat16_compute_float32_params():
  cfg = tiny_config('mkg_rl', dtype='bfloat16', num_layers=1)
  model, params = init(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = jitted_apply(cfg, train=True)(random_inputs(cfg))
  assert logits.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(logits, np.float32)))


def test_build_model_reads_config_and_checks_inputs():
  config = default.get_config()
  config.model.variant = 'mkg'
  model = imkga.build_model(config, num_tokens=99)
  assert model.config.vocab_size == 99
  assert model.config.num_steps == 2 * config.trajectories.max_hops + 1
  assert model.config.fig_dim == config.features.fig_dim
  cfg = tiny_config('mkg')
  model, params = init(cfg)
  inputs = random_inputs(cfg)
  del inputs['ocr_present']
  with pytest.raises(ValueError, match='ocr_present'):
    model.apply({'params': params}, inputs)
  with pytest.raises(ValueError, match='variant'):
    tiny_config('bogus')


def _loss_fn(model, inputs, targets, mask3, train=True):
  def loss_fn(params, dropout_rng):
    logits = model.apply({'params': params}, inputs, train=train, rngs={'dropout': dropout_rng})
    return losses.path_loss(logits, targets, mask3, model.branches, 0.7, 1.5,
                            token_keep=inputs['token_keep'])
  return loss_fn


def _batch(cfg, batch=4, seed=0):
  x = random_inputs(cfg, batch, seed)
  x['actions'][:, 3] = 2  # <eos>, then padding
  x['actions'][:, 4:] = 0
  x['actions'][0, 1] = 2  # a direct trajectory `t <eos>`
  x['actions'][0, 2:] = 0
  return x


@pytest.mark.parametrize('variant', VARIANTS)
def test_variant_gives_finite_loss_and_gradients(variant):
  cfg = tiny_config(variant)
  model, params = init(cfg)
  batch = _batch(cfg)
  masks_cfg = {'p_k': 0.5, 'p_m': 0.3, 'p_3': 0.5}
  inputs, mask3 = masks.apply_masks(jax.random.key(1), batch, masks_cfg)
  fn = jax.jit(jax.value_and_grad(_loss_fn(model, inputs, batch['actions'], mask3), has_aux=True))
  (total, per_branch), grads = fn(params, jax.random.key(2))
  assert set(per_branch) == set(model.branches)
  assert np.isfinite(total) and total > 0
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.max(np.abs(grads['token_embedding'])) > 0
  for k in range(len(model.branches)):  # every branch's encoder learns
    assert np.max(np.abs(grads['branches']['encoder']['blocks']['mlp']['wi']['kernel'][k])) > 0


def _load_config(name):
  path = os.path.join(REPO, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'_cfg_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.slow  # ~90 s wall on the shared 2-core box (4 compiles)
def test_jit_value_and_grad_compiles_for_every_variant_on_synthetic_sizes():
  config = _load_config('synthetic')
  num_tokens = 3000  # the synthetic KG's order of magnitude (benchmarks/param_counts.py)
  for variant in VARIANTS:
    config.model.variant = variant
    model = imkga.build_model(config, num_tokens)
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                     imkga.dummy_inputs(model.config))['params'])
    cfg = model.config
    batch = _batch(cfg, batch=8)
    inputs, mask3 = masks.apply_masks(jax.random.key(1), batch, config.masks)
    start = time.time()
    compiled = jax.jit(jax.value_and_grad(
        _loss_fn(model, inputs, batch['actions'], mask3), has_aux=True)).lower(
            params, jax.random.key(2)).compile()
    assert compiled is not None
    print(f'{variant}: compiled in {time.time() - start:.1f}s')


def test_is_branch_stacked():
  cfg = tiny_config('mkg_rl')
  _, params = init(cfg)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    assert imkga.is_branch_stacked(path) == (jax.tree_util.keystr(path).startswith("['branches']"))
  assert imkga.is_branch_stacked((jax.tree_util.DictKey('params'), jax.tree_util.DictKey('branches')))


def test_mention_evidence_moves_only_the_named_step0_logits_of_the_ocr_branches():
  """The entities the head's OCR text names get +w_r at C_0 (w per query relation), on the ocr
  and concat branches only; the parameter leaves every other initial value as it was, and the
  cached step 0 reads the same evidence as the whole sequence."""
  plain, named = tiny_config('mkg_rl'), tiny_config('mkg_rl', max_mentions=3)
  _, p0 = init(plain)
  model, p3 = init(named)
  assert set(p3) - set(p0) == {'mention_weight'}
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves({k: p3[k] for k in p0})):
    np.testing.assert_array_equal(a, b)
  x = random_inputs(named, batch=2)
  x['mentions'] = np.asarray([[VOCAB - 1, 7, -1], [-1, -1, -1]], np.int32)
  x['relation_token'] = np.asarray([5, 5], np.int32)
  weight = p3['mention_weight'].at[5].set(2.5)
  before = np.asarray(model.apply({'params': p3}, x))
  after = np.asarray(model.apply({'params': dict(p3, mention_weight=weight)}, x))
  expect = np.zeros_like(before)
  expect[1:, 0, 0, [VOCAB - 1, 7]] = 2.5  # branches (fig, ocr, concat): not fig
  np.testing.assert_allclose(after - before, expect, atol=1e-5)
  logits, _ = model.apply({'params': dict(p3, mention_weight=weight)},
                          dict(x, actions=np.zeros((2, 0), np.int32), rtg=x['rtg'][:, :1]), 0,
                          (4, VOCAB), method=imkga.IMKGA.decode_step, mutable=['cache'])
  np.testing.assert_allclose(logits, after[:, :, 0, 4:], atol=1e-5)


def test_typed_head_groups_equal_slices_of_the_full_logits():
  """`heads=grammar.head_groups(...)` returns, per group of steps, the full logits at those steps
  and that token range (the mention evidence at C_0 included), and never the rest."""
  from imkga_jax import grammar, kg as kg_lib  # pylint: disable=g-import-not-at-top
  cfg = tiny_config('mkg_rl', max_mentions=3)
  space = kg_lib.TokenSpace(num_relations=4, num_entities=VOCAB - 12)
  model, params = init(cfg)
  params = dict(params, mention_weight=params['mention_weight'].at[:].set(1.5))
  x = random_inputs(cfg, batch=3, seed=4)
  full = np.asarray(model.apply({'params': params}, x))  # [K, B, L, V]
  groups = grammar.head_groups(STEPS, space)
  assert sorted(n for steps, _ in groups for n in steps) == list(range(STEPS))
  typed = model.apply({'params': params}, x, heads=groups)
  assert len(typed) == len(groups)
  for logits, (steps, (lo, hi)) in zip(typed, groups):
    np.testing.assert_allclose(logits, full[:, :, list(steps), lo:hi], atol=1e-5)


def test_query_product_adds_only_the_product_rows_to_the_state_projection():
  """`query_product` appends LN(emb(h)) ⊙ LN(emb(r)) to the state projection's input: with its rows
  of the kernel at zero the model is exactly the plain Eq. 15 model; with them it is not."""
  cfg = tiny_config('rl', query_product=True, num_layers=1)
  plain = tiny_config('rl', num_layers=1)
  model, params = init(cfg)
  kernel = np.asarray(params['branches']['state_proj']['kernel'])  # [1, 1 + 3E, E]
  e = cfg.emb_dim
  assert kernel.shape == (1, 1 + 3 * e, e)
  assert {'ln_head', 'ln_relation'} <= set(params['branches'])
  inputs = random_inputs(cfg)
  # The plain model's parameters: the same ones, minus the product rows and the two LayerNorms.
  branches = {k: v for k, v in params['branches'].items() if k not in ('ln_head', 'ln_relation')}
  branches['state_proj'] = dict(branches['state_proj'], kernel=kernel[:, :1 + 2 * e])
  want = imkga.IMKGA(plain).apply({'params': dict(params, branches=branches)}, inputs)
  zeroed = dict(params, branches=dict(params['branches'], state_proj=dict(
      params['branches']['state_proj'], kernel=np.concatenate(
          [kernel[:, :1 + 2 * e], np.zeros_like(kernel[:, 1 + 2 * e:])], axis=1))))
  np.testing.assert_allclose(model.apply({'params': zeroed}, inputs), want, rtol=1e-6, atol=1e-6)
  with_product = model.apply({'params': params}, inputs)
  assert np.max(np.abs(np.asarray(with_product) - np.asarray(want))) > 1e-3


def test_initial_scales_follow_embed_std_and_null_std():
  """The token embedding starts at std 1/sqrt(emb_dim) (`embed_std=0`) or `embed_std`, the ∅
  feature vectors at `null_std`."""
  for embed_std, want in ((0.0, 64 ** -0.5), (0.02, 0.02)):
    cfg = tiny_config('mkg_rl', emb_dim=64, num_heads=2, fig_dim=400, ocr_dim=400,
                      embed_std=embed_std, null_std=0.3)
    _, params = init(cfg)
    assert abs(float(np.std(params['token_embedding'])) / want - 1) < 0.1
    for name in ('null_fig', 'null_ocr'):
      assert abs(float(np.std(params['branches'][name])) / 0.3 - 1) < 0.1


def test_embed_dropout_drops_the_tokens_it_names():
  """`embed_dropout`: 'all' drops every token before the encoder, 'except_first' all but C_0,
  'actions' only the action tokens (with C_0 whole, the output at C_0, which sees only itself,
  matches 'none' exactly: the encoder's own dropout draws are the same), 'none' nothing; at
  evaluation the key changes nothing."""
  cfgs = {mode: tiny_config('rl', embed_dropout=mode) for mode in imkga.EMBED_DROPOUT}
  _, params = init(cfgs['all'])
  inputs = random_inputs(cfgs['all'])
  rngs = {'dropout': jax.random.key(1)}
  evaluated = {m: np.asarray(imkga.IMKGA(c).apply({'params': params}, inputs))
               for m, c in cfgs.items()}
  trained = {m: np.asarray(imkga.IMKGA(c).apply({'params': params}, inputs, train=True, rngs=rngs))
             for m, c in cfgs.items()}
  for mode in cfgs:
    np.testing.assert_allclose(evaluated[mode], evaluated['none'], rtol=1e-6, atol=1e-6)
  for mode in ('except_first', 'actions'):  # C_0 kept whole: the step-0 output is 'none''s
    np.testing.assert_allclose(trained[mode][:, :, 0], trained['none'][:, :, 0], rtol=1e-6,
                               atol=1e-6)
    assert np.max(np.abs(trained[mode][:, :, 1:] - trained['none'][:, :, 1:])) > 1e-3
  assert np.max(np.abs(trained['all'][:, :, 0] - trained['none'][:, :, 0])) > 1e-3
  # C_1 is dropped by 'except_first' but not by 'actions': the outputs from step 1 on differ.
  assert np.max(np.abs(trained['except_first'][:, :, 1:] - trained['actions'][:, :, 1:])) > 1e-3
  with pytest.raises(ValueError, match='embed_dropout'):
    tiny_config('rl', embed_dropout='state')
