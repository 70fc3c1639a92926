"""Closed path rules (AnyBURL-style) mined with sparse products, and path grounding (DESIGN.md §3).

A rule `h(X,Y) ← b1(X,A1) ∧ … ∧ bn(A_{n-1},Y)`, n = 1..3, runs over relation ids in `[0, 2R)`
(inverses included). As in AnyBURL, a grounding needs distinct entities X, A1, …, Y; confidence =
support / body groundings over distinct (X, Y) pairs of the train graph (with inverses, self-loops
out).

Mining (`mine_rules`):
1. Length 1: exact, from the relations that co-occur on one (X, Y) pair.
2. Length 2–3 candidates: per head relation, `num_walks / #heads` edges (X, h, Y) are drawn; a random
   walk of n−1 steps from X that avoids X and Y is closed by every relation linking its end to Y
   (AnyBURL's bottom-up sampling, vectorised). Each head keeps its `candidates_per_head` most sampled
   bodies.
3. Scoring: each body is scored together with its reverse (`rev(b1…bn) = bn⁻¹…b1⁻¹`, which yields the
   rule for the inverse head with the same confidence), grouped by prefix. Path-count products give the
   body groundings; groundings with a repeated entity are subtracted (for n = 3: A1 = Y or A2 = X, by
   inclusion–exclusion). Graphs with ≤ `dense_max_entities` entities are scored exactly with dense
   matmuls. Larger ones use scipy.sparse products on a sample of ≤ `sample_rows` start entities X,
   further cut so that one product yields at most `PAIRS_PER_SAMPLED_ROW · sample_rows` (X, Y) pairs (its upper
   bound, row by row, is known before multiplying). This bounds the cost on hubs. Support and body
   groundings are counted on the rows actually scored: confidence is their ratio, and `min_support`
   must be met there (a sampled rule needs real evidence, not an extrapolated count).
4. A rule is kept when support ≥ `min_support` and confidence ≥ `min_confidence`; each head keeps its
   `max_rules_per_head` best (confidence, then support, then shorter body).

Example:
  >>> ruleset = mine_rules(kg, config)                                    # doctest: +SKIP
  >>> ruleset.save('rules.json', kg); ruleset.rules[kg.relation_id('ships_from')][0]  # doctest: +SKIP
  (1.0, (3, 7))
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import threadpoolctl
import tqdm

from data_prep.train_graph import TrainGraph
from data_prep.train_graph import explode
from imkga_jax import kg as kg_lib

# Largest 2R·E² of the dense scorer's adjacency tensor (float32 entries; it keeps three copies).
DENSE_LIMIT = 1 << 24
# A sparse product yields at most this many (X, Y) pairs per sampled start row on average.
PAIRS_PER_SAMPLED_ROW = 400


@dataclasses.dataclass
class RuleSet:
  """Rules by head relation id: `rules[h] = [(confidence, body ids), …]`, best first."""
  rules: dict[int, list[tuple[float, tuple[int, ...]]]]
  stats: dict[str, Any] = dataclasses.field(default_factory=dict)

  def num_rules(self) -> int:
    return sum(len(v) for v in self.rules.values())

  def to_json(self, kg: kg_lib.KnowledgeGraph) -> dict[str, list]:
    """`{head name: [[confidence, [body names]], …]}` (inverses named `<r>_inv`)."""
    return {kg.relation_name(h): [[round(float(c), 6), [kg.relation_name(b) for b in body]]
                                  for c, body in rules] for h, rules in sorted(self.rules.items())}

  def save(self, path: str, kg: kg_lib.KnowledgeGraph) -> None:
    """Writes `rules.json` atomically."""
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(self.to_json(kg), f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str, kg: kg_lib.KnowledgeGraph) -> 'RuleSet':
    with open(path, encoding='utf-8') as f:
      named = json.load(f)
    return cls({kg.relation_id(h): [(float(c), tuple(kg.relation_id(b) for b in body))
                                    for c, body in rules] for h, rules in named.items()})


# ==================================================================== mining
def _body_codes(bodies: np.ndarray, base: int) -> np.ndarray:
  codes = np.zeros(len(bodies), np.int64)
  for i in range(bodies.shape[1]):
    codes = codes * base + bodies[:, i]
  return codes


def _reverse_bodies(g: TrainGraph, bodies: np.ndarray) -> np.ndarray:
  return g.inverse(bodies[:, ::-1])


def _length1_scores(g: TrainGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Exact length-1 rules: `(bodies [2R, 1], support [2R body, 2R head], predicted [2R])`."""
  r2 = g.num_relations2
  starts = np.flatnonzero(np.r_[True, g.pair_keys[1:] != g.pair_keys[:-1]])
  sizes = np.diff(np.r_[starts, len(g.pair_keys)])
  group_start = np.repeat(starts, sizes)  # [m] start of each edge's (X, Y) group
  group_size = np.repeat(sizes, sizes)
  i, offset = explode(np.zeros(len(group_size), np.int64), group_size)
  j = group_start[i] + offset
  keep = i != j
  body, head = g.pair_rels[j[keep]], g.pair_rels[i[keep]]
  support = np.bincount(body * r2 + head, minlength=r2 * r2).reshape(r2, r2).astype(np.float64)
  predicted = np.diff(g.rel_indptr).astype(np.float64)
  return np.arange(r2)[:, None], support, predicted


