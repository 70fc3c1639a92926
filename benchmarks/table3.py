"""The paper's Table 3 protocol on this project's datasets: baselines and IMKGA-SM variants side by side.

Every row is one real command (`launch.py` for IMKGA-SM, `imkga_jax.baselines.train` for the five
embedding baselines) run in its own workdir under `--out`; rows whose workdir already holds the
metrics of the same command are not re-run. The script then reads each `metrics.json` /
`metrics_by_relation.json` and writes a markdown table shaped like Table 3 (test MRR, Hits@1/3/10,
both directions, filtered), a per-relation breakdown (tail queries of the relations whose answer only
the image or its text shows vs structure relations, from the synthetic generator's
`synthetic_meta.json`), and a PNG bar chart of MRR per model.

Every row is evaluated on the same seeded subset of test triples (`--max_queries`, both directions):
IMKGA-SM through `decode.max_queries`, the baselines through `baseline.max_queries`.

Usage:
  python benchmarks/table3.py --dataset=synthetic --out=/tmp/table3
  python benchmarks/table3.py --dataset=umls --root=../shared/datasets/umls --out=/tmp/table3
  python benchmarks/table3.py --dataset=synthetic --study=ablations --out=/tmp/table3
  python benchmarks/table3.py --dataset=synthetic --out=/tmp/table3_long --tag=long --steps=6000 \
      --set=trajectories.image_direct_repeat=4 --baselines_from=/tmp/table3
  python benchmarks/table3.py --dataset=synthetic --out=/tmp/table3 --tag=ordered \
      --baseline_set=baseline.min_type_match=0.2 --baseline_set=baseline.min_functionality=0.95
Add `--write` to put the tables into benchmarks/RESULTS.md (between markers, replacing an older copy).
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
IMAGE_KINDS = ('image', 'ocr')
# Published figures (shared/datasets/README.md): test MRR / Hits@1 / Hits@10, both directions.
PUBLISHED = {
    'umls': [('ConvE (its authors)', 0.94, 0.92, 0.99), ('ComplEx (NTP paper, own split)', 0.89, 0.82, 1.00)],
    'kinship': [('ConvE (its authors)', 0.83, 0.73, 0.98),
                ('ComplEx (NTP paper, own split)', 0.81, 0.70, 0.98)],
}


def imkga_config(dataset: str) -> str:
  return os.path.join('configs', f'{dataset}.py')


def rows_for(args) -> list[dict]:
  """The runs of one table: name, workdir, argv (relative to the repository root)."""
  ds, out = args.dataset, os.path.join(args.out, args.dataset)
  data = [] if ds == 'synthetic' else [f'--config.data.root={args.root}']
  common = data + [f'--config.decode.max_queries={args.max_queries}', '--config.decode.splits=test']
  imkga = common + [f'--config.train.num_steps={args.steps}'] if args.steps else common
  imkga = imkga + [f'--config.{kv}' for kv in args.set]
  baseline_out = os.path.join(args.baselines_from or args.out, args.dataset)
  rows = []
  if args.study == 'table3':
    variants = ('no_img', 'mkg', 'rl', 'mkg_rl') if ds == 'synthetic' else ('no_img', 'rl')
    for v in variants:
      rows.append(dict(name=f'IMKGA-SM ({v})', kind='imkga', workdir=os.path.join(out, v),
                       argv=['launch.py', f'--config={imkga_config(ds)}',
                             f'--workdir={os.path.join(out, v)}', f'--config.model.variant={v}']
                       + imkga))
    for m in BASELINES:
      arg = m if ds == 'synthetic' else f'{m},{ds}'
      # Baselines with overrides get their own workdirs (`complex_<tag>`) beside the plain ones.
      wd = os.path.join(baseline_out, f'{m}_{args.tag}' if args.baseline_set else m)
      rows.append(dict(name=m, kind='baseline', workdir=wd,
                       argv=['-m', 'imkga_jax.baselines.train', f'--config=configs/baselines.py:{arg}',
                             f'--workdir={wd}',
                             f'--config.baseline.max_queries={args.max_queries}'] + data
                       + [f'--config.{kv}' for kv in args.baseline_set]))
    return rows
  # Ablations of the main variant (each a training run at `--steps`; the defaults ε 0.7 and α 0.6 are
  # one shared row) and the beam size (evaluations of the Table 3 run's `mkg_rl` checkpoint, trained at
  # the config's budget).
  runs = [('default (ε 0.7, α 0.6)', 'default', []),
          ('ε = 0.5', 'eps_0.5', ['--config.loss.label_smoothing=0.5']),
          ('ε = 0.9', 'eps_0.9', ['--config.loss.label_smoothing=0.9']),
          ('α = 0.0', 'alpha_0.0', ['--config.optim.alpha=0.0']),
          ('α = 0.3', 'alpha_0.3', ['--config.optim.alpha=0.3'])]
  for name, folder, extra in runs:
    wd = os.path.join(out, 'ablations', folder)
    rows.append(dict(name=name, kind='imkga', workdir=wd,
                     argv=['launch.py', f'--config={imkga_config(ds)}', f'--workdir={wd}',
                           '--config.model.variant=mkg_rl'] + extra + imkga))
  for beam in (16, 64, 256):
    wd = os.path.join(out, 'ablations', f'beam_{beam}')
    rows.append(dict(name=f'beam {beam}', kind='imkga', workdir=wd,
                     link_checkpoints=os.path.join(out, 'mkg_rl'),
                     argv=['launch.py', f'--config={imkga_config(ds)}', f'--workdir={wd}',
                           '--config.model.variant=mkg_rl', f'--config.decode.beam_size={beam}',
                           '--mode=eval'] + common))
  return rows


def share_prepared(row: dict, source: str | None) -> None:
  """Links `prepared` (and `raw`) of the first run into `row`'s workdir so the data is built once."""
  os.makedirs(row['workdir'], exist_ok=True)
  if source is None or os.path.abspath(source) == os.path.abspath(row['workdir']):
    return
  for name in ('prepared', 'raw'):
    src, dst = os.path.join(source, name), os.path.join(row['workdir'], name)
    if os.path.exists(src) and not os.path.lexists(dst):
      os.symlink(os.path.abspath(src), dst)
  if row.get('link_checkpoints'):
    for name in ('checkpoints', 'train_config.json'):
      src, dst = os.path.join(row['link_checkpoints'], name), os.path.join(row['workdir'], name)
      if not os.path.lexists(dst):
        os.symlink(os.path.abspath(src), dst)


