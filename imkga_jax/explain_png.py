"""A picture of one query's explanations (`--mode=predict --explain_png=FILE`): what the model read
and the paths it walked, for a person to look at.

Left: the head entity's image (the first readable one, as the features stage reads it) and the OCR
text the features stage read from it (`prepared/features.npz`), or "no image". Right: the top
answers' paths drawn as a small graph, read left to right: the head, then one column per hop, each
answer in the last column with its rank, score and support; an edge per step labelled with its
relation (`_inv` = walked backwards); a dashed edge for an answer given directly, without a path;
answers that are true triples (`known`) in green. Drawn with matplotlib's object API on the Agg
canvas (no display, no global pyplot state).

Example:
  >>> rows = evaluator.predict('product_0001|ships_from')                   # doctest: +SKIP
  >>> draw('/tmp/q.png', 'product_0001', 'ships_from', rows, image_path, 'ACME')  # doctest: +SKIP
  (1400, 560)
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from imkga_jax import files

DPI = 100
KNOWN, OTHER, HEAD, INNER = '#2e7d32', '#c62828', '#1565c0', '#616161'


def ocr_text_of(prepared_dir: str, kg: Any, head: str) -> str | None:
  """The OCR text features.npz holds for `head` ('' = nothing read), or None without the file."""
  path = os.path.join(prepared_dir, 'features.npz')
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    if 'ocr_text' not in f:
      return None
    texts = f['ocr_text']
  index = kg.entity_id(head)
  return str(texts[index]) if index < len(texts) else None


def _load_image(paths: Sequence[str]) -> tuple[np.ndarray | None, str]:
  """The first image of `paths` Pillow decodes, and its path; (None, why) when none does."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  why = 'no image'
  for path in paths:
    try:
      with files.open_regular(path) as f, Image.open(f) as img:
        return np.asarray(img.convert('RGB')), path
    except (OSError, UnidentifiedImageError, ValueError) as e:
      logging.warning('explain_png: cannot read %s (%s); trying the next image', path, e)
      why = f'unreadable image: {os.path.basename(path)}'
  return None, why


