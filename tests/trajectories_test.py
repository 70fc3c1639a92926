"""Trajectories → TFRecord (TFDS) → input pipeline round trip (data_prep/trajectories.py,
imkga_jax/input_pipeline.py)."""
import json
import os
import shutil

import numpy as np
import pytest

from configs import default
from data_prep import rules
from data_prep import train_graph
from data_prep import trajectories
from imkga_jax import input_pipeline
from imkga_jax import kg as kg_lib
from imkga_jax import prepared as prepared_lib
from imkga_jax import rtg as rtg_lib


def make_kg(named_triples):
  entities = sorted({x for h, _, t in named_triples for x in (h, t)})
  relations = sorted({r for _, r, _ in named_triples})
  e, r = {n: i for i, n in enumerate(entities)}, {n: i for i, n in enumerate(relations)}
  ids = np.asarray([[e[h], r[rel], e[t]] for h, rel, t in named_triples], np.int32)
  return kg_lib.KnowledgeGraph(entities, relations, train=ids, valid=ids[:1], test=ids[:1])


def composition_kg():
  triples = []
  for p in range(12):
    triples += [(f'p{p}', 'sold_by', f's{p % 4}'), (f'p{p}', 'ships_from', f'g{p % 2}')]
    triples += [(f'p{p}', 'colour', f'c{p % 3}')]
  triples += [(f's{s}', 'located_in', f'g{s % 2}') for s in range(4)]
  return make_kg(triples)


def small_config():
  config = default.get_config()
  config.rules.num_walks = 4000
  config.trajectories.num_shards = 3
  config.trajectories.negative_share = 0.25
  config.trajectories.also_direct = 'none'  # direct trajectories only for ungrounded queries
  config.train.batch_size = 4
  config.train.shuffle_buffer = 64
  return config


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  kg = composition_kg()
  config = small_config()
  prepared = str(tmp_path_factory.mktemp('prepared'))
  rng = np.random.default_rng(0)
  present = np.asarray([name[0] in 'pc' for name in kg.entities])  # products and colours have images
  vectors = np.where(present[:, None], rng.normal(size=(kg.num_entities, 5)), 0).astype(np.float32)
  np.savez(os.path.join(prepared, 'features.npz'), image_vector=vectors, image_present=present)
  stats = trajectories.build_trajectories(kg, config, prepared)
  return kg, config, prepared, stats, (vectors, present)


def read_all(prepared, config, **kwargs):
  ds = input_pipeline.create_train_dataset(prepared, config, repeat=False, **kwargs)
  batches = list(ds.as_numpy_iterator())
  return {k: np.concatenate([b[k] for b in batches]) for k in prepared_lib.EXAMPLE_KEYS}


def rows_of(ex):
  return sorted(tuple([int(ex['head_token'][i]), int(ex['relation_token'][i]), int(ex['target'][i]),
                       int(ex['kind'][i])] + ex['actions'][i].tolist()
                      + np.round(ex['rtg'][i], 5).tolist()) for i in range(len(ex['kind'])))


def test_stats_and_rules_file(built):
  kg, _, prepared, stats, _ = built
  t = stats['trajectories']
  assert t['examples'] == t['rule_paths'] + t['direct'] + t['negatives']
  assert t['negatives'] == t['negatives_requested'] > 0
  assert sum(t['paths_per_hops'].values()) == t['rule_paths']
  assert t['queries'] == 2 * len(kg.train)
  assert t['direct_share'] == pytest.approx(t['direct'] / (t['rule_paths'] + t['direct']), abs=1e-4)
  assert t['image_similarity'] == 'features.npz'
  assert stats['rules']['rules'] > 0
  with open(os.path.join(prepared, 'rules.json'), encoding='utf-8') as f:
    named = json.load(f)
  assert ['sold_by', 'located_in'] in [body for conf, body in named['ships_from'] if conf >= 0.9]
  info = input_pipeline.trajectory_info(prepared)
  assert info == (t['examples'], 7)


def test_tfrecord_round_trip(built):
  kg, config, prepared, stats, images = built
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  ruleset = rules.RuleSet.load(os.path.join(prepared, 'rules.json'), kg)
  traj, _ = trajectories.assemble(kg, config, graph, ruleset,
                                  trajectories.load_image_vectors(prepared, kg), int(config.seed))
  for dropout, row in ((0.0, 0), (1.0, 1)):
    config.rtg.target_dropout = dropout
    got = read_all(prepared, config, process_index=0, process_count=1)
    want = {'head_token': traj.head_token, 'relation_token': traj.relation_token,
            'target': traj.target, 'kind': traj.kind, 'actions': traj.actions,
            'rtg': traj.rtg[:, row]}
    assert len(got['kind']) == stats['trajectories']['examples'] // 4 * 4  # remainder dropped
    assert set(rows_of(got)) <= set(rows_of(want))
    for key in prepared_lib.EXAMPLE_KEYS:
      assert got[key].dtype == (np.float32 if key == 'rtg' else np.int32), key


