"""Tests of imkga_jax/losses.py against hand computations on a tiny vocabulary."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from imkga_jax import losses
from imkga_jax.kg import EOS
from imkga_jax.kg import MASK
from imkga_jax.kg import PAD


def _hand_token_loss(logit_row, target, eps):
  """−(ε log p_t + (1−ε)/(V−1) Σ_{i≠t} log p_i), written out with Python floats."""
  z = [float(v) for v in logit_row]
  log_norm = math.log(sum(math.exp(v) for v in z))
  log_p = [v - log_norm for v in z]
  others = sum(lp for i, lp in enumerate(log_p) if i != target)
  return -(eps * log_p[target] + (1 - eps) / (len(z) - 1) * others)


def test_token_loss_matches_hand_computation():
  logits = np.array([[0.5, -1.0, 2.0, 0.0, 1.0, 0.3]], np.float32)
  for eps in (0.0, 0.7, 1.0):
    got = float(losses.smoothed_token_loss(jnp.asarray(logits), jnp.array([4]), eps)[0])
    assert got == pytest.approx(_hand_token_loss(logits[0], 4, eps), rel=1e-5)
  ce = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.array([4]))
  assert float(losses.smoothed_token_loss(jnp.asarray(logits), jnp.array([4]), 1.0)[0]) == \
      pytest.approx(float(ce[0]), rel=1e-6)


def test_path_loss_matches_hand_computation():
  """Two branches, two sequences of different lengths, padding, Mask III β, Mask II exclusion."""
  rng = np.random.default_rng(0)
  v, steps, eps, beta = 6, 4, 0.7, 1.5
  branches = ('fig', 'concat')
  logits = rng.normal(size=(2, 2, steps, v)).astype(np.float32)
  targets = np.array([[4, 5, EOS, PAD],   # 3 steps
                      [5, EOS, PAD, PAD]])  # 2 steps
  mask3 = np.array([False, True])
  keep = np.ones((2, 2 * steps), bool)
  keep[0, 2] = False  # state token C_1 of sequence 0 dropped: step 1 not scored
  keep[1, 1] = False  # an ACTION token dropped: no effect on which steps count
  total, per_branch = losses.path_loss(jnp.asarray(logits), jnp.asarray(targets),
                                       jnp.asarray(mask3), branches, eps, beta,
                                       token_keep=jnp.asarray(keep))
  counted = {0: [0, 2], 1: [0, 1]}
  hand = {}
  for k, name in enumerate(branches):
    seq = [np.mean([_hand_token_loss(logits[k, b, n], targets[b, n], eps) for n in counted[b]])
           for b in (0, 1)]
    hand[name] = seq
    assert float(per_branch[name]) == pytest.approx(np.mean(seq), rel=1e-5)
  hand_total = np.mean(hand['fig']) + (hand['concat'][0] + beta * hand['concat'][1]) / 2
  assert float(total) == pytest.approx(hand_total, rel=1e-5)


def test_excluded_positions_do_not_matter():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(1, 2, 5, 8)), jnp.float32)
  targets = jnp.array([[4, 6, 5, EOS, PAD], [7, MASK, EOS, PAD, PAD]])
  base, _ = losses.path_loss(logits, targets, jnp.zeros(2, bool), ('concat',), 0.7, 1.5)
  noise = jnp.asarray(rng.normal(size=logits.shape) * 10, jnp.float32)
  excluded = (targets == PAD) | (targets == MASK)  # [B, L]
  moved = logits + noise * excluded[None, :, :, None]
  again, _ = losses.path_loss(moved, targets, jnp.zeros(2, bool), ('concat',), 0.7, 1.5)
  assert float(again) == pytest.approx(float(base), rel=1e-6)
  moved = logits + noise * (~excluded)[None, :, :, None]
  changed, _ = losses.path_loss(moved, targets, jnp.zeros(2, bool), ('concat',), 0.7, 1.5)
  assert abs(float(changed) - float(base)) > 1e-3


def test_length_normalisation_and_empty_sequences():
  """Uniform logits give −log(1/V)·… per token whatever the length; an all-pad row is ignored."""
  v = 5
  logits = jnp.zeros((1, 3, 4, v))
  targets = jnp.array([[4, EOS, PAD, PAD], [4, 4, 4, EOS], [PAD, PAD, PAD, PAD]])
  total, per_branch = losses.path_loss(logits, targets, jnp.array([True, False, True]),
                                       ('concat',), 0.3, 2.0)
  assert float(per_branch['concat']) == pytest.approx(math.log(v), rel=1e-6)
  assert float(total) == pytest.approx((2.0 + 1.0) / 2 * math.log(v), rel=1e-6)


def test_beta_only_weights_concat_in_total_and_gradients_flow():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(3, 2, 3, 7)), jnp.float32)
  targets = jnp.array([[4, 5, EOS], [6, EOS, PAD]])
  mask3 = jnp.array([True, True])
  branches = ('fig', 'ocr', 'concat')
  total, per = losses.path_loss(logits, targets, mask3, branches, 0.7, 3.0)
  assert float(total) == pytest.approx(float(per['fig'] + per['ocr'] + 3.0 * per['concat']),
                                       rel=1e-6)
  grad = jax.grad(lambda x: losses.path_loss(x, targets, mask3, branches, 0.7, 3.0)[0])(logits)
  assert np.all(np.isfinite(grad)) and np.all(grad[:, 1, 2] == 0)  # pad step: no gradient
  with pytest.raises(ValueError, match='branches'):
    losses.path_loss(logits, targets, mask3, ('fig', 'concat'), 0.7, 3.0)


def test_bfloat16_logits_are_upcast():
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(1, 2, 3, 50)), jnp.float32)
  targets = jnp.array([[4, 9, EOS], [6, EOS, PAD]])
  f32, _ = losses.path_loss(logits, targets, jnp.zeros(2, bool), ('concat',), 0.7, 1.5)
  b16, _ = losses.path_loss(logits.astype(jnp.bfloat16), targets, jnp.zeros(2, bool),
                            ('concat',), 0.7, 1.5)
  assert b16.dtype == jnp.float32 and float(b16) == pytest.approx(float(f32), rel=2e-2)


def _grammar_allowed(history, n, space, max_len):
  """The tokens the path grammar allows at step n after `history` (written out, no jax)."""
  relations = set(range(space.relation_offset, space.entity_offset))
  entities = set(range(space.entity_offset, space.num_tokens))
  if n == 0:
    return (relations if n < max_len - 2 else set()) | (entities if n < max_len - 1 else set())
  prev = history[n - 1]
  if space.relation_offset <= prev < space.entity_offset:
    return entities if n < max_len - 1 else set()
  if prev >= space.entity_offset:
    return {EOS} | (relations if 2 <= n < max_len - 2 else set())
  return set()


def _typed_paths(space, max_len, rng, batch):
  """Grammar-valid sequences: direct answers, paths of 1 … max_hops hops, padded."""
  rows = []
  for b in range(batch):
    hops = b % ((max_len - 1) // 2 + 1)
    seq = ([int(rng.integers(space.entity_offset, space.num_tokens))] if hops == 0 else
           [int(x) for _ in range(hops) for x in (rng.integers(space.relation_offset,
                                                               space.entity_offset),
                                                  rng.integers(space.entity_offset,
                                                               space.num_tokens))])
    rows.append(seq + [EOS] + [PAD] * (max_len - len(seq) - 1))
  return np.asarray(rows, np.int32)


@pytest.mark.parametrize('steps', [7, 2])
def test_typed_token_loss_matches_brute_force(steps):
  """Each step's softmax and smoothing cover only what the grammar allows after the true history;
  the grammar's length is the model's whatever the sequences' (the direct stream's are 2 long)."""
  from imkga_jax import grammar, kg as kg_lib  # pylint: disable=g-import-not-at-top
  space, max_len, eps = kg_lib.TokenSpace(num_relations=2, num_entities=6), 7, 0.7
  rng = np.random.default_rng(3)
  targets = _typed_paths(space, max_len, rng, 8)
  if steps == 2:
    targets = np.concatenate([targets[targets[:, 1] == EOS][:, :2]] * 2)
  logits = rng.normal(size=(2, len(targets), steps, space.num_tokens)).astype(np.float32)
  groups = grammar.head_groups(steps, space)
  got = np.asarray(losses.typed_token_loss(
      [jnp.asarray(logits[:, :, list(s), lo:hi]) for s, (lo, hi) in groups], groups,
      jnp.asarray(targets), eps, space, max_len))
  for k in range(2):
    for b, seq in enumerate(targets):
      for n in range(steps):
        if seq[n] == PAD:
          continue
        allowed = sorted(_grammar_allowed(seq, n, space, max_len) | {int(seq[n])})
        z = logits[k, b, n, allowed].astype(np.float64)
        log_p = z - np.log(np.sum(np.exp(z)))
        t = allowed.index(int(seq[n]))
        others = (np.sum(log_p) - log_p[t]) / (space.num_tokens - 1)  # the vocabulary's weight
        assert got[k, b, n] == pytest.approx(-(eps * log_p[t] + (1 - eps) * others), abs=1e-5)
        if len(allowed) == 1:
          assert got[k, b, n] == 0.0  # <eos> after a direct answer: nothing to learn


def test_typed_token_loss_is_infinite_for_a_target_outside_its_step_range():
  """A relation where the grammar wants an entity is a data error: the loss says so (inf), and
  path_loss still ignores uncounted steps (<pad>, whose range never holds it)."""
  from imkga_jax import grammar, kg as kg_lib  # pylint: disable=g-import-not-at-top
  space = kg_lib.TokenSpace(num_relations=2, num_entities=6)
  groups = grammar.head_groups(6, space)
  good = np.asarray([[4, 9, 5, 10, EOS, PAD]], np.int32)  # r e r e <eos> <pad>
  bad = np.asarray([[4, 9, 5, 5, EOS, PAD]], np.int32)  # r e r r: a relation at an entity step
  logits = np.zeros((1, 1, 6, space.num_tokens), np.float32)
  for targets, finite in ((good, True), (bad, False)):
    token = losses.typed_token_loss(
        [jnp.asarray(logits[:, :, list(s), lo:hi]) for s, (lo, hi) in groups], groups,
        jnp.asarray(targets), 0.7, space, 7)
    assert bool(np.isinf(token[0, 0, 5]))  # <pad>: out of every range, not counted below
    total, _ = losses.path_loss(token, jnp.asarray(targets), jnp.zeros(1, bool), ('concat',), 0.7,
                                1.5)
    assert bool(np.isfinite(total)) == finite
