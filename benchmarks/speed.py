"""Speed in one run: the machine's f32 matmul peak, the train step's FLOP/s, and decoding cost.

* `matmul_peak_gflops`: a 2048³ f32 matmul through XLA, best of 10.
* `train`: the real jitted `train.train_step` (masks, branches, label-smoothed loss, modulation, clip,
  adamw) of the `synthetic` and `openbg` configs on random batches of grammar-valid paths, with the
  whole-vocabulary head and with the typed head (`loss.typed_head`; f32, and bf16 typed); FLOPs
  from XLA's cost analysis of the compiled step, its share of the peak, trajectories per second.
* `decode`: CPU seconds (process time, every core counted) per query of the jitted beam search at
  beam 64 and 256, unconstrained, 3 hops, random weights, `complete_last` and the default
  `finish_width` (256), cached (`step_models.imkga_step_model`: one new token pair per beam and
  step, the head over the token range the grammar allows) and uncached (`imkga_uncached_step_model`:
  the whole prefix each step, the full-vocabulary head), at three sizes: `synthetic` (the synthetic
  config's model over its 2,909 tokens), `wn18rr` (the structure config's model over WN18RR's
  40,969 tokens) and `squire` (SQUIRE's: 6 layers, width 256, MLP 512, 4 heads, 23k tokens).

Writes `benchmarks/results/speed.json`:
  {"matmul_peak_gflops": x, "train": [{"config", "peak_share", "traj_per_s", ...}],
   "decode": [{"size", "beam", "cached", "cpu_s_per_query", ...}]}

Usage:
  python benchmarks/speed.py [--quick] [--train_only] [--out=benchmarks/results/speed.json]
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from configs import default  # pylint: disable=g-import-not-at-top
from configs import openbg
from configs import structure
from configs import synthetic
from imkga_jax import decode
from imkga_jax import kg as kg_lib
from imkga_jax import rtg as rtg_lib
from imkga_jax import sharding
from imkga_jax import step_models
from imkga_jax import train
from imkga_jax.models import imkga

# (relations R, entities E) of each vocabulary.
SPACES = {'synthetic': (11, 2_883), 'openbg': (136, 28_891), 'wn18rr': (11, 40_943),
          'squire': (200, 22_600)}


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


# ============================================================================ training
def random_paths(space: kg_lib.TokenSpace, batch: int, length: int, rng) -> np.ndarray:
  """`[batch, length]` random sequences of the path grammar (`t <eos>` or `r1 e1 … rn en <eos>`,
  0 to (length-1)/2 hops, padded), as the prepared trajectories are: a typed head's loss needs them."""
  out = np.full((batch, length), kg_lib.PAD, np.int32)
  for b, hops in enumerate(rng.integers(0, (length - 1) // 2 + 1, batch)):
    seq = ([rng.integers(space.entity_offset, space.num_tokens)] if hops == 0 else
           [x for _ in range(hops) for x in (rng.integers(space.relation_offset, space.entity_offset),
                                             rng.integers(space.entity_offset, space.num_tokens))])
    out[b, :len(seq) + 1] = seq + [kg_lib.EOS]
  return out


def bench_train(name: str, config, steps: int) -> dict:
  space = kg_lib.TokenSpace(*SPACES[name])
  model = imkga.build_model(config, space.num_tokens)
  tx = train.make_optimizer(config, model.branches)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  init, _, state_sharding = train.state_layout(config, model, tx, mesh)
  state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(0))
  rng = np.random.default_rng(0)
  e, b, length = space.num_entities, config.train.batch_size, model.config.num_steps
  table = {'fig': jnp.asarray(rng.random((e, config.features.fig_dim)), jnp.float32),
           'ocr': jnp.asarray(rng.random((e, config.features.ocr_dim)), jnp.float32),
           'fig_present': jnp.ones((e,), bool), 'ocr_present': jnp.ones((e,), bool),
           'mentions': jnp.full((e, config.features.max_mentions), -1, jnp.int32)}
  batch = {'head_token': rng.integers(space.entity_offset, space.num_tokens, b).astype(np.int32),
           'relation_token': rng.integers(4, space.entity_offset, b).astype(np.int32),
           'target': rng.integers(0, e, b).astype(np.int32),
           'actions': random_paths(space, b, length, rng),
           'rtg': rng.normal(size=(b, length)).astype(np.float32),
           'kind': np.zeros(b, np.int32)}
  batch = jax.device_put(batch)
  step = jax.jit(lambda s, x, t, r: train.train_step(s, x, t, r, model=model, tx=tx, config=config,
                                                     entity_offset=space.entity_offset),
                 donate_argnums=(0,))
  key = jax.random.key(1)
  compiled = step.lower(state, batch, table, key).compile()
  flops = flops_of(compiled)
  state, metrics = compiled(state, batch, table, key)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, table, key)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  if not np.isfinite(float(metrics['loss'])):
    raise FloatingPointError(f'speed.py: the {name} train step gave a non-finite loss')
  return {'config': name, 'dtype': config.model.dtype, 'typed_head': bool(config.loss.typed_head),
          'batch': b, 'vocab': space.num_tokens,
          'params_m': round(sum(x.size for x in jax.tree.leaves(state.params)) / 1e6, 3),
          'step_ms': round(seconds * 1e3, 1), 'traj_per_s': round(b / seconds, 1),
          'gflop_per_step': round(flops / 1e9, 2), 'gflops': round(flops / seconds / 1e9, 1)}