def run(row: dict, log_dir: str) -> float:
  """Runs `row`; returns the wall seconds of its first complete run.

  A baseline row whose workdir holds metrics of the same command is skipped. An IMKGA-SM row is
  always re-invoked: launch.py skips each stage whose inputs and settings are unchanged, so only
  what a code or config default change affects (usually just the evaluation) is redone.
  """
  stamp = os.path.join(row['workdir'], 'table3_command.json')
  command = [sys.executable] + row['argv']
  metrics = os.path.join(row['workdir'], 'metrics.json')
  done = None
  if os.path.exists(stamp) and os.path.exists(metrics):
    with open(stamp, encoding='utf-8') as f:
      done = json.load(f)
    if done['argv'] != row['argv']:
      done = None
    elif row['kind'] != 'imkga':
      print(f'[table3] {row["name"]}: done before ({done["seconds"]:.0f} s), skipped', flush=True)
      return done['seconds']
  print(f'[table3] {row["name"]}: python {shlex.join(row["argv"])}', flush=True)
  start = time.time()
  log = os.path.join(log_dir, os.path.basename(row['workdir']) + '.log')
  with open(log, 'a' if done else 'w', encoding='utf-8') as f:
    proc = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
  seconds = time.time() - start
  if proc.returncode:
    raise RuntimeError(f'{row["name"]} failed (exit {proc.returncode}); see {log}')
  if done:
    print(f'[table3] {row["name"]}: up to date after {seconds:.0f} s (first run '
          f'{done["seconds"]:.0f} s)', flush=True)
    return done['seconds']
  with open(stamp, 'w', encoding='utf-8') as f:
    json.dump({'argv': row['argv'], 'seconds': seconds}, f)
  print(f'[table3] {row["name"]}: {seconds:.0f} s', flush=True)
  return seconds


def finished(rows: list[dict]) -> list[dict]:
  """The rows whose workdir holds metrics, each with `seconds` (from its stamp if not run now)."""
  done = [r for r in rows if os.path.exists(os.path.join(r['workdir'], 'metrics.json'))]
  for r in done:
    if 'seconds' not in r:
      with open(os.path.join(r['workdir'], 'table3_command.json'), encoding='utf-8') as f:
        r['seconds'] = json.load(f)['seconds']
  return done


