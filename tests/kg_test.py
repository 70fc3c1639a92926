"""Tests of imkga_jax/kg.py: readers of both layouts, every bad-input error, the prepared form."""
import logging
import os

import numpy as np
import pytest

from imkga_jax import datasets
from imkga_jax import kg as kg_lib
from imkga_jax import readers


TRAIN = [('a', 'likes', 'b'), ('b', 'likes', 'c'), ('c', 'part_of', 'a'), ('a', 'part_of', 'd')]
VALID = [('b', 'part_of', 'd')]
TEST = [('c', 'likes', 'a')]


def write(path, rows, sep='\t', newline='\n'):
  with open(path, 'w', encoding='utf-8', newline='') as f:
    for row in rows:
      f.write(sep.join(row) + newline)


def triple_folder(tmp_path, valid=VALID, test=TEST, **kw):
  write(tmp_path / 'train.txt', TRAIN, **kw)
  write(tmp_path / 'valid.txt', valid, **kw)
  write(tmp_path / 'test.txt', test, **kw)
  return str(tmp_path)


def names(kg, split):
  return [(kg.entities[h], kg.relations[r], kg.entities[t]) for h, r, t in kg.split(split)]


@pytest.mark.parametrize('sep,newline', [('\t', '\n'), (' ', '\n'), ('\t', '\r\n'), ('  ', '\r\n')])
def test_triple_folder_round_trip(tmp_path, sep, newline):
  kg = readers.load_kg(triple_folder(tmp_path, sep=sep, newline=newline))
  assert names(kg, 'train') == TRAIN and names(kg, 'valid') == VALID and names(kg, 'test') == TEST
  assert kg.num_entities == 4 and kg.num_relations == 2
  assert kg.space.num_tokens == 4 + 2 * 2 + 4
  assert kg.vocabulary[:4] == ['<pad>', '<bos>', '<eos>', '<mask>']
  assert kg.vocabulary[kg.space.relation_token(kg.relation_id('likes_inv'))] == 'likes_inv'
  assert kg.token_name(kg.space.entity_token(kg.entity_id('c'))) == 'c'


def test_openbg_layout_round_trip(tmp_path):
  write(tmp_path / 'OpenBG-IMG_train.tsv', TRAIN)
  write(tmp_path / 'OpenBG-IMG_dev.tsv', VALID)
  write(tmp_path / 'OpenBG-IMG_test.tsv', TEST)
  write(tmp_path / 'OpenBG-IMG_entity2text.tsv', [('a', 'entity A'), ('b', 'entity B')])
  write(tmp_path / 'OpenBG-IMG_relation2text.tsv', [('likes', 'likes it')])
  (tmp_path / 'OpenBG-IMG_images' / 'a').mkdir(parents=True)
  (tmp_path / 'OpenBG-IMG_images' / 'a' / '1.jpg').write_bytes(b'x')
  (tmp_path / 'OpenBG-IMG_images' / 'a' / 'notes.txt').write_bytes(b'x')
  kg = readers.load_kg(str(tmp_path))
  assert names(kg, 'train') == TRAIN and names(kg, 'valid') == VALID
  assert kg.entity_text == {'a': 'entity A', 'b': 'entity B'}
  assert kg.relation_text == {'likes': 'likes it'}
  assert list(kg.images) == ['a'] and kg.images['a'][0].endswith('1.jpg')
  out = tmp_path / 'prepared'
  kg.save(str(out))
  again = kg_lib.KnowledgeGraph.load(str(out))
  assert again.entities == kg.entities and again.relations == kg.relations
  for split in kg_lib.SPLITS:
    np.testing.assert_array_equal(again.split(split), kg.split(split))
  assert again.images == kg.images and again.entity_text == kg.entity_text


def test_short_line_names_file_and_line(tmp_path):
  root = triple_folder(tmp_path)
  with open(tmp_path / 'train.txt', 'a') as f:
    f.write('a\tlikes\n')
  with pytest.raises(kg_lib.KGFormatError, match=r'train\.txt:5: expected 3 fields'):
    readers.load_kg(root)


def test_too_many_fields(tmp_path):
  root = triple_folder(tmp_path, test=[('c', 'likes', 'a', 'extra')])
  with pytest.raises(kg_lib.KGFormatError, match=r'test\.txt:1: expected 3 fields'):
    readers.load_kg(root)


def test_empty_split(tmp_path):
  root = triple_folder(tmp_path)
  (tmp_path / 'valid.txt').write_text('\n\n')
  with pytest.raises(kg_lib.KGFormatError, match=r'valid\.txt: the split is empty'):
    readers.load_kg(root)


def test_missing_split_file(tmp_path):
  root = triple_folder(tmp_path)
  os.remove(tmp_path / 'test.txt')
  with pytest.raises(kg_lib.KGFormatError, match='no test file found'):
    readers.load_kg(root)


