"""The model as the decoder sees it: one step at a time, with a cache of what it has read.

A `StepModel` is two functions (the flax wmt example's `tokens_to_logits`, made incremental):
`step(cache, prev_action, rtg, n, tokens)` feeds the action chosen at step n-1 and the return-to-go
R̂n of every row and returns the logits of the token at step n for the token range `tokens = (lo, hi)`
only (the range the grammar can allow there, `grammar.token_range`), plus the updated cache;
`gather(cache, parent)` reorders the rows after the beam's choice.

* `imkga_step_model`: IMKGA-SM's cached `decode_step` (`models/imkga.py`): one new token pair per
  row and step, keys and values of the rest read from the cache.
* `imkga_uncached_step_model`: IMKGA-SM recomputing the whole prefix each step, the full-vocabulary
  head at the decoded step: the decoder before caching, kept to test and measure the cached one.
* `history_step_model`: any `tokens_to_logits(actions [N, L], rtg [N, L], step)` callback (stubs).

Example:
  >>> m = history_step_model(lambda a, r, s: jnp.zeros((a.shape[0], 9)), max_len=3)
  >>> logits, cache = m.step(None, None, jnp.ones((1, 2)), 0, (4, 9))
  >>> logits.shape
  (1, 2, 5)
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from imkga_jax import kg as kg_lib

Cache = Any


class StepModel(NamedTuple):
  """The model as the decoder sees it (module docstring).

  Attributes:
    step: `(cache, prev_action [b, n] int32 | None, rtg [b, n] f32, n: int, tokens: (lo, hi))
      -> (logits [b, n, hi - lo], cache)`; `cache` is None at step 0, `prev_action` None at step 0.
      `b` is the query batch, `n` the rows per query (K live beams, or W endings).
    gather: `(cache, parent [b, n] int32) -> cache` whose row (q, j) is row (q, parent[q, j]).
  """
  step: Callable[..., tuple[jax.Array, Cache]]
  gather: Callable[[Cache, jax.Array], Cache]


def history_step_model(tokens_to_logits: Callable[..., jax.Array], max_len: int,
                       context: Mapping[str, jax.Array] | None = None) -> StepModel:
  """A `StepModel` that keeps the token history as its cache and calls `tokens_to_logits(actions
  [N, L], rtg [N, L], step) -> [N, V]` on the whole prefix each step (N = b · n rows); with a
  per-query `context` ([b, ...] arrays) it is called as `tokens_to_logits(actions, rtg, step,
  context tiled to the N rows)`."""
  def step(cache, prev_action, rtg, n, tokens):
    b, rows = rtg.shape
    if cache is None:
      cache = (jnp.full((b, rows, max_len), kg_lib.PAD, jnp.int32),
               jnp.zeros((b, rows, max_len), jnp.float32))
    actions, history = cache
    if prev_action is not None:
      actions = actions.at[:, :, n - 1].set(prev_action)
    history = history.at[:, :, n].set(rtg)
    args = (actions.reshape(b * rows, max_len), history.reshape(b * rows, max_len), n)
    if context is not None:
      args += (tile_beams(context, rows),)
    logits = tokens_to_logits(*args)  # [N, V]
    return logits[:, tokens[0]:tokens[1]].reshape(b, rows, -1), (actions, history)

  def gather(cache, parent):
    return tuple(jnp.take_along_axis(x, parent[..., None], axis=1) for x in cache)

  return StepModel(step, gather)


def tile_beams(inputs: Mapping[str, Any], beam_size: int) -> dict[str, jax.Array]:
  """`[batch, ...]` arrays -> `[batch * beam, ...]`, each query repeated `beam_size` times in a row."""
  return {key: jnp.repeat(jnp.asarray(x), beam_size, axis=0) for key, x in inputs.items()}


def imkga_step_model(model: Any, params: Any, context: Mapping[str, jax.Array]) -> StepModel:
  """IMKGA-SM's cached `decode_step` as a `StepModel`.

  Args:
    model: a one-branch `imkga_jax.models.imkga.IMKGA` (`imkga.select_branch`).
    params: its parameters.
    context: per-query model inputs `[b, ...]` (head_token, relation_token, fig, ocr, fig_present,
      ocr_present); tiled to the rows of each call.
  """
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  if len(model.branches) != 1:
    raise ValueError(f'imkga_step_model: the model runs {len(model.branches)} branches; decode '
                     'with one (imkga.select_branch)')

  def step(cache, prev_action, rtg, n, tokens):
    b, rows = rtg.shape
    inputs = tile_beams(context, rows)
    inputs['actions'] = (jnp.zeros((b * rows, 0), jnp.int32) if prev_action is None
                         else prev_action.reshape(b * rows, 1))
    inputs['rtg'] = rtg.reshape(b * rows, 1)
    variables = {'params': params} if cache is None else {'params': params, 'cache': cache}
    logits, mutated = model.apply(variables, inputs, n, tuple(tokens),
                                  method=imkga.IMKGA.decode_step, mutable=['cache'])
    return logits[0].reshape(b, rows, -1), mutated['cache']

  def gather(cache, parent):
    b = parent.shape[0]
    rows = jax.tree.leaves(cache)[0].shape[imkga.CACHE_ROW_AXIS] // b  # live rows per query
    flat = (parent + jnp.arange(b)[:, None] * rows).reshape(-1)  # [b * n]
    return jax.tree.map(lambda x: jnp.take(x, flat, axis=imkga.CACHE_ROW_AXIS), cache)

  return StepModel(step, gather)


def imkga_uncached_step_model(model: Any, params: Any, context: Mapping[str, jax.Array]
                              ) -> StepModel:
  """IMKGA-SM recomputing the whole prefix each step, the full-vocabulary head at the decoded step
  only (`history_step_model`): the decoder before caching, kept to test and measure the cached one."""
  def tokens_to_logits(actions, rtg, n, tiled):
    inputs = dict(tiled, actions=actions, rtg=rtg)
    return model.apply({'params': params}, inputs, output_step=n)[0, :, 0]  # [N, V]
  return history_step_model(tokens_to_logits, model.config.num_steps, context)


def branch_index(branches: tuple[str, ...], name: str) -> int:
  """Index of the decoding branch in `model.branches` (the single branch of one-branch variants)."""
  if name in branches:
    return branches.index(name)
  if len(branches) == 1:
    logging.info('decode.branch=%r: the model has the single branch %r; decoding with it',
                 name, branches[0])
    return 0
  raise ValueError(f'config.decode.branch={name!r} is not one of the model branches {branches}; '
                   'set --config.decode.branch to one of them')
