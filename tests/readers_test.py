"""Tests of imkga_jax/readers.py beyond kg_test.py: encodings, repeats, data root, files and links."""
import logging
import os

import numpy as np
import pytest

from imkga_jax import kg as kg_lib
from imkga_jax import readers

TRAIN = [('a', 'likes', 'b'), ('b', 'likes', 'c'), ('c', 'part_of', 'a'), ('a', 'part_of', 'd')]
VALID = [('b', 'part_of', 'd')]
TEST = [('c', 'likes', 'a')]


def write(path, rows, prefix=b'', newline='\n'):
  with open(path, 'wb') as f:
    f.write(prefix + ''.join('\t'.join(r) + newline for r in rows).encode('utf-8'))


def triple_folder(root, train=TRAIN, valid=VALID, test=TEST, **kw):
  os.makedirs(root, exist_ok=True)
  for name, rows in (('train.txt', train), ('valid.txt', valid), ('test.txt', test)):
    write(os.path.join(root, name), rows, **kw)
  return str(root)


def openbg_folder(root, images=('a', 'b')):
  os.makedirs(root, exist_ok=True)
  for split, rows in (('train', TRAIN), ('dev', VALID), ('test', TEST)):
    write(os.path.join(root, f'OpenBG-IMG_{split}.tsv'), rows)
  write(os.path.join(root, 'OpenBG-IMG_entity2text.tsv'), [('a', 'entity A'), ('b', 'entity B')])
  for name in images:
    os.makedirs(os.path.join(root, 'OpenBG-IMG_images', name))
    with open(os.path.join(root, 'OpenBG-IMG_images', name, '1.jpg'), 'wb') as f:
      f.write(b'jpeg bytes')
  return str(root)


def names(kg, split):
  return [(kg.entities[h], kg.relations[r], kg.entities[t]) for h, r, t in kg.split(split)]


# ------------------------------------------------------------------ encodings
def test_bom_is_stripped_from_triple_files_and_text_tables(tmp_path):
  root = triple_folder(tmp_path / 't', prefix=b'\xef\xbb\xbf')
  kg = readers.load_kg(root)
  assert names(kg, 'train') == TRAIN and kg.num_entities == 4
  assert not [e for e in kg.entities if '\ufeff' in e]
  root = openbg_folder(tmp_path / 'o')
  write(os.path.join(root, 'OpenBG-IMG_entity2text.tsv'), [('a', 'entity A'), ('b', 'entity B')],
        prefix=b'\xef\xbb\xbf')
  kg = readers.load_kg(root)
  assert kg.entity_text == {'a': 'entity A', 'b': 'entity B'}


def test_latin1_bytes_name_file_line_and_offset(tmp_path):
  root = triple_folder(tmp_path)
  with open(os.path.join(root, 'valid.txt'), 'ab') as f:
    f.write('b\tlikes\tcaf\xe9\n'.encode('latin-1'))                 # line 2
  first_line = len('b\tpart_of\td\n'.encode())
  with pytest.raises(kg_lib.KGFormatError,
                     match=rf'valid\.txt:2: not UTF-8 \(byte 0xe9 at byte offset '
                           rf'{first_line + len("b	likes	caf")} of the file\)'):
    readers.load_kg(root)


@pytest.mark.parametrize('newline', ['\r', '\r\n', '\n'])
def test_line_ends_and_line_numbers(tmp_path, newline):
  root = triple_folder(tmp_path, newline=newline)
  with open(os.path.join(root, 'train.txt'), 'ab') as f:
    f.write(f'a\tlikes{newline}'.encode())
  with pytest.raises(kg_lib.KGFormatError, match=r'train\.txt:5: expected 3 fields'):
    readers.load_kg(root)


# ------------------------------------------------------------------ repeats
def test_duplicates_and_overlaps_are_counted_and_kept_by_default(tmp_path, caplog):
  root = triple_folder(tmp_path, train=TRAIN + [TRAIN[1]], valid=VALID + [TRAIN[0], TRAIN[0]],
                       test=TEST + [TRAIN[2]])
  with caplog.at_level(logging.WARNING):
    kg = readers.load_kg(root)
  assert len(kg.train) == 5 and len(kg.valid) == 3 and len(kg.test) == 2
  stats = kg.stats()
  assert (stats['train_duplicates'], stats['valid_duplicates'], stats['valid_in_train'],
          stats['test_duplicates'], stats['test_in_train']) == (1, 1, 2, 0, 1)
  assert 'train.txt: 1 repeated triple' in caplog.text and 'data.duplicates=keep' in caplog.text


def test_duplicates_drop_and_error(tmp_path):
  root = triple_folder(tmp_path, train=TRAIN + [TRAIN[1]], valid=VALID + [TRAIN[0]],
                       test=TEST + [TEST[0]])
  kg = readers.load_kg(root, duplicates='drop')
  assert names(kg, 'train') == TRAIN and names(kg, 'valid') == VALID and names(kg, 'test') == TEST
  assert kg.stats()['duplicates_dropped'] == 3
  with pytest.raises(kg_lib.KGFormatError, match=r'train\.txt:5: this triple repeats .*train\.txt:2'):
    readers.load_kg(root, duplicates='error')
  root = triple_folder(tmp_path / 'v', valid=[TRAIN[0]])
  with pytest.raises(kg_lib.KGFormatError, match='no triple left in the valid split'):
    readers.load_kg(root, duplicates='drop')
  with pytest.raises(ValueError, match='data.duplicates'):
    readers.load_kg(root, duplicates='maybe')


