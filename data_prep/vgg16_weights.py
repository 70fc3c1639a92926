"""VGG16 weight files without PyTorch or Keras: readers (and a writer) for `data_prep/vgg16.py`'s params.

Formats (`load_weights` picks by suffix; a file that is not what its suffix says is an error naming
the path):
  * Keras 3 `.weights.h5` (`layers/conv2d/vars/{0,1}`, `conv2d_1` … `conv2d_12`, `dense` …
    `dense_2`, ordered numerically) and legacy Keras `.h5` (`layer_names`/`weight_names` attributes);
    preprocessing 'caffe' (RGB→BGR, minus the ImageNet BGR mean, no scaling).
  * torchvision `vgg16` state dicts `.pth` (`features.N.*`, `classifier.N.*`; OIHW→HWIO, `fc1`'s
    input order C,H,W→H,W,C); preprocessing 'torch' (/255, ImageNet mean/std). `read_torch_zip`
    reads the zip with a restricted unpickler that maps torch's tensor records to numpy, and checks
    every tensor's offset, size and stride against the bytes of its storage before touching them:
    a crafted file gets an error naming the file and the state-dict key, never a read outside the
    storage.
  * `.safetensors` with torchvision keys or with our own `block1_conv1.kernel` keys (metadata
    `preprocess` says which preprocessing; 'caffe' when absent).

Example:
  >>> params, preprocess = load_or_init('vgg16.weights.h5', seed=0)   # doctest: +SKIP
"""
from __future__ import annotations

import collections
import logging
import math
import os
import pickle
import re
import sys
from typing import Any, NamedTuple, Sequence
import zipfile

import h5py
import ml_dtypes
import numpy as np

from data_prep import vgg16

Params = vgg16.Params


# ------------------------------------------------------------------------------ Keras h5
def _natural_key(name: str) -> list:
  """'conv2d_12' sorts after 'conv2d_2' (and 'conv2d' first): digits compare as numbers."""
  return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', name)]


def _keras3_layers(group: h5py.Group, prefix: str = '') -> list[tuple[str, list[np.ndarray]]]:
  out = []
  for name in sorted(group.keys(), key=_natural_key):
    sub = group[name]
    if 'vars' in sub and len(sub['vars']):
      out.append((prefix + name, [sub['vars'][k][()] for k in sorted(sub['vars'], key=int)]))
    if 'layers' in sub:                                   # a model nested inside the model
      out.extend(_keras3_layers(sub['layers'], f'{prefix}{name}/'))
  return out


def _legacy_layers(root: h5py.Group) -> list[tuple[str, list[np.ndarray]]]:
  def text(v):
    return v.decode('utf-8') if isinstance(v, bytes) else str(v)
  out = []
  for name in map(text, root.attrs['layer_names']):
    names = [text(w) for w in root[name].attrs.get('weight_names', [])]
    if names:
      out.append((name, [root[name][w][()] for w in names]))
  return out


def assign_layers(layers: Sequence[tuple[str, Sequence[np.ndarray]]], source: str) -> Params:
  """(name, [kernel, bias]) in network order → params; 4-d kernels are convs, 2-d are dense."""
  convs = [(n, w) for n, w in layers if w[0].ndim == 4]
  dense = [(n, w) for n, w in layers if w[0].ndim == 2]
  if len(convs) != len(vgg16.CONV_NAMES) or len(dense) not in (0, 3) or len(convs) + len(
      dense) != len(layers):
    raise ValueError(f'{source}: expected {len(vgg16.CONV_NAMES)} conv layers and 3 (or, without '
                     f'the top, 0) dense layers with [kernel, bias], found '
                     f'{[(n, [a.shape for a in w]) for n, w in layers]}; '
                     'is this a VGG16 (not VGG19 / batch-norm) weights file?')
  params = {}
  for ours, (theirs, arrays) in zip(vgg16.CONV_NAMES + vgg16.DENSE_NAMES, convs + dense):
    if len(arrays) != 2:
      raise ValueError(f'{source}: layer {theirs!r} has {len(arrays)} arrays, expected kernel, bias')
    kernel, bias = (np.asarray(a, np.float32) for a in arrays)
    if kernel.shape[-1] != bias.shape[0]:
      raise ValueError(f'{source}: layer {theirs!r} kernel {kernel.shape} does not fit bias '
                       f'{bias.shape}')
    params[ours] = {'kernel': kernel, 'bias': bias}
  return params


def load_keras_h5(path: str) -> Params:
  """Keras 3 `.weights.h5` or legacy Keras `.h5` (weights-only or whole-model) → params."""
  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise ValueError(f'{path}: not a readable HDF5 file ({e}); features.vgg_weights must point at '
                     'a Keras .weights.h5 / .h5 file') from None
  with f:
    if 'layers' in f:
      layers = _keras3_layers(f['layers'])
    else:
      root = f['model_weights'] if 'model_weights' in f else f
      if 'layer_names' not in root.attrs:
        raise ValueError(f'{path}: neither a Keras 3 weights file (no "layers" group) nor a legacy '
                         'Keras .h5 (no "layer_names" attribute)')
      layers = _legacy_layers(root)
  return assign_layers(layers, path)


