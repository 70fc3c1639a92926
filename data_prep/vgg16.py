"""VGG16 in Flax linen, its weight port (no PyTorch needed) and batched, jitted feature extraction.

The module reproduces `keras.applications.VGG16` layer for layer (13 3×3 convolutions in 5 blocks,
2×2 max pooling, `fc1`, `fc2`, `predictions`) and uses the Keras layer names for its parameters:
`block{b}_conv{i}`, `fc1`, `fc2`, `predictions`, each `{'kernel', 'bias'}`; kernels HWIO / (in, out);
`fc1` reads the block-5 map flattened in (H, W, C) order. Outputs: `gap` (512, global average of
the block-5 pooled map; any image size), and with `include_top` also `fc1`, `fc2` (4096) and
`predictions` (1000 logits, before the softmax Keras applies).

Weights, read with h5py / zipfile + pickle / safetensors only (`load_weights` picks by suffix):
  * Keras 3 `.weights.h5` (`layers/conv2d/vars/{0,1}`, `conv2d_1` … `conv2d_12`, `dense` …
    `dense_2`, ordered numerically) and legacy Keras `.h5` (`layer_names`/`weight_names` attributes);
    preprocessing 'caffe' (RGB→BGR, minus the ImageNet BGR mean, no scaling).
  * torchvision `vgg16` state dicts `.pth` (`features.N.*`, `classifier.N.*`; OIHW→HWIO, `fc1`'s
    input order C,H,W→H,W,C); preprocessing 'torch' (/255, ImageNet mean/std). `read_torch_zip`
    reads the zip with a restricted unpickler that maps torch's tensor records to numpy.
  * `.safetensors` with torchvision keys or with our own `block1_conv1.kernel` keys (metadata
    `preprocess` says which preprocessing; 'caffe' when absent).

Example:
  >>> params, preprocess = load_or_init('', seed=0)                  # doctest: +SKIP
  >>> vectors, ok = extract_features(paths, params, preprocess=preprocess)   # doctest: +SKIP
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import pickle
import re
import sys
from typing import Any, Sequence
import zipfile

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tqdm

CONV_BLOCKS = (2, 2, 3, 3, 3)
CONV_NAMES = tuple(f'block{b}_conv{i}' for b, n in enumerate(CONV_BLOCKS, 1) for i in range(1, n + 1))
DENSE_NAMES = ('fc1', 'fc2', 'predictions')
LAYERS = ('predictions', 'fc2', 'gap')
# ImageNet statistics the two weight families were trained with.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREPROCESS = ('caffe', 'torch', 'none')
Params = dict[str, dict[str, Any]]


def preprocess_images(images: jax.Array, mode: str) -> jax.Array:
  """RGB images in [0, 255] `[B, H, W, 3]` → the input the weights expect (`mode` in PREPROCESS)."""
  if mode == 'caffe':                                   # Keras vgg16.preprocess_input
    return images[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, images.dtype)
  if mode == 'torch':                                   # torchvision transforms.Normalize
    return (images / 255.0 - jnp.asarray(TORCH_MEAN, images.dtype)) / jnp.asarray(TORCH_STD,
                                                                                   images.dtype)
  if mode == 'none':
    return images
  raise ValueError(f'unknown VGG16 preprocessing {mode!r}; expected one of {PREPROCESS}')


class VGG16(nn.Module):
  """VGG16 (configuration D). Widths are fields so tests can run a narrow copy.

  Attributes:
    widths: output channels of the 5 conv blocks.
    dense_width: width of fc1 and fc2.
    num_classes: width of `predictions`.
    include_top: build fc1/fc2/predictions (needs the input size the weights were made for).
    preprocess: one of PREPROCESS, applied to the RGB [0, 255] input.
    dtype: computation dtype (parameters stay float32).
  """
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  dense_width: int = 4096
  num_classes: int = 1000
  include_top: bool = True
  preprocess: str = 'caffe'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')   # He: keeps random nets alive
    x = preprocess_images(images.astype(jnp.float32), self.preprocess).astype(self.dtype)
    names = iter(CONV_NAMES)
    for width, num_convs in zip(self.widths, CONV_BLOCKS):
      for _ in range(num_convs):
        x = nn.relu(nn.Conv(width, (3, 3), padding='SAME', kernel_init=init, dtype=self.dtype,
                            name=next(names))(x))              # [B, H, W, width]
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    out = {'gap': jnp.mean(x, axis=(1, 2)).astype(jnp.float32)}      # [B, C]
    if not self.include_top:
      return out
    x = x.reshape(x.shape[0], -1)                                     # [B, H*W*C], (H, W, C) order
    for name, width in zip(DENSE_NAMES, (self.dense_width, self.dense_width, self.num_classes)):
      x = nn.Dense(width, kernel_init=init, dtype=self.dtype, name=name)(x)
      if name != 'predictions':
        x = nn.relu(x)
      out[name] = x.astype(jnp.float32)                               # [B, width]
    return out


def model_for(params: Params, preprocess: str = 'caffe', include_top: bool = True,
              dtype: Any = jnp.float32) -> VGG16:
  """The `VGG16` whose widths match `params` (so a narrow test copy needs no extra arguments)."""
  widths = tuple(int(params[f'block{b}_conv1']['kernel'].shape[-1]) for b in range(1, 6))
  fc = {n: params[n]['kernel'].shape[-1] for n in DENSE_NAMES if n in params}
  return VGG16(widths=widths, dense_width=int(fc.get('fc1', 4096)),
               num_classes=int(fc.get('predictions', 1000)),
               include_top=include_top and len(fc) == 3, preprocess=preprocess, dtype=dtype)


def init_params(seed: int, model: VGG16 | None = None, image_size: int = 224) -> Params:
  """Seeded random parameters (He normal kernels, zero biases) as numpy arrays.

  Drawn with numpy from the shapes `model.init` would make: as fast as reading a file, where
  compiling jax's PRNG for 32 arrays takes minutes on a loaded 2-core CPU.
  """
  model = model or VGG16()
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  rng = np.random.default_rng(seed)
  params = {}
  for name in CONV_NAMES + DENSE_NAMES:
    if name in shapes['params']:
      kshape = shapes['params'][name]['kernel'].shape
      std = np.sqrt(2.0 / np.prod(kshape[:-1]))                 # He normal over fan-in
      params[name] = {'kernel': (rng.standard_normal(kshape, np.float32) * std).astype(np.float32),
                      'bias': np.zeros(kshape[-1], np.float32)}
  return params


# ------------------------------------------------------------------------------ weight files
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
  if len(convs) != len(CONV_NAMES) or len(dense) not in (0, 3) or len(convs) + len(dense) != len(
      layers):
    raise ValueError(f'{source}: expected {len(CONV_NAMES)} conv layers and 3 (or, without the top, '
                     f'0) dense layers with [kernel, bias], found '
                     f'{[(n, [a.shape for a in w]) for n, w in layers]}; '
                     'is this a VGG16 (not VGG19 / batch-norm) weights file?')
  params = {}
  for ours, (theirs, arrays) in zip(CONV_NAMES + DENSE_NAMES, convs + dense):
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
  with h5py.File(path, 'r') as f:
    if 'layers' in f:
      layers = _keras3_layers(f['layers'])
    else:
      root = f['model_weights'] if 'model_weights' in f else f
      if 'layer_names' not in root.attrs:
        raise ValueError(f'{path}: neither a Keras 3 weights file (no "layers" group) nor a legacy '
                         'Keras .h5 (no "layer_names" attribute)')
      layers = _legacy_layers(root)
  return assign_layers(layers, path)


# torch storage class name → numpy dtype (torch's zip format names storages by these classes).
_TORCH_STORAGES = {'FloatStorage': 'float32', 'DoubleStorage': 'float64', 'HalfStorage': 'float16',
                   'BFloat16Storage': 'bfloat16', 'LongStorage': 'int64', 'IntStorage': 'int32',
                   'ShortStorage': 'int16', 'CharStorage': 'int8', 'ByteStorage': 'uint8',
                   'BoolStorage': 'bool', 'UntypedStorage': 'uint8'}


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """Stands in for torch._utils._rebuild_tensor_v2: a strided view of the storage, copied."""
  del unused                                              # requires_grad, hooks, metadata
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=[s * storage.itemsize for s in stride])
  return np.array(view)


class _TorchUnpickler(pickle.Unpickler):
  """Allows only what a state dict of plain tensors needs; anything else is refused, not run."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, source: str):
    super().__init__(file)
    self._archive, self._prefix, self._source = archive, prefix, source
    self._byteorder = byteorder
    self._storages = {}

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
    kind, dtype, key, unused_location, unused_numel = pid
    if kind != 'storage':
      raise pickle.UnpicklingError(f'{self._source}: unknown persistent record {kind!r}')
    if key not in self._storages:
      raw = self._archive.read(f'{self._prefix}data/{key}')
      arr = np.frombuffer(raw, dtype=np.dtype(jnp.dtype(dtype)))
      self._storages[key] = arr if self._byteorder == sys.byteorder else arr.byteswap()
    return self._storages[key]


