"""Tests of data_prep/features.py and data_prep/text_vector.py."""
import json
import os

import numpy as np
import pytest

from configs import default
from data_prep import features
from data_prep import synthetic
from data_prep import text_vector
from data_prep import vgg16
from data_prep import vgg16_weights
from imkga_jax import readers

SMALL = dict(widths=(4, 8, 8, 16, 16), dense_width=32, num_classes=10)


def test_hashed_ngrams_deterministic_normalised_and_distinct():
  a = text_vector.hashed_ngrams('ZAPACUB', 256)
  assert a.shape == (256,) and a.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(a), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(a, text_vector.hashed_ngrams(' zapacub ', 256))   # case, ends
  b = text_vector.hashed_ngrams('ZAPACUR', 256)
  c = text_vector.hashed_ngrams('TUSUX', 256)
  assert a @ b > 0.6 > a @ c                       # one letter apart vs another word
  assert not text_vector.hashed_ngrams('', 256).any()
  # Fixed across processes (CRC-32, not the salted built-in hash): bucket of ' z' etc.
  assert np.flatnonzero(text_vector.hashed_ngrams('a', 16)).tolist() == sorted(
      {__import__('zlib').crc32(g.encode()) % 16 for g in (' ', 'a', ' a', 'a ', ' a ')})
  v = text_vector.vectorise(['AB', None, ''], 32, 2, 2)
  assert v.shape == (3, 32) and v[0].any() and not v[1:].any()
  with pytest.raises(ValueError, match='features.ngram_min'):
    text_vector.hashed_ngrams('x', 8, 3, 2)


def _fc(**overrides):
  fc = default.get_config().features
  fc.update({**dict(ae_steps=60, ae_batch_size=32, ae_segments=2, ae_hidden=16), **overrides})
  return fc