# ------------------------------------------------------------------------------ torch zip
# torch storage class name → numpy dtype (torch's zip format names storages by these classes).
_TORCH_STORAGES = {'FloatStorage': 'float32', 'DoubleStorage': 'float64', 'HalfStorage': 'float16',
                   'BFloat16Storage': 'bfloat16', 'LongStorage': 'int64', 'IntStorage': 'int32',
                   'ShortStorage': 'int16', 'CharStorage': 'int8', 'ByteStorage': 'uint8',
                   'BoolStorage': 'bool', 'UntypedStorage': 'uint8'}


def _numpy_dtype(name: str) -> np.dtype:
  return np.dtype(ml_dtypes.bfloat16) if name == 'bfloat16' else np.dtype(name)


class _Storage(NamedTuple):
  """One `data/<key>` record of the zip: its raw bytes and the dtype the pickle names."""
  key: str
  dtype: str
  raw: bytes


class _TensorRecord(NamedTuple):
  """What `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` names; unchecked."""
  storage: Any
  offset: Any
  size: Any
  stride: Any


def _rebuild_tensor(storage, offset, size, stride, *unused) -> _TensorRecord:
  """Stands in for torch._utils._rebuild_tensor_v2: records the call; `_materialise` checks it."""
  del unused                                              # requires_grad, hooks, metadata
  return _TensorRecord(storage, offset, size, stride)


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _materialise(record: _TensorRecord, name: str, source: str, byteorder: str) -> np.ndarray:
  """The tensor a record describes, copied out of its storage once every access is in bounds.

  Checked: the storage is a storage record; its byte length is a multiple of the dtype's itemsize;
  offset, sizes and strides are non-negative integers (Python ints: no overflow), one stride per
  dimension; the last element the strides reach lies inside the storage; the tensor has no more
  elements than its storage (an all-zero stride over a huge size would allocate without bound).
  """
  where = f'{source}: state-dict key {name!r}'
  storage, offset, size, stride = record
  if not isinstance(storage, _Storage):
    raise ValueError(f'{where}: the tensor\'s storage is a {type(storage).__name__}, not a storage '
                     'record of the zip; the file is damaged or not a torch state dict')
  dtype = _numpy_dtype(storage.dtype)
  if len(storage.raw) % dtype.itemsize:
    raise ValueError(f'{where}: storage data/{storage.key} has {len(storage.raw)} bytes, not a '
                     f'multiple of the {dtype.itemsize}-byte {dtype}; the file is damaged')
  count = len(storage.raw) // dtype.itemsize
  size = tuple(size) if isinstance(size, (tuple, list)) else size
  stride = tuple(stride) if isinstance(stride, (tuple, list)) else stride
  if (not _is_int(offset) or offset < 0 or not isinstance(size, tuple)
      or not isinstance(stride, tuple) or len(size) != len(stride)
      or not all(_is_int(x) and x >= 0 for x in size + stride)):
    raise ValueError(f'{where}: bad tensor record (offset {offset!r}, size {size!r}, stride '
                     f'{stride!r}): expected non-negative integers and one stride per dimension')
  numel = math.prod(size)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else offset - 1
  if last >= count or offset > count or numel > count:
    raise ValueError(
        f'{where}: a tensor of size {size}, stride {stride} at offset {offset} needs '
        f'{max(last + 1, numel)} elements, but storage data/{storage.key} holds {count} {dtype} '
        f'({len(storage.raw)} bytes); the file is damaged or crafted')
  data = np.frombuffer(storage.raw, dtype=dtype)
  if byteorder != sys.byteorder:
    data = data.byteswap()
  if numel == 0:
    return np.zeros(size, dtype)
  # Every index offset + sum(i_d * stride_d) is now known to lie in [0, count): safe to view.
  view = np.lib.stride_tricks.as_strided(data[offset:], shape=size,
                                         strides=[s * dtype.itemsize for s in stride])
  return np.array(view)


