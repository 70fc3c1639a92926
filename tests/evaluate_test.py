"""Tests of imkga_jax/evaluate.py: scatter-max, filtered ranks vs brute force, stub end to end."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from imkga_jax import decode
from imkga_jax import evaluate
from imkga_jax import kg as kg_lib
from imkga_jax import rtg as rtg_lib


def test_entity_scores_is_a_scatter_max():
  rng = np.random.default_rng(0)
  answer = rng.integers(-1, 6, (3, 40))
  score = rng.normal(size=(3, 40)).astype(np.float32)
  got = np.asarray(evaluate.entity_scores(jnp.asarray(answer), jnp.asarray(score), 6))
  expected = np.full((3, 6), -np.inf, np.float32)
  for b in range(3):
    for a, s in zip(answer[b], score[b]):
      if a >= 0:
        expected[b, a] = max(expected[b, a], s)
  np.testing.assert_array_equal(got, expected)


def test_entity_scores_sum_is_a_per_entity_logsumexp():
  rng = np.random.default_rng(1)
  answer = rng.integers(-1, 6, (3, 40))
  logprob = rng.normal(-60.0, 30.0, size=(3, 40)).astype(np.float32)  # exp() underflows alone
  logprob[0, :5] = -np.inf  # finished slots that never filled
  got = np.asarray(evaluate.entity_scores(jnp.asarray(answer), jnp.zeros((3, 40)), 6,
                                          logprob=jnp.asarray(logprob), rule='sum'))
  expected = np.full((3, 6), -np.inf)
  for b in range(3):
    for e in range(6):
      terms = logprob[b][(answer[b] == e) & np.isfinite(logprob[b])].astype(np.float64)
      if len(terms):
        expected[b, e] = np.logaddexp.reduce(terms)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # Two paths of equal probability outrank one: log 2 above it.
  two = evaluate.entity_scores(jnp.asarray([[0, 0, 1]]), jnp.zeros((1, 3)), 2,
                               logprob=jnp.full((1, 3), -3.0), rule='sum')
  np.testing.assert_allclose(np.asarray(two)[0], [-3.0 + np.log(2.0), -3.0], rtol=1e-6)


def test_entity_scores_rejects_unknown_rule():
  with pytest.raises(ValueError, match='decode.score'):
    evaluate.entity_scores(jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2)), 3, rule='mean')
  space = decode.TokenSpace(num_relations=1, num_entities=3)
  constants = rtg_lib.RtgConstants(1.0, -1.0, -0.1, entity_offset=space.entity_offset)
  with pytest.raises(ValueError, match='decode.score'):  # when built, before any decoding
    evaluate.make_decode_fn(lambda p, x: None, space, beam_size=2, max_len=3,
                            rtg_constants=constants, score_rule='mean')


@pytest.mark.parametrize('rule', ['max', 'sum'])
def test_with_completions_counts_each_path_once(rule):
  """Exhaustive beam: the completions are exactly the finished full-length beams, so merging them
  gives the plain beam scores; with a beam of 1 more entities get a score, none loses one."""
  space = decode.TokenSpace(num_relations=1, num_entities=4)
  rng = np.random.default_rng(3)
  table = rng.normal(size=(5, space.num_tokens)).astype(np.float32)
  table[0, space.relation_offset:space.entity_offset] += 5.0  # the single beam walks a path
  table = jnp.asarray(table)
  stub = lambda actions, rtg, step: jnp.broadcast_to(table[step], (actions.shape[0],) + table.shape[1:])
  constants = rtg_lib.RtgConstants(1.0, -1.0, -0.1, entity_offset=space.entity_offset)

  def scores(beam, complete):
    result = decode.beam_search(stub, jnp.zeros([1], jnp.int32), space=space, beam_size=beam,
                                max_len=5, rtg_constants=constants, complete_last=complete)
    plain = evaluate.entity_scores(result.answer, result.score, 4, logprob=result.logprob, rule=rule)
    if not complete:
      return np.asarray(plain)
    return np.asarray(plain), np.asarray(evaluate.with_completions(result, 4, rule=rule))

  exhaustive, merged = scores(400, True)
  np.testing.assert_allclose(merged, exhaustive, rtol=1e-5)
  narrow, merged = scores(1, True)
  reached = np.isfinite(narrow)
  assert np.all(np.isfinite(merged)) and not np.all(reached)
  assert np.all(merged[reached] >= narrow[reached] - 1e-5)
  with pytest.raises(ValueError, match='complete_last'):
    result = decode.beam_search(stub, jnp.zeros([1], jnp.int32), space=space, beam_size=1,
                                max_len=5, rtg_constants=constants)
    evaluate.with_completions(result, 4, rule=rule)


def test_wide_finishing_through_make_decode_fn_keeps_queries_apart():
  """finish_width > beam: the extra model call sees each query's own context (a per-query stub), so a
  batch decodes as its queries one by one; wider finishing only adds finished paths ('max')."""
  kg = tiny_kg()
  space = decode.TokenSpace.from_kg(kg)
  rng = np.random.default_rng(4)
  table = jnp.asarray(rng.normal(size=(kg.num_entities, 2 * kg.num_relations, space.num_tokens)),
                      jnp.float32)

  def factory(params, x):
    h = x['head_token'] - space.entity_offset  # [N]
    r = x['relation_token'] - space.relation_offset  # [N]
    return lambda actions, rtg, step: params[h, r] + 0.5 * jnp.sin(step + actions[:, :1])  # [N, V]

  constants = rtg_lib.constants_from_config(default.get_config(), kg.num_relations)
  features = {'fig': np.zeros((kg.num_entities, 8), np.float32),
              'ocr': np.zeros((kg.num_entities, 3), np.float32),
              'fig_present': np.zeros(kg.num_entities, bool),
              'ocr_present': np.zeros(kg.num_entities, bool)}
  queries = np.concatenate([kg.test[:4, :2], np.zeros((4, 1), np.int32)], axis=1)
  inputs = evaluate.query_inputs(kg, queries, features)

  def run(width, rows):
    fn = evaluate.make_decode_fn(factory, space, beam_size=2, max_len=5, rtg_constants=constants,
                                 finish_width=width)
    return fn(table, {k: v[rows] for k, v in inputs.items()}, None)

  wide, result = run(12, slice(0, 4))
  assert result.seqs.shape[1] == 4 * 12
  for i in range(4):
    alone, _ = run(12, slice(i, i + 1))
    np.testing.assert_allclose(np.asarray(wide[i]), np.asarray(alone[0]), rtol=1e-5)
  plain, _ = run(0, slice(0, 4))
  plain, wide = np.asarray(plain), np.asarray(wide)
  reached = np.isfinite(plain)
  assert np.all(np.isfinite(wide[reached])) and np.all(wide[reached] >= plain[reached] - 1e-5)
  assert np.isfinite(wide).sum() > reached.sum()


def test_answers_with_paths_follow_entity_scores():
  kg = kg_lib.KnowledgeGraph(entities=['a', 'b', 'c'], relations=['r'],
                             train=np.asarray([[0, 0, 1], [1, 0, 2]], np.int32),
                             valid=np.zeros((0, 3), np.int32), test=np.zeros((0, 3), np.int32))
  eos, e = kg_lib.EOS, kg.entity_offset
  seqs = np.asarray([[e + 1, eos, 0], [e + 2, eos, 0], [e + 2, eos, 0]])
  answer, score = np.asarray([1, 2, 2]), np.asarray([-1.0, -2.0, -2.5])
  by_beam = evaluate.answers_with_paths(kg, seqs, score, answer, 5)
  assert [a['entity'] for a in by_beam] == ['b', 'c'] and by_beam[0]['score'] == -1.0
  entity_score = np.asarray([-np.inf, -1.0, -0.5])
  by_entity = evaluate.answers_with_paths(kg, seqs, score, answer, 5, entity_score)
  assert [(a['entity'], a['score']) for a in by_entity] == [('c', -0.5), ('b', -1.0)]
  assert by_entity[0]['path'] == ['c']
  # An answer only the last-step completion reaches shows its full-length path.
  prefix = np.asarray([[kg.relation_offset, e + 1, kg.relation_offset, 0, 0]])  # r b r _ _
  seqs5 = np.pad(seqs, ((0, 0), (0, 2)))
  entity_score = np.asarray([-0.1, -1.0, -0.5])  # 'a': no finished beam
  got = evaluate.answers_with_paths(kg, seqs5, score, answer, 2, entity_score,
                                    (prefix, np.zeros(3, np.int32)))
  assert [(a['entity'], a['path']) for a in got] == [('a', ['r', 'b', 'r', 'a']), ('c', ['c'])]


def rank_reference(scores, target, known):
  """Mean position of the target's tie group after sorting the unfiltered entities by score."""
  candidates = [e for e in range(len(scores)) if e == target or e not in set(known)]
  ordered = sorted(candidates, key=lambda e: -scores[e])
  tied = [i + 1 for i, e in enumerate(ordered) if scores[e] == scores[target]]
  return (min(tied) + max(tied)) / 2


