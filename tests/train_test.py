"""Training loop: smoke run, checkpoints + resume after SIGKILL, 8 devices vs 1, two processes."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from configs import default
from data_prep import prepare
from imkga_jax import checkpoints
from imkga_jax import config_check
from imkga_jax import files
from imkga_jax import kg as kg_lib
from imkga_jax import train
from tests import files_test

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def tiny_kg_folder(path):
  """A small KG with 2-hop compositions so rules and paths exist."""
  rng = np.random.default_rng(0)
  rows = []
  people = [f'p{i}' for i in range(24)]
  cities = [f'c{i}' for i in range(6)]
  countries = [f'k{i}' for i in range(2)]
  for i, c in enumerate(cities):
    rows.append((c, 'in_country', countries[i % 2]))
  for p in people:
    c = cities[rng.integers(len(cities))]
    rows.append((p, 'lives_in', c))
    rows.append((p, 'citizen_of', countries[cities.index(c) % 2]))
    rows.append((p, 'knows', people[rng.integers(len(people))]))
  rng.shuffle(rows)
  os.makedirs(path, exist_ok=True)
  splits = {'train': rows[:-8], 'valid': rows[-8:-4], 'test': rows[-4:]}
  # Keep valid/test entities inside train.
  train_names = {x for r in splits['train'] for x in (r[0], r[2])} | {r[1] for r in splits['train']}
  for split, part in splits.items():
    if split != 'train':
      part = [r for r in part if {r[0], r[1], r[2]} <= train_names] or splits['train'][:2]
    with open(os.path.join(path, f'{split}.txt'), 'w') as f:
      f.writelines('\t'.join(r) + '\n' for r in part)
  return path


def tiny_config(raw, variant='rl'):
  config = default.get_config()
  config.data.root = raw
  config.data.layout = 'triples'
  config.features.enabled = False
  config.model.variant = variant
  config.model.emb_dim = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.mlp_dim = 64
  config.rules.paths_per_triple = 2
  config.trajectories.num_shards = 2
  config.train.batch_size = 16
  config.train.num_steps = 6
  config.train.log_every = 3
  config.train.checkpoint_every = 3
  config.train.shuffle_buffer = 64
  config.optim.warmup_steps = 2
  config.train.direct_batch_size = 8
  config.mesh.shape = (-1, 1)
  return config


@pytest.fixture(scope='module')
def prepared_workdir(tmp_path_factory):
  base = tmp_path_factory.mktemp('train')
  raw = tiny_kg_folder(str(base / 'raw'))
  workdir = str(base / 'work')
  prepare.prepare(tiny_config(raw), workdir)
  return raw, workdir


def fresh_workdir(prepared_workdir, tmp_path, name='w'):
  _, workdir = prepared_workdir
  target = tmp_path / name
  shutil.copytree(os.path.join(workdir, 'prepared'), target / 'prepared')
  return str(target)


def write_fake_features(workdir, config):
  kg = kg_lib.KnowledgeGraph.load(os.path.join(workdir, 'prepared'))
  rng = np.random.default_rng(1)
  e = kg.num_entities
  present = rng.random(e) < 0.7
  np.savez(os.path.join(workdir, 'prepared', 'features.npz'),
           image_vector=rng.normal(size=(e, 16)).astype(np.float32), image_present=present,
           ocr_text=np.array(['x'] * e), ocr_vector=rng.normal(size=(e, 8)).astype(np.float32),
           ocr_present=present,
           h_fig=rng.random((e, config.features.fig_dim)).astype(np.float32),
           h_ocr=rng.random((e, config.features.ocr_dim)).astype(np.float32))


def test_train_writes_checkpoints_and_events(prepared_workdir, tmp_path):
  raw, _ = prepared_workdir
  workdir = fresh_workdir(prepared_workdir, tmp_path)
  config = tiny_config(raw, variant='mkg_rl')
  write_fake_features(workdir, config)
  metrics = train.train_and_evaluate(config, workdir)
  assert np.isfinite(metrics['loss'])
  for key in ('loss_fig', 'loss_ocr', 'loss_concat', 'modulation_coeff_fig', 'modulation_coeff_ocr',
              'learning_rate', 'trajectories_per_second'):
    assert key in metrics, key
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  # Coefficients: exactly one modality is damped unless the losses are equal.
  coeffs = sorted([metrics['modulation_coeff_fig'], metrics['modulation_coeff_ocr']])
  assert coeffs[1] == 1.0 and 0.0 <= coeffs[0] <= 1.0
  # A second call resumes at the end and does nothing more.
  again = train.train_and_evaluate(config, workdir)
  assert again == {}


def test_resume_refuses_a_different_model(prepared_workdir, tmp_path):
  raw, _ = prepared_workdir
  workdir = fresh_workdir(prepared_workdir, tmp_path)
  config = tiny_config(raw)
  config.train.num_steps = 3
  train.train_and_evaluate(config, workdir)
  config.model.emb_dim = 64
  with pytest.raises(ValueError, match=r"different config values \['model.emb_dim'\]"):
    train.train_and_evaluate(config, workdir)


def test_resume_accepts_keys_added_later_at_their_default(tmp_path):
  """A saved train_config.json that predates a key: unchanged if the key is at its default."""
  from configs import default
  workdir = str(tmp_path)
  # The saved config only binds once a checkpoint exists (a stand-in step folder here).
  os.makedirs(os.path.join(workdir, 'checkpoints', '1'))
  config = default.get_config()
  checkpoints.check_resume_config(config, workdir)  # writes train_config.json
  path = os.path.join(workdir, 'train_config.json')
  with open(path) as f:
    saved = json.load(f)
  del saved['trajectories']['negative_share']  # as written before the key existed
  with open(path, 'w') as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match='trajectories.negative_share'):
    checkpoints.check_resume_config(config, workdir)  # no defaults given: a difference
  config.trajectories.negative_share = 0.5
  with pytest.raises(ValueError, match='trajectories.negative_share'):
    checkpoints.check_resume_config(config, workdir, default.get_config())  # not the default
  config.trajectories.negative_share = default.get_config().trajectories.negative_share
  checkpoints.check_resume_config(config, workdir, default.get_config())
  with open(path) as f:  # key recorded
    assert json.load(f)['trajectories']['negative_share'] == config.trajectories.negative_share
  config.model.emb_dim += 1
  with pytest.raises(ValueError, match=r"\['model.emb_dim'\]"):
    checkpoints.check_resume_config(config, workdir, default.get_config())
  config.model.emb_dim -= 1
  # A key whose default is not what the code did before it existed: the old behaviour binds.
  with open(path) as f:
    saved = json.load(f)
  del saved['loss']['typed_head']  # a run made with the whole-vocabulary head
  with open(path, 'w') as f:
    json.dump(saved, f)
  config.loss.typed_head = True
  with pytest.raises(ValueError, match=r"\['loss.typed_head'\]"):
    checkpoints.check_resume_config(config, workdir, default.get_config())
  config.loss.typed_head = False
  checkpoints.check_resume_config(config, workdir, default.get_config())


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(prepared_workdir, tmp_path):
  raw, _ = prepared_workdir
  workdir = fresh_workdir(prepared_workdir, tmp_path)
  config = tiny_config(raw)
  config.train.num_steps = 3
  train.train_and_evaluate(config, workdir)
  config.train.num_steps = 6
  config.optim.learning_rate = float('nan')
  # The learning rate is in the checkpoint fingerprint; bypass it for this test only.
  os.remove(os.path.join(workdir, 'train_config.json'))
  with pytest.raises(train.NonFiniteLossError, match=r'at step 5;.*last good checkpoint is step 3'):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3']


def test_a_failed_run_does_not_block_its_fix(prepared_workdir, tmp_path):
  """A run that fails before its first checkpoint leaves nothing that refuses the corrected one."""
  raw, _ = prepared_workdir
  workdir = fresh_workdir(prepared_workdir, tmp_path)
  config = tiny_config(raw)
  config.model.variant = 'foo'
  with pytest.raises(config_check.ConfigError, match="model.variant = 'foo': must be one of"):
    train.train_and_evaluate(config, workdir)
  config.model.variant = 'rl'
  config.train.num_steps = 3
  config.optim.learning_rate = float('nan')          # fails at step 2 (warm-up from 0), no checkpoint
  with pytest.raises(train.NonFiniteLossError, match='at step 2; .*No checkpoint was written'):
    train.train_and_evaluate(config, workdir)
  config.optim.learning_rate = 1e-3
  assert np.isfinite(train.train_and_evaluate(config, workdir)['loss'])
  with open(os.path.join(workdir, 'train_config.json')) as f:
    assert json.load(f)['optim']['learning_rate'] == 1e-3


def test_feature_variant_without_features_npz_names_the_file(prepared_workdir, tmp_path):
  raw, _ = prepared_workdir
  workdir = fresh_workdir(prepared_workdir, tmp_path)
  with pytest.raises(FileNotFoundError,
                     match=r"features\.npz is missing, and model.variant='mkg_rl' reads image and "
                           r'OCR features: run .*features.enabled=True'):
    train.train_and_evaluate(tiny_config(raw, variant='mkg_rl'), workdir)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


def test_second_training_on_a_workdir_stops_naming_the_holder(prepared_workdir, tmp_path):
  raw, _ = prepared_workdir
  workdir = fresh_workdir(prepared_workdir, tmp_path)
  holder = subprocess.Popen([sys.executable, '-c', files_test.HOLD.format(root=ROOT, workdir=workdir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'LOCKED'
    with pytest.raises(files.WorkdirLockedError, match=f'in use by process {holder.pid}'):
      train.train_and_evaluate(tiny_config(raw), workdir)
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))
  (tmp_path / 'afile').write_text('x')
  with pytest.raises(NotADirectoryError, match='is a file, not a folder'):
    train.train_and_evaluate(tiny_config(raw), str(tmp_path / 'afile'))


def final_params(workdir, config):
  kg = kg_lib.KnowledgeGraph.load(os.path.join(workdir, 'prepared'))
  _, params, step = checkpoints.restore_params(config, workdir, kg)
  return step, jax.tree.leaves(jax.device_get(params))


RUN_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests import train_test
    from imkga_jax import train
    config = train_test.tiny_config({raw!r})
    config.train.num_steps = {steps}
    config.train.checkpoint_every = {every}
    config.train.log_every = 1000
    train.train_and_evaluate(config, {workdir!r})
""")