def relation_kinds(workdirs: list[str]) -> dict[str, str]:
  """Relation name -> evidence kind ('image', 'ocr', 'structure') from synthetic_meta.json, or {}."""
  for wd in workdirs:
    path = os.path.join(wd, 'raw', 'synthetic_meta.json')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        return {name: r['evidence'] for name, r in json.load(f)['relations'].items()}
  return {}


def tail_by_relation(workdir: str) -> dict[str, tuple[float, int]]:
  """Relation -> (tail MRR, tail queries) on test, for either metrics_by_relation.json layout."""
  with open(os.path.join(workdir, 'metrics_by_relation.json'), encoding='utf-8') as f:
    data = json.load(f)
  if 'test' in data and isinstance(data['test'], dict) and 'tail' not in data['test']:
    return {r: (m['tail']['mrr'], m['tail']['queries']) for r, m in data['test'].items()}
  return {r: (m['mrr'], m.get('count', m.get('queries', 0))) for r, m in data.items()}


def group_mrr(by_rel: dict[str, tuple[float, int]], kinds: dict[str, str], image: bool
              ) -> tuple[float, int]:
  """Query-weighted tail MRR over the image-evidence (or the structure) relations."""
  picked = [(mrr, n) for r, (mrr, n) in by_rel.items() if (kinds.get(r) in IMAGE_KINDS) == image]
  total = sum(n for _, n in picked)
  return (sum(m * n for m, n in picked) / total if total else float('nan')), total


def collect(rows: list[dict], kinds: dict[str, str]) -> list[dict]:
  out = []
  for row in rows:
    with open(os.path.join(row['workdir'], 'metrics.json'), encoding='utf-8') as f:
      test = json.load(f)['test']
    entry = dict(row, both=test['both'], tail=test['tail'], head=test['head'])
    if kinds:
      by_rel = tail_by_relation(row['workdir'])
      entry['by_relation'] = by_rel
      entry['image_mrr'], entry['image_n'] = group_mrr(by_rel, kinds, True)
      entry['structure_mrr'], entry['structure_n'] = group_mrr(by_rel, kinds, False)
    out.append(entry)
  return out


def markdown(args, results: list[dict], kinds: dict[str, str]) -> str:
  subset = ('every test triple' if args.max_queries < 0 else
            f'a seeded subset of {args.max_queries} test triples, `--max_queries`')
  lines = [f'Test split, filtered, both directions, {results[0]["both"]["queries"]} queries '
           f'({subset}). `wall s`: the whole command, on a 2-core CPU shared with other runs.', '',
           '| model | MRR | Hits@1 | Hits@3 | Hits@10 | tail MRR | head MRR | wall s |',
           '|---|---|---|---|---|---|---|---|']
  for r in results:
    b = r['both']
    lines.append(f'| {r["name"]} | {b["mrr"]:.3f} | {b["hits@1"]:.3f} | {b["hits@3"]:.3f} | '
                 f'{b["hits@10"]:.3f} | {r["tail"]["mrr"]:.3f} | {r["head"]["mrr"]:.3f} | '
                 f'{r["seconds"]:.0f} |')
  for name, mrr, h1, h10 in PUBLISHED.get(args.dataset, []):
    lines.append(f'| {name} (published, full test) | {mrr:.2f} | {h1:.2f} | — | {h10:.2f} | — | — | — |')
  if kinds:
    image_rel = sorted(r for r, k in kinds.items() if k in IMAGE_KINDS)
    lines += ['', 'Per relation (test tail queries): image-evidence relations '
              f'({", ".join(image_rel)}: the answer is shown only by the image or its text) vs '
              'structure relations; query-weighted MRR.', '',
              '| model | image-evidence MRR (n) | structure MRR (n) | '
              + ' | '.join(image_rel) + ' |', '|---|---|---|' + '---|' * len(image_rel)]
    for r in results:
      per = ' | '.join(f'{r["by_relation"].get(x, (float("nan"), 0))[0]:.3f}' for x in image_rel)
      lines.append(f'| {r["name"]} | {r["image_mrr"]:.3f} ({r["image_n"]}) | '
                   f'{r["structure_mrr"]:.3f} ({r["structure_n"]}) | {per} |')
  lines += ['', 'Commands (run from the repository root; each row in its own workdir):', '']
  lines += [f'- {r["name"]}: `python {shlex.join(r["argv"])}`' for r in results]
  return '\n'.join(lines)


