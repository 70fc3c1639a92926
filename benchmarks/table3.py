"""Table 3 on one dataset: IMKGA-SM beside the five embedding baselines, valid and test, every row a
recorded command.

Each row is a real command run from the repository root in its own workdir under `--out`
(`launch.py` for IMKGA-SM, `python -m imkga_jax.baselines.train` for TransE, DistMult, ComplEx,
RotatE and TuckER), timed, and read back from its `metrics.json`. The standard protocol: filtered
ranks, both directions, every valid and test triple, no ranking prior. With `--priors`, every model
is ranked again with the same priors (IMKGA-SM re-evaluated from its checkpoint, the baselines
re-run), in rows of their own beside the plain ones. IMKGA-SM decodes constrained to the train graph
(its explanations are then walks of the graph) and is re-evaluated unconstrained for the share of
faithful paths.

Writes `benchmarks/results/<dataset>.json` (`<dataset>_seed<k>` for another draw of the synthetic
KG): a list of rows `{"model", "valid": {"mrr", "hits@1", "hits@10"}, "test": {...}, "priors",
"command", "wall_s", "path_share", "faithful_share", ...}`, and with `--write` the table into
benchmarks/RESULTS.md (between markers, replacing an older copy).

Usage:
  python benchmarks/table3.py --dataset=umls --out=/tmp/t3 --write
  python benchmarks/table3.py --dataset=synthetic --seed=1 --out=/tmp/t3 --write
  python benchmarks/table3.py --dataset=synthetic --out=/tmp/t3 \
      --priors=answer_type=0.2,functional_inverse=0.95 --write
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
BASELINES = ('transe', 'distmult', 'complex', 'rotate', 'tucker')
STRUCTURE = ('umls', 'kinship', 'wn18rr')


def imkga_rows(args, out: str) -> list[dict]:
  """The IMKGA-SM training rows of the dataset (one per variant)."""
  if args.dataset == 'synthetic':
    config, variants = 'configs/synthetic.py', ('mkg_rl', 'no_img')
  else:
    config, variants = f'configs/structure.py:{args.dataset}', ('rl',)
  rows = []
  for v in variants:
    workdir = os.path.join(out, f'imkga_{v}')
    argv = ['launch.py', f'--config={config}', f'--workdir={workdir}', f'--config.model.variant={v}',
            f'--config.seed={args.seed}', '--config.decode.max_queries=-1',
            '--config.decode.splits=valid,test'] + [f'--config.{kv}' for kv in args.set]
    rows.append(dict(model=f'imkga_{v}', workdir=workdir, argv=argv, priors=[], kind='imkga',
                     config=config))
  return rows


def eval_row(base: dict, name: str, extra: list[str], priors: list[str]) -> dict:
  """An evaluation of `base`'s checkpoint with other settings, in a workdir of its own."""
  workdir = base['workdir'] + '_' + name
  argv = [a.replace(base['workdir'], workdir) for a in base['argv']] + ['--mode=eval'] + extra
  return dict(base, model=base['model'] + ('' if name == 'priors' else f'_{name}'),
              workdir=workdir, argv=argv, priors=priors, kind='eval', source=base['workdir'])


def baseline_rows(args, out: str, priors: list[str], suffix: str) -> list[dict]:
  base = 'synthetic' if args.dataset == 'synthetic' else args.dataset
  rows = []
  for m in BASELINES:
    workdir = os.path.join(out, m + suffix)
    argv = ['-m', 'imkga_jax.baselines.train', f'--config=configs/baselines.py:{m},{base}',
            f'--workdir={workdir}', f'--config.seed={args.seed}', '--config.baseline.max_queries=-1',
            '--config.baseline.progress_bar=False']
    if priors:
      argv.append('--config.ranking.priors=' + repr(tuple(priors)))
    rows.append(dict(model=m, workdir=workdir, argv=argv, priors=priors, kind='baseline'))
  return rows


def link(source: str, target: str, names=('prepared', 'raw', 'checkpoints', 'checkpoints_best',
                                          'train_config.json', 'selection.json')) -> None:
  """Links `source`'s data and checkpoints into `target` (an evaluation-only row)."""
  os.makedirs(target, exist_ok=True)
  for name in names:
    src, dst = os.path.join(source, name), os.path.join(target, name)
    if os.path.exists(src) and not os.path.lexists(dst):
      os.symlink(os.path.abspath(src), dst)


