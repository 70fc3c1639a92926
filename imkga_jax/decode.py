"""Beam search over relation paths `r1 e1 … rn en <eos>` (and the direct form `t <eos>`).

The decoder sees the model as a `step_models.StepModel` (the flax wmt example's `tokens_to_logits`,
made incremental): each step feeds the action chosen at the previous step and the return-to-go of
every live beam, and gets the logits of the next token, for the token range the grammar can allow
there only; `imkga_jax.step_models` holds IMKGA-SM's cached step and the uncached reference.

The loop is unrolled over the L = 2·max_hops + 1 positions (L is small and static, so every step has
static shapes and its own token range). Step 0 reads one row per query (every beam would hold the
same empty prefix: at WN18RR's 41k tokens and beam 256 that row alone cost 40 % of the search). At
step n the live beams `[batch, K]` are scored
(log-softmax in float32 over the allowed tokens only), then:

* **finishing**: an *ending* is a live prefix followed by an entity; it becomes a finished path with
  its `<eos>` log-probability. At every entity step the best W endings are finished: W = K (the
  beam's own, whose `<eos>` comes from the next step's model call) by default, `finish_width` at the
  inner entity steps (their `<eos>` needs one model call on W rows), and at the last entity step
  L - 2, where the grammar leaves only `<eos>` (log-probability exactly 0), every one of the K·E
  endings (`complete_last`: exact, no model call). Plain beam search is W = K everywhere.
* **continuing**: `lax.top_k` over the `[batch, K · tokens]` candidates without `<eos>` keeps K
  live beams; the cache rows follow their parents.

Finished paths are folded into per-entity results as they come (`BeamState`, `DecodeResult`): the
aggregate score of the entity (`aggregation='max'`: its best path score, `'sum'`: log Σ exp of its
path scores, the direct form included), and its explanation: the best path of at least one hop and
its score. A path's score is its log-probability (the `<eos>`
included), divided by its number of hops (relation tokens; the direct form counts 1) when
`length_norm`. SQUIRE's rule is ('max', True); the summed probability of reaching an entity by any
path the beam found is ('sum', False).

Return-to-go is recomputed each step with the target unknown (DESIGN §3): R̂0 = r_good, then
`imkga_jax.rtg.next_rtg_target_unknown` (the ½·R̂1 rule for entities, 0 for relations, extra r_bad
for a wrong-kind action), the arithmetic that wrote the training targets.

Which tokens may come next (the path grammar, and in constrained mode the train graph) is
`imkga_jax.grammar`.

Example:
  >>> space = kg_lib.TokenSpace(num_relations=2, num_entities=5)
  >>> c = rtg_lib.RtgConstants(1.0, -1.0, -0.1, space=space)
  >>> stub = lambda actions, rtg, step: jnp.zeros((actions.shape[0], space.num_tokens))
  >>> out = beam_search(step_models.history_step_model(stub, 7), jnp.zeros([1], jnp.int32),
  ...                   space=space,
  ...                   beam_size=4, max_len=7, rtg_constants=c)
  >>> out.score.shape, out.path.shape
  ((1, 5), (1, 5, 7))
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from imkga_jax import grammar
from imkga_jax import kg as kg_lib
from imkga_jax import prepared
from imkga_jax import rtg as rtg_lib
from imkga_jax import step_models

# Logit given to disallowed tokens before the softmax (finite, so an all-masked row is not NaN).
_MASKED_LOGIT = -1e9
AGGREGATIONS = ('max', 'sum')



@flax.struct.dataclass
class BeamState:
  """What the search carries from step to step; K = beam (1 until step 0's top-k), L = max_len,
  E = entities."""
  logprob: jax.Array     # [b, K] f32 live log-probs, -inf for empty/dead beams
  seqs: jax.Array        # [b, K, L] int32 live tokens, <pad> after the current step
  rtg: jax.Array         # [b, K] f32 R̂ fed with the next state token
  hops: jax.Array        # [b, K] int32 relation tokens so far
  cache: Any             # the model's cache of the live rows (None before step 0)
  direct: jax.Array      # [b, E] f32 log-prob of the direct answer `e <eos>` (complete_direct)
  score: jax.Array       # [b, E] f32 aggregate score of the finished paths per entity, -inf: none
  best: jax.Array        # [b, E] f32 best score of a path of >= 1 hop per entity
  path: jax.Array        # [b, E, L] int32 that path (r1 e1 … e <eos> <pad>…)


@flax.struct.dataclass
class DecodeResult:
  """Per query and entity: the ranking score, its two parts, and the explanation.

  `direct` is the log-probability of the direct answer `e <eos>` (with `complete_direct`; -inf
  otherwise or where the direct form is not offered), `paths` the aggregate of the other finished
  paths (the direct beams too without `complete_direct`), `score` their combination
  (`combine`). The explanation is the best path of at least one hop (`best`, `path`).
  """
  score: jax.Array   # [b, E] f32, -inf where nothing reaches the entity
  direct: jax.Array  # [b, E] f32
  paths: jax.Array   # [b, E] f32
  best: jax.Array    # [b, E] f32, -inf where no path of >= 1 hop ends
  path: jax.Array    # [b, E, L] int32 (r1 e1 … e <eos>), all <pad> where none ends


# ============================================================================ folding paths in
def path_scores(logprob: jax.Array, hops: jax.Array, length_norm: bool) -> jax.Array:
  """A path's score: its log-probability, divided by max(hops, 1) when `length_norm`."""
  if not length_norm:
    return logprob
  return logprob / jnp.maximum(hops, 1).astype(jnp.float32)


def _scatter_best(score: jax.Array, index: jax.Array, e: int) -> tuple[jax.Array, jax.Array]:
  """Per entity, the best of `score [b, n]` (rows `index`, E = none) and the first row giving it."""
  b, n = score.shape
  rows = jnp.arange(b)[:, None]  # [b, 1]
  top = jnp.full((b, e), -jnp.inf, jnp.float32).at[rows, index].max(score, mode='drop')  # [b, E]
  at_top = (score == jnp.take_along_axis(top, jnp.minimum(index, e - 1), axis=1)) & (index < e)
  slot = jnp.where(at_top, jnp.arange(n)[None, :], n)  # [b, n]
  return top, jnp.full((b, e), n, jnp.int32).at[rows, index].min(slot, mode='drop')  # [b, E]


def _fold_sparse(state: BeamState, answer: jax.Array, score: jax.Array, hops: jax.Array,
                 seqs: jax.Array, aggregation: str) -> BeamState:
  """Folds finished paths `[b, n]` (entity `answer`, -1 = none; path `score`; `hops`; tokens `seqs
  [b, n, L]`) into the per-entity results. Every path counts for the score; the explanation is the
  best path of at least one hop (the direct form explains nothing)."""
  b, e = state.best.shape
  index = jnp.where((answer >= 0) & jnp.isfinite(score), answer, e)  # [b, n]; E is dropped
  top, _ = _scatter_best(score, index, e)  # [b, E]
  top_path, winner = _scatter_best(jnp.where(hops >= 1, score, -jnp.inf), index, e)
  chosen = jnp.take_along_axis(seqs, jnp.minimum(winner, score.shape[1] - 1)[..., None], axis=1)
  path = jnp.where((top_path > state.best)[..., None], chosen, state.path)  # [b, E, L]
  best = jnp.maximum(state.best, top_path)
  if aggregation == 'max':
    return state.replace(score=jnp.maximum(state.score, top), best=best, path=path)
  shift = jnp.take_along_axis(top, jnp.minimum(index, e - 1), axis=1)  # [b, n]
  terms = jnp.where(index < e, jnp.exp(score - shift), 0.0)  # [b, n]
  total = jnp.zeros((b, e), jnp.float32).at[jnp.arange(b)[:, None], index].add(terms, mode='drop')
  summed = jnp.where(jnp.isfinite(top), top + jnp.log(jnp.maximum(total, 1e-30)), -jnp.inf)
  return state.replace(score=jnp.logaddexp(state.score, summed), best=best, path=path)


def _fold_dense(state: BeamState, score: jax.Array, step: int, space: kg_lib.TokenSpace,
                aggregation: str) -> BeamState:
  """Folds every ending `live prefix + entity e` at the last entity `step` (score `[b, K, E]`), whose
  `<eos>` at `step + 1` has probability 1, into the per-entity results: no path is materialised
  but each entity's best."""
  b, k, e = score.shape
  top = jnp.max(score, axis=1)  # [b, E]
  # The first beam giving the best ending (argmax's choice; two plain reductions instead of XLA's
  # variadic argmax reduce, which costs more than the rest of this fold on CPU).
  beams = jnp.arange(k, dtype=jnp.int32)[None, :, None]
  parent = jnp.min(jnp.where(score == top[:, None], beams, k), axis=1)  # [b, E]
  chosen = jnp.take_along_axis(state.seqs, parent[..., None], axis=1)  # [b, E, L]
  chosen = chosen.at[:, :, step].set(space.entity_token(jnp.arange(e, dtype=jnp.int32))[None])
  chosen = chosen.at[:, :, step + 1].set(kg_lib.EOS)
  path = jnp.where((top > state.best)[..., None], chosen, state.path)
  best = jnp.maximum(state.best, top)  # every ending here has at least one hop
  if aggregation == 'max':
    return state.replace(score=jnp.maximum(state.score, top), best=best, path=path)
  return state.replace(score=jnp.logaddexp(state.score, jax.nn.logsumexp(score, axis=1)),
                       best=best, path=path)


# ============================================================================ the search
def beam_search(model: step_models.StepModel, head_entity: jax.Array, *, space: kg_lib.TokenSpace,
                beam_size: int, max_len: int, rtg_constants: rtg_lib.RtgConstants,
                constraint: grammar.GraphConstraint | None = None, finish_width: int = 0,
                complete_last: bool = False, complete_direct: bool = False,
                aggregation: str = 'max', length_norm: bool = True,
                direct_ok: jax.Array | None = None, direct_weight: float | None = None
                ) -> DecodeResult:
  """Beam search over paths; pure, call it inside `jax.jit`.

  Args:
    model: the model as a `step_models.StepModel`.
    head_entity: `[batch]` int32 entity ids of the query heads (used by the graph constraint).
    space: token layout.
    beam_size: live beams K per query.
    max_len: L = 2 * max_hops + 1 action tokens.
    rtg_constants: return-to-go constants (`rtg.constants_from_config`); R̂0 = r_good.
    constraint: graph tables for constrained mode, or None.
    finish_width: W > K finishes the best W endings of each inner entity step (one model call on
      `batch * W` rows each); <= K: the beam's own K.
    complete_last: finish every ending of the last entity step (exact, no model call), not only K.
    complete_direct: finish every direct answer `e <eos>` at step 0 (exact: only <eos> follows a
      step-0 entity), outside the beam, whose K slots then all start paths; without it the direct
      answers compete with the relations for the K slots.
    aggregation: 'max' or 'sum' over an entity's finished paths (module docstring).
    length_norm: divide a path's log-probability by its hops.
    direct_ok: `[batch]` bool, which queries may answer in the direct form `t <eos>` (None: all).
    direct_weight: how the direct answers and the paths combine into the score (`combine`).

  Returns:
    `DecodeResult` with the per-entity scores, their parts, best path scores and paths.

  Example:
    >>> space = kg_lib.TokenSpace(num_relations=1, num_entities=3)
    >>> c = rtg_lib.RtgConstants(1.0, -1.0, -0.1, space=space)
    >>> stub = step_models.history_step_model(
    ...     lambda a, r, s: jnp.zeros((a.shape[0], space.num_tokens)), 3)
    >>> res = jax.jit(lambda h: beam_search(stub, h, space=space, beam_size=2, max_len=3,
    ...                                     rtg_constants=c))(jnp.zeros([1], jnp.int32))
    >>> bool(jnp.isfinite(res.score).any())
    True
  """
  check_aggregation(aggregation)
  if max_len < 3 or max_len % 2 == 0:
    raise ValueError(f'beam_search: max_len={max_len} must be 2 * max_hops + 1 >= 3')
  b, k, l, e = head_entity.shape[0], beam_size, max_len, space.num_entities
  c = rtg_constants
  w = min(int(finish_width), k * e) if finish_width > k else k  # endings finished per inner step
  direct_ok = jnp.ones((b,), jnp.bool_) if direct_ok is None else direct_ok.astype(jnp.bool_)

  def log_probs(logits, seqs, n, tokens):
    """Masked log-softmax in float32 over the allowed tokens of `tokens`; -inf elsewhere."""
    if constraint is None:
      ok = grammar.allowed_unconstrained(seqs, n, space, direct_ok, tokens)
    else:
      ok = grammar.allowed_in_graph(seqs, n, head_entity, space, constraint, direct_ok, tokens)
    logp = jax.nn.log_softmax(jnp.where(ok, logits.astype(jnp.float32), _MASKED_LOGIT), axis=-1)
    return jnp.where(ok, logp, -jnp.inf)  # [b, n, hi - lo]

  def extend(state, parent, token, n):
    """Live beams `parent [b, m]` followed by `token [b, m]` at step n: (seqs, R̂ next, hops)."""
    seqs = jnp.take_along_axis(state.seqs, parent[..., None], axis=1)  # [b, m, L]
    before = seqs[:, :, n - 1] if n else jnp.full(token.shape, kg_lib.BOS, jnp.int32)
    rtg = rtg_lib.next_rtg_target_unknown(jnp.take_along_axis(state.rtg, parent, axis=1), token,
                                          before, c.r_good, c, xp=jnp)  # [b, m]
    hops = (jnp.take_along_axis(state.hops, parent, axis=1)
            + space.is_relation(token).astype(jnp.int32))  # [b, m]
    return seqs.at[:, :, n].set(token), rtg, hops

  def finish(state, answer, logprob, hops, seqs, n):
    """Folds paths whose `<eos>` sits at step n (log-probs with it) into the results."""
    seqs = seqs.at[:, :, n].set(kg_lib.EOS)
    return _fold_sparse(state, answer, path_scores(logprob, hops, length_norm), hops, seqs,
                        aggregation)

  def top_endings(candidates, lo, width):
    """The best `width` (parent, entity token) endings of `candidates [b, K, E]`."""
    logprob, flat = lax.top_k(candidates.reshape(b, k * e), width)  # [b, width]
    return logprob, flat // e, flat % e + space.entity_offset

  # Step 0 reads one row per query (every beam would hold the same empty prefix); its top-k spreads
  # the K beams, and the cache rows follow their parent like at every other step.
  state = BeamState(
      logprob=jnp.zeros((b, 1), jnp.float32), seqs=jnp.full((b, 1, l), kg_lib.PAD, jnp.int32),
      rtg=jnp.full((b, 1), c.r_good, jnp.float32), hops=jnp.zeros((b, 1), jnp.int32), cache=None,
      direct=jnp.full((b, e), -jnp.inf, jnp.float32),
      score=jnp.full((b, e), -jnp.inf, jnp.float32), best=jnp.full((b, e), -jnp.inf, jnp.float32),
      path=jnp.full((b, e, l), kg_lib.PAD, jnp.int32))
  finished_wide = False  # whether the previous step finished its endings W wide
  for n in range(l - 1):  # the last position holds only <eos>, known without a model call
    tokens = grammar.token_range(n, l, space)
    lo, width = tokens[0], tokens[1] - tokens[0]
    logits, cache = model.step(state.cache, state.seqs[:, :, n - 1] if n else None, state.rtg, n,
                               tokens)  # [b, K, width]
    logp = log_probs(logits, state.seqs, n, tokens)  # [b, K, width]
    candidates = state.logprob[..., None] + logp  # [b, K, width]
    if lo == kg_lib.EOS and not finished_wide:  # the live beams ending in an entity finish here
      last = state.seqs[:, :, n - 1]  # [b, K]
      answer = jnp.where(space.is_entity(last), space.token_to_entity(last), -1)
      state = finish(state, answer, candidates[..., 0], state.hops, state.seqs, n)
    entity_candidates = candidates[..., space.entity_offset - lo:]  # [b, K, E] if entities here
    if n == 0 and complete_direct:  # every direct answer, exactly; the beam keeps the relations
      state = state.replace(direct=entity_candidates[:, 0])  # [b, E]; only beam 0 is live
      candidates = candidates.at[..., space.entity_offset - lo:].set(-jnp.inf)
    if n == l - 2:  # the last entity: only <eos> can follow, with probability 1
      if complete_last:
        state = _fold_dense(state, path_scores(entity_candidates, state.hops[..., None],
                                               length_norm), n, space, aggregation)
      else:
        logprob, parent, token = top_endings(entity_candidates, lo, k)
        seqs, _, hops = extend(state, parent, token, n)
        state = finish(state, space.token_to_entity(token), logprob, hops, seqs, n + 1)
      break
    finished_wide = w > k and n % 2 == 1
    if finished_wide:  # the best W endings, their <eos> from one model call on W rows
      logprob, parent, token = top_endings(entity_candidates, lo, w)  # [b, W]
      seqs, rtg, hops = extend(state, parent, token, n)
      after = grammar.token_range(n + 1, l, space)
      eos_logits, _ = model.step(model.gather(cache, parent), token, rtg, n + 1, after)
      eos = log_probs(eos_logits, seqs, n + 1, after)[..., kg_lib.EOS - after[0]]  # [b, W]
      state = finish(state, space.token_to_entity(token), logprob + eos, hops, seqs, n + 1)
    if lo == kg_lib.EOS:
      candidates = candidates.at[..., 0].set(-jnp.inf)  # <eos> only finishes
    rows = candidates.shape[1]  # 1 at step 0, else K
    flat_candidates = candidates.reshape(b, rows * width)
    if rows * width < k:  # fewer candidates than beams (step 0 of a small KG): the rest stay dead
      flat_candidates = jnp.pad(flat_candidates, ((0, 0), (0, k - rows * width)),
                                constant_values=-jnp.inf)
    logprob, flat = lax.top_k(flat_candidates, k)  # [b, K]
    parent, token = jnp.minimum(flat // width, rows - 1), flat % width + lo
    seqs, rtg, hops = extend(state, parent, token, n)
    state = state.replace(logprob=logprob, seqs=seqs, rtg=rtg, hops=hops,
                          cache=model.gather(cache, parent))
  return DecodeResult(score=combine(state.direct, state.score, aggregation, direct_weight),
                      direct=state.direct, paths=state.score, best=state.best, path=state.path)


def combine(direct: jax.Array, paths: jax.Array, aggregation: str,
            direct_weight: float | None = None):
  """`[b, E]` ranking scores from the direct answers' log-probs and the paths' aggregate.

  `direct_weight` None: the model's own weighting, the aggregation over every path the direct form
  included ('sum': log(P_direct + Σ P_path); 'max': the better of the two). A weight w in [0, 1]:
  the mixture `log(w · P_direct / Z_direct + (1 - w) · P_paths / Z_paths)` of the two parts, each
  normalised over the entities (w = 1: the step-0 classifier alone; w = 0: the paths alone).
  Works on numpy and jax arrays.
  """
  xp = jnp if isinstance(direct, jax.Array) else np
  if direct_weight is None:
    return xp.logaddexp(direct, paths) if aggregation == 'sum' else xp.maximum(direct, paths)
  parts = []
  for weight, part in ((direct_weight, direct), (1.0 - direct_weight, paths)):
    finite = xp.isfinite(part)
    norm = _logsumexp(xp, xp.where(finite, part, -xp.inf))  # [b, 1]
    ok = finite & xp.isfinite(norm) & (weight > 0)
    parts.append(xp.where(ok, part - norm + xp.log(xp.maximum(weight, 1e-30)), -xp.inf))
  return xp.logaddexp(*parts)


def _logsumexp(xp, x):
  """`[b, E]` -> `[b, 1]` log Σ exp over the entities (-inf for a row of -inf)."""
  top = xp.max(x, axis=-1, keepdims=True)
  safe = xp.where(xp.isfinite(top), top, 0.0)
  return xp.where(xp.isfinite(top), safe + xp.log(xp.sum(xp.exp(x - safe), -1, keepdims=True)),
                  -xp.inf)


def check_aggregation(aggregation: str) -> None:
  """Raises a ValueError naming `decode.aggregation` unless it is one of `AGGREGATIONS`."""
  if aggregation not in AGGREGATIONS:
    raise ValueError(f'decode.aggregation={aggregation!r}: expected one of {AGGREGATIONS}')


# `(params, feature table, queries [b, 3]) -> DecodeResult`, jitted.
DecodeFn = Callable[[Any, Any, jax.Array], DecodeResult]


def make_decode_fn(step_model: Callable[[Any, dict[str, jax.Array]], step_models.StepModel],
                   space: kg_lib.TokenSpace, *, beam_size: int, max_len: int,
                   rtg_constants: rtg_lib.RtgConstants,
                   constraint: grammar.GraphConstraint | None = None,
                   finish_width: int = 0, complete_last: bool = False,
                   complete_direct: bool = False, aggregation: str = 'max',
                   length_norm: bool = True, direct: np.ndarray | None = None,
                   direct_weight: float | None = None,
                   batch_sharding: NamedSharding | None = None) -> DecodeFn:
  """`beam_search` of a batch of queries as one jitted function.

  Args:
    step_model: `(params, context) -> StepModel`, with `context` the per-query model inputs `[b]`
      (head_token, relation_token and the head's features, `prepared.head_features`).
    space, beam_size, max_len, rtg_constants, constraint, finish_width, complete_last,
      complete_direct, aggregation, length_norm, direct_weight: as `beam_search`.
    direct: `[2R, E]` bool, whether query (head e, relation r) may answer in the direct form
      (`prepared.direct_table`); None: every query.
    batch_sharding: sharding of the query batch: decoding is then data parallel over the mesh,
      params, features and constraint replicated. None: plain `jax.jit`.

  Returns:
    `decode_fn(params, feature table, queries [b, 3] int32) -> DecodeResult`.
  """
  check_aggregation(aggregation)  # now, not at the first call's trace
  direct_table = None if direct is None else jnp.asarray(direct, jnp.bool_)

  def fn(params, table, queries):
    heads, relations = queries[:, 0], queries[:, 1]
    return beam_search(step_model(params, query_context(space, table, queries)), heads,
                       space=space, beam_size=beam_size,
                       max_len=max_len, rtg_constants=rtg_constants, constraint=constraint,
                       finish_width=finish_width, complete_last=complete_last,
                       complete_direct=complete_direct, aggregation=aggregation,
                       length_norm=length_norm, direct_weight=direct_weight,
                       direct_ok=None if direct_table is None else direct_table[relations, heads])

  return _jit(fn, batch_sharding)


def query_context(space: kg_lib.TokenSpace, table: Any, queries: jax.Array) -> dict[str, jax.Array]:
  """The per-query model inputs of `[b, 3]` queries: head and relation tokens, the head's features."""
  heads, relations = queries[:, 0], queries[:, 1]
  return {'head_token': space.entity_token(heads), 'relation_token': space.relation_token(relations),
          **prepared.head_features(table, heads)}


def _jit(fn, batch_sharding):
  if batch_sharding is None:
    return jax.jit(fn)
  replicated = NamedSharding(batch_sharding.mesh, P())
  return jax.jit(fn, in_shardings=(replicated, replicated, batch_sharding),
                 out_shardings=batch_sharding)