@pytest.mark.parametrize('seed', range(5))
def test_filtered_ranks_match_brute_force(seed):
  rng = np.random.default_rng(seed)
  q, e = 30, 12
  # Few distinct values (ties) and many unreached entities (-inf), targets often unreached.
  scores = rng.choice(np.array([-np.inf, -np.inf, -3.0, -2.0, -1.0, -0.5]), size=(q, e))
  targets = rng.integers(0, e, q)
  known = []  # other true answers, sometimes with the target itself
  for t in targets:
    others = set(rng.choice(e, rng.integers(0, 6), replace=False).tolist())
    known.append(sorted(others | ({int(t)} if rng.random() < 0.5 else set())))
  indptr = np.concatenate([[0], np.cumsum([len(k) for k in known])])
  flat = np.concatenate([np.asarray(k, np.int64) for k in known])
  got = evaluate.filtered_ranks(scores, targets, indptr, flat)
  expected = [rank_reference(scores[i], targets[i], known[i]) for i in range(q)]
  np.testing.assert_allclose(got, expected)
  # An unreached target ranks below every reached, unfiltered entity.
  for i in np.flatnonzero(~np.isfinite(scores[np.arange(q), targets])):
    reached = sum(np.isfinite(scores[i, x]) and (x not in known[i]) for x in range(e))
    assert got[i] > reached