def run(row: dict, log_dir: str, force: bool) -> float:
  """Runs `row` unless its workdir holds the metrics of the same command; returns the wall seconds
  of the run that made them."""
  stamp = os.path.join(row['workdir'], 'table3_command.json')
  metrics = os.path.join(row['workdir'], 'metrics.json')
  if not force and os.path.exists(stamp) and os.path.exists(metrics):
    with open(stamp, encoding='utf-8') as f:
      done = json.load(f)
    if done['argv'] == row['argv']:
      print(f'[table3] {row["model"]}: done before ({done["seconds"]:.0f} s)', flush=True)
      return done['seconds']
  if row['kind'] == 'eval':
    link(row['source'], row['workdir'])
  if row.get('prepared'):
    link(row['prepared'], row['workdir'], ('prepared', 'raw'))
  print(f'[table3] {row["model"]}: python {shlex.join(row["argv"])}', flush=True)
  os.makedirs(row['workdir'], exist_ok=True)
  start = time.time()
  log = os.path.join(log_dir, os.path.basename(row['workdir']) + '.log')
  with open(log, 'w', encoding='utf-8') as f:
    proc = subprocess.run([sys.executable] + row['argv'], cwd=ROOT, stdout=f,
                          stderr=subprocess.STDOUT, check=False)
  seconds = time.time() - start
  if proc.returncode:
    raise RuntimeError(f'{row["model"]} failed (exit {proc.returncode}); see {log}')
  with open(stamp, 'w', encoding='utf-8') as f:
    json.dump({'argv': row['argv'], 'seconds': seconds}, f)
  print(f'[table3] {row["model"]}: {seconds:.0f} s', flush=True)
  return seconds


def work_seconds(row: dict) -> float:
  """The wall seconds of the work behind a row's metrics: for a `launch.py` row the sum of its
  stages in `WORKDIR/timings.json` (a stage skipped as up to date keeps the time of the run that did
  it, so a re-evaluation still counts the training), else the command's own time."""
  path = os.path.join(row['workdir'], 'timings.json')
  if row['kind'] != 'baseline' and os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      stages = json.load(f)
    if row['kind'] == 'eval':  # its training is the source row's
      return stages.get('eval', {}).get('seconds', row['seconds'])
    return sum(s.get('seconds', 0.0) for s in stages.values())
  return row['seconds']


def result(row: dict) -> dict:
  """The JSON row of a finished run."""
  with open(os.path.join(row['workdir'], 'metrics.json'), encoding='utf-8') as f:
    metrics = json.load(f)
  keep = ('mrr', 'hits@1', 'hits@3', 'hits@10')
  out = {'model': row['model'], 'priors': row['priors'],
         'command': 'python ' + shlex.join(row['argv']), 'wall_s': round(work_seconds(row), 1)}
  for split in ('valid', 'test'):
    if split in metrics:
      out[split] = {k: round(metrics[split]['both'][k], 4) for k in keep}
      out[split].update(tail_mrr=round(metrics[split]['tail']['mrr'], 4),
                        head_mrr=round(metrics[split]['head']['mrr'], 4))
  paths = metrics.get('test', {}).get('paths')
  if paths:
    out.update(path_share=round(paths['path_share'], 4), faithful_share=round(paths['faithful_share'], 4))
  selection = metrics.get('valid', {}).get('selection')
  if selection:
    out['direct_weight'] = selection['direct_weight']
  return out


