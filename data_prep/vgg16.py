"""VGG16 in Flax linen, its preprocessing and batched, jitted feature extraction.

The module reproduces `keras.applications.VGG16` layer for layer (13 3×3 convolutions in 5 blocks,
2×2 max pooling, `fc1`, `fc2`, `predictions`) and uses the Keras layer names for its parameters:
`block{b}_conv{i}`, `fc1`, `fc2`, `predictions`, each `{'kernel', 'bias'}`; kernels HWIO / (in, out);
`fc1` reads the block-5 map flattened in (H, W, C) order. Outputs: `gap` (512, global average of
the block-5 pooled map; any image size), and with `include_top` also `fc1`, `fc2` (4096) and
`predictions` (1000 logits, before the softmax Keras applies).

The weight files (Keras h5, torch zip, safetensors; no PyTorch needed) are read by
`vgg16_weights.py`; images by `images.py` (regular files only, size checked before decoding).

Example:
  >>> params, preprocess = vgg16_weights.load_or_init('', seed=0)    # doctest: +SKIP
  >>> vectors, ok = extract_features(paths, params, preprocess=preprocess)   # doctest: +SKIP
"""
from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from data_prep import images as images_lib

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


# ------------------------------------------------------------------------------ extraction
def load_image(path: str, size: int, max_pixels: int = images_lib.DEFAULT_MAX_PIXELS
               ) -> np.ndarray | None:
  """RGB `[size, size, 3]` uint8 (bilinear resize), or None (logged) when the file can't be read."""
  try:
    return images_lib.load(path, max_pixels, size)
  except images_lib.UnreadableImage as e:
    logging.warning('unreadable image %s', e)
    return None


def _load_first(candidates: str | Sequence[str], size: int, max_pixels: int
                ) -> tuple[int, np.ndarray | None, list[images_lib.UnreadableImage]]:
  """`images_lib.first_readable` of one item (a path or an entity's paths in order), logged."""
  paths = [candidates] if isinstance(candidates, str) else list(candidates)
  index, image, failures = images_lib.first_readable(paths, max_pixels, size)
  for e in failures:
    logging.warning('unreadable image %s', e)
  return index, image, failures


def extract_features(paths: Sequence[str | Sequence[str]], params: Params, *,
                     preprocess: str = 'caffe', layer: str = 'predictions', batch_size: int = 32,
                     image_size: int = 224, dtype: Any = jnp.float32, progress: bool = True,
                     max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
                     report: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """VGG16 vectors of image files, one jitted forward per fixed-shape batch (last batch padded).

  Args:
    paths: one item per vector: an image file, or a list of files tried in order until one decodes
      (an entity's images).
    params: VGG16 params (`vgg16_weights.load_or_init`).
    preprocess: preprocessing the params expect.
    layer: 'predictions', 'fc2' or 'gap'.
    batch_size: images per forward pass.
    image_size: images are resized to this square side (224 unless layer='gap').
    dtype: computation dtype.
    progress: show a tqdm bar.
    max_pixels: larger images are unreadable, refused before decoding (features.max_image_pixels).
    report: if given, receives `chosen` (`[n]` int: index of the file used per item, -1 for none),
      `files_unreadable` (files that failed, also those followed by a readable one) and
      `files_over_pixel_limit`.

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
  chosen = np.full(n, -1, np.int64)
  failed: list[images_lib.UnreadableImage] = []
  outputs = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    def submit(start):
      return [pool.submit(_load_first, p, image_size, max_pixels)
              for p in paths[start:start + batch_size]]
    pending = submit(starts[0]) if starts else []
    bar = tqdm.tqdm(total=n, desc=f'VGG16 {layer}', unit='images', disable=not progress)
    for i, start in enumerate(starts):
      images = [f.result() for f in pending]
      if i + 1 < len(starts):
        pending = submit(starts[i + 1])                   # decode the next batch meanwhile
      batch = np.zeros((batch_size, image_size, image_size, 3), np.uint8)   # [B, H, W, 3]
      for j, (index, img, failures) in enumerate(images):
        failed += failures
        if img is not None:
          batch[j], ok[start + j], chosen[start + j] = img, True, index
      outputs.append(forward(device_params, batch)[:len(images)])      # async dispatch
      if i:                                 # wait for the previous batch: one in flight, honest bar
        outputs[i - 1] = np.asarray(outputs[i - 1], np.float32)
        bar.update(batch_size)
    if outputs:
      outputs[-1] = np.asarray(outputs[-1], np.float32)
      bar.update(n - bar.n)
    bar.close()
  if report is not None:
    report.update(chosen=chosen, files_unreadable=len(failed),
                  files_over_pixel_limit=sum(e.over_limit for e in failed))
  if not outputs:
    dim = model.num_classes if layer == 'predictions' else (
        model.dense_width if layer == 'fc2' else model.widths[-1])
    return np.zeros((0, dim), np.float32), ok
  vectors = np.concatenate([np.asarray(o, np.float32) for o in outputs])  # [n, D]
  vectors[~ok] = 0.0
  return vectors, ok
