"""OCR engines side by side on the synthetic KG's product images: brand exact-match rate, images/s.

Each synthetic product image prints its brand name (data_prep/synthetic.py); `synthetic_meta.json`
records it (`printed_text`). An engine's read is exact when its OCR text (`ocr.ocr_text` with the
default `features.ocr_min_chars`, ends stripped) equals that name: the same rule as the
`ocr_brand_exact` figure `prepare` writes to stats.json. Images are a seeded sample of `--num`
products (all of them with `--num=-1`); each engine reads them through `ocr.run_ocr` (file read and
decode included, no cache) after one warm-up image that is not timed. An engine that is not
installed gets a row saying so. The machine's load average is printed with the table, since
the dev box is shared.

  python benchmarks/ocr.py --raw=/tmp/ocr_bench/raw --num=200 --engines=rapidocr,easyocr

(easyocr needs the `easyocr` extra: `pip install -e '.[easyocr]'`, e.g. in its own venv.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from data_prep import ocr  # pylint: disable=g-import-not-at-top,wrong-import-position
from data_prep import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position


def sample(raw: str, num: int, seed: int) -> tuple[list[str], list[str]]:
  """`(image paths, printed brand names)` of `num` seeded products (the KG generated if missing)."""
  if not os.path.exists(os.path.join(raw, synthetic.META_FILE)):
    synthetic.generate(raw, seed=0)
  with open(os.path.join(raw, synthetic.META_FILE), encoding='utf-8') as f:
    printed = json.load(f)['printed_text']
  names = sorted(printed)
  if 0 < num < len(names):
    names = sorted(np.random.default_rng(seed).choice(names, num, replace=False).tolist())
  paths = [os.path.join(raw, 'OpenBG-IMG_images', n, 'main.jpg') for n in names]
  return paths, [printed[n] for n in names]


def measure(name: str, paths: list[str], printed: list[str]) -> dict:
  """One engine's row: exact-match rate, images/s, model load seconds."""
  features = default.get_config().features
  t = time.perf_counter()
  try:
    engine = ocr.make_engine(name)
  except ImportError as e:
    return {'engine': name, 'error': str(e).split(':')[0]}
  load = time.perf_counter() - t
  ocr.run_ocr(paths[:1], engine, None, min_chars=features.ocr_min_chars, progress=False)
  t = time.perf_counter()
  texts, stats = ocr.run_ocr(paths, engine, None, min_chars=features.ocr_min_chars)
  seconds = time.perf_counter() - t
  exact = sum((x or '').strip() == p for x, p in zip(texts, printed))
  wrong = [(x, p) for x, p in zip(texts, printed) if (x or '').strip() != p]
  return {'engine': engine.name, 'images': len(paths), 'exact': exact,
          'exact_rate': exact / len(paths), 'images_per_s': len(paths) / seconds,
          'seconds': seconds, 'load_seconds': load, 'unreadable': stats['ocr_unreadable'],
          'examples_wrong': wrong[:5]}


def table(rows: list[dict], command: str, total: int) -> str:
  lines = [f'Command: `{command}`', f'load average before/after: {rows[0].get("_load", "")}', '',
           '| engine | images | brand exact | exact rate | images/s | s/image | model load s |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    if 'error' in r:
      lines.append(f'| {r["engine"]} | — | not installed: {r["error"]} | | | | |')
      continue
    lines.append(f'| {r["engine"]} | {r["images"]} of {total} | {r["exact"]} | '
                 f'{r["exact_rate"]:.3f} | {r["images_per_s"]:.2f} | {1 / r["images_per_s"]:.2f} | '
                 f'{r["load_seconds"]:.1f} |')
  for r in rows:
    if r.get('examples_wrong'):
      lines.append(f'{r["engine"]} misreads (read, printed): ' + ', '.join(
          f'({x!r}, {p!r})' for x, p in r['examples_wrong']))
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--raw', default='/tmp/ocr_bench/raw',
                      help='synthetic KG folder (generated with seed 0 if missing)')
  parser.add_argument('--num', type=int, default=200, help='products sampled; -1 = all')
  parser.add_argument('--seed', type=int, default=0, help='seed of the sample')
  parser.add_argument('--engines', default='rapidocr,easyocr')
  parser.add_argument('--out', default='', help='also write the rows as JSON here')
  args = parser.parse_args()
  paths, printed = sample(args.raw, args.num, args.seed)
  with open(os.path.join(args.raw, synthetic.META_FILE), encoding='utf-8') as f:
    total = len(json.load(f)['printed_text'])
  before = os.getloadavg()
  rows = [measure(name.strip(), paths, printed) for name in args.engines.split(',') if name.strip()]
  rows[0]['_load'] = (' / '.join(f'{x:.2f}' for x in before) + ' ; '
                      + ' / '.join(f'{x:.2f}' for x in os.getloadavg()))
  command = 'python benchmarks/ocr.py ' + ' '.join(sys.argv[1:])
  print(table(rows, command, total))
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      json.dump({'command': command, 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  main()
