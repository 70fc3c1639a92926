"""Tests of data_prep/variants.py on a tiny hand-made KG in the OpenBG-IMG layout."""
import doctest
import json
import os

import pytest
from PIL import Image

from data_prep import variants
from imkga_jax import kg as kg_lib
from imkga_jax import readers

# Image entities: p1, p2, p3 (in train), p5 (test only). p4 has a folder without an image file.
TRAIN = [('p1', 'brand', 'b1'), ('q1', 'brand', 'b2'), ('p1', 'colour', 'c1'), ('p2', 'brand', 'b1'),
         ('q2', 'colour', 'c2'), ('p2', 'colour', 'c2'), ('p3', 'brand', 'b2'), ('q1', 'colour', 'c1'),
         ('p1', 'similar', 'p2'), ('q2', 'similar', 'p4'), ('p3', 'colour', 'c1'),
         ('p4', 'brand', 'b1')]
IMAGE_HEAD_TRAIN = [TRAIN[i] for i in (0, 2, 3, 5, 6, 8, 10)]
VALID = [('p2', 'similar', 'p3'), ('q1', 'similar', 'q2'), ('p3', 'brand', 'b1'), ('q2', 'brand', 'b2')]
TEST = [('p1', 'colour', 'c2'), ('q1', 'brand', 'b1'), ('p5', 'brand', 'b2')]
IMAGES = ('p1', 'p2', 'p3', 'p5')


def _write_lines(path, rows):
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines('\t'.join(r) + '\n' for r in rows)


@pytest.fixture
def src(tmp_path):
  root = tmp_path / 'src'
  root.mkdir()
  for split, rows in (('train', TRAIN), ('dev', VALID), ('test', TEST)):
    _write_lines(root / f'OpenBG-IMG_{split}.tsv', rows)
  names = sorted({e for h, _, t in TRAIN + VALID + TEST for e in (h, t)})
  _write_lines(root / 'OpenBG-IMG_entity2text.tsv', [(n, f'entity {n}') for n in names])
  _write_lines(root / 'OpenBG-IMG_relation2text.tsv', [(r, r) for r in ('brand', 'colour', 'similar')])
  for i, name in enumerate(IMAGES):
    folder = root / 'OpenBG-IMG_images' / name
    folder.mkdir(parents=True)
    Image.new('RGB', (4, 4), (40 * i, 200, 10)).save(folder / 'main.png')
  (root / 'OpenBG-IMG_images' / 'p4').mkdir()
  (root / 'OpenBG-IMG_images' / 'p4' / 'notes.txt').write_text('no image here')
  return str(root)


def _read_split(folder, fname):
  with open(os.path.join(folder, fname), encoding='utf-8') as f:
    return [tuple(line.rstrip('\n').split('\t')) for line in f]


def _tree(root):
  """Relative path -> bytes (following links) for files, plus each symlink's target."""
  out = {}
  for folder, dirs, files in os.walk(root, followlinks=True):
    for name in dirs + files:
      path = os.path.join(folder, name)
      if os.path.islink(path):
        out[os.path.relpath(path, root) + '@'] = os.readlink(path)
    for name in files:
      with open(os.path.join(folder, name), 'rb') as f:
        out[os.path.relpath(os.path.join(folder, name), root)] = f.read()
  return out


def test_read_layout(src):
  splits = variants.read_layout(src)
  assert list(splits.train) == TRAIN and list(splits.valid) == VALID and list(splits.test) == TEST
  assert splits.image_entities == frozenset(IMAGES)  # p4's folder holds no image file


def test_complete_img_exact(src):
  derived = variants.complete_img(variants.read_layout(src))
  assert list(derived.train) == IMAGE_HEAD_TRAIN
  assert list(derived.valid) == [VALID[0], VALID[2]]
  assert list(derived.test) == TEST
  assert derived.image_entities == {'p1', 'p2', 'p3'}  # p5 occurs only in test
  assert derived.info['image_entities_dropped'] == 1


def test_masked_fill_above_image_share(src):
  splits = variants.read_layout(src)
  derived = variants.masked(splits, 80, seed=0)
  assert len(derived.train) == 10 and len(derived.valid) == 3   # round(9.6), round(3.2)
  assert set(IMAGE_HEAD_TRAIN) <= set(derived.train)           # every image-head triple kept
  assert {VALID[0], VALID[2]} <= set(derived.valid)
  assert list(derived.train) == [x for x in TRAIN if x in set(derived.train)]  # input order
  assert list(derived.test) == TEST
  assert derived.info['train']['mode'] == 'fill'
  full = variants.masked(splits, 100, seed=3)
  assert list(full.train) == TRAIN and list(full.valid) == VALID


