"""Tests of data_prep/vgg16.py: Keras parity, weight files (.weights.h5, .h5, .pth, .safetensors)."""
import collections
import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import types
import zipfile

os.environ.setdefault('KERAS_BACKEND', 'jax')   # before anything imports keras

import jax
import numpy as np
from PIL import Image
import pytest

from data_prep import vgg16
from data_prep import vgg16_weights

SMALL = dict(widths=(4, 8, 8, 16, 16), dense_width=32, num_classes=10)
SIZE = 64                                    # block-5 map 2x2: exercises the fc1 flatten order
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def small_params():
  return vgg16.init_params(0, vgg16.VGG16(**SMALL), SIZE)


def _images(n, size=SIZE, seed=0):
  return np.random.RandomState(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


def _keras():
  import keras  # pylint: disable=g-import-not-at-top
  assert keras.backend.backend() == 'jax', 'keras was imported before KERAS_BACKEND=jax was set'
  return keras


def _small_keras_vgg(keras):
  """The VGG16 graph of keras.applications at SMALL widths (same layer kinds, names, order)."""
  inputs = keras.Input((SIZE, SIZE, 3))
  x = inputs
  for block, (width, num) in enumerate(zip(SMALL['widths'], vgg16.CONV_BLOCKS), 1):
    for i in range(1, num + 1):
      x = keras.layers.Conv2D(width, 3, padding='same', activation='relu',
                              name=f'block{block}_conv{i}')(x)
    x = keras.layers.MaxPooling2D(2, strides=2, name=f'block{block}_pool')(x)
  x = keras.layers.Flatten(name='flatten')(x)
  x = keras.layers.Dense(SMALL['dense_width'], activation='relu', name='fc1')(x)
  x = keras.layers.Dense(SMALL['dense_width'], activation='relu', name='fc2')(x)
  x = keras.layers.Dense(SMALL['num_classes'], name='predictions')(x)   # logits
  return keras.Model(inputs, x)


def test_small_keras_weights_files_match_keras(tmp_path):
  keras = _keras()
  from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=g-import-not-at-top
  import h5py  # pylint: disable=g-import-not-at-top
  model = _small_keras_vgg(keras)
  x = _images(3)
  want = np.asarray(model(keras.applications.vgg16.preprocess_input(x.copy())))
  model.save_weights(tmp_path / 'small.weights.h5')
  with h5py.File(tmp_path / 'small.weights.h5', 'r') as f:   # Keras 3 names, 13 of them: conv2d_12
    assert 'conv2d_12' in f['layers'] and 'dense_2' in f['layers']
  with h5py.File(tmp_path / 'legacy.h5', 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  params, pre = vgg16_weights.load_weights(str(tmp_path / 'small.weights.h5'))
  legacy, legacy_pre = vgg16_weights.load_weights(str(tmp_path / 'legacy.h5'))
  assert pre == legacy_pre == 'caffe'
  _assert_same(params, legacy)
  got = vgg16.model_for(params, pre).apply({'params': params}, x)['predictions']
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


_PARITY_SCRIPT = textwrap.dedent('''
    import json, os, sys
    os.environ['KERAS_BACKEND'] = 'jax'
    import jax, keras, numpy as np
    from data_prep import vgg16, vgg16_weights
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, include_top=True)
    path = os.path.join(sys.argv[1], 'vgg16.weights.h5')
    model.save_weights(path)
    model.get_layer('predictions').activation = keras.activations.linear   # compare logits
    probe = keras.Model(model.input, [model.get_layer('block5_pool').output,
                                      model.get_layer('fc2').output, model.output])
    x = np.random.RandomState(1).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    outs = probe(keras.applications.vgg16.preprocess_input(x.copy()))
    pool5, fc2, logits = [np.asarray(a) for a in outs]
    del model, probe
    params, pre = vgg16_weights.load_weights(path)
    out = vgg16.model_for(params, pre).apply({'params': params}, x)
    print(json.dumps({'gap': float(np.abs(pool5.mean((1, 2)) - out['gap']).max()),
                      'fc2': float(np.abs(fc2 - out['fc2']).max()),
                      'predictions': float(np.abs(logits - out['predictions']).max()),
                      'logit_scale': float(np.abs(logits).max()), 'preprocess': pre}))
''')


def test_keras_vgg16_parity_full_size(tmp_path):
  """keras.applications.VGG16(weights=None) → .weights.h5 → ours: same outputs (≤ 1e-4).

  Runs in a subprocess: Keras needs KERAS_BACKEND before import and ~2-5 GB while building.
  """
  env = dict(os.environ, KERAS_BACKEND='jax', PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, '-c', _PARITY_SCRIPT, str(tmp_path)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  diff = json.loads(proc.stdout.strip().splitlines()[-1])
  assert diff['preprocess'] == 'caffe'
  assert diff['logit_scale'] > 1e-3                       # the comparison is not of zeros
  for key in ('gap', 'fc2', 'predictions'):
    assert diff[key] <= 1e-4, diff


# ------------------------------------------------------------------ torch .pth without torch
@contextlib.contextmanager
def _fake_torch():
  """Just enough of `torch` for pickle to name torch._utils._rebuild_tensor_v2/FloatStorage."""
  torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')

  class FloatStorage:
    pass

  def _rebuild_tensor_v2(*args):
    del args
  FloatStorage.__module__, _rebuild_tensor_v2.__module__ = 'torch', 'torch._utils'
  FloatStorage.__qualname__, _rebuild_tensor_v2.__qualname__ = 'FloatStorage', '_rebuild_tensor_v2'
  torch.FloatStorage, utils._rebuild_tensor_v2, torch._utils = FloatStorage, _rebuild_tensor_v2, utils
  saved = {k: sys.modules.get(k) for k in ('torch', 'torch._utils')}
  sys.modules.update({'torch': torch, 'torch._utils': utils})
  try:
    yield torch
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k)
      else:
        sys.modules[k] = v


def write_torch_zip(state, path, transpose_keys=()):
  """Writes `state` the way torch.save does (zip; data.pkl with persistent storages; data/<key>).

  Tensors named in `transpose_keys` are stored as a transposed (non-contiguous) view of their
  storage and at a non-zero offset, as torch does for views.
  """
  class Storage:
    def __init__(self, key, data):
      self.key, self.data = key, data

  class Tensor:
    def __init__(self, storage, offset, size, stride):
      self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

  with _fake_torch() as torch:
    class Pickler(pickle.Pickler):
      def persistent_id(self, obj):
        if isinstance(obj, Storage):
          return ('storage', torch.FloatStorage, obj.key, 'cpu', obj.data.size)
        return None

      def reducer_override(self, obj):
        if isinstance(obj, Tensor):
          return torch._utils._rebuild_tensor_v2, obj.args
        return NotImplemented

    tensors, blobs = collections.OrderedDict(), {}
    for i, (name, value) in enumerate(state.items()):
      value = np.asarray(value, np.float32)
      if name in transpose_keys and value.ndim == 2:
        data = np.concatenate([np.full(5, -7, np.float32), value.T.ravel()])   # [5 + in*out]
        tensors[name] = Tensor(Storage(str(i), data), 5, value.shape, (1, value.shape[0]))
      else:
        data = value.ravel()
        strides = [int(np.prod(value.shape[d + 1:])) for d in range(value.ndim)]
        tensors[name] = Tensor(Storage(str(i), data), 0, value.shape, strides)
      blobs[str(i)] = data.astype('<f4').tobytes()
    import io  # pylint: disable=g-import-not-at-top
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(tensors)
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', buf.getvalue())
    z.writestr('archive/byteorder', 'little')
    for key, blob in blobs.items():
      z.writestr(f'archive/data/{key}', blob)
    z.writestr('archive/version', '3\n')


def test_pth_round_trip_and_torch_semantics(tmp_path, small_params):
  state = vgg16_weights.params_to_torchvision(small_params)
  path = str(tmp_path / 'vgg16.pth')
  write_torch_zip(state, path, transpose_keys=('classifier.3.weight',))
  read = vgg16_weights.read_torch_zip(path)
  assert list(read) == list(state)
  for k in state:
    np.testing.assert_array_equal(read[k], state[k])
  params, pre = vgg16_weights.load_weights(path)
  assert pre == 'torch'
  _assert_same(params, small_params)
  # torch's classifier reads the block-5 map flattened as (C, H, W) with weight [out, in]:
  fmap = np.random.RandomState(0).normal(size=(2, 2, SMALL['widths'][-1])).astype(np.float32)
  torch_fc1 = state['classifier.0.weight'] @ fmap.transpose(2, 0, 1).ravel()
  np.testing.assert_allclose(fmap.ravel() @ params['fc1']['kernel'], torch_fc1, rtol=1e-5, atol=1e-5)


def test_pth_reader_refuses_other_globals(tmp_path):
  path = str(tmp_path / 'evil.pth')
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps(collections.OrderedDict(x=os.getcwd), protocol=2))
  with pytest.raises(pickle.UnpicklingError, match='refusing posix.getcwd|refusing os.getcwd'):
    vgg16_weights.read_torch_zip(path)
  (tmp_path / 'old.pth').write_bytes(b'\x80\x02not a zip')
  with pytest.raises(ValueError, match='not a zip'):
    vgg16_weights.read_torch_zip(str(tmp_path / 'old.pth'))


def test_safetensors_round_trips(tmp_path, small_params):
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  ours = str(tmp_path / 'ours.safetensors')
  vgg16_weights.save_safetensors(small_params, ours, preprocess='torch')
  params, pre = vgg16_weights.load_weights(ours)
  assert pre == 'torch'
  _assert_same(params, small_params)
  tv = str(tmp_path / 'tv.safetensors')
  safetensors.numpy.save_file(vgg16_weights.params_to_torchvision(small_params), tv)
  params, pre = vgg16_weights.load_weights(tv)
  assert pre == 'torch'
  _assert_same(params, small_params)


def test_bad_weights_files_name_the_problem(tmp_path, small_params):
  with pytest.raises(FileNotFoundError, match='features.vgg_weights'):
    vgg16_weights.load_weights(str(tmp_path / 'missing.h5'))
  state = vgg16_weights.params_to_torchvision(small_params)
  del state['features.28.weight'], state['features.28.bias']          # 12 convs: not VGG16
  with pytest.raises(ValueError, match='expected 13 conv layers'):
    vgg16_weights.torchvision_to_params(state)


def test_random_init_is_seeded_and_warned(monkeypatch, caplog):
  small = vgg16.VGG16(**SMALL)
  a, b, c = (vgg16.init_params(s, small, SIZE) for s in (3, 3, 4))
  _assert_same(a, b)
  assert not np.array_equal(a['fc1']['kernel'], c['fc1']['kernel'])
  monkeypatch.setattr(vgg16, 'init_params', lambda seed: a)
  with caplog.at_level(logging.WARNING):
    params, pre = vgg16_weights.load_or_init('', seed=3)
  assert params is a and pre == 'caffe'
  assert 'NOT ImageNet features' in caplog.text


def test_preprocessing_modes():
  x = np.full((1, 1, 1, 3), (10.0, 20.0, 30.0), np.float32)   # RGB
  np.testing.assert_allclose(vgg16.preprocess_images(x, 'caffe')[0, 0, 0],
                             (30 - 103.939, 20 - 116.779, 10 - 123.68), rtol=1e-6)
  np.testing.assert_allclose(vgg16.preprocess_images(x, 'torch')[0, 0, 0],
                             ((10 / 255 - .485) / .229, (20 / 255 - .456) / .224,
                              (30 / 255 - .406) / .225), rtol=1e-5)


def test_extract_features_batches_pads_and_skips_unreadable(tmp_path, small_params):
  x = _images(5).astype(np.uint8)
  paths = []
  for i, img in enumerate(x):
    paths.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(img).save(paths[-1])
  (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8\xff garbage')
  paths.insert(2, str(tmp_path / 'bad.jpg'))
  paths.append(str(tmp_path / 'missing.png'))
  vec, ok = vgg16.extract_features(paths, small_params, layer='gap', batch_size=4,
                                   image_size=SIZE, progress=False)
  assert vec.shape == (7, SMALL['widths'][-1]) and vec.dtype == np.float32
  np.testing.assert_array_equal(ok, [1, 1, 0, 1, 1, 1, 0])
  assert not vec[~ok].any() and np.abs(vec[ok]).sum(1).min() > 0
  want = vgg16.model_for(small_params, include_top=False).apply(
      {'params': small_params}, x.astype(np.float32))['gap']
  np.testing.assert_allclose(vec[ok], want, rtol=1e-5, atol=1e-5)
  single, _ = vgg16.extract_features(paths[:1], small_params, layer='gap', batch_size=4,
                                     image_size=SIZE, progress=False)
  np.testing.assert_allclose(single[0], vec[0], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='needs 224x224'):
    vgg16.extract_features(paths, small_params, layer='fc2', image_size=SIZE)
