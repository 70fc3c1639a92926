"""Tests for imkga_jax.optim.modulation (Eq. 26-28, OGM-GE semantics)."""

import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from imkga_jax.optim import ModalityModulationState
from imkga_jax.optim import modality_modulation

ALPHA = 0.6
LABELS = {'fig': 'fig', 'ocr': 'ocr', 'emb': None}


def _params():
  rng = np.random.default_rng(0)
  return {
      'fig': jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
      'ocr': jnp.asarray(rng.normal(size=(8, 16)), jnp.float32),
      'emb': jnp.asarray(rng.normal(size=(32, 4)), jnp.float32),
  }


def _grads(scale=1.0):
  rng = np.random.default_rng(1)
  return jax.tree.map(
      lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype),
      _params())


def _expected_coeffs(losses: dict[str, float], alpha: float):
  """Independent reference: Eq. 26-27 with OGM-GE semantics, plain Python."""
  names = sorted(losses)
  out, ratio = [], None
  for n in names:
    others = [losses[k] for k in names if k != n]
    rho = (sum(others) / len(others)) / losses[n]
    dominant = losses[n] == min(losses.values())
    if dominant:
      ratio = rho
    out.append(1 - math.tanh(alpha * max(rho, 0.0))
               if dominant and rho > 1 else 1.0)
  return ratio, out


@pytest.mark.parametrize('losses', [
    {'fig': 0.4, 'ocr': 1.3},   # fig dominant
    {'fig': 2.0, 'ocr': 0.5},   # ocr dominant
    {'fig': 0.7, 'ocr': 0.7},   # equal: nobody damped
])
def test_coefficients_two_modalities(losses):
  tx = modality_modulation(LABELS, ALPHA, noise_scale=0.0)
  grads = _grads()
  updates, state = tx.update(grads, tx.init(_params()), _params(),
                             modality_losses=losses)
  ratio, coeffs = _expected_coeffs(losses, ALPHA)
  np.testing.assert_allclose(state.coefficients, coeffs, rtol=1e-6)
  np.testing.assert_allclose(state.ratio, ratio, rtol=1e-6)
  assert int(state.count) == 1
  # Without noise the update is exactly grad * coefficient.
  for i, name in enumerate(['fig', 'ocr']):
    np.testing.assert_allclose(updates[name], grads[name] * coeffs[i],
                               rtol=1e-6)
  if losses['fig'] == losses['ocr']:
    np.testing.assert_array_equal(state.coefficients, [1.0, 1.0])
    assert float(state.ratio) == 1.0
  else:
    assert sum(c < 1 for c in np.asarray(state.coefficients)) == 1


def test_scores_match_losses_for_two_modalities():
  """OGM-GE scores (higher = stronger) give the same result as 1/score losses."""
  tx = modality_modulation(LABELS, ALPHA, noise_scale=0.0)
  state0 = tx.init(_params())
  _, by_score = tx.update(_grads(), state0,
                          modality_scores={'fig': 30.0, 'ocr': 10.0})
  _, by_loss = tx.update(_grads(), state0,
                         modality_losses={'fig': 1 / 30.0, 'ocr': 1 / 10.0})
  np.testing.assert_allclose(by_score.coefficients, by_loss.coefficients,
                             rtol=1e-5)
  np.testing.assert_allclose(by_score.ratio, 3.0, rtol=1e-6)
  np.testing.assert_allclose(by_score.coefficients,
                             [1 - math.tanh(ALPHA * 3.0), 1.0], rtol=1e-6)


