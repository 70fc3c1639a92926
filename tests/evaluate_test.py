"""Tests of the evaluation layer: ranking (vs brute force), priors, explanations, the decoder of a
batch of queries (stub models), and evaluate.Evaluator end to end."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from imkga_jax import decode
from imkga_jax import evaluate
from imkga_jax import evaluator as evaluator_lib
from imkga_jax import explain
from imkga_jax import kg as kg_lib
from imkga_jax import prepared
from imkga_jax import priors as priors_lib
from imkga_jax import ranking
from imkga_jax import rtg as rtg_lib
from imkga_jax import step_models


# ============================================================================ folding paths
def empty_state(b, e, length=3):
  return decode.BeamState(
      logprob=jnp.zeros((b, 1)), seqs=jnp.zeros((b, 1, length), jnp.int32),
      rtg=jnp.zeros((b, 1)), hops=jnp.zeros((b, 1), jnp.int32), cache=None,
      direct=jnp.full((b, e), -jnp.inf),
      score=jnp.full((b, e), -jnp.inf), best=jnp.full((b, e), -jnp.inf),
      path=jnp.zeros((b, e, length), jnp.int32))


def test_folded_max_is_a_scatter_max_with_its_path():
  rng = np.random.default_rng(0)
  answer = rng.integers(-1, 6, (3, 40))
  score = rng.normal(size=(3, 40)).astype(np.float32)
  seqs = rng.integers(4, 20, (3, 40, 3)).astype(np.int32)
  hops = jnp.ones(answer.shape, jnp.int32)
  got = decode._fold_sparse(empty_state(3, 6), jnp.asarray(answer), jnp.asarray(score), hops,
                            jnp.asarray(seqs), 'max')
  expected = np.full((3, 6), -np.inf, np.float32)
  for b in range(3):
    for i, (a, s) in enumerate(zip(answer[b], score[b])):
      if a >= 0 and s > expected[b, a]:
        expected[b, a] = s
        np.testing.assert_array_equal(np.asarray(got.path[b, a]), seqs[b, np.flatnonzero(
            (answer[b] == a) & (score[b] == score[b][answer[b] == a].max()))[0]])
  np.testing.assert_array_equal(np.asarray(got.score), expected)
  np.testing.assert_array_equal(np.asarray(got.best), expected)


def test_folded_sum_is_a_per_entity_logsumexp():
  rng = np.random.default_rng(1)
  answer = rng.integers(-1, 6, (3, 40))
  logprob = rng.normal(-60.0, 30.0, size=(3, 40)).astype(np.float32)  # exp() underflows alone
  logprob[0, :5] = -np.inf  # endings that never filled
  seqs = jnp.zeros((3, 40, 3), jnp.int32)
  # Folded in two halves: the aggregate over both is the aggregate of all.
  state = empty_state(3, 6)
  for part in (slice(0, 25), slice(25, 40)):
    state = decode._fold_sparse(state, jnp.asarray(answer[:, part]), jnp.asarray(logprob[:, part]),
                                jnp.zeros((3, part.stop - part.start), jnp.int32), seqs[:, part],
                                'sum')
  expected = np.full((3, 6), -np.inf)
  for b in range(3):
    for e in range(6):
      terms = logprob[b][(answer[b] == e) & np.isfinite(logprob[b])].astype(np.float64)
      if len(terms):
        expected[b, e] = np.logaddexp.reduce(terms)
  np.testing.assert_allclose(np.asarray(state.score), expected, rtol=1e-5)
  # Two paths of equal probability outrank one: log 2 above it.
  two = decode._fold_sparse(empty_state(1, 2), jnp.asarray([[0, 0, 1]]), jnp.full((1, 3), -3.0),
                            jnp.asarray([[0, 1, 0]]), jnp.zeros((1, 3, 3), jnp.int32), 'sum')
  np.testing.assert_allclose(np.asarray(two.score)[0], [-3.0 + np.log(2.0), -3.0], rtol=1e-6)
  # Only the path of a hop explains: entity 0's, not the direct answers of entities 0 and 1.
  np.testing.assert_allclose(np.asarray(two.best)[0], [-3.0, -np.inf])
  # 'sum' never let the explanation replace the aggregate.
  assert np.all(np.isinf(np.asarray(state.best)))


def test_unknown_aggregation_is_refused_naming_the_key():
  space = kg_lib.TokenSpace(num_relations=1, num_entities=3)
  constants = rtg_lib.RtgConstants(1.0, -1.0, -0.1, space=space)
  with pytest.raises(ValueError, match='decode.aggregation'):  # when built, before any decoding
    decode.make_decode_fn(lambda p, x: None, space, beam_size=2, max_len=3,
                          rtg_constants=constants, aggregation='mean')


# ============================================================================ ranking
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
  got = ranking.filtered_ranks(scores, targets, indptr, flat)
  expected = [rank_reference(scores[i], targets[i], known[i]) for i in range(q)]
  np.testing.assert_allclose(got, expected)
  # An unreached target ranks below every reached, unfiltered entity.
  for i in np.flatnonzero(~np.isfinite(scores[np.arange(q), targets])):
    reached = sum(np.isfinite(scores[i, x]) and (x not in known[i]) for x in range(e))
    assert got[i] > reached


def test_ranking_metrics():
  m = ranking.ranking_metrics(np.array([1.0, 2.5, 4.0, 11.0]), np.array([True, True, True, False]))
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


def test_rank_split_pads_batches_and_reports_each_direction():
  kg = tiny_kg()
  rng = np.random.default_rng(2)
  table = rng.normal(size=(kg.num_entities, 2 * kg.num_relations, kg.num_entities))
  shapes = []

  def score_fn(queries):
    shapes.append(queries.shape)
    return table[queries[:, 0], queries[:, 1]]

  seen = []
  ranked = ranking.rank_split(score_fn, kg, 'test', batch_size=4,
                              on_batch=lambda d, q, s, r, x: seen.append((d, len(q))))
  assert set(shapes) == {(4, 3)}  # one compiled shape, the last batch padded
  assert seen == [('tail', 4), ('tail', 3), ('head', 4), ('head', 3)]
  index = kg.filter_index()
  for direction, queries in ranking.direction_queries(kg, 'test').items():
    expected = [rank_reference(table[h, r], t, index[(h, r)]) for h, r, t in queries]
    np.testing.assert_allclose(ranked[direction]['ranks'], expected)
  metrics = ranking.summarize(kg, ranked)
  assert {'tail', 'head', 'both', 'by_relation'} == set(metrics)
  assert metrics['both']['queries'] == 2 * len(kg.test)
  text = ranking.format_metrics({'test': metrics})
  assert 'mrr' in text and 'both' in text


# ============================================================================ priors
def test_type_match_separates_answer_types():
  names = ['ann', 'bob', 'cat', 'oslo', 'rome', 'lonely']
  triples = [('ann', 'likes', 'bob'), ('bob', 'likes', 'cat'), ('ann', 'lives_in', 'oslo'),
             ('bob', 'lives_in', 'rome'), ('cat', 'lives_in', 'oslo')]
  ids = {n: i for i, n in enumerate(names)}
  rels = ['likes', 'lives_in']
  train = np.array([(ids[h], rels.index(r), ids[t]) for h, r, t in triples], np.int32)
  kg = kg_lib.KnowledgeGraph(entities=names, relations=rels, train=train,
                             valid=train[:0], test=train[:0])
  match = priors_lib.type_match(kg)  # [2R, E]; relation ids: likes 0, lives_in 1, likes⁻¹ 2, lives_in⁻¹ 3
  people, cities = [0, 1, 2], [3, 4]
  np.testing.assert_allclose(match[1, cities], 1.0)  # lives_in -> a city
  np.testing.assert_allclose(match[1, people], 0.0)
  np.testing.assert_allclose(match[3, cities], 0.0)  # lives_in⁻¹ -> a person
  assert np.all(match[3, people] > 0.5) and np.all(match[0, people] > 0.5)
  assert np.all(match[:, 5] == 1.0)  # no train edge: nothing known against it
  assert priors_lib.Priors.from_names(kg, ()).table is None
  np.testing.assert_array_equal(priors_lib.Priors.from_names(kg, ('answer_type=0.5',)).table,
                                match >= 0.5)
  for bad in ('answer_type=1.5', 'answer_type=x', 'answer_type', 'colour=0.5'):
    with pytest.raises(ValueError, match='ranking.priors'):
      priors_lib.Priors.from_names(kg, (bad,))


def test_functional_inverse_rules_out_entities_that_have_their_one_answer(monkeypatch):
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
  monkeypatch.setattr(priors_lib, 'FUNCTIONAL_MIN_FACTS', 1)
  fun = priors_lib.functionality(kg)
  np.testing.assert_allclose(fun, [1.0, 3 / 4, 2 / 4, 3 / 4])  # heads / facts, per relation
  mask = priors_lib.FunctionalInverse(0.9).first(kg)
  # (shop, sold_by⁻¹, ?): the items with a shop already are ruled out, i4 / i5 (no shop) and the
  # entities sold_by says nothing about stay; every other query relation keeps every entity.
  np.testing.assert_array_equal(mask[2], [ids[n] not in (2, 3, 4, 5) for n in names])
  assert mask[[0, 1, 3]].all()
  with pytest.raises(ValueError, match='ranking.priors'):
    priors_lib.FunctionalInverse(1.5).first(kg)
  # Combined with the type order: both must hold.
  both = priors_lib.Priors.from_names(kg, ('answer_type=0.5', 'functional_inverse=0.9'))
  np.testing.assert_array_equal(both.table, (priors_lib.type_match(kg) >= 0.5) & mask)
  # Below FUNCTIONAL_MIN_FACTS facts no relation counts as functional.
  monkeypatch.setattr(priors_lib, 'FUNCTIONAL_MIN_FACTS', 5)
  assert priors_lib.FunctionalInverse(0.9).first(kg).all()


def test_typed_first_shifts_only_the_untyped_group():
  scores = np.array([[-1.0, -5.0, -2.0, -np.inf, -0.5],
                     [-1.0, -2.0, -3.0, -4.0, -5.0],
                     [-3.0, -1.0, -np.inf, -2.0, -0.1]], np.float32)
  typed = np.array([[True, True, False, False, False],
                    [True, True, True, True, True],      # nothing to shift
                    [False, False, False, False, False]])  # nothing typed: unchanged
  out = np.asarray(priors_lib.typed_first(scores, typed))
  np.testing.assert_array_equal(out[0, :2], scores[0, :2])
  assert out[0, 2] < -5.0 and out[0, 4] < -5.0 and out[0, 4] > out[0, 2]  # below, still in order
  assert out[0, 3] == -np.inf  # unreached stays unreached
  np.testing.assert_array_equal(out[1:], scores[1:])


def test_priors_rank_their_entities_first_each_group_in_order():
  kg = tiny_kg()
  rng = np.random.default_rng(3)
  types = rng.random((2 * kg.num_relations, kg.num_entities)) < 0.5  # [2R, E]
  priors = priors_lib.Priors(names=('random',), table=types)
  base = rng.normal(size=(4, kg.num_entities)).astype(np.float32)
  relations = kg.test[:4, 1]
  scores = priors.apply(base, relations)
  for row, r in enumerate(relations):
    inside = types[r]
    assert scores[row, inside].min() > scores[row, ~inside].max()
    np.testing.assert_array_equal(scores[row, inside], base[row, inside])
    for group in (inside, ~inside):  # the order inside each group is the untyped order
      np.testing.assert_array_equal(np.argsort(scores[row, group], kind='stable'),
                                    np.argsort(base[row, group], kind='stable'))


# ============================================================================ a stub model
def direct_answer_stub(params, space, max_len):
  """A `step_model` factory that answers `t <eos>`: step 0 logits = params[h, r] over entities,
  every later step prefers <eos>."""
  v = space.num_tokens

  def tokens_to_logits(actions, rtg, step, context):
    h = space.token_to_entity(context['head_token'])  # [N]
    r = space.token_to_relation(context['relation_token'])  # [N]
    if step == 0:
      return jnp.full((actions.shape[0], v), -30.0).at[:, space.entity_offset:].set(params[h, r])
    return jnp.full((actions.shape[0], v), -30.0).at[:, kg_lib.EOS].set(0.0)
  return lambda p, context: step_models.history_step_model(tokens_to_logits, max_len, context)


def features_of(kg):
  return {'fig': np.zeros((kg.num_entities, 8), np.float32),
          'ocr': np.zeros((kg.num_entities, 3), np.float32),
          'fig_present': np.zeros(kg.num_entities, bool),
          'ocr_present': np.zeros(kg.num_entities, bool),
          'mentions': np.full((kg.num_entities, 0), -1, np.int32)}


def stub_evaluator(kg, beam=None, batch_size=4, batch_sharding=None, direct=None, priors=()):
  config = default.get_config()
  config.trajectories.max_hops = 1
  config.decode.beam_size = beam or kg.num_entities + 2
  config.decode.batch_size = batch_size
  config.decode.num_explanations = 3
  config.ranking.priors = priors
  space = kg.space
  rng = np.random.default_rng(1)
  table = jnp.asarray(rng.uniform(0, 5, (kg.num_entities, 2 * kg.num_relations, kg.num_entities)),
                      jnp.float32)
  decode_fn = decode.make_decode_fn(
      direct_answer_stub(table, space, 3), space, beam_size=config.decode.beam_size, max_len=3,
      rtg_constants=rtg_lib.constants_from_config(config, space), direct=direct,
      batch_sharding=batch_sharding)
  return evaluator_lib.Evaluator(config, kg, table, features_of(kg), decode_fn), table


def test_evaluation_end_to_end_with_a_stub():
  kg = tiny_kg()
  evaluator, table = stub_evaluator(kg)
  rows = []
  metrics = evaluator.split('test', rows)
  by_relation = metrics.pop('by_relation')
  paths = metrics.pop('paths')
  index = kg.filter_index()
  all_ranks = []
  for direction in ('tail', 'head'):
    ranks = []
    for h, r, t in kg.test:
      if direction == 'head':
        h, r, t = t, kg.space.inverse_relation(r), h
      # The stub's direct answers get exactly the step-0 distribution: log-softmax of table[h, r].
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
  assert all(set(ranking.METRIC_KEYS) <= set(m) for m in metrics.values())
  # Every top-1 answer is reached by the direct form and also, with the stub's -30 logits, by some
  # path of a hop: it is explained by that path, which carries next to none of its probability.
  assert paths['top1_queries'] == 2 * len(kg.test) and paths['path_share'] == 1.0
  # Explanations: the best answers of each query, in names, best first.
  assert len(rows) == 2 * len(kg.test)
  h, r, _ = kg.test[0]
  best = np.argsort(-np.asarray(table[h, r]))[:3]
  assert [a['entity'] for a in rows[0]['answers']] == [kg.entities[e] for e in best]
  assert all(a['path'][-1] == a['entity'] and a['hops'] >= 1 and a['support'] < 1e-6
             for a in rows[0]['answers'])
  assert rows[0]['query'] == {'head': kg.entities[h], 'relation': kg.relation_name(r),
                              'answer': kg.entities[kg.test[0, 2]]}


def test_small_beam_leaves_targets_unreached():
  kg = tiny_kg()
  beam = kg.num_entities // 2
  evaluator, table = stub_evaluator(kg, beam=beam)
  metrics = evaluator.split('test')
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
  plain, _ = stub_evaluator(kg, batch_size=n)
  sharded, _ = stub_evaluator(kg, batch_size=n, batch_sharding=sharding)
  assert plain.split('test') == sharded.split('test')


def test_priors_apply_to_the_ranked_scores():
  kg = tiny_kg()
  plain, table = stub_evaluator(kg)
  typed, _ = stub_evaluator(kg, priors=('answer_type=0.3',))  # parsed from the config ...
  assert typed.priors.names == ('answer_type=0.3',) and typed.priors.table is not None
  first = np.random.default_rng(5).random((2 * kg.num_relations, kg.num_entities)) < 0.5
  typed.priors = priors_lib.Priors(('random',), first)  # ... and one that moves many ranks
  a, b = plain.split('test'), typed.split('test')
  index = kg.filter_index()
  ranks = [rank_reference(priors_lib.typed_first(np.asarray(table[h, r])[None], first[r][None])[0],
                          t, index[(h, r)]) for h, r, t in kg.test]
  assert b['tail']['mrr'] == pytest.approx(np.mean(1 / np.array(ranks)), rel=1e-6)
  assert a['tail']['mrr'] != b['tail']['mrr']


# ============================================================================ who may answer directly
def test_direct_table_follows_what_preparation_decided(tmp_path, caplog):
  kg = tiny_kg()  # relations r0, r1; ids 0, 1 and inverses 2, 3
  kg.images = {'ent_1': ['/img/1.jpg'], 'ent_4': ['/img/4.jpg']}
  np.testing.assert_array_equal(kg.has_image(), np.isin(np.arange(kg.num_entities), [1, 4]))
  config = default.get_config()
  folder = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='format.json'):
    prepared.direct_table(kg, folder)
  prepared.write_format(folder, config)  # the default: the direct form for every query
  assert prepared.direct_table(kg, folder).all()
  config.trajectories.also_direct = 'image_heads'
  prepared.write_format(folder, config)
  np.testing.assert_array_equal(prepared.direct_table(kg, folder),
                                np.broadcast_to(kg.has_image(), (4, kg.num_entities)))
  config.trajectories.also_direct = 'none'  # the direct form for the ungrounded queries
  prepared.write_format(folder, config)
  assert prepared.direct_table(kg, folder).all()


def test_decoding_offers_the_direct_form_only_where_allowed():
  kg = tiny_kg()
  direct = np.zeros((2 * kg.num_relations, kg.num_entities), bool)
  direct[0, 1] = direct[3, 4] = True  # (ent_1, rel_0) and (ent_4, rel_1⁻¹)
  evaluator, table = stub_evaluator(kg, direct=direct)
  queries = np.array([[1, 0, 0], [2, 0, 0], [4, 3, 0], [5, 1, 0]], np.int32)
  scores, result = evaluator.score(queries)
  for row, ok in enumerate([True, False, True, False]):
    assert np.any(result.score[row] > result.best[row] + 1e-6) == ok  # a direct answer counted
    if ok:  # the stub's step-0 distribution, exactly
      h, r = queries[row, :2]
      np.testing.assert_allclose(scores[row], jax.nn.log_softmax(table[h, r]), rtol=1e-5,
                                 atol=1e-5)
    else:  # only `r e <eos>` paths; the stub's flat logits make them uniform: 1 / (2R · E) each
      np.testing.assert_allclose(scores[row], -np.log(2 * kg.num_relations * kg.num_entities),
                                 rtol=1e-5)


def test_wide_finishing_keeps_queries_apart():
  """finish_width > beam: the extra model call sees each query's own context (a per-query stub), so a
  batch decodes as its queries one by one; wider finishing only adds finished paths ('max')."""
  kg = tiny_kg()
  space = kg.space
  rng = np.random.default_rng(4)
  table = jnp.asarray(rng.normal(size=(kg.num_entities, 2 * kg.num_relations, space.num_tokens)),
                      jnp.float32)

  def factory(params, context):
    def tokens_to_logits(actions, rtg, step, tiled):
      h = space.token_to_entity(tiled['head_token'])  # [N]
      r = space.token_to_relation(tiled['relation_token'])  # [N]
      return params[h, r] + 0.5 * jnp.sin(step + actions[:, :1])  # [N, V]
    return step_models.history_step_model(tokens_to_logits, 5, context)

  constants = rtg_lib.constants_from_config(default.get_config(), space)
  queries = np.concatenate([kg.test[:4, :2], np.zeros((4, 1), np.int32)], axis=1)

  def run(width, rows):
    fn = decode.make_decode_fn(factory, space, beam_size=2, max_len=5, rtg_constants=constants,
                               finish_width=width)
    return np.asarray(fn(table, features_of(kg), jnp.asarray(queries[rows])).score)

  wide = run(12, slice(0, 4))
  for i in range(4):
    np.testing.assert_allclose(wide[i], run(12, slice(i, i + 1))[0], rtol=1e-5)
  plain = run(0, slice(0, 4))
  reached = np.isfinite(plain)
  assert np.all(np.isfinite(wide[reached])) and np.all(wide[reached] >= plain[reached] - 1e-5)
  assert np.isfinite(wide).sum() > reached.sum()


# ============================================================================ explanations
def test_answers_follow_the_scores_with_their_paths():
  kg = kg_lib.KnowledgeGraph(entities=['a', 'b', 'c'], relations=['r'],
                             train=np.asarray([[0, 0, 1], [1, 0, 2]], np.int32),
                             valid=np.zeros((0, 3), np.int32), test=np.zeros((0, 3), np.int32))
  eos, e, r = kg_lib.EOS, kg.space.entity_offset, kg.space.relation_offset
  path = np.asarray([[0, 0, 0, 0, 0], [e + 1, eos, 0, 0, 0], [r, e + 1, r, e + 2, eos]])
  score = np.asarray([-np.inf, -1.0, -0.5])
  rows = explain.answers(kg, score, path, 5, explain.support(score, np.asarray([0.0, -np.inf, -1.5])))
  assert [(a['entity'], a['score'], a['hops']) for a in rows] == [('c', -0.5, 2), ('b', -1.0, 0)]
  assert rows[0]['path'] == ['r', 'b', 'r', 'c'] and rows[1]['path'] == ['b']  # b: direct only
  assert rows[0]['support'] == pytest.approx(np.exp(-1.0)) and rows[1]['support'] == 0.0
  assert len(explain.answers(kg, score, path, 1)) == 1
  edges = explain.TrainEdges(kg)
  np.testing.assert_array_equal(edges.contains(np.asarray([[0, 0, 1], [1, 1, 0], [0, 0, 2]])),
                                [True, True, False])  # relation 1 is r⁻¹
  assert edges.faithful(0, path[2], kg.space)  # a -r-> b -r-> c
  assert not edges.faithful(1, path[2], kg.space) and not edges.faithful(0, path[1], kg.space)
  stats = explain.PathStats()
  unreached = np.full(3, -np.inf)
  stats.add(edges, kg.space, np.asarray([0, 0, 2]), np.stack([score, score[[0, 2, 1]], unreached]),
            np.stack([path, path, path]))
  assert stats.as_dict() == {'top1_queries': 2, 'path_share': 0.5, 'faithful_share': 1.0}


def test_predict_and_files(tmp_path):
  kg = tiny_kg()
  evaluator, table = stub_evaluator(kg)
  h, r, _ = kg.train[0]
  query = f'{kg.entities[h]}|{kg.relation_name(r)}'
  answers = evaluator.predict(query)
  assert [a['rank'] for a in answers] == [1, 2, 3]
  best = np.argsort(-np.asarray(table[h, r]))[:3]
  assert [a['entity'] for a in answers] == [kg.entities[e] for e in best]
  known = {kg.entities[t] for t in kg.filter_index()[(h, r)]}
  assert all(a['known'] == (a['entity'] in known) for a in answers)
  text = explain.format_predictions(query, answers)
  assert answers[0]['entity'] in text and 'path:' in text
  with pytest.raises(ValueError, match='HEAD|RELATION'):
    evaluator_lib.parse_query(kg, 'no separator')
  with pytest.raises(KeyError, match='unknown relation'):
    evaluator_lib.parse_query(kg, f'{kg.entities[0]}|nope')
  assert evaluator_lib.parse_query(kg, 'ent_3|rel_1_inv') == (3, 3)
  path = os.path.join(str(tmp_path), 'x.jsonl')
  explain.write_jsonl(path, [{'a': 1}, {'b': 'ü'}])
  assert explain.read_jsonl(path) == [{'a': 1}, {'b': 'ü'}]


def test_eval_splits_parses_and_rejects():
  config = default.get_config()
  assert evaluate.eval_splits(config) == ('valid', 'test')
  config.decode.splits = ' test '
  assert evaluate.eval_splits(config) == ('test',)
  for bad in ('', 'train', 'test,dev'):
    config.decode.splits = bad
    with pytest.raises(ValueError, match='decode.splits'):
      evaluate.eval_splits(config)


@pytest.mark.parametrize('complete_direct', [True, False])
def test_build_decoder_passes_every_decode_key(tmp_path, monkeypatch, complete_direct):
  """Each `decode.*` key that `make_decode_fn` takes reaches it with the config's value (the
  direct answers are scored apart only when `decode.complete_direct` says so)."""
  import inspect  # pylint: disable=g-import-not-at-top
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  kg = tiny_kg()
  config = default.get_config('smoke')
  config.model.variant = 'rl'
  config.features.enabled = False
  config.decode.complete_direct = complete_direct
  config.decode.finish_width = 96
  prepared.write_format(str(tmp_path), config)
  seen = {}
  real = decode.make_decode_fn

  def spy(*args, **kwargs):
    seen.update(kwargs)
    return real(*args, **kwargs)

  monkeypatch.setattr(decode, 'make_decode_fn', spy)
  model = imkga.build_model(config, kg.space.num_tokens)
  fn = evaluator_lib.build_decoder(model, kg, config, str(tmp_path))
  # direct_weight: the Evaluator mixes the two parts on the host (it may choose it on valid).
  keys = [k for k in inspect.signature(real).parameters if k in config.decode and k != 'direct_weight']
  assert {'beam_size', 'finish_width', 'complete_last', 'complete_direct', 'aggregation',
          'length_norm'} <= set(keys)
  assert {k: seen[k] for k in keys} == {k: config.decode[k] for k in keys}
  params = model.init(jax.random.key(0), imkga.dummy_inputs(model.config, 2))['params']
  table = {k: jnp.asarray(v) for k, v in features_of(kg).items()}
  result = fn(params, table, jnp.asarray(kg.valid[:4], jnp.int32))
  assert bool(np.isfinite(np.asarray(result.direct)).all()) == complete_direct