def test_ranking_metrics():
  m = evaluate.ranking_metrics(np.array([1.0, 2.5, 4.0, 11.0]), np.array([True, True, True, False]))
  assert m['mrr'] == pytest.approx((1 + 1 / 2.5 + 1 / 4 + 1 / 11) / 4)
  assert (m['hits@1'], m['hits@3'], m['hits@10'], m['reached'], m['queries']) == (0.25, 0.5, 0.75,
                                                                                  0.75, 4)


def tiny_kg(seed=0, num_entities=10, num_relations=2):
  rng = np.random.default_rng(seed)
  def triples(n):
    return np.stack([rng.integers(0, num_entities, n), rng.integers(0, num_relations, n),
                     rng.integers(0, num_entities, n)], axis=1).astype(np.int32)
  return kg_lib.KnowledgeGraph(entities=[f'ent_{i}' for i in range(num_entities)],
                               relations=[f'rel_{i}' for i in range(num_relations)],
                               train=triples(30), valid=triples(5), test=triples(7))


def direct_answer_stub(params, inputs_tiled, space):
  """Answers `t <eos>` only: step 0 logits = params[h, r] over entities, step 1 prefers <eos>."""
  h = inputs_tiled['head_token'] - space.entity_offset  # [N]
  r = inputs_tiled['relation_token'] - space.relation_offset  # [N]
  v = space.num_tokens

  def tokens_to_logits(actions, rtg, step):
    first = jnp.full((actions.shape[0], v), -30.0).at[:, space.entity_offset:].set(params[h, r])
    later = jnp.full((actions.shape[0], v), -30.0).at[:, kg_lib.EOS].set(0.0)
    return jnp.where(step == 0, first, later)  # [N, V]
  return tokens_to_logits


def stub_setup(kg, beam=None, batch_size=4, batch_sharding=None, direct_heads=None,
               answer_types=None, direct_relations=None):
  config = default.get_config()
  config.trajectories.max_hops = 1
  config.decode.beam_size = beam or kg.num_entities + 2
  config.decode.batch_size = batch_size
  config.decode.num_explanations = 3
  space = decode.TokenSpace.from_kg(kg)
  decode_fn = evaluate.make_decode_fn(
      lambda p, x: direct_answer_stub(p, x, space), space, beam_size=config.decode.beam_size,
      max_len=3, rtg_constants=rtg_lib.constants_from_config(config, kg.num_relations),
      direct_heads=direct_heads, answer_types=answer_types, batch_sharding=batch_sharding,
      direct_relations=direct_relations)
  rng = np.random.default_rng(1)
  table = rng.uniform(0, 5, (kg.num_entities, 2 * kg.num_relations, kg.num_entities))
  features = {'fig': np.zeros((kg.num_entities, 8), np.float32),
              'ocr': np.zeros((kg.num_entities, 3), np.float32),
              'fig_present': np.zeros(kg.num_entities, bool),
              'ocr_present': np.zeros(kg.num_entities, bool)}
  return config, decode_fn, jnp.asarray(table, jnp.float32), features