def read_torch_zip(path: str) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict (zip format, torch ≥ 1.6) as numpy arrays, without importing torch.

  The zip holds `<name>/data.pkl` (a pickle whose tensors are
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)` with storages as persistent
  ids `('storage', torch.FloatStorage, key, location, numel)`) and the raw bytes `<name>/data/<key>`.
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
    order = (archive.read(prefix + 'byteorder').decode().strip()
             if prefix + 'byteorder' in names else 'little')
    with archive.open(pickles[0]) as f:
      state = _TorchUnpickler(f, archive, prefix, order, path).load()
  if isinstance(state, dict) and 'state_dict' in state:
    state = state['state_dict']
  return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


def _torch_indices(state: dict[str, np.ndarray], prefix: str) -> list[int]:
  return sorted(int(k.split('.')[1]) for k in state if re.fullmatch(rf'{prefix}\.\d+\.weight', k))


def torchvision_to_params(state: dict[str, np.ndarray], source: str = 'state dict') -> Params:
  """torchvision `vgg16().state_dict()` arrays → params (OIHW→HWIO; fc1 rows C,H,W→H,W,C)."""
  if any(k.endswith('running_mean') for k in state):
    raise ValueError(f'{source}: batch-norm keys found; vgg16_bn is not supported, use plain vgg16')
  layers = [(f'features.{i}', [state[f'features.{i}.weight'].transpose(2, 3, 1, 0),
                               state[f'features.{i}.bias']])
            for i in _torch_indices(state, 'features')]
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
  names = iter(CONV_NAMES)
  for num_convs in CONV_BLOCKS:
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


def load_safetensors(path: str) -> tuple[Params, str]:
  """`.safetensors` with torchvision keys ('torch' preprocessing) or ours (metadata 'preprocess')."""
  import safetensors  # pylint: disable=g-import-not-at-top
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  tensors = safetensors.numpy.load_file(path)
  with safetensors.safe_open(path, framework='numpy') as f:
    meta = f.metadata() or {}
  if any(k.startswith('features.') for k in tensors):
    return torchvision_to_params(tensors, path), meta.get('preprocess', 'torch')
  layers = [(n, [tensors[f'{n}.kernel'], tensors[f'{n}.bias']])
            for n in CONV_NAMES + DENSE_NAMES if f'{n}.kernel' in tensors]
  return assign_layers(layers, path), meta.get('preprocess', 'caffe')


def save_safetensors(params: Params, path: str, preprocess: str = 'caffe') -> None:
  """Writes params with keys `block1_conv1.kernel` … and metadata {'preprocess': …}."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  flat = {f'{layer}.{k}': np.ascontiguousarray(v, np.float32)
          for layer, p in params.items() for k, v in p.items()}
  safetensors.numpy.save_file(flat, path, metadata={'preprocess': preprocess})


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


def load_or_init(path: str, seed: int) -> tuple[Params, str]:
  """`load_weights(path)`, or with `path=''` seeded random weights and a warning."""
  if path:
    return load_weights(path)
  logging.warning('features.vgg_weights is empty: VGG16 uses seeded random weights (seed %d); the '
                  'image vectors are random-projection features, NOT ImageNet features. Point '
                  'features.vgg_weights at a .h5/.weights.h5/.pth/.safetensors file for those.', seed)
  return init_params(seed), 'caffe'


# ------------------------------------------------------------------------------ extraction
def load_image(path: str, size: int) -> np.ndarray | None:
  """RGB `[size, size, 3]` uint8 (bilinear resize), or None (logged) when the file can't be read."""
  try:
    with Image.open(path) as img:
      img = img.convert('RGB')
      if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
      return np.asarray(img, dtype=np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    logging.warning('unreadable image %s: %s: %s', path, type(e).__name__, e)
    return None


def extract_features(paths: Sequence[str], params: Params, *, preprocess: str = 'caffe',
                     layer: str = 'predictions', batch_size: int = 32, image_size: int = 224,
                     dtype: Any = jnp.float32,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """VGG16 vectors of image files, one jitted forward per fixed-shape batch (last batch padded).

  Args:
    paths: image files.
    params: VGG16 params (`load_or_init`).
    preprocess: preprocessing the params expect.
    layer: 'predictions', 'fc2' or 'gap'.
    batch_size: images per forward pass.
    image_size: images are resized to this square side (224 unless layer='gap').
    dtype: computation dtype.
    progress: show a tqdm bar.

  Returns:
    (vectors `[len(paths), D]` float32, zeros where unreadable; ok `[len(paths)]` bool).
  """
  if layer not in LAYERS:
    raise ValueError(f'unknown VGG16 layer {layer!r} (config key features.vgg_layer); '
                     f'expected one of {LAYERS}')
  if layer != 'gap' and image_size != 224:
    raise ValueError(f'layer {layer!r} needs 224x224 inputs (got image_size={image_size}); use gap')
  model = model_for(params, preprocess, include_top=layer != 'gap', dtype=dtype)
  if layer != 'gap' and not model.include_top:
    raise ValueError(f'layer {layer!r} needs fc1/fc2/predictions weights; these params have none')
  used = {k: v for k, v in params.items() if layer != 'gap' or k not in DENSE_NAMES}
  device_params = jax.device_put(used)
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x)[layer])
  n = len(paths)
  starts = list(range(0, n, batch_size))
  ok = np.zeros(n, bool)
  outputs = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    def submit(start):
      return [pool.submit(load_image, p, image_size) for p in paths[start:start + batch_size]]
    pending = submit(starts[0]) if starts else []
    for i, start in enumerate(tqdm.tqdm(starts, desc=f'VGG16 {layer}', unit='batch',
                                        disable=not progress)):
      images = [f.result() for f in pending]
      if i + 1 < len(starts):
        pending = submit(starts[i + 1])                   # decode the next batch meanwhile
      batch = np.zeros((batch_size, image_size, image_size, 3), np.uint8)   # [B, H, W, 3]
      for j, img in enumerate(images):
        if img is not None:
          batch[j], ok[start + j] = img, True
      outputs.append(forward(device_params, batch)[:len(images)])      # async dispatch
      if i:                                 # wait for the previous batch: one in flight, honest bar
        outputs[i - 1] = np.asarray(outputs[i - 1], np.float32)
  if not outputs:
    dim = model.num_classes if layer == 'predictions' else (
        model.dense_width if layer == 'fc2' else model.widths[-1])
    return np.zeros((0, dim), np.float32), ok
  vectors = np.concatenate([np.asarray(o, np.float32) for o in outputs])  # [n, D]
  vectors[~ok] = 0.0
  return vectors, ok