class _TorchUnpickler(pickle.Unpickler):
  """Allows only what a state dict of plain tensors needs; anything else is refused, not run."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str):
    super().__init__(file)
    self._archive, self._prefix, self._source = archive, prefix, source
    self._names = set(archive.namelist())
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module, name):
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return _rebuild_tensor
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return lambda data, *unused: data
    if module == 'torch' and name in _TORCH_STORAGES:
      return _TORCH_STORAGES[name]
    raise pickle.UnpicklingError(f'{self._source}: refusing {module}.{name}; only a state dict of '
                                 'tensors can be read without torch (save model.state_dict())')

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != 'storage':
      raise pickle.UnpicklingError(f'{self._source}: unknown persistent record {pid!r:.200}')
    _, dtype, key, unused_location, unused_numel = pid
    if dtype not in _TORCH_STORAGES.values() or not isinstance(key, str):
      raise pickle.UnpicklingError(f'{self._source}: bad storage record (dtype {dtype!r:.80}, '
                                   f'key {key!r:.80})')
    member = f'{self._prefix}data/{key}'
    if member not in self._names:
      raise pickle.UnpicklingError(f'{self._source}: storage {key!r:.80} names no record of the zip '
                                   f'(no {member!r:.120}); the file is damaged')
    if key not in self._storages:
      self._storages[key] = _Storage(key, dtype, self._archive.read(member))
    elif self._storages[key].dtype != dtype:
      raise pickle.UnpicklingError(f'{self._source}: storage {key!r} is read as '
                                   f'{self._storages[key].dtype} and as {dtype}')
    return self._storages[key]


def read_torch_zip(path: str) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict (zip format, torch ≥ 1.6) as numpy arrays, without importing torch.

  The zip holds `<name>/data.pkl` (a pickle whose tensors are
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)` with storages as persistent
  ids `('storage', torch.FloatStorage, key, location, numel)`) and the raw bytes `<name>/data/<key>`.

  Raises:
    ValueError: not a zip, not a state dict, or a tensor that does not fit its storage (naming the
      state-dict key).
    pickle.UnpicklingError: the pickle names anything but tensors, storages and OrderedDict.
  """
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path}: not a zip; legacy (torch < 1.6) .pth files are not supported — '
                     're-save with torch.save(model.state_dict(), path) or convert to safetensors')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise ValueError(f'{path}: expected one */data.pkl in the zip, found {pickles}')
    prefix = pickles[0][:-len('data.pkl')]
    names = set(archive.namelist())
    order = (archive.read(prefix + 'byteorder').decode('ascii', 'replace').strip()
             if prefix + 'byteorder' in names else 'little')
    if order not in ('little', 'big'):
      raise ValueError(f'{path}: {prefix}byteorder says {order!r:.40}, expected little or big')
    with archive.open(pickles[0]) as f:
      state = _TorchUnpickler(f, archive, prefix, path).load()
  if isinstance(state, dict) and 'state_dict' in state:
    state = state['state_dict']
  if not isinstance(state, dict):
    raise ValueError(f'{path}: holds a {type(state).__name__}, not a state dict')
  return {k: _materialise(v, str(k), path, order) for k, v in state.items()
          if isinstance(v, _TensorRecord)}


def _torch_indices(state: dict[str, np.ndarray], prefix: str) -> list[int]:
  return sorted(int(k.split('.')[1]) for k in state if re.fullmatch(rf'{prefix}\.\d+\.weight', k))


