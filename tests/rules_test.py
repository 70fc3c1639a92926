"""Rule mining and path grounding on hand-built KGs whose rules are known (data_prep/rules.py)."""
import json

import numpy as np
import pytest

from configs import default
from data_prep import grounding
from data_prep import rules
from data_prep import train_graph
from imkga_jax import kg as kg_lib
from imkga_jax import readers


def make_kg(named_triples):
  """A KnowledgeGraph from (head, relation, tail) names; valid/test reuse one train triple."""
  entities = sorted({x for h, _, t in named_triples for x in (h, t)})
  relations = sorted({r for _, r, _ in named_triples})
  e, r = {n: i for i, n in enumerate(entities)}, {n: i for i, n in enumerate(relations)}
  ids = np.asarray([[e[h], r[rel], e[t]] for h, rel, t in named_triples], np.int32)
  return kg_lib.KnowledgeGraph(entities, relations, train=ids, valid=ids[:1], test=ids[:1])


def small_config(**rules_overrides):
  config = default.get_config()
  config.rules.num_walks = 4000
  for key, value in rules_overrides.items():
    config.rules[key] = value
  return config


def named_rules(kg, ruleset):
  return {kg.relation_name(h): {tuple(kg.relation_name(b) for b in body): c for c, body in v}
          for h, v in ruleset.rules.items()}


def composition_kg():
  """ships_from = sold_by ∘ located_in exactly; 12 products, 4 shops, 2 regions."""
  triples = []
  for p in range(12):
    shop, region = p % 4, (p % 4) % 2
    triples += [(f'p{p}', 'sold_by', f's{shop}'), (f'p{p}', 'ships_from', f'g{region}')]
  triples += [(f's{s}', 'located_in', f'g{s % 2}') for s in range(4)]
  return make_kg(triples)


def chain_kg():
  """r(x, y) holds exactly when x -a-> u -b-> v -c-> y; ten disjoint chains."""
  triples = []
  for i in range(10):
    triples += [(f'x{i}', 'a', f'u{i}'), (f'u{i}', 'b', f'v{i}'), (f'v{i}', 'c', f'y{i}'),
                (f'x{i}', 'r', f'y{i}')]
  return make_kg(triples)


@pytest.mark.parametrize('dense_max_entities', [256, 0])  # dense exact scorer, sparse scorer
def test_two_hop_composition(dense_max_entities):
  kg = composition_kg()
  ruleset = rules.mine_rules(kg, small_config(dense_max_entities=dense_max_entities))
  found = named_rules(kg, ruleset)
  assert found['ships_from'][('sold_by', 'located_in')] == pytest.approx(1.0)
  # The reversed rule answers the inverse head with the same confidence.
  assert found['ships_from_inv'][('located_in_inv', 'sold_by_inv')] == pytest.approx(1.0)
  best_conf, best_body = ruleset.rules[kg.relation_id('ships_from')][0]
  assert best_conf == pytest.approx(1.0) and len(best_body) == 2


def test_dense_and_sparse_scorers_agree_when_not_sampling():
  kg = chain_kg()
  dense = rules.mine_rules(kg, small_config(dense_max_entities=256))
  sparse = rules.mine_rules(kg, small_config(dense_max_entities=0, sample_rows=10_000))
  assert dense.rules == sparse.rules


def brute_force_scores(graph, body):
  """Distinct-entity groundings of `body` by enumeration: (support per head [2R], predicted)."""
  pairs = set()
  def walk(path, rels):
    if not rels:
      if path[-1] != path[0]:
        pairs.add((path[0], path[-1]))
      return
    lo, hi = graph.neighbour_range(path[-1], rels[0])
    for nxt in graph.dst[lo:hi]:
      if nxt not in path:
        walk(path + [int(nxt)], rels[1:])
  for x in range(graph.num_entities):
    walk([x], list(body))
  support = np.zeros(graph.num_relations2)
  for x, y in pairs:
    for h in range(graph.num_relations2):
      support[h] += graph.has_edge(x, h, y)
  return support, len(pairs)


