"""Filtered ranking, MRR / Hits@k and path explanations on top of the jitted beam search (DESIGN §7).

Entity score = max over the finished beams ending in the entity of `logprob / hops` (a scatter-max into
`[batch, E]`, -inf for unreached entities); `decode.score='sum'` sums their probabilities instead,
and `decode.complete_last` adds every full-length path through the last live prefixes
(`with_completions`). For a query (h, r, t) every OTHER known answer of (h, r) (train + valid + test,
both directions: `kg.filter_csr`) is removed before ranking, and

  rank = 1 + #{score > s_t} + (#{score == s_t} - 1) / 2        (realistic / mean tie handling)

over the remaining entities. An unreached target (s_t = -inf) therefore gets the mean rank among all
unreached entities: below every reached one, ties among the unreached averaged (SQUIRE instead gives it
reciprocal rank 0; ours is the expected rank of a random order of the unreached). Head prediction
answers the inverse query (t, r⁻¹, ?) with h. `reached` = share of queries whose target got a finite
score.

Outputs: `WORKDIR/metrics.json` = {"valid"|"test": {"tail"|"head"|"both": {"mrr", "hits@1", "hits@3",
"hits@10", "reached", "queries"}}}; `WORKDIR/explanations.jsonl`: one line per test query and
direction with the top `decode.num_explanations` answers, each with its best path in names and score.

Example:
  $ python launch.py --config=configs/synthetic.py --workdir=W --mode=eval
  $ python launch.py --config=configs/synthetic.py --workdir=W --mode=predict \\
      --query='product_0001|ships_from'
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from imkga_jax import decode
from imkga_jax import files
from imkga_jax import kg as kg_lib
from imkga_jax import rtg as rtg_lib

METRIC_KEYS = ('mrr', 'hits@1', 'hits@3', 'hits@10', 'reached')
METRICS_FILE = 'metrics.json'
EXPLANATIONS_FILE = 'explanations.jsonl'
FEATURE_KEYS = ('fig', 'ocr', 'fig_present', 'ocr_present')
# `(params, inputs [B], constraint) -> (entity scores [B, E], DecodeResult)`, jitted.
DecodeFn = Callable[[Any, Mapping[str, jax.Array], Any], tuple[jax.Array, decode.DecodeResult]]


# ============================================================================ scores and ranks
SCORE_RULES = ('max', 'sum')


def check_score_rule(rule: str) -> None:
  """Raises a ValueError naming `decode.score` unless `rule` is one of `SCORE_RULES`."""
  if rule not in SCORE_RULES:
    raise ValueError(f'decode.score={rule!r}: expected one of {SCORE_RULES}')


def entity_scores(answer: jax.Array, score: jax.Array, num_entities: int, *,
                  logprob: jax.Array | None = None, rule: str = 'max') -> jax.Array:
  """`[batch, E]` entity scores from the finished beams (-inf where no beam ends).

  Rules (`config.decode.score`):
    * 'max' (SQUIRE's): the best length-normalised beam score `logprob / hops` of each answer;
    * 'sum': `log Σ exp(logprob)` over the beams ending in the answer, the probability the model
      gives to reaching it by any of the paths the beam found (no length normalisation). An answer
      several paths support outranks one reached by a single path of the same probability.

  Args:
    answer: `[batch, F]` entity id of each finished beam, -1 for invalid slots.
    score: `[batch, F]` its length-normalised score (rule 'max').
    num_entities: E.
    logprob: `[batch, F]` its summed log-probability (needed by rule 'sum').
    rule: 'max' or 'sum'.
  """
  check_score_rule(rule)
  batch = answer.shape[0]
  index = jnp.where(answer >= 0, answer, num_entities)  # [b, F]; E is out of range: dropped
  rows = jnp.arange(batch)[:, None]  # [b, 1]
  empty = jnp.full((batch, num_entities), -jnp.inf, jnp.float32)  # [b, E]
  if rule == 'max':
    return empty.at[rows, index].max(score.astype(jnp.float32), mode='drop')
  if logprob is None:
    raise ValueError("entity_scores: rule 'sum' needs `logprob`")
  logprob = jnp.where(answer >= 0, logprob.astype(jnp.float32), -jnp.inf)  # [b, F]
  # Stable log-sum-exp per entity: shift by each entity's best beam before exponentiating.
  best = empty.at[rows, index].max(logprob, mode='drop')  # [b, E]
  shift = jnp.take_along_axis(best, jnp.minimum(index, num_entities - 1), axis=1)  # [b, F]
  terms = jnp.where(jnp.isfinite(logprob), jnp.exp(logprob - shift), 0.0)  # [b, F]
  total = jnp.zeros((batch, num_entities), jnp.float32).at[rows, index].add(terms, mode='drop')
  return jnp.where(jnp.isfinite(best), best + jnp.log(jnp.maximum(total, 1e-30)), -jnp.inf)


def with_completions(result: decode.DecodeResult, num_entities: int, *, rule: str = 'max'
                     ) -> jax.Array:
  """`[batch, E]` entity scores from the finished beams AND the last-step completions.

  `beam_search(complete_last=True)` scores every full-length path through the live prefixes; the
  finished full-length beams (`<eos>` in the last position) are a subset of those, so they are left
  out of the beam part before merging (rule 'sum' would count them twice): 'max' takes the larger
  score, 'sum' adds the probabilities (log-add-exp).
  """
  check_score_rule(rule)
  if result.completion_logprob is None:
    raise ValueError('with_completions: the beam search ran without complete_last=True')
  shorter = jnp.where(result.seqs[..., -1] == kg_lib.EOS, -1, result.answer)  # [b, F]
  beams = entity_scores(shorter, result.score, num_entities, logprob=result.logprob, rule=rule)
  if rule == 'max':
    return jnp.maximum(beams, result.completion_score)
  return jnp.logaddexp(beams, result.completion_logprob)


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


def metrics_by_relation(kg: kg_lib.KnowledgeGraph,
                        directions: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
                        ) -> dict[str, dict[str, dict[str, float]]]:
  """`{relation name: {'tail'|'head'|'both': ranking_metrics}}`, queries grouped by base relation.

  Args:
    kg: names the relations.
    directions: `{'tail'|'head': (query relations [n] in [0, 2R), ranks [n], reached [n])}`; a head
      query asks `(t, r + R, ?)` and counts for `r`.
  """
  parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
  for direction, (relations, ranks, reached) in directions.items():
    base = np.asarray(relations) % kg.num_relations
    for rid in np.unique(base):
      rows = base == rid
      parts.setdefault(kg.relations[rid], {})[direction] = (ranks[rows], reached[rows])
  out = {}
  for name, by_direction in sorted(parts.items()):
    out[name] = {d: ranking_metrics(*v) for d, v in by_direction.items()}
    out[name]['both'] = ranking_metrics(np.concatenate([v[0] for v in by_direction.values()]),
                                        np.concatenate([v[1] for v in by_direction.values()]))
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
          'head': np.stack([t, kg.inverse_relation(r), h], axis=1).astype(np.int32)}


# ============================================================================ who may answer
DIRECT_ANSWERS = ('all', 'image_heads')


def direct_heads_mask(kg: kg_lib.KnowledgeGraph, mode: str) -> np.ndarray | None:
  """`[E] bool` query heads allowed the direct answer `t <eos>` (`config.decode.direct_answers`).

  'all': every head (None); 'image_heads': heads with an image only — the direct form's reading for
  data made with `trajectories.also_direct='image_heads'`, where it is the model's way to answer
  from the picture. Elsewhere it was trained only for the few queries no rule grounds, and at test
  time the direct form mostly offers the label-smoothing leftovers of step 0 as answers.
  """
  if mode not in DIRECT_ANSWERS:
    raise ValueError(f'decode.direct_answers={mode!r}: expected one of {DIRECT_ANSWERS}')
  if mode == 'all':
    return None
  has_image = kg.has_image()
  if not has_image.any():
    logging.warning("decode.direct_answers='image_heads': no entity of %s has an image, so no query "
                    "may answer in the direct form `t <eos>`", kg.source or 'this KG')
  return has_image


def best_rule_confidence(kg: kg_lib.KnowledgeGraph, rules_path: str) -> np.ndarray:
  """`[2R]` float32: the confidence of each query relation's best mined rule (0 without one), read
  from the prepared folder's `rules.json` (`{head name: [[confidence, [body names]], …]}`)."""
  try:
    with open(rules_path, encoding='utf-8') as f:
      named = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'{rules_path} is missing: decode.direct_below_rule_confidence reads the '
                            'mined rules; run `launch.py --mode=prepare` first') from None
  best = np.zeros(2 * kg.num_relations, np.float32)
  for head, rules in named.items():
    try:
      best[kg.relation_id(head)] = max((float(c) for c, _ in rules), default=0.0)
    except KeyError as e:
      raise KeyError(f'{rules_path}: {e.args[0]}') from None
  return best


