"""Tests of data_prep/synthetic.py: determinism, the image-only property, sizes, images, layout."""
import collections
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_prep import synthetic
from imkga_jax import readers

SMALL = dict(num_products=60, num_imageless_products=90, num_brands=10, num_shops=12,
             num_regions=5, num_couriers=2, image_size=96, image_only_fraction=0.2)
SPLIT_FILES = {'train': 'OpenBG-IMG_train.tsv', 'valid': 'OpenBG-IMG_dev.tsv',
               'test': 'OpenBG-IMG_test.tsv'}


def _read(root):
  splits = {}
  for split, fname in SPLIT_FILES.items():
    with open(os.path.join(root, fname), encoding='utf-8') as f:
      splits[split] = [tuple(line.rstrip('\n').split('\t')) for line in f]
  with open(os.path.join(root, synthetic.META_FILE), encoding='utf-8') as f:
    meta = json.load(f)
  return splits, meta


def _all_files(root):
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _neighbours(triples):
  nbrs = collections.defaultdict(set)
  for h, _, t in triples:
    nbrs[h].add(t)
    nbrs[t].add(h)
  return nbrs


def _revealed(nbrs, h, t):
  """True when train links h and t directly or through one intermediate entity."""
  return t in nbrs[h] or bool(nbrs[h] & nbrs[t])


def _confidence(train, head, body):
  """Confidence of head(X, Y) <= body over train; relation names ending in _inv are inverses."""
  edges = collections.defaultdict(lambda: collections.defaultdict(set))
  for h, r, t in train:
    edges[r][h].add(t)
    edges[r + '_inv'][t].add(h)
  pairs = set()
  for x in edges[body[0]]:
    frontier = {x}
    for r in body:
      frontier = {z for y in frontier for z in edges[r].get(y, ())}
    pairs |= {(x, y) for y in frontier}
  true = {(h, t) for h, r, t in train if r == head}
  return len(pairs & true) / len(pairs)


@pytest.fixture(scope='module')
def small(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('syn') / 'kg')
  stats = synthetic.generate(root, seed=3, **SMALL)
  return root, stats


@pytest.fixture(scope='module')
def default(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('syn_default') / 'kg')
  return root, synthetic.generate(root, seed=0)


def test_same_seed_gives_identical_bytes(tmp_path, small):
  root, _ = small
  again = str(tmp_path / 'again')
  synthetic.generate(again, seed=3, **SMALL)
  first, second = _all_files(root), _all_files(again)
  assert sorted(first) == sorted(second)
  assert len([p for p in first if p.endswith('.jpg')]) == SMALL['num_products']
  for path in first:
    assert first[path] == second[path], f'{path} differs between two runs with seed 3'
  other = str(tmp_path / 'other')
  synthetic.generate(other, seed=4, **SMALL)
  assert _all_files(other)['OpenBG-IMG_train.tsv'] != first['OpenBG-IMG_train.tsv']


def test_image_only_facts_have_no_structural_evidence(small):
  root, _ = small
  splits, meta = _read(root)
  nbrs = _neighbours(splits['train'])
  kinds = collections.Counter()
  for split in ('valid', 'test'):
    held = set(splits[split])
    image_only = [tuple(x) for x in meta['image_only'][split]]
    assert image_only, f'no image-only facts in {split}'
    for h, r, t in image_only:
      assert (h, r, t) in held
      assert r in ('brand', 'colour', 'category', 'style')
      assert os.path.isfile(os.path.join(root, 'OpenBG-IMG_images', h, 'main.jpg'))
      assert not _revealed(nbrs, h, t), f'{(h, r, t)} is reachable in train within 2 hops'
      kinds[r] += 1
    # The check has teeth: structure-answerable facts (ships_from = sold_by . located_in) fail it.
    ordinary = [x for x in splits[split] if x[1] == 'ships_from']
    assert ordinary and any(_revealed(nbrs, h, t) for h, _, t in ordinary)
  assert set(kinds) == {'brand', 'colour', 'category', 'style'}, kinds
  # A colour or category fact is held out together with the product's style.
  held_heads = collections.defaultdict(set)
  for split in ('valid', 'test'):
    for h, r, _ in meta['image_only'][split]:
      held_heads[h].add(r)
  for h, rels in held_heads.items():
    assert rels in ({'brand'}, {'colour', 'style'}, {'category', 'style'}), (h, rels)


def test_reader_accepts_output_and_every_eval_name_is_in_train(small):
  root, stats = small
  graph = readers.read_openbg(root)   # raises on any valid/test name unseen in train
  assert len(graph.images) == SMALL['num_products']
  assert set(graph.relations) == set(synthetic.RELATIONS)
  assert (len(graph.train), len(graph.valid), len(graph.test)) == (
      stats['train'], stats['valid'], stats['test'])
  assert set(graph.entity_text) >= set(graph.entities)
  for name, text in graph.entity_text.items():
    assert ' ' not in name and '/' not in name
    if name.startswith('product_'):   # no hidden fact in the description
      assert text == 'product ' + name.removeprefix('product_')