def markdown(args, results: list[dict], title: str) -> str:
  lines = [f'### {title}', '',
           f'`python benchmarks/table3.py {shlex.join(sys.argv[1:])}`. Filtered ranks, both '
           'directions, every valid and test triple; `wall s`: the work behind each row on this 2-core '
           'CPU (IMKGA-SM: prepare + train + eval, an evaluation row its evaluation). IMKGA-SM chose its checkpoint and the weight of its direct answers against '
           'its paths (`direct w`) on valid; path / faithful: share of top-1 test answers with a path '
           'of at least one hop / of those paths walking only train edges.', '',
           '| model | priors | valid MRR | test MRR | H@1 | H@3 | H@10 | tail | head | direct w | '
           'path | faithful | wall s |', '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in results:
    t = r.get('test', {})
    lines.append(
        f'| {r["model"]} | {", ".join(r["priors"]) or "—"} | {r.get("valid", {}).get("mrr", float("nan")):.3f} | '
        f'{t.get("mrr", float("nan")):.3f} | {t.get("hits@1", float("nan")):.3f} | '
        f'{t.get("hits@3", float("nan")):.3f} | {t.get("hits@10", float("nan")):.3f} | '
        f'{t.get("tail_mrr", float("nan")):.3f} | {t.get("head_mrr", float("nan")):.3f} | '
        f'{r.get("direct_weight", "—")} | {r.get("path_share", float("nan")):.3f} | '
        f'{r.get("faithful_share", float("nan")):.3f} | {r["wall_s"]:.0f} |')
  lines += ['', 'Commands:', ''] + [f'- {r["model"]}: `{r["command"]}`' for r in results]
  return '\n'.join(lines).replace('| nan |', '| — |').replace('| nan |', '| — |')


def write_results(section: str, body: str) -> None:
  """Replaces (or appends) the block between this section's markers in benchmarks/RESULTS.md."""
  path = os.path.join(ROOT, 'benchmarks', 'RESULTS.md')
  begin, end = f'<!-- {section}: begin -->', f'<!-- {section}: end -->'
  with open(path, encoding='utf-8') as f:
    text = f.read()
  block = f'{begin}\n{body}\n{end}'
  if begin in text and end in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
  else:
    text = text.rstrip('\n') + '\n\n' + block + '\n'
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--dataset', required=True, choices=('synthetic',) + STRUCTURE)
  parser.add_argument('--seed', type=int, default=0, help='config.seed (the synthetic KG draw)')
  parser.add_argument('--out', required=True, help='folder of the runs')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override of every IMKGA-SM row (repeatable)')
  parser.add_argument('--priors', default='', help='comma-separated ranking priors: adds rows of '
                      'every model ranked with them (e.g. answer_type=0.2,functional_inverse=0.95)')
  parser.add_argument('--only', default='', help='comma-separated models to run (the rest is read)')
  parser.add_argument('--force', action='store_true', help='re-run rows already done')
  parser.add_argument('--write', action='store_true', help='write the table into RESULTS.md')
  args = parser.parse_args()
  name = args.dataset + (f'_seed{args.seed}' if args.seed else '')
  out = os.path.join(args.out, name)
  log_dir = os.path.join(out, 'logs')
  os.makedirs(log_dir, exist_ok=True)
  priors = [p for p in args.priors.split(',') if p]
  trained = imkga_rows(args, out)
  rows = list(trained)
  rows += [eval_row(trained[0], 'unconstrained', ['--config.decode.constrained=False'], [])]
  rows += baseline_rows(args, out, [], '')
  if priors:
    rows += [eval_row(r, 'priors', ['--config.ranking.priors=' + repr(tuple(priors))], priors)
             for r in trained]
    rows += baseline_rows(args, out, priors, '_priors')
  for row in rows:
    if row['kind'] in ('baseline',) and args.dataset == 'synthetic':
      row['prepared'] = trained[0]['workdir']  # the generated KG the IMKGA-SM run prepared
  only = {x for x in args.only.split(',') if x}
  results = []
  for row in rows:
    if only and row['model'] not in only:
      stamp = os.path.join(row['workdir'], 'table3_command.json')
      if not os.path.exists(stamp):
        continue
      with open(stamp, encoding='utf-8') as f:
        row['seconds'] = json.load(f)['seconds']
    else:
      row['seconds'] = run(row, log_dir, args.force)
    results.append(result(row))
  os.makedirs(os.path.join(ROOT, 'benchmarks', 'results'), exist_ok=True)
  with open(os.path.join(ROOT, 'benchmarks', 'results', f'{name}.json'), 'w',
            encoding='utf-8') as f:
    json.dump(results, f, indent=1)
    f.write('\n')
  title = f'{name}: Table 3'
  body = markdown(args, results, title)
  print(body)
  if args.write:
    write_results(f'table3:{name}', body)


if __name__ == '__main__':
  main()