def _walk_candidates(g: TrainGraph, length: int, num_walks: int, per_head: int,
                     rng: np.random.Generator) -> np.ndarray:
  """Bodies `[b, length]` closed by sampled walks, each head's `per_head` most frequent ones."""
  counts = np.diff(g.rel_indptr)
  heads = np.flatnonzero(counts)
  if not len(heads) or num_walks <= 0:
    return np.zeros((0, length), np.int64)
  h = heads[rng.integers(len(heads), size=num_walks)]
  edge = g.rel_order[g.rel_indptr[h] + (rng.random(num_walks) * counts[h]).astype(np.int64)]
  x, y = g.src[edge], g.dst[edge]
  visited, rels, cur = [x], [], x
  ok = np.ones(num_walks, bool)
  for _ in range(length - 1):
    lo, hi = g.src_indptr[cur], g.src_indptr[cur + 1]
    pick = lo + (rng.random(num_walks) * (hi - lo)).astype(np.int64)
    nxt = g.dst[pick]
    ok &= nxt != y
    for v in visited:
      ok &= nxt != v
    rels.append(g.rel[pick])
    visited.append(nxt)
    cur = nxt
  owner, last = g.relations_between(cur[ok], y[ok])
  walk_rels = np.stack(rels, 1)[ok][owner]  # [c, length-1]
  bodies = np.concatenate([walk_rels, last[:, None]], 1)
  r2 = g.num_relations2
  key = h[ok][owner] * r2 ** length + _body_codes(bodies, r2)
  uniq, first, freq = np.unique(key, return_index=True, return_counts=True)
  head_of = uniq // r2 ** length
  order = np.lexsort((-freq, head_of))  # by head, most frequent first
  head_sorted = head_of[order]
  rank = np.arange(len(order)) - np.searchsorted(head_sorted, head_sorted)
  return bodies[first[order[rank < per_head]]]


def _canonical_bodies(g: TrainGraph, bodies: np.ndarray) -> np.ndarray:
  """Distinct bodies, each represented once with its reverse (the smaller code of the two)."""
  if not len(bodies):
    return bodies
  rev = _reverse_bodies(g, bodies)
  r2 = g.num_relations2
  pick_rev = _body_codes(rev, r2) < _body_codes(bodies, r2)
  canon = np.where(pick_rev[:, None], rev, bodies)
  return np.unique(canon, axis=0)


def _use_dense(g: TrainGraph, cfg) -> bool:
  return (g.num_entities <= cfg.dense_max_entities
          and g.num_relations2 * g.num_entities ** 2 <= DENSE_LIMIT)


class _DenseGraph:
  """0/1 adjacency tensors of a small graph in the layouts the dense scorer multiplies."""

  def __init__(self, g: TrainGraph):
    e, r2 = g.num_entities, g.num_relations2
    self.adj = np.zeros((r2, e, e), np.float32)  # [2R, X, Y]
    self.adj[g.rel, g.src, g.dst] = 1.0
    self.by_src = np.ascontiguousarray(self.adj.transpose(1, 0, 2))  # [X, 2R, Y]
    self.flat_t = np.ascontiguousarray(self.adj.reshape(r2, e * e).T)  # [X*Y, 2R]


