"""Return-to-go arithmetic (paper Eq. 8–12), shared by data preparation and decoding.

Training targets (`data_prep.trajectories`) and beam search (`imkga_jax.decode`) must compute R̂ the
same way, so the arithmetic lives here, written with array ops that work on numpy arrays and on
`jax.numpy` arrays inside `jit` (the array module is taken from the inputs, or passed as `xp`).

Indexing. A trajectory is `actions = a_1 … a_L` (`r1 e1 r2 e2 … t <eos> <pad>…`, or the direct
`t <eos> <pad>…`); `rtg[n-1] = R̂_n` is the value fed with the state token that predicts `a_n`
(Eq. 13: `R̂1, s1, a1, R̂2, s2, a2, …`). The paper's `a_1 = <bos>` is the query itself here, so every
real action earns a reward:

* `R̂_1 = r_good` if the path ends at the target `t`, else `r_bad` (Eq. 9; the caller passes it as
  `r1`).
* reward of action `a_n`: `r'_n = r_step + r_add_n + r_bad·wrong_n` (Eq. 10–12), with
  `r_add_n = R̂_1·sim(f_{a_n}, f_t)` for an entity action whose image and the target's image are both
  known, `R̂_1·missing_similarity` (½R̂_1) for an entity action where either is missing, and 0 for
  relations and `<eos>` (Eq. 11). Eq. 12's extra `−r_bad` is folded into the reward as `+r_bad`.
* `R̂_{n+1} = R̂_n − r'_n` (Eq. 12), except that after `<eos>` or `<pad>` R̂ holds its value, so padded
  steps repeat the last value (the paper's "last R̂ completion vector"). A sequence holds only `<pad>`
  after `<eos>`.

"Wrong kind" (Eq. 12, `a ∉ E, a ∉ R`, made precise for sequences `r1 e1 … t <eos>` and `t <eos>`),
judged from the previous action `p` (`<bos>` before the first action):

| previous action `p`       | allowed `a`                    |
|---------------------------|--------------------------------|
| `<bos>` (start)           | relation or entity             |
| relation                  | entity                         |
| entity                    | relation or `<eos>`            |
| `<mask>` (masked history) | relation, entity or `<eos>`    |

Anything else is wrong: `<pad>`, `<bos>` and `<mask>` as actions always are, `<eos>` first or right
after a relation is. After `<eos>`/`<pad>` no reward is counted at all.

Example:
  >>> import numpy as np
  >>> from imkga_jax.kg import TokenSpace
  >>> c = RtgConstants(r_good=1.0, r_bad=-1.0, r_step=-0.1, space=TokenSpace(3, 5))  # entities from 10
  >>> actions = np.array([[4, 11, 2, 0]])               # r1 e1(=t) <eos> <pad>
  >>> sim = np.array([[0.0, 1.0, 0.0, 0.0]])
  >>> known = np.array([[False, True, False, False]])
  >>> [round(float(v), 3) for v in rtg_sequence(actions, np.array([1.0]), sim, known, c)[0]]
  [1.0, 1.1, 0.2, 0.2]
"""
from __future__ import annotations

import types
from typing import Any, NamedTuple

import numpy as np

from imkga_jax.kg import BOS, EOS, PAD, TokenSpace


class RtgConstants(NamedTuple):
  """Constants of Eq. 8–12 plus the token layout needed to tell entities from relations.

  Attributes:
    r_good: R̂_0 and R̂_1 of a path that reaches the target (positive).
    r_bad: R̂_1 of a path that misses the target, and the wrong-kind penalty (negative).
    r_step: base reward of every action (negative: fewer hops are better).
    space: the token layout (tells entities from relations).
    missing_similarity: similarity used when either image is missing (paper: 0.5, i.e. ½R̂_1).
  """
  r_good: float
  r_bad: float
  r_step: float
  space: TokenSpace
  missing_similarity: float = 0.5


def constants_from_config(config: Any, space: TokenSpace) -> RtgConstants:
  """Reads `config.rtg` for a KG with token layout `space`."""
  return RtgConstants(r_good=float(config.rtg.r_good), r_bad=float(config.rtg.r_bad),
                      r_step=float(config.rtg.r_step), space=space,
                      missing_similarity=float(config.rtg.missing_similarity))


def _array_module(*arrays) -> types.ModuleType:
  """`jax.numpy` if any input is a jax array or tracer, else numpy."""
  for a in arrays:
    if type(a).__module__.split('.')[0] in ('jax', 'jaxlib'):
      import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
      return jnp
  return np


def is_relation(tokens, c: RtgConstants):
  """Relation tokens (inverses included)."""
  return c.space.is_relation(tokens)


def is_entity(tokens, c: RtgConstants):
  return c.space.is_entity(tokens)


def wrong_kind(action, prev_action, c: RtgConstants, xp: types.ModuleType | None = None):
  """True where `action` may not follow `prev_action` (the module's table); shapes broadcast."""
  xp = xp or _array_module(action, prev_action)
  rel, ent, eos = is_relation(action, c), is_entity(action, c), action == EOS
  allowed = xp.where(prev_action == BOS, rel | ent,
                     xp.where(is_relation(prev_action, c), ent,
                              xp.where(is_entity(prev_action, c), rel | eos, rel | ent | eos)))
  return ~allowed