def _run_script(raw, workdir, steps, every):
  code = RUN_SCRIPT.format(root=ROOT, raw=raw, workdir=workdir, steps=steps, every=every)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(prepared_workdir, tmp_path):
  raw, _ = prepared_workdir
  steps, every = 400, 20
  straight = fresh_workdir(prepared_workdir, tmp_path, 'straight')
  killed = fresh_workdir(prepared_workdir, tmp_path, 'killed')
  proc = _run_script(raw, straight, steps, every)
  assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]

  proc = _run_script(raw, killed, steps, every)
  ckpt = os.path.join(killed, 'checkpoints')
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt) and any(d.isdigit() and int(d) >= 2 * every for d in os.listdir(ckpt)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'training finished before it could be killed'
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  interrupted_at = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
  assert interrupted_at < steps
  proc = _run_script(raw, killed, steps, every)
  assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]

  config = tiny_config(raw)
  step_a, a = final_params(straight, config)
  step_b, b = final_params(killed, config)
  assert step_a == step_b == steps
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_eight_devices_match_one_device(prepared_workdir, tmp_path):
  """Mesh (4, 2) over 8 fake CPU devices gives the same losses over 20 steps as 1 device."""
  assert jax.device_count() == 8
  raw, _ = prepared_workdir
  losses = {}
  for name, shape, devices in (('one', (1, 1), jax.devices()[:1]), ('eight', (4, 2), None)):
    workdir = fresh_workdir(prepared_workdir, tmp_path, name)
    config = tiny_config(raw, variant='mkg_rl')
    write_fake_features(workdir, config)
    config.mesh.shape = shape
    config.train.num_steps = 20
    config.train.log_every = 1
    config.optim.noise_scale = 0.0  # noise is seeded identically; keep the comparison about sharding
    history = []
    train.train_and_evaluate(config, workdir, devices=devices,
                             on_metrics=lambda step, m: history.append(m['loss']))
    losses[name] = np.array(history)
  assert len(losses['one']) == 20
  np.testing.assert_allclose(losses['eight'], losses['one'], rtol=2e-5, atol=2e-5)


TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    sys.path.insert(0, {root!r})
    from tests import train_test
    from imkga_jax import train
    config = train_test.tiny_config({raw!r})
    config.mesh.num_processes = 2
    config.mesh.coordinator_address = {address!r}
    config.mesh.process_id = int(sys.argv[1])
    config.train.num_steps = 5
    config.train.log_every = 1
    history = []
    train.train_and_evaluate(config, {workdir!r},
                             on_metrics=lambda step, m: history.append(m['loss']))
    print('LOSSES', json.dumps(history), flush=True)
""")


@pytest.mark.slow
def test_two_processes_train_and_agree(prepared_workdir, tmp_path):
  raw, _ = prepared_workdir
  workdir = fresh_workdir(prepared_workdir, tmp_path, 'multi')
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  code = TWO_PROCESS_SCRIPT.format(root=ROOT, raw=raw, workdir=workdir,
                                   address=f'127.0.0.1:{port}')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen([sys.executable, '-c', code, str(i)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
  outputs = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()[-3000:]
    line = [l for l in out.decode().splitlines() if l.startswith('LOSSES ')][0]
    outputs.append(json.loads(line[len('LOSSES '):]))
  assert len(outputs[0]) == 5 and np.all(np.isfinite(outputs[0]))
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6)


def test_steps_per_call_runs_the_same_steps(prepared_workdir, tmp_path):
  """Six steps as six calls, as two scans of three, and as one of four and one of two: the same
  parameters (each step draws its own randomness from its step number)."""
  raw, _ = prepared_workdir
  results = []
  for k, every in ((1, 6), (3, 6), (4, 6)):
    workdir = fresh_workdir(prepared_workdir, tmp_path, f'k{k}')
    config = tiny_config(raw)
    config.train.steps_per_call, config.train.log_every = k, every
    config.train.checkpoint_every = every
    metrics = train.train_and_evaluate(config, workdir)
    assert np.isfinite(metrics['loss'])
    results.append(final_params(workdir, config))
  assert [s for s, _ in results] == [6, 6, 6]
  for other in results[1:]:
    for x, y in zip(results[0][1], other[1]):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('typed_head', [False, True])
def test_direct_stream_adds_the_path_loss_of_its_sequences(prepared_workdir, typed_head):
  """With one direct trajectory to draw from and no masks or dropout, the step's loss is the main
  batch's loss plus the path loss of `t <eos>` (2 steps) computed on its own, and the main batch's
  part is what the step gives without the stream. With the typed head that loss is the typed one
  (the grammar's length, not the 2 steps, decides what step 0 may be), and the prepared main batch
  has a finite loss under it (its paths follow the grammar)."""
  import functools  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from imkga_jax import grammar, input_pipeline, losses  # pylint: disable=g-import-not-at-top
  from imkga_jax.models import imkga  # pylint: disable=g-import-not-at-top
  raw, workdir = prepared_workdir
  prepared_dir = os.path.join(workdir, 'prepared')
  config = tiny_config(raw)
  config.loss.typed_head = typed_head
  config.train.direct_batch_size = 4
  config.masks.p_k = config.masks.p_m = config.masks.p_3 = 0.0
  config.model.dropout_rate = 0.0
  kg = kg_lib.KnowledgeGraph.load(prepared_dir)
  model = imkga.build_model(config, kg.space.num_tokens)
  tx = optax.sgd(0.0)
  params = model.init(jax.random.key(0), imkga.dummy_inputs(model.config, 2))['params']
  state = train.TrainState(step=jax.numpy.zeros([], jax.numpy.int32), params=params,
                           opt_state=tx.init(params))
  batch = next(input_pipeline.create_train_iterator(prepared_dir, config, exclude_direct=True))
  assert not np.any(batch['kind'] == 1)
  direct = input_pipeline.read_direct(prepared_dir)
  one = {k: v[3:4] for k, v in direct.items()}  # draws can only pick this one
  one['rtg'] = np.repeat(one['rtg'][:, :1], 2, axis=1)  # both rows alike: the coin does not matter
  features = {k: jax.numpy.asarray(v) for k, v in
              train.prepared.load_features(prepared_dir, kg.num_entities, 8, 3).items()}
  step = functools.partial(train.train_step, model=model, tx=tx, config=config,
                           entity_offset=kg.space.entity_offset)
  rng = jax.random.key(5)
  _, with_stream = step(state, batch, dict(features, direct=one), rng)
  _, without = step(state, batch, features, rng)
  inputs = {'head_token': np.repeat(one['head_token'], 4), 'actions': np.repeat(one['actions'], 4, 0),
            'relation_token': np.repeat(one['relation_token'], 4),
            'rtg': np.repeat(one['rtg'][:, 0], 4, 0)}
  logits = model.apply({'params': params}, inputs)  # [1, 4, 2, V]
  assert logits.shape[2] == 2
  if typed_head:
    groups = grammar.head_groups(2, kg.space)
    logits = losses.typed_token_loss(model.apply({'params': params}, inputs, heads=groups), groups,
                                     jax.numpy.asarray(inputs['actions']),
                                     config.loss.label_smoothing, kg.space, model.config.num_steps)
    assert float(logits[0, 0, 1]) == 0.0  # <eos> after a direct answer: the only move
  want, _ = losses.path_loss(logits, inputs['actions'], np.zeros(4, bool), model.branches,
                             config.loss.label_smoothing, config.loss.beta)
  assert np.isfinite(without['loss'])
  np.testing.assert_allclose(with_stream['loss_direct_stream'], want, rtol=1e-5)
  np.testing.assert_allclose(with_stream['loss'], without['loss'] + want, rtol=1e-5)
  assert 'loss_direct_stream' not in without


def test_valid_selection_keeps_the_best_parameters_and_stops(prepared_workdir, tmp_path):
  raw, _ = prepared_workdir
  workdir = fresh_workdir(prepared_workdir, tmp_path)
  config = tiny_config(raw)
  config.train.num_steps, config.train.eval_every, config.train.patience = 40, 2, 2
  config.train.checkpoint_every = 40
  config.optim.learning_rate = 0.5  # unstable on purpose: the valid MRR will not keep rising
  config.optim.clip_norm = 100.0
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'selection.json')) as f:
    selection = json.load(f)
  history = selection['history']
  assert [h['step'] for h in history] == list(range(2, 2 * len(history) + 1, 2))
  best = max(history, key=lambda h: h['valid_mrr'])
  assert selection['best_step'] == best['step'] and selection['best_mrr'] == best['valid_mrr']
  stopped = history[-1]['step']
  if stopped < 40:  # stopped early: patience evaluations without a better MRR
    assert len([h for h in history if h['step'] > best['step']]) == 2
  # Evaluation restores the selected parameters, not the last ones.
  kg = kg_lib.KnowledgeGraph.load(os.path.join(workdir, 'prepared'))
  assert checkpoints.best_step(workdir) == best['step']
  _, _, step = checkpoints.restore_params(config, workdir, kg)
  assert step == best['step'] and checkpoints.selected_step(workdir) == best['step']
  assert checkpoints.latest_step(workdir) == stopped


@pytest.mark.parametrize('num_direct,others,expect', [
    (0, 100, 'off'),          # no direct trajectory: a warning, the stream stays off
    (5, 3, 'shared'),         # too few others for a batch: the direct ones stay in the main stream
    (5, 16, 'apart'),         # enough others: the main stream reads them only
])
def test_direct_stream_falls_back_when_the_prepared_folder_cannot_feed_it(
    monkeypatch, caplog, num_direct, others, expect):
  import logging  # pylint: disable=g-import-not-at-top
  from imkga_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = default.get_config('smoke')
  config.train.batch_size = 16
  direct = {'head_token': np.arange(num_direct, dtype=np.int32),
            'relation_token': np.zeros(num_direct, np.int32),
            'actions': np.zeros((num_direct, 2), np.int32),
            'rtg': np.zeros((num_direct, 2, 2), np.float32)}
  monkeypatch.setattr(input_pipeline, 'read_direct', lambda _: direct)
  monkeypatch.setattr(input_pipeline, 'trajectory_info',
                      lambda _: input_pipeline.TrajectoryInfo(num_examples=num_direct + others,
                                                              seq_len=7))
  with caplog.at_level(logging.INFO):
    table, exclude = train.direct_stream(config, '/nowhere/prepared')
  if expect == 'off':
    assert table is None and not exclude
    assert 'holds no direct trajectory: no direct stream' in caplog.text
  else:
    assert table is direct
    assert exclude == (expect == 'apart')
    assert ('they stay in the main stream too' in caplog.text) == (expect == 'shared')
  config.train.direct_batch_size = 0  # off by config: nothing is read
  monkeypatch.setattr(input_pipeline, 'read_direct', lambda _: pytest.fail('read with size 0'))
  assert train.direct_stream(config, '/nowhere/prepared') == (None, False)
