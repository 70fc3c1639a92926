"""The three mask mechanisms of IMKGA-SM (§3.4, Eq. 20).

Step n (0-based) of a trajectory has two tokens, the state token C(R̂n, s) and
the action token a_n; the model's sequence interleaves them as
`[C_0, a_0, C_1, a_1, …]` (2L tokens, L = number of steps) and the output at
C_n predicts a_n.

* **Mask I** (`causal_mask`): the causal attention mask over those 2L tokens;
  the output at C_n sees C_0..C_n and a_0..a_{n-1} only (η = 1 in Eq. 20).
* **Mask II** (`mask_two`): "double data dropout" of embedded inputs. Each
  sequence is chosen with probability `p_k`; inside a chosen sequence every
  token (state or action) is dropped with probability `p_m`. The result is
  `token_keep [B, 2L] bool` (interleaved order); the model multiplies each token
  embedding by it (the position embedding is still added), the `I[m_j ≤ η]·x_j`
  of Eq. 20.
* **Mask III** (`mask_three`): history action tokens are replaced by `<mask>`
  with probability `p_3`. Only tokens that are history for a scored step are
  eligible: a_j with a_j != <pad> and a_{j+1} != <pad> (every real token but the
  final `<eos>`); <pad> is never replaced. The per-sequence flag (any token
  replaced) selects the sequences whose L_concat is weighted by β
  (`imkga_jax.losses.path_loss`).

`apply_masks` is the one call the train step makes. The TRUE actions stay the
targets of the loss: `apply_masks` returns a new inputs dict and leaves the
batch's arrays untouched.

Example:
  >>> import jax, numpy as np
  >>> batch = {'actions': np.array([[5, 9, 2, 0, 0]], np.int32)}
  >>> cfg = {'p_k': 0.5, 'p_m': 0.1, 'p_3': 0.1}
  >>> inputs, mask3 = apply_masks(jax.random.key(0), batch, cfg, train=True)
  >>> inputs['token_keep'].shape, mask3.shape
  ((1, 10), (1,))
"""
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from imkga_jax.kg import MASK
from imkga_jax.kg import PAD

# Keys read from config.masks.
MASK_KEYS = ('p_k', 'p_m', 'p_3')


def causal_mask(num_steps: int) -> jax.Array:
  """Mask I: bool [2·num_steps, 2·num_steps], True where query token i may attend to key j (j <= i).

  Args:
    num_steps: L, the number of (state, action) steps.

  Returns:
    Lower-triangular bool matrix over the interleaved tokens `[C_0, a_0, C_1, …]`.
  """
  size = 2 * num_steps
  return jnp.tril(jnp.ones((size, size), jnp.bool_))  # [2L, 2L]


def mask_two(rng: jax.Array, batch_size: int, num_tokens: int, p_k: float,
             p_m: float) -> jax.Array:
  """Mask II: which token embeddings are kept.

  Args:
    rng: PRNG key.
    batch_size: B.
    num_tokens: tokens per sequence (2L for the interleaved sequence).
    p_k: probability that a sequence has token dropout at all.
    p_m: per-token drop probability inside such a sequence.

  Returns:
    token_keep: bool [B, num_tokens]; False = the token's embedding is zeroed.
  """
  _check_probability('p_k', p_k)
  _check_probability('p_m', p_m)
  seq_rng, tok_rng = jax.random.split(rng)
  chosen = jax.random.bernoulli(seq_rng, p_k, (batch_size, 1))  # [B, 1]
  dropped = jax.random.bernoulli(tok_rng, p_m, (batch_size, num_tokens))  # [B, T]
  return ~(chosen & dropped)  # [B, T]


def mask_three(rng: jax.Array, actions: jax.Array, p_3: float) -> tuple[jax.Array, jax.Array]:
  """Mask III: replaces eligible history actions by <mask> with probability p_3.

  Args:
    rng: PRNG key.
    actions: int32 [B, L], the true action tokens (padded with <pad>).
    p_3: per-token replacement probability.

  Returns:
    `(masked_actions int32 [B, L], flag bool [B])`; flag[b] is True when at
    least one token of sequence b was replaced.
  """
  _check_probability('p_3', p_3)
  actions = jnp.asarray(actions)
  real = actions != PAD  # [B, L]
  next_real = jnp.pad(real[:, 1:], ((0, 0), (0, 1)))  # [B, L]; False after the last step
  eligible = real & next_real  # [B, L]
  hit = eligible & jax.random.bernoulli(rng, p_3, actions.shape)  # [B, L]
  masked = jnp.where(hit, jnp.asarray(MASK, actions.dtype), actions)  # [B, L]
  return masked, jnp.any(hit, axis=1)


def apply_masks(rng: jax.Array, batch: Mapping[str, Any], masks_config: Any,
                train: bool = True) -> tuple[dict[str, Any], jax.Array]:
  """Builds the model inputs of one train (or eval) step: Mask III'd history and Mask II keep flags.

  Mask I is not an input: the model always applies it.

  Args:
    rng: PRNG key (ignored when `train` is False).
    batch: dict with at least `actions int32 [B, L]`; every other entry is
      passed through unchanged.
    masks_config: `config.masks` (ConfigDict, Mapping or object) with `p_k`,
      `p_m`, `p_3`.
    train: False returns the batch unmasked (all tokens kept, no flag).

  Returns:
    `(inputs, mask3)`: `inputs` is a new dict: the batch's entries, `actions`
    replaced by the Mask III'd history, plus `token_keep bool [B, 2L]`;
    `mask3 bool [B]` flags the sequences Mask III touched. Use the ORIGINAL
    `batch['actions']` as loss targets.
  """
  if 'actions' not in batch:
    raise KeyError(f'masks.apply_masks: the batch has no "actions" (keys: {sorted(batch)}); '
                   'it needs the int32 [B, L] action tokens.')
  p_k, p_m, p_3 = (_get(masks_config, key) for key in MASK_KEYS)
  actions = jnp.asarray(batch['actions'])
  batch_size, num_steps = actions.shape
  inputs = dict(batch)
  if not train:
    inputs['token_keep'] = jnp.ones((batch_size, 2 * num_steps), jnp.bool_)
    return inputs, jnp.zeros((batch_size,), jnp.bool_)
  rng_two, rng_three = jax.random.split(rng)
  inputs['actions'], mask3 = mask_three(rng_three, actions, p_3)
  inputs['token_keep'] = mask_two(rng_two, batch_size, 2 * num_steps, p_k, p_m)
  return inputs, mask3


def _get(config: Any, key: str) -> float:
  try:
    return config[key] if isinstance(config, Mapping) else getattr(config, key)
  except (KeyError, AttributeError) as e:
    raise KeyError(f'masks.apply_masks: config.masks has no key {key!r}; it needs '
                   f'{MASK_KEYS} (see configs/default.py, section masks).') from e


def _check_probability(name: str, value: Any) -> None:
  if isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
    raise ValueError(f'masks: config.masks.{name}={value} is not a probability in [0, 1].')
