"""Training throughput: trajectories/s and achieved FLOP/s against this machine's matmul peak.

For each model size (the `synthetic` and `openbg` configs) it jits the real `train.train_step` (masks,
three branches, label-smoothed loss, modulation, clip, adamw) on random batches, and compares with a
reference point that has no framework overhead of ours: the same-shaped forward+backward of a plain
pre-LN transformer written directly in `jax.numpy` (one branch, no masks, no modulation), scaled to three
branches. Model FLOPs come from XLA's cost analysis of the compiled step; the peak is a large f32 matmul
measured in the same run.

Usage:
  python benchmarks/train_throughput.py [--configs=synthetic,openbg] [--steps=10] [--batch=256]
"""
import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from imkga_jax import sharding  # pylint: disable=g-import-not-at-top
from imkga_jax import train
from imkga_jax.models import imkga

VOCAB = {'synthetic': 2_909, 'openbg': 4 + 2 * 136 + 28_891}


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
  """f32 FLOP/s of an n×n matmul (best of `reps`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', float('nan')))


def random_batch(config, vocab: int, batch: int, entity_offset: int, rng: np.random.Generator):
  length = 2 * config.trajectories.max_hops + 1
  return {'head_token': rng.integers(entity_offset, vocab, batch).astype(np.int32),
          'relation_token': rng.integers(4, entity_offset, batch).astype(np.int32),
          'target': rng.integers(0, vocab - entity_offset, batch).astype(np.int32),
          'actions': rng.integers(4, vocab, (batch, length)).astype(np.int32),
          'rtg': rng.normal(size=(batch, length)).astype(np.float32),
          'kind': np.zeros(batch, np.int32)}


def time_fn(fn, args_fn, steps: int) -> float:
  """Seconds per call (after one warm-up call), arguments rebuilt by `args_fn` each call."""
  out = fn(*args_fn())
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args_fn())
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def bench_imkga(config, vocab: int, steps: int):
  model = imkga.build_model(config, vocab)
  tx = train.make_optimizer(config, model.branches)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  init, _, state_sharding = train.state_layout(config, model, tx, mesh)
  state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(0))
  num_relations = 136 if vocab > 10_000 else 11
  entity_offset = 4 + 2 * num_relations
  e = vocab - entity_offset
  rng = np.random.default_rng(0)
  table = {'fig': jnp.asarray(rng.random((e, config.features.fig_dim)), jnp.float32),
           'ocr': jnp.asarray(rng.random((e, config.features.ocr_dim)), jnp.float32),
           'fig_present': jnp.ones((e,), bool), 'ocr_present': jnp.ones((e,), bool)}
  step = jax.jit(lambda s, b, t, r: train.train_step(s, b, t, r, model=model, tx=tx, config=config,
                                                     entity_offset=entity_offset),
                 donate_argnums=(0,))
  batch = random_batch(config, vocab, config.train.batch_size, entity_offset, rng)
  key = jax.random.key(1)
  compiled = step.lower(state, batch, table, key).compile()
  flops = flops_of(compiled)
  holder = {'state': state}

  def call():
    holder['state'], metrics = compiled(holder['state'], batch, table, key)
    return metrics['loss']

  seconds = time_fn(lambda: call(), lambda: (), steps)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder['state'].params))
  return seconds, flops, params


def bench_reference(config, vocab: int, steps: int, branches: int):
  """A plain jnp pre-LN transformer of the same width/depth/sequence (2L tokens), fwd+bwd+SGD."""
  m = config.model
  d, layers, mlp, heads = m.emb_dim, m.num_layers, m.mlp_dim, m.num_heads
  tokens = 2 * (2 * config.trajectories.max_hops + 1)
  b = config.train.batch_size
  k = jax.random.split(jax.random.key(0), 8)
  params = {'emb': jax.random.normal(k[0], (vocab, d)) * 0.02,
            'qkv': jax.random.normal(k[1], (layers, d, 3 * d)) * 0.02,
            'out': jax.random.normal(k[2], (layers, d, d)) * 0.02,
            'w1': jax.random.normal(k[3], (layers, d, mlp)) * 0.02,
            'w2': jax.random.normal(k[4], (layers, mlp, d)) * 0.02}
  x_tokens = jax.random.randint(k[5], (b, tokens), 0, vocab)
  targets = jax.random.randint(k[6], (b, tokens // 2), 0, vocab)
  causal = jnp.tril(jnp.ones((tokens, tokens), bool))

  def norm(x):
    return (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-6)

  def loss_fn(p):
    x = p['emb'][x_tokens]
    for i in range(layers):
      q, kk, v = jnp.split(norm(x) @ p['qkv'][i], 3, axis=-1)
      q, kk, v = (t.reshape(b, tokens, heads, d // heads) for t in (q, kk, v))
      att = jnp.einsum('bqhd,bkhd->bhqk', q, kk) / np.sqrt(d // heads)
      att = jax.nn.softmax(jnp.where(causal, att, -1e9), axis=-1)
      x = x + jnp.einsum('bhqk,bkhd->bqhd', att, v).reshape(b, tokens, d) @ p['out'][i]
      x = x + jax.nn.gelu(norm(x) @ p['w1'][i]) @ p['w2'][i]
    logits = norm(x[:, ::2]) @ p['emb'].T
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

  @jax.jit
  def step(p):
    loss, g = jax.value_and_grad(loss_fn)(p)
    return jax.tree.map(lambda a, c: a - 1e-3 * c, p, g), loss

  compiled = step.lower(params).compile()
  flops = flops_of(compiled) * branches
  holder = {'p': params}

  def call():
    holder['p'], loss = compiled(holder['p'])
    return loss

  seconds = time_fn(lambda: call(), lambda: (), steps) * branches
  return seconds, flops


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='synthetic,openbg')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--batch', type=int, default=256)
  args = parser.parse_args()
  peak = matmul_peak()
  print(f'f32 matmul peak (2048^3, best of 10): {peak / 1e9:.1f} GFLOP/s; devices: {jax.devices()}')
  print('| model | params | batch | step ms | trajectories/s | GFLOP/step | GFLOP/s | of peak | '
        'plain-jnp reference traj/s | reference of peak |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for name in args.configs.split(','):
    config = importlib.import_module(f'configs.{name}').get_config()
    config.train.batch_size = args.batch
    vocab = VOCAB[name]
    seconds, flops, params = bench_imkga(config, vocab, args.steps)
    branches = len(imkga.build_model(config, vocab).branches)
    ref_seconds, ref_flops = bench_reference(config, vocab, args.steps, branches)
    print(f'| {name} (vocab {vocab:,}) | {params / 1e6:.2f}M | {args.batch} | {seconds * 1e3:.0f} | '
          f'{args.batch / seconds:,.0f} | {flops / 1e9:.1f} | {flops / seconds / 1e9:.1f} | '
          f'{flops / seconds / peak:.0%} | {args.batch / ref_seconds:,.0f} | '
          f'{ref_flops / ref_seconds / peak:.0%} |', flush=True)


if __name__ == '__main__':
  main()
