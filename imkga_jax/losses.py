"""Label-smoothed, length-normalised path loss of IMKGA-SM (Eq. 23-25).

Per token, with ε the weight of the TRUE token t and V the vocabulary size:

  ℓ = −( ε·log p_t + (1−ε)/(V−1) · Σ_{i≠t} log p_i )

(ε = 1 is plain cross entropy; the paper's best ε is 0.7, `config.loss.label_smoothing`).

**Typed head** (`config.loss.typed_head`, `typed_token_loss`): step n scores only the tokens of
its kind (`grammar.token_range`, the range the decoder scores) and the softmax covers the tokens
the path grammar allows there after the true history (`grammar.allowed_unconstrained`), as the
decoder renormalises. Each allowed wrong token keeps the smoothing weight (1−ε)/(V−1) of the
whole vocabulary, so the best distribution is the whole-vocabulary loss's, restricted and
renormalised. Relation steps never compute the entity logits (most of the head's FLOPs at a large
vocabulary).

**Which steps count.** Step n of sequence b (the prediction of `targets[b, n]`
at the state token C_n) counts iff

1. `targets[b, n]` is not `<pad>` (padding after `<eos>`; `<eos>` itself counts);
2. `targets[b, n]` is not `<mask>` (the true actions never contain it; excluded
   so that a mask token can never be a target, "the loss caused by the mask
   token" of §3.5);
3. when `token_keep` is given: the state token C_n was kept by Mask II
   (`token_keep[b, 2n]`). A prediction made at a dropped token is not scored;
   Mask II dropouts still act on every later step through attention. Mask III
   needs no exclusion: it replaces HISTORY inputs, whose outputs are never
   scored, and the targets stay the true actions.

**Normalisation.** Each sequence's summed token loss is divided by its number
of counted steps (the path length in tokens, `<eos>` included), so short paths
get no advantage. A branch loss is the mean of that over the sequences with at
least one counted step (a sequence with none contributes nothing and is not
counted in the mean).

**β.** On sequences flagged by Mask III the concat branch's per-sequence loss is
multiplied by β (Eq. 25) in the TOTAL only:
`total = L_fig + L_ocr + mean_b(w_b · ℓ_concat,b)` with `w_b = β` if Mask III
touched b else 1 (single-branch variants: only the last term). The per-branch
losses returned in the dict are UNweighted, so the optimiser's modality ratio
(Eq. 26) compares like with like.

Example:
  >>> import jax.numpy as jnp
  >>> logits = jnp.zeros((1, 1, 2, 5))                     # [branch, batch, steps, vocab]
  >>> targets = jnp.array([[4, 2]])                        # `e <eos>`
  >>> total, per_branch = path_loss(logits, targets, jnp.array([False]), ('concat',), 0.7, 1.5)
  >>> round(float(total), 4)                               # uniform p: −log(1/5)
  1.6094
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from imkga_jax import grammar
from imkga_jax import kg as kg_lib
from imkga_jax.kg import MASK
from imkga_jax.kg import PAD


def smoothed_token_loss(logits: jax.Array, targets: jax.Array, epsilon: float,
                        allowed: jax.Array | None = None, offset: int = 0,
                        vocab_size: int | None = None) -> jax.Array:
  """ℓ = −(ε·log p_t + (1−ε)/(V−1)·Σ_{i≠t} log p_i), computed in float32.

  With `allowed`, the softmax and the smoothing cover the allowed tokens only (the target always
  among them), each other allowed token keeping the smoothing weight (1−ε)/(V−1) of the whole
  vocabulary, V = `vocab_size`: the typed head of `typed_token_loss`. A target outside
  the scored range `offset … offset+V-1` gets an infinite loss (the train loop's finiteness check
  then names the step); positions the caller does not count may hold any target.

  Args:
    logits: [..., V] (any float dtype), the logits of tokens `offset … offset+V-1`.
    targets: int [...] token ids.
    epsilon: weight of the true token, in [0, 1].
    allowed: optional bool [..., V], the tokens the grammar allows at each position.
    offset: the token id of `logits[..., 0]`.
    vocab_size: V of the smoothing weight (default: `logits.shape[-1]`).

  Returns:
    float32 [...] per-token loss.
  """
  vocab = logits.shape[-1]
  smoothing_vocab = vocab if vocab_size is None else vocab_size
  if smoothing_vocab < 2:
    raise ValueError(f'losses: the vocabulary has {smoothing_vocab} token(s); label smoothing '
                     'needs >= 2.')
  logits = logits.astype(jnp.float32)
  index = jnp.asarray(targets, jnp.int32) - offset  # [...]
  in_range = (index >= 0) & (index < vocab)
  index = jnp.clip(index, 0, vocab - 1)
  if allowed is None:
    log_p = jax.nn.log_softmax(logits, axis=-1)  # [..., V]
  else:
    allowed = allowed | (jnp.arange(vocab) == index[..., None])  # the target is always allowed
    log_p = jax.nn.log_softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
    log_p = jnp.where(allowed, log_p, 0.0)  # [..., V]: the sums below cover the allowed tokens
  log_p_true = jnp.take_along_axis(log_p, index[..., None], axis=-1)[..., 0]  # [...]
  log_p_others = jnp.sum(log_p, axis=-1) - log_p_true  # [...]
  loss = -(epsilon * log_p_true + (1.0 - epsilon) / (smoothing_vocab - 1) * log_p_others)
  return jnp.where(in_range, loss, jnp.inf)


def typed_token_loss(group_logits: Sequence[jax.Array],
                     groups: Sequence[tuple[tuple[int, ...], tuple[int, int]]],
                     targets: jax.Array, epsilon: float, space: kg_lib.TokenSpace,
                     max_len: int) -> jax.Array:
  """Per-token loss `[K, B, L]` of a typed head: step n normalises over the tokens the path
  grammar allows after the true history (`grammar.allowed_unconstrained`, the direct form offered
  to every query), within its group's token range; each allowed wrong token keeps the smoothing
  weight (1−ε)/(V−1) of the whole vocabulary, so the best distribution is the whole-vocabulary
  loss's, restricted to the allowed tokens and renormalised. (Spreading 1−ε over the allowed
  tokens alone put 0.3/22 on every wrong relation of the synthetic KG, flattened the paths' relation
  choices and cost 0.04 valid MRR there.)

  This is the distribution the decoder reads (it renormalises over the allowed tokens at every
  step), and it never computes the entity logits of a relation step. A step where only one token
  can follow (`<eos>` after a direct answer or at the last step) costs 0.

  Args:
    group_logits: per group `[K, B, len(steps), hi - lo]` (`IMKGA(..., heads=groups)`).
    groups: `grammar.head_groups(L, space)`.
    targets: int [B, L] true action tokens.
    epsilon: weight of the true token.
    space: the token space.
    max_len: the grammar's longest sequence (2·max_hops+1), whatever L is.
  """
  batch, steps = targets.shape
  out = [None] * steps
  direct_ok = jnp.ones((batch,), jnp.bool_)
  for logits, (group, (lo, hi)) in zip(group_logits, groups):
    for i, n in enumerate(group):
      allowed = grammar.allowed_unconstrained(targets[:, None, :], n, space, direct_ok, (lo, hi),
                                              max_len=max_len)[:, 0]  # [B, hi - lo]
      out[n] = smoothed_token_loss(logits[:, :, i], targets[None, :, n], epsilon, allowed[None],
                                   offset=lo, vocab_size=space.num_tokens)  # [K, B]
  return jnp.stack(out, axis=2)  # [K, B, L]


def step_weights(targets: jax.Array, token_keep: jax.Array | None = None) -> jax.Array:
  """1.0 where step n counts (target not <pad>/<mask>, state token kept), else 0.0.

  Args:
    targets: int [B, L] true action tokens.
    token_keep: optional bool [B, 2L] Mask II keep flags (interleaved `[C_0, a_0, …]`).

  Returns:
    float32 [B, L].
  """
  counted = (targets != PAD) & (targets != MASK)  # [B, L]
  if token_keep is not None:
    counted &= jnp.asarray(token_keep, jnp.bool_)[:, 0::2]  # state tokens C_n
  return counted.astype(jnp.float32)


def path_loss(logits: jax.Array, targets: jax.Array, mask3: jax.Array,
              branches: Sequence[str], epsilon: float, beta: float, *,
              token_keep: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 23-25 over all branches (see the module docstring for the exact rules).

  Args:
    logits: [K, B, L, V] model output, branch order `branches`; or the per-token loss [K, B, L]
      itself (a typed head's, `typed_token_loss`), for which `epsilon` is not read.
    targets: int [B, L] TRUE action tokens (before Mask III).
    mask3: bool [B], sequences touched by Mask III (their concat loss × β).
    branches: K branch names, e.g. `model.branches`.
    epsilon: weight of the true token (config.loss.label_smoothing).
    beta: weight of the concat loss on Mask III sequences (config.loss.beta).
    token_keep: optional bool [B, 2L] Mask II keep flags; steps whose state
      token was dropped are not scored.

  Returns:
    `(total, {branch: loss})`: float32 scalars; the dict holds the unweighted
    per-branch batch means, the total weights concat by β on Mask III sequences.

  Raises:
    ValueError: when shapes or branch names do not match.
  """
  branches = tuple(branches)
  if (logits.ndim not in (3, 4) or logits.shape[0] != len(branches)
      or logits.shape[1:3] != targets.shape):
    raise ValueError(f'losses.path_loss: logits {logits.shape} must be [K={len(branches)} '
                     f'branches {branches}, B, L, V] (or a token loss [K, B, L]) with [B, L] = '
                     f'targets {targets.shape}.')
  if 'concat' not in branches:
    raise ValueError(f'losses.path_loss: branches {branches} lack "concat" (β applies to it).')
  weights = step_weights(targets, token_keep)  # [B, L]
  lengths = jnp.sum(weights, axis=1)  # [B]
  has_steps = (lengths > 0).astype(jnp.float32)  # [B]
  num_sequences = jnp.maximum(jnp.sum(has_steps), 1.0)
  token_loss = (logits if logits.ndim == 3
                else smoothed_token_loss(logits, targets[None], epsilon))  # [K, B, L]
  token_loss = jnp.where(weights > 0, token_loss, 0.0)  # an uncounted step may be inf (typed head)
  per_sequence = jnp.sum(token_loss, axis=2) / jnp.maximum(lengths, 1.0)  # [K, B]
  per_branch = jnp.sum(per_sequence * has_steps, axis=1) / num_sequences  # [K]
  losses = {name: per_branch[k] for k, name in enumerate(branches)}
  seq_weight = jnp.where(jnp.asarray(mask3, jnp.bool_), beta, 1.0) * has_steps  # [B]
  concat = jnp.sum(per_sequence[branches.index('concat')] * seq_weight) / num_sequences
  total = concat + sum(losses[name] for name in branches if name != 'concat')
  return total, losses