def torchvision_to_params(state: dict[str, np.ndarray], source: str = 'state dict') -> Params:
  """torchvision `vgg16().state_dict()` arrays → params (OIHW→HWIO; fc1 rows C,H,W→H,W,C)."""
  if any(k.endswith('running_mean') for k in state):
    raise ValueError(f'{source}: batch-norm keys found; vgg16_bn is not supported, use plain vgg16')
  try:
    layers = [(f'features.{i}', [state[f'features.{i}.weight'].transpose(2, 3, 1, 0),
                                 state[f'features.{i}.bias']])
              for i in _torch_indices(state, 'features')]
  except (KeyError, ValueError) as e:
    raise ValueError(f'{source}: a features.N conv layer lacks its bias or is not 4-d: {e}') from None
  linear = _torch_indices(state, 'classifier')
  if len(linear) == 3 and layers:
    w = state[f'classifier.{linear[0]}.weight']                      # [out, C*S*S]
    channels = layers[-1][1][0].shape[-1]
    side = int(round((w.shape[1] // channels) ** 0.5))
    if side * side * channels != w.shape[1]:
      raise ValueError(f'{source}: classifier.{linear[0]}.weight {w.shape} does not flatten a '
                       f'[{channels}, S, S] map')
    fc1 = w.reshape(w.shape[0], channels, side, side).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
    layers.append(('classifier.0', [fc1, state[f'classifier.{linear[0]}.bias']]))
    layers += [(f'classifier.{i}', [state[f'classifier.{i}.weight'].T, state[f'classifier.{i}.bias']])
               for i in linear[1:]]
  return assign_layers(layers, source)


def params_to_torchvision(params: Params) -> dict[str, np.ndarray]:
  """Inverse of `torchvision_to_params` (torchvision: features 0,2,5,…,28; classifier 0,3,6)."""
  state, index = {}, 0
  names = iter(vgg16.CONV_NAMES)
  for num_convs in vgg16.CONV_BLOCKS:
    for _ in range(num_convs):
      p = params[next(names)]
      state[f'features.{index}.weight'] = np.ascontiguousarray(p['kernel'].transpose(3, 2, 0, 1))
      state[f'features.{index}.bias'] = np.asarray(p['bias'])
      index += 2                                          # conv, relu
    index += 1                                            # max pool
  if 'fc1' in params:
    channels = params['block5_conv3']['kernel'].shape[-1]
    k = params['fc1']['kernel']                           # [S*S*C, out]
    side = int(round((k.shape[0] // channels) ** 0.5))
    state['classifier.0.weight'] = np.ascontiguousarray(
        k.reshape(side, side, channels, -1).transpose(3, 2, 0, 1).reshape(k.shape[1], -1))
    state['classifier.0.bias'] = np.asarray(params['fc1']['bias'])
    for i, name in ((3, 'fc2'), (6, 'predictions')):
      state[f'classifier.{i}.weight'] = np.ascontiguousarray(params[name]['kernel'].T)
      state[f'classifier.{i}.bias'] = np.asarray(params[name]['bias'])
  return state


# ------------------------------------------------------------------------------ safetensors
def load_safetensors(path: str) -> tuple[Params, str]:
  """`.safetensors` with torchvision keys ('torch' preprocessing) or ours (metadata 'preprocess')."""
  import safetensors  # pylint: disable=g-import-not-at-top
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  try:
    tensors = safetensors.numpy.load_file(path)
    with safetensors.safe_open(path, framework='numpy') as f:
      meta = f.metadata() or {}
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise ValueError(f'{path}: not a readable safetensors file ({type(e).__name__}: {e}); '
                     'features.vgg_weights must point at a .safetensors file') from None
  if any(k.startswith('features.') for k in tensors):
    return torchvision_to_params(tensors, path), meta.get('preprocess', 'torch')
  layers = [(n, [tensors[f'{n}.kernel'], tensors[f'{n}.bias']])
            for n in vgg16.CONV_NAMES + vgg16.DENSE_NAMES if f'{n}.kernel' in tensors]
  return assign_layers(layers, path), meta.get('preprocess', 'caffe')


def save_safetensors(params: Params, path: str, preprocess: str = 'caffe') -> None:
  """Writes params with keys `block1_conv1.kernel` … and metadata {'preprocess': …}."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  flat = {f'{layer}.{k}': np.ascontiguousarray(v, np.float32)
          for layer, p in params.items() for k, v in p.items()}
  safetensors.numpy.save_file(flat, path, metadata={'preprocess': preprocess})


# ------------------------------------------------------------------------------ by suffix
def load_weights(path: str) -> tuple[Params, str]:
  """Reads a VGG16 weights file by suffix. Returns (params, preprocessing mode they expect)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'VGG16 weights {path!r} not found (config key features.vgg_weights)')
  if path.endswith('.h5'):
    return load_keras_h5(path), 'caffe'
  if path.endswith(('.pth', '.pt')):
    return torchvision_to_params(read_torch_zip(path), path), 'torch'
  if path.endswith('.safetensors'):
    return load_safetensors(path)
  raise ValueError(f'{path}: unknown VGG16 weights format; expected .h5, .weights.h5, .pth or '
                   '.safetensors (config key features.vgg_weights)')


RANDOM = 'random'


def is_random(path: str) -> bool:
  """Whether `features.vgg_weights` asks for seeded random weights: 'random', or '' (its older
  spelling, kept as a synonym). A weights file named `random` is `./random`."""
  return path in (RANDOM, '')


def describe(path: str) -> str:
  """What stats.json and the summary say about the weights: 'random' or the file's absolute path."""
  return RANDOM if is_random(path) else os.path.abspath(path)


def load_or_init(path: str, seed: int) -> tuple[Params, str]:
  """`load_weights(path)`, or for `path='random'` (or '') seeded random weights and a warning.

  No ImageNet file can be downloaded here, so 'random' is the default (`configs/default.py`): the
  image vectors are then random-projection features, which separate the synthetic KG's colours and
  shapes but are not the paper's. A local Keras `vgg16_weights_tf_dim_ordering_tf_kernels.h5` /
  `vgg16.weights.h5`, torchvision `vgg16-397923af.pth` or a `.safetensors` copy of either loads the
  ImageNet weights (README "VGG16 weights").
  """
  if not is_random(path):
    return load_weights(path)
  logging.warning('features.vgg_weights=%r: VGG16 uses seeded random weights (seed %d); the image '
                  'vectors are random-projection features, NOT ImageNet features. Point '
                  'features.vgg_weights at a .h5/.weights.h5/.pth/.safetensors file for those.',
                  path or RANDOM, seed)
  return vgg16.init_params(seed), 'caffe'
