"""Tests of `--mode=predict`'s outputs: the readable table, `--format=json` and `--explain_png`
(imkga_jax/explain.py, imkga_jax/explain_png.py, evaluate.run_prediction) on a stub model."""
import dataclasses
import json
import os

import numpy as np
from PIL import Image, ImageDraw
import pytest

from imkga_jax import evaluate
from imkga_jax import evaluator as evaluator_lib
from imkga_jax import explain
from imkga_jax import explain_png
from tests import evaluate_test

ROWS = [dict(rank=1, entity='region_3', score=-0.21, hops=2, support=0.93, known=True,
             path=['sold_by', 'shop_7', 'located_in', 'region_3']),
        dict(rank=2, entity='region_11', score=-1.5, hops=0, support=0.0, known=False,
             path=['region_11']),
        dict(rank=3, entity='region_5', score=-2.0, hops=3, support=0.5, known=False,
             path=['sold_by', 'shop_7', 'bought_together', 'product_9', 'ships_from', 'region_5'])]


def _image(path, colour=(200, 30, 30)):
  img = Image.new('RGB', (64, 64), (255, 255, 255))
  ImageDraw.Draw(img).rectangle((8, 8, 56, 40), fill=colour)
  img.save(path)
  return str(path)


def test_table_lists_every_answer_with_its_path_read_from_the_head():
  text = explain.format_predictions('product_1|ships_from', ROWS)
  lines = text.splitlines()
  assert lines[0] == 'query (product_1, ships_from, ?): 3 answers, best first'
  assert lines[1].split() == ['rank', 'answer', 'score', 'support', 'known', 'path']
  assert lines[3].split()[:5] == ['1', 'region_3', '-0.2100', '0.93', 'yes']
  assert lines[3].endswith('product_1 -[sold_by]-> shop_7 -[located_in]-> region_3')
  assert lines[4].split()[:4] == ['2', 'region_11', '-1.5000', '-']     # direct: no support
  assert 'product_1 => region_11 (direct, no path)' in lines[4]
  assert 'support:' in text and 'known:' in text


def test_layout_puts_answers_in_the_last_column_and_shares_nodes():
  pos, edges, columns = explain_png._layout(ROWS)
  assert columns == 3
  assert {name for (c, name) in pos if c == columns} == {'region_3', 'region_11', 'region_5'}
  assert (1, 'shop_7') in pos and sum(1 for (c, n) in pos if n == 'shop_7') == 1   # shared
  assert [(a[1], b[1], label, direct) for a, b, label, direct in edges][:3] == [
      ('@head', 'shop_7', 'sold_by', False), ('shop_7', 'region_3', 'located_in', False),
      ('@head', 'region_11', '', True)]


def test_png_shows_the_image_and_has_the_returned_size(tmp_path):
  image = _image(tmp_path / 'p.png')
  out = str(tmp_path / 'q.png')
  size = explain_png.draw(out, 'product_1', 'ships_from', ROWS, [image], 'ACME')
  with Image.open(out) as png:
    assert png.format == 'PNG' and png.size == size == (1400, 510)
    pixels = np.asarray(png.convert('RGB'))
  # The head's red image is drawn in the left quarter; the answers' boxes (green/red) on the right.
  left, right = pixels[:, :350], pixels[:, 350:]
  assert ((left[..., 0] > 150) & (left[..., 1] < 80) & (left[..., 2] < 80)).sum() > 2000
  assert ((right[..., 1] > 100) & (right[..., 0] < 80)).sum() > 100                  # green box
  # Without an image: still a picture, saying so.
  size2 = explain_png.draw(str(tmp_path / 'none.png'), 'x', 'r', ROWS[:1], [], None)
  with Image.open(tmp_path / 'none.png') as png:
    assert png.size == size2 == (1400, 400)


def test_run_prediction_json_png_and_table(tmp_path, monkeypatch, capsys):
  kg = evaluate_test.tiny_kg()
  head = kg.entities[int(kg.train[0, 0])]
  kg = dataclasses.replace(kg, images={head: [_image(tmp_path / 'head.png', (30, 30, 200))]})
  evaluator, _ = evaluate_test.stub_evaluator(kg)
  monkeypatch.setattr(evaluator_lib.Evaluator, 'restore', classmethod(lambda cls, c, w: evaluator))
  os.makedirs(tmp_path / 'prepared')
  texts = np.asarray([''] * kg.num_entities, dtype=object)
  texts[kg.entity_id(head)] = 'ZAPACUB'
  np.savez(tmp_path / 'prepared' / 'features.npz', ocr_text=texts.astype(str))
  assert explain_png.ocr_text_of(str(tmp_path / 'prepared'), kg, head) == 'ZAPACUB'
  query = f'{head}|{kg.relation_name(int(kg.train[0, 1]))}'
  png = str(tmp_path / 'out' / 'q.png')
  rows = evaluate.run_prediction(evaluator.config, str(tmp_path), query, 'json', png)
  printed = json.loads(capsys.readouterr().out)
  assert printed['query'] == dict(zip(('head', 'relation'), query.split('|')))
  assert printed['answers'] == json.loads(json.dumps(rows)) and len(rows) == 3
  assert set(rows[0]) == {'rank', 'entity', 'score', 'path', 'hops', 'support', 'known'}
  with Image.open(png) as image:
    assert image.size == (1400, 510)
  evaluate.run_prediction(evaluator.config, str(tmp_path), query)
  table = capsys.readouterr().out
  assert all(r['entity'] in table for r in rows) and table.startswith(f'query ({head}, ')
  with pytest.raises(ValueError, match="--format='xml'"):
    evaluate.run_prediction(evaluator.config, str(tmp_path), query, 'xml')