def direct_relations_mask(kg: kg_lib.KnowledgeGraph, below: float, rules_path: str | None
                          ) -> np.ndarray | None:
  """`[2R] bool` query relations that may answer in the direct form `t <eos>`
  (`config.decode.direct_below_rule_confidence`): those whose best mined rule has a confidence
  below `below`. Where a strong rule answers, the direct form only adds the answer prior the model
  learned for it (couriers for (product, ships_via, ?), since no picture shows one) to the rule's
  path. None when `below` is 0 (off); `rules_path` None: no prepared folder to read them from."""
  if not 0.0 <= below <= 1.0:
    raise ValueError(f'decode.direct_below_rule_confidence={below}: expected a value in [0, 1]')
  if below == 0.0:
    return None
  if rules_path is None:
    raise ValueError(f'decode.direct_below_rule_confidence={below} reads the mined rules of a '
                     'prepared folder, and none was given (build_decoder(prepared_dir=...))')
  return best_rule_confidence(kg, rules_path) < below


def type_match(kg: kg_lib.KnowledgeGraph) -> np.ndarray:
  """`[2R, E]` float32: how much each entity looks like the train answers of each query relation.

  An entity's signature is the set of relations of its train edges (inverses included). For query
  relation r, `share[r, r']` is the fraction of r's train answers whose signature holds r'; the
  match of entity e is the mean of `share[r, r']` over e's signature (1 for an entity with no train
  edge: nothing is known against it). On the synthetic KG the products score about 0.96 for
  (shop, sold_by⁻¹, ?) and regions, brands and colours 0: no answer of sold_by⁻¹ is a region.
  """
  num_rel = 2 * kg.num_relations
  triples = kg.with_inverses('train')
  signature = np.zeros((kg.num_entities, num_rel), np.float32)  # [E, 2R]
  signature[triples[:, 0], triples[:, 1]] = 1.0
  answers = np.zeros((num_rel, kg.num_entities), np.float32)  # [2R, E]
  answers[triples[:, 1], triples[:, 2]] = 1.0
  share = (answers @ signature) / np.maximum(answers.sum(axis=1, keepdims=True), 1.0)  # [2R, 2R]
  degree = signature.sum(axis=1)  # [E]
  match = (share @ signature.T) / np.maximum(degree, 1.0)  # [2R, E]
  return np.where(degree > 0, match, 1.0).astype(np.float32)


