"""Tests of imkga_jax/checkpoints.py: params alone, vocabulary binding, corrupt steps, the old layout."""
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from imkga_jax import checkpoints
from imkga_jax import kg as kg_lib
from imkga_jax import train
from tests import train_test
from tests.train_test import prepared_workdir  # pylint: disable=unused-import  (a fixture)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


@pytest.fixture(scope='module')
def trained(prepared_workdir, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """A workdir trained 6 steps with checkpoints at 3 and 6, and its config."""
  raw, _ = prepared_workdir
  workdir = train_test.fresh_workdir(prepared_workdir, tmp_path_factory.mktemp('ckpt'))
  config = train_test.tiny_config(raw)
  config.train.eval_every = 0  # no selection on valid: restoring falls back through the steps
  train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(checkpoints.directory(workdir))) == ['3', '6']
  return workdir, config


def copy_of(trained, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, config = trained
  target = str(tmp_path / 'copy')
  shutil.copytree(workdir, target)
  return target, config.copy_and_resolve_references()


def load_kg(workdir):
  return kg_lib.KnowledgeGraph.load(os.path.join(workdir, 'prepared'))


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def edit_vocabulary(workdir, edit):
  path = os.path.join(workdir, 'prepared', kg_lib.VOCAB_FILE)
  with open(path, encoding='utf-8') as f:
    vocab = json.load(f)
  edit(vocab)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(vocab, f)


RESTORE_ALONE = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, {root!r})
    import jax, numpy as np
    from configs import default
    from imkga_jax import checkpoints, kg as kg_lib
    config = default.get_config()
    for key, value in json.loads({overrides!r}).items():   # tiny_config, without importing train
      section, name = key.split('.')
      config[section][name] = value
    kg = kg_lib.KnowledgeGraph.load(os.path.join({workdir!r}, 'prepared'))
    model, params, step = checkpoints.restore_params(config, {workdir!r}, kg)
    total = float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(params)))
    print(json.dumps({{'step': step, 'train_imported': 'imkga_jax.train' in sys.modules,
                      'optimizer_built': 'imkga_jax.optim.modulation' in sys.modules,
                      'total': total}}))
