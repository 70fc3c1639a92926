"""Tests of imkga_jax/run_summary.py: stage timings and the one-screen summary of the main job."""
import json
import os
import time

import pytest

from configs import default
from imkga_jax import files
from imkga_jax import run_summary

METRICS = {s: {d: {'mrr': 0.5, 'hits@1': 0.4, 'hits@3': 0.6, 'hits@10': 0.9, 'reached': 1.0,
                   'queries': 10}
               for d in ('tail', 'head', 'both')} for s in ('valid', 'test')}
ROWS = [{'split': 'test', 'direction': 'tail', 'rank': 1.0,
         'query': {'head': f'p{i}', 'relation': 'ships_from', 'answer': 'region_1'},
         'answers': [{'entity': 'region_1', 'score': -0.1, 'path': ['sold_by', 's1', 'located_in',
                                                                     'region_1']}]}
        for i in range(5)]


def _timings(workdir):
  with open(os.path.join(workdir, run_summary.TIMINGS_FILE), encoding='utf-8') as f:
    return json.load(f)


def test_timed_records_seconds_and_keeps_the_working_run_when_up_to_date(tmp_path):
  w = str(tmp_path)
  with run_summary.timed(w, 'train'):
    time.sleep(0.2)
  first = _timings(w)['train']
  assert first['seconds'] >= 0.2 and not first['up_to_date']
  for _ in range(2):                                   # twice: the kept time survives a rerun
    with run_summary.timed(w, 'train') as record:
      record['up_to_date'] = True
    again = _timings(w)['train']
    assert again['seconds'] == first['seconds'] and again['check_seconds'] < 0.2
  with pytest.raises(RuntimeError):
    with run_summary.timed(w, 'eval'):
      raise RuntimeError('boom')
  assert 'seconds' in _timings(w)['eval'] and not _timings(w)['eval'].get('running')
  assert 'train 0.2 s (earlier run; up to date now)' in run_summary.stage_times(w, {})


def test_summary_fits_one_screen_and_says_what_ran_where(tmp_path):
  w = str(tmp_path)
  config = default.get_config()
  config.data.synthetic = True
  files.write_json(os.path.join(w, 'prepared', 'stats.json'), {
      'entities': 2883, 'relations': 11, 'train': 26355, 'valid': 1593, 'test': 1594,
      'images': 1000, 'ocr_brand_exact': 0.991, 'vgg_weights': 'random', 'data_root': '/r',
      'seconds_synthetic': 1.2, 'seconds_kg': 0.1, 'seconds_features': 95.0,
      'seconds_trajectories': 30.0})
  files.write_json(os.path.join(w, 'metrics.json'), METRICS)
  with run_summary.timed(w, 'prepare'):
    pass
  with run_summary.timed(w, 'eval'):
    text = run_summary.format_run_summary(config, w, METRICS, ROWS)   # while eval runs
  lines = text.splitlines()
  assert len(lines) <= 45, len(lines)
  assert any(line.startswith('  data      synthetic (/r): 2,883 entities, 11 relations') for line in lines)
  assert 'weights random (seeded, NOT ImageNet)\n' in text
  assert 'OCR rapidocr on 1000 images, brand read exactly on 99.1%' in text
  assert 'prepare 0.0 s (synthetic 1.2 s, kg 0.1 s, features 95.0 s, trajectories 30.0 s)' in text
  assert max(len(line) for line in lines if not line.startswith('  /')) <= 100
  assert '\n            train ?\n            eval ' in text
  assert 'Filtered ranking metrics' in text and text.count(' via ') == 3     # three examples
  assert 'via  p0 -[sold_by]-> s1 -[located_in]-> region_1' in text
  assert f'  {os.path.join(w, "metrics.json")}' in text and f'--logdir={w}' in text
  config.features.vgg_weights = '/w/vgg16.weights.h5'
  files.write_json(os.path.join(w, 'prepared', 'stats.json'), {'vgg_weights': '/w/vgg16.weights.h5'})
  assert 'weights /w/vgg16.weights.h5\n            OCR rapidocr' in run_summary.format_run_summary(
      config, w, METRICS, ROWS)


def test_summary_says_where_the_valid_mrr_comes_from(tmp_path):
  w = str(tmp_path)
  config = default.get_config()
  files.write_json(os.path.join(w, 'prepared', 'stats.json'), {})
  metrics = json.loads(json.dumps(METRICS))
  assert '  answers ' not in run_summary.format_run_summary(config, w, metrics, ROWS)
  metrics['valid']['selection'] = {
      'direct_weight': 0.5, 'mrr_by_direct_weight': {'model': 0.68, '1.0': 0.069, '0.98': 0.63,
                                                     '0.5': 0.727, '0.0': 0.712}}
  text = run_summary.format_run_summary(config, w, metrics, ROWS)
  assert ('  answers   valid MRR of direct answers alone 0.069, paths alone 0.712, '
          'chosen weight 0.5 0.727\n') in text
  metrics['valid']['selection']['direct_weight'] = 'model'
  assert 'paths alone 0.712, chosen weight model 0.680' in run_summary.format_run_summary(
      config, w, metrics, ROWS)