def answer_types_mask(kg: kg_lib.KnowledgeGraph, min_match: float,
                      key: str = 'decode.min_type_match') -> np.ndarray | None:
  """`[2R, E] bool`: entities of the query relation's answer type (`type_match >= min_match`), or
  None when `min_match` is 0 (off). `key` names the config entry in errors."""
  if not 0.0 <= min_match <= 1.0:
    raise ValueError(f'{key}={min_match}: expected a value in [0, 1]')
  return None if min_match == 0.0 else type_match(kg) >= min_match


# Relations with fewer train facts than this are never taken as functional (`functional_mask`): two
# facts with two distinct heads say nothing about a one-answer-per-head law.
FUNCTIONAL_MIN_FACTS = 20


def functionality(kg: kg_lib.KnowledgeGraph) -> np.ndarray:
  """`[2R]` float32: AMIE's functionality of each relation (inverses included) on train — its
  distinct heads over its facts; 1 when every head has one tail (sold_by: a product, one shop). 0 for a
  relation with fewer than `FUNCTIONAL_MIN_FACTS` train facts."""
  triples = kg.with_inverses('train')
  num_rel = 2 * kg.num_relations
  facts = np.bincount(triples[:, 1], minlength=num_rel)
  heads = np.bincount(np.unique(triples[:, :2], axis=0)[:, 1], minlength=num_rel)
  return np.where(facts >= FUNCTIONAL_MIN_FACTS, heads / np.maximum(facts, 1), 0.0).astype(np.float32)


def functional_mask(kg: kg_lib.KnowledgeGraph, min_functionality: float,
                    key: str = 'decode.min_functionality') -> np.ndarray | None:
  """`[2R, E] bool`: False where the partial-completeness assumption rules an answer out.

  If the inverse r' of query relation r is functional (`functionality >= min_functionality`), an
  entity that already has an r'-fact in train has its one r'-answer and is not a new answer of r: for
  (shop, sold_by⁻¹, ?) a product already sold by another shop ranks after the products whose shop is
  unknown. None when `min_functionality` is 0 (off). `key` names the config entry in errors.
  """
  if not 0.0 <= min_functionality <= 1.0:
    raise ValueError(f'{key}={min_functionality}: expected a value in [0, 1]')
  if min_functionality == 0.0:
    return None
  num_rel = 2 * kg.num_relations
  triples = kg.with_inverses('train')
  has_fact = np.zeros((num_rel, kg.num_entities), bool)  # [2R, E]: e is a head of relation r
  has_fact[triples[:, 1], triples[:, 0]] = True
  inverse = kg.inverse_relation(np.arange(num_rel))  # [2R]
  functional = functionality(kg)[inverse] >= min_functionality  # [2R]: is r's inverse functional
  return ~(functional[:, None] & has_fact[inverse])