def test_evaluate_split_end_to_end_with_a_stub():
  kg = tiny_kg()
  config, decode_fn, table, features = stub_setup(kg)
  metrics, rows = evaluate.evaluate_split(decode_fn, table, kg, 'test', config, features,
                                          explain=True)
  by_relation = metrics.pop('by_relation')
  index = kg.filter_index()
  all_ranks = []
  for direction in ('tail', 'head'):
    ranks = []
    for h, r, t in kg.test:
      if direction == 'head':
        h, r, t = t, kg.inverse_relation(r), h
      ranks.append(rank_reference(np.asarray(table[h, r]), t, index[(h, r)]))
    all_ranks += ranks
    # Per-relation breakdown: the same ranks grouped by the triple's relation.
    for rid in np.unique(kg.test[:, 1]):
      expected = np.array(ranks)[kg.test[:, 1] == rid]
      got = by_relation[kg.relations[rid]][direction]
      assert got['queries'] == len(expected)
      assert got['mrr'] == pytest.approx(np.mean(1 / expected), rel=1e-6)
    m = metrics[direction]
    assert m['mrr'] == pytest.approx(np.mean(1 / np.array(ranks)), rel=1e-6)
    assert m['hits@1'] == pytest.approx(np.mean(np.array(ranks) <= 1))
    assert m['reached'] == 1.0 and m['queries'] == len(kg.test)
  assert metrics['both']['mrr'] == pytest.approx(np.mean(1 / np.array(all_ranks)), rel=1e-6)
  assert set(metrics) == {'tail', 'head', 'both'}
  assert all(set(evaluate.METRIC_KEYS) <= set(m) for m in metrics.values())
  # Explanations: the best answers of each query, as `t <eos>` paths, in names, best first.
  assert len(rows) == 2 * len(kg.test)
  h, r, _ = kg.test[0]
  best = np.argsort(-np.asarray(table[h, r]))[:3]
  assert [a['entity'] for a in rows[0]['answers']] == [kg.entities[e] for e in best]
  assert [a['path'] for a in rows[0]['answers']] == [[kg.entities[e]] for e in best]
  assert rows[0]['query'] == {'head': kg.entities[h], 'relation': kg.relation_name(r),
                              'answer': kg.entities[kg.test[0, 2]]}


def test_direct_answers_only_for_the_heads_allowed(caplog):
  kg = tiny_kg()
  kg.images = {'ent_1': ['/img/1.jpg'], 'ent_4': ['/img/4.jpg']}
  np.testing.assert_array_equal(kg.has_image(), np.isin(np.arange(kg.num_entities), [1, 4]))
  assert evaluate.direct_heads_mask(kg, 'all') is None
  no_images = tiny_kg()
  with caplog.at_level(logging.WARNING):  # a KG without images: said, not silently all-off
    assert not evaluate.direct_heads_mask(no_images, 'image_heads').any()
  assert 'no entity' in caplog.text
  with pytest.raises(ValueError, match='decode.direct_answers'):
    evaluate.direct_heads_mask(kg, 'images')
  _, decode_fn, table, features = stub_setup(
      kg, direct_heads=evaluate.direct_heads_mask(kg, 'image_heads'))
  queries = np.array([[1, 0, 0], [2, 0, 0], [4, 3, 0], [5, 1, 0]], np.int32)
  scores, result = decode_fn(table, evaluate.query_inputs(kg, queries, features), None)
  scores, result = np.asarray(scores), jax.device_get(result)
  for row, image in enumerate([True, False, True, False]):
    direct = (result.answer[row] >= 0) & (result.hops[row] == 0)
    assert direct.any() == image
    if image:  # the stub's step-0 distribution, exactly
      h, r = queries[row, :2]
      expected = jax.nn.log_softmax(table[h, r])
      np.testing.assert_allclose(scores[row], expected, rtol=1e-5, atol=1e-5)
    else:  # only `r e <eos>` paths; the stub's flat logits make them uniform: 1 / (2R · E) each
      np.testing.assert_allclose(scores[row], -np.log(2 * kg.num_relations * kg.num_entities),
                                 rtol=1e-5)


