"""Entity feature table (`features.npz`): VGG16 image vector, OCR text and its vector, h_fig, h_ocr.

`build_features` runs VGG16 (`vgg16.py`) and OCR (`ocr.py`, cached, on a second thread at the same
time) on one image of every entity that has images: the first, in name order, that is a readable
regular file of at most `features.max_image_pixels` pixels (`images.py`; the ones before it are
counted and logged as unreadable, the ones after it as unused). It vectorises the OCR text
(`text_vector.py`), finds the entities it names (`mentions.py`), then reduces each modality with
the Eq. 3–7 attention block + autoencoder, trained on reconstruction, to `h_fig` (8-d) and `h_ocr` (3-d).

Our reading of the paper's §3.1 (Eq. 3–7), per modality φ ∈ R^D (one block and one autoencoder
for the image vector, another for the OCR vector; the paper's third block, for the structure
embedding h, belongs to the transformer's own token embeddings here; 14 = 3 (h) + 8 + 3):
  * φ is cut into N = `ae_segments` equal segments φ_1 … φ_N (the "features" attention weighs);
  * Eq. 3  µ_i = W2 ReLU(W1 φ_i)            (position-wise feed-forward, "conv" = 1×1 conv);
  * Eq. 4–5 a_i = softmax_i(µ_i), Q = Σ_i a_i ∘ µ_i          (self-attention summary of φ);
  * Eq. 6  p_k = w·[ReLU(W_s Q) ∘ ReLU(W_x φ_k)], s_k = softmax_k(p_k), g = Σ_k s_k φ_k;
  * Eq. 7  h = σ(W g + b)                    (the code; sigmoid, so h ∈ (0, 1)^d);
  * decoder ReLU MLP h → φ̂; loss ‖φ̂ − φ‖² on φ standardised per dimension over the entities
    that have the modality (VGG logits are large and uneven in scale); trained with Adam on those
    entities only, `ae_steps` steps of `ae_batch_size` rows drawn with replacement, seeded.

Example:
  >>> stats = build_features(kg, config, 'workdir/prepared')        # doctest: +SKIP
  >>> np.load('workdir/prepared/features.npz')['h_fig'].shape       # doctest: +SKIP
  (2883, 8)
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from data_prep import images as images_lib
from data_prep import mentions
from data_prep import ocr as ocr_lib
from data_prep import text_vector
from data_prep import vgg16
from data_prep import vgg16_weights
from imkga_jax import files
from imkga_jax import kg as kg_lib

FEATURES_FILE = 'features.npz'
OCR_CACHE_FILE = 'ocr_cache.jsonl'
SYNTHETIC_META = 'synthetic_meta.json'


class AttentionEncoder(nn.Module):
  """Eq. 3–7: segment self-attention summary, query-guided segment attention, sigmoid code."""
  num_segments: int
  hidden: int
  code_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, dim = x.shape
    phi = x.reshape(batch, self.num_segments, dim // self.num_segments)    # [B, N, D/N]
    mu = nn.Dense(self.hidden, name='mu_out')(
        nn.relu(nn.Dense(self.hidden, name='mu_in')(phi)))                # [B, N, H]  Eq. 3
    a = nn.softmax(mu, axis=1)                                             # [B, N, H]  Eq. 4
    query = jnp.sum(a * mu, axis=1)                                        # [B, H]     Eq. 5
    p = nn.Dense(1, name='score')(
        nn.relu(nn.Dense(self.hidden, name='w_s')(query))[:, None, :] *
        nn.relu(nn.Dense(self.hidden, name='w_x')(phi)))                   # [B, N, 1]  Eq. 6
    s = nn.softmax(p, axis=1)                                              # [B, N, 1]
    g = jnp.sum(s * phi, axis=1)                                           # [B, D/N]
    return nn.sigmoid(nn.Dense(self.code_dim, name='code')(g))             # [B, d]     Eq. 7


class FeatureAutoencoder(nn.Module):
  """`AttentionEncoder` + ReLU MLP decoder back to the input."""
  num_segments: int
  hidden: int
  code_dim: int
  out_dim: int

  def setup(self):
    self.encoder = AttentionEncoder(self.num_segments, self.hidden, self.code_dim)
    self.decoder_hidden = nn.Dense(self.hidden)
    self.decoder_out = nn.Dense(self.out_dim)

  def encode(self, x: jax.Array) -> jax.Array:
    return self.encoder(x)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    code = self.encoder(x)                                                 # [B, d]
    return code, self.decoder_out(nn.relu(self.decoder_hidden(code)))      # [B, D]


def standardise(x: np.ndarray) -> np.ndarray:
  """Per-dimension z-score over rows (constant dimensions become 0)."""
  std = x.std(axis=0)
  return ((x - x.mean(axis=0)) / np.where(std > 1e-6, std, 1.0)).astype(np.float32)


def _init_array(path, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  """LeCun-normal kernels (variance 1/fan_in), zero biases."""
  if getattr(path[-1], 'key', None) == 'bias':
    return np.zeros(shape, np.float32)
  return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)


def reduce_features(x: np.ndarray, present: np.ndarray, code_dim: int, fc: Any,
                    seed: int) -> tuple[np.ndarray, float | None]:
  """Trains the autoencoder on the present rows of `x` and encodes them.

  Args:
    x: `[E, D]` raw vectors.
    present: `[E]` bool, rows that have the modality.
    code_dim: size of the code (h_fig / h_ocr).
    fc: `config.features` (ae_segments, ae_hidden, ae_steps, ae_learning_rate, ae_batch_size).
    seed: PRNG seed (same seed, same codes).

  Returns:
    (codes `[E, code_dim]` float32, zeros where not present; final reconstruction MSE on the
    standardised present rows — 1.0 is what the all-mean prediction scores; None without rows).
  """
  codes = np.zeros((x.shape[0], code_dim), np.float32)
  rows = np.flatnonzero(present)
  if rows.size == 0:
    return codes, None
  dim = x.shape[1]
  if dim % fc.ae_segments:
    raise ValueError(f'feature dimension {dim} is not divisible by features.ae_segments='
                     f'{fc.ae_segments}; pick a divisor of {dim}')
  data = jnp.asarray(standardise(x[rows]))                                  # [n, D]
  model = FeatureAutoencoder(fc.ae_segments, fc.ae_hidden, code_dim, dim)
  # numpy, not jax.random: compiling threefry costs minutes on a loaded 2-core CPU.
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), data[:1])
  params = jax.tree_util.tree_map_with_path(lambda path, s: _init_array(path, s.shape, rng), shapes)
  batches = rng.integers(0, rows.size, (fc.ae_steps, fc.ae_batch_size), dtype=np.int32)
  tx = optax.adam(fc.ae_learning_rate)

  def loss_fn(p, batch):
    return jnp.mean((model.apply(p, batch)[1] - batch) ** 2)

  @jax.jit
  def train(p, opt, data, batches):
    def step(carry, idx):
      p, opt = carry
      batch = data[idx]                                                    # [batch, D]
      loss, grads = jax.value_and_grad(loss_fn)(p, batch)
      updates, opt = tx.update(grads, opt, p)
      return (optax.apply_updates(p, updates), opt), loss
    (p, opt), _ = jax.lax.scan(step, (p, opt), batches)
    return p, opt

  # The steps run as `chunks` equal scans (the same updates as one scan) so a bar can count them.
  chunks = max(c for c in range(1, 21) if fc.ae_steps % c == 0) if fc.ae_steps else 1
  opt_state = tx.init(params)
  with tqdm.tqdm(total=fc.ae_steps, desc=f'autoencoder {dim}->{code_dim}', unit='steps',
                 leave=False) as bar:
    for chunk in np.split(batches, chunks):
      params, opt_state = train(params, opt_state, data, chunk)
      jax.block_until_ready(params)
      bar.update(len(chunk))
  loss = jax.jit(loss_fn)(params, data)
  codes[rows] = np.asarray(jax.jit(lambda p, d: model.apply(p, d, method='encode'))(params, data))
  return codes, float(loss)


def _ocr_brand_exact(kg: kg_lib.KnowledgeGraph, texts: dict[str, str | None]) -> float | None:
  """Share of synthetic product images whose OCR text (ends stripped) equals the printed brand."""
  meta_path = os.path.join(kg.source, SYNTHETIC_META)
  if not kg.source or not os.path.exists(meta_path):
    return None
  with open(meta_path, encoding='utf-8') as f:
    printed = json.load(f).get('printed_text', {})
  names = [n for n in printed if n in texts]
  if not names:
    return None
  return sum((texts[n] or '').strip() == printed[n] for n in names) / len(names)


def build_features(kg: kg_lib.KnowledgeGraph, config: ml_collections.ConfigDict,
                   prepared_dir: str) -> dict[str, Any]:
  """Writes `prepared_dir/features.npz` (contracts.md) and returns the stage's stats.

  Args:
    kg: the knowledge graph; `kg.images` names each entity's image files.
    config: the full config (`config.seed`, `config.features`).
    prepared_dir: output folder; the OCR cache lives there too (`ocr_cache.jsonl`).

  Returns:
    Stats: images (entities with an image), images_unreadable (entities none of whose images is
    readable), image_files_unreadable (files that failed, also those a later image replaced),
    images_over_pixel_limit (files refused by size), images_fallback (entities read from a later
    image), images_unused (images after the one read), ocr_image_mismatch, ocr_nonempty,
    ocr_cache_hits, ocr_brand_exact (synthetic KG only), fig_ae_loss, ocr_ae_loss, vgg_weights,
    seconds per part.
  """
  with images_lib.pixel_limit(config.features.max_image_pixels):
    return _build_features(kg, config, prepared_dir)


def _build_features(kg: kg_lib.KnowledgeGraph, config: ml_collections.ConfigDict,
                    prepared_dir: str) -> dict[str, Any]:
  fc = config.features
  os.makedirs(prepared_dir, exist_ok=True)
  num = kg.num_entities
  listed = sorted((kg.entity_id(name), paths) for name, paths in kg.images.items() if paths)
  ids = np.asarray([i for i, _ in listed], np.int64)
  paths = [list(p) for _, p in listed]             # every image of an entity, tried in order
  timings = {}
  start = time.perf_counter()
  engine = ocr_lib.make_engine(fc.ocr_engine)
  cache = os.path.join(prepared_dir, OCR_CACHE_FILE)

  ocr_report, vgg_report = {}, {}

  def run_ocr():
    t = time.perf_counter()
    out = ocr_lib.run_ocr(paths, engine, cache, min_chars=fc.ocr_min_chars,
                          max_pixels=fc.max_image_pixels, report=ocr_report)
    timings['ocr_seconds'] = round(time.perf_counter() - t, 2)
    return out

  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    ocr_future = pool.submit(run_ocr)  # OCR on a second thread while VGG16 runs
    t = time.perf_counter()
    params, preprocess = vgg16_weights.load_or_init(fc.vgg_weights, config.seed)
    vectors, ok = vgg16.extract_features(paths, params, preprocess=preprocess, layer=fc.vgg_layer,
                                         batch_size=fc.batch_size, image_size=fc.vgg_image_size,
                                         max_pixels=fc.max_image_pixels, report=vgg_report)
    del params
    timings['vgg_seconds'] = round(time.perf_counter() - t, 2)
    texts, ocr_stats = ocr_future.result()
  image_vector = np.zeros((num, vectors.shape[1]), np.float32)
  image_present = np.zeros(num, bool)
  image_vector[ids], image_present[ids] = vectors, ok
  chosen = vgg_report.get('chosen', np.full(len(paths), -1))
  # OCR picks its image by the same rule; should the two ever differ, the text is not used.
  mismatch = int((ok & (ocr_report.get('chosen', chosen) != chosen)).sum())
  if mismatch:
    logging.warning('features: %d entities read by VGG16 and OCR from different images; their OCR '
                    'text is left out', mismatch)
  text = np.full(num, '', dtype=object)
  for i, t, good, same in zip(ids, texts, ok, ocr_report.get('chosen', chosen) == chosen):
    text[i] = (t or '') if good and same else ''
  ocr_present = image_present & (text != '')
  ocr_vector = text_vector.vectorise([t if p else None for t, p in zip(text, ocr_present)],
                                     fc.ocr_vector_dim, fc.ngram_min, fc.ngram_max)
  t = time.perf_counter()
  h_fig, fig_loss = reduce_features(image_vector, image_present, fc.fig_dim, fc, config.seed)
  h_ocr, ocr_loss = reduce_features(ocr_vector, ocr_present, fc.ocr_dim, fc, config.seed + 1)
  timings['ae_seconds'] = round(time.perf_counter() - t, 2)
  named = mentions.named_entities(kg.entities, kg.entity_text,
                                  [t if p else '' for t, p in zip(text, ocr_present)],
                                  fc.max_mentions)
  files.atomic_save_npz(os.path.join(prepared_dir, FEATURES_FILE), image_vector=image_vector,
                        image_present=image_present, ocr_text=text.astype(str),
                        ocr_vector=ocr_vector, ocr_present=ocr_present, h_fig=h_fig, h_ocr=h_ocr,
                        mentions=named)
  unreadable = int((~ok).sum())
  if unreadable:
    logging.warning('features: %d of %d entities have no readable image (presence False)',
                    unreadable, len(paths))
  fallback = int((chosen > 0).sum())
  unused = sum(len(p) - 1 - c for p, c in zip(paths, chosen) if c >= 0)
  if fallback:
    logging.warning('features: %d entities read from a later image, the earlier ones unreadable',
                    fallback)
  stats = {'images': len(paths), 'images_unreadable': unreadable,
           'image_files_unreadable': vgg_report.get('files_unreadable', 0),
           'images_over_pixel_limit': vgg_report.get('files_over_pixel_limit', 0),
           'images_fallback': fallback, 'images_unused': int(unused),
           'ocr_image_mismatch': mismatch,
           'ocr_nonempty': int(ocr_present.sum()),
           'ocr_naming_an_entity': int((named[:, :1] >= 0).sum()), 'ocr_cache_hits': ocr_stats['ocr_cache_hits'],
           'fig_ae_loss': fig_loss and round(fig_loss, 4),
           'ocr_ae_loss': ocr_loss and round(ocr_loss, 4),
           'vgg_weights': vgg16_weights.describe(fc.vgg_weights), **timings,
           'features_seconds': round(time.perf_counter() - start, 2)}
  exact = _ocr_brand_exact(kg, {kg.entities[i]: t for i, t in zip(ids, texts)})
  if exact is not None:
    stats['ocr_brand_exact'] = round(exact, 4)
  logging.info('features written to %s: %s', prepared_dir, stats)
  return stats
