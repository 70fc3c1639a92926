"""Tests of the embedding baselines: shapes, training signal, learnable toy KG, outputs, config."""
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import baselines as baseline_configs
from imkga_jax import priors as priors_lib
from imkga_jax import ranking
from imkga_jax import kg as kg_lib
from imkga_jax.baselines import models
from imkga_jax.baselines import train

MODELS = sorted(models.MODELS)
NUM_ENTITIES = 20


def _toy_kg(seed: int = 0) -> kg_lib.KnowledgeGraph:
  """Two copies of one random symmetric 1-1 relation over 20 entities; `same` is partly held out.

  The 20 entities are paired up at random (10 pairs, both directions). `perm` holds every pair,
  `same` (the same pairing) 7 of them; valid asks `same` for one more pair and test for the last
  two, so the answer is learnable only by tying the two relations together. The relation is
  symmetric so that DistMult (a symmetric model) can express it too.
  """
  rng = np.random.default_rng(seed)
  order = rng.permutation(NUM_ENTITIES).reshape(-1, 2)  # [10, 2] pairs

  def triples(pairs, rel):
    both = np.concatenate([pairs, pairs[:, ::-1]])  # [2p, 2]
    return np.stack([both[:, 0], np.full(len(both), rel), both[:, 1]], 1).astype(np.int32)

  return kg_lib.KnowledgeGraph(
      entities=[f'e{i}' for i in range(NUM_ENTITIES)], relations=['perm', 'same'],
      train=np.concatenate([triples(order, 0), triples(order[:7], 1)]),
      valid=triples(order[7:8], 1), test=triples(order[8:], 1), source='toy')


def _config(model: str, **overrides):
  config = baseline_configs.get_config(f'{model},default')
  b = config.baseline
  b.dim = 16
  b.batch_size = 16
  b.num_epochs = 60
  b.eval_every = 20
  b.patience = 0
  b.eval_batch_size = 8
  b.progress_bar = False
  b.learning_rate = 0.02
  for key, value in overrides.items():
    b[key] = value
  return config


@pytest.mark.parametrize('name', MODELS)
def test_scores_have_one_column_per_entity(name):
  model = models.build_model(name, num_entities=NUM_ENTITIES, num_relations=6, dim=8)
  heads, relations = jnp.array([0, 5, 19]), jnp.array([0, 3, 5])
  variables = model.init({'params': jax.random.key(0)}, heads, relations)
  scores = model.apply(variables, heads, relations)
  assert scores.shape == (3, NUM_ENTITIES)
  assert np.isfinite(np.asarray(scores)).all()
  factors = model.apply(variables, heads, relations, heads, method='factors')
  assert all(f.shape[0] == 3 and (np.asarray(f) >= 0).all() for f in factors)


@pytest.mark.parametrize('name', MODELS)
def test_candidate_scores_match_the_full_scores(name):
  model = models.build_model(name, num_entities=NUM_ENTITIES, num_relations=6, dim=8)
  heads, relations = jnp.array([0, 5, 19]), jnp.array([0, 3, 5])
  variables = model.init({'params': jax.random.key(0)}, heads, relations)
  full = np.asarray(model.apply(variables, heads, relations))  # [3, E]
  shared = jnp.array([4, 0, 17, 4])
  np.testing.assert_allclose(model.apply(variables, heads, relations, candidates=shared),
                             full[:, shared], rtol=1e-4, atol=1e-4)
  per_row = jnp.array([[1, 2], [3, 3], [19, 0]])
  np.testing.assert_allclose(model.apply(variables, heads, relations, candidates=per_row),
                             np.take_along_axis(full, np.asarray(per_row), 1), rtol=1e-4, atol=1e-4)


def test_build_model_rejects_unknown_names():
  with pytest.raises(ValueError, match='baseline.model'):
    models.build_model('conve', 5, 2, 4)
  with pytest.raises(ValueError, match='gamma'):
    models.build_model('distmult', 5, 2, 4, gamma=1.0)


@pytest.mark.parametrize('p_norm', [1, 2])
def test_pairwise_distance_matches_direct_formula(p_norm):
  rng = np.random.default_rng(0)
  q_re, q_im, e_re, e_im = (rng.normal(size=s).astype(np.float32)
                            for s in [(3, 4), (3, 4), (5, 4), (5, 4)])
  diff = (q_re[:, None] + 1j * q_im[:, None]) - (e_re[None] + 1j * e_im[None])  # [3, 5, 4]
  expected = (np.abs(diff).sum(-1) if p_norm == 1
              else np.sqrt((np.abs(diff) ** 2).sum(-1)))
  got = models.pairwise_distance([q_re, q_im], [e_re, e_im], p_norm)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  got_real = models.pairwise_distance([q_re], [e_re], p_norm)
  np.testing.assert_allclose(got_real, np.linalg.norm(q_re[:, None] - e_re[None], ord=p_norm, axis=-1),
                             rtol=1e-4, atol=1e-4)


def test_kvsall_examples_group_all_answers():
  triples = np.array([[0, 0, 1], [0, 0, 2], [1, 0, 2], [0, 1, 3]], np.int32)
  queries, indptr, tails = train.kvsall_examples(triples)
  np.testing.assert_array_equal(queries, [[0, 0], [0, 1], [1, 0]])
  labels = train._multi_hot(np.array([2, 0]), indptr, tails, 4)
  np.testing.assert_array_equal(labels, [[0, 0, 1, 0], [0, 1, 1, 0]])


@pytest.mark.parametrize('name,training', [(m, None) for m in MODELS]
                         + [('transe', 'negsample'), ('complex', 'kvsall')])
