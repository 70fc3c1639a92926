"""Jitted beam search over relation paths `r1 e1 … rn en <eos>` (and the direct form `t <eos>`).

The model sits behind a callback, as in the flax examples' `decode.py`:

  tokens_to_logits(actions [N, L] int32, rtg [N, L] f32, step) -> logits [N, V]

with `N = batch * beam`; it returns the logits predicting `actions[:, step]` (Mask I: they depend only
on `actions[:, :step]` and `rtg[:, :step + 1]`). `make_tokens_to_logits` adapts the IMKGA model.

One `lax.while_loop` runs at most `L = 2 * max_hops + 1` steps. At step `s` every live beam is
scored over the whole vocabulary (log-softmax in float32 over the allowed tokens):
  * finishing: each live beam whose last token is an entity is offered `<eos>`; the result is a
    finished beam, stored apart (`[batch, (L - 1) * W]` slots, W = max(beam, finish_width)), so
    finishing never competes with live beams for slots (SQUIRE widens its last step to 2·beam for
    that reason; here every live beam ending in an entity is kept as a candidate at every step, which
    is a superset);
  * continuing: `lax.top_k` over `[batch, beam * V]` non-`<eos>` candidates keeps `beam` live beams.
Memory per step is O(batch · beam · V) (the logits and one candidate array); nothing of size V² exists.

Finished beam: answer = the entity right before `<eos>`, log-prob = sum over its tokens (the `<eos>`
included), `score = log-prob / max(hops, 1)` with hops = relation tokens (the direct form counts 1).

Last-step completion (`complete_last=True`). At step `L - 2` the next token is the path's last entity,
and after it the grammar leaves only `<eos>` (log-prob exactly 0), so the probability of every full-length
path through a live prefix is known without another model call: `live logprob + log p(e | prefix)` for
ALL entities e, not only the `beam` best. `DecodeResult.completion_*` keep, per entity, their log-sum-exp
over the live prefixes, the best normalised score and the prefix that gives it. Beam search alone keeps
`beam` of the `beam · E` full-length paths; a head query such as (courier, ships_via⁻¹, ?) whose answers
are hundreds of products three hops away then reaches the one held-out product only by luck.

Wide finishing (`finish_width = W > beam`). A path may also end after an inner entity (`r1 e1 <eos>`,
`r1 e1 r2 e2 <eos>`); there the `<eos>` probability depends on the entity, so it takes a model call.
Plain beam search finishes only the `beam` entities it keeps; with W it takes the best W of the
`beam · E` (prefix, entity) candidates of each inner entity step, calls the model once on those W
rows for their `<eos>` log-prob and stores them as that step's finished beams (exact paths, like
every finished beam). The live beams are unchanged.

Return-to-go tokens are recomputed each step with the target unknown (DESIGN §3): `R̂1 = r_good`, then
`imkga_jax.rtg.next_rtg_target_unknown` (the ½·R̂1 rule for entities, 0 for relations, extra r_bad for
a wrong-kind action), the same arithmetic that wrote the training targets.

Allowed tokens. Unconstrained mode (SQUIRE's published setting, no graph) enforces only the path
grammar the model is trained on, so every finished beam is a readable explanation: the first action is
a relation or an entity (the direct form), a relation is followed by an entity, a path entity by a
relation or `<eos>`, a step-0 entity only by `<eos>`; `<pad>`, `<bos>`, `<mask>` are never emitted and
no relation comes where an entity and `<eos>` could no longer follow. Graph-constrained mode allows only valid
moves in the TRAIN graph with inverses (`GraphConstraint`): at step 0 the relations leaving the head
OR any entity (the direct form `t <eos>`: the model is trained on it for triples no rule grounds, and
such targets are usually not graph neighbours); after a step-0 entity only `<eos>`; after a relation
r from entity e only tails of (e, r); after a path entity `<eos>` or a relation leaving it. In both
modes `direct_ok` ([batch] bool) can withhold the direct form from some queries (no entity at step 0;
`evaluate.direct_heads_mask`).

Example:
  >>> space = TokenSpace(num_relations=2, num_entities=5)
  >>> c = rtg_lib.RtgConstants(1.0, -1.0, -0.1, entity_offset=space.entity_offset)
  >>> stub = lambda actions, rtg, step: jnp.zeros((actions.shape[0], space.num_tokens))
  >>> out = beam_search(stub, jnp.zeros([1], jnp.int32), space=space, beam_size=4, max_len=7,
  ...                   rtg_constants=c)
  >>> out.seqs.shape, out.score.shape
  ((1, 24, 7), (1, 24))
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from imkga_jax import kg as kg_lib
from imkga_jax import rtg as rtg_lib

# Logit given to disallowed tokens before the softmax (finite, so an all-masked row is not NaN).
_MASKED_LOGIT = -1e9

TokensToLogits = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
_COMPLETION_FIELDS = ('completion_logprob', 'completion_score', 'completion_parent',
                      'completion_prefix')


@dataclasses.dataclass(frozen=True)
class TokenSpace:
  """Layout of the shared token space (hashable, static under jit)."""
  num_relations: int  # R base relations (2R relation tokens)
  num_entities: int

  @classmethod
  def from_kg(cls, kg: kg_lib.KnowledgeGraph) -> 'TokenSpace':
    return cls(kg.num_relations, kg.num_entities)

  @property
  def relation_offset(self) -> int:
    return kg_lib.NUM_SPECIAL

  @property
  def entity_offset(self) -> int:
    return kg_lib.NUM_SPECIAL + 2 * self.num_relations

  @property
  def num_tokens(self) -> int:
    return self.entity_offset + self.num_entities

  def is_entity(self, tok):
    return tok >= self.entity_offset

  def is_relation(self, tok):
    return (tok >= self.relation_offset) & (tok < self.entity_offset)


@flax.struct.dataclass
class GraphConstraint:
  """Out-edges of every entity (train graph with inverses) in CSR form, sorted by (head, rel, tail).

  Attributes:
    indptr: `[E + 1]` int32; the edges of entity e are `indptr[e]:indptr[e + 1]`.
    relation: `[M]` int32 relation ids in `[0, 2R)`.
    tail: `[M]` int32 tail entity ids.
    max_degree: largest out-degree D (static); each step gathers a `[batch, beam, D]` window.
  """
  indptr: jax.Array
  relation: jax.Array
  tail: jax.Array
  max_degree: int = flax.struct.field(pytree_node=False, default=1)

  @classmethod
  def from_triples(cls, triples: np.ndarray, num_entities: int) -> 'GraphConstraint':
    """Builds the tables from `[n, 3]` (head, relation, tail) id triples (inverses included)."""
    triples = np.unique(np.asarray(triples, np.int64).reshape(-1, 3), axis=0)  # sorted, deduplicated
    degree = np.bincount(triples[:, 0], minlength=num_entities)  # [E]
    indptr = np.zeros(num_entities + 1, np.int32)
    indptr[1:] = np.cumsum(degree)
    return cls(indptr=jnp.asarray(indptr), relation=jnp.asarray(triples[:, 1], jnp.int32),
               tail=jnp.asarray(triples[:, 2], jnp.int32),
               max_degree=max(int(degree.max(initial=0)), 1))

  @classmethod
  def from_kg(cls, kg: kg_lib.KnowledgeGraph) -> 'GraphConstraint':
    """The train graph with inverse edges (`kg.with_inverses('train')`)."""
    return cls.from_triples(kg.with_inverses('train'), kg.num_entities)


@flax.struct.dataclass
class BeamState:
  """Loop carry of `beam_search`; L = max_len, K = beam, W = max(K, finish_width) finished slots
  per step."""
  step: jax.Array               # [] int32, the position being predicted
  live_logprob: jax.Array       # [batch, K] f32, -inf for empty/dead beams
  live_seqs: jax.Array          # [batch, K, L] int32, <pad> after the current step
  live_rtg: jax.Array           # [batch, K, L] f32, R̂ fed with each step
  live_hops: jax.Array          # [batch, K] int32, relation tokens so far
  finished_seqs: jax.Array      # [batch, L - 1, W, L] int32, slot s - 1 = finished at step s
  finished_logprob: jax.Array   # [batch, L - 1, W] f32, -inf where invalid
  finished_hops: jax.Array      # [batch, L - 1, W] int32
  # Last-step completion (None unless `complete_last`), written at step L - 2:
  completion_logprob: jax.Array | None = None  # [batch, E] f32 log Σ_live exp(logprob + log p(e))
  completion_score: jax.Array | None = None    # [batch, E] f32 max_live (logprob + log p(e)) / hops
  completion_parent: jax.Array | None = None   # [batch, E] int32 live beam of the best score
  completion_prefix: jax.Array | None = None   # [batch, K, L] int32 live sequences at step L - 2


@flax.struct.dataclass
class DecodeResult:
  """Finished beams of each query, best first (F = (max_len - 1) * max(beam_size, finish_width)).

  Invalid slots have `score = logprob = -inf` and `answer = -1` and sort last. The `completion_*`
  fields (module docstring) are None unless `beam_search(..., complete_last=True)`; they cover every
  full-length path through the live prefixes of step L - 2, the finished full-length beams included.
  """
  seqs: jax.Array      # [batch, F, L] int32, action tokens ending in <eos>
  score: jax.Array     # [batch, F] f32, logprob / max(hops, 1)
  logprob: jax.Array   # [batch, F] f32
  hops: jax.Array      # [batch, F] int32
  answer: jax.Array    # [batch, F] int32 entity id or -1
  completion_logprob: jax.Array | None = None  # [batch, E] f32, -inf where no live prefix leads
  completion_score: jax.Array | None = None    # [batch, E] f32, -inf likewise
  completion_parent: jax.Array | None = None   # [batch, E] int32 index into completion_prefix
  completion_prefix: jax.Array | None = None   # [batch, K, L] int32, tokens before step L - 2


def _allowed_unconstrained(seqs: jax.Array, step: jax.Array, space: TokenSpace,
                           direct_ok: jax.Array) -> jax.Array:
  """`[batch, K, V]` bool (a broadcast expression XLA fuses): the path grammar, no graph.

  First action: a relation or, where `direct_ok`, an entity (the direct form); after a relation: an
  entity; after a path entity: a relation or `<eos>`; after a step-0 entity (direct form): only
  `<eos>`. Relations only where an entity and `<eos>` can still follow; never a special token other
  than `<eos>`.
  """
  max_len = seqs.shape[-1]
  tok = lax.broadcasted_iota(jnp.int32, (1, 1, space.num_tokens), 2)  # [1, 1, V]
  prev = lax.dynamic_index_in_dim(seqs, jnp.maximum(step - 1, 0), axis=2, keepdims=False)  # [b, K]
  start = step == 0
  prev_is_entity = (~start & space.is_entity(prev))[..., None]  # [b, K, 1]
  prev_is_relation = (~start & space.is_relation(prev))[..., None]  # [b, K, 1]
  relation_ok = step < max_len - 2
  entity_ok = step < max_len - 1
  direct = (start & direct_ok)[:, None, None]  # [b, 1, 1]
  return ((space.is_relation(tok) & relation_ok & (start | (prev_is_entity & (step >= 2))))
          | (space.is_entity(tok) & entity_ok & (direct | prev_is_relation))
          | ((tok == kg_lib.EOS) & prev_is_entity))


def _allowed_in_graph(seqs: jax.Array, step: jax.Array, head_entity: jax.Array,
                      space: TokenSpace, graph: GraphConstraint, direct_ok: jax.Array) -> jax.Array:
  """`[batch, K, V]` bool: only valid moves in the graph (see the module docstring)."""
  batch, beam, max_len = seqs.shape
  v = space.num_tokens
  tok = lax.broadcasted_iota(jnp.int32, (1, 1, v), 2)  # [1, 1, V]
  prev1 = lax.dynamic_index_in_dim(seqs, jnp.maximum(step - 1, 0), axis=2, keepdims=False)  # [b, K]
  prev2 = lax.dynamic_index_in_dim(seqs, jnp.maximum(step - 2, 0), axis=2, keepdims=False)  # [b, K]
  prev_is_entity = (step >= 1) & space.is_entity(prev1)  # [b, K]
  prev_is_relation = (step >= 1) & space.is_relation(prev1)  # [b, K]
  head = jnp.broadcast_to(head_entity[:, None], (batch, beam))  # [b, K]
  current = jnp.where(prev_is_entity, prev1 - space.entity_offset,
                      jnp.where(step >= 2, prev2 - space.entity_offset, head))  # [b, K]
  current = jnp.where(step == 0, head, jnp.clip(current, 0, space.num_entities - 1))
  relation_position = ((step == 0) | ((step >= 2) & prev_is_entity)) & (step < max_len - 2)  # [b, K]
  # Window of D out-edges of the current entity.
  start = graph.indptr[current]  # [b, K]
  degree = graph.indptr[current + 1] - start  # [b, K]
  offsets = jnp.arange(graph.max_degree, dtype=jnp.int32)  # [D]
  edge = jnp.minimum(start[..., None] + offsets, graph.relation.shape[0] - 1)  # [b, K, D]
  edge_relation = graph.relation[edge]  # [b, K, D]
  edge_ok = offsets < degree[..., None]  # [b, K, D]
  last_relation = prev1 - space.relation_offset  # [b, K]
  edge_ok &= (relation_position[..., None]
              | (prev_is_relation[..., None] & (edge_relation == last_relation[..., None])))
  column = jnp.where(relation_position[..., None], space.relation_offset + edge_relation,
                     space.entity_offset + graph.tail[edge])  # [b, K, D]
  column = jnp.where(edge_ok, column, v)  # out of range: dropped by the scatter
  rows = jnp.arange(batch * beam, dtype=jnp.int32)[:, None]  # [N, 1]
  moves = jnp.zeros((batch * beam, v), jnp.bool_).at[rows, column.reshape(batch * beam, -1)].set(
      True, mode='drop').reshape(batch, beam, v)  # [b, K, V]
  direct = ((step == 0) & direct_ok)[:, None, None]  # [b, 1, 1]
  return (moves | (space.is_entity(tok) & direct)
          | ((tok == kg_lib.EOS) & prev_is_entity[..., None]))


def beam_search(tokens_to_logits: TokensToLogits, head_entity: jax.Array, *, space: TokenSpace,
                beam_size: int, max_len: int, rtg_constants: rtg_lib.RtgConstants,
                constraint: GraphConstraint | None = None,
                complete_last: bool = False, finish_width: int = 0,
                finish_logits: TokensToLogits | None = None,
                direct_ok: jax.Array | None = None) -> DecodeResult:
  """Beam search over paths; pure, call it inside `jax.jit`.

  Args:
    tokens_to_logits: the model callback (module docstring).
    head_entity: `[batch]` int32 entity ids of the query heads (used by the graph constraint).
    space: token layout.
    beam_size: live beams K per query.
    max_len: L = 2 * max_hops + 1 action tokens.
    rtg_constants: return-to-go constants (`rtg.constants_from_config`); R̂1 = r_good.
    constraint: graph tables for constrained mode, or None.
    complete_last: also score every entity the last step allows after each live prefix (the
      `completion_*` fields; module docstring). Costs one `[batch, K, E]` reduction, no model call.
    finish_width: W > K finishes the best W (not K) path entities of each inner entity step
      (module docstring): one more model call on `batch * W` rows at each of them. 0 or <= K: off.
    finish_logits: the model callback for `batch * W` rows (the query context tiled W times);
      needed when `finish_width > K`.
    direct_ok: `[batch]` bool, which queries may answer in the direct form `t <eos>` (None: all).

  Returns:
    `DecodeResult` with F = (L - 1) * max(K, W) finished beams per query, best score first.

  Example:
    >>> space = TokenSpace(num_relations=1, num_entities=3)
    >>> c = rtg_lib.RtgConstants(1.0, -1.0, -0.1, entity_offset=space.entity_offset)
    >>> stub = lambda a, r, s: jnp.zeros((a.shape[0], space.num_tokens))
    >>> res = jax.jit(lambda h: beam_search(stub, h, space=space, beam_size=2, max_len=3,
    ...                                     rtg_constants=c))(jnp.zeros([1], jnp.int32))
    >>> int(res.answer[0, 0]) >= 0
    True
  """
  if max_len < 2:
    raise ValueError(f'beam_search: max_len={max_len} must be >= 2 (at least `t <eos>`)')
  batch, k, l, v = head_entity.shape[0], beam_size, max_len, space.num_tokens
  c = rtg_constants
  if c.entity_offset != space.entity_offset:
    raise ValueError(f'beam_search: rtg_constants.entity_offset={c.entity_offset} differs from the '
                     f'token space ({space.entity_offset}); build both from the same KG')
  positions = jnp.arange(l, dtype=jnp.int32)  # [L]
  e = space.num_entities
  w = min(int(finish_width), k * e) if finish_width > k else k  # finished slots per step
  wide = w > k
  if wide and finish_logits is None:
    raise ValueError(f'beam_search: finish_width={finish_width} > beam_size={k} needs finish_logits '
                     '(the model callback for batch * finish_width rows)')

  def extend(state: BeamState, parent: jax.Array, token: jax.Array, step: jax.Array
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Live beams `parent` [b, n] extended by `token` [b, n] at `step`: (seqs, rtg, hops)."""
    seqs = jnp.take_along_axis(state.live_seqs, parent[..., None], axis=1)  # [b, n, L]
    before = lax.dynamic_index_in_dim(seqs, jnp.maximum(step - 1, 0), axis=2, keepdims=False)
    before = jnp.where(step == 0, kg_lib.BOS, before)  # [b, n] the action before `token`
    seqs = lax.dynamic_update_index_in_dim(seqs, token, step, axis=2)  # [b, n, L]
    rtg = jnp.take_along_axis(state.live_rtg, parent[..., None], axis=1)  # [b, n, L]
    current = lax.dynamic_index_in_dim(rtg, step, axis=2, keepdims=False)  # [b, n]
    following = rtg_lib.next_rtg_target_unknown(current, token, before, c.r_good, c, xp=jnp)
    rtg = jnp.where(positions > step, following[..., None], rtg)  # [b, n, L] padded steps repeat
    hops = (jnp.take_along_axis(state.live_hops, parent, axis=1)
            + space.is_relation(token).astype(jnp.int32))  # [b, n]
    return seqs, rtg, hops

  def pad_to_width(x: jax.Array, value) -> jax.Array:
    """`[b, K, ...]` -> `[b, W, ...]`, the new rows filled with `value`."""
    if w == k:
      return x
    return jnp.pad(x, [(0, 0), (0, w - k)] + [(0, 0)] * (x.ndim - 2), constant_values=value)

  def put(finished: tuple[jax.Array, ...], slot: jax.Array, seqs: jax.Array, logprob: jax.Array,
          hops: jax.Array) -> tuple[jax.Array, ...]:
    """Writes `[b, W, ...]` finished beams into `slot` of the (seqs, logprob, hops) buffers."""
    return tuple(lax.dynamic_update_index_in_dim(buf, x, slot, axis=1)
                 for buf, x in zip(finished, (seqs, logprob, hops)))

  direct_ok = jnp.ones((batch,), jnp.bool_) if direct_ok is None else direct_ok.astype(jnp.bool_)

  def allowed_fn(seqs, step):
    if constraint is None:
      return _allowed_unconstrained(seqs, step, space, direct_ok)
    return _allowed_in_graph(seqs, step, head_entity, space, constraint, direct_ok)

  def body(state: BeamState) -> BeamState:
    step = state.step
    logits = tokens_to_logits(state.live_seqs.reshape(batch * k, l),
                              state.live_rtg.reshape(batch * k, l), step)  # [N, V]
    logits = logits.astype(jnp.float32).reshape(batch, k, v)  # [b, K, V]
    allowed = allowed_fn(state.live_seqs, step)  # [b, K, V]
    logp = jax.nn.log_softmax(jnp.where(allowed, logits, _MASKED_LOGIT), axis=-1)  # [b, K, V]
    logp = jnp.where(allowed, logp, -jnp.inf)  # [b, K, V]

    # Finish: every live beam ending in an entity, extended by <eos>, goes to its own slot.
    finish_logprob = state.live_logprob + logp[..., kg_lib.EOS]  # [b, K]
    finish_seqs = lax.dynamic_update_index_in_dim(
        state.live_seqs, jnp.full((batch, k), kg_lib.EOS, jnp.int32), step, axis=2)  # [b, K, L]
    slot = jnp.maximum(step - 1, 0)  # step 0 never finishes; step 1 overwrites slot 0
    previous = (state.finished_seqs, state.finished_logprob, state.finished_hops)
    finished = put(previous, slot, pad_to_width(finish_seqs, kg_lib.PAD),
                   pad_to_width(finish_logprob, -jnp.inf), pad_to_width(state.live_hops, 0))
    if wide:
      # Inner entity steps (odd, <= L - 3) were finished W wide one step earlier: keep those.
      finished_wide = (step % 2 == 0) & (step >= 2) & (step <= l - 2)
      finished = lax.cond(finished_wide, lambda _: previous, lambda _: finished, None)

      def finish_wide(buffers):
        paths = state.live_logprob[..., None] + logp[..., space.entity_offset:]  # [b, K, E]
        logprob, flat = lax.top_k(paths.reshape(batch, k * e), w)  # [b, W]
        token = flat % e + space.entity_offset  # [b, W]
        seqs, rtg, hops = extend(state, flat // e, token, step)  # [b, W, L], [b, W, L], [b, W]
        eos_logits = finish_logits(seqs.reshape(batch * w, l), rtg.reshape(batch * w, l), step + 1)
        eos_logits = eos_logits.astype(jnp.float32).reshape(batch, w, v)  # [b, W, V]
        eos_allowed = allowed_fn(seqs, step + 1)  # [b, W, V]
        eos_logp = jax.nn.log_softmax(jnp.where(eos_allowed, eos_logits, _MASKED_LOGIT), axis=-1)
        eos_logp = jnp.where(eos_allowed[..., kg_lib.EOS], eos_logp[..., kg_lib.EOS], -jnp.inf)
        seqs = lax.dynamic_update_index_in_dim(
            seqs, jnp.full((batch, w), kg_lib.EOS, jnp.int32), step + 1, axis=2)  # [b, W, L]
        return put(buffers, step, seqs, logprob + eos_logp, hops)

      inner_entity = (step % 2 == 1) & (step <= l - 3)
      finished = lax.cond(inner_entity, finish_wide, lambda buffers: buffers, finished)
    finished_seqs, finished_logprob, finished_hops = finished

    completion = {}
    if complete_last:  # at step L - 2 only: the last entity, after which <eos> is certain
      def complete(_):
        paths = state.live_logprob[..., None] + logp[..., space.entity_offset:]  # [b, K, E]
        norm = paths / jnp.maximum(state.live_hops, 1).astype(jnp.float32)[..., None]  # [b, K, E]
        return dict(completion_logprob=jax.nn.logsumexp(paths, axis=1),  # [b, E]
                    completion_score=jnp.max(norm, axis=1),  # [b, E]
                    completion_parent=jnp.argmax(norm, axis=1).astype(jnp.int32),  # [b, E]
                    completion_prefix=state.live_seqs)  # [b, K, L]
      completion = lax.cond(step == l - 2, complete, lambda _: {
          k: getattr(state, k) for k in _COMPLETION_FIELDS}, None)

    # Continue: top K of the beam x vocab candidates without <eos>.
    candidates = state.live_logprob[..., None] + logp.at[..., kg_lib.EOS].set(-jnp.inf)  # [b, K, V]
    live_logprob, flat_index = lax.top_k(candidates.reshape(batch, k * v), k)  # [b, K]
    seqs, rtg, hops = extend(state, flat_index // v, flat_index % v, step)  # [b, K, L] / [b, K]
    return BeamState(step=step + 1, live_logprob=live_logprob, live_seqs=seqs, live_rtg=rtg,
                     live_hops=hops, finished_seqs=finished_seqs, finished_logprob=finished_logprob,
                     finished_hops=finished_hops, **completion)

  def cond(state: BeamState) -> jax.Array:
    return (state.step < l) & jnp.any(jnp.isfinite(state.live_logprob))

  first = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf).astype(jnp.float32)  # [K]
  init = BeamState(
      step=jnp.array(0, jnp.int32),
      live_logprob=jnp.broadcast_to(first, (batch, k)),
      live_seqs=jnp.full((batch, k, l), kg_lib.PAD, jnp.int32),
      live_rtg=jnp.full((batch, k, l), c.r_good, jnp.float32),
      live_hops=jnp.zeros((batch, k), jnp.int32),
      finished_seqs=jnp.full((batch, l - 1, w, l), kg_lib.PAD, jnp.int32),
      finished_logprob=jnp.full((batch, l - 1, w), -jnp.inf, jnp.float32),
      finished_hops=jnp.zeros((batch, l - 1, w), jnp.int32))
  if complete_last:
    init = init.replace(completion_logprob=jnp.full((batch, e), -jnp.inf, jnp.float32),
                        completion_score=jnp.full((batch, e), -jnp.inf, jnp.float32),
                        completion_parent=jnp.zeros((batch, e), jnp.int32),
                        completion_prefix=jnp.full((batch, k, l), kg_lib.PAD, jnp.int32))
  final = lax.while_loop(cond, body, init)

  f = (l - 1) * w
  logprob = final.finished_logprob.reshape(batch, f)  # [b, F]
  hops = final.finished_hops.reshape(batch, f)  # [b, F]
  score = logprob / jnp.maximum(hops, 1).astype(jnp.float32)  # [b, F]
  score, order = lax.top_k(score, f)  # [b, F] best first
  seqs = jnp.take_along_axis(final.finished_seqs.reshape(batch, f, l), order[..., None], axis=1)
  logprob = jnp.take_along_axis(logprob, order, axis=1)
  hops = jnp.take_along_axis(hops, order, axis=1)
  eos_at = jnp.argmax(seqs == kg_lib.EOS, axis=-1)  # [b, F]
  last = jnp.take_along_axis(seqs, jnp.maximum(eos_at - 1, 0)[..., None], axis=2)[..., 0]  # [b, F]
  valid = jnp.isfinite(score) & space.is_entity(last) & (eos_at >= 1)
  answer = jnp.where(valid, last - space.entity_offset, -1)  # [b, F]
  return DecodeResult(seqs=seqs, score=score, logprob=logprob, hops=hops, answer=answer,
                      **{k: getattr(final, k) for k in _COMPLETION_FIELDS})


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


def tile_beams(inputs: Mapping[str, Any], beam_size: int) -> dict[str, jax.Array]:
  """`[batch, ...]` arrays -> `[batch * beam, ...]`, each query repeated `beam_size` times in a row."""
  return {key: jnp.repeat(jnp.asarray(x), beam_size, axis=0) for key, x in inputs.items()}


def make_tokens_to_logits(model: Any, params: Any, inputs_tiled: Mapping[str, jax.Array],
                          branch: int) -> TokensToLogits:
  """The IMKGA model as a `tokens_to_logits` callback.

  `model.apply` returns `[branches, N, L, V]`; decoding needs one `[N, V]` slice of it. Slicing after
  the call would make XLA compute all of it (measured: 21x the flops and a `[3, N, L, V]` buffer,
  860 MB at N = 512, V = 20k), so a flax method interceptor cuts each branch's encoder output
  to the step being decoded before the tied output head: the head then costs `[branches, N, 1, V]`.
  The result equals `model.apply(...)[branch, :, step]` (tests/decode_test.py checks every variant).

  Args:
    model: the flax module of `imkga_jax.models.imkga.build_model`.
    params: its (unboxed) parameters.
    inputs_tiled: per-query inputs tiled to N = batch * beam rows (`tile_beams`): head_token,
      relation_token, fig, ocr, fig_present, ocr_present.
    branch: index into `model.branches` (`branch_index`).

  Returns:
    `tokens_to_logits(actions [N, L], rtg [N, L], step) -> logits [N, V]` for `actions[:, step]`.
  """
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top

  def tokens_to_logits(actions: jax.Array, rtg: jax.Array, step: jax.Array) -> jax.Array:
    def only_this_step(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, imkga.Branch) and context.method_name == '__call__':
        out = lax.dynamic_slice_in_dim(out, step, 1, axis=1)  # [N, 1, E] per branch
      return out

    inputs = dict(inputs_tiled, actions=actions, rtg=rtg)
    with nn.intercept_methods(only_this_step):
      logits = model.apply({'params': params}, inputs, train=False)  # [branches, N, 1, V]
    if logits.shape[2] != 1:
      raise RuntimeError(f'make_tokens_to_logits: expected logits of one step, got {logits.shape}; '
                         'imkga_jax/models/imkga.py no longer calls `Branch` per branch')
    return logits[branch, :, 0]  # [N, V]
  return tokens_to_logits