def _layout(rows: Sequence[Mapping[str, Any]]) -> tuple[dict, list, int]:
  """Node positions `{(column, name): (x, y)}`, edges `[(from, to, label, direct)]`, columns."""
  hops = [max(1, len(r['path']) // 2) if len(r['path']) >= 2 else 1 for r in rows]
  columns = max(hops, default=1)
  order: dict[int, list[str]] = {c: [] for c in range(columns + 1)}
  edges = []
  for r in rows:
    path = list(r['path'])
    chain = [(0, '@head')]
    if len(path) >= 2:
      entities = path[1::2]
      for i, e in enumerate(entities):
        column = columns if i == len(entities) - 1 else i + 1
        chain.append((column, e))
      labels = path[0::2]
    else:
      chain.append((columns, path[-1]))
      labels = ['']
    for (c, e) in chain:
      if e not in order[c]:
        order[c].append(e)
    for (a, b, label) in zip(chain, chain[1:], labels):
      edges.append((a, b, label, len(path) < 2))
  pos = {}
  for c, names in order.items():
    n = len(names)
    for j, e in enumerate(names):
      pos[(c, e)] = (c, 1.0 - (j + 0.5) / max(n, 1))
  return pos, edges, columns


def draw(out: str, head: str, relation: str, rows: Sequence[Mapping[str, Any]],
         image_paths: Sequence[str] = (), ocr_text: str | None = None, top: int = 5
         ) -> tuple[int, int]:
  """Writes the picture of `rows` (`Evaluator.predict`'s answers) to the PNG `out` atomically.

  Args:
    out: the PNG file to write.
    head, relation: the query, in names.
    rows: answers, best first (`rank`, `entity`, `score`, `path`, `support`, `known`).
    image_paths: the head's image files (the first readable one is shown).
    ocr_text: the OCR text read from the head's image (None = not available).
    top: answers drawn.

  Returns:
    (width, height) of the PNG in pixels.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  rows = list(rows)[:top]
  width, height = 14.0, max(4.0, 1.1 * len(rows) + 1.8)
  fig = Figure(figsize=(width, height), dpi=DPI)
  FigureCanvasAgg(fig)
  grid = fig.add_gridspec(1, 2, width_ratios=(1, 3), left=0.02, right=0.98, top=0.86, bottom=0.04,
                          wspace=0.05)
  fig.suptitle(f'({head}, {relation}, ?): the top {len(rows)} answers and the paths that explain '
               'them', fontsize=13)
  left = fig.add_subplot(grid[0, 0])
  left.set_axis_off()
  image, where = _load_image(list(image_paths))
  if image is not None:
    left.imshow(image)
    left.set_title(head, fontsize=10)
  else:
    left.text(0.5, 0.5, where, ha='center', va='center', fontsize=11, color=INNER,
              transform=left.transAxes)
    left.set_title(head, fontsize=10)
  ocr = ('OCR: (no features.npz)' if ocr_text is None else
         f'OCR: "{ocr_text}"' if ocr_text else 'OCR: (no text read)')
  left.text(0.5, -0.04, ocr, ha='center', va='top', fontsize=11, transform=left.transAxes,
            wrap=True)

  ax = fig.add_subplot(grid[0, 1])
  ax.set_axis_off()
  pos, edges, columns = _layout(rows)
  ax.set_xlim(-0.35, columns + 1.1)
  ax.set_ylim(-0.05, 1.05)
  # Half a node box's width in data units (about 6.5 px a character at 10 pt), so arrows end at
  # the box's edge rather than under it.
  unit = fig.get_figwidth() * DPI * 0.96 * 0.75 / (columns + 1.45)
  unit_y = fig.get_figheight() * DPI * 0.82 / 1.1
  half = {key: (6.5 * len(head if key[0] == 0 else key[1]) + 16) / 2 / unit for key in pos}
  for (a, b, label, direct) in edges:
    (x0, y0), (x1, y1) = pos[a], pos[b]
    start, end = (x0 + half[a], y0), (x1 - half[b], y1)
    bend = 'arc3,rad=-0.18' if direct else 'arc3,rad=0'
    ax.annotate('', xy=end, xytext=start,
                arrowprops=dict(arrowstyle='-|>', color=INNER, lw=1.2, mutation_scale=14,
                                linestyle='--' if direct else '-', connectionstyle=bend,
                                shrinkA=0, shrinkB=0))
    mid_x, mid_y = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
    if direct:    # arc3's peak: half of rad times the chord, perpendicular (in display pixels)
      dx_px, dy_px = (end[0] - start[0]) * unit, (end[1] - start[1]) * unit_y
      mid_x, mid_y = mid_x - 0.09 * dy_px / unit, mid_y + 0.09 * dx_px / unit_y
    ax.text(mid_x, mid_y + 0.02, '(direct)' if direct else label, ha='center', va='bottom',
            fontsize=8, color=INNER,
            bbox=dict(boxstyle='round,pad=0.15', fc='white', ec='none', alpha=0.8))
  answers = {r['entity']: r for r in rows}
  for (column, name), (x, y) in pos.items():
    if column == 0:
      ax.text(x, y, head, ha='center', va='center', fontsize=10, color='white',
              bbox=dict(boxstyle='round,pad=0.35', fc=HEAD, ec='none'))
    elif column == columns and name in answers:
      r = answers[name]
      colour = KNOWN if r.get('known') else OTHER
      support = f', support {r["support"]:.2f}' if r.get('hops') and 'support' in r else ''
      ax.text(x, y, name, ha='center', va='center', fontsize=10, color='white',
              bbox=dict(boxstyle='round,pad=0.35', fc=colour, ec='none'))
      ax.text(x + 0.12, y - 0.045, f'#{r["rank"]}  score {r["score"]:.3f}{support}',
              ha='left', va='top', fontsize=8, color=colour)
    else:
      ax.text(x, y, name, ha='center', va='center', fontsize=9,
              bbox=dict(boxstyle='round,pad=0.3', fc='#eeeeee', ec=INNER, lw=0.8))
  ax.text(columns + 1.05, 1.04, 'green: a known true answer; red: not a known triple',
          ha='right', va='top', fontsize=8, color=INNER)
  files.atomic_write(out, lambda f: fig.savefig(f, format='png', dpi=DPI))
  return int(round(width * DPI)), int(round(height * DPI))