def test_scorers_match_brute_force_on_a_random_graph():
  rng = np.random.default_rng(0)
  triples = {(int(rng.integers(9)), int(rng.integers(3)), int(rng.integers(9))) for _ in range(40)}
  triples = np.asarray(sorted(triples), np.int64)
  graph = train_graph.TrainGraph(triples, 9, 3)
  dense = rules._DenseGraph(graph)
  bodies = [(a,) for a in range(6)] + [(a, b) for a in range(6) for b in range(6)]
  bodies += [(a, b, c) for a in range(6) for b in range(6) for c in range(6)]
  for body in bodies:
    want_support, want_pred = brute_force_scores(graph, body)
    lasts = np.asarray([body[-1]])
    if len(body) > 1:
      s, p = rules._score_dense(graph, dense, body[:-1], lasts)
      np.testing.assert_allclose(s[0], want_support, err_msg=str(body))
      assert p[0] == want_pred, body
      s, p = rules._score_sparse(graph, body[:-1], lasts, rng, 100, 10**6)
      np.testing.assert_allclose(s[0], want_support, err_msg=str(body))
      assert p[0] == want_pred, body
  bodies1, support1, pred1 = rules._length1_scores(graph)
  for (a,) in bodies1.tolist():
    want_support, want_pred = brute_force_scores(graph, (a,))
    want_support[a] = 0  # a pair never supports r <- r
    np.testing.assert_allclose(support1[a], want_support)
    assert pred1[a] == want_pred


def test_symmetric_relation():
  couples = [(f'm{i}', f'w{i}') for i in range(6)]
  triples = [(a, 'married', b) for a, b in couples] + [(b, 'married', a) for a, b in couples]
  triples += [(f'm{i}', 'likes', f'w{(i + 1) % 6}') for i in range(6)]
  kg = make_kg(triples)
  found = named_rules(kg, rules.mine_rules(kg, small_config()))
  assert found['married'][('married_inv',)] == pytest.approx(1.0)
  assert ('married',) not in found['married']  # r <- r is no rule
  # A married pair's own edge is not a grounding: the path uses the reverse fact.
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  queries = kg.with_inverses('train')
  paths = grounding.ground_paths(graph, rules.mine_rules(kg, small_config()), queries,
                             paths_per_triple=4)
  married = kg.relation_id('married')
  for q, rel, hops in zip(paths.query, paths.relations, paths.hops):
    if queries[q, 1] == married and hops == 1:
      assert rel[0] == married + kg.num_relations  # married_inv, the other edge


def test_three_hop_chain_rule_and_grounding():
  kg = chain_kg()
  ruleset = rules.mine_rules(kg, small_config())
  found = named_rules(kg, ruleset)
  assert found['r'][('a', 'b', 'c')] == pytest.approx(1.0)
  assert found['r_inv'][('c_inv', 'b_inv', 'a_inv')] == pytest.approx(1.0)
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  queries = kg.with_inverses('train')
  paths = grounding.ground_paths(graph, ruleset, queries, paths_per_triple=2, seed=3)
  r = kg.relation_id('r')
  for i in range(10):
    q = int(np.flatnonzero((queries[:, 0] == kg.entity_id(f'x{i}')) & (queries[:, 1] == r))[0])
    mine = np.flatnonzero(paths.query == q)
    assert len(mine) == 1  # exactly one path exists
    p = mine[0]
    assert [kg.relation_name(x) for x in paths.relations[p]] == ['a', 'b', 'c']
    assert [kg.entities[x] for x in paths.entities[p]] == [f'u{i}', f'v{i}', f'y{i}']


def test_graph_without_rules_grounds_nothing():
  # A path whose relations all differ: no body has two supporting pairs.
  triples = [(f'e{i}', f'rel{i}', f'e{i + 1}') for i in range(8)]
  kg = make_kg(triples)
  ruleset = rules.mine_rules(kg, small_config())
  assert ruleset.num_rules() == 0
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  paths = grounding.ground_paths(graph, ruleset, kg.with_inverses('train'), paths_per_triple=4)
  assert len(paths.query) == 0


