"""Tests of imkga_jax/decode.py: beam search vs brute-force enumeration, graph constraint, adapter."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imkga_jax import decode
from imkga_jax import kg as kg_lib
from imkga_jax import rtg as rtg_lib

BOS, EOS = kg_lib.BOS, kg_lib.EOS


def constants(space):
  return rtg_lib.RtgConstants(1.0, -1.0, -0.1, entity_offset=space.entity_offset)


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
             direct_ok=None):
  fn = jax.jit(lambda h, d: decode.beam_search(
      table_stub(table, rtg_weight), h, space=space, beam_size=beam, max_len=max_len,
      rtg_constants=constants(space), constraint=constraint, complete_last=complete_last,
      direct_ok=d))
  direct_ok = None if direct_ok is None else jnp.asarray(direct_ok, bool)
  return jax.device_get(fn(jnp.asarray(heads, jnp.int32), direct_ok))


def finished(result, row):
  """{sequence (up to <eos>): score} of one query's valid finished beams, in result order."""
  seqs = {}
  for seq, score, answer in zip(result.seqs[row], result.score[row], result.answer[row]):
    if answer >= 0:
      seq = list(seq)
      seqs[tuple(seq[:seq.index(EOS) + 1])] = float(score)
  return seqs


def random_problem(seed, space, max_len):
  rng = np.random.default_rng(seed)
  v = space.num_tokens
  return rng.normal(size=(max_len, v, v, v)).astype(np.float32), rng.normal(size=v).astype(np.float32)


@pytest.mark.parametrize('max_len,beam', [(3, 40), (5, 384)])
def test_exhaustive_beam_matches_brute_force(max_len, beam):
  # R=1, E=3, V=9: with this beam nothing is pruned, so every finished sequence must appear.
  space = decode.TokenSpace(num_relations=1, num_entities=3)
  table, w = random_problem(max_len, space, max_len)
  result = run_beam(table, w, [0, 1], space, beam, max_len)
  expected = brute_force(table, w, 0, space, max_len)
  got = finished(result, 0)
  assert set(got) == set(expected)
  for seq, score in got.items():
    np.testing.assert_allclose(score, expected[seq], rtol=1e-4, atol=1e-5)
  scores = [s for s in result.score[0] if np.isfinite(s)]
  assert scores == sorted(scores, reverse=True)  # best first
  # Invalid slots: -inf score, answer -1, and only those.
  assert np.array_equal(result.answer[0] >= 0, np.isfinite(result.score[0]))


def test_small_beam_finds_the_known_best_paths_in_order():
  # A stub that strongly prefers `r0 e1 r1 e2 <eos>` (hops 2), then the direct `e0 <eos>`.
  space = decode.TokenSpace(num_relations=1, num_entities=3)
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
  got = list(finished(result, 0).items())[:2]
  assert [s for s, _ in got] == [s for s, _ in best]
  np.testing.assert_allclose([v for _, v in got], [v for _, v in best], rtol=1e-5)
  assert result.answer[0, 0] == 2 and result.hops[0, 0] == 2 and result.answer[0, 1] == 0


def full_length_reference(expected, space, max_len, prefixes=None):
  """Per entity: (log Σ exp logprob, max score) of the brute-force full-length sequences ending in it,
  restricted to those whose first `max_len - 2` tokens are in `prefixes` (None: all)."""
  logsum = np.full(space.num_entities, -np.inf)
  best = np.full(space.num_entities, -np.inf)
  for seq, score in expected.items():
    if len(seq) != max_len or (prefixes is not None and seq[:max_len - 2] not in prefixes):
      continue
    hops = sum(space.relation_offset <= t < space.entity_offset for t in seq)
    e = seq[-2] - space.entity_offset
    logsum[e] = np.logaddexp(logsum[e], score * max(hops, 1))
    best[e] = max(best[e], score)
  return logsum, best