# ------------------------------------------------------------------ the data root
def test_missing_root_and_root_that_is_a_file(tmp_path):
  for layout in ('auto', 'triples', 'openbg'):
    with pytest.raises(FileNotFoundError, match=r"data.root .*nowhere' does not exist"):
      readers.load_kg(str(tmp_path / 'nowhere'), layout)
  (tmp_path / 'f.txt').write_text('x')
  with pytest.raises(NotADirectoryError, match='is a file, not a folder'):
    readers.load_kg(str(tmp_path / 'f.txt'), 'triples')


def test_a_split_that_is_not_a_regular_file(tmp_path):
  root = triple_folder(tmp_path)
  os.remove(os.path.join(root, 'test.txt'))
  os.mkfifo(os.path.join(root, 'test.txt'))
  with pytest.raises(kg_lib.KGFormatError, match=r'test\.txt: the test split is not a regular file'):
    readers.load_kg(root)


# ------------------------------------------------------------------ image files and links
def test_image_names_that_are_not_regular_files_are_counted(tmp_path, caplog):
  root = openbg_folder(tmp_path)
  os.mkfifo(os.path.join(root, 'OpenBG-IMG_images', 'a', '0.jpg'))          # would block a reader
  os.symlink('/nonexistent/x.jpg', os.path.join(root, 'OpenBG-IMG_images', 'b', '0.jpg'))
  with caplog.at_level(logging.WARNING):
    kg = readers.load_kg(root)
  assert [os.path.basename(p) for p in kg.images['a']] == ['1.jpg']
  assert [os.path.basename(p) for p in kg.images['b']] == ['1.jpg']
  assert kg.stats()['images_not_regular'] == 2
  assert 'FIFO' in caplog.text and 'not regular files left out' in caplog.text


def test_symlinks_leaving_the_root_follow_the_policy(tmp_path, caplog):
  outside = tmp_path / 'secret'
  outside.mkdir()
  (outside / 'x.jpg').write_bytes(b'not yours')
  root = openbg_folder(tmp_path / 'kg')
  link = os.path.join(root, 'OpenBG-IMG_images', 'a', '2.jpg')
  os.symlink(str(outside / 'x.jpg'), link)
  os.symlink(os.path.join(root, 'OpenBG-IMG_images', 'b', '1.jpg'),        # inside: fine
             os.path.join(root, 'OpenBG-IMG_images', 'b', '2.jpg'))
  with pytest.raises(kg_lib.KGFormatError, match=r'2\.jpg: a symlink leading outside data.root'):
    readers.load_kg(root)
  with caplog.at_level(logging.WARNING):
    kg = readers.load_kg(root, outside_links='skip')
  assert link not in kg.images['a'] and len(kg.images['b']) == 2
  assert kg.stats()['images_outside_root_skipped'] == 1 and 'left out' in caplog.text
  kg = readers.load_kg(root, outside_links='follow')
  assert link in kg.images['a'] and kg.stats()['images_outside_root'] == 1
  # A split file that leaves the root is read only with 'follow'.
  os.replace(os.path.join(root, 'OpenBG-IMG_test.tsv'), str(outside / 'test.tsv'))
  os.symlink(str(outside / 'test.tsv'), os.path.join(root, 'OpenBG-IMG_test.tsv'))
  with pytest.raises(kg_lib.KGFormatError, match=r'OpenBG-IMG_test\.tsv: a symlink leading outside'):
    readers.load_kg(root, outside_links='skip')
  assert readers.load_kg(root, outside_links='follow').stats()['inputs_outside_root'] == 1


def test_input_files_lists_what_a_read_depends_on(tmp_path):
  root = openbg_folder(tmp_path)
  os.mkfifo(os.path.join(root, 'OpenBG-IMG_images', 'a', '0.jpg'))
  found = readers.input_files(root, 'auto')
  assert [os.path.basename(p) for p in found['text']] == [
      'OpenBG-IMG_train.tsv', 'OpenBG-IMG_dev.tsv', 'OpenBG-IMG_test.tsv',
      'OpenBG-IMG_entity2text.tsv']
  assert [os.path.relpath(p, root) for p in found['images']] == [
      os.path.join('OpenBG-IMG_images', 'a', '1.jpg'), os.path.join('OpenBG-IMG_images', 'b', '1.jpg')]
  found = readers.input_files(triple_folder(tmp_path / 't'), 'triples')
  assert [os.path.basename(p) for p in found['text']] == ['train.txt', 'valid.txt', 'test.txt']
  assert found['images'] == []


def test_prepared_form_keeps_the_read(tmp_path):
  kg = readers.load_kg(triple_folder(tmp_path / 't', train=TRAIN + [TRAIN[0]]))
  kg.save(str(tmp_path / 'p'))
  again = kg_lib.KnowledgeGraph.load(str(tmp_path / 'p'))
  np.testing.assert_array_equal(again.train, kg.train)
  assert sorted(os.listdir(tmp_path / 'p')) == ['triples.npz', 'vocab.json']