@pytest.mark.parametrize('losses', [
    {'a': 1.0, 'b': 2.0, 'c': 3.0},   # a dominant, ρ = mean(2, 3) / 1
    {'a': 1.0, 'b': 1.0, 'c': 3.0},   # tie: a and b both dominant, ρ = 2
    {'a': 3.0, 'b': 3.0, 'c': 3.0},   # all equal
])
def test_coefficients_three_modalities(losses):
  params = {k: jnp.ones(4) for k in losses}
  tx = modality_modulation({k: k for k in losses}, 0.3, noise_scale=0.0)
  _, state = tx.update(params, tx.init(params), modality_losses=losses)
  ratio, coeffs = _expected_coeffs(losses, 0.3)
  np.testing.assert_allclose(state.coefficients, coeffs, rtol=1e-6)
  np.testing.assert_allclose(state.ratio, ratio, rtol=1e-6)


def test_scores_three_modalities():
  params = {k: jnp.ones(4) for k in 'abc'}
  tx = modality_modulation({k: k for k in 'abc'}, 0.3, noise_scale=0.0)
  _, state = tx.update(params, tx.init(params),
                       modality_scores={'a': 3.0, 'b': 1.0, 'c': 2.0})
  # a dominant (highest score), ρ = 3 / mean(1, 2) = 2.
  np.testing.assert_allclose(state.ratio, 2.0, rtol=1e-6)
  np.testing.assert_allclose(state.coefficients,
                             [1 - math.tanh(0.6), 1.0, 1.0], rtol=1e-6)


def test_state_order_is_sorted_labels():
  params = {'x': jnp.ones(3), 'y': jnp.ones(3)}
  tx = modality_modulation({'x': 'zeta', 'y': 'alpha'}, ALPHA, noise_scale=0.0)
  _, state = tx.update(params, tx.init(params),
                       modality_losses={'zeta': 0.5, 'alpha': 1.0})
  # order ('alpha', 'zeta'): zeta is dominant, so the SECOND entry is damped.
  np.testing.assert_allclose(state.coefficients,
                             [1.0, 1 - math.tanh(ALPHA * 2.0)], rtol=1e-6)


def test_noise_statistics():
  """Noise is N(0, noise_scale * (std(g) + 1e-8)) on each labelled leaf."""
  rng = np.random.default_rng(3)
  params = {'fig': jnp.asarray(rng.normal(0.3, 2.5, size=4096), jnp.float32),
            'ocr': jnp.asarray(rng.normal(0.0, 0.01, size=4096), jnp.float32)}
  losses = {'fig': 0.5, 'ocr': 1.5}
  for noise_scale in (1.0, 2.0):
    tx = modality_modulation({'fig': 'fig', 'ocr': 'ocr'}, ALPHA,
                             noise_scale=noise_scale, key=jax.random.key(7))
    update = jax.jit(lambda g, s: tx.update(g, s, modality_losses=losses))
    state = tx.init(params)
    noise = {'fig': [], 'ocr': []}
    for _ in range(50):
      out, state = update(params, state)
      for i, k in enumerate(['fig', 'ocr']):
        noise[k].append(np.asarray(out[k]) -
                        np.asarray(params[k]) * float(state.coefficients[i]))
    for k in noise:
      sample = np.concatenate(noise[k])  # 204,800 draws
      want_std = noise_scale * (float(jnp.std(params[k])) + 1e-8)
      assert abs(sample.mean()) < 5 * want_std / math.sqrt(sample.size)
      np.testing.assert_allclose(sample.std(), want_std, rtol=0.01)
    # Fresh noise every step and for every leaf.
    assert not np.allclose(noise['fig'][0], noise['fig'][1])


def test_noise_is_deterministic_per_key():
  g = _grads()
  losses = {'fig': 1.0, 'ocr': 2.0}
  outs = []
  for seed in (0, 0, 1):
    tx = modality_modulation(LABELS, ALPHA, key=jax.random.PRNGKey(seed))
    outs.append(tx.update(g, tx.init(g), modality_losses=losses)[0]['fig'])
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.allclose(outs[0], outs[2])