def test_unseen_entity_error_names_line(tmp_path):
  root = triple_folder(tmp_path, test=TEST + [('zed', 'likes', 'a')])
  with pytest.raises(kg_lib.KGFormatError, match=r"test\.txt:2: 'zed' never occurs"):
    readers.load_kg(root)


def test_unseen_relation_error(tmp_path):
  root = triple_folder(tmp_path, valid=[('a', 'hates', 'b')])
  with pytest.raises(kg_lib.KGFormatError, match=r"valid\.txt:1: 'relation hates' never occurs"):
    readers.load_kg(root)


def test_unseen_entity_skip_is_counted_and_logged(tmp_path, caplog):
  root = triple_folder(tmp_path, test=TEST + [('zed', 'likes', 'a'), ('a', 'likes', 'yan')])
  with caplog.at_level(logging.WARNING):
    kg = readers.load_kg(root, unknown='skip')
  assert names(kg, 'test') == TEST
  assert 'skipped 2 of 3 triples' in caplog.text
  assert 'zed' not in kg.entities


def test_unseen_entity_keep_extends_vocabulary(tmp_path, caplog):
  root = triple_folder(tmp_path, test=TEST + [('zed', 'likes', 'a')])
  with caplog.at_level(logging.WARNING):
    kg = readers.load_kg(root, unknown='keep')
  assert names(kg, 'test') == TEST + [('zed', 'likes', 'a')]
  assert kg.entities[-1] == 'zed' and '1 of 2 triples' in caplog.text


def test_all_skipped_split_is_an_error(tmp_path):
  root = triple_folder(tmp_path, test=[('zed', 'likes', 'a')])
  with pytest.raises(kg_lib.KGFormatError, match='no usable triple'):
    readers.load_kg(root, unknown='skip')


def test_bad_policy(tmp_path):
  with pytest.raises(ValueError, match='unknown_entities'):
    readers.load_kg(triple_folder(tmp_path), unknown='ignore')


def test_image_folder_of_unknown_entity(tmp_path):
  write(tmp_path / 'OpenBG-IMG_train.tsv', TRAIN)
  write(tmp_path / 'OpenBG-IMG_dev.tsv', VALID)
  write(tmp_path / 'OpenBG-IMG_test.tsv', TEST)
  (tmp_path / 'OpenBG-IMG_images' / 'ghost').mkdir(parents=True)
  with pytest.raises(kg_lib.KGFormatError, match="ghost.*entity 'ghost'"):
    readers.load_kg(str(tmp_path))


def test_bad_text_table_line(tmp_path):
  write(tmp_path / 'OpenBG-IMG_train.tsv', TRAIN)
  write(tmp_path / 'OpenBG-IMG_dev.tsv', VALID)
  write(tmp_path / 'OpenBG-IMG_test.tsv', TEST)
  (tmp_path / 'OpenBG-IMG_entity2text.tsv').write_text('a\tA\nno tab here\n')
  with pytest.raises(kg_lib.KGFormatError, match=r'entity2text\.tsv:2: expected `key<TAB>text`'):
    readers.load_kg(str(tmp_path))


def test_missing_openbg_split(tmp_path):
  write(tmp_path / 'OpenBG-IMG_train.tsv', TRAIN)
  write(tmp_path / 'OpenBG-IMG_test.tsv', TEST)
  with pytest.raises(kg_lib.KGFormatError, match='missing OpenBG-IMG_dev.tsv'):
    readers.load_kg(str(tmp_path))


def test_inverses_and_filter_index(tmp_path):
  kg = readers.load_kg(triple_folder(tmp_path))
  both = kg.with_inverses('train')
  assert len(both) == 2 * len(kg.train)
  h, r, t = kg.train[0]
  assert [t, r + kg.num_relations, h] in both[len(kg.train):].tolist()
  index = kg.filter_index()
  a, likes = kg.entity_id('a'), kg.relation_id('likes')
  likes_inv = kg.relation_id('likes_inv')
  assert index[(a, likes)].tolist() == [kg.entity_id('b')]
  # c likes a (test) gives a <-likes- c in the inverse direction.
  assert index[(a, likes_inv)].tolist() == [kg.entity_id('c')]
  # Brute force: every triple of every split in both directions is in the index, and nothing else.
  expected = {}
  for hh, rr, tt in kg.all_triples():
    expected.setdefault((hh, rr), set()).add(tt)
  assert {k: set(v.tolist()) for k, v in index.items()} == expected
  indptr, tails = kg.filter_csr(np.array([[a, likes], [a, likes_inv], [kg.entity_id('d'), likes]]))
  assert indptr.tolist() == [0, 1, 2, 2] and tails.tolist() == [kg.entity_id('b'), kg.entity_id('c')]


def test_umls_matches_published_statistics():
  kg = readers.load_kg(datasets.resolve('umls'))          # the copy shipped in the package
  assert (kg.num_entities, kg.num_relations) == (135, 46)
  assert (len(kg.train), len(kg.valid), len(kg.test)) == (5216, 652, 661)