def test_masked_thin_below_image_share(src):
  splits = variants.read_layout(src)
  derived = variants.masked(splits, 50, seed=0)
  # target 6 < 7 image-head triples; f in [0.75, 5/6) keeps 2 of p1's 3, p2's 2 and p3's 2.
  assert len(derived.train) == 6 and derived.info['train']['mode'] == 'thin'
  assert set(derived.train) <= set(IMAGE_HEAD_TRAIN)
  heads = [h for h, _, _ in derived.train]
  assert (heads.count('p1'), heads.count('p2'), heads.count('p3')) == (2, 2, 2)
  assert list(derived.valid) == [VALID[0], VALID[2]]          # target 2 = the 2 image-head triples
  low = variants.masked(splits, 28, seed=0)                    # target 3 = one per image head
  assert sorted(h for h, _, _ in low.train) == ['p1', 'p2', 'p3']
  assert sorted(h for h, _, _ in low.valid) == ['p2', 'p3']   # target 1 < 2 heads: one each
  assert low.image_entities == {'p1', 'p2', 'p3'}


@pytest.mark.parametrize('share,kept', [(35, 6), (40, 9), (60, 12)])
def test_masked_thinning_factor_closest_to_target(share, kept):
  # 3 image heads with 4 triples each: thinning totals jump 3, 6, 9, 12 (targets 7, 8, 12 of 20).
  train = [(f'p{i}', 'r', f't{j}') for i in range(3) for j in range(4)]
  train += [(f'q{i}', 'r', 't0') for i in range(8)]
  splits = variants.Splits(tuple(train), tuple(train[:2]), tuple(train[:1]),
                           frozenset({'p0', 'p1', 'p2'}))
  derived = variants.masked(splits, share, seed=0)
  assert len(derived.train) == kept
  assert sorted({h for h, _, _ in derived.train}) == ['p0', 'p1', 'p2']


def test_masked_deterministic_nested_and_seeded(src):
  splits = variants.read_layout(src)
  a, b = variants.masked(splits, 80, seed=0), variants.masked(splits, 80, seed=0)
  assert a.train == b.train and a.valid == b.valid
  for seed in range(3):
    small, mid, big = (set(variants.masked(splits, x, seed).train) for x in (28, 50, 80))
    assert small <= mid <= big
  others = {variants.masked(splits, 80, seed=s).train for s in range(1, 12)}
  assert any(o != a.train for o in others)  # 3 of 5 imageless triples: 10 possible choices
  thin = {variants.masked(splits, 28, seed=s).train for s in range(12)}
  assert len(thin) > 1                       # p1 keeps 1 of its 3 triples at random


def test_cli_writes_loadable_folders_and_table(src, tmp_path, capsys):
  out = str(tmp_path / 'out')
  rows = variants.main([f'--src={src}', f'--out={out}', '--shares=80,50', '--seed=0'])
  printed = capsys.readouterr().out
  assert 'unknown_entities=keep' in printed
  assert sorted(os.listdir(out)) == ['complete-img', 'masked-50', 'masked-80', 'stats.md']
  source_row, complete_row = rows[0], rows[1]
  assert source_row == {'Dataset': 'src (source)', '#Ent': 11, '#Rel': 3, '#Train': 12, '#Valid': 4,
                        '#Test': 3, '#images': 4}
  assert complete_row == {'Dataset': 'complete-img', '#Ent': 9, '#Rel': 3, '#Train': 7, '#Valid': 2,
                          '#Test': 3, '#images': 3}
  assert [(r['#Train'], r['#Valid'], r['#images']) for r in rows[2:]] == [(10, 3, 3), (6, 2, 3)]
  table = variants.format_table(rows)
  assert '| complete-img | 9 | 3 | 7 | 2 | 3 | 3 |' in table.splitlines()
  with open(os.path.join(out, 'stats.md'), encoding='utf-8') as f:
    assert f.read() == table + '\n'
  folder = os.path.join(out, 'complete-img')
  assert _read_split(folder, 'OpenBG-IMG_train.tsv') == IMAGE_HEAD_TRAIN
  assert _read_split(folder, 'OpenBG-IMG_test.tsv') == TEST
  with open(os.path.join(folder, 'OpenBG-IMG_entity2text.tsv'), 'rb') as f, \
       open(os.path.join(src, 'OpenBG-IMG_entity2text.tsv'), 'rb') as g:
    assert f.read() == g.read()
  for name in ('complete-img', 'masked-80', 'masked-50'):
    with pytest.raises(kg_lib.KGFormatError, match='never occurs in the training split'):
      readers.load_kg(os.path.join(out, name))              # p5/q1 of test are absent from train
    # The image folders are symlinks into the source KG, outside this root: read with 'follow'.
    graph = readers.load_kg(os.path.join(out, name), unknown='keep', outside_links='follow')
    assert sorted(graph.images) == ['p1', 'p2', 'p3']
    for paths in graph.images.values():
      with Image.open(paths[0]) as img:
        assert img.size == (4, 4)
    with open(os.path.join(out, name, variants.VARIANT_FILE), encoding='utf-8') as f:
      meta = json.load(f)
    assert meta['name'] == name and meta['seed'] == 0
    assert meta['counts']['image_entities_dropped'] == 1
    assert meta['counts']['test_unseen_in_train'] >= 1
  assert len(graph.train) == 6 and graph.stats()['entities_with_images'] == 3


