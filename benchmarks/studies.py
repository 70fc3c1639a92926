"""The paper's §4.7 and §4.8 studies on the synthetic KG: Figures 6-10, one PNG each.

* `masked` (Fig. 6 MRR, Fig. 7 Hits@1): `mkg_rl`, `no_img` and the best baseline (ComplEx on this KG,
  benchmarks/RESULTS.md) trained on the source KG (100 %) and on `data_prep/variants.py`'s masked-x
  folders, x in 80, 70, 47, 35, 28; test is the source's test in every row.
* `batch` (Fig. 8): batch size N in 16 … 512 at a fixed number of training trajectories
  (`--examples`, so N = 16 takes 32 times the steps of N = 512).
* `epsilon` (Fig. 9): label smoothing ε in 0.1 … 0.9 with α = 0.5, as the paper.
* `alpha` (Fig. 10): modulation α in 0.1 … 0.9 with ε = 0.9, as the paper.

Every point is one real run (`launch.py` or `imkga_jax.baselines.train`) in its own workdir, run by
`benchmarks/table3.py`'s runner (skipped when its workdir holds the metrics of the same command); the
hyper-parameter studies share one prepared folder. Runs must fit a 2-core CPU: shrink `--steps` /
`--examples` and `--max_queries`, never the grid, and the budget is written next to each figure.

Usage:
  python benchmarks/studies.py --study=masked --out=/tmp/studies --steps=1000 --max_queries=300 --write
  python benchmarks/studies.py --study=epsilon --out=/tmp/studies --steps=1000 --max_queries=300 --write
"""
import argparse
import glob
import os
import shlex
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import table3  # pylint: disable=g-import-not-at-top

ROOT = table3.ROOT
SHARES = (100, 80, 70, 47, 35, 28)
BATCHES = (16, 32, 64, 128, 256, 512)
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FIGURES = {'masked': ('fig6_masked_mrr.png', 'fig7_masked_hits1.png'), 'batch': ('fig8_batch.png',),
           'epsilon': ('fig9_epsilon.png',), 'alpha': ('fig10_alpha.png',)}


def source_and_variants(out: str) -> tuple[str, str]:
  """Generates the synthetic KG and its masked variants once (seconds); returns their folders."""
  src, var = os.path.join(out, 'source'), os.path.join(out, 'variants')
  if not os.path.exists(os.path.join(src, 'OpenBG-IMG_train.tsv')):
    subprocess.run([sys.executable, '-m', 'data_prep.synthetic', '--out', src, '--overwrite'],
                   cwd=ROOT, check=True)
  if not os.path.isdir(os.path.join(var, 'masked-28')):
    subprocess.run([sys.executable, '-m', 'data_prep.variants', f'--src={src}', f'--out={var}',
                    '--variants=masked', '--shares=' + ','.join(map(str, SHARES[1:])), '--overwrite'],
                   cwd=ROOT, check=True)
  return src, var


def imkga_argv(workdir: str, args, extra: list[str]) -> list[str]:
  argv = ['launch.py', '--config=configs/synthetic.py', f'--workdir={workdir}',
          f'--config.decode.max_queries={args.max_queries}', '--config.decode.splits=test']
  if args.steps and not any(x.startswith('--config.train.num_steps=') for x in extra):
    argv.append(f'--config.train.num_steps={args.steps}')
  return argv + extra


