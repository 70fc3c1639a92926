"""Label-smoothed, length-normalised path loss of IMKGA-SM (Eq. 23-25).

Per token, with ε the weight of the TRUE token t and V the vocabulary size:

  ℓ = −( ε·log p_t + (1−ε)/(V−1) · Σ_{i≠t} log p_i )

(ε = 1 is plain cross entropy; the paper's best ε is 0.7, `config.loss.label_smoothing`).

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

from imkga_jax.kg import MASK
from imkga_jax.kg import PAD


def smoothed_token_loss(logits: jax.Array, targets: jax.Array, epsilon: float) -> jax.Array:
  """ℓ = −(ε·log p_t + (1−ε)/(V−1)·Σ_{i≠t} log p_i), computed in float32.

  Args:
    logits: [..., V] (any float dtype).
    targets: int [...] token ids.
    epsilon: weight of the true token, in [0, 1].

  Returns:
    float32 [...] per-token loss.
  """
  vocab = logits.shape[-1]
  if vocab < 2:
    raise ValueError(f'losses: the vocabulary has {vocab} token(s); label smoothing needs >= 2.')
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [..., V]
  log_p_true = jnp.take_along_axis(log_p, targets[..., None].astype(jnp.int32),
                                   axis=-1)[..., 0]  # [...]
  log_p_others = jnp.sum(log_p, axis=-1) - log_p_true  # [...]
  return -(epsilon * log_p_true + (1.0 - epsilon) / (vocab - 1) * log_p_others)


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
    logits: [K, B, L, V] model output, branch order `branches`.
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
  if logits.ndim != 4 or logits.shape[0] != len(branches) or logits.shape[1:3] != targets.shape:
    raise ValueError(f'losses.path_loss: logits {logits.shape} must be [K={len(branches)} '
                     f'branches {branches}, B, L, V] with [B, L] = targets {targets.shape}.')
  if 'concat' not in branches:
    raise ValueError(f'losses.path_loss: branches {branches} lack "concat" (β applies to it).')
  weights = step_weights(targets, token_keep)  # [B, L]
  lengths = jnp.sum(weights, axis=1)  # [B]
  has_steps = (lengths > 0).astype(jnp.float32)  # [B]
  num_sequences = jnp.maximum(jnp.sum(has_steps), 1.0)
  token_loss = smoothed_token_loss(logits, targets[None], epsilon)  # [K, B, L]
  per_sequence = jnp.sum(token_loss * weights, axis=2) / jnp.maximum(lengths, 1.0)  # [K, B]
  per_branch = jnp.sum(per_sequence * has_steps, axis=1) / num_sequences  # [K]
  losses = {name: per_branch[k] for k, name in enumerate(branches)}
  seq_weight = jnp.where(jnp.asarray(mask3, jnp.bool_), beta, 1.0) * has_steps  # [B]
  concat = jnp.sum(per_sequence[branches.index('concat')] * seq_weight) / num_sequences
  total = concat + sum(losses[name] for name in branches if name != 'concat')
  return total, losses