def first_answers_mask(kg: kg_lib.KnowledgeGraph, min_type_match: float, min_functionality: float,
                       section: str = 'decode') -> np.ndarray | None:
  """`[2R, E] bool`: per query relation, the entities that rank first (`typed_first`): of the answer
  type (`answer_types_mask`) and not ruled out by a functional inverse (`functional_mask`). None when
  both are off. `section` names the config section of the two keys in errors."""
  masks = [m for m in (answer_types_mask(kg, min_type_match, f'{section}.min_type_match'),
                       functional_mask(kg, min_functionality, f'{section}.min_functionality'))
           if m is not None]
  return None if not masks else np.logical_and.reduce(masks)


def typed_first(scores: jax.Array, typed: jax.Array) -> jax.Array:
  """`[b, E]` scores shifted so that every finite `typed` score beats every other one, each group
  keeping its order (a per-row shift of the untyped group: no precision is lost)."""
  finite = jnp.isfinite(scores)
  lowest_typed = jnp.min(jnp.where(typed & finite, scores, jnp.inf), axis=-1, keepdims=True)
  highest_other = jnp.max(jnp.where(~typed & finite, scores, -jnp.inf), axis=-1, keepdims=True)
  shift = jnp.maximum(highest_other - lowest_typed + 1.0, 0.0)  # [b, 1]; 0 if a group is empty
  return jnp.where(typed, scores, scores - shift)


# ============================================================================ decoding in batches
def make_decode_fn(logits_factory: Callable[[Any, dict[str, jax.Array]], decode.TokensToLogits],
                   space: decode.TokenSpace, *, beam_size: int, max_len: int,
                   rtg_constants: rtg_lib.RtgConstants, score_rule: str = 'max',
                   complete_last: bool = False, finish_width: int = 0,
                   direct_heads: np.ndarray | None = None,
                   direct_relations: np.ndarray | None = None,
                   answer_types: np.ndarray | None = None,
                   batch_sharding: NamedSharding | None = None) -> DecodeFn:
  """One jitted function: beam search + entity scores for a batch of queries.

  Args:
    logits_factory: `(params, inputs tiled to batch * beam rows) -> tokens_to_logits`; for IMKGA
      `lambda p, x: decode.make_tokens_to_logits(model, p, x, branch)`.
    space: token layout.
    beam_size, max_len: beam search sizes.
    rtg_constants: return-to-go constants.
    score_rule: how finished beams become entity scores, 'max' or 'sum' (`entity_scores`).
    complete_last: also score every entity the last step can reach from the live prefixes
      (`decode.beam_search`, `with_completions`), not only the beam's best.
    finish_width: W > beam_size finishes the best W paths at each inner entity step
      (`decode.beam_search`): one more model call on `batch * W` rows at each.
    direct_heads: `[E]` bool, the query heads that may answer in the direct form `t <eos>`
      (`direct_heads_mask`); None: every head.
    direct_relations: `[2R]` bool, the query relations that may answer in the direct form
      (`direct_relations_mask`); None: every relation. Both must allow it.
    answer_types: `[2R, E]` bool (`first_answers_mask`): per query relation, the entities that rank
      first; the others keep their order but rank after all of them. None: no such order.
    batch_sharding: sharding of the query batch (e.g. `sharding.batch_sharding`): decoding is then
      data parallel over the mesh, params and constraint replicated. None: plain `jax.jit`.

  Returns:
    `decode_fn(params, inputs, constraint)` with `inputs` of `[batch]` rows: `head_entity` plus the
    model context (`head_token`, `relation_token`, `fig`, `ocr`, `fig_present`, `ocr_present`).
  """
  check_score_rule(score_rule)  # now, not at the first call's trace
  direct_table = None if direct_heads is None else jnp.asarray(direct_heads, jnp.bool_)  # [E]
  direct_rel_table = (None if direct_relations is None
                      else jnp.asarray(direct_relations, jnp.bool_))  # [2R]
  types_table = None if answer_types is None else jnp.asarray(answer_types, jnp.bool_)  # [2R, E]

  def fn(params, inputs, constraint):
    per_query = {k: v for k, v in inputs.items() if k != 'head_entity'}
    context = decode.tile_beams(per_query, beam_size)
    finish_logits = None
    if finish_width > beam_size:
      finish_logits = logits_factory(params, decode.tile_beams(per_query, finish_width))
    relation = inputs['relation_token'] - space.relation_offset  # [b]
    direct_ok = jnp.ones(relation.shape, jnp.bool_)
    if direct_table is not None:
      direct_ok &= direct_table[inputs['head_entity']]
    if direct_rel_table is not None:
      direct_ok &= direct_rel_table[relation]
    result = decode.beam_search(logits_factory(params, context), inputs['head_entity'], space=space,
                                beam_size=beam_size, max_len=max_len, rtg_constants=rtg_constants,
                                constraint=constraint, complete_last=complete_last,
                                finish_width=finish_width, finish_logits=finish_logits,
                                direct_ok=direct_ok)
    if complete_last:
      scores = with_completions(result, space.num_entities, rule=score_rule)
    else:
      scores = entity_scores(result.answer, result.score, space.num_entities,
                             logprob=result.logprob, rule=score_rule)  # [b, E]
    if types_table is not None:
      scores = typed_first(scores, types_table[relation])
    return scores, result

  if batch_sharding is None:
    return jax.jit(fn)
  replicated = NamedSharding(batch_sharding.mesh, P())
  return jax.jit(fn, in_shardings=(replicated, batch_sharding, replicated),
                 out_shardings=batch_sharding)