def test_example_contents(built):
  kg, config, prepared, _, (vectors, present) = built
  config.rtg.target_dropout = 0.0
  ex = read_all(prepared, config, process_index=0, process_count=1)
  c = rtg_lib.constants_from_config(config, kg.num_relations)
  for i in range(len(ex['kind'])):
    actions, values, kind = ex['actions'][i], ex['rtg'][i], ex['kind'][i]
    n = int(np.flatnonzero(actions == kg_lib.EOS)[0])  # tokens before <eos>
    assert np.all(actions[n + 1:] == kg_lib.PAD) and np.all(values[n:] == values[n])
    assert kg.space.is_entity(actions[n - 1])
    assert np.all(kg.space.is_relation(actions[0:n - 1:2]))
    assert np.all(kg.space.is_entity(actions[1:n:2]))
    ends_at_target = kg.space.token_to_entity(actions[n - 1]) == ex['target'][i]
    assert values[0] == (c.r_bad if kind == prepared_lib.KIND_NEGATIVE else c.r_good)
    assert ends_at_target == (kind != prepared_lib.KIND_NEGATIVE)
    if kind == prepared_lib.KIND_DIRECT:
      assert n == 1
    if ends_at_target:  # the last step earns R̂1·cos(f_t, f_t) = R̂1 if t has an image, else ½R̂1
      gain = 1.0 if present[ex['target'][i]] else 0.5
      assert values[n] == pytest.approx(values[n - 1] - (c.r_step + gain), abs=1e-5)


def test_process_split_seed_and_order(built):
  _, config, prepared, stats, _ = built
  config.train.batch_size = 2
  parts = [read_all(prepared, config, process_index=i, process_count=2, seed=1) for i in range(2)]
  assert len(parts[0]['kind']) == len(parts[1]['kind']) == stats['trajectories']['examples'] // 2
  assert not set(rows_of(parts[0])) & set(rows_of(parts[1]))
  config.train.batch_size = 4

  def first(seed, n=12):
    it = input_pipeline.create_train_iterator(prepared, config, process_index=0, process_count=1,
                                              seed=seed)
    return np.concatenate([next(it)['actions'] for _ in range(n)])

  a, b, other = first(7), first(7), first(8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, other)
  config.rtg.target_dropout = 0.5
  full = input_pipeline.create_train_iterator(prepared, config, process_index=0, process_count=1)
  full = [next(full) for _ in range(10)]
  resumed = input_pipeline.create_train_iterator(prepared, config, process_index=0, process_count=1,
                                                 skip_batches=7)
  for want in full[7:]:  # a resumed run reads what an uninterrupted one reads at that step
    got = next(resumed)
    for key in prepared_lib.EXAMPLE_KEYS:
      np.testing.assert_array_equal(got[key], want[key])
  batch = next(input_pipeline.create_train_iterator(prepared, config, process_index=0,
                                                    process_count=1))
  assert sorted(batch) == sorted(prepared_lib.EXAMPLE_KEYS)
  assert batch['actions'].shape == batch['rtg'].shape == (4, 7) and batch['kind'].shape == (4,)


def test_read_direct_and_the_main_stream_without_them(built, tmp_path):
  """`read_direct` holds exactly the stored direct trajectories, cut to `t <eos>` with both
  return-to-go rows; `exclude_direct` leaves just them out of the main stream."""
  kg, config, _, _, _ = built
  config = small_config()
  config.trajectories.also_direct = 'all'
  prepared = str(tmp_path)
  shutil.copy(os.path.join(built[2], 'features.npz'), prepared)
  stats = trajectories.build_trajectories(kg, config, prepared)
  rows = {}
  for dropout, row in ((0.0, 0), (1.0, 1)):
    config.rtg.target_dropout = dropout
    config.train.batch_size = 1  # every example, none dropped as a remainder
    rows[row] = read_all(prepared, config, process_index=0, process_count=1)
  config.train.batch_size, config.rtg.target_dropout = 4, 0.5
  direct = input_pipeline.read_direct(prepared)
  is_direct = rows[0]['kind'] == prepared_lib.KIND_DIRECT
  assert len(direct['head_token']) == stats['trajectories']['direct'] == is_direct.sum() > 0
  want = sorted(zip(rows[0]['head_token'][is_direct], rows[0]['relation_token'][is_direct],
                    map(tuple, rows[0]['actions'][is_direct, :2]),
                    map(tuple, np.round(rows[0]['rtg'][is_direct, :2], 5)),
                    map(tuple, np.round(rows[1]['rtg'][is_direct, :2], 5))))
  got = sorted(zip(direct['head_token'], direct['relation_token'], map(tuple, direct['actions']),
                   map(tuple, np.round(direct['rtg'][:, 0], 5)),
                   map(tuple, np.round(direct['rtg'][:, 1], 5))))
  assert got == want
  assert np.all(direct['actions'][:, 1] == kg_lib.EOS)
  assert np.all(kg.space.is_entity(direct['actions'][:, 0]))
  assert direct['actions'].dtype == direct['head_token'].dtype == np.int32
  config.train.batch_size, config.rtg.target_dropout = 1, 0.0
  others = read_all(prepared, config, process_index=0, process_count=1, exclude_direct=True)
  assert not np.any(others['kind'] == prepared_lib.KIND_DIRECT)
  assert set(rows_of(others)) == set(rows_of({k: v[~is_direct] for k, v in rows[0].items()}))