def bar_chart(results: list[dict], title: str, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = [r['name'] for r in results]
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 4))
  has_groups = 'image_mrr' in results[0]
  width = 0.27 if has_groups else 0.6
  xs = range(len(names))
  ax.bar([x - (width if has_groups else 0) for x in xs], [r['both']['mrr'] for r in results], width,
         label='all test queries')
  if has_groups:
    ax.bar(list(xs), [r['image_mrr'] for r in results], width, label='image-evidence relations (tail)')
    ax.bar([x + width for x in xs], [r['structure_mrr'] for r in results], width,
           label='structure relations (tail)')
  ax.set_xticks(list(xs))
  ax.set_xticklabels(names, rotation=30, ha='right')
  ax.set_ylabel('filtered MRR')
  ax.set_ylim(0, 1)
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


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
  parser.add_argument('--dataset', default='synthetic', choices=('synthetic', 'umls', 'kinship'))
  parser.add_argument('--root', default='', help='raw KG folder (umls / kinship)')
  parser.add_argument('--out', required=True, help='folder of the runs')
  parser.add_argument('--study', default='table3', choices=('table3', 'ablations'))
  parser.add_argument('--steps', type=int, default=0, help='IMKGA-SM train steps (0: the config)')
  parser.add_argument('--max_queries', type=int, default=600,
                      help='test triples evaluated per row (seeded subset; -1 = all)')
  parser.add_argument('--only', default='', help='comma-separated row workdir names to run')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override for every IMKGA-SM row (repeatable), e.g. '
                           'trajectories.image_direct_repeat=4')
  parser.add_argument('--baseline_set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override for every baseline row (repeatable), e.g. '
                           'baseline.min_functionality=0.95')
  parser.add_argument('--tag', default='', help='names a second table of the same dataset: its '
                      'RESULTS.md block and PNG get this suffix')
  parser.add_argument('--baselines_from', default='', help="another --out whose baseline rows "
                      "(same commands) this table reuses instead of re-training them")
  parser.add_argument('--write', action='store_true', help='write the tables into RESULTS.md')
  args = parser.parse_args()
  if args.baseline_set and not args.tag:
    parser.error('--baseline_set needs --tag (the overridden baselines are a table of their own)')
  if args.dataset != 'synthetic' and not args.root:
    parser.error(f'--dataset={args.dataset} needs --root=PATH (e.g. ../shared/datasets/{args.dataset})')
  rows = rows_for(args)
  log_dir = os.path.join(args.out, args.dataset, 'logs')
  os.makedirs(log_dir, exist_ok=True)
  only = {x for x in args.only.split(',') if x}
  # Every IMKGA-SM row of a dataset shares one prepared folder: the first Table 3 row's.
  table3_first = os.path.join(args.out, args.dataset, 'no_img')
  first = table3_first if os.path.isdir(os.path.join(table3_first, 'prepared')) else None
  for row in rows:
    if row['kind'] == 'imkga' and first is None and not row.get('link_checkpoints'):
      first = row['workdir']
    # Baselines read the synthetic KG from the first IMKGA-SM run's prepared folder; on umls /
    # kinship they read the raw triples (`--config.data.root`).
    share_prepared(row, first if row['kind'] == 'imkga' or args.dataset == 'synthetic' else None)
    if not only or os.path.basename(row['workdir']) in only:
      row['seconds'] = run(row, log_dir)
  done = finished(rows)
  kinds = relation_kinds([r['workdir'] for r in done])
  results = collect(done, kinds)
  title = f'{args.dataset}: {"Table 3" if args.study == "table3" else "ablations"}'
  settings = args.set + [f'baselines {kv}' for kv in args.baseline_set]
  title += f' ({args.tag}: {", ".join(settings)})' if args.tag else ''
  body = markdown(args, results, kinds)
  suffix = f'_{args.tag}' if args.tag else ''
  png = os.path.join(ROOT, 'benchmarks', f'{args.study}_{args.dataset}{suffix}.png')
  bar_chart(results, title, png)
  command = 'python benchmarks/table3.py ' + shlex.join(sys.argv[1:])
  section = f'### {title}\n\nCommand: `{command}`; chart: `benchmarks/{os.path.basename(png)}`.\n\n'
  print(section + body)
  if args.write:
    write_results(f'{args.study}:{args.dataset}' + (f':{args.tag}' if args.tag else ''),
                  section + body)


if __name__ == '__main__':
  main()