def test_style_is_function_of_category_and_colour(small):
  root, _ = small
  splits, _ = _read(root)
  facts = collections.defaultdict(dict)
  for rows in splits.values():
    for h, r, t in rows:
      facts[h][r] = t
  products = [h for h in facts if h.startswith('product_')]
  assert len(products) == SMALL['num_products'] + SMALL['num_imageless_products']
  for p in products:
    cat = synthetic.CATEGORIES.index(facts[p]['category'].removeprefix('category_'))
    col = [c for c, _ in synthetic.COLOURS].index(facts[p]['colour'].removeprefix('colour_'))
    assert facts[p]['style'] == 'style_' + synthetic.style_of(cat, col)


def test_images_show_colour_and_brand_band_is_clear(small):
  root, _ = small
  splits, meta = _read(root)
  colour = {h: t.removeprefix('colour_') for rows in splits.values() for h, r, t in rows
            if r == 'colour'}
  rgb = dict(synthetic.COLOURS)
  for product in sorted(meta['printed_text'])[:12]:
    img = np.asarray(Image.open(os.path.join(root, 'OpenBG-IMG_images', product, 'main.jpg')))
    size = SMALL['image_size']
    assert img.shape == (size, size, 3)
    top = img[: int(0.68 * size)].reshape(-1, 3).astype(int)       # [pixels, 3]
    ink = top[np.abs(top - 255).sum(-1) > 60]
    assert len(ink) > 100, product
    # The silhouette's fill colour is the most common ink colour (allowing for JPEG noise).
    dist = np.abs(ink - np.asarray(rgb[colour[product]])).sum(-1)
    assert np.mean(dist < 60) > 0.5, (product, colour[product])
  text = meta['printed_text']
  assert all(v.isalpha() and v.isupper() and 5 <= len(v) <= 7 and not set(v) & set('IOQ')
             for v in text.values())
  for category in synthetic.CATEGORIES:   # the silhouette never enters the text band
    for seed in range(5):
      jitter = np.random.default_rng(seed).random(3)
      img = np.asarray(synthetic.render_image(category, (0, 0, 0), '', 224, jitter))
      assert (img[int(0.70 * 224):] == 255).all(), category


def test_default_sizes_and_rules(default):
  root, stats = default
  assert 2500 <= stats['entities'] <= 3500
  total = stats['train'] + stats['valid'] + stats['test']
  assert 27_000 <= total <= 33_000
  assert stats['images'] == 1000
  for split in ('valid', 'test'):
    assert 0.05 <= stats[split] / total <= 0.10, (split, stats[split] / total)
    assert stats[f'image_only_{split}'] >= 200
  splits, meta = _read(root)
  train = splits['train']
  assert _confidence(train, 'ships_from', ('sold_by', 'located_in')) >= 0.9
  assert _confidence(train, 'ships_via', ('sold_by', 'located_in', 'served_by')) >= 0.9
  assert _confidence(train, 'distributed_in', ('brand_inv', 'sold_by', 'located_in')) >= 0.9
  assert meta['rules']['ships_from']['confidence'] == pytest.approx(
      _confidence(train, 'ships_from', ('sold_by', 'located_in')), abs=1e-6)
  assert {r: v['evidence'] for r, v in meta['relations'].items()}['brand'] == 'ocr'


def test_existing_folder_is_kept_unless_overwrite(small, tmp_path):
  root, _ = small
  with pytest.raises(FileExistsError, match='overwrite'):
    synthetic.generate(root, seed=3, **SMALL)
  assert not os.path.exists(root + '.tmp')
  with pytest.raises(ValueError, match='num_brands'):
    synthetic.generate(str(tmp_path / 'x'), num_brands=0)


def test_cli_and_config_entry_points(tmp_path):
  synthetic.main([f'--out={tmp_path / "cli"}', '--seed=1', '--num_products=12',
                  '--num_imageless_products=10', '--num_brands=4', '--num_shops=5',
                  '--num_regions=3', '--num_couriers=2', '--image_size=64'])
  assert os.path.isfile(tmp_path / 'cli' / 'OpenBG-IMG_train.tsv')
  from configs import default as default_config
  config = default_config.get_config()
  config.synthetic.update(SMALL)
  stats = synthetic.generate_from_config(config, str(tmp_path / 'cfg'))
  assert stats['images'] == SMALL['num_products']


def test_rapidocr_reads_the_printed_brand(default):
  rapidocr = pytest.importorskip('rapidocr_onnxruntime')
  root = default[0]
  _, meta = _read(root)
  engine = rapidocr.RapidOCR()
  for product, text in sorted(meta['printed_text'].items())[:2]:
    result, _ = engine(os.path.join(root, 'OpenBG-IMG_images', product, 'main.jpg'))
    assert [r[1] for r in result or []] == [text], (product, result)