@pytest.mark.parametrize('beam', [384, 2])
def test_last_step_completion_scores_every_entity_after_the_live_prefixes(beam):
  # R=1, E=5, L=5. Beam 384 prunes nothing: the completions are every full-length path. Beam 2
  # keeps two prefixes at step L - 2; the completions are every path through them, for all five
  # entities, where the finished beams of the last step hold only two.
  space = decode.TokenSpace(num_relations=1, num_entities=5)
  max_len = 5
  table, w = random_problem(11, space, max_len)
  result = run_beam(table, w, [0], space, beam, max_len, complete_last=True)
  expected = brute_force(table, w, 0, space, max_len)
  live = [tuple(p[:max_len - 2]) for p in result.completion_prefix[0]]
  prefixes = None if beam > 100 else {p for p in live if kg_lib.PAD not in p}
  if prefixes is not None:
    assert len(prefixes) == beam
  logsum, best = full_length_reference(expected, space, max_len, prefixes)
  np.testing.assert_allclose(result.completion_logprob[0], logsum, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(result.completion_score[0], best, rtol=1e-4, atol=1e-5)
  assert np.all(np.isfinite(result.completion_logprob[0]))  # every entity scored
  for e in range(space.num_entities):  # the parent gives the best full-length path
    path = live[result.completion_parent[0, e]] + (space.entity_offset + e, EOS)
    np.testing.assert_allclose(expected[path], best[e], rtol=1e-4, atol=1e-5)
  full = [a for a, seq in zip(result.answer[0], result.seqs[0]) if a >= 0 and seq[-1] == EOS]
  assert len(set(full)) <= beam  # the finished beams alone see at most `beam` of them
  plain = run_beam(table, w, [0], space, beam, max_len)
  assert plain.completion_logprob is None  # off by default, nothing extra carried
  np.testing.assert_array_equal(plain.score, result.score)  # and the beams are unchanged


def test_wide_finishing_finishes_every_entity_after_the_kept_relations():
  # R=2 (4 relation tokens), E=4, L=5, beam 2. Step 0 strongly prefers relations, so both live
  # beams at step 1 are relations; with W = 8 = beam * E every `r e <eos>` through them is finished
  # (plain beam search finishes two), each with its brute-force score; the rest is unchanged.
  space = decode.TokenSpace(num_relations=2, num_entities=4)
  max_len, beam = 5, 2
  table, w = random_problem(5, space, max_len)
  table[0, BOS, BOS, space.relation_offset:space.entity_offset] += 20.0
  expected = brute_force(table, w, 0, space, max_len)
  stub = table_stub(table, w)
  fn = jax.jit(lambda h: decode.beam_search(
      stub, h, space=space, beam_size=beam, max_len=max_len, rtg_constants=constants(space),
      finish_width=8, finish_logits=stub))
  wide = jax.device_get(fn(jnp.zeros([1], jnp.int32)))
  plain = run_beam(table, w, [0], space, beam, max_len)
  got, base = finished(wide, 0), finished(plain, 0)
  for seq, score in got.items():
    np.testing.assert_allclose(score, expected[seq], rtol=1e-4, atol=1e-5)
  one_hop = {seq for seq in got if len(seq) == 3}
  kept = {seq[0] for seq in one_hop}
  assert len(kept) == beam and all(space.relation_offset <= r < space.entity_offset for r in kept)
  assert one_hop == {(r, space.entity_offset + e, EOS) for r in kept for e in range(4)}
  assert len([seq for seq in base if len(seq) == 3]) == beam
  assert set(base) <= set(got)
  assert {s for s in got if len(s) != 3} == {s for s in base if len(s) != 3}  # other steps as before
  assert wide.seqs.shape[1] == (max_len - 1) * 8
  with pytest.raises(ValueError, match='finish_logits'):
    decode.beam_search(stub, jnp.zeros([1], jnp.int32), space=space, beam_size=beam,
                       max_len=max_len, rtg_constants=constants(space), finish_width=8)


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
  g = decode.GraphConstraint.from_triples(both, 7)
  indptr, rel, tail = (np.asarray(x) for x in (g.indptr, g.relation, g.tail))
  for e in range(7):
    span = slice(indptr[e], indptr[e + 1])
    assert set(zip(rel[span], tail[span])) == edges.get(e, set())
  assert g.max_degree == max(len(v) for v in edges.values())


def test_constrained_exhaustive_matches_brute_force():
  space = decode.TokenSpace(num_relations=2, num_entities=6)
  max_len = 5
  both, edges = random_graph(1, 6, 2, 9)
  table, w = random_problem(3, space, max_len)
  constraint = decode.GraphConstraint.from_triples(both, 6)
  heads = [0, 3, 5]
  result = run_beam(table, w, heads, space, beam=256, max_len=max_len, constraint=constraint)
  for row, head in enumerate(heads):
    expected = brute_force(table, w, head, space, max_len, edges)
    got = finished(result, row)
    assert set(got) == set(expected)
    for seq, score in got.items():
      np.testing.assert_allclose(score, expected[seq], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('constrained', [False, True])
def test_direct_ok_removes_only_the_direct_answers_of_its_queries(constrained):
  # Unconstrained, R=1 and E=3 keep the beam exhaustive (as in the test above).
  space = decode.TokenSpace(num_relations=2 if constrained else 1,
                            num_entities=6 if constrained else 3)
  max_len = 5
  both, edges = random_graph(1, 6, 2, 9)
  table, w = random_problem(4, space, max_len)
  table[0, BOS, BOS, space.entity_offset:] += 3.0  # the direct form is the likeliest first action
  constraint = decode.GraphConstraint.from_triples(both, 6) if constrained else None
  heads, direct = [0, 0, 2], [True, False, False]
  result = run_beam(table, w, heads, space, beam=384, max_len=max_len, constraint=constraint,
                    direct_ok=direct)
  for row, (head, ok) in enumerate(zip(heads, direct)):
    expected = brute_force(table, w, head, space, max_len, edges if constrained else None, ok)
    got = finished(result, row)
    assert set(got) == set(expected)
    assert any(len(seq) == 2 for seq in got) == ok  # `t <eos>` only where allowed
    for seq, score in got.items():
      np.testing.assert_allclose(score, expected[seq], rtol=1e-4, atol=1e-5)


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
  space = decode.TokenSpace(num_relations=3, num_entities=30)
  max_len = 7
  both, edges = random_graph(seed, 30, 3, 60)
  rng = np.random.default_rng(seed)
  v = space.num_tokens
  # History-independent but sharp logits that favour invalid tokens (specials, wrong kinds).
  table = np.broadcast_to(rng.normal(size=(max_len, 1, 1, v)) * 5, (max_len, v, v, v)).copy()
  table[..., kg_lib.PAD] = table[..., kg_lib.MASK] = 50.0
  heads = rng.integers(0, 30, 8)
  result = run_beam(table.astype(np.float32), np.zeros(v, np.float32), heads, space, beam=16,
                    max_len=max_len, constraint=decode.GraphConstraint.from_triples(both, 30))
  count = 0
  for row, head in enumerate(heads):
    for seq, answer in zip(result.seqs[row], result.answer[row]):
      if answer >= 0:
        count += 1
        assert is_valid_walk(seq, int(head), space, edges), (head, seq)
  assert count > 50  # plenty of paths were checked


def test_unconstrained_mode_prunes_only_dead_ends():
  space = decode.TokenSpace(num_relations=2, num_entities=4)
  v = space.num_tokens
  table = np.zeros((7, v, v, v), np.float32)
  table[..., kg_lib.PAD] = table[..., kg_lib.BOS] = table[..., kg_lib.MASK] = 100.0
  result = run_beam(table, np.zeros(v, np.float32), [0], space, beam=8, max_len=7)
  valid = result.answer[0] >= 0
  assert valid.sum() > 0
  for seq in result.seqs[0][valid]:
    body = list(seq[:list(seq).index(EOS)])
    assert all(t >= space.relation_offset for t in body)  # no special token ever emitted
    assert body[-1] >= space.entity_offset


@pytest.mark.parametrize('variant,branch', [('mkg_rl', 'ocr'), ('no_img', 'concat')])
def test_adapter_equals_model_apply(variant, branch):
  from configs import default  # pylint: disable=g-import-not-at-top
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model.emb_dim, config.model.mlp_dim, config.model.num_layers = 16, 32, 1
  config.model.num_heads, config.model.variant = 2, variant
  rng = np.random.default_rng(0)
  model = imkga.build_model(config, num_tokens=30)
  inputs = imkga.dummy_inputs(model.config, batch_size=4)
  inputs.update(actions=jnp.asarray(rng.integers(0, 30, (4, 7)), jnp.int32),
                rtg=jnp.asarray(rng.normal(size=(4, 7)), jnp.float32),
                fig=jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
                fig_present=jnp.asarray([True, False, True, True]))
  params = jax.jit(model.init)(jax.random.key(1), inputs)['params']
  full = jax.jit(model.apply)({'params': params}, inputs)  # [branches, 4, 7, 30]
  index = decode.branch_index(model.branches, branch)
  context = {k: x for k, x in inputs.items() if k not in ('actions', 'rtg')}
  fn = jax.jit(lambda a, r, s: decode.make_tokens_to_logits(model, params, context, index)(a, r, s))
  # The single-branch model used for decoding (imkga.select_branch) gives the same logits.
  single = jax.jit(lambda a, r, s: decode.make_tokens_to_logits(
      *imkga.select_branch(model, params, model.branches[index]), context, 0)(a, r, s))
  for step in (0, 3, 6):
    np.testing.assert_allclose(fn(inputs['actions'], inputs['rtg'], jnp.int32(step)),
                               full[index, :, step], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(single(inputs['actions'], inputs['rtg'], jnp.int32(step)),
                               full[index, :, step], rtol=1e-5, atol=1e-5)


def test_branch_index():
  assert decode.branch_index(('fig', 'ocr', 'concat'), 'concat') == 2
  assert decode.branch_index(('concat',), 'fig') == 0  # single-branch variants
  with pytest.raises(ValueError, match='decode.branch'):
    decode.branch_index(('fig', 'ocr', 'concat'), 'both')


def test_tile_beams_repeats_each_query_in_a_row():
  tiled = decode.tile_beams({'x': np.arange(3)}, 2)
  assert list(np.asarray(tiled['x'])) == [0, 0, 1, 1, 2, 2]