def masked_rows(args) -> list[dict]:
  folder = os.path.join(args.out, 'masked')
  if args.dry_run:
    src, var = os.path.join(folder, 'source'), os.path.join(folder, 'variants')
  else:
    src, var = source_and_variants(folder)
  rows = []
  for share in SHARES:
    root = src if share == 100 else os.path.join(var, f'masked-{share}')
    data = [f'--config.data.root={root}', '--config.data.synthetic=False',
            '--config.data.layout=openbg', '--config.data.unknown_entities=keep',
            # The masked variants' image folders are symlinks into the source KG.
            '--config.data.outside_links=follow']
    base = os.path.join(args.out, 'masked', f'x{share}')
    for variant in ('mkg_rl', 'no_img'):
      wd = os.path.join(base, variant)
      rows.append(dict(name=f'IMKGA-SM ({variant})', x=share, kind='imkga', workdir=wd, group=share,
                       argv=imkga_argv(wd, args, data + [f'--config.model.variant={variant}'])))
    wd = os.path.join(base, 'complex')
    rows.append(dict(name='ComplEx', x=share, kind='baseline', workdir=wd, group=share,
                     argv=['-m', 'imkga_jax.baselines.train', '--config=configs/baselines.py:complex',
                           f'--workdir={wd}', f'--config.baseline.max_queries={args.max_queries}']
                     + data))
  return rows


def sweep_rows(args) -> list[dict]:
  base = os.path.join(args.out, 'sweeps')
  rows = []
  if args.study == 'batch':
    for n in BATCHES:
      steps = max(1, round(args.examples / n))
      wd = os.path.join(base, f'batch_{n}')
      rows.append(dict(name=f'N = {n}', x=n, kind='imkga', workdir=wd, group='sweeps',
                       argv=imkga_argv(wd, args, [f'--config.train.batch_size={n}',
                                                  f'--config.train.num_steps={steps}',
                                                  f'--config.train.checkpoint_every={steps}'])))
  elif args.study == 'epsilon':
    for eps in GRID:
      wd = os.path.join(base, f'eps_{eps}')
      rows.append(dict(name=f'ε = {eps}', x=eps, kind='imkga', workdir=wd, group='sweeps',
                       argv=imkga_argv(wd, args, [f'--config.loss.label_smoothing={eps}',
                                                  '--config.optim.alpha=0.5'])))
  else:
    for alpha in GRID:
      wd = os.path.join(base, f'alpha_{alpha}')
      rows.append(dict(name=f'α = {alpha}', x=alpha, kind='imkga', workdir=wd, group='sweeps',
                       argv=imkga_argv(wd, args, [f'--config.optim.alpha={alpha}',
                                                  '--config.loss.label_smoothing=0.9'])))
  return rows