def test_direct_answers_only_for_relations_without_a_strong_rule(tmp_path):
  kg = tiny_kg()  # relations r0, r1; ids 0, 1 and inverses 2, 3
  rules = tmp_path / 'rules.json'
  rules.write_text(json.dumps({'rel_0': [[0.9, ['rel_1_inv']], [0.2, ['rel_1']]],
                               'rel_1_inv': [[0.3, ['rel_0']]], 'rel_1': []}))
  np.testing.assert_allclose(evaluate.best_rule_confidence(kg, str(rules)), [0.9, 0, 0, 0.3])
  allowed = evaluate.direct_relations_mask(kg, 0.5, str(rules))
  np.testing.assert_array_equal(allowed, [False, True, True, True])
  assert evaluate.direct_relations_mask(kg, 0.0, str(tmp_path / 'absent.json')) is None
  with pytest.raises(FileNotFoundError, match='absent.json'):
    evaluate.direct_relations_mask(kg, 0.5, str(tmp_path / 'absent.json'))
  with pytest.raises(ValueError, match='decode.direct_below_rule_confidence'):
    evaluate.direct_relations_mask(kg, 2.0, str(rules))
  with pytest.raises(ValueError, match='prepared folder'):
    evaluate.direct_relations_mask(kg, 0.5, None)
  rules.write_text(json.dumps({'nope': [[0.5, ['rel_0']]]}))
  with pytest.raises(KeyError, match='rules.json'):
    evaluate.best_rule_confidence(kg, str(rules))
  # Decoding: relation 0 answers only through paths, the others also directly; with direct heads
  # given too, both must allow it.
  kg.images = {'ent_1': ['/img/1.jpg']}
  _, decode_fn, table, features = stub_setup(kg, direct_relations=allowed,
                                             direct_heads=kg.has_image())
  queries = np.array([[1, 0, 0], [1, 1, 0], [1, 3, 0], [2, 1, 0]], np.int32)
  _, result = decode_fn(table, evaluate.query_inputs(kg, queries, features), None)
  result = jax.device_get(result)
  for row, direct in enumerate([False, True, True, False]):
    assert ((result.answer[row] >= 0) & (result.hops[row] == 0)).any() == direct


def test_type_match_separates_answer_types():
  names = ['ann', 'bob', 'cat', 'oslo', 'rome', 'lonely']
  triples = [('ann', 'likes', 'bob'), ('bob', 'likes', 'cat'), ('ann', 'lives_in', 'oslo'),
             ('bob', 'lives_in', 'rome'), ('cat', 'lives_in', 'oslo')]
  ids = {n: i for i, n in enumerate(names)}
  rels = ['likes', 'lives_in']
  train = np.array([(ids[h], rels.index(r), ids[t]) for h, r, t in triples], np.int32)
  kg = kg_lib.KnowledgeGraph(entities=names, relations=rels, train=train,
                             valid=train[:0], test=train[:0])
  match = evaluate.type_match(kg)  # [2R, E]; relation ids: likes 0, lives_in 1, likes⁻¹ 2, lives_in⁻¹ 3
  people, cities = [0, 1, 2], [3, 4]
  np.testing.assert_allclose(match[1, cities], 1.0)  # lives_in -> a city
  np.testing.assert_allclose(match[1, people], 0.0)
  np.testing.assert_allclose(match[3, cities], 0.0)  # lives_in⁻¹ -> a person
  assert np.all(match[3, people] > 0.5) and np.all(match[0, people] > 0.5)
  assert np.all(match[:, 5] == 1.0)  # no train edge: nothing known against it
  assert evaluate.answer_types_mask(kg, 0.0) is None
  np.testing.assert_array_equal(evaluate.answer_types_mask(kg, 0.5), match >= 0.5)
  with pytest.raises(ValueError, match='decode.min_type_match'):
    evaluate.answer_types_mask(kg, 1.5)
  with pytest.raises(ValueError, match='baseline.min_type_match'):
    evaluate.answer_types_mask(kg, -0.1, 'baseline.min_type_match')