def test_unlabelled_leaves_unchanged_bit_for_bit():
  g = _grads()
  g['emb'] = g['emb'].astype(jnp.bfloat16)
  tx = modality_modulation(LABELS, ALPHA, noise_scale=1.0)
  update = jax.jit(lambda g, s: tx.update(g, s, modality_losses={
      'fig': 0.2, 'ocr': 0.9}))
  out, _ = update(g, tx.init(g))
  assert out['emb'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out['emb'], np.float32),
                                np.asarray(g['emb'], np.float32))
  assert not np.allclose(out['fig'], g['fig'])
  assert not np.allclose(out['ocr'], g['ocr'])  # noise even with coeff 1


def test_dtype_kept_for_bfloat16_grads():
  g = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _grads())
  tx = modality_modulation(LABELS, ALPHA)
  out, _ = tx.update(g, tx.init(g), modality_losses={'fig': 1.0, 'ocr': 2.0})
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))


def test_active_window():
  g = _grads()
  tx = modality_modulation(LABELS, ALPHA, start_step=2, end_step=3)
  update = jax.jit(lambda g, s: tx.update(g, s, modality_losses={
      'fig': 0.2, 'ocr': 0.9}))
  state = tx.init(g)
  for step in range(6):
    out, state = update(g, state)
    active = 2 <= step <= 3
    assert (float(state.coefficients[0]) < 1) == active, step
    np.testing.assert_allclose(state.ratio, 4.5, rtol=1e-6)  # always logged
    same = all(np.array_equal(out[k], g[k]) for k in g)
    assert same == (not active), step


@pytest.mark.parametrize('end_step', [None, -1])
def test_no_end(end_step):
  g = _grads()
  tx = modality_modulation(LABELS, ALPHA, noise_scale=0.0, end_step=end_step)
  state = tx.init(g)._replace(count=jnp.asarray(10**6, jnp.int32))
  _, state = tx.update(g, state, modality_losses={'fig': 0.2, 'ocr': 0.9})
  assert float(state.coefficients[0]) < 1


def test_callable_and_prefix_labels():
  params = {'fig': {'w': jnp.ones((2, 3)), 'b': jnp.ones(3)},
            'ocr': {'w': jnp.ones((2, 3))}, 'head': jnp.ones(3)}
  def label_fn(p):
    return {k: (k if k in ('fig', 'ocr') else None) for k in p}
  tx = modality_modulation(label_fn, ALPHA, noise_scale=0.0)
  out, state = tx.update(params, tx.init(params), params,
                         modality_losses={'fig': 0.3, 'ocr': 0.6})
  c = 1 - math.tanh(ALPHA * 2.0)
  np.testing.assert_allclose(out['fig']['b'], c * np.ones(3), rtol=1e-6)
  np.testing.assert_allclose(out['fig']['w'], c * np.ones((2, 3)), rtol=1e-6)
  np.testing.assert_array_equal(out['ocr']['w'], params['ocr']['w'])
  np.testing.assert_array_equal(out['head'], params['head'])
  assert isinstance(state, ModalityModulationState)


def test_chain_with_clip_and_adamw_and_jit():
  params, g = _params(), _grads(scale=10.0)
  losses = {'fig': 0.5, 'ocr': 2.0}
  mod = modality_modulation(LABELS, ALPHA, key=jax.random.PRNGKey(3))
  clip, adam = optax.clip_by_global_norm(1.0), optax.adamw(1e-2)
  tx = optax.chain(mod, clip, adam)
  state = tx.init(params)

  @jax.jit
  def step(p, s, g, losses):
    u, s = tx.update(g, s, p, modality_losses=losses)
    return optax.apply_updates(p, u), u, s

  new_params, updates, new_state = step(params, state, g, losses)
  # chain forwarded the losses to the modulation member.
  np.testing.assert_allclose(new_state[0].coefficients,
                             _expected_coeffs(losses, ALPHA)[1], rtol=1e-6)
  # Same result as running the three members by hand, eagerly.
  u, _ = mod.update(g, mod.init(params), params, modality_losses=losses)
  u, _ = clip.update(u, clip.init(params), params)
  u, _ = adam.update(u, adam.init(params), params)
  for k in params:
    np.testing.assert_allclose(updates[k], u[k], rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(new_params[k]))