def query_inputs(kg: kg_lib.KnowledgeGraph, queries: np.ndarray,
                 features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Model inputs of `[q, 2+]` (head, relation) rows; features gathered by the query head."""
  heads, relations = queries[:, 0], queries[:, 1]
  out = {'head_entity': heads.astype(np.int32),
         'head_token': kg.entity_token(heads).astype(np.int32),
         'relation_token': kg.relation_token(relations).astype(np.int32)}
  out.update({k: np.asarray(features[k])[heads] for k in FEATURE_KEYS})
  return out


def decode_batches(decode_fn: DecodeFn, params: Any, kg: kg_lib.KnowledgeGraph, queries: np.ndarray,
                   features: Mapping[str, np.ndarray], batch_size: int, constraint: Any = None,
                   desc: str = 'decode') -> Iterator[tuple[slice, np.ndarray, decode.DecodeResult]]:
  """Decodes `queries` in batches of fixed shape (the last one padded with copies of its first row).

  Yields:
    `(rows of queries, entity scores [rows, E] numpy, DecodeResult of those rows, on device)`.
  """
  num = len(queries)
  for start in tqdm(range(0, num, batch_size), desc=desc, unit='batch', leave=False,
                    disable=jax.process_index() > 0):
    rows = slice(start, min(start + batch_size, num))
    batch = queries[rows]
    pad = batch_size - len(batch)
    if pad:
      batch = np.concatenate([batch, np.repeat(batch[:1], pad, axis=0)])
    scores, result = decode_fn(params, query_inputs(kg, batch, features), constraint)
    n = rows.stop - rows.start
    yield rows, np.asarray(scores)[:n], jax.tree.map(lambda x: x[:n], result)


# ============================================================================ explanations
def answers_with_paths(kg: kg_lib.KnowledgeGraph, seqs: np.ndarray, score: np.ndarray,
                       answer: np.ndarray, limit: int, entity_score: np.ndarray | None = None,
                       completion: tuple[np.ndarray, np.ndarray] | None = None
                       ) -> list[dict[str, Any]]:
  """The best `limit` distinct answers of one query, each with its best path in names.

  Args:
    seqs, score, answer: `[F, L]`, `[F]`, `[F]` of one query's `DecodeResult` (best first).
    limit: answers to return.
    entity_score: `[E]` the query's entity scores (`entity_scores` / `with_completions`); when
      given, answers are ordered and scored by it (what the ranking uses), each still shown with
      its best path.
    completion: `(completion_prefix [K, L], completion_parent [E])` of the query when decoding
      completed the last step; the best-scored answers no finished beam reaches then show their
      best full-length path.
  """
  best = {}  # answer -> (beam score, path) of its first (best) beam
  for seq, s, a in zip(seqs, score, answer):
    if a >= 0 and int(a) not in best:
      best[int(a)] = (float(s), [kg.token_name(t) for t in seq[:list(seq).index(kg_lib.EOS)]])
  if entity_score is not None and completion is not None:
    prefix, parent = completion
    length = prefix.shape[-1]
    for a in np.argsort(-np.asarray(entity_score), kind='stable')[:limit]:
      if np.isfinite(entity_score[a]) and int(a) not in best:
        tokens = list(prefix[parent[a]][:length - 2]) + [kg.entity_token(int(a))]
        best[int(a)] = (float(entity_score[a]), [kg.token_name(t) for t in tokens])
  order = list(best)  # beam order
  if entity_score is not None:
    order.sort(key=lambda a: -float(entity_score[a]))  # stable: ties keep beam order
  return [{'entity': kg.entities[a],
           'score': best[a][0] if entity_score is None else float(entity_score[a]),
           'path': best[a][1]} for a in order[:limit]]


def _completion_of(result: decode.DecodeResult, row: int
                   ) -> tuple[np.ndarray, np.ndarray] | None:
  """`answers_with_paths`' completion argument for one query of a host-side result."""
  if result.completion_prefix is None:
    return None
  return np.asarray(result.completion_prefix[row]), np.asarray(result.completion_parent[row])


# ============================================================================ evaluation
def evaluate_split(decode_fn: DecodeFn, params: Any, kg: kg_lib.KnowledgeGraph, split: str,
                   config: ml_collections.ConfigDict, features: Mapping[str, np.ndarray],
                   constraint: Any = None, explain: bool = False
                   ) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
  """Metrics of one split for tail, head and both; explanation rows if `explain`.

  Returns:
    `({'tail'|'head'|'both': metrics, 'by_relation': {relation: {'tail'|'head'|'both': metrics}}},
    explanations)`; `by_relation` groups queries by the triple's (base) relation name.
  """
  metrics, explanations, all_ranks, all_reached = {}, [], [], []
  per_direction = {}
  for direction, queries in direction_queries(kg, split, config.decode.max_queries).items():
    indptr, known = kg.filter_csr(queries[:, :2])
    ranks, reached = np.zeros(len(queries)), np.zeros(len(queries), bool)
    for rows, scores, result in decode_batches(decode_fn, params, kg, queries, features,
                                               config.decode.batch_size, constraint,
                                               desc=f'{split}/{direction}'):
      targets = queries[rows, 2]
      lo, hi = indptr[rows.start], indptr[rows.stop]
      ranks[rows] = filtered_ranks(scores, targets, indptr[rows.start:rows.stop + 1] - lo,
                                   known[lo:hi])
      reached[rows] = np.isfinite(scores[np.arange(len(targets)), targets])
      if explain:
        result = jax.device_get(result)
        for i, (h, r, t) in enumerate(queries[rows]):
          explanations.append({
              'split': split, 'direction': direction,
              'query': {'head': kg.entities[h], 'relation': kg.relation_name(r),
                        'answer': kg.entities[t]},
              'rank': float(ranks[rows.start + i]),
              'answers': answers_with_paths(kg, result.seqs[i], result.score[i], result.answer[i],
                                            config.decode.num_explanations, scores[i],
                                            _completion_of(result, i))})
    metrics[direction] = ranking_metrics(ranks, reached)
    per_direction[direction] = (queries[:, 1], ranks, reached)
    all_ranks.append(ranks)
    all_reached.append(reached)
  metrics['both'] = ranking_metrics(np.concatenate(all_ranks), np.concatenate(all_reached))
  metrics['by_relation'] = metrics_by_relation(kg, per_direction)
  return metrics, explanations


def write_metrics(workdir: str, metrics: Mapping[str, Any]) -> str:
  """Writes `WORKDIR/metrics.json` atomically (tail/head/both per split); returns its path.

  Each split's `by_relation` entry (from `evaluate_split`), if any, goes to
  `WORKDIR/metrics_by_relation.json` instead, so metrics.json keeps its documented shape.
  """
  main = {split: {k: v for k, v in m.items() if k != 'by_relation'} for split, m in metrics.items()}
  by_relation = {split: m['by_relation'] for split, m in metrics.items() if 'by_relation' in m}
  if by_relation:
    files.write_json(os.path.join(workdir, BY_RELATION_FILE), by_relation)
  path = os.path.join(workdir, METRICS_FILE)
  files.write_json(path, main)
  return path


def write_explanations(workdir: str, rows: list[Mapping[str, Any]]) -> str:
  """Writes `WORKDIR/explanations.jsonl` (one JSON object per line) atomically; returns its path."""
  path = os.path.join(workdir, EXPLANATIONS_FILE)
  files.atomic_write_text(path, ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows))
  return path


