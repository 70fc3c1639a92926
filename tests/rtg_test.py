"""Return-to-go arithmetic (Eq. 8–12), step by step (imkga_jax/rtg.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imkga_jax import kg as kg_lib
from imkga_jax import rtg
from imkga_jax.kg import BOS, EOS, MASK, PAD

# Token layout of a KG with R = 3: relations 4..9 (inverses 7..9), entities from 10.
C = rtg.RtgConstants(r_good=1.0, r_bad=-1.0, r_step=-0.1, space=kg_lib.TokenSpace(3, 20))
R1, R2, E1, E2, T = 4, 8, 11, 12, 13


def seq(actions, sims, knowns, r1):
  return rtg.rtg_sequence(np.asarray([actions]), np.asarray([r1]), np.asarray([sims], np.float32),
                          np.asarray([knowns]), C)[0]


def test_three_hop_path_step_by_step():
  # r1 e1 r2 e2 r1 t <eos>, images: e1 sim 0.2, e2 missing, t itself (sim 1).
  actions = [R1, E1, R2, E2, R1, T, EOS]
  sims = [0, 0.2, 0, 0, 0, 1.0, 0]
  knowns = [False, True, False, False, False, True, False]
  got = seq(actions, sims, knowns, 1.0)
  want = [1.0]                      # R̂1 = r_good: the path ends at t
  want.append(want[-1] - (-0.1))    # r1: relation, r_add 0           -> 1.1
  want.append(want[-1] - (-0.1 + 1.0 * 0.2))  # e1: R̂1·sim         -> 1.0
  want.append(want[-1] - (-0.1))    # r2                                -> 1.1
  want.append(want[-1] - (-0.1 + 0.5))  # e2: image missing, ½R̂1    -> 0.7
  want.append(want[-1] - (-0.1))    # r1                                -> 0.8
  want.append(want[-1] - (-0.1 + 1.0))  # t: sim 1                    -> -0.1
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(got, [1.0, 1.1, 1.0, 1.1, 0.7, 0.8, -0.1], atol=1e-6)


def test_direct_trajectory_and_padding_repeat_the_last_value():
  got = seq([T, EOS, PAD, PAD, PAD], [1.0, 0, 0, 0, 0], [True, False, False, False, False], 1.0)
  np.testing.assert_allclose(got, [1.0, 0.1, 0.1, 0.1, 0.1], atol=1e-6)


def test_negative_walk_starts_from_r_bad():
  # A walk that misses t: R̂1 = r_bad, and r_add = R̂1·sim is negative for similar entities.
  got = seq([R1, E1, EOS, PAD], [0, 0.5, 0, 0], [False, True, False, False], -1.0)
  np.testing.assert_allclose(got, [-1.0, -0.9, -0.9 - (-0.1 - 0.5), -0.3], atol=1e-6)


def test_target_unknown_uses_half_r1_for_every_entity():
  actions = [R1, E1, R1, T, EOS]
  unknown = seq(actions, [0.0] * 5, [False] * 5, 1.0)
  np.testing.assert_allclose(unknown, [1.0, 1.1, 0.7, 0.8, 0.4], atol=1e-6)


@pytest.mark.parametrize('prev,action,wrong', [
    (BOS, R1, False), (BOS, T, False), (BOS, EOS, True), (BOS, PAD, True), (BOS, MASK, True),
    (R1, E1, False), (R1, R2, True), (R1, EOS, True),
    (E1, R2, False), (E1, EOS, False), (E1, E2, True), (E1, BOS, True),
    (MASK, E1, False), (MASK, R1, False), (MASK, EOS, False), (MASK, PAD, True),
])
def test_wrong_kind_table(prev, action, wrong):
  assert bool(rtg.wrong_kind(np.int32(action), np.int32(prev), C)) == wrong


def test_wrong_kind_adds_r_bad_to_the_reward():
  # r1 r2 (relation after relation): the second action's reward gets + r_bad, so R̂ rises by 1.
  got = seq([R1, R2, E1, EOS], [0, 0, 0, 0], [False] * 4, 1.0)
  np.testing.assert_allclose(got, [1.0, 1.1, 1.1 - (-0.1 - 1.0), 2.2 - (-0.1 + 0.5)], atol=1e-6)


def test_next_rtg_matches_sequence_and_runs_under_jit():
  rng = np.random.default_rng(0)
  actions = np.asarray([[R1, E1, R2, T, EOS, PAD, PAD], [T, EOS, PAD, PAD, PAD, PAD, PAD],
                        [R2, E2, R1, E1, R1, T, EOS]], np.int32)
  sims = rng.uniform(-1, 1, actions.shape).astype(np.float32)
  knowns = rng.random(actions.shape) < 0.5
  r1 = np.asarray([1.0, 1.0, -1.0], np.float32)
  want = rtg.rtg_sequence(actions, r1, sims, knowns, C)
  got = jax.jit(lambda a, r, s, k: rtg.rtg_sequence(a, r, s, k, C))(actions, r1, sims, knowns)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)

  @jax.jit
  def stepwise(a, r, s, k):  # what decode does: one step at a time
    values = [r]
    prev = jnp.full_like(a[:, 0], BOS)
    for n in range(1, a.shape[1]):
      values.append(rtg.next_rtg(values[-1], a[:, n - 1], prev, r, s[:, n - 1], k[:, n - 1], C))
      prev = a[:, n - 1]
    return jnp.stack(values, 1)

  np.testing.assert_allclose(np.asarray(stepwise(actions, r1, sims, knowns)), want, atol=1e-6)
  unknown = rtg.rtg_sequence(actions, r1, 0.0, False, C)
  step = rtg.next_rtg_target_unknown(jnp.asarray(unknown[:, 1]), jnp.asarray(actions[:, 1]),
                                     jnp.asarray(actions[:, 0]), jnp.asarray(r1), C)
  np.testing.assert_allclose(np.asarray(step), unknown[:, 2], atol=1e-6)


def test_constants_from_config():
  from configs import default  # pylint: disable=g-import-not-at-top
  c = rtg.constants_from_config(default.get_config(), kg_lib.TokenSpace(3, 20))
  assert c.space.entity_offset == 10 and c.r_good > 0 > c.r_bad and c.r_step < 0
  assert c.missing_similarity == 0.5
