"""Which token may come next in a path: the grammar the model is trained on, and the train graph.

A path is `r1 e1 … rn en <eos>` (or the direct form `t <eos>`), at most L = 2·max_hops + 1 tokens.
Unconstrained mode (SQUIRE's published setting) enforces only the path grammar the
model is trained on, so every finished path is a readable explanation: the first action is a relation
or an entity (the direct form), a relation is followed by an entity, a path entity by a relation or
`<eos>`, a step-0 entity only by `<eos>`; `<pad>`, `<bos>`, `<mask>` are never emitted and no relation
comes where an entity and `<eos>` could no longer follow. Graph-constrained mode allows only moves of
the TRAIN graph with inverses (`GraphConstraint`): at step 0 the relations leaving the head or any
entity (the direct form); after a step-0 entity only `<eos>`; after relation r from entity e only
tails of (e, r); after a path entity `<eos>` or a relation leaving it. In both modes `direct_ok`
([batch] bool) can withhold the direct form from some queries.

`token_range(step)` is the contiguous token range that holds every token either mode can allow at
a step, so the model need not score the rest (a typed output head). Training scores the same ranges
(`head_groups`: the steps of a sequence grouped by their range) and normalises over the tokens
`allowed_unconstrained` allows (`losses.typed_token_loss`), so the model learns the distribution the
decoder reads.

Example:
  >>> space = kg_lib.TokenSpace(num_relations=1, num_entities=3)
  >>> token_range(1, 5, space), token_range(2, 5, space)
  ((2, 9), (2, 6))
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from imkga_jax import kg as kg_lib


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


def token_range(step: int, max_len: int, space: kg_lib.TokenSpace) -> tuple[int, int]:
  """The contiguous token range `[lo, hi)` holding every token the grammar can allow at `step`."""
  if step == 0:  # a relation, or an entity (the direct form)
    return space.relation_offset, space.num_tokens
  if step == 1:  # <eos> after a direct answer, an entity after a relation
    return kg_lib.EOS, space.num_tokens
  if step % 2:  # after a relation: an entity
    return space.entity_offset, space.num_tokens
  return kg_lib.EOS, space.entity_offset  # after a path entity: <eos> or a relation


def head_groups(steps: int, space: kg_lib.TokenSpace
                ) -> tuple[tuple[tuple[int, ...], tuple[int, int]], ...]:
  """The steps `0 … steps-1` of a sequence grouped by `token_range`: `((steps, (lo, hi)), …)`, in
  order of their first step; a typed output head scores each group's range only.

  Example: with 1 relation and 3 entities (tokens 4, 5 relations, 6 … 8 entities), 7 steps:
  `(((0,), (4, 9)), ((1,), (2, 9)), ((2, 4, 6), (2, 6)), ((3, 5), (6, 9)))`.
  """
  groups: dict[tuple[int, int], list[int]] = {}
  for n in range(steps):
    groups.setdefault(token_range(n, steps, space), []).append(n)
  return tuple((tuple(ns), rng) for rng, ns in sorted(groups.items(), key=lambda g: g[1][0]))


def allowed_unconstrained(seqs: jax.Array, step: int, space: kg_lib.TokenSpace,
                           direct_ok: jax.Array, tokens: tuple[int, int],
                           max_len: int | None = None) -> jax.Array:
  """`[b, n, hi - lo]` bool: the path grammar, no graph (module docstring). `max_len`: the longest
  sequence (default `seqs.shape[-1]`; training's direct sequences are shorter than the grammar's)."""
  max_len = seqs.shape[-1] if max_len is None else max_len
  tok = lax.broadcasted_iota(jnp.int32, (1, 1, tokens[1] - tokens[0]), 2) + tokens[0]
  start = step == 0
  prev = seqs[:, :, max(step - 1, 0)]  # [b, n]
  prev_is_entity = (~start & space.is_entity(prev))[..., None]  # [b, n, 1]
  prev_is_relation = (~start & space.is_relation(prev))[..., None]  # [b, n, 1]
  direct = (start & direct_ok)[:, None, None]  # [b, 1, 1]
  return ((space.is_relation(tok) & (step < max_len - 2) & (start | (prev_is_entity & (step >= 2))))
          | (space.is_entity(tok) & (step < max_len - 1) & (direct | prev_is_relation))
          | ((tok == kg_lib.EOS) & prev_is_entity))


def allowed_in_graph(seqs: jax.Array, step: int, head_entity: jax.Array, space: kg_lib.TokenSpace,
                      graph: GraphConstraint, direct_ok: jax.Array, tokens: tuple[int, int]
                      ) -> jax.Array:
  """`[b, n, hi - lo]` bool: only moves of the graph (module docstring)."""
  batch, rows, max_len = seqs.shape
  lo, width = tokens[0], tokens[1] - tokens[0]
  tok = lax.broadcasted_iota(jnp.int32, (1, 1, width), 2) + lo
  prev1 = seqs[:, :, max(step - 1, 0)]  # [b, n]
  prev2 = seqs[:, :, max(step - 2, 0)]  # [b, n]
  prev_is_entity = (step >= 1) & space.is_entity(prev1)  # [b, n]
  prev_is_relation = (step >= 1) & space.is_relation(prev1)  # [b, n]
  head = jnp.broadcast_to(head_entity[:, None], (batch, rows))  # [b, n]
  current = jnp.where(prev_is_entity, space.token_to_entity(prev1),
                      space.token_to_entity(prev2) if step >= 2 else head)  # [b, n]
  current = head if step == 0 else jnp.clip(current, 0, space.num_entities - 1)
  relation_position = ((step == 0) | ((step >= 2) & prev_is_entity)) & (step < max_len - 2)
  # Window of D out-edges of the current entity.
  start = graph.indptr[current]  # [b, n]
  degree = graph.indptr[current + 1] - start  # [b, n]
  offsets = jnp.arange(graph.max_degree, dtype=jnp.int32)  # [D]
  edge = jnp.minimum(start[..., None] + offsets, graph.relation.shape[0] - 1)  # [b, n, D]
  edge_relation = graph.relation[edge]  # [b, n, D]
  edge_ok = offsets < degree[..., None]  # [b, n, D]
  last_relation = space.token_to_relation(prev1)  # [b, n]
  edge_ok &= (relation_position[..., None]
              | (prev_is_relation[..., None] & (edge_relation == last_relation[..., None])))
  column = jnp.where(relation_position[..., None], space.relation_token(edge_relation),
                     space.entity_token(graph.tail[edge])) - lo  # [b, n, D]
  column = jnp.where(edge_ok & (column >= 0), column, width)  # out of range: dropped
  flat_rows = jnp.arange(batch * rows, dtype=jnp.int32)[:, None]  # [N, 1]
  moves = jnp.zeros((batch * rows, width), jnp.bool_).at[
      flat_rows, column.reshape(batch * rows, -1)].set(True, mode='drop').reshape(batch, rows, width)
  direct = ((step == 0) & direct_ok)[:, None, None]  # [b, 1, 1]
  return (moves | (space.is_entity(tok) & direct)
          | ((tok == kg_lib.EOS) & prev_is_entity[..., None]))