def test_cli_same_seed_same_bytes(src, tmp_path):
  out_a, out_b, out_c = (str(tmp_path / n) for n in ('a', 'b', 'c'))
  for out, seed in ((out_a, 0), (out_b, 0), (out_c, 1)):
    variants.main([f'--src={src}', f'--out={out}', '--variants=masked', '--shares=80,28',
                   f'--seed={seed}'])
  tree_a, tree_b = _tree(out_a), _tree(out_b)
  assert tree_a == tree_b and 'masked-80/OpenBG-IMG_images/p1/main.png' in tree_a
  assert os.path.islink(os.path.join(out_a, 'masked-80', 'OpenBG-IMG_images', 'p1'))
  assert _tree(out_c)['masked-80/OpenBG-IMG_train.tsv'] != tree_a['masked-80/OpenBG-IMG_train.tsv']


def test_copy_fallback_when_symlinks_fail(src, tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError('symlinks not supported here')
  monkeypatch.setattr(variants.os, 'symlink', refuse)
  folder = str(tmp_path / 'v')
  counts = variants.write_variant(variants.complete_img(variants.read_layout(src)), src, folder,
                                  {'name': 'complete-img'})
  assert counts['image_folders_copied'] == 3
  path = os.path.join(folder, 'OpenBG-IMG_images', 'p2', 'main.png')
  assert os.path.isfile(path) and not os.path.islink(os.path.dirname(path))


def test_stats_row_of_splits_matches_written_folder(src, tmp_path):
  derived = variants.masked(variants.read_layout(src), 28, seed=2)
  folder = str(tmp_path / 'm28')
  variants.write_variant(derived, src, folder, {'name': 'masked-28'})
  assert variants.stats_row(derived, 'x') == variants.stats_row(folder, 'x')


@pytest.mark.parametrize('share', [0, -5, 100.5])
def test_bad_share(src, share):
  with pytest.raises(ValueError, match=r'\(0, 100\]'):
    variants.masked(variants.read_layout(src), share)


def test_cli_errors(src, tmp_path):
  out = str(tmp_path / 'out')
  with pytest.raises(ValueError, match='--shares'):
    variants.main([f'--src={src}', f'--out={out}', '--shares=80,0'])
  with pytest.raises(ValueError, match='--variants'):
    variants.main([f'--src={src}', f'--out={out}', '--variants=complete,masked'])
  os.remove(os.path.join(src, 'OpenBG-IMG_dev.tsv'))
  with pytest.raises(kg_lib.KGFormatError, match='OpenBG-IMG_dev.tsv'):
    variants.main([f'--src={src}', f'--out={out}'])
  with pytest.raises(kg_lib.KGFormatError, match='OpenBG-IMG_train.tsv'):
    variants.read_layout(str(tmp_path))                      # not the layout at all


def test_cli_refuses_non_empty_out_unless_overwrite(src, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  args = [f'--src={src}', f'--out={out}', '--variants=complete-img']
  with pytest.raises(FileExistsError, match='--overwrite'):
    variants.main(args)
  variants.main(args + ['--overwrite'])
  variants.main(args + ['--overwrite'])                      # replaces its own folder again
  assert sorted(os.listdir(out)) == ['complete-img', 'keep.txt', 'stats.md']


def test_docstring_examples():
  assert doctest.testmod(variants, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
