"""The train graph with inverses as sorted edge arrays, and the vectorised look-ups that rule mining
(`data_prep.rules`), path grounding (`data_prep.grounding`) and random walks
(`data_prep.trajectories`) share.

Example:
  >>> g = TrainGraph(kg.train, kg.num_entities, kg.num_relations)        # doctest: +SKIP
  >>> g.has_edge(np.array([0]), 1, np.array([5]))                         # doctest: +SKIP
  array([ True])
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

# Largest (entity, relation) table kept as a direct CSR index of the train graph (int64 entries).
CSR_INDEX_LIMIT = 1 << 24


def explode(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """For ranges `[lo_i, hi_i)`: `(owner i, index)` of every element, in order."""
  counts = (hi - lo).astype(np.int64)
  owner = np.repeat(np.arange(len(lo)), counts)
  starts = np.cumsum(counts) - counts
  index = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts - lo, counts)
  return owner, index


class TrainGraph:
  """The train graph with inverses (deduplicated, self-loops dropped) and vectorised look-ups.

  Attributes:
    num_entities: E.  num_relations2: 2R (relation ids with inverses).
    src, rel, dst: `[m]` edges sorted by (src, rel, dst).
  """

  def __init__(self, triples: np.ndarray, num_entities: int, num_relations: int):
    triples = np.asarray(triples, np.int64).reshape(-1, 3)
    self.num_entities, self.num_relations2 = int(num_entities), 2 * int(num_relations)
    e, r2 = self.num_entities, self.num_relations2
    both = np.concatenate([triples, np.stack([triples[:, 2], triples[:, 1] + num_relations,
                                              triples[:, 0]], 1)])
    loops = both[:, 0] == both[:, 2]
    self.num_self_loops = int(loops.sum()) // 2
    if self.num_self_loops:
      logging.warning('rules: %d train triples are self-loops (h == t); they are left out of rule '
                      'mining and grounding', self.num_self_loops)
    both = both[~loops]
    self.key3 = np.unique((both[:, 0] * r2 + both[:, 1]) * e + both[:, 2])  # [m] sorted
    self.src_rel = self.key3 // e  # [m] src * 2R + rel, sorted
    self.src, self.rel, self.dst = self.src_rel // r2, self.src_rel % r2, self.key3 % e
    self.src_indptr = np.searchsorted(self.src, np.arange(e + 1))
    pair = self.src * e + self.dst
    order = np.argsort(pair, kind='stable')
    self.pair_keys, self.pair_rels = pair[order], self.rel[order]  # sorted by (X, Y)
    self.rel_order = np.argsort(self.rel, kind='stable')
    self.rel_indptr = np.searchsorted(self.rel[self.rel_order], np.arange(r2 + 1))
    self._adj: dict[int, sp.csr_matrix] = {}
    self._bitmasks: list[sp.csr_matrix] | None = None
    self._two_cycles: dict[tuple[int, int], np.ndarray] = {}
    self._out_degree: dict[int, np.ndarray] = {}
    # Direct (src, rel) -> edge range index when it fits in CSR_INDEX_LIMIT entries, else searchsorted.
    self._src_rel_indptr = None
    if e * r2 + 1 <= CSR_INDEX_LIMIT:
      self._src_rel_indptr = np.searchsorted(self.src_rel, np.arange(e * r2 + 1)).astype(np.int64)

  @property
  def num_edges(self) -> int:
    return len(self.key3)

  def inverse(self, rel):
    return (np.asarray(rel) + self.num_relations2 // 2) % self.num_relations2

  def neighbour_range(self, nodes, rels) -> tuple[np.ndarray, np.ndarray]:
    """`[lo, hi)` positions of the `rels`-neighbours of `nodes` in `dst` (broadcast)."""
    key = np.asarray(nodes, np.int64) * self.num_relations2 + np.asarray(rels, np.int64)
    if self._src_rel_indptr is not None:
      return self._src_rel_indptr[key], self._src_rel_indptr[key + 1]
    return (np.searchsorted(self.src_rel, key, 'left'), np.searchsorted(self.src_rel, key, 'right'))

  def degree(self, nodes, rels) -> np.ndarray:
    lo, hi = self.neighbour_range(nodes, rels)
    return hi - lo

  def has_edge(self, src, rel, dst) -> np.ndarray:
    key = (np.asarray(src, np.int64) * self.num_relations2 + rel) * self.num_entities + dst
    pos = np.minimum(np.searchsorted(self.key3, key), max(len(self.key3) - 1, 0))
    return (self.key3[pos] == key) if len(self.key3) else np.zeros(np.shape(key), bool)

  def relations_between(self, src, dst) -> tuple[np.ndarray, np.ndarray]:
    """Every relation linking `src[i] → dst[i]`: `(i, relation)` pairs."""
    key = np.asarray(src, np.int64) * self.num_entities + dst
    owner, index = explode(np.searchsorted(self.pair_keys, key, 'left'),
                            np.searchsorted(self.pair_keys, key, 'right'))
    return owner, self.pair_rels[index]

  def expand(self, nodes, rels, cap: int | None, rng: np.random.Generator | None):
    """Neighbours of `nodes[i]` via `rels[i]`: `(i, neighbour)`; ≤ `cap` sampled ones per node.

    Above `cap` the neighbours are drawn with replacement (callers deduplicate their results).
    """
    lo, hi = self.neighbour_range(nodes, rels)
    deg = hi - lo
    take = deg if cap is None else np.minimum(deg, cap)
    owner, index = explode(lo, lo + take)
    if cap is not None and np.any(deg > cap):
      big = deg[owner] > cap
      index[big] = lo[owner[big]] + (rng.random(int(big.sum())) * deg[owner[big]]).astype(np.int64)
    return owner, self.dst[index]

  def adjacency(self, rel: int) -> sp.csr_matrix:
    """`[E, E]` float32 0/1 matrix of relation `rel` (cached)."""
    if rel not in self._adj:
      pos = self.rel_order[self.rel_indptr[rel]:self.rel_indptr[rel + 1]]
      e = self.num_entities
      self._adj[rel] = sp.csr_matrix((np.ones(len(pos), np.float32), (self.src[pos], self.dst[pos])),
                                     shape=(e, e))
    return self._adj[rel]

  def relation_bitmasks(self) -> list[sp.csr_matrix]:
    """`[E, E]` int64 matrices; bit `h % 62` of word `h // 62` is set where `X -h-> Y` (cached)."""
    if self._bitmasks is None:
      self._bitmasks = []
      e = self.num_entities
      for w in range(0, self.num_relations2, 62):
        sel = (self.rel >= w) & (self.rel < w + 62)
        bits = np.left_shift(np.int64(1), (self.rel[sel] - w).astype(np.int64))
        mat = sp.coo_matrix((bits, (self.src[sel], self.dst[sel])), shape=(e, e)).tocsr()  # sums
        self._bitmasks.append(mat)  # distinct edges → distinct bits, so the sum is the OR
    return self._bitmasks

  def two_cycles(self, r1: int, r2: int) -> np.ndarray:
    """`[E]` float: `#B` with `y -r1-> B -r2-> y` for every entity y (cached)."""
    if (r1, r2) not in self._two_cycles:
      both = self.adjacency(r1).multiply(self.adjacency(int(self.inverse(r2))))
      self._two_cycles[(r1, r2)] = np.asarray(both.sum(1), np.float64).ravel()
    return self._two_cycles[(r1, r2)]

  def out_degree(self, rel: int) -> np.ndarray:
    """`[E]` float32 number of `rel` out-edges of every entity (cached)."""
    if rel not in self._out_degree:
      pos = self.rel_order[self.rel_indptr[rel]:self.rel_indptr[rel + 1]]
      degree = np.bincount(self.src[pos], minlength=self.num_entities)
      self._out_degree[rel] = degree.astype(np.float32)
    return self._out_degree[rel]

  def start_rows(self, rel: int) -> np.ndarray:
    """Entities with at least one `rel` out-edge."""
    return np.flatnonzero(self.out_degree(rel) > 0)