def test_functional_mask_rules_out_entities_that_have_their_one_answer(monkeypatch):
  # sells: each item one shop (functional); likes: many-to-many. Relation ids: sells 0, likes 1,
  # sells⁻¹ 2, likes⁻¹ 3.
  shops, items = ['s0', 's1'], [f'i{k}' for k in range(6)]
  names = shops + items
  ids = {n: i for i, n in enumerate(names)}
  triples = [('i0', 'sold_by', 's0'), ('i1', 'sold_by', 's0'), ('i2', 'sold_by', 's1'),
             ('i3', 'sold_by', 's1'), ('i0', 'likes', 'i1'), ('i0', 'likes', 'i4'),
             ('i2', 'likes', 'i4'), ('i3', 'likes', 'i5')]
  rels = ['sold_by', 'likes']
  train = np.array([(ids[h], rels.index(r), ids[t]) for h, r, t in triples], np.int32)
  kg = kg_lib.KnowledgeGraph(entities=names, relations=rels, train=train,
                             valid=train[:0], test=train[:0])
  monkeypatch.setattr(evaluate, 'FUNCTIONAL_MIN_FACTS', 1)
  fun = evaluate.functionality(kg)
  np.testing.assert_allclose(fun, [1.0, 3 / 4, 2 / 4, 3 / 4])  # heads / facts, per relation
  mask = evaluate.functional_mask(kg, 0.9)
  # (shop, sold_by⁻¹, ?): the items with a shop already are ruled out, i4 / i5 (no shop) and the
  # entities sold_by says nothing about stay; every other query relation keeps every entity.
  np.testing.assert_array_equal(mask[2], [ids[n] not in (2, 3, 4, 5) for n in names])
  assert mask[[0, 1, 3]].all()
  assert evaluate.functional_mask(kg, 0.0) is None
  with pytest.raises(ValueError, match='decode.min_functionality'):
    evaluate.functional_mask(kg, 1.5)
  # Combined with the type order: both must hold; off when both are off.
  types = evaluate.answer_types_mask(kg, 0.5)
  np.testing.assert_array_equal(evaluate.first_answers_mask(kg, 0.5, 0.9), types & mask)
  np.testing.assert_array_equal(evaluate.first_answers_mask(kg, 0.0, 0.9), mask)
  assert evaluate.first_answers_mask(kg, 0.0, 0.0) is None
  with pytest.raises(ValueError, match='baseline.min_functionality'):
    evaluate.first_answers_mask(kg, 0.0, -1.0, 'baseline')
  # Below FUNCTIONAL_MIN_FACTS facts no relation counts as functional.
  monkeypatch.setattr(evaluate, 'FUNCTIONAL_MIN_FACTS', 5)
  assert evaluate.functional_mask(kg, 0.9).all()


def test_typed_first_shifts_only_the_untyped_group():
  scores = np.array([[-1.0, -5.0, -2.0, -np.inf, -0.5],
                     [-1.0, -2.0, -3.0, -4.0, -5.0],
                     [-3.0, -1.0, -np.inf, -2.0, -0.1]], np.float32)
  typed = np.array([[True, True, False, False, False],
                    [True, True, True, True, True],      # nothing to shift
                    [False, False, False, False, False]])  # nothing typed: unchanged
  out = np.asarray(evaluate.typed_first(scores, typed))
  np.testing.assert_array_equal(out[0, :2], scores[0, :2])
  assert out[0, 2] < -5.0 and out[0, 4] < -5.0 and out[0, 4] > out[0, 2]  # below, still in order
  assert out[0, 3] == -np.inf  # unreached stays unreached
  np.testing.assert_array_equal(out[1:], scores[1:])


def test_answer_types_rank_typed_entities_first_each_group_in_order():
  kg = tiny_kg()
  rng = np.random.default_rng(3)
  types = rng.random((2 * kg.num_relations, kg.num_entities)) < 0.5  # [2R, E]
  config, plain, table, features = stub_setup(kg)
  _, typed_fn, _, _ = stub_setup(kg, answer_types=types)
  queries = np.stack([kg.test[:, 0], kg.test[:, 1], kg.test[:, 2]], axis=1).astype(np.int32)[:4]
  inputs = evaluate.query_inputs(kg, queries, features)
  base, _ = plain(table, inputs, None)
  scores, _ = typed_fn(table, inputs, None)
  base, scores = np.asarray(base), np.asarray(scores)
  for row, (_, r, _) in enumerate(queries):
    inside = types[r]
    assert scores[row, inside].min() > scores[row, ~inside].max()
    np.testing.assert_array_equal(scores[row, inside], base[row, inside])
    for group in (inside, ~inside):  # the order inside each group is the untyped order
      np.testing.assert_array_equal(np.argsort(scores[row, group], kind='stable'),
                                    np.argsort(base[row, group], kind='stable'))


