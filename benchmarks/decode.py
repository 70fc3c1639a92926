"""Beam-search decoding speed and memory: queries/s and peak memory per (vocabulary, beam).

The model is randomly initialised with the model of configs/synthetic.py (mkg_rl, 3 branches, width
128, 2 layers, MLP 256; `--config=default` for the larger default model): decoding cost depends on
the shapes (vocabulary, beam, layers, width, branches), not on trained weights, so the figures hold for
a trained model of the same size. Vocabularies: the embedded synthetic KG (generated from the default
config) and WN18RR (40,943 entities, read from the shared datasets folder, `unknown='keep'`).

Each (dataset, beam, mode) runs in a fresh subprocess so that its peak RSS is its own. Reported:
queries/s (batch / median wall time of a jitted call, after compilation), CPU seconds per query
(process time: robust when other jobs share the cores), compile time, XLA's buffer
sizes of the compiled call (arguments + outputs + temporaries = peak device memory of the call) and the
process's peak RSS.

  python benchmarks/decode.py --datasets=synthetic,wn18rr --beams=64,256
  python benchmarks/decode.py --datasets=wn18rr --beams=64 --constrained
  python benchmarks/decode.py --datasets=synthetic --beams=64 --adapter=full   # slice after apply
  python benchmarks/decode.py --datasets=synthetic --beams=64 --constrained --finish_width=0 \
      --complete_last=false   # the plain beam search, without the two config defaults' extras
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)


def load_kg(name: str):
  from configs import default  # pylint: disable=g-import-not-at-top
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  from imkga_jax import readers  # pylint: disable=g-import-not-at-top
  if name == 'synthetic':
    out = '/tmp/imkga_bench_synthetic'
    if not os.path.isdir(out):
      synthetic.generate_from_config(default.get_config(), out)
    return readers.load_kg(out)
  if name == 'wn18rr':
    return readers.load_kg(os.path.join(ROOT, '..', 'shared', 'datasets', 'WN18RR'), unknown='keep')
  raise ValueError(f'--datasets: unknown dataset {name!r} (synthetic or wn18rr)')


def run_one(dataset: str, beam: int, batch: int, repeats: int, constrained: bool, adapter: str,
            config_name: str, finish_width: int | None = None, complete_last: bool | None = None
            ) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from imkga_jax import decode, evaluate, rtg  # pylint: disable=g-import-not-at-top
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top

  kg = load_kg(dataset)
  config = importlib.import_module(f'configs.{config_name}').get_config()
  config.decode.beam_size, config.decode.batch_size = beam, batch
  config.decode.constrained = constrained
  if finish_width is not None:
    config.decode.finish_width = finish_width
  if complete_last is not None:
    config.decode.complete_last = complete_last
  model = imkga.build_model(config, kg.num_tokens)
  params = nn.meta.unbox(
      jax.jit(model.init)(jax.random.key(0), imkga.dummy_inputs(model.config))['params'])
  decode_fn, constraint = evaluate.build_decoder(model, kg, config)
  if adapter == 'full':  # the contract's plain path: full [branches, N, L, V] logits, then slice
    def full_factory(p, x):
      def t2l(actions, rtg, step):
        logits = model.apply({'params': p}, dict(x, actions=actions, rtg=rtg))
        return lax.dynamic_index_in_dim(logits[model.branches.index('concat')], step, axis=1,
                                        keepdims=False)
      return t2l
    decode_fn = evaluate.make_decode_fn(
        full_factory, decode.TokenSpace.from_kg(kg), beam_size=beam,
        max_len=2 * config.trajectories.max_hops + 1,
        rtg_constants=rtg.constants_from_config(config, kg.num_relations))
  features = {'fig': np.zeros((kg.num_entities, config.features.fig_dim), np.float32),
              'ocr': np.zeros((kg.num_entities, config.features.ocr_dim), np.float32),
              'fig_present': np.zeros(kg.num_entities, bool),
              'ocr_present': np.zeros(kg.num_entities, bool)}
  queries = kg.test[:batch]
  inputs = evaluate.query_inputs(kg, queries, features)
  start = time.perf_counter()
  compiled = decode_fn.lower(params, inputs, constraint).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  times, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(params, inputs, constraint))
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  median = float(np.median(times))
  return {
      'config': config_name, 'dataset': dataset, 'entities': kg.num_entities,
      'vocab': kg.num_tokens, 'beam': beam,
      'batch': batch, 'mode': 'constrained' if constrained else 'unconstrained', 'adapter': adapter,
      'complete_last': bool(config.decode.complete_last),
      'finish_width': int(config.decode.finish_width),
      'max_degree': constraint.max_degree if constraint is not None else None,
      'compile_s': round(compile_s, 1), 'call_s': [round(t, 2) for t in times],
      'queries_per_s': round(batch / median, 3),
      'cpu_s_per_query': round(float(np.median(cpu)) / batch, 2),
      'xla_args_mb': round(mem.argument_size_in_bytes / 2**20, 1),
      'xla_out_mb': round(mem.output_size_in_bytes / 2**20, 1),
      'xla_temp_mb': round(mem.temp_size_in_bytes / 2**20, 1),
      'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--datasets', default='synthetic,wn18rr')
  parser.add_argument('--beams', default='64,256')
  # Queries per jitted call for each beam (beam*batch rows are decoded at once).
  parser.add_argument('--batch', default='64:8,256:2',
                      help='beam:batch pairs; queries per jitted call')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--constrained', action='store_true')
  parser.add_argument('--adapter', default='step', choices=('step', 'full'))
  parser.add_argument('--config', default='synthetic',
                      help='configs/<name>.py that gives the model size')
  parser.add_argument('--finish_width', type=int, default=None,
                      help='decode.finish_width (default: the config\'s)')
  parser.add_argument('--complete_last', default=None, choices=('true', 'false'),
                      help='decode.complete_last (default: the config\'s)')
  parser.add_argument('--single', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  batches = dict(tuple(int(v) for v in pair.split(':')) for pair in args.batch.split(','))
  if args.single:
    dataset, beam = args.single.split(':')
    beam = int(beam)
    complete_last = None if args.complete_last is None else args.complete_last == 'true'
    print(json.dumps(run_one(dataset, beam, batches.get(beam, 4), args.repeats, args.constrained,
                             args.adapter, args.config, args.finish_width, complete_last)))
    return
  for dataset in args.datasets.split(','):
    for beam in (int(b) for b in args.beams.split(',')):
      cmd = [sys.executable, __file__, f'--single={dataset}:{beam}', f'--batch={args.batch}',
             f'--repeats={args.repeats}', f'--adapter={args.adapter}', f'--config={args.config}']
      if args.constrained:
        cmd.append('--constrained')
      if args.finish_width is not None:
        cmd.append(f'--finish_width={args.finish_width}')
      if args.complete_last is not None:
        cmd.append(f'--complete_last={args.complete_last}')
      out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
      print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == '__main__':
  main()