def test_pipeline_errors_name_the_fix(built, tmp_path):
  _, config, prepared, _, _ = built
  config.trajectories.max_hops = 2
  with pytest.raises(ValueError, match='max_hops'):
    input_pipeline.create_train_dataset(prepared, config, process_index=0, process_count=1)
  config.trajectories.max_hops = 3
  config.train.batch_size = 3
  with pytest.raises(ValueError, match='divisible'):
    input_pipeline.create_train_dataset(prepared, config, process_index=0, process_count=2)
  config.train.batch_size = 4
  with pytest.raises(FileNotFoundError, match='prepare'):
    input_pipeline.trajectory_info(str(tmp_path))


def test_graph_without_rules_gives_direct_trajectories():
  kg = make_kg([(f'e{i}', f'rel{i}', f'e{i + 1}') for i in range(6)])
  config = small_config()
  config.trajectories.negative_share = 0.0
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  ruleset = rules.mine_rules(kg, config, graph=graph)
  traj, stats = trajectories.assemble(kg, config, graph, ruleset, None, 0)
  assert stats['direct'] == stats['queries'] == len(traj) and stats['direct_share'] == 1.0
  assert np.all(traj.kind == prepared_lib.KIND_DIRECT)
  np.testing.assert_array_equal(traj.actions[:, 1], kg_lib.EOS)
  np.testing.assert_array_equal(kg.space.token_to_entity(traj.actions[:, 0]), traj.target)


def test_negative_walks_miss_the_target():
  kg = composition_kg()
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  queries = kg.with_inverses('train').astype(np.int64)
  q, rel, ent = trajectories.sample_negative_walks(graph, queries, 50, 3, np.random.default_rng(0))
  assert len(q) == 50
  for qi, r, e in zip(q, rel, ent):
    x, h, y = queries[qi]
    hops = int((r >= 0).sum())
    nodes = [x] + e[:hops].tolist()
    assert 1 <= hops <= 3 and y not in nodes and len(set(nodes)) == len(nodes)
    assert not graph.has_edge(x, h, nodes[-1])
    for i in range(hops):
      assert graph.has_edge(nodes[i], r[i], nodes[i + 1])


@pytest.mark.parametrize('mode', ['none', 'image_heads', 'all'])
def test_also_direct_adds_direct_trajectories_for_grounded_queries(mode):
  kg = composition_kg()
  kg.images = {f'p{p}': [f'/img/p{p}.jpg'] for p in range(0, 12, 2)}  # every other product
  config = small_config()
  config.trajectories.negative_share = 0.0
  config.trajectories.also_direct = mode
  graph = train_graph.TrainGraph(kg.train, kg.num_entities, kg.num_relations)
  ruleset = rules.mine_rules(kg, config, graph=graph)
  traj, stats = trajectories.assemble(kg, config, graph, ruleset, None, 0)
  queries = kg.with_inverses('train')
  direct = traj.kind == prepared_lib.KIND_DIRECT
  rule = traj.kind == prepared_lib.KIND_RULE
  grounded = set(zip(traj.head_token[rule].tolist(), traj.relation_token[rule].tolist(),
                     traj.target[rule].tolist()))
  heads = kg.space.entity_token(queries[:, 0])
  keys = list(zip(heads.tolist(), kg.space.relation_token(queries[:, 1]).tolist(), queries[:, 2].tolist()))
  image_head = np.isin(queries[:, 0], [kg.entity_id(n) for n in kg.images])
  expected = {k for k, img in zip(keys, image_head)
              if k not in grounded or mode == 'all' or (mode == 'image_heads' and img)}
  got = set(zip(traj.head_token[direct].tolist(), traj.relation_token[direct].tolist(),
                traj.target[direct].tolist()))
  assert got == expected and int(direct.sum()) == len(expected) == stats['direct']
  assert stats['direct_also_grounded'] == len(expected & grounded)
  assert (stats['direct_also_grounded'] > 0) == (mode != 'none')
  np.testing.assert_array_equal(traj.actions[direct, 1], kg_lib.EOS)


def test_also_direct_rejects_unknown_mode():
  kg = composition_kg()
  with pytest.raises(ValueError, match='trajectories.also_direct'):
    trajectories.also_direct_mask(kg, kg.with_inverses('train'), 'images')
