"""Answers with their paths, in names: the explanations of IMKGA-SM, and whether they hold.

Every answer the decoder ranks comes with the best path that reached it (`decode.DecodeResult`):
`r1 e1 … rn answer` (or the direct form, `answer` alone). `answers` lists the best of one query,
`PathStats` counts over a split how many top-1 answers come with a path of at least one hop and how
many of those paths are *faithful* (every edge `e_i --r_i--> e_{i+1}` exists in the train graph, with
inverses), `format_predictions` / `predictions_json` print one query's answers as a table or as JSON
(`--mode=predict`, `--format`), and `explain_png.draw` makes a picture of them (`--explain_png`).

Example:
  >>> rows = answers(kg, result.score[0], result.path[0], limit=3)       # doctest: +SKIP
  >>> rows[0]                                                             # doctest: +SKIP
  {'entity': 'region_3', 'score': -0.21, 'path': ['sold_by', 'shop_7', 'located_in', 'region_3'], 'hops': 2}
"""
from __future__ import annotations

import dataclasses
import json
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np

from imkga_jax import files
from imkga_jax import kg as kg_lib
from imkga_jax import ranking


def path_tokens(tokens: Sequence[int]) -> list[int]:
  """The tokens of a path up to (without) its `<eos>`; [] for an empty (all <pad>) path."""
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(kg_lib.EOS)] if kg_lib.EOS in tokens else []


def support(score: np.ndarray, best: np.ndarray) -> np.ndarray:
  """How much of an answer its explanation carries: exp(best path score − answer score), in [0, 1]
  (with `decode.aggregation='sum'` and no length normalisation, the share of the answer's
  probability that this one path holds); 0 where no path of a hop reached it."""
  with np.errstate(invalid='ignore', over='ignore'):
    out = np.exp(np.minimum(np.asarray(best, np.float64) - score, 0.0))
  return np.where(np.isfinite(best) & np.isfinite(score), out, 0.0)


def answers(kg: kg_lib.KnowledgeGraph, score: np.ndarray, path: np.ndarray, limit: int,
            carried: np.ndarray | None = None) -> list[dict[str, Any]]:
  """The best `limit` answers of one query, best first: `{entity, score, path (names), hops}` and,
  with `carried` (`support`), the share of the answer its path carries.

  Args:
    kg: names the tokens.
    score: `[E]` the query's ranking scores (priors applied, if any); -inf = not reached.
    path: `[E, L]` each entity's best path of at least one hop (`DecodeResult.path`); all <pad>
      for an entity reached by the direct form only, whose path is then the entity alone.
    limit: answers to return (only reached entities are listed).
    carried: `[E]` `support` of each entity's path, or None.
  """
  score = np.asarray(score)
  out = []
  for e in np.argsort(-score, kind='stable')[:limit]:
    if not np.isfinite(score[e]):
      break
    tokens = path_tokens(path[e]) or [kg.space.entity_token(int(e))]
    row = {'entity': kg.entities[e], 'score': float(score[e]),
           'path': [kg.token_name(t) for t in tokens],
           'hops': sum(1 for t in tokens if kg.space.is_relation(t))}
    if carried is not None:
      row['support'] = float(carried[e])
    out.append(row)
  return out


class TrainEdges:
  """Membership test for edges of the train graph with inverses."""

  def __init__(self, kg: kg_lib.KnowledgeGraph):
    self._size = (2 * kg.num_relations, kg.num_entities)
    self._codes = np.unique(self._encode(kg.with_inverses('train')))

  def _encode(self, triples: np.ndarray) -> np.ndarray:
    triples = np.asarray(triples, np.int64).reshape(-1, 3)
    return (triples[:, 0] * self._size[0] + triples[:, 1]) * self._size[1] + triples[:, 2]

  def contains(self, triples: np.ndarray) -> np.ndarray:
    """`[n] bool` for `[n, 3]` (head, relation, tail) id triples."""
    codes = self._encode(triples)
    at = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
    return self._codes[at] == codes if len(self._codes) else np.zeros(len(codes), bool)

  def faithful(self, head: int, tokens: Sequence[int], space: kg_lib.TokenSpace) -> bool:
    """Whether the path `tokens` (`r1 e1 … <eos>`, as in `DecodeResult.path`) from `head` walks
    only over train edges."""
    tokens = path_tokens(tokens)
    if len(tokens) < 2 or len(tokens) % 2:
      return False
    relations = np.asarray([space.token_to_relation(t) for t in tokens[0::2]], np.int64)
    entities = np.asarray([space.token_to_entity(t) for t in tokens[1::2]], np.int64)
    starts = np.concatenate([[head], entities[:-1]])
    return bool(np.all(self.contains(np.stack([starts, relations, entities], axis=1))))