''')


def test_restore_params_reads_the_parameters_alone(trained):  # pylint: disable=redefined-outer-name
  workdir, config = trained
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  defaults = default.get_config()
  overrides = {f'{s}.{k}': v for s in config for k, v in (config[s].items() if hasattr(
      config[s], 'items') else []) if not isinstance(v, (tuple, list)) and v != defaults[s][k]}
  proc = subprocess.run([sys.executable, '-c', RESTORE_ALONE.format(
      root=ROOT, overrides=json.dumps(overrides), workdir=workdir)], capture_output=True,
                        text=True, timeout=300, env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['step'] == 6 and not out['train_imported'] and not out['optimizer_built']
  _, params, _ = checkpoints.restore_params(config, workdir, load_kg(workdir))
  assert out['total'] == pytest.approx(sum(np.abs(x).sum() for x in leaves(params)), rel=1e-6)
  assert {'meta', 'opt_state', 'params'} <= set(os.listdir(
      os.path.join(checkpoints.directory(workdir), '6')))


def test_renamed_vocabulary_is_refused_by_resume_and_evaluation(trained, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, config = copy_of(trained, tmp_path)
  kg = load_kg(workdir)
  first = kg.entities[0]

  def rename(vocab):
    vocab['entities'] = [f'x_{e}' for e in vocab['entities']]
  edit_vocabulary(workdir, rename)
  want = (rf"trained on another vocabulary .* entities {kg.num_entities} \(checkpoint\) vs "
          rf"{kg.num_entities} \(prepared\), first difference #0: '{first}' \(checkpoint\) vs "
          rf"'x_{first}' \(prepared\); relations {kg.num_relations} \(checkpoint\) vs "
          rf"{kg.num_relations} \(prepared\), same names")
  with pytest.raises(checkpoints.VocabularyMismatchError, match=want):
    checkpoints.restore_params(config, workdir, load_kg(workdir))
  config.train.num_steps = 9
  with pytest.raises(checkpoints.VocabularyMismatchError, match=want):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(checkpoints.directory(workdir))) == ['3', '6']     # nothing changed


def test_other_vocabulary_size_gets_the_same_clear_message(trained, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, config = copy_of(trained, tmp_path)
  kg = load_kg(workdir)
  edit_vocabulary(workdir, lambda v: v['entities'].append('newcomer'))
  want = (rf'entities {kg.num_entities} \(checkpoint\) vs {kg.num_entities + 1} \(prepared\), '
          rf"first difference #{kg.num_entities}: \(none\) \(checkpoint\) vs 'newcomer'")
  with pytest.raises(checkpoints.VocabularyMismatchError, match=want):
    checkpoints.restore_params(config, workdir, load_kg(workdir))
  with pytest.raises(checkpoints.VocabularyMismatchError, match=want):
    train.train_and_evaluate(config, workdir)


def _damage(step_dir, how):
  for folder, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(folder, name)
      if how == 'truncate':
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
      elif how == 'garble_json' and name == '_METADATA':
        with open(path, 'w') as f:
          f.write('{"tree_metadata": ')


@pytest.mark.parametrize('how', ['truncate', 'garble_json'])
def test_corrupt_newest_step_falls_back_to_the_previous_one(trained, tmp_path, caplog, how):  # pylint: disable=redefined-outer-name
  workdir, config = copy_of(trained, tmp_path)
  kg = load_kg(workdir)
  _, good, _ = checkpoints.restore_params(config, workdir, kg, step=6)
  newest = os.path.join(checkpoints.directory(workdir), '6')
  _damage(newest, how)
  with caplog.at_level(logging.WARNING):
    _, _, step = checkpoints.restore_params(config, workdir, kg)
  assert step == 3
  assert f'checkpoint {newest} cannot be read' in caplog.text and 'using checkpoint step 3' in caplog.text
  if how == 'truncate':
    # Training moves the damaged step aside, resumes from 3 and rewrites 6: bit-identical.
    train.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(checkpoints.directory(workdir))) == ['3', '6']
    assert os.listdir(os.path.join(workdir, checkpoints.CORRUPT_DIR)) == ['6']
    _, again, step = checkpoints.restore_params(config, workdir, kg)
    assert step == 6
    for x, y in zip(leaves(good), leaves(again)):
      np.testing.assert_array_equal(x, y)


def test_no_readable_step_lists_every_path(trained, tmp_path):  # pylint: disable=redefined-outer-name
  workdir, config = copy_of(trained, tmp_path)
  for step in ('3', '6'):
    _damage(os.path.join(checkpoints.directory(workdir), step), 'garble_json')
  with pytest.raises(checkpoints.NoReadableCheckpointError) as info:
    checkpoints.restore_params(config, workdir, load_kg(workdir))
  for step in ('3', '6'):
    assert os.path.join(checkpoints.directory(workdir), step) + ': JSONDecodeError' in str(info.value)


def test_landed_layout_is_restored_for_evaluation(trained, tmp_path):  # pylint: disable=redefined-outer-name
  """A checkpoint as the landed tree wrote it: one StandardSave item holding TrainState."""
  source, config = trained
  kg = load_kg(source)
  model, params, _ = checkpoints.restore_params(config, source, kg)
  tx = train.make_optimizer(config, model.branches)
  params = jax.device_get(params)
  state = train.TrainState(step=jnp.asarray(6, jnp.int32), params=params,
                           opt_state=tx.init(params))
  workdir = str(tmp_path / 'landed')
  shutil.copytree(os.path.join(source, 'prepared'), os.path.join(workdir, 'prepared'))
  manager = ocp.CheckpointManager(os.path.abspath(checkpoints.directory(workdir)),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True))
  manager.save(6, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  assert os.listdir(os.path.join(checkpoints.directory(workdir), '6', 'default'))
  _, restored, step = checkpoints.restore_params(config, workdir, kg)
  assert step == 6
  for x, y in zip(leaves(params), leaves(restored)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(checkpoints.CheckpointMismatchError, match='training cannot resume from it'):
    train.train_and_evaluate(config, workdir)
  # A landed checkpoint of another vocabulary size names the parameter, not an orbax shape error.
  edit_vocabulary(workdir, lambda v: v['entities'].append('newcomer'))
  with pytest.raises(checkpoints.CheckpointMismatchError, match=r'parameter .* has shape'):
    checkpoints.restore_params(config, workdir, load_kg(workdir))
