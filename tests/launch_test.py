"""End to end through launch.py: prepare -> train -> eval, predict, and a rerun that skips every stage."""
import json
import os
import subprocess
import sys

from PIL import Image

from tests import train_test

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
TINY = ['--config.model.emb_dim=32', '--config.model.num_layers=1', '--config.model.num_heads=2',
        '--config.model.mlp_dim=64', '--config.train.batch_size=16', '--config.train.num_steps=6',
        '--config.train.checkpoint_every=3', '--config.train.log_every=3',
        '--config.train.shuffle_buffer=64', '--config.optim.warmup_steps=2',
        '--config.trajectories.num_shards=2', '--config.decode.beam_size=8',
        '--config.decode.batch_size=8', '--config.decode.max_queries=6']


def launch(workdir, raw, *extra):
  cmd = [sys.executable, 'launch.py', '--config=configs/structure.py', f'--config.data.root={raw}',
         f'--workdir={workdir}', *TINY, *extra]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout, proc.stderr


def test_main_job_predict_and_rerun(tmp_path):
  raw = train_test.tiny_kg_folder(str(tmp_path / 'raw'))
  workdir = str(tmp_path / 'work')
  out, _ = launch(workdir, raw)
  assert 'Filtered ranking metrics' in out and 'Example answers' in out and ' via ' in out
  assert '  answers   valid MRR of direct answers alone ' in out  # chosen on valid: its parts
  with open(os.path.join(workdir, 'metrics.json')) as f:
    metrics = json.load(f)
  for split in ('valid', 'test'):
    for direction in ('tail', 'head', 'both'):
      assert set(metrics[split][direction]) >= {'mrr', 'hits@1', 'hits@3', 'hits@10', 'reached'}
  with open(os.path.join(workdir, 'prepared', 'stats.json')) as f:
    stats = json.load(f)
  assert {'entities', 'relations', 'train', 'valid', 'test'} <= set(stats)
  with open(os.path.join(workdir, 'explanations.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert rows and all(a['path'][-1] == a['entity'] for r in rows for a in r['answers'])

  assert 'Run summary of' in out and '  time      prepare ' in out and 'Files:' in out
  with open(os.path.join(workdir, 'timings.json')) as f:
    assert set(json.load(f)) == {'prepare', 'train', 'eval'}

  out, _ = launch(workdir, raw, '--mode=predict', '--query=p0|lives_in')
  assert 'p0' in out and 'lives_in' in out
  png = os.path.join(str(tmp_path), 'p0.png')
  out, _ = launch(workdir, raw, '--mode=predict', '--query=p0|lives_in', '--format=json',
                  f'--explain_png={png}')
  answers = json.loads(out)['answers']
  assert answers and all(a['path'][-1] == a['entity'] for a in answers)
  with Image.open(png) as image:
    assert image.format == 'PNG' and image.size[0] == 1400

  # A rerun finds every stage done: nothing is prepared, trained or evaluated again.
  mtime = os.path.getmtime(os.path.join(workdir, 'metrics.json'))
  out, err = launch(workdir, raw)
  assert 'up to date' in err and 'Filtered ranking metrics' in out
  assert os.path.getmtime(os.path.join(workdir, 'metrics.json')) == mtime