def _score_dense(g: TrainGraph, d: _DenseGraph, prefix: Sequence[int], lasts: np.ndarray):
  """Exact scores of bodies `prefix + (c,)` for c in `lasts`: `(support [nc, 2R], predicted [nc])`."""
  e, nc = g.num_entities, len(lasts)
  m = d.adj[prefix[0]]
  for r in prefix[1:]:
    m = m @ d.adj[r]  # [X, E] path counts
  a_last = d.by_src[:, lasts, :]  # [E, nc, Y]
  total = (m @ a_last.reshape(e, nc * e)).reshape(e, nc, e)  # [X, nc, Y] one GEMM
  if len(prefix) == 2:  # remove groundings with A1 = Y or A2 = X (inclusion–exclusion)
    a, b = d.adj[prefix[0]], d.adj[prefix[1]]
    d_bc = np.einsum('yb,bcy->cy', b, a_last)  # [nc, Y] #B: y -b-> B -c-> y
    d_ab = np.einsum('xa,ax->x', a, b)  # [X] #A: x -a-> A -b-> x
    total -= a[:, None, :] * d_bc[None] + d_ab[:, None, None] * a_last
    total += (a * b.T)[:, None, :] * a_last
  idx = np.arange(e)
  total[idx, :, idx] = 0.0
  pred = (total > 0.5).astype(np.float32).transpose(1, 0, 2).reshape(nc, e * e)  # [nc, X*Y]
  support = pred @ d.flat_t  # [nc, 2R]
  return support.astype(np.float64), pred.sum(1).astype(np.float64)


def _score_sparse(g: TrainGraph, prefix: Sequence[int], lasts: np.ndarray, rng: np.random.Generator,
                  sample_rows: int, max_pairs: int):
  """Scores of bodies `prefix + (c,)` on sampled start rows: `(support [nc, 2R], predicted [nc])`.

  Counts are those of the rows actually scored (confidence is their ratio); every step is a
  scipy.sparse product or element-wise operation on `[S, E]` matrices.
  """
  rows = g.start_rows(prefix[0])
  if not len(rows):
    return np.zeros((len(lasts), g.num_relations2)), np.zeros(len(lasts))
  if len(rows) > sample_rows:
    rows = rng.permutation(rows)[:sample_rows]
  m = g.adjacency(prefix[0])[rows]  # [S, E] path counts
  for r in prefix[1:]:
    m = m @ g.adjacency(r)
  fan = np.sum([g.out_degree(int(c)) for c in lasts], axis=0)  # [E]
  bound = (m != 0).astype(np.float32) @ fan  # [S] >= pairs per row
  used = max(1, int(np.searchsorted(np.cumsum(bound), max_pairs, 'right')))
  rows, m = rows[:used], m[:used]
  e = g.num_entities
  diagonal = sp.csr_matrix((np.ones(used, np.float32), (np.arange(used), rows)), shape=(used, e))
  masks = [w[rows] for w in g.relation_bitmasks()]  # [S, E] int64 bit h%62 of word h//62: X -h-> Y
  if len(prefix) == 2:
    a, b = prefix
    a_rows = g.adjacency(a)[rows]
    d_ab = g.two_cycles(a, b)[rows]  # [S] #A: x -a-> A -b-> x
    aba = a_rows.multiply(g.adjacency(int(g.inverse(b)))[rows])  # [S, E] x -a-> y -b-> x
  support = np.zeros((len(lasts), g.num_relations2))
  pred = np.zeros(len(lasts))
  for ci, c in enumerate(lasts.tolist()):
    paths = m @ g.adjacency(c)  # [S, E] body path counts X -> Y
    if len(prefix) == 2:  # remove groundings with A1 = Y or A2 = X (inclusion–exclusion)
      c_rows = g.adjacency(c)[rows]
      d_bc = g.two_cycles(b, c)  # [E] #B: y -b-> B -c-> y
      paths = (paths - a_rows.multiply(d_bc[None, :]) - c_rows.multiply(d_ab[:, None])
               + aba.multiply(c_rows))
    hit = (sp.csr_matrix(paths) > 0.5).astype(np.float32)
    hit = (hit - hit.multiply(diagonal)).tocsr()  # X != Y
    hit.eliminate_zeros()
    pred[ci] = hit.nnz
    hit = hit.astype(np.int64)
    for w, mask in enumerate(masks):
      bits = hit.multiply(mask).tocsr().data.astype('<i8')  # bitmask of each supported pair
      counts = np.unpackbits(bits.view(np.uint8).reshape(-1, 8), axis=1, bitorder='little').sum(0)
      hi = min(62 * (w + 1), g.num_relations2)
      support[ci, 62 * w:hi] = counts[:hi - 62 * w]
  return support, pred


