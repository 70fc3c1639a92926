"""Path grounding: each train query instantiated by its best mined rules (DESIGN.md §3).

Grounding (`ground_paths`): for every query (X, h, Y) (train triples and their inverses), the rules of
h are instantiated best first, from X or from Y, whichever side has the smaller first fan-out,
following at most `grounding_fanout` neighbours per step (a seeded sample beyond it);
`paths_per_rule` random instantiations that reach Y are kept per rule until `paths_per_triple` paths
exist. The query's own edge is never used: a length-1 body differs from its head, and longer bodies
require X, A1, …, Y to be distinct, so they cannot contain the edge X→Y or Y→X. Queries left without a
path become the direct trajectory.

Example:
  >>> paths = ground_paths(graph, ruleset, queries, paths_per_triple=4)   # doctest: +SKIP
  >>> paths.relations[0], paths.entities[0]                               # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tqdm

from data_prep.rules import RuleSet
from data_prep.train_graph import TrainGraph


@dataclasses.dataclass
class Groundings:
  """Grounded rule paths. Path i answers query `query[i]` in `hops[i]` hops: relations
  `relations[i, :hops]` through entities `entities[i, :hops]` (the last one is the query's tail);
  unused slots hold -1. `confidence[i]` is the confidence of the rule it instantiates."""
  query: np.ndarray  # [m] int64 index into the queries array
  relations: np.ndarray  # [m, max_length] int64
  entities: np.ndarray  # [m, max_length] int64
  hops: np.ndarray  # [m] int64
  confidence: np.ndarray  # [m] float64


def _walk_body(g: TrainGraph, x: np.ndarray, y: np.ndarray, body: Sequence[int], fanout: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Instantiations of `body` from `x[i]` that reach `y[i]` with distinct entities: `(i, [m, n-1])`."""
  owner = np.arange(len(x))
  nodes = np.zeros((len(x), 0), np.int64)
  cur = x
  for rel in body[:-1]:
    parent, nxt = g.expand(cur, rel, fanout, rng)
    owner, nodes = owner[parent], nodes[parent]
    ok = (nxt != x[owner]) & (nxt != y[owner])
    for k in range(nodes.shape[1]):
      ok &= nxt != nodes[:, k]
    owner, nodes, cur = owner[ok], np.concatenate([nodes[ok], nxt[ok, None]], 1), nxt[ok]
  hit = g.has_edge(cur, body[-1], y[owner])
  owner, nodes = owner[hit], nodes[hit]
  if nodes.shape[1] and len(owner):  # sampling with replacement may repeat an instantiation
    uniq = np.unique(np.concatenate([owner[:, None], nodes], 1), axis=0)
    owner, nodes = uniq[:, 0], uniq[:, 1:]
  return owner, nodes


def _instantiate(g: TrainGraph, x, y, body: tuple[int, ...], fanout: int, rng):
  """`_walk_body` from X or, reversed, from Y — whichever first step fans out less, per query."""
  forward = g.degree(x, body[0]) <= g.degree(y, g.inverse(body[-1]))
  fi, bi = np.flatnonzero(forward), np.flatnonzero(~forward)
  o1, n1 = _walk_body(g, x[fi], y[fi], body, fanout, rng)
  rev = tuple(int(r) for r in g.inverse(np.asarray(body[::-1])))
  o2, n2 = _walk_body(g, y[bi], x[bi], rev, fanout, rng)
  return np.concatenate([fi[o1], bi[o2]]), np.concatenate([n1, n2[:, ::-1]])


def ground_paths(graph: TrainGraph, ruleset: RuleSet, queries: np.ndarray, *, paths_per_triple: int,
                 paths_per_rule: int = 1, fanout: int = 64, seed: int = 0,
                 max_length: int = 3) -> Groundings:
  """Grounds every query `(x, h, y)` with the rules of `h`, best first (see the module docstring).

  Args:
    graph: `TrainGraph` of the train split.
    ruleset: mined rules.
    queries: `[q, 3]` (head, relation in `[0, 2R)`, tail) — usually `kg.with_inverses('train')`.
    paths_per_triple: k, the most distinct paths kept per query.
    paths_per_rule: instantiations kept per rule and query (drawn at random among those found).
    fanout: neighbours followed per step (a seeded sample with replacement beyond it).
    seed: the result is a deterministic function of the inputs and the seed.
    max_length: width of the returned arrays (≥ the longest rule body).

  Returns:
    `Groundings`, grouped by head relation, then rule rank.
  """
  rng = np.random.default_rng([int(seed), 43])
  queries = np.asarray(queries, np.int64)
  count = np.zeros(len(queries), np.int64)
  out_q, out_rel, out_ent, out_hops, out_conf = [], [], [], [], []
  heads = [h for h in sorted(ruleset.rules) if ruleset.rules[h]]
  for head in tqdm.tqdm(heads, desc='grounding paths', unit='heads', leave=False, mininterval=2.0):
    mine = np.flatnonzero((queries[:, 1] == head) & (queries[:, 0] != queries[:, 2]))
    for confidence, body in ruleset.rules[head]:
      if len(body) > max_length:
        raise ValueError(f'rule body {body} is longer than max_length={max_length}; set '
                         'config.rules.max_length <= config.trajectories.max_hops')
      active = mine[count[mine] < paths_per_triple]
      if not len(active):
        break
      local, nodes = _instantiate(graph, queries[active, 0], queries[active, 2], body, fanout, rng)
      if not len(local):
        continue
      order = np.lexsort((rng.random(len(local)), local))  # random order inside each query
      local, nodes = local[order], nodes[order]
      rank = np.arange(len(local)) - np.searchsorted(local, local)
      q = active[local]
      keep = rank < np.minimum(paths_per_rule, paths_per_triple - count[q])
      q, nodes = q[keep], nodes[keep]
      np.add.at(count, q, 1)
      n = len(body)
      rel = np.full((len(q), max_length), -1, np.int64)
      ent = np.full((len(q), max_length), -1, np.int64)
      rel[:, :n] = body
      ent[:, :n - 1] = nodes
      ent[:, n - 1] = queries[q, 2]
      out_q.append(q), out_rel.append(rel), out_ent.append(ent), out_hops.append(np.full(len(q), n))
      out_conf.append(np.full(len(q), float(confidence)))
  if not out_q:
    empty = np.zeros((0, max_length), np.int64)
    return Groundings(np.zeros(0, np.int64), empty, empty.copy(), np.zeros(0, np.int64),
                      np.zeros(0, np.float64))
  return Groundings(np.concatenate(out_q), np.concatenate(out_rel), np.concatenate(out_ent),
                    np.concatenate(out_hops), np.concatenate(out_conf))