def test_reduce_features_learns_deterministic_codes_only_for_present_rows():
  rs = np.random.RandomState(0)
  labels = rs.randint(0, 4, 200)
  x = (rs.normal(size=(4, 40)) * 10)[labels] + rs.normal(size=(200, 40))        # [200, 40]
  present = rs.rand(200) > 0.2
  fc = _fc(ae_steps=300, ae_learning_rate=1e-2)
  codes, loss = features.reduce_features(x, present, 3, fc, seed=7)
  again, _ = features.reduce_features(x, present, 3, fc, seed=7)
  other, _ = features.reduce_features(x, present, 3, fc, seed=8)
  np.testing.assert_array_equal(codes, again)
  assert not np.array_equal(codes, other)
  assert codes.shape == (200, 3) and not codes[~present].any()
  assert ((codes[present] > 0) & (codes[present] < 1)).all()                     # sigmoid, Eq. 7
  assert loss < 0.5                                # well below the all-mean prediction (1.0)
  c, l = codes[present], labels[present]           # the code separates the clusters
  d = ((c[:, None] - c[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  assert (l[d.argmin(1)] == l).mean() > 0.9
  empty, none_loss = features.reduce_features(x, np.zeros(200, bool), 3, fc, seed=7)
  assert not empty.any() and none_loss is None
  with pytest.raises(ValueError, match='ae_segments'):
    features.reduce_features(x, present, 3, _fc(ae_segments=3), seed=0)


@pytest.fixture(scope='module')
def tiny_kg(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('kg') / 'raw')
  synthetic.generate(root, seed=3, num_products=12, num_imageless_products=6, num_brands=4,
                     num_shops=3, num_regions=2, num_couriers=2)
  broken = os.path.join(root, 'OpenBG-IMG_images', 'product_0005', 'main.jpg')
  with open(broken, 'r+b') as f:
    f.truncate(300)                                # a truncated JPEG: unreadable
  return readers.load_kg(root)


def test_build_features_writes_the_contract(tiny_kg, tmp_path, monkeypatch):
  small = vgg16.init_params(0, vgg16.VGG16(**SMALL))
  monkeypatch.setattr(vgg16_weights, 'load_or_init', lambda path, seed: (small, 'caffe'))
  config = default.get_config()
  config.features = _fc(ocr_vector_dim=32)
  kg, out = tiny_kg, str(tmp_path / 'prepared')
  stats = features.build_features(kg, config, out)
  with np.load(os.path.join(out, 'features.npz'), allow_pickle=False) as z:
    f = dict(z)
  e = kg.num_entities
  expect = {'image_vector': ((e, 10), np.float32), 'image_present': ((e,), np.bool_),
            'ocr_vector': ((e, 32), np.float32), 'ocr_present': ((e,), np.bool_),
            'h_fig': ((e, 8), np.float32), 'h_ocr': ((e, 3), np.float32),
            'mentions': ((e, 4), np.int32)}
  assert set(f) == set(expect) | {'ocr_text'}
  for key, (shape, dtype) in expect.items():
    assert f[key].shape == shape and f[key].dtype == dtype, key
  assert f['ocr_text'].shape == (e,) and f['ocr_text'].dtype.kind == 'U'
  with_image = np.zeros(e, bool)
  with_image[[kg.entity_id(n) for n in kg.images]] = True
  broken = kg.entity_id('product_0005')
  np.testing.assert_array_equal(f['image_present'], with_image & (np.arange(e) != broken))
  assert stats['images'] == 12 and stats['images_unreadable'] == 1
  np.testing.assert_array_equal(f['ocr_present'], f['image_present'] & (f['ocr_text'] != ''))
  assert stats['ocr_nonempty'] == f['ocr_present'].sum() >= 10
  for vec, present in (('image_vector', 'image_present'), ('ocr_vector', 'ocr_present'),
                       ('h_fig', 'image_present'), ('h_ocr', 'ocr_present')):
    assert not f[vec][~f[present]].any(), vec
    assert np.abs(f[vec][f[present]]).sum(1).min() > 0, vec
  printed = json.load(open(os.path.join(kg.source, 'synthetic_meta.json')))['printed_text']
  read = {kg.entities[i]: str(f['ocr_text'][i]) for i in np.flatnonzero(f['image_present'])}
  exact = sum(read.get(n, '') == t for n, t in printed.items()) / len(printed)
  assert stats['ocr_brand_exact'] == pytest.approx(exact, abs=1e-4) and exact >= 10 / 12
  # The brand printed on a product's image names the brand entity (`brand_<name>`) and nothing else.
  named = {n: t for n, t in printed.items() if read.get(n) == t}
  for name, text in named.items():
    row = f['mentions'][kg.entity_id(name)]
    assert row.tolist() == [kg.entity_id('brand_' + text.lower()), -1, -1, -1], name
  assert not (f['mentions'][~f['ocr_present']] >= 0).any()
  assert stats['ocr_naming_an_entity'] >= len(named) >= 10
  # Rerun: every image (the broken one too) comes from the OCR cache; same seed, same file.
  again = features.build_features(kg, config, out)
  assert again['ocr_cache_hits'] == 12
  with np.load(os.path.join(out, 'features.npz'), allow_pickle=False) as z:
    for key in f:
      np.testing.assert_array_equal(z[key], f[key], err_msg=key)


def test_build_features_reads_gap_features_at_vgg_image_size(tiny_kg, tmp_path, monkeypatch):
  """features.vgg_layer / vgg_image_size reach the extractor: gap vectors of 64x64 inputs (one per
  image, width = the last conv block), same as calling the extractor directly at that size."""
  small = vgg16.init_params(0, vgg16.VGG16(**SMALL))
  monkeypatch.setattr(vgg16_weights, 'load_or_init', lambda path, seed: (small, 'caffe'))
  seen = []
  extract = vgg16.extract_features

  def spy(paths, params, **kwargs):
    seen.append(kwargs)
    return extract(paths, params, **kwargs)
  monkeypatch.setattr(vgg16, 'extract_features', spy)
  config = default.get_config()
  config.features = _fc(ocr_vector_dim=32, vgg_layer='gap', vgg_image_size=64)
  out = str(tmp_path / 'prepared')
  features.build_features(tiny_kg, config, out)
  assert seen and seen[0]['layer'] == 'gap' and seen[0]['image_size'] == 64
  with np.load(os.path.join(out, 'features.npz'), allow_pickle=False) as z:
    image_vector, present = z['image_vector'], z['image_present']
  assert image_vector.shape == (tiny_kg.num_entities, SMALL['widths'][-1])
  first = sorted((tiny_kg.entity_id(n), p[0]) for n, p in tiny_kg.images.items() if p)[0]
  direct, ok = extract([first[1]], small, layer='gap', image_size=64, progress=False)
  assert ok[0] and present[first[0]]
  np.testing.assert_allclose(image_vector[first[0]], direct[0], rtol=1e-5, atol=1e-6)


def test_every_image_of_an_entity_is_tried_and_refusals_are_counted(tmp_path, monkeypatch):
  """a: truncated first image, good second; b: first over features.max_image_pixels, good second;
  c: one undecodable image. The landed stage read only the first image of each."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  small = vgg16.init_params(0, vgg16.VGG16(**SMALL))
  monkeypatch.setattr(vgg16_weights, 'load_or_init', lambda path, seed: (small, 'caffe'))
  root = tmp_path / 'raw'
  rows = [('a', 'r', 'b'), ('b', 'r', 'c'), ('c', 'r', 'a')]
  root.mkdir()
  for split in ('train', 'dev', 'test'):
    (root / f'OpenBG-IMG_{split}.tsv').write_text(''.join('\t'.join(r) + '\n' for r in rows))
  for name in 'abc':
    (root / 'OpenBG-IMG_images' / name).mkdir(parents=True)
  (root / 'OpenBG-IMG_images' / 'a' / '0.jpg').write_bytes(b'\xff\xd8\xff truncated')
  Image.new('RGB', (64, 64), (250, 0, 0)).save(root / 'OpenBG-IMG_images' / 'a' / '1.png')
  Image.new('RGB', (80, 80), (0, 250, 0)).save(root / 'OpenBG-IMG_images' / 'b' / '0.png')
  Image.new('RGB', (64, 64), (0, 0, 250)).save(root / 'OpenBG-IMG_images' / 'b' / '1.png')
  (root / 'OpenBG-IMG_images' / 'c' / '0.jpg').write_bytes(b'not an image')
  kg = readers.load_kg(str(root))
  config = default.get_config()
  config.features = _fc(ocr_vector_dim=32, vgg_layer='gap', vgg_image_size=64,
                        max_image_pixels=64 * 64)
  out = str(tmp_path / 'prepared')
  limit = Image.MAX_IMAGE_PIXELS
  stats = features.build_features(kg, config, out)
  assert Image.MAX_IMAGE_PIXELS == limit                  # Pillow's limit is put back afterwards
  assert (stats['images'], stats['images_unreadable'], stats['image_files_unreadable'],
          stats['images_over_pixel_limit'], stats['images_fallback'], stats['images_unused']) == (
              3, 1, 3, 1, 2, 0)
  with np.load(os.path.join(out, 'features.npz')) as z:
    present, vectors = z['image_present'], z['image_vector']
  assert present.tolist() == [kg.entities[i] in ('a', 'b') for i in range(kg.num_entities)]
  for name in 'ab':
    direct, ok = vgg16.extract_features([kg.images[name][1]], small, layer='gap', image_size=64,
                                        progress=False)
    assert ok[0]
    np.testing.assert_allclose(vectors[kg.entity_id(name)], direct[0], rtol=1e-5, atol=1e-6)