def test_small_beam_leaves_targets_unreached():
  kg = tiny_kg()
  beam = kg.num_entities // 2
  config, decode_fn, table, features = stub_setup(kg, beam=beam)
  metrics, _ = evaluate.evaluate_split(decode_fn, table, kg, 'test', config, features)
  # Exactly the `beam` best entities of step 0 are reached (`t <eos>`; the grammar allows nothing
  # after a step-0 entity but <eos>, and `r e <eos>` paths score -30 per token under the stub).
  in_top = [t in np.argsort(-np.asarray(table[h, r]))[:beam] for h, r, t in kg.test]
  assert 0.0 < metrics['tail']['reached'] < 1.0
  assert metrics['tail']['reached'] == pytest.approx(np.mean(in_top))
  in_top3 = [t in np.argsort(-np.asarray(table[h, r]))[:3] for h, r, t in kg.test]
  assert metrics['tail']['hits@3'] >= np.mean(in_top3)  # filtering only moves targets up


def test_sharded_decode_equals_unsharded():
  kg = tiny_kg()
  mesh = jax.make_mesh((len(jax.devices()),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  n = len(jax.devices())
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  config, plain, table, features = stub_setup(kg, batch_size=n)
  _, sharded, _, _ = stub_setup(kg, batch_size=n, batch_sharding=sharding)
  a, _ = evaluate.evaluate_split(plain, table, kg, 'test', config, features)
  b, _ = evaluate.evaluate_split(sharded, table, kg, 'test', config, features)
  assert a == b


def test_predict_and_files(tmp_path):
  kg = tiny_kg()
  config, decode_fn, table, features = stub_setup(kg)
  h, r, _ = kg.train[0]
  query = f'{kg.entities[h]}|{kg.relation_name(r)}'
  answers = evaluate.predict(decode_fn, table, kg, query, config, features)
  assert [a['rank'] for a in answers] == [1, 2, 3]
  best = np.argsort(-np.asarray(table[h, r]))[:3]
  assert [a['entity'] for a in answers] == [kg.entities[e] for e in best]
  known = {kg.entities[t] for t in kg.filter_index()[(h, r)]}
  assert all(a['known'] == (a['entity'] in known) for a in answers)
  text = evaluate.format_predictions(query, answers)
  assert answers[0]['entity'] in text and 'path:' in text
  with pytest.raises(ValueError, match='HEAD|RELATION'):
    evaluate.parse_query(kg, 'no separator')
  with pytest.raises(KeyError, match='unknown relation'):
    evaluate.parse_query(kg, f'{kg.entities[0]}|nope')
  assert evaluate.parse_query(kg, 'ent_3|rel_1_inv') == (3, 3)

  metrics = {split: evaluate.evaluate_split(decode_fn, table, kg, split, config, features)[0]
             for split in ('valid', 'test')}
  with open(evaluate.write_metrics(str(tmp_path), metrics)) as f:
    loaded = json.load(f)
  assert set(loaded) == {'valid', 'test'}
  for split in loaded.values():
    assert set(split) == {'tail', 'head', 'both'}
    assert all(set(evaluate.METRIC_KEYS) <= set(m) for m in split.values())
  path = evaluate.write_explanations(str(tmp_path), [{'a': 1}, {'b': 'ü'}])
  with open(path, encoding='utf-8') as f:
    assert [json.loads(line) for line in f] == [{'a': 1}, {'b': 'ü'}]
  assert 'mrr' in evaluate.format_metrics(loaded)


def test_eval_splits_parses_and_rejects():
  config = default.get_config()
  assert evaluate.eval_splits(config) == ('valid', 'test')
  config.decode.splits = ' test '
  assert evaluate.eval_splits(config) == ('test',)
  for bad in ('', 'train', 'test,dev'):
    config.decode.splits = bad
    with pytest.raises(ValueError, match='decode.splits'):
      evaluate.eval_splits(config)