def test_training_steps_reduce_the_loss(name, training):
  graph = _toy_kg()
  config = _config(name, **({'training': training} if training else {}))
  model = train.build(config, graph)
  triples = graph.with_inverses('train')  # [68, 3]
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                         triples[:2, 0], triples[:2, 1])
  tx = optax.adam(config.baseline.learning_rate)
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                           batch_stats=variables.get('batch_stats', {}),
                           opt_state=tx.init(variables['params']))
  step = train.make_train_step(model, tx, config)
  batch = {'heads': triples[:, 0], 'relations': triples[:, 1], 'tails': triples[:, 2]}
  if config.baseline.training == 'kvsall':
    queries, indptr, answers = train.kvsall_examples(triples)
    rows = np.arange(len(queries))
    batch = {'heads': queries[:, 0], 'relations': queries[:, 1], 'tails': answers[indptr[rows]],
             'labels': train._multi_hot(rows, indptr, answers, NUM_ENTITIES)}
  if config.baseline.training == 'negsample':
    batch['negatives'] = np.random.default_rng(0).integers(0, NUM_ENTITIES, (len(triples), 8))
  losses = []
  for _ in range(30):
    state, loss = step(state, batch, jax.random.key(2))
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


@pytest.mark.parametrize('name', ['distmult', 'complex', 'tucker'])
def test_learns_a_held_out_copy_of_a_relation(name, tmp_path):
  workdir = str(tmp_path)
  _toy_kg().save(os.path.join(workdir, 'prepared'))
  overrides = {'dim': 32, 'num_epochs': 150, 'eval_every': 50} if name == 'tucker' else {}
  metrics = train.train_and_evaluate(_config(name, **overrides), workdir)
  assert metrics['test']['both']['mrr'] > 0.9, metrics['test']
  with open(os.path.join(workdir, 'metrics.json')) as f:
    written = json.load(f)
  assert set(written) == {'valid', 'test'}
  for split in written.values():
    assert set(split) == {'tail', 'head', 'both'}
    for m in split.values():
      assert {'mrr', 'hits@1', 'hits@3', 'hits@10', 'reached'} <= set(m)
      assert m['reached'] == 1.0
  assert written['test']['tail']['queries'] == 4 and written['test']['both']['queries'] == 8
  with open(os.path.join(workdir, 'metrics_by_relation.json')) as f:
    by_relation = json.load(f)
  assert set(by_relation) == {'test'} and set(by_relation['test']) == {'same'}
  same = by_relation['test']['same']
  assert same['tail']['queries'] == same['head']['queries'] == 4 and same['both']['queries'] == 8


def test_untrained_model_is_not_near_perfect(tmp_path):
  """The toy task is not solved by construction: with no training the MRR stays low."""
  workdir = str(tmp_path)
  _toy_kg().save(os.path.join(workdir, 'prepared'))
  metrics = train.train_and_evaluate(_config('complex', learning_rate=0.0, num_epochs=1), workdir)
  assert metrics['test']['both']['mrr'] < 0.6


def test_configs_select_model_and_base():
  config = baseline_configs.get_config('rotate,umls')
  assert config.baseline.model == 'rotate' and config.data.layout == 'triples'
  assert baseline_configs.get_config().baseline.model == 'complex'
  assert baseline_configs.get_config('tucker').data.synthetic
  for name in MODELS:
    baseline_configs.get_config(name).lock()
  with pytest.raises(ValueError, match='MODEL'):
    baseline_configs.get_config('conve,umls')


def test_max_queries_ranks_the_seeded_subset_of_evaluate(tmp_path):
  workdir = str(tmp_path)
  graph = _toy_kg()
  graph.save(os.path.join(workdir, 'prepared'))
  metrics = train.train_and_evaluate(_config('complex', num_epochs=1, max_queries=3), workdir)
  assert metrics['test']['tail']['queries'] == 3 and metrics['valid']['both']['queries'] == 4
  expected = ranking.direction_queries(graph, 'test', 3)['tail']
  assert sum(m['tail']['queries'] for m in metrics['by_relation'].values()) == len(expected)
  assert sum(m['head']['queries'] for m in metrics['by_relation'].values()) == len(expected)


def test_answer_types_rank_typed_entities_first():
  graph = _toy_kg()
  rng = np.random.default_rng(0)
  table = rng.normal(size=(graph.num_entities, 2 * graph.num_relations, graph.num_entities))
  score = lambda params, batch_stats, heads, relations: table[heads, relations]  # [B, E]
  state = types.SimpleNamespace(params=None, batch_stats=None)
  answer_types = rng.random((2 * graph.num_relations, graph.num_entities)) < 0.5
  priors = priors_lib.Priors(names=('random',), table=answer_types)
  plain = ranking.rank_split(train.score_fn(score, state), graph, 'test', batch_size=4)
  typed = ranking.rank_split(train.score_fn(score, state), graph, 'test', batch_size=4,
                             priors=priors)
  for direction, queries in ranking.direction_queries(graph, 'test').items():
    indptr, known = graph.filter_csr(queries[:, :2])
    scores = table[queries[:, 0], queries[:, 1]]  # [q, E]
    shifted = np.asarray(priors_lib.typed_first(scores, answer_types[queries[:, 1]]))
    np.testing.assert_array_equal(typed[direction]['ranks'],
                                  ranking.filtered_ranks(shifted, queries[:, 2], indptr, known))
    np.testing.assert_array_equal(plain[direction]['ranks'],
                                  ranking.filtered_ranks(scores, queries[:, 2], indptr, known))
  assert any((typed[d]['ranks'] != plain[d]['ranks']).any() for d in typed)