def _score_bodies(g: TrainGraph, bodies: np.ndarray, cfg, rng: np.random.Generator):
  """`(support [b, 2R], predicted [b])` of canonical bodies, grouped by prefix."""
  support = np.zeros((len(bodies), g.num_relations2))
  pred = np.zeros(len(bodies))
  dense = _DenseGraph(g) if _use_dense(g, cfg) else None
  groups = collections.defaultdict(list)
  for i, body in enumerate(bodies.tolist()):
    groups[tuple(body[:-1])].append(i)
  progress = tqdm.tqdm(sorted(groups.items()), desc=f'scoring {bodies.shape[1]}-hop bodies',
                       unit='prefixes', leave=False, mininterval=2.0)
  # The dense scorer runs thousands of small GEMMs; on a busy 2-core box OpenBLAS's spinning
  # worker threads made Kinship mining 10x slower (benchmarks/RESULTS.md): one BLAS thread here.
  with threadpoolctl.threadpool_limits(limits=1, user_api='blas'):
    for prefix, idx in progress:
      idx = np.asarray(idx)
      lasts = bodies[idx, -1]
      for start in range(0, len(idx), 64):  # bounds the dense [E, nc, E] temporaries
        chunk = slice(start, start + 64)
        if dense is not None:
          s, p = _score_dense(g, dense, prefix, lasts[chunk])
        else:
          s, p = _score_sparse(g, prefix, lasts[chunk], rng, cfg.sample_rows,
                               PAIRS_PER_SAMPLED_ROW * cfg.sample_rows)
        support[idx[chunk]], pred[idx[chunk]] = s, p
  return support, pred


def _collect(g, bodies, support, pred, cfg, found):
  """Adds the rules of scored bodies (and of their reverses, for the inverse heads) to `found`."""
  with np.errstate(invalid='ignore', divide='ignore'):
    conf = np.where(pred[:, None] > 0, support / pred[:, None], 0.0)  # [b, 2R]
  ok = (support >= cfg.min_support) & (conf >= cfg.min_confidence)
  if bodies.shape[1] == 1:
    ok[np.arange(len(bodies)), bodies[:, 0]] = False  # r ← r is no rule
  rev = _reverse_bodies(g, bodies)
  for bi, h in zip(*np.nonzero(ok)):
    for head, body in ((int(h), tuple(bodies[bi].tolist())),
                       (int(g.inverse(h)), tuple(rev[bi].tolist()))):
      found.setdefault((head, body), (float(conf[bi, h]), float(support[bi, h])))


def mine_rules(kg: kg_lib.KnowledgeGraph, config: Any, graph: TrainGraph | None = None) -> RuleSet:
  """Mines closed path rules of length 1..`config.rules.max_length` from `kg.train`.

  Args:
    kg: the knowledge graph (only `train` is read).
    config: the project config (`config.rules.*`, `config.seed`).
    graph: a prebuilt `TrainGraph` of `kg.train` (built when None).

  Returns:
    A `RuleSet` whose `stats` count rules per length, candidate bodies and seconds.
  """
  cfg = config.rules
  if not 1 <= cfg.max_length <= 3:
    raise ValueError(f'config.rules.max_length must be 1, 2 or 3, got {cfg.max_length}')
  start = time.time()
  g = graph or TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  rng = np.random.default_rng([int(config.seed), 41])
  found: dict[tuple[int, tuple[int, ...]], tuple[float, float]] = {}
  bodies, support, pred = _length1_scores(g)
  _collect(g, bodies, support, pred, cfg, found)
  scored = {1: len(bodies)}
  for length in range(2, cfg.max_length + 1):
    cand = _walk_candidates(g, length, int(cfg.num_walks), int(cfg.candidates_per_head), rng)
    bodies = _canonical_bodies(g, cand)
    scored[length] = len(bodies)
    if len(bodies):
      support, pred = _score_bodies(g, bodies, cfg, rng)
      _collect(g, bodies, support, pred, cfg, found)
  by_head: dict[int, list] = collections.defaultdict(list)
  for (head, body), (conf, supp) in found.items():
    by_head[head].append((-conf, -supp, len(body), body))
  rules = {h: [(-c, b) for c, _, _, b in sorted(v)[:cfg.max_rules_per_head]]
           for h, v in sorted(by_head.items())}
  per_length = collections.Counter(len(b) for v in rules.values() for _, b in v)
  stats = {'rules': sum(per_length.values()), 'heads_with_rules': len(rules),
           'rules_per_length': {str(n): per_length.get(n, 0) for n in range(1, cfg.max_length + 1)},
           'bodies_scored': {str(n): int(v) for n, v in scored.items()},
           'scoring': 'dense' if _use_dense(g, cfg) else 'sparse_sampled',
           'self_loops_left_out': g.num_self_loops, 'mining_seconds': round(time.time() - start, 2)}
  logging.info('rules: %d rules over %d heads (%s) in %.1f s', stats['rules'], len(rules),
               stats['rules_per_length'], stats['mining_seconds'])
  return RuleSet(rules, stats)
