"""Tests of data_prep/ocr.py: the rapidocr engine on rendered text, the cache, unreadable images."""
import json

import numpy as np
from PIL import Image, ImageDraw, ImageFont
import pytest

from data_prep import ocr


def _render(text, path, size=(224, 224)):
  img = Image.new('RGB', size, (255, 255, 255))
  draw = ImageDraw.Draw(img)
  draw.text((size[0] / 2, size[1] * 0.8), text, fill=(0, 0, 0),
            font=ImageFont.load_default(size=32), anchor='mm')
  img.save(path)
  return str(path)


class CountingEngine:
  """Fake engine: returns fixed lines and counts calls (the cache must avoid them)."""
  name = 'counting'

  def __init__(self, lines=('HELLO', 'x', ' WORLD ')):
    self.lines, self.calls = list(lines), 0

  def read_lines(self, image):
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    self.calls += 1
    return self.lines


@pytest.fixture(scope='module')
def rapid():
  return ocr.make_engine('rapidocr')


def test_rapidocr_reads_rendered_text(tmp_path, rapid):
  paths = [_render(word, tmp_path / f'{word}.png') for word in ('ACME', 'ZAPACUB')]
  texts, stats = ocr.run_ocr(paths, rapid, str(tmp_path / 'cache.jsonl'), progress=False)
  assert texts == ['ACME', 'ZAPACUB']
  assert stats == {'ocr_images': 2, 'ocr_cache_hits': 0, 'ocr_unreadable': 0}


def test_rapidocr_blank_image_gives_empty_text(tmp_path, rapid):
  blank = tmp_path / 'blank.png'
  Image.new('RGB', (64, 64), (255, 255, 255)).save(blank)
  assert ocr.run_ocr([str(blank)], rapid, None, progress=False)[0] == ['']


def test_cache_makes_rerun_free_and_unreadable_is_counted(tmp_path, caplog):
  good = _render('AB', tmp_path / 'a.png')
  copy = tmp_path / 'copy.png'
  copy.write_bytes((tmp_path / 'a.png').read_bytes())             # same content, other name
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'\xff\xd8\xff not a jpeg')
  paths = [good, str(copy), str(bad), str(tmp_path / 'missing.png')]
  cache = str(tmp_path / 'cache.jsonl')
  engine = CountingEngine()
  texts, stats = ocr.run_ocr(paths, engine, cache, progress=False)
  assert texts == ['HELLO WORLD', 'HELLO WORLD', None, None]      # 'x' dropped (min_chars=2)
  assert engine.calls == 1                                          # the copy hit the cache
  assert stats == {'ocr_images': 4, 'ocr_cache_hits': 1, 'ocr_unreadable': 2}
  assert 'unreadable' in caplog.text and 'bad.jpg' in caplog.text
  records = [json.loads(line) for line in open(cache, encoding='utf-8')]
  assert [r['text'] for r in records] == ['HELLO WORLD', None]     # missing file: not cached
  rerun = CountingEngine()
  texts2, stats2 = ocr.run_ocr(paths, rerun, cache, progress=False)
  assert texts2 == texts and rerun.calls == 0 and stats2['ocr_cache_hits'] == 3
  other = CountingEngine()
  other.name = 'other-engine'                                       # another engine: no hits
  ocr.run_ocr(paths[:1], other, cache, progress=False)
  assert other.calls == 1


def test_torn_cache_line_is_ignored_and_logged(tmp_path, caplog):
  cache = tmp_path / 'cache.jsonl'
  cache.write_text('{"sha256": "ab", "engine": "e", "text": "T"}\n{"sha256": "cd", "eng')
  c = ocr.OcrCache(str(cache))
  assert len(c) == 1 and c.get('ab', 'e') == (True, 'T') and c.get('cd', 'e') == (False, None)
  assert 'malformed' in caplog.text


def test_ocr_text_joins_and_filters():
  assert ocr.ocr_text([' n ', 'ZAPACUB', '', 'CO LTD']) == 'ZAPACUB CO LTD'
  assert ocr.ocr_text(['n', 'AB'], min_chars=1) == 'n AB'
  assert ocr.ocr_text([]) == ''


def test_unknown_engine():
  with pytest.raises(ValueError, match='features.ocr_engine'):
    ocr.make_engine('tesseract')


def test_easyocr_engine_reads_rendered_text(tmp_path):
  try:
    engine = ocr.make_engine('easyocr')
  except ImportError as e:                  # optional extra; torch/torchvision needed
    pytest.skip(f'easyocr extra not usable here: {e}')
  texts, _ = ocr.run_ocr([_render('ACME', tmp_path / 'acme.png')], engine, None, progress=False)
  assert texts == ['ACME']
