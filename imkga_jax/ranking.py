"""Filtered ranking and its metrics, in both directions: one ranker for IMKGA-SM and the baselines.

A model is ranked through a score function `score_fn(queries [b, 3]) -> scores [b, E]` (rows of
(query head, query relation in [0, 2R), answer); -inf = the entity is not reached). For a query
(h, r, t) every OTHER known answer of (h, r) (train + valid + test, both directions:
`kg.filter_csr`) is removed before ranking, and

  rank = 1 + #{score > s_t} + (#{score == s_t} - 1) / 2        (realistic / mean tie handling)

over the remaining entities. An unreached target therefore gets the mean rank among all unreached
entities: below every reached one (SQUIRE instead gives it reciprocal rank 0; ours is the expected
rank of a random order of the unreached). Head prediction answers the inverse query (t, r⁻¹, ?) with h.
`reached` = share of queries whose target got a finite score. Opt-in ranking priors
(`imkga_jax.priors`) reorder the scores the same way for every model before ranking.

Example:
  >>> scores = np.array([[0.0, 2.0, 1.0, -np.inf]])
  >>> filtered_ranks(scores, np.array([2]), np.array([0, 1]), np.array([1]))  # entity 1 filtered
  array([1.])
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from tqdm import tqdm

from imkga_jax import kg as kg_lib
from imkga_jax import priors as priors_lib

METRIC_KEYS = ('mrr', 'hits@1', 'hits@3', 'hits@10', 'reached')
DIRECTIONS = ('tail', 'head')
# `(queries [b, 3]) -> scores [b, E]`, or `(scores, anything)`: the anything goes to `on_batch`.
# `scores` may also be `{variant: [b, E]}`: several scorings of the same queries ranked side by side.
ScoreFn = Callable[[np.ndarray], Any]
# `(direction, queries [n, 3], scores [n, E] after the priors, ranks [n], extra)`; with variants,
# scores and ranks are `{variant: ...}`.
OnBatch = Callable[[str, np.ndarray, Any, Any, Any], None]


def filtered_ranks(scores: np.ndarray, targets: np.ndarray, indptr: np.ndarray,
                   known: np.ndarray) -> np.ndarray:
  """Filtered, tie-averaged ranks (module docstring).

  Args:
    scores: `[q, E]` entity scores (-inf = unreached).
    targets: `[q]` entity id of each query's answer.
    indptr, known: CSR lists of every known answer per query (`kg.filter_csr`); the target may be
      among them.

  Returns:
    `[q]` float64 ranks (x.5 where ties split).
  """
  scores = np.asarray(scores)
  q = scores.shape[0]
  keep = np.ones(scores.shape, bool)  # [q, E]
  keep[np.repeat(np.arange(q), np.diff(indptr)), known] = False
  keep[np.arange(q), targets] = True
  target_score = scores[np.arange(q), targets][:, None]  # [q, 1]
  higher = np.sum(keep & (scores > target_score), axis=1)  # [q]
  equal = np.sum(keep & (scores == target_score), axis=1)  # [q], the target included
  return 1.0 + higher + (equal - 1) / 2.0


def ranking_metrics(ranks: np.ndarray, reached: np.ndarray) -> dict[str, float]:
  """MRR, Hits@1/3/10, reached share and query count of `[q]` ranks."""
  ranks = np.asarray(ranks, np.float64)
  if not len(ranks):
    return {**{k: float('nan') for k in METRIC_KEYS}, 'queries': 0}
  out = {'mrr': float(np.mean(1.0 / ranks))}
  out.update({f'hits@{k}': float(np.mean(ranks <= k)) for k in (1, 3, 10)})
  out.update(reached=float(np.mean(reached)), queries=int(len(ranks)))
  return out


def direction_queries(kg: kg_lib.KnowledgeGraph, split: str, max_queries: int = -1
                      ) -> dict[str, np.ndarray]:
  """`{'tail': [q, 3], 'head': [q, 3]}` rows (query head, query relation in [0, 2R), answer)."""
  triples = kg.split(split)
  if 0 <= max_queries < len(triples):
    # A fixed, seeded subset spread over the whole split (splits may be ordered by relation).
    keep = np.sort(np.random.default_rng(0).choice(len(triples), max_queries, replace=False))
    triples = triples[keep]
  h, r, t = triples[:, 0], triples[:, 1], triples[:, 2]
  return {'tail': np.stack([h, r, t], axis=1).astype(np.int32),
          'head': np.stack([t, kg.space.inverse_relation(r), h], axis=1).astype(np.int32)}


def rank_split(score_fn: ScoreFn, kg: kg_lib.KnowledgeGraph, split: str, *, batch_size: int,
               max_queries: int = -1, priors: priors_lib.Priors | None = None,
               on_batch: OnBatch | None = None, desc: str = '') -> dict[str, dict[str, np.ndarray]]:
  """Filtered ranks of the queries of `split` in both directions.

  Queries go to `score_fn` in batches of exactly `batch_size` rows (the last one padded with copies
  of its first row), so a jitted scorer compiles once.

  Args:
    score_fn: the model (module docstring).
    kg: the graph (queries, filters).
    split: 'valid' or 'test'.
    batch_size: rows per call.
    max_queries: rank a seeded subset of this many triples per direction (-1 = all).
    priors: ranking priors applied to the scores before ranking (None: the standard protocol).
    on_batch: called after each batch (explanations).
    desc: progress-bar label.

  Returns:
    `{'tail'|'head': {'ranks' [n] float, 'reached' [n] bool, 'relations' [n] int}}`, or
    `{variant: that}` when `score_fn` returns a dict of scorings.
  """
  out: dict[Any, dict[str, dict[str, np.ndarray]]] = {}
  single = None
  for direction, queries in direction_queries(kg, split, max_queries).items():
    indptr, known = kg.filter_csr(queries[:, :2])
    ranks: dict[Any, np.ndarray] = {}
    reached: dict[Any, np.ndarray] = {}
    with tqdm(total=len(queries), desc=f'{desc or split}/{direction}', unit='queries',
              leave=False) as bar:
      for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        n = len(batch)
        padded = np.concatenate([batch, np.repeat(batch[:1], batch_size - n, axis=0)])
        got = score_fn(padded)
        scores, extra = got if isinstance(got, tuple) else (got, None)
        single = not isinstance(scores, dict)
        variants = {None: scores} if single else scores
        lo, hi = indptr[start], indptr[start + n]
        batch_scores, batch_ranks = {}, {}
        for key, value in variants.items():
          value = np.asarray(value)[:n]
          if priors is not None:
            value = priors.apply(value, batch[:, 1])
          rank = filtered_ranks(value, batch[:, 2], indptr[start:start + n + 1] - lo, known[lo:hi])
          ranks.setdefault(key, np.zeros(len(queries)))[start:start + n] = rank
          reached.setdefault(key, np.zeros(len(queries), bool))[start:start + n] = np.isfinite(
              value[np.arange(n), batch[:, 2]])
          batch_scores[key], batch_ranks[key] = value, rank
        if on_batch is not None:
          if single:
            on_batch(direction, batch, batch_scores[None], batch_ranks[None], extra)
          else:
            on_batch(direction, batch, batch_scores, batch_ranks, extra)
        bar.update(n)
    for key in ranks:
      out.setdefault(key, {})[direction] = {'ranks': ranks[key], 'reached': reached[key],
                                            'relations': queries[:, 1]}
  if single is None:  # not a single query
    empty = {'ranks': np.zeros(0), 'reached': np.zeros(0, bool), 'relations': np.zeros(0, np.int32)}
    return {d: dict(empty) for d in DIRECTIONS}
  return out[None] if single else out


def summarize(kg: kg_lib.KnowledgeGraph, ranked: Mapping[str, Mapping[str, np.ndarray]]
              ) -> dict[str, Any]:
  """`{'tail'|'head'|'both': ranking_metrics, 'by_relation': metrics_by_relation}` of `rank_split`."""
  metrics = {d: ranking_metrics(x['ranks'], x['reached']) for d, x in ranked.items()}
  metrics['both'] = ranking_metrics(np.concatenate([x['ranks'] for x in ranked.values()]),
                                    np.concatenate([x['reached'] for x in ranked.values()]))
  metrics['by_relation'] = metrics_by_relation(kg, ranked)
  return metrics


def metrics_by_relation(kg: kg_lib.KnowledgeGraph, ranked: Mapping[str, Mapping[str, np.ndarray]]
                        ) -> dict[str, dict[str, dict[str, float]]]:
  """`{relation name: {'tail'|'head'|'both': ranking_metrics}}`, queries grouped by base relation
  (a head query asks `(t, r + R, ?)` and counts for `r`)."""
  parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
  for direction, x in ranked.items():
    base = np.asarray(x['relations']) % kg.num_relations
    for rid in np.unique(base):
      rows = base == rid
      parts.setdefault(kg.relations[rid], {})[direction] = (x['ranks'][rows], x['reached'][rows])
  out = {}
  for name, by_direction in sorted(parts.items()):
    out[name] = {d: ranking_metrics(*v) for d, v in by_direction.items()}
    out[name]['both'] = ranking_metrics(np.concatenate([v[0] for v in by_direction.values()]),
                                        np.concatenate([v[1] for v in by_direction.values()]))
  return out


def format_metrics(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
  """A plain-text table of `{split: {direction: metrics}}` (other keys are left out)."""
  lines = [f'{"split":<6} {"dir":<5} ' + ' '.join(f'{k:>8}' for k in METRIC_KEYS) + '  queries']
  for split, by_direction in metrics.items():
    for direction in (*DIRECTIONS, 'both'):
      if direction in by_direction:
        m = by_direction[direction]
        lines.append(f'{split:<6} {direction:<5} ' + ' '.join(f'{m[k]:8.4f}' for k in METRIC_KEYS)
                     + f'  {m["queries"]}')
  return '\n'.join(lines)
