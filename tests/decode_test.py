"""Tests of imkga_jax/decode.py: beam search vs brute-force enumeration, graph constraint, adapter."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imkga_jax import decode
from imkga_jax import grammar
from imkga_jax import kg as kg_lib
from imkga_jax import rtg as rtg_lib
from imkga_jax import step_models

BOS, EOS = kg_lib.BOS, kg_lib.EOS


def constants(space):
  return rtg_lib.RtgConstants(1.0, -1.0, -0.1, space=space)


def table_stub(table, rtg_weight):
  """Logits = table[step, prev token, token before it] + rtg_weight * R̂(step): depends on history."""
  table, rtg_weight = jnp.asarray(table), jnp.asarray(rtg_weight)

  def tokens_to_logits(actions, rtg, step):
    prev1 = jnp.where(step >= 1, actions[:, jnp.maximum(step - 1, 0)], BOS)  # [N]
    prev2 = jnp.where(step >= 2, actions[:, jnp.maximum(step - 2, 0)], BOS)  # [N]
    r = jax.lax.dynamic_index_in_dim(rtg, step, axis=1, keepdims=False)  # [N]
    return table[step, prev1, prev2] + r[:, None] * rtg_weight[None, :]  # [N, V]
  return tokens_to_logits


def allowed_reference(prefix, head, space, max_len, edges, direct=True):
  """Allowed next tokens, written from the module docstring (edges None = unconstrained; direct:
  whether the query may answer `t <eos>`)."""
  s = len(prefix)
  entities = list(range(space.entity_offset, space.num_tokens))
  if s == 0 and not direct:  # the direct form `t <eos>` is off: no entity first
    return [t for t in allowed_reference(prefix, head, space, max_len, edges)
            if t < space.entity_offset]
  relations = list(range(space.relation_offset, space.entity_offset))
  prev = prefix[-1] if prefix else None
  prev_is_entity = prev is not None and prev >= space.entity_offset
  prev_is_relation = prev is not None and space.relation_offset <= prev < space.entity_offset
  if edges is None:
    # The path grammar: start -> relation | entity; relation -> entity; path entity -> relation |
    # <eos>; step-0 entity -> <eos>.
    out = [EOS] if prev_is_entity else []
    if s < max_len - 1 and (s == 0 or prev_is_relation):
      out += entities
    if s < max_len - 2 and (s == 0 or (prev_is_entity and s >= 2)):
      out += relations
    return out
  def out_relations(e):
    return sorted({space.relation_offset + r for r, _ in edges.get(e, ())})
  if s == 0:
    return out_relations(head) + entities
  if prev_is_entity:
    rels = out_relations(prev - space.entity_offset) if (s >= 2 and s < max_len - 2) else []
    return [EOS] + rels
  current = head if s == 1 else prefix[-2] - space.entity_offset
  r = prev - space.relation_offset
  return sorted({space.entity_offset + t for rr, t in edges.get(current, ()) if rr == r})


def brute_force(table, rtg_weight, head, space, max_len, edges=None, direct=True):
  """Every finished sequence with its log-prob, hops and score, by exhaustive enumeration."""
  c = constants(space)
  out = {}

  def rec(prefix, logprob, rtgs):
    s = len(prefix)
    allowed = allowed_reference(prefix, head, space, max_len, edges, direct)
    if s == max_len or not allowed:
      return
    prev1 = prefix[-1] if s >= 1 else BOS
    prev2 = prefix[-2] if s >= 2 else BOS
    logits = table[s, prev1, prev2] + rtgs[-1] * rtg_weight
    sub = logits[allowed].astype(np.float64)
    logp = sub - (np.log(np.sum(np.exp(sub - sub.max()))) + sub.max())
    for tok, lp in zip(allowed, logp):
      if tok == EOS:
        hops = sum(space.relation_offset <= t < space.entity_offset for t in prefix)
        out[tuple(prefix) + (EOS,)] = (logprob + lp) / max(hops, 1)
      else:
        nxt = rtg_lib.next_rtg_target_unknown(np.float32(rtgs[-1]), np.int32(tok), np.int32(prev1),
                                              c.r_good, c)
        rec(prefix + [tok], logprob + lp, rtgs + [float(nxt)])

  rec([], 0.0, [c.r_good])
  return out


def run_beam(table, rtg_weight, heads, space, beam, max_len, constraint=None, complete_last=False,
             direct_ok=None, finish_width=0, aggregation='max', length_norm=True,
             complete_direct=False):
  model = step_models.history_step_model(table_stub(table, rtg_weight), max_len)
  fn = jax.jit(lambda h, d: decode.beam_search(
      model, h, space=space, beam_size=beam, max_len=max_len, rtg_constants=constants(space),
      constraint=constraint, complete_last=complete_last, finish_width=finish_width,
      complete_direct=complete_direct, aggregation=aggregation, length_norm=length_norm,
      direct_ok=d))
  direct_ok = None if direct_ok is None else jnp.asarray(direct_ok, bool)
  return jax.device_get(fn(jnp.asarray(heads, jnp.int32), direct_ok))


def per_entity(expected, space, aggregation='max', length_norm=True, keep=None):
  """Per entity, from brute-force `{sequence: normalised score}` (restricted to `keep(seq)`): the
  aggregate score over every path, and the best score and path (up to <eos>) of >= 1 hop."""
  e = space.num_entities
  score, best, path = np.full(e, -np.inf), np.full(e, -np.inf), {}
  for seq, normalised in expected.items():
    if keep is not None and not keep(seq):
      continue
    hops = sum(space.relation_offset <= t < space.entity_offset for t in seq)
    value = normalised if length_norm else normalised * max(hops, 1)
    a = seq[-2] - space.entity_offset
    if hops >= 1 and value > best[a]:
      best[a], path[a] = value, seq
    score[a] = max(score[a], value) if aggregation == 'max' else np.logaddexp(score[a], value)
  return score, best, path


def got_path(result, row, entity):
  """The best path of `entity` in query `row`, up to and with its <eos> (() if none)."""
  seq = [int(t) for t in result.path[row, entity]]
  return tuple(seq[:seq.index(EOS) + 1]) if EOS in seq else ()


def assert_matches(result, row, reference, rtol=1e-4):
  score, best, path = reference
  np.testing.assert_allclose(result.score[row], score, rtol=rtol, atol=1e-5)
  np.testing.assert_allclose(result.best[row], best, rtol=rtol, atol=1e-5)
  for entity, seq in path.items():
    assert got_path(result, row, entity) == seq, (entity, seq)
  assert all(np.all(result.path[row, e] == kg_lib.PAD) for e in range(len(score)) if e not in path)


def random_problem(seed, space, max_len):
  rng = np.random.default_rng(seed)
  v = space.num_tokens
  return rng.normal(size=(max_len, v, v, v)).astype(np.float32), rng.normal(size=v).astype(np.float32)


@pytest.mark.parametrize('max_len,beam', [(3, 40), (5, 384)])
@pytest.mark.parametrize('aggregation,length_norm', [('max', True), ('sum', False), ('sum', True)])
def test_exhaustive_beam_matches_brute_force(max_len, beam, aggregation, length_norm):
  # R=1, E=3, V=9: with this beam nothing is pruned, so every finished sequence counts.
  space = kg_lib.TokenSpace(num_relations=1, num_entities=3)
  table, w = random_problem(max_len, space, max_len)
  result = run_beam(table, w, [0, 1], space, beam, max_len, aggregation=aggregation,
                    length_norm=length_norm)
  expected = brute_force(table, w, 0, space, max_len)
  assert_matches(result, 0, per_entity(expected, space, aggregation, length_norm))
  assert np.all(np.isfinite(result.score[0]))


@pytest.mark.parametrize('aggregation,length_norm', [('max', True), ('sum', False)])
def test_complete_direct_scores_every_direct_answer_apart_from_the_paths(aggregation, length_norm):
  # Exhaustive beam, R=1, E=3, L=5: the direct answers come exactly out of step 0 (no beam slot),
  # the paths are every path of a hop, and the model's own combination is the aggregate of all.
  space = kg_lib.TokenSpace(num_relations=1, num_entities=3)
  table, w = random_problem(5, space, 5)
  result = run_beam(table, w, [0, 1], space, 384, 5, complete_direct=True,
                    aggregation=aggregation, length_norm=length_norm)
  expected = brute_force(table, w, 0, space, 5)
  score, best, path = per_entity(expected, space, aggregation, length_norm)
  direct = np.asarray([expected[(space.entity_offset + e, EOS)] for e in range(3)])
  np.testing.assert_allclose(result.direct[0], direct, rtol=1e-4, atol=1e-5)
  paths, _, _ = per_entity(expected, space, aggregation, length_norm, keep=lambda q: len(q) > 2)
  np.testing.assert_allclose(result.paths[0], paths, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(result.score[0], score, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(result.best[0], best, rtol=1e-4, atol=1e-5)
  # A weight mixes the two parts, each normalised over the entities.
  only_direct = decode.combine(result.direct, result.paths, aggregation, 1.0)
  only_paths = decode.combine(result.direct, result.paths, aggregation, 0.0)
  half = decode.combine(result.direct, result.paths, aggregation, 0.5)
  norm = lambda x: x - np.logaddexp.reduce(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(only_direct, norm(result.direct), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(only_paths, norm(result.paths), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(half), 0.5 * np.exp(only_direct) + 0.5 * np.exp(only_paths),
                             rtol=1e-5, atol=1e-6)
  # Without complete_direct the direct answers are beams: no separate part.
  beams = run_beam(table, w, [0, 1], space, 384, 5, aggregation=aggregation,
                   length_norm=length_norm)
  assert np.all(np.isneginf(beams.direct)) and np.allclose(beams.score, result.score, atol=1e-5)


def test_small_beam_finds_the_known_best_paths_in_order():
  # A stub that strongly prefers `r0 e1 r1 e2 <eos>` (hops 2), then the direct `e0 <eos>`.
  space = kg_lib.TokenSpace(num_relations=1, num_entities=3)
  max_len = 5
  table, w = random_problem(7, space, max_len)
  table *= 0.1
  r0, r1 = space.relation_offset, space.relation_offset + 1
  e0, e1, e2 = (space.entity_offset + i for i in range(3))
  table[0, BOS, BOS, r0] += 8.0
  table[0, BOS, BOS, e0] += 7.0
  table[1, r0, BOS, e1] += 8.0
  table[1, e0, BOS, EOS] += 9.0
  table[2, e1, r0, r1] += 8.0
  table[3, r1, e1, e2] += 8.0
  table[4, e2, r1, EOS] += 8.0
  result = run_beam(table, w, [0], space, beam=2, max_len=max_len)
  reference = brute_force(table, w, 0, space, max_len)
  best = sorted(reference.items(), key=lambda kv: -kv[1])[:2]
  assert [s for s, _ in best] == [(r0, e1, r1, e2, EOS), (e0, EOS)]
  assert got_path(result, 0, 2) == best[0][0]  # explained by its path
  np.testing.assert_allclose(result.score[0, [2, 0]], [v for _, v in best], rtol=1e-5)
  np.testing.assert_allclose(result.best[0, 2], best[0][1], rtol=1e-5)
  assert result.best[0, 0] < result.score[0, 0]  # e0's score is its direct answer, no path's
  assert np.argsort(-result.score[0])[:2].tolist() == [2, 0]  # best first


@pytest.mark.parametrize('beam', [384, 2])
def test_last_step_completion_scores_every_entity_after_the_live_prefixes(beam):
  # R=1, E=5, L=5. Beam 384 prunes nothing: the completions are every full-length path. Beam 2
  # keeps two prefixes at step L - 2; every entity is still scored through them, each with a
  # full-length path of exactly its brute-force score, where plain finishing reaches at most two.
  space = kg_lib.TokenSpace(num_relations=1, num_entities=5)
  max_len = 5
  table, w = random_problem(11, space, max_len)
  result = run_beam(table, w, [0], space, beam, max_len, complete_last=True)
  expected = brute_force(table, w, 0, space, max_len)
  if beam > 100:
    assert_matches(result, 0, per_entity(expected, space))
  full = run_beam(table, w, [0], space, beam, max_len, complete_last=True, aggregation='sum',
                  length_norm=False)
  plain = run_beam(table, w, [0], space, beam, max_len)
  full_length = {e for e in range(5) if len(got_path(plain, 0, e)) == max_len}
  assert np.all(np.isfinite(result.score[0])) and np.all(np.isfinite(full.score[0]))
  assert len(full_length) <= beam
  for e in range(space.num_entities):
    path = got_path(result, 0, e)
    if path:
      np.testing.assert_allclose(result.best[0, e], expected[path], rtol=1e-4, atol=1e-5)
    assert result.best[0, e] >= plain.best[0, e] - 1e-6  # the completion only adds paths
  assert all(len(got_path(result, 0, e)) == max_len for e in range(5)
             if result.best[0, e] > plain.best[0, e] + 1e-6)  # what it adds is full length


def test_wide_finishing_finishes_every_entity_after_the_kept_relations():
  # R=2 (4 relation tokens), E=4, L=5, beam 2. Step 0 strongly prefers relations and step 2 <eos>,
  # so both live beams at step 1 are relations and the paths end after one hop; with W = 8 =
  # beam * E every `r e <eos>` through them is finished (plain finishing keeps two), and each
  # entity's summed score is exactly that of its brute-force paths through the two relations.
  space = kg_lib.TokenSpace(num_relations=2, num_entities=4)
  max_len, beam = 5, 2
  table, w = random_problem(5, space, max_len)
  table[0, BOS, BOS, space.relation_offset:space.entity_offset] += 20.0
  table[2, ..., EOS] += 30.0
  expected = brute_force(table, w, 0, space, max_len)
  step0 = table[0, BOS, BOS] + 1.0 * w  # R̂0 = r_good = 1
  relations = range(space.relation_offset, space.entity_offset)
  kept = set(sorted(relations, key=lambda r: -step0[r])[:beam])  # the two live beams at step 1
  wide = run_beam(table, w, [0], space, beam, max_len, finish_width=8, aggregation='sum',
                  length_norm=False)
  plain = run_beam(table, w, [0], space, beam, max_len, aggregation='sum', length_norm=False)
  one_hop = lambda seq: len(seq) == 3 and seq[0] in kept
  reference = per_entity(expected, space, 'sum', False, keep=one_hop)
  np.testing.assert_allclose(wide.score[0], reference[0], rtol=1e-4, atol=1e-4)
  assert np.all(np.isfinite(wide.score[0]))
  plain_one_hop = [e for e in range(4) if len(got_path(plain, 0, e)) == 3]
  assert len(plain_one_hop) <= beam  # plain beam search finished two one-hop endings
  assert all(len(got_path(wide, 0, e)) == 3 for e in range(4))


def random_graph(seed, num_entities, num_relations, num_edges):
  rng = np.random.default_rng(seed)
  triples = np.stack([rng.integers(0, num_entities, num_edges),
                      rng.integers(0, num_relations, num_edges),
                      rng.integers(0, num_entities, num_edges)], axis=1)
  inverse = np.stack([triples[:, 2], triples[:, 1] + num_relations, triples[:, 0]], axis=1)
  both = np.concatenate([triples, inverse])
  edges = {}
  for h, r, t in both:
    edges.setdefault(int(h), set()).add((int(r), int(t)))
  return both, edges


def test_graph_constraint_tables():
  both, edges = random_graph(0, 7, 2, 12)
  g = grammar.GraphConstraint.from_triples(both, 7)
  indptr, rel, tail = (np.asarray(x) for x in (g.indptr, g.relation, g.tail))
  for e in range(7):
    span = slice(indptr[e], indptr[e + 1])
    assert set(zip(rel[span], tail[span])) == edges.get(e, set())
  assert g.max_degree == max(len(v) for v in edges.values())


def test_constrained_exhaustive_matches_brute_force():
  space = kg_lib.TokenSpace(num_relations=2, num_entities=6)
  max_len = 5
  both, edges = random_graph(1, 6, 2, 9)
  table, w = random_problem(3, space, max_len)
  constraint = grammar.GraphConstraint.from_triples(both, 6)
  heads = [0, 3, 5]
  result = run_beam(table, w, heads, space, beam=256, max_len=max_len, constraint=constraint,
                    aggregation='sum', length_norm=False)
  for row, head in enumerate(heads):
    expected = brute_force(table, w, head, space, max_len, edges)
    assert_matches(result, row, per_entity(expected, space, 'sum', False))


@pytest.mark.parametrize('constrained', [False, True])
def test_direct_ok_removes_only_the_direct_answers_of_its_queries(constrained):
  # Unconstrained, R=1 and E=3 keep the beam exhaustive (as in the test above).
  space = kg_lib.TokenSpace(num_relations=2 if constrained else 1,
                            num_entities=6 if constrained else 3)
  max_len = 5
  both, edges = random_graph(1, 6, 2, 9)
  table, w = random_problem(4, space, max_len)
  table[0, BOS, BOS, space.entity_offset:] += 3.0  # the direct form is the likeliest first action
  constraint = grammar.GraphConstraint.from_triples(both, 6) if constrained else None
  heads, direct = [0, 0, 2], [True, False, False]
  result = run_beam(table, w, heads, space, beam=384, max_len=max_len, constraint=constraint,
                    direct_ok=direct)
  for row, (head, ok) in enumerate(zip(heads, direct)):
    expected = brute_force(table, w, head, space, max_len, edges if constrained else None, ok)
    assert any(len(seq) == 2 for seq in expected) == ok  # `t <eos>` only where allowed
    assert_matches(result, row, per_entity(expected, space))
    # Boosted, a direct answer beats every path to some entity: its score exceeds its best path's.
    assert np.any(result.score[row] > result.best[row] + 1e-6) == ok


def is_valid_walk(seq, head, space, edges):
  """A finished sequence is `t <eos>` or a walk `r1 e1 … rn en <eos>` over the graph from `head`."""
  seq = list(seq[:list(seq).index(EOS)])
  if len(seq) == 1:
    return seq[0] >= space.entity_offset
  if len(seq) % 2:
    return False
  current = head
  for r_tok, e_tok in zip(seq[0::2], seq[1::2]):
    r, e = r_tok - space.relation_offset, e_tok - space.entity_offset
    if not (0 <= r < 2 * space.num_relations) or (r, e) not in edges.get(current, ()):
      return False
    current = e
  return True


@pytest.mark.parametrize('seed', [0, 1])
def test_constrained_mode_never_emits_an_invalid_move(seed):
  space = kg_lib.TokenSpace(num_relations=3, num_entities=30)
  max_len = 7
  both, edges = random_graph(seed, 30, 3, 60)
  rng = np.random.default_rng(seed)
  v = space.num_tokens
  # History-independent but sharp logits that favour invalid tokens (specials, wrong kinds).
  table = np.broadcast_to(rng.normal(size=(max_len, 1, 1, v)) * 5, (max_len, v, v, v)).copy()
  table[..., kg_lib.PAD] = table[..., kg_lib.MASK] = 50.0
  heads = rng.integers(0, 30, 8)
  result = run_beam(table.astype(np.float32), np.zeros(v, np.float32), heads, space, beam=16,
                    max_len=max_len, constraint=grammar.GraphConstraint.from_triples(both, 30),
                    finish_width=64, complete_last=True)
  count = 0
  for row, head in enumerate(heads):
    for e in range(space.num_entities):
      if np.isfinite(result.best[row, e]):
        count += 1
        assert is_valid_walk(result.path[row, e], int(head), space, edges), (head, e)
  assert count > 50  # plenty of paths were checked


def test_unconstrained_mode_prunes_only_dead_ends():
  space = kg_lib.TokenSpace(num_relations=2, num_entities=4)
  v = space.num_tokens
  table = np.zeros((7, v, v, v), np.float32)
  table[..., kg_lib.PAD] = table[..., kg_lib.BOS] = table[..., kg_lib.MASK] = 100.0
  result = run_beam(table, np.zeros(v, np.float32), [0], space, beam=8, max_len=7)
  reached = np.isfinite(result.score[0])
  assert reached.sum() > 0
  for e in np.flatnonzero(reached):
    body = list(got_path(result, 0, e)[:-1])
    if body:  # (entities reached by the direct form alone have no path of a hop)
      assert all(t >= space.relation_offset for t in body)  # no special token ever emitted
      assert body[-1] == space.entity_token(e)
  assert sum(bool(got_path(result, 0, e)) for e in np.flatnonzero(reached)) > 0


@functools.lru_cache(maxsize=None)
def small_model(variant, num_tokens=30):
  from configs import default  # pylint: disable=g-import-not-at-top
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model.emb_dim, config.model.mlp_dim, config.model.num_layers = 16, 32, 2
  config.model.num_heads, config.model.variant = 2, variant
  config.trajectories.max_hops = 2  # L = 5 steps
  rng = np.random.default_rng(0)
  model = imkga.build_model(config, num_tokens=num_tokens)
  inputs = imkga.dummy_inputs(model.config, batch_size=4)
  inputs.update(actions=rng.integers(0, num_tokens, (4, 5)).astype(np.int32),
                rtg=rng.normal(size=(4, 5)).astype(np.float32),
                head_token=rng.integers(10, num_tokens, 4).astype(np.int32),
                relation_token=rng.integers(4, 10, 4).astype(np.int32),
                fig=rng.normal(size=(4, 8)).astype(np.float32),
                fig_present=np.asarray([True, False, True, True]))
  params = jax.jit(model.init)(jax.random.key(1), inputs)['params']
  params = jax.tree.map(lambda x: np.asarray(x) + 0.3 * rng.normal(size=x.shape).astype(np.float32),
                        params)  # sharper than the initialisation
  return model, params, inputs


@pytest.mark.parametrize('variant,branch', [('mkg_rl', 'ocr'), ('no_img', 'concat')])
def test_cached_decode_step_equals_model_apply(variant, branch):
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  model, params, inputs = small_model(variant)
  full = jax.jit(model.apply)({'params': params}, inputs)  # [branches, 4, 5, 30]
  index = step_models.branch_index(model.branches, branch)
  single, sliced = imkga.select_branch(model, params, model.branches[index])
  context = {k: x for k, x in inputs.items() if k not in ('actions', 'rtg', 'token_keep')}
  space = kg_lib.TokenSpace(num_relations=3, num_entities=20)

  def all_steps(make):  # one jitted program feeding the five steps in order
    model = make(single, sliced, context)
    cache, out = None, []
    for step in range(5):
      tokens = grammar.token_range(step, 5, space)
      prev = None if step == 0 else jnp.asarray(inputs['actions'][:, None, step - 1])
      logits, cache = model.step(cache, prev, jnp.asarray(inputs['rtg'][:, None, step]), step,
                                 tokens)
      out.append(logits[:, 0])
    return out

  for make in (step_models.imkga_step_model, step_models.imkga_uncached_step_model):
    for step, got in enumerate(jax.jit(lambda: all_steps(make))()):
      tokens = grammar.token_range(step, 5, space)
      np.testing.assert_allclose(got, full[index, :, step, tokens[0]:tokens[1]], rtol=1e-5,
                                 atol=1e-5)


@pytest.mark.parametrize('constrained', [False, True])
def test_cached_beam_search_equals_uncached(constrained):
  # A model with sharp random weights: the same paths and scores with and without the cache.
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  space = kg_lib.TokenSpace(num_relations=3, num_entities=20)
  model, params, inputs = small_model('rl', space.num_tokens)
  single, sliced = imkga.select_branch(model, params, 'concat')
  context = {k: jnp.asarray(inputs[k]) for k in ('head_token', 'relation_token')}
  both, _ = random_graph(3, 20, 3, 80)
  constraint = grammar.GraphConstraint.from_triples(both, 20) if constrained else None

  def run(make):
    fn = jax.jit(lambda h: decode.beam_search(
        make(single, sliced, context), h, space=space, beam_size=8, max_len=5,
        rtg_constants=constants(space), constraint=constraint, finish_width=24,
        complete_last=True, aggregation='sum', length_norm=False))
    return jax.device_get(fn(space.token_to_entity(jnp.asarray(inputs['head_token']))))

  cached, uncached = run(step_models.imkga_step_model), run(step_models.imkga_uncached_step_model)
  np.testing.assert_allclose(cached.score, uncached.score, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cached.best, uncached.best, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(cached.path, uncached.path)
  assert np.isfinite(cached.score).sum() > 20


def test_branch_index():
  assert step_models.branch_index(('fig', 'ocr', 'concat'), 'concat') == 2
  assert step_models.branch_index(('concat',), 'fig') == 0  # single-branch variants
  with pytest.raises(ValueError, match='decode.branch'):
    step_models.branch_index(('fig', 'ocr', 'concat'), 'both')


def test_tile_beams_repeats_each_query_in_a_row():
  tiled = step_models.tile_beams({'x': np.arange(3)}, 2)
  assert list(np.asarray(tiled['x'])) == [0, 0, 1, 1, 2, 2]


def test_step_zero_reads_one_row_per_query_then_the_beam():
  # Every beam holds the same empty prefix at step 0: the model sees one row per query there, K
  # rows after (and the result is the exhaustive brute force's, as in the test above).
  space = kg_lib.TokenSpace(num_relations=1, num_entities=3)
  table, w = random_problem(5, space, 5)
  inner = step_models.history_step_model(table_stub(table, w), 5)
  rows = {}

  def step(cache, prev_action, rtg, n, tokens):
    rows[n] = rtg.shape
    return inner.step(cache, prev_action, rtg, n, tokens)

  model = step_models.StepModel(step, inner.gather)
  result = jax.jit(lambda h: decode.beam_search(
      model, h, space=space, beam_size=384, max_len=5, rtg_constants=constants(space)))(
          jnp.asarray([0, 1], jnp.int32))
  assert rows[0] == (2, 1) and all(rows[n] == (2, 384) for n in range(1, 4)), rows
  expected = brute_force(table, w, 0, space, 5)
  assert_matches(jax.device_get(result), 0, per_entity(expected, space))