def check_paths(kg, graph, queries, paths, k):
  """Every path is valid: edges exist, entities distinct and different from x, ends at y, ≤ k."""
  assert np.bincount(paths.query, minlength=len(queries)).max() <= k
  seen = set()
  for q, rel, ent, hops in zip(paths.query, paths.relations, paths.entities, paths.hops):
    x, h, y = queries[q]
    nodes = [x] + list(ent[:hops])
    assert nodes[-1] == y and len(set(nodes)) == len(nodes)
    for i in range(hops):
      assert graph.has_edge(nodes[i], rel[i], nodes[i + 1])
    assert not (hops == 1 and rel[0] == h)  # never the query's own edge
    key = (int(q), tuple(rel[:hops]), tuple(ent[:hops]))
    assert key not in seen  # distinct
    seen.add(key)


def test_grounding_is_valid_deterministic_and_bounded():
  kg = composition_kg()
  ruleset = rules.mine_rules(kg, small_config(min_confidence=0.01))
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  queries = kg.with_inverses('train')
  a = grounding.ground_paths(graph, ruleset, queries, paths_per_triple=3, paths_per_rule=2, seed=5)
  b = grounding.ground_paths(graph, ruleset, queries, paths_per_triple=3, paths_per_rule=2, seed=5)
  for field in ('query', 'relations', 'entities', 'hops'):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  check_paths(kg, graph, queries, a, k=3)
  # The composition grounds every ships_from triple through its shop.
  ships = np.flatnonzero(queries[:, 1] == kg.relation_id('ships_from'))
  assert set(ships) <= set(a.query.tolist())


def test_fanout_sampling_keeps_paths_valid():
  # A hub: every product is sold by the same shop, so the backward fan-out is large.
  triples = [(f'p{p}', 'sold_by', 'shop') for p in range(40)]
  triples += [('shop', 'located_in', 'g0')] + [(f'p{p}', 'ships_from', 'g0') for p in range(40)]
  kg = make_kg(triples)
  ruleset = rules.mine_rules(kg, small_config())
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  queries = kg.with_inverses('train')
  paths = grounding.ground_paths(graph, ruleset, queries, paths_per_triple=4, fanout=3, seed=1)
  check_paths(kg, graph, queries, paths, k=4)
  assert len(paths.query) > 0


def test_self_loops_are_left_out_and_counted():
  kg = make_kg([('a', 'r', 'a'), ('a', 'r', 'b'), ('b', 's', 'c')])
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  assert graph.num_self_loops == 1
  assert graph.num_edges == 4  # two facts, both directions


def test_rules_json_uses_names_and_round_trips(tmp_path):
  kg = composition_kg()
  ruleset = rules.mine_rules(kg, small_config())
  path = str(tmp_path / 'rules.json')
  ruleset.save(path, kg)
  with open(path, encoding='utf-8') as f:
    named = json.load(f)
  conf, body = named['ships_from'][0]
  assert body == ['sold_by', 'located_in'] and conf >= 0.9
  for head_rules in named.values():  # best first
    confs = [c for c, _ in head_rules]
    assert confs == sorted(confs, reverse=True)
  loaded = rules.RuleSet.load(path, kg)
  assert {h: [b for _, b in v] for h, v in loaded.rules.items()} == \
      {h: [b for _, b in v] for h, v in ruleset.rules.items()}


def test_max_length_is_checked():
  with pytest.raises(ValueError, match='max_length'):
    rules.mine_rules(composition_kg(), small_config(max_length=4))


@pytest.mark.slow
def test_synthetic_default_has_the_ships_from_rule(tmp_path):
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  raw = str(tmp_path / 'raw')
  synthetic.generate_from_config(config, raw)
  kg = readers.load_kg(raw)
  named = rules.mine_rules(kg, config).to_json(kg)
  assert [c for c, body in named['ships_from'] if body == ['sold_by', 'located_in']][0] >= 0.9