def step_reward(action, prev_action, r1, sim, sim_known, c: RtgConstants,
                xp: types.ModuleType | None = None):
  """Reward `r'` of `action` (Eq. 10–12, wrong-kind penalty included); broadcasts its inputs.

  Args:
    action: action tokens.
    prev_action: the action before each (`<bos>` before the first).
    r1: R̂_1 of the trajectory.
    sim: cosine similarity between the action entity's image and the target's (ignored elsewhere).
    sim_known: whether both images exist; where False the similarity is `c.missing_similarity`.
    c: constants.
    xp: array module (default: inferred from the inputs).

  Returns:
    float rewards, the broadcast shape of the inputs.
  """
  xp = xp or _array_module(action, prev_action, r1, sim, sim_known)
  similarity = xp.where(sim_known, sim, c.missing_similarity)
  r_add = xp.where(is_entity(action, c), r1 * similarity, 0.0)
  penalty = xp.where(wrong_kind(action, prev_action, c, xp), c.r_bad, 0.0)
  return c.r_step + r_add + penalty


def next_rtg(prev_rtg, prev_action, prev_prev_action, r1, sim, sim_known, c: RtgConstants,
             xp: types.ModuleType | None = None):
  """R̂_n from R̂_{n-1} and the action a_{n-1} just taken (Eq. 12) — one decoding step.

  Args:
    prev_rtg: R̂_{n-1}, e.g. `[N]`.
    prev_action: a_{n-1} tokens `[N]`.
    prev_prev_action: a_{n-2} tokens `[N]` (`<bos>` when a_{n-1} is the first action).
    r1: R̂_1 `[N]` (or a scalar); at decode time the desired outcome, usually `r_good`.
    sim: similarity of a_{n-1}'s image to the target's `[N]` (any value where unknown).
    sim_known: `[N]` bool; False at decode time (target unknown → ½R̂_1 for entity actions).
    c: constants.
    xp: array module (default: inferred; pass `jax.numpy` inside jit if the inputs are Python scalars).

  Returns:
    R̂_n `[N]`: `prev_rtg` after `<eos>`/`<pad>`, else `prev_rtg − r'(a_{n-1})`.

  Example:
    >>> c = RtgConstants(1.0, -1.0, -0.1, space=TokenSpace(3, 5))
    >>> round(float(next_rtg(1.0, np.int32(4), np.int32(BOS), 1.0, 0.0, False, c)), 6)
    1.1
  """
  xp = xp or _array_module(prev_rtg, prev_action, prev_prev_action, r1, sim, sim_known)
  reward = step_reward(prev_action, prev_prev_action, r1, sim, sim_known, c, xp)
  finished = (prev_action == EOS) | (prev_action == PAD)
  return xp.where(finished, prev_rtg, prev_rtg - reward)


def next_rtg_target_unknown(prev_rtg, prev_action, prev_prev_action, r1, c: RtgConstants,
                            xp: types.ModuleType | None = None):
  """`next_rtg` with the target's image unknown (decoding): every entity action earns ½R̂_1."""
  xp = xp or _array_module(prev_rtg, prev_action, prev_prev_action, r1)
  return next_rtg(prev_rtg, prev_action, prev_prev_action, r1, 0.0, False, c, xp)


def rtg_sequence(actions, r1, sim, sim_known, c: RtgConstants, xp: types.ModuleType | None = None):
  """R̂_1 … R̂_L of whole trajectories by iterating `next_rtg` (so both always agree).

  Args:
    actions: `[..., L]` int action tokens.
    r1: `[...]` R̂_1 per trajectory (`r_good` if the path ends at the target, else `r_bad`).
    sim: `[..., L]` similarity of each action's entity image to the target's image.
    sim_known: `[..., L]` bool, both images present (False everywhere = target unknown).
    c: constants.
    xp: array module (default: inferred from the inputs).

  Returns:
    `[..., L]` float: `out[..., n-1] = R̂_n`, padded steps repeating the last value.
  """
  xp = xp or _array_module(actions, r1, sim, sim_known)
  length = actions.shape[-1]
  r1 = xp.asarray(r1, dtype=xp.float32)
  sim = xp.broadcast_to(xp.asarray(sim, dtype=xp.float32), actions.shape)
  sim_known = xp.broadcast_to(xp.asarray(sim_known, dtype=bool), actions.shape)
  bos = xp.full(actions.shape[:-1] + (1,), BOS, dtype=actions.dtype)
  prev = xp.concatenate([bos, actions[..., :-1]], axis=-1)  # [..., L] a_{n-1} for each a_n
  values = [r1]
  for n in range(1, length):  # L is small and static: unrolled under jit
    values.append(next_rtg(values[-1], actions[..., n - 1], prev[..., n - 1], r1,
                           sim[..., n - 1], sim_known[..., n - 1], c, xp))
  return xp.stack(values, axis=-1).astype(xp.float32)
