"""Tests of data_prep/images.py: regular files only, the pixel limit before decoding, first readable."""
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest

from data_prep import images

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def png(path, size=(16, 16), colour=(200, 10, 10)):
  Image.new('RGB', size, colour).save(path)
  return str(path)


def test_a_fifo_named_jpg_does_not_hang_vgg_or_ocr(tmp_path):
  """The landed readers opened the FIFO and waited for a writer forever: run with a timeout."""
  fifo = str(tmp_path / 'x.jpg')
  os.mkfifo(fifo)
  good = png(tmp_path / 'y.png')
  code = textwrap.dedent(f'''
      import sys; sys.path.insert(0, {ROOT!r})
      from data_prep import ocr, vgg16
      print('VGG', vgg16.load_image({fifo!r}, 8) is None)
      class Engine:
        name = 'stub'
        def read_lines(self, image):
          return ['HELLO']
      report = {{}}
      texts, stats = ocr.run_ocr([{fifo!r}, [{fifo!r}, {good!r}]], Engine(), None, progress=False,
                                 report=report)
      print('OCR', texts, report['chosen'].tolist(), report['files_unreadable'])
  ''')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'VGG True' in proc.stdout
  assert "OCR [None, 'HELLO'] [-1, 1] 2" in proc.stdout
  assert 'not a regular file (FIFO)' in proc.stderr


def test_over_limit_is_refused_on_the_header_before_decoding(tmp_path, monkeypatch):
  path = png(tmp_path / 'big.png', size=(100, 50))
  data = open(path, 'rb').read()

  def no_decoding(*args, **kwargs):
    raise AssertionError('pixels were decoded')
  monkeypatch.setattr(Image.Image, 'load', no_decoding)
  with pytest.raises(images.UnreadableImage, match=r'big\.png: 100x50 = 5,000 pixels, more than '
                                                   r'features.max_image_pixels=4,999') as info:
    images.decode(data, path, max_pixels=4999)
  assert info.value.over_limit
  assert images.decode_header(data, path, max_pixels=5000) == (100, 50)


def test_pillow_bomb_limit_follows_the_config_key(tmp_path):
  saved = Image.MAX_IMAGE_PIXELS
  try:
    images.set_pixel_limit(1000)
    assert Image.MAX_IMAGE_PIXELS == 1000
    path = png(tmp_path / 'huge.png', size=(100, 100))                  # > 2x the limit
    with pytest.raises(images.UnreadableImage) as info:
      images.load(path, max_pixels=10 ** 9)                           # Pillow's own check fires
    assert info.value.over_limit and 'huge.png' in str(info.value)
  finally:
    Image.MAX_IMAGE_PIXELS = saved


def test_first_readable_tries_every_image_in_order(tmp_path):
  bad = tmp_path / 'a.jpg'
  bad.write_bytes(b'\xff\xd8\xff truncated')
  big = png(tmp_path / 'b.png', size=(80, 80))
  good = png(tmp_path / 'c.png', size=(8, 8), colour=(1, 2, 3))
  index, rgb, failures = images.first_readable([str(bad), big, good], max_pixels=1000, size=4)
  assert index == 2 and rgb.shape == (4, 4, 3) and rgb[0, 0].tolist() == [1, 2, 3]
  assert [os.path.basename(e.path) for e in failures] == ['a.jpg', 'b.png']
  assert [e.over_limit for e in failures] == [False, True]
  index, rgb, failures = images.first_readable([str(bad), str(tmp_path / 'missing.png')])
  assert index == -1 and rgb is None and 'cannot be read' in str(failures[1])


def test_decode_gives_rgb_uint8(tmp_path):
  buf = io.BytesIO()
  Image.new('L', (5, 3), 7).save(buf, format='PNG')
  rgb = images.decode(buf.getvalue(), 'grey.png')
  assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8 and (rgb == 7).all()
