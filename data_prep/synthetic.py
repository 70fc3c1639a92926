"""The embedded multimodal e-commerce KG, written in the OpenBG-IMG layout from one seed.

Entities (ids are filesystem safe, entity2text never reveals a hidden fact):
  `product_NNNN` (the first `num_products` have one rendered image, the other `num_imageless_products`
  none), `brand_<name>`, `colour_<name>` (10), `category_<name>` (8), `style_<name>` (8),
  `shop_NNN`, `region_NN`, `courier_NN`. Only products have images; tails never do.

Relations and the evidence that answers each (`synthetic_meta.json` → "relations"):
  brand(product, brand)           ocr: the brand name is the only text printed in the product image.
  colour(product, colour)         image: fill colour of the silhouette.
  category(product, category)     image: shape of the silhouette (tshirt, trousers, shoe, bag, hat,
                                  bottle, mug, lamp).
  style(product, style)           image: a fixed function of (category group, colour group),
                                  `STYLE_TABLE`, so products that look alike share a style.
  sold_by(product, shop)          structure: a product's bought_together partners are from its shop
                                  with probability 0.7; ships_from narrows the shop to one region.
  located_in(shop, region)        structure: every shop is in one region (kept whole in train).
  ships_from(product, region)     structure: 2-hop rule sold_by ∘ located_in (exact over all splits).
  served_by(region, courier)      structure: every region has one courier (kept whole in train).
  ships_via(product, courier)     structure: exact 2-hop rule ships_from ∘ served_by and 3-hop rule
                                  sold_by ∘ located_in ∘ served_by.
  distributed_in(brand, region)   structure: 3-hop rule brand⁻¹ ∘ sold_by ∘ located_in, exact over
                                  the *listed* brand facts (those not held out as image-only). Brands
                                  sell through shops of two home regions (95 %), so it is sparse; the
                                  image-only brand facts belong to products sold elsewhere.
  Evidence kinds: 'image' (visible in the picture), 'ocr' (printed text), 'structure' (graph).
  bought_together(product, product) structure: symmetric (both directions are triples), mostly
                                  within one shop.
Confidences of the rules on the written training split (≈0.92-0.94 by default: valid/test hold
some heads out) are in meta "rules".

Splits. valid/test hold (a) image-only facts and (b) ordinary facts of the structure relations
(`HOLDOUT` gives the share per split; located_in and served_by stay whole in train so the rules
hold): bought_together is answered by its reverse triple, ships_from, ships_via and distributed_in
by their rules, sold_by by same-shop partners and ships_from. Every valid/test entity and relation occurs in train. For image-only facts a product with an
image gets one of its `brand`, `colour` or `category` triples held out; holding out `colour` or
`category` also holds out its `style` triple (style + the other attribute would reveal it).
Image-only property, exactly as tested: for every image-only triple (p, r, t), in the undirected
graph of the training triples (any relation, either direction)
  1. no train triple links p and t, and
  2. no entity x is linked to both p and t (no train path p - x - t of length 2).
So neither a direct edge nor a 2-hop path (bought_together partner with the same attribute,
distributed_in(brand, p's region), shared style, ...) names the answer; only the image does.
Longer paths (p - shop - other product - colour) exist; they are weak statistics, not evidence.

Images: `OpenBG-IMG_images/<product>/main.jpg`, `image_size`² RGB on a white background: the
category silhouette in the product colour (with a darker outline) in the upper 70 %, the brand
name in upper-case letters (no I, O, Q) in black in the lower band, nothing else. JPEG quality,
subsampling and the absence of metadata are fixed, so the same seed gives identical bytes.

Example:
  >>> stats = generate('/tmp/kg', seed=0)                           # doctest: +SKIP
  >>> stats['train'], stats['valid'], stats['test'], stats['images']  # doctest: +SKIP
  (26355, 1593, 1594, 1000)
  $ python -m data_prep.synthetic --out=/tmp/kg --seed=0
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import time
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = (('red', (214, 32, 32)), ('orange', (245, 128, 16)), ('yellow', (238, 204, 16)),
           ('pink', (240, 110, 180)), ('green', (32, 150, 56)), ('blue', (32, 72, 200)),
           ('purple', (124, 48, 168)), ('brown', (120, 70, 30)), ('black', (24, 24, 24)),
           ('grey', (136, 136, 136)))
# 0 bright, 1 cool, 2 neutral (per colour above).
COLOUR_GROUP = (0, 0, 0, 0, 1, 1, 1, 2, 2, 2)
CATEGORIES = ('tshirt', 'trousers', 'hat', 'shoe', 'bag', 'bottle', 'mug', 'lamp')
# 0 apparel, 1 accessories, 2 home (per category above).
CATEGORY_GROUP = (0, 0, 0, 1, 1, 2, 2, 2)
# STYLE_TABLE[category group][colour group].
STYLE_TABLE = (('sporty', 'casual', 'classic'), ('trendy', 'modern', 'elegant'),
               ('playful', 'modern', 'rustic'))
STYLES = ('sporty', 'casual', 'classic', 'trendy', 'modern', 'elegant', 'playful', 'rustic')
# Letters printed in brand names: upper case, none that OCR confuses with digits (I, O, Q).
CONSONANTS, VOWELS = 'BCDFGHKLMNPRSTVWXZ', 'AEU'
RELATIONS = {  # name: (evidence, description)
    'brand': ('ocr', 'brand of the product; its name is printed in the product image'),
    'colour': ('image', 'colour of the product; the fill colour of the image silhouette'),
    'category': ('image', 'category of the product; the shape of the image silhouette'),
    'style': ('image', 'style of the product; a fixed function of its category and colour'),
    'sold_by': ('structure', 'shop that sells the product'),
    'located_in': ('structure', 'region where the shop is'),
    'ships_from': ('structure', 'region the product ships from (sold_by then located_in)'),
    'served_by': ('structure', 'courier serving the region'),
    'ships_via': ('structure', 'courier delivering the product (ships_from then served_by)'),
    'distributed_in': ('structure', 'region where listed products of the brand are sold'),
    'bought_together': ('structure', 'products often bought together (symmetric)'),
}
# Share of each structure relation's triples moved to valid, and again to test.
HOLDOUT = {'bought_together': 0.1, 'sold_by': 0.04, 'ships_from': 0.03, 'ships_via': 0.04,
           'distributed_in': 0.04}
# Exact rules whose confidence on the training split is recorded in the meta file.
RULES = {'ships_from': ('sold_by', 'located_in'), 'ships_via': ('sold_by', 'located_in', 'served_by'),
         'distributed_in': ('brand_inv', 'sold_by', 'located_in')}
HOME_PROB, SAME_SHOP_PROB, PARTNERS_PER_PRODUCT = 0.95, 0.7, 2
META_FILE = 'synthetic_meta.json'
# Silhouettes in unit coordinates: ('poly', points), ('ellipse', box), ('rect', box),
# ('arc', box, start, end, width). Solid shapes only: a ring mug handle was read by OCR as "D".
SHAPES = {
    'tshirt': [('poly', [(.30, .05), (.42, .05), (.50, .14), (.58, .05), (.70, .05), (1., .27),
                         (.88, .45), (.78, .38), (.78, 1.), (.22, 1.), (.22, .38), (.12, .45),
                         (0., .27)])],
    'trousers': [('poly', [(.24, 0.), (.76, 0.), (.86, 1.), (.60, 1.), (.50, .32), (.40, 1.),
                           (.14, 1.)])],
    'hat': [('ellipse', (0., .68, 1., .96)), ('poly', [(.22, .80), (.30, .22), (.70, .22),
                                                       (.78, .80)]),
            ('ellipse', (.30, .10, .70, .34))],
    'shoe': [('poly', [(0., .52), (.08, .28), (.40, .28), (.56, .52), (.88, .62), (1., .78),
                       (1., .92), (0., .92)])],
    'bag': [('rect', (.08, .38, .92, 1.)), ('arc', (.26, .02, .74, .74), 180, 360, .07)],
    'bottle': [('rect', (.41, 0., .59, .26)), ('poly', [(.41, .24), (.59, .24), (.74, .40),
                                                        (.74, 1.), (.26, 1.), (.26, .40)])],
    'mug': [('ellipse', (.52, .34, .92, .80)), ('rect', (.12, .18, .70, 1.))],
    'lamp': [('poly', [(.30, 0.), (.70, 0.), (.92, .44), (.08, .44)]), ('rect', (.46, .44, .54, .88)),
             ('ellipse', (.20, .84, .80, 1.))],
}


def _brand_names(rng: np.random.Generator, n: int) -> list[str]:
  """`n` distinct pronounceable upper-case names of 5-7 letters (consonant-vowel alternation)."""
  names: list[str] = []
  seen = set()
  while len(names) < n:
    length = int(rng.integers(5, 8))
    name = ''.join((CONSONANTS[rng.integers(len(CONSONANTS))] if i % 2 == 0
                    else VOWELS[rng.integers(len(VOWELS))]) for i in range(length))
    if name not in seen:
      seen.add(name)
      names.append(name)
  return names


def _entity_text(name: str) -> str:
  """Description of an entity that reveals nothing hidden: 'product 0001', 'brand KAVREN'."""
  kind, _, rest = name.partition('_')
  return f'{kind} {rest.upper() if kind == "brand" else rest}'


def style_of(category: int, colour: int) -> str:
  """The style of a product: `STYLE_TABLE[category group][colour group]`."""
  return STYLE_TABLE[CATEGORY_GROUP[category]][COLOUR_GROUP[colour]]


def render_image(category: str, rgb: tuple[int, int, int], text: str, size: int,
                 jitter: np.ndarray) -> Image.Image:
  """Draws one product image: silhouette of `category` filled with `rgb`, `text` printed below.

  Args:
    category: a key of `SHAPES`.
    rgb: fill colour.
    text: the only text in the image (upper-case letters).
    size: image side in pixels.
    jitter: 3 numbers in [0, 1): silhouette scale, horizontal and vertical offset.

  Returns:
    A `size`×`size` RGB image.
  """
  img = Image.new('RGB', (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  area = 0.66 * size                                   # silhouette lives in [0, area) vertically
  side = area * (0.80 + 0.18 * jitter[0])
  x0 = (size - side) / 2 + (jitter[1] - 0.5) * (size - side) * 0.6
  y0 = 0.03 * size + (area - side) * jitter[2]
  dark = tuple(int(c * 0.55) for c in rgb)
  line = max(1, size // 112)

  def pt(u, v):
    return (x0 + u * side, y0 + v * side)

  for kind, box, *rest in SHAPES[category]:
    if kind == 'poly':
      draw.polygon([pt(u, v) for u, v in box], fill=rgb, outline=dark, width=line)
      continue
    xy = [pt(box[0], box[1]), pt(box[2], box[3])]
    if kind == 'ellipse':
      draw.ellipse(xy, fill=rgb, outline=dark, width=line)
    elif kind == 'rect':
      draw.rectangle(xy, fill=rgb, outline=dark, width=line)
    elif kind == 'arc':
      draw.arc(xy, rest[0], rest[1], fill=rgb, width=max(1, int(rest[2] * side)))
  font_size = int(0.15 * size)
  font = ImageFont.load_default(size=font_size)
  while font.getlength(text) > 0.86 * size and font_size > 8:
    font_size -= 2
    font = ImageFont.load_default(size=font_size)
  draw.text((size / 2, 0.85 * size), text, fill=(0, 0, 0), font=font, anchor='mm')
  return img


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=quality, subsampling=0, optimize=False, progressive=False)
  return buf.getvalue()


class _Graph:
  """Undirected multigraph of the current training triples (neighbour -> edge count)."""

  def __init__(self, num_entities: int):
    self.nbrs: list[dict[int, int]] = [{} for _ in range(num_entities)]

  def add(self, h: int, t: int) -> None:
    self.nbrs[h][t] = self.nbrs[h].get(t, 0) + 1
    self.nbrs[t][h] = self.nbrs[t].get(h, 0) + 1

  def remove(self, h: int, t: int) -> None:
    for a, b in ((h, t), (t, h)):
      self.nbrs[a][b] -= 1
      if not self.nbrs[a][b]:
        del self.nbrs[a][b]

  def hidden(self, p: int, t: int) -> bool:
    """True when neither an edge nor a 2-hop path links p and t, and t still occurs."""
    small, big = sorted((self.nbrs[p], self.nbrs[t]), key=len)
    return t not in self.nbrs[p] and bool(self.nbrs[t]) and not any(x in big for x in small)


def _rule_confidence(train: list[tuple[str, str, str]], head: str, body: tuple[str, ...]
                     ) -> dict[str, Any]:
  """Confidence |body ∧ head| / |body| of `head(X,Y) ⇐ body` over `train` (`r_inv` = inverse)."""
  by_rel: dict[str, dict[str, list[str]]] = {}
  for h, r, t in train:
    by_rel.setdefault(r, {}).setdefault(h, []).append(t)
    by_rel.setdefault(r + '_inv', {}).setdefault(t, []).append(h)
  reach = {x: {x} for x in sorted(by_rel.get(body[0], {}))}
  for r in body:
    reach = {x: {z for y in ys for z in by_rel.get(r, {}).get(y, [])} for x, ys in reach.items()}
  pairs = {(x, y) for x, ys in reach.items() for y in ys}
  true = {(h, t) for h, r, t in train if r == head}
  hits = len(pairs & true)
  return {'body': list(body), 'support': hits, 'body_pairs': len(pairs),
          'confidence': round(hits / max(1, len(pairs)), 6)}


def _sample(rng, n_img, n_plain, num_brands, num_shops, num_regions, num_couriers, n_exports):
  """Samples entities and every true triple (entity ids) before any split.

  Returns:
    names, triples `(h, relation, t)`, per-product `(brand, colour, category, region)`
    arrays, the order in which image products are tried for image-only facts, the export set.
  """
  n_prod = n_img + n_plain
  brands = _brand_names(rng, num_brands)
  kinds = {'product': [f'{i:04d}' for i in range(n_prod)], 'brand': [b.lower() for b in brands],
           'colour': [c for c, _ in COLOURS], 'category': list(CATEGORIES), 'style': list(STYLES),
           'shop': [f'{i:03d}' for i in range(num_shops)],
           'region': [f'{i:02d}' for i in range(num_regions)],
           'courier': [f'{i:02d}' for i in range(num_couriers)]}
  names = [f'{k}_{v}' for k, vs in kinds.items() for v in vs]
  off = dict(zip(kinds, np.cumsum([0] + [len(v) for v in kinds.values()]).tolist()))
  # Shops -> regions and regions -> couriers, every region / courier used when there are enough.
  shop_region = np.concatenate([np.arange(min(num_shops, num_regions)),
                                rng.integers(0, num_regions, max(0, num_shops - num_regions))])
  region_courier = np.concatenate([np.arange(min(num_regions, num_couriers)),
                                   rng.integers(0, num_couriers, max(0, num_regions - num_couriers))])
  shops_in = [np.flatnonzero(shop_region == r) for r in range(num_regions)]
  with_shops = [r for r in range(num_regions) if len(shops_in[r])]
  homes = [rng.choice(with_shops, size=min(2, len(with_shops)), replace=False).tolist()
           for _ in brands]
  brand = rng.integers(0, num_brands, n_prod)
  colour = rng.integers(0, len(COLOURS), n_prod)
  category = rng.integers(0, len(CATEGORIES), n_prod)
  # Image products in the order they are tried for image-only facts; the first `n_exports` are
  # sold in a region that is not a home region of their brand (one per brand and region if possible).
  order = rng.permutation(n_img).tolist()
  exports, used = set(order[:n_exports]), set()
  shop = np.empty(n_prod, np.int64)
  for p in range(n_prod):
    foreign = [r for r in with_shops if r not in homes[brand[p]]]
    if p in exports and foreign:
      r = int(rng.choice([r for r in foreign if (brand[p], r) not in used] or foreign))
      used.add((brand[p], r))
      shop[p] = rng.choice(shops_in[r])
    elif rng.random() < HOME_PROB:
      shop[p] = rng.choice(shops_in[int(rng.choice(homes[brand[p]]))])
    else:
      shop[p] = rng.integers(num_shops)
  region = shop_region[shop]
  products_of_shop = [np.flatnonzero(shop == s) for s in range(num_shops)]
  pairs = set()
  for p in range(n_prod):
    for _ in range(PARTNERS_PER_PRODUCT):
      same = rng.random() < SAME_SHOP_PROB
      q = int(rng.choice(products_of_shop[shop[p]])) if same else int(rng.integers(n_prod))
      if q != p:
        pairs.add((min(p, q), max(p, q)))
  triples = []
  for p in range(n_prod):
    triples += [(p, 'brand', off['brand'] + brand[p]), (p, 'colour', off['colour'] + colour[p]),
                (p, 'category', off['category'] + category[p]),
                (p, 'style', off['style'] + STYLES.index(style_of(category[p], colour[p]))),
                (p, 'sold_by', off['shop'] + shop[p]), (p, 'ships_from', off['region'] + region[p]),
                (p, 'ships_via', off['courier'] + region_courier[region[p]])]
  triples += [(off['shop'] + s, 'located_in', off['region'] + r) for s, r in enumerate(shop_region)]
  triples += [(off['region'] + r, 'served_by', off['courier'] + c)
              for r, c in enumerate(region_courier)]
  for p, q in sorted(pairs):
    triples += [(p, 'bought_together', q), (q, 'bought_together', p)]
  triples = [(int(h), r, int(t)) for h, r, t in triples]
  attrs = (off['brand'] + brand, colour, category, off['region'] + region)
  return names, triples, attrs, order, exports


def _split(rng, num_entities, triples, attrs, order, exports, target):
  """Chooses image-only facts, adds distributed_in, holds out structure facts.

  Returns:
    triples (with distributed_in), `split[triple]` in train/valid/test, image-only triples per split.
  """
  brand, _, _, region = attrs
  dcount: dict[tuple[int, int], int] = {}             # (brand, region) -> listed products
  for b, r in zip(brand.tolist(), region.tolist()):
    dcount[(b, r)] = dcount.get((b, r), 0) + 1
  graph = _Graph(num_entities)
  for h, _, t in triples + [(b, 'distributed_in', r) for b, r in dcount]:
    graph.add(h, t)
  index = {(h, r): t for h, r, t in triples if r in ('brand', 'colour', 'category', 'style')}

  def toggle(held, dkey, sign):                         # remove (sign -1) or restore (+1)
    for h, _, t in held:
      (graph.add if sign > 0 else graph.remove)(h, t)
    if dkey is not None:
      dcount[dkey] += sign
      if dcount[dkey] == (1 if sign > 0 else 0):
        (graph.add if sign > 0 else graph.remove)(*dkey)

  chosen = []
  for i, p in enumerate(order):
    if len(chosen) >= target:
      break
    kinds = (('brand', 'colour', 'category') if p in exports else
             ('colour', 'category', 'brand') if i % 2 else ('category', 'colour', 'brand'))
    for kind in kinds:
      held = [(p, kind, index[(p, kind)])]
      held += [(p, 'style', index[(p, 'style')])] if kind != 'brand' else []
      dkey = (int(brand[p]), int(region[p])) if kind == 'brand' else None
      toggle(held, dkey, -1)
      if all(graph.hidden(h, t) for h, _, t in held):
        chosen.append(held)
        break
      toggle(held, dkey, +1)
  if len(chosen) < target:
    logging.warning('synthetic KG: found %d of %d image-only products (graph too small or dense)',
                    len(chosen), target)
  triples = triples + [(b, 'distributed_in', r) for (b, r), c in sorted(dcount.items()) if c]
  split = dict.fromkeys(triples, 'train')
  image_only = {'valid': [], 'test': []}
  for i, held in enumerate(chosen):
    for x in held:
      split[x] = ('valid', 'test')[i % 2]
      image_only[split[x]].append(x)
  # Ordinary facts of the structure relations; both ends keep at least one train edge.
  for rel, frac in HOLDOUT.items():
    rows = [x for x in triples if x[1] == rel]
    quota = dict.fromkeys(('valid', 'test'), int(round(frac * len(rows))))
    for k, i in enumerate(rng.permutation(len(rows)).tolist()):
      h, _, t = x = rows[i]
      name = ('valid', 'test')[k % 2]
      if quota[name] <= 0 or split[x] != 'train':
        continue
      if graph.nbrs[h][t] == 1 and (len(graph.nbrs[h]) < 2 or len(graph.nbrs[t]) < 2):
        continue                                       # h or t would vanish from train
      graph.remove(h, t)
      split[x], quota[name] = name, quota[name] - 1
  return triples, split, image_only


def generate(out_dir: str, seed: int = 0, *, num_products: int = 1000,
             num_imageless_products: int = 1700, num_brands: int = 60, num_shops: int = 80,
             num_regions: int = 12, num_couriers: int = 5, image_size: int = 224,
             image_only_fraction: float = 0.15, jpeg_quality: int = 90,
             overwrite: bool = False) -> dict[str, Any]:
  """Writes the synthetic multimodal KG into `out_dir` (OpenBG-IMG layout + `synthetic_meta.json`).

  Everything is written into `out_dir + '.tmp'` first and renamed at the end, so an existing
  `out_dir` is always complete. Same arguments ⇒ byte-identical files.

  Args:
    out_dir: destination folder; must not exist unless `overwrite`.
    seed: seed of the only random generator (`np.random.default_rng(seed)`).
    num_products: products with a rendered image.
    num_imageless_products: further products without an image.
    num_brands: brands (5-7 letter names printed in the images).
    num_shops: shops; num_regions: regions; num_couriers: couriers.
    image_size: side of the square product images in pixels.
    image_only_fraction: share of image products with one image-only fact in valid, and again in test.
    jpeg_quality: JPEG quality of the images.
    overwrite: replace an existing `out_dir`.

  Returns:
    Stats: entities, relations, train, valid, test, images, image_only_valid, image_only_test, seconds.

  Example:
    >>> generate('/tmp/kg_small', seed=1, num_products=50, num_imageless_products=50)  # doctest: +SKIP
  """
  start = time.perf_counter()
  for key, value, low in (('num_products', num_products, 1), ('num_brands', num_brands, 1),
                          ('num_shops', num_shops, 1), ('num_regions', num_regions, 1),
                          ('num_couriers', num_couriers, 1), ('image_size', image_size, 32),
                          ('jpeg_quality', jpeg_quality, 1),
                          ('num_imageless_products', num_imageless_products, 0)):
    if value < low:
      raise ValueError(f'data_prep.synthetic.generate: {key}={value} must be >= {low} '
                       f'(config key synthetic.{key})')
  if not 0 <= image_only_fraction <= 0.5:
    raise ValueError(f'data_prep.synthetic.generate: image_only_fraction={image_only_fraction} must be '
                     'in [0, 0.5] (one share for valid and one for test)')
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f'{out_dir} already exists; delete it or pass overwrite=True (--overwrite)')
  rng = np.random.default_rng(seed)
  target = int(round(image_only_fraction * num_products)) * 2
  names, triples, attrs, order, exports = _sample(
      rng, num_products, num_imageless_products, num_brands, num_shops, num_regions, num_couriers,
      n_exports=target // 3)
  triples, split, image_only = _split(rng, len(names), triples, attrs, order, exports, target)
  jitter = rng.random((num_products, 3))             # [num_products, 3]
  brand, colour, category, _ = attrs
  tmp = out_dir + '.tmp'
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)

  def write_lines(fname, rows):
    with open(os.path.join(tmp, fname), 'w', encoding='utf-8', newline='\n') as f:
      f.writelines('\t'.join(row) + '\n' for row in rows)

  named = {s: sorted((names[h], r, names[t]) for (h, r, t), sp in split.items() if sp == s)
           for s in ('train', 'valid', 'test')}
  if not named['valid'] or not named['test']:
    shutil.rmtree(tmp)
    raise ValueError(f'data_prep.synthetic.generate: sizes too small, {len(named["valid"])} valid and '
                     f'{len(named["test"])} test triples; raise num_products / num_imageless_products')
  for s, fname in (('train', 'train'), ('valid', 'dev'), ('test', 'test')):
    write_lines(f'OpenBG-IMG_{fname}.tsv', named[s])
  write_lines('OpenBG-IMG_entity2text.tsv', ((n, _entity_text(n)) for n in names))
  write_lines('OpenBG-IMG_relation2text.tsv', ((r, d) for r, (_, d) in RELATIONS.items()))
  printed = {}
  for p in range(num_products):
    folder = os.path.join(tmp, 'OpenBG-IMG_images', names[p])
    os.makedirs(folder)
    text = names[brand[p]].removeprefix('brand_').upper()
    img = render_image(CATEGORIES[category[p]], COLOURS[colour[p]][1], text, image_size, jitter[p])
    with open(os.path.join(folder, 'main.jpg'), 'wb') as f:
      f.write(_jpeg_bytes(img, jpeg_quality))
    printed[names[p]] = text
  train = named['train']
  rules = {head: _rule_confidence(train, head, body) for head, body in RULES.items()}
  sizes = dict(num_products=num_products, num_imageless_products=num_imageless_products,
               num_brands=num_brands, num_shops=num_shops, num_regions=num_regions,
               num_couriers=num_couriers, image_size=image_size,
               image_only_fraction=image_only_fraction, jpeg_quality=jpeg_quality)
  stats = {'entities': len(names), 'relations': len(RELATIONS), 'train': len(named['train']),
           'valid': len(named['valid']), 'test': len(named['test']), 'images': num_products,
           'image_only_valid': len(image_only['valid']), 'image_only_test': len(image_only['test'])}
  meta = {'seed': seed, 'sizes': sizes, 'stats': stats,
          'relations': {r: {'evidence': e, 'description': d} for r, (e, d) in RELATIONS.items()},
          'image_only': {s: [[names[h], r, names[t]] for h, r, t in rows]
                         for s, rows in image_only.items()},
          'printed_text': printed, 'rules': rules,
          'colours': {c: list(rgb) for c, rgb in COLOURS}, 'categories': list(CATEGORIES),
          'style_table': {f'{CATEGORIES[k]}/{COLOURS[c][0]}': style_of(k, c)
                          for k in range(len(CATEGORIES)) for c in range(len(COLOURS))}}
  with open(os.path.join(tmp, META_FILE), 'w', encoding='utf-8') as f:
    json.dump(meta, f, indent=1, sort_keys=True)
  if os.path.exists(out_dir):
    old = out_dir + '.old'
    if os.path.exists(old):
      shutil.rmtree(old)
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old)
  else:
    os.replace(tmp, out_dir)
  stats['seconds'] = round(time.perf_counter() - start, 3)
  logging.info('synthetic KG written to %s: %s', out_dir, stats)
  return stats


def generate_from_config(config, out_dir: str, overwrite: bool = False) -> dict[str, Any]:
  """`generate` with `config.seed` and every key of `config.synthetic` (configs/default.py)."""
  return generate(out_dir, seed=config.seed, overwrite=overwrite, **config.synthetic.to_dict())


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='output folder (OpenBG-IMG layout)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
  for key in ('num_products', 'num_imageless_products', 'num_brands', 'num_shops', 'num_regions',
              'num_couriers', 'image_size', 'jpeg_quality'):
    parser.add_argument(f'--{key}', type=int, default=None)
  parser.add_argument('--image_only_fraction', type=float, default=None)
  args = vars(parser.parse_args(argv))
  out, seed, overwrite = args.pop('out'), args.pop('seed'), args.pop('overwrite')
  kwargs = {k: v for k, v in args.items() if v is not None}
  print(json.dumps(generate(out, seed, overwrite=overwrite, **kwargs), indent=1))


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO)
  main()