def test_sharding_kept_on_8_devices():
  devices = jax.devices()
  assert len(devices) == 8, 'tests/conftest.py should give 8 fake CPU devices'
  mesh = jax.sharding.Mesh(np.array(devices).reshape(4, 2), ('data', 'model'))
  shardings = {'fig': NamedSharding(mesh, P('data', 'model')),
               'ocr': NamedSharding(mesh, P(None, 'model')),
               'emb': NamedSharding(mesh, P('model'))}
  params = jax.device_put(_params(), shardings)
  grads = jax.device_put(_grads(), shardings)
  tx = optax.chain(modality_modulation(LABELS, ALPHA),
                   optax.clip_by_global_norm(1.0), optax.adamw(1e-3))

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p, modality_losses={'fig': 0.3, 'ocr': 0.9})
    return optax.apply_updates(p, u), u, s

  new_params, updates, _ = step(params, tx.init(params), grads)
  for k, sharding in shardings.items():
    assert new_params[k].sharding.is_equivalent_to(sharding, 2), k
    assert updates[k].sharding.is_equivalent_to(sharding, 2), k
  # The transform alone, eagerly, keeps the sharding too.
  mod = modality_modulation(LABELS, ALPHA)
  out, _ = mod.update(grads, mod.init(params),
                      modality_losses={'fig': 0.3, 'ocr': 0.9})
  for k, sharding in shardings.items():
    assert out[k].sharding.is_equivalent_to(sharding, 2), k


@pytest.mark.parametrize('labels, kwargs, match', [
    ({'fig': 'fig', 'ocr': 'ocr', 'emb': None, 'audio': 'audio'}, {},
     r"\['audio'\]='audio'"),                    # label matching no parameter
    ({'fig': 'fig', 'ocr': 'ocr', 'emb': 3}, {}, 'must be str or None'),
    ({'fig': 'fig', 'ocr': None, 'emb': None}, {}, 'at least two'),
    (LABELS, {'modalities': ('fig', 'ocr', 'audio')}, r"\['audio'\] match no"),
    (LABELS, {'modalities': ('fig',)}, r"\['ocr'\] are not among"),
])
def test_init_errors(labels, kwargs, match):
  tx = modality_modulation(labels, ALPHA, **kwargs)
  with pytest.raises(ValueError, match=match):
    tx.init(_params())


def test_empty_labelled_subtree_raises():
  params = {'fig': jnp.ones(2), 'ocr': jnp.ones(2), 'audio': {}}
  tx = modality_modulation({'fig': 'fig', 'ocr': 'ocr', 'audio': 'audio'},
                           ALPHA)
  with pytest.raises(ValueError, match="'audio'.*match no parameter"):
    tx.init(params)


@pytest.mark.parametrize('kwargs, match', [
    ({'modality_losses': {'fig': 1.0, 'ocr': 2.0, 'audio': 1.0}},
     r"unknown labels \['audio'\]"),
    ({'modality_losses': {'fig': 1.0}}, r"lacks labels \['ocr'\]"),
    ({'modality_losses': {'fig': jnp.ones(3), 'ocr': 1.0}}, 'must be a scalar'),
    ({}, 'exactly one of'),
    ({'modality_losses': {'fig': 1.0, 'ocr': 2.0},
      'modality_scores': {'fig': 1.0, 'ocr': 2.0}}, 'exactly one of'),
])
def test_update_errors(kwargs, match):
  tx = modality_modulation(LABELS, ALPHA)
  with pytest.raises(ValueError, match=match):
    tx.update(_grads(), tx.init(_params()), **kwargs)


def test_bad_window_raises():
  with pytest.raises(ValueError, match='end_step=1 < start_step=5'):
    modality_modulation(LABELS, ALPHA, start_step=5, end_step=1)