def format_metrics(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
  """A plain-text table of `metrics.json`."""
  lines = [f'{"split":<6} {"dir":<5} ' + ' '.join(f'{k:>8}' for k in METRIC_KEYS) + '  queries']
  for split, by_direction in metrics.items():
    for direction, m in by_direction.items():
      lines.append(f'{split:<6} {direction:<5} ' + ' '.join(f'{m[k]:8.4f}' for k in METRIC_KEYS)
                   + f'  {m["queries"]}')
  return '\n'.join(lines)


# ============================================================================ prediction
def parse_query(kg: kg_lib.KnowledgeGraph, query: str) -> tuple[int, int]:
  """`'HEAD|RELATION'` in names (RELATION may end in `_inv`) -> (head id, relation id in [0, 2R))."""
  parts = query.split('|')
  if len(parts) != 2 or not all(p.strip() for p in parts):
    raise ValueError(f"--query={query!r}: expected 'HEAD|RELATION' in names, e.g. "
                     f"'{kg.entities[0]}|{kg.relations[0]}'")
  return kg.entity_id(parts[0].strip()), kg.relation_id(parts[1].strip())


def predict(decode_fn: DecodeFn, params: Any, kg: kg_lib.KnowledgeGraph, query: str,
            config: ml_collections.ConfigDict, features: Mapping[str, np.ndarray],
            constraint: Any = None) -> list[dict[str, Any]]:
  """Ranked answers of one query, each `{rank, entity, score, path, known}` (`known`: a true triple
  of any split). Returns the best `config.decode.num_explanations` answers."""
  head, relation = parse_query(kg, query)
  queries = np.asarray([[head, relation, 0]], np.int32)
  _, scores, result = next(decode_batches(decode_fn, params, kg, queries, features,
                                          config.decode.batch_size, constraint, desc='predict'))
  result = jax.device_get(result)
  answers = answers_with_paths(kg, result.seqs[0], result.score[0], result.answer[0],
                               config.decode.num_explanations, scores[0], _completion_of(result, 0))
  known = {kg.entities[t] for t in kg.filter_index().get((head, relation), ())}
  return [dict(a, rank=i + 1, known=a['entity'] in known) for i, a in enumerate(answers)]


def format_predictions(query: str, answers: list[Mapping[str, Any]]) -> str:
  """Readable lines: rank, answer, score, known flag and the path that produced it."""
  lines = [f'query {query}: {len(answers)} answers']
  for a in answers:
    lines.append(f'{a["rank"]:3d}. {a["entity"]:<24} score {a["score"]:8.4f}'
                 f'{"  (known)" if a["known"] else ""}  path: {" -> ".join(a["path"])}')
  return '\n'.join(lines)


# ============================================================================ launch.py entry points
def build_decoder(model: Any, kg: kg_lib.KnowledgeGraph, config: ml_collections.ConfigDict,
                  batch_sharding: NamedSharding | None = None, prepared_dir: str = ''
                  ) -> tuple[DecodeFn, Any]:
  """`(decode_fn, constraint)` for an IMKGA model and the config's decode section; `prepared_dir`
  holds the mined rules that `decode.direct_below_rule_confidence` reads."""
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  branches = tuple(model.branches)
  branch_name = branches[decode.branch_index(branches, config.decode.branch)]
  if batch_sharding is not None:
    spec = batch_sharding.spec[0] if len(batch_sharding.spec) else None
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    shards = int(np.prod([batch_sharding.mesh.shape[a] for a in axes]))
    if config.decode.batch_size % shards:
      raise ValueError(f'decode.batch_size={config.decode.batch_size} must be divisible by the '
                       f'{shards} devices of the data axis; set --config.decode.batch_size')
  decode_fn = make_decode_fn(
      # Only the decoding branch runs (a third of the work for the three-branch variants).
      lambda p, x: decode.make_tokens_to_logits(*imkga.select_branch(model, p, branch_name), x, 0),
      decode.TokenSpace.from_kg(kg),
      beam_size=config.decode.beam_size, max_len=2 * config.trajectories.max_hops + 1,
      rtg_constants=rtg_lib.constants_from_config(config, kg.num_relations),
      score_rule=config.decode.score, complete_last=config.decode.complete_last,
      finish_width=config.decode.finish_width,
      direct_heads=direct_heads_mask(kg, config.decode.direct_answers),
      direct_relations=direct_relations_mask(
          kg, float(config.decode.direct_below_rule_confidence),
          os.path.join(prepared_dir, kg_lib.RULES_FILE) if prepared_dir else None),
      answer_types=first_answers_mask(kg, float(config.decode.min_type_match),
                                      float(config.decode.min_functionality)),
      batch_sharding=batch_sharding)
  constraint = decode.GraphConstraint.from_kg(kg) if config.decode.constrained else None
  return decode_fn, constraint


def _restore(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, ...]:
  from imkga_jax import checkpoints, sharding, train  # pylint: disable=g-import-not-at-top
  prepared = os.path.join(workdir, 'prepared')
  kg = kg_lib.KnowledgeGraph.load(prepared)
  model, params, step = checkpoints.restore_params(config, workdir, kg)
  features = train.load_feature_table(prepared, kg.num_entities, config)
  mesh = sharding.make_mesh(config.mesh)
  decode_fn, constraint = build_decoder(model, kg, config,
                                        sharding.batch_sharding(mesh, config.mesh.rules), prepared)
  return kg, params, step, features, decode_fn, constraint


EVAL_STATE_FILE = 'eval_state.json'
BY_RELATION_FILE = 'metrics_by_relation.json'


def _eval_fingerprint(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
  return {'checkpoint_step': int(step), 'decode': json.loads(config.decode.to_json()),
          'rtg': json.loads(config.rtg.to_json())}


def eval_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits named by `config.decode.splits` ('valid,test' by default), checked."""
  splits = tuple(s.strip() for s in config.decode.splits.split(',') if s.strip())
  bad = [s for s in splits if s not in ('valid', 'test')]
  if bad or not splits:
    raise ValueError(f'decode.splits={config.decode.splits!r}: give valid, test or valid,test')
  return splits


def run_evaluation(config: ml_collections.ConfigDict, workdir: str, summary: bool = False
                   ) -> dict[str, Any]:
  """`--mode=eval`: valid/test metrics of the latest checkpoint -> metrics.json, explanations.jsonl.

  Also writes `metrics_by_relation.json` (per base relation, tail/head/both). Skipped, returning the
  stored metrics, when they were made from the same checkpoint step and decode settings.

  Args:
    config: the run's config.
    workdir: holds `prepared/` and `checkpoints/`.
    summary: also print the metrics table and three example answers with their paths (the `all`
      mode's final summary); the table is logged anyway.
  """
  from imkga_jax import checkpoints  # pylint: disable=g-import-not-at-top
  state_path = os.path.join(workdir, EVAL_STATE_FILE)
  latest = checkpoints.latest_step(workdir, config)
  if latest is not None and os.path.exists(state_path):
    with open(state_path, encoding='utf-8') as f:
      done = json.load(f)
    if done == _eval_fingerprint(config, latest):
      logging.info('evaluation of checkpoint step %d is up to date (%s), skipped', latest,
                   state_path)
      with open(os.path.join(workdir, METRICS_FILE), encoding='utf-8') as f:
        metrics = json.load(f)
      if summary:
        print(format_summary(metrics, workdir))
      return metrics
  splits = eval_splits(config)
  kg, params, step, features, decode_fn, constraint = _restore(config, workdir)
  metrics, explanations = {}, []
  for split in splits:
    metrics[split], rows = evaluate_split(decode_fn, params, kg, split, config, features, constraint,
                                          explain=(split == 'test'))
    explanations += rows
  if jax.process_index() == 0:
    write_metrics(workdir, metrics)
    write_explanations(workdir, explanations)
    files.atomic_write_text(state_path, json.dumps(_eval_fingerprint(config, step)))
  metrics = {split: {k: v for k, v in m.items() if k != 'by_relation'}
             for split, m in metrics.items()}
  logging.info('evaluation of checkpoint step %d (beam %d, %s):\n%s', step, config.decode.beam_size,
               'constrained' if constraint is not None else 'unconstrained',
               format_metrics(metrics))
  if summary:
    print(format_summary(metrics, workdir))
  return metrics


def format_summary(metrics: Mapping[str, Any], workdir: str, examples: int = 3) -> str:
  """The metrics table and the first `examples` test answers (tail queries) with their paths."""
  lines = ['', 'Filtered ranking metrics:', format_metrics(metrics), '',
           f'Example answers (first {examples} test queries, top 3 answers each, with paths):']
  path = os.path.join(workdir, EXPLANATIONS_FILE)
  with open(path, encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  for row in [r for r in rows if r['direction'] == 'tail'][:examples]:
    q = row['query']
    lines.append(f"  ({q['head']}, {q['relation']}, ?)  true answer: {q['answer']}  "
                 f"rank {row['rank']:g}")
    for a in row['answers'][:3]:
      lines.append(f"    {a['score']:8.4f}  {a['entity']:<24} via  {' -> '.join(a['path'])}")
  return '\n'.join(lines)


def run_prediction(config: ml_collections.ConfigDict, workdir: str, query: str
                   ) -> list[dict[str, Any]]:
  """`--mode=predict --query='HEAD|RELATION'`: prints and returns the ranked answers with paths."""
  kg, params, _, features, decode_fn, constraint = _restore(config, workdir)
  answers = predict(decode_fn, params, kg, query, config, features, constraint)
  print(format_predictions(query, answers))
  return answers