def line_plot(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
              path: str, log_x: bool = False) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, points in series.items():
    xs, ys = zip(*sorted(points))
    ax.plot(xs, ys, marker='o', label=name)
  if log_x:
    ax.set_xscale('log', base=2)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--study', required=True, choices=tuple(FIGURES))
  parser.add_argument('--out', required=True, help='folder of the runs')
  parser.add_argument('--steps', type=int, default=0, help='IMKGA-SM train steps (0: the config)')
  parser.add_argument('--examples', type=int, default=128 * 1000,
                      help='batch study: training trajectories per run (steps = examples / N)')
  parser.add_argument('--max_queries', type=int, default=300, help='test triples per run (-1 = all)')
  parser.add_argument('--write', action='store_true', help='write the table into RESULTS.md')
  parser.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  parser.add_argument('--collect', action='store_true',
                      help='run nothing: plot and tabulate the points already made (missing ones '
                           'are listed)')
  args = parser.parse_args()
  rows = masked_rows(args) if args.study == 'masked' else sweep_rows(args)
  if args.dry_run:
    print('\n'.join(f'python {shlex.join(r["argv"])}' for r in rows))
    return
  log_dir = os.path.join(args.out, args.study + '_logs')
  os.makedirs(log_dir, exist_ok=True)
  for row in ([] if args.collect else rows):
    # IMKGA-SM rows of one group (one dataset) share the first prepared folder; a new prepared folder
    # starts from an existing OCR cache (keyed by image bytes and engine settings, so still valid).
    group = [r['workdir'] for r in rows if r['group'] == row['group'] and r['kind'] == 'imkga']
    if row['group'] == 'sweeps':  # the three sweeps use the same data: share across them too
      group += sorted(glob.glob(os.path.join(args.out, 'sweeps', '*')))
    ready = [wd for wd in group if os.path.isdir(os.path.join(wd, 'prepared', 'trajectories'))]
    if row['kind'] == 'imkga' or args.study == 'masked':
      table3.share_prepared(row, ready[0] if ready else None)
    cache = [os.path.join(r['workdir'], 'prepared', 'ocr_cache.jsonl') for r in rows]
    cache = [c for c in cache if os.path.exists(c)]
    target = os.path.join(row['workdir'], 'prepared')
    if row['kind'] == 'imkga' and cache and not os.path.exists(target):
      os.makedirs(target)
      shutil.copy(cache[0], os.path.join(target, 'ocr_cache.jsonl'))
    row['seconds'] = table3.run(row, log_dir)
  done = table3.finished(rows)
  missing = [r for r in rows if r not in done]
  rows = done
  results = table3.collect(rows, {})
  steps = args.steps or 'the config\'s'
  budget = (f'{args.examples:,} trajectories per run' if args.study == 'batch' else
            f'{steps} training steps per run') + \
      f'; {args.max_queries} seeded test triples (both directions) per point'
  series_mrr, series_h1 = {}, {}
  for r in results:
    series_mrr.setdefault(r['name'] if args.study == 'masked' else 'IMKGA-SM (mkg_rl)', []).append(
        (r['x'], r['both']['mrr']))
    series_h1.setdefault(r['name'] if args.study == 'masked' else 'IMKGA-SM (mkg_rl)', []).append(
        (r['x'], r['both']['hits@1']))
  figs = [os.path.join(ROOT, 'benchmarks', f) for f in FIGURES[args.study]]
  xlabel = {'masked': 'share of training data kept, x (%)', 'batch': 'batch size N',
            'epsilon': 'label smoothing ε', 'alpha': 'modulation α'}[args.study]
  if args.study == 'masked':
    line_plot(series_mrr, xlabel, 'test MRR', 'Fig. 6: MRR on synthetic masked-x', figs[0])
    line_plot(series_h1, xlabel, 'test Hits@1', 'Fig. 7: Hits@1 on synthetic masked-x', figs[1])
  else:
    both = {'MRR': series_mrr['IMKGA-SM (mkg_rl)'], 'Hits@1': series_h1['IMKGA-SM (mkg_rl)']}
    line_plot(both, xlabel, 'test metric', f'{os.path.basename(figs[0])[:-4]}: {xlabel}', figs[0],
              log_x=args.study == 'batch')
  lines = [f'Budget: {budget}.', '', '| run | x | MRR | Hits@1 | Hits@3 | Hits@10 | wall s |',
           '|---|---|---|---|---|---|---|']
  for r in results:
    b = r['both']
    lines.append(f'| {r["name"]} | {r["x"]} | {b["mrr"]:.3f} | {b["hits@1"]:.3f} | {b["hits@3"]:.3f} | '
                 f'{b["hits@10"]:.3f} | {r["seconds"]:.0f} |')
  if missing:
    lines += ['', f'Not run yet ({len(missing)} of {len(rows) + len(missing)} points, so not in the '
              'figure): ' + ', '.join(f'{r["name"]} at x = {r["x"]}' for r in missing) + '.']
  lines += ['', 'Commands (from the repository root):', '']
  lines += [f'- {r["name"]}, x = {r["x"]}: `python {shlex.join(r["argv"])}`' for r in results]
  # --collect only re-reads the runs: the command that makes them is the same without it.
  command = 'python benchmarks/studies.py ' + shlex.join(a for a in sys.argv[1:] if a != '--collect')
  section = (f'### Study: {args.study}\n\nCommand: `{command}`; figures: '
             + ', '.join(f'`benchmarks/{os.path.basename(f)}`' for f in figs) + '.\n\n')
  print(section + '\n'.join(lines))
  if args.write:
    table3.write_results(f'studies:{args.study}', section + '\n'.join(lines))


if __name__ == '__main__':
  main()