@dataclasses.dataclass
class PathStats:
  """Counts over top-1 answers: with a path of >= 1 hop, and of those, faithful ones."""
  queries: int = 0
  with_path: int = 0
  faithful: int = 0

  def add(self, edges: TrainEdges, space: kg_lib.TokenSpace, heads: np.ndarray,
          scores: np.ndarray, paths: np.ndarray) -> None:
    """Counts the top-1 answers of queries with heads `[n]`, scores `[n, E]`, paths `[n, E, L]`."""
    for head, score, path in zip(heads, scores, paths):
      if not np.isfinite(score).any():
        continue
      self.queries += 1
      best = path[int(np.argmax(score))]
      if len(path_tokens(best)) >= 2:
        self.with_path += 1
        self.faithful += edges.faithful(int(head), best, space)

  def as_dict(self) -> dict[str, float]:
    return {'top1_queries': self.queries,
            'path_share': self.with_path / max(self.queries, 1),
            'faithful_share': self.faithful / max(self.with_path, 1)}


def explanation_row(kg: kg_lib.KnowledgeGraph, split: str, direction: str, query: Sequence[int],
                    rank: float, answer_rows: list[dict[str, Any]]) -> dict[str, Any]:
  """One line of explanations.jsonl."""
  h, r, t = (int(x) for x in query)
  return {'split': split, 'direction': direction,
          'query': {'head': kg.entities[h], 'relation': kg.relation_name(r),
                    'answer': kg.entities[t]},
          'rank': float(rank), 'answers': answer_rows}


def write_jsonl(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  """Writes one JSON object per line, atomically."""
  files.atomic_write_text(path, ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows))


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def path_text(head: str, path: Sequence[str]) -> str:
  """A path in names read from the head: `head -[sold_by]-> shop_7 -[located_in]-> region_3`; the
  direct form (the answer alone, no hop) reads `head => answer (direct, no path)`."""
  if len(path) < 2:
    return f'{head} => {path[-1] if path else "?"} (direct, no path)'
  steps = [f'-[{path[i]}]-> {path[i + 1]}' for i in range(0, len(path) - 1, 2)]
  return ' '.join([head] + steps)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 right: Sequence[bool] = ()) -> str:
  """A plain-text table: a header, a rule, one line per row, columns as wide as their widest cell;
  `right[i]` right-aligns column i (numbers)."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  aligned = [i < len(right) and right[i] for i in range(len(headers))]

  def line(row):
    return '  '.join(c.rjust(w) if a else c.ljust(w)
                     for c, w, a in zip(row, widths, aligned)).rstrip()
  return '\n'.join([line(cells[0]), '  '.join('-' * w for w in widths)]
                   + [line(r) for r in cells[1:]])


def format_predictions(query: str, rows: Sequence[Mapping[str, Any]]) -> str:
  """The answers of one query as a readable table: rank, answer, score, support (the share of the
  answer's score its path carries), known (a true triple of some split) and the path in names."""
  head = query.split('|')[0].strip()
  relation = query.split('|')[-1].strip()
  table = format_table(
      ('rank', 'answer', 'score', 'support', 'known', 'path'),
      [(a['rank'], a['entity'], f'{a["score"]:.4f}',
        f'{a["support"]:.2f}' if 'support' in a and a.get('hops') else '-',
        'yes' if a.get('known') else '',
        path_text(head, a['path'])) for a in rows],
      right=(True, False, True, True))
  legend = ('path: the best path the decoder walked from the head to the answer (its explanation). '
            'support: the share of the answer\'s score that path carries (1 = all of it; - for an '
            'answer given directly, without a path). known: (head, relation, answer) is a triple '
            'of train, valid or test.')
  return '\n'.join([f'query ({head}, {relation}, ?): {len(rows)} answers, best first', table, '']
                   + textwrap.wrap(legend, 100))


def predictions_json(query: str, rows: Sequence[Mapping[str, Any]]) -> str:
  """`--format=json`: `{"query": {"head", "relation"}, "answers": [row, ...]}`, the rows as
  `Evaluator.predict` returns them (rank, entity, score, path, hops, support, known)."""
  head, _, relation = query.partition('|')
  return json.dumps({'query': {'head': head.strip(), 'relation': relation.strip()},
                     'answers': [dict(a) for a in rows]}, indent=2, ensure_ascii=False)


def format_summary(metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                   examples: int = 3) -> str:
  """The metrics table and the first `examples` test answers (tail queries) with their paths."""
  lines = ['', 'Filtered ranking metrics:', ranking.format_metrics(metrics), '',
           f'Example answers (first {examples} test queries, top 3 answers each, with paths):']
  for row in [r for r in rows if r['direction'] == 'tail'][:examples]:
    q = row['query']
    lines.append(f"  ({q['head']}, {q['relation']}, ?)  true answer: {q['answer']}  "
                 f"rank {row['rank']:g}")
    for a in row['answers'][:3]:
      lines.append(f"    {a['score']:8.4f}  {a['entity']:<24} via  {path_text(q['head'], a['path'])}")
  return '\n'.join(lines)
