"""Tests of imkga_jax/masks.py: Mask I structure, Mask II/III statistics, apply_masks."""
import jax
import ml_collections
import numpy as np
import pytest

from imkga_jax import masks
from imkga_jax.kg import EOS
from imkga_jax.kg import MASK
from imkga_jax.kg import PAD


def test_mask_one_is_causal_over_interleaved_tokens():
  steps = 4
  m = np.asarray(masks.causal_mask(steps))
  assert m.shape == (8, 8) and m.dtype == bool
  for n in range(steps):
    row = m[2 * n]  # output at C_n
    allowed = {2 * i for i in range(n + 1)} | {2 * i + 1 for i in range(n)}  # C_0..C_n, a_0..a_{n-1}
    assert set(np.flatnonzero(row)) == allowed


def test_mask_two_statistics():
  b, t = 20000, 14
  keep = np.asarray(masks.mask_two(jax.random.key(0), b, t, p_k=1.0, p_m=0.3))
  assert keep.shape == (b, t) and keep.dtype == bool
  assert abs((~keep).mean() - 0.3) < 0.005  # p_k = 1: every sequence, rate p_m
  keep = np.asarray(masks.mask_two(jax.random.key(1), b, t, p_k=0.4, p_m=1.0))
  fully, none = (~keep).all(1), keep.all(1)
  assert np.all(fully | none)  # p_m = 1: all or nothing per sequence
  assert abs(fully.mean() - 0.4) < 0.015  # rate p_k
  keep = np.asarray(masks.mask_two(jax.random.key(2), b, t, p_k=0.5, p_m=0.2))
  assert abs((~keep).mean() - 0.5 * 0.2) < 0.004
  touched = ~keep.all(1)
  expected = 0.5 * (1 - 0.8 ** t)  # chosen AND at least one drop
  assert abs(touched.mean() - expected) < 0.015
  assert abs((~keep[touched]).mean() - 0.2 / (1 - 0.8 ** t)) < 0.01


def _paths(b, rng):
  """Random padded paths `x… <eos> <pad>…` of 1-4 real tokens (eos included) in 7 slots."""
  actions = np.zeros((b, 7), np.int32)
  lengths = rng.integers(2, 8, b)
  for i, n in enumerate(lengths):
    actions[i, :n - 1] = rng.integers(4, 50, n - 1)
    actions[i, n - 1] = EOS
  return actions, lengths


def test_mask_three_statistics_and_eligibility():
  rng = np.random.default_rng(0)
  actions, lengths = _paths(20000, rng)
  masked, flag = masks.mask_three(jax.random.key(0), actions, 0.25)
  masked, flag = np.asarray(masked), np.asarray(flag)
  hit = masked != actions
  assert np.all(masked[hit] == MASK)
  eligible = (np.arange(7)[None] < (lengths - 1)[:, None])  # all real tokens but <eos>
  assert not hit[~eligible].any()  # <eos> and <pad> never replaced
  assert abs(hit[eligible].mean() - 0.25) < 0.01
  np.testing.assert_array_equal(flag, hit.any(1))
  expected_flag = np.mean(1 - 0.75 ** (lengths - 1))
  assert abs(flag.mean() - expected_flag) < 0.015


def test_apply_masks_train_and_eval():
  rng = np.random.default_rng(1)
  actions, _ = _paths(64, rng)
  batch = {'actions': actions, 'rtg': np.ones((64, 7), np.float32), 'kind': np.zeros(64)}
  before = actions.copy()
  cfg = ml_collections.ConfigDict({'p_k': 0.5, 'p_m': 0.1, 'p_3': 0.3})
  inputs, mask3 = masks.apply_masks(jax.random.key(0), batch, cfg, train=True)
  np.testing.assert_array_equal(batch['actions'], before)  # targets untouched
  assert inputs['rtg'] is batch['rtg'] and 'kind' in inputs
  assert inputs['token_keep'].shape == (64, 14) and mask3.shape == (64,)
  assert np.any(mask3) and np.any(~np.asarray(inputs['token_keep']))
  np.testing.assert_array_equal(mask3, np.any(np.asarray(inputs['actions']) != before, 1))
  again, mask3_again = masks.apply_masks(jax.random.key(0), batch, cfg, train=True)
  np.testing.assert_array_equal(again['actions'], inputs['actions'])  # deterministic in rng
  np.testing.assert_array_equal(mask3_again, mask3)
  evals, mask3_eval = masks.apply_masks(jax.random.key(0), batch, cfg, train=False)
  np.testing.assert_array_equal(evals['actions'], before)
  assert np.all(evals['token_keep']) and not np.any(mask3_eval)
  jitted = jax.jit(lambda k, b: masks.apply_masks(k, b, cfg))(jax.random.key(0), batch)
  np.testing.assert_array_equal(jitted[0]['actions'], inputs['actions'])


def test_apply_masks_errors():
  with pytest.raises(KeyError, match='p_3'):
    masks.apply_masks(jax.random.key(0), {'actions': np.zeros((1, 3), np.int32)},
                      {'p_k': 0.1, 'p_m': 0.1})
  with pytest.raises(ValueError, match='p_m'):
    masks.mask_two(jax.random.key(0), 2, 4, 0.5, 1.5)
  assert PAD == 0