# ============================================================================ decoding
def decode_config(size: str):
  """The model config of a decoding size (rl variant: one branch, no features)."""
  if size == 'synthetic':
    config = synthetic.get_config()
  else:
    config = structure.get_config('wn18rr')
  config.model.variant = 'rl'
  if size == 'squire':
    config.model.num_layers, config.model.emb_dim = 6, 256
    config.model.mlp_dim, config.model.num_heads = 512, 4
  return config


def bench_decode(size: str, beam: int, cached: bool, batch: int, batches: int) -> dict:
  config = decode_config(size)
  space = kg_lib.TokenSpace(*SPACES[size])
  model = imkga.build_model(config, space.num_tokens)
  rng = np.random.default_rng(0)
  params = model.init(jax.random.key(0), imkga.dummy_inputs(model.config, 2))['params']
  params = jax.tree.map(lambda x: jnp.asarray(x), params)
  make = step_models.imkga_step_model if cached else step_models.imkga_uncached_step_model
  d = default.get_config().decode
  fn = decode.make_decode_fn(
      lambda p, context: make(model, p, context), space, beam_size=beam,
      max_len=model.config.num_steps,
      rtg_constants=rtg_lib.constants_from_config(config, space),
      finish_width=d.finish_width, complete_last=d.complete_last)
  features = {'fig': np.zeros((space.num_entities, config.features.fig_dim), np.float32),
              'ocr': np.zeros((space.num_entities, config.features.ocr_dim), np.float32),
              'fig_present': np.zeros(space.num_entities, bool),
              'ocr_present': np.zeros(space.num_entities, bool),
              'mentions': np.full((space.num_entities, config.features.max_mentions), -1, np.int32)}

  def queries():
    return np.stack([rng.integers(0, space.num_entities, batch),
                     rng.integers(0, 2 * space.num_relations, batch), np.zeros(batch, int)],
                    axis=1).astype(np.int32)

  jax.block_until_ready(fn(params, features, queries()))  # compile
  cpu, wall = time.process_time(), time.perf_counter()
  for _ in range(batches):
    jax.block_until_ready(fn(params, features, queries()))
  cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
  n = batch * batches
  return {'size': size, 'beam': beam, 'cached': cached, 'vocab': space.num_tokens,
          'layers': config.model.num_layers, 'width': config.model.emb_dim,
          'cpu_s_per_query': round(cpu / n, 4), 'wall_s_per_query': round(wall / n, 4)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results',
                                                    'speed.json'))
  parser.add_argument('--quick', action='store_true', help='fewer steps and batches')
  parser.add_argument('--train_steps', type=int, default=10)
  parser.add_argument('--decode_batches', type=int, default=2)
  parser.add_argument('--sizes', default='synthetic,wn18rr,squire')
  parser.add_argument('--skip_uncached', action='store_true')
  parser.add_argument('--train_only', action='store_true',
                      help='the train rows only (no decoding; --out then gets no decode rows)')
  args = parser.parse_args()
  steps, batches = (3, 1) if args.quick else (args.train_steps, args.decode_batches)
  out = {'device': str(jax.devices()[0].device_kind), 'backend': jax.default_backend(),
         'cpu_count': os.cpu_count()}
  peak = matmul_peak()
  out['matmul_peak_gflops'] = round(peak / 1e9, 1)
  print(f'f32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s on {out["device"]}', flush=True)
  out['train'] = []
  for name, get in (('synthetic', synthetic.get_config), ('openbg', openbg.get_config)):
    for dtype, typed in (('float32', False), ('float32', True), ('bfloat16', True)):
      config = get()
      config.model.dtype = dtype
      config.loss.typed_head = typed
      config.train.batch_size = 256
      row = bench_train(name, config, steps)
      row['peak_share'] = round(row['gflops'] * 1e9 / peak, 3)
      out['train'].append(row)
      print('train', json.dumps(row), flush=True)
  out['decode'] = []
  for size in ([] if args.train_only else args.sizes.split(',')):
    for beam in (64, 256):
      for cached in (True, False):
        if args.skip_uncached and not cached:
          continue
        row = bench_decode(size, beam, cached, batch=8 if beam == 256 else 16, batches=batches)
        out['decode'].append(row)
        print('decode', json.dumps(row), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w', encoding='utf-8') as f:
    json.dump(out, f, indent=1)
    f.write('\n')
  print('wrote', args.out)


if __name__ == '__main__':
  main()
