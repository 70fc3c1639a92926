"""Benchmarks of the feature stage (issue 3); figures go to benchmarks/RESULTS.md.

  PYTHONPATH=. python benchmarks/features.py --what=vgg      # Flax VGG16 vs Keras VGG16 (JAX backend)
  PYTHONPATH=. python benchmarks/features.py --what=ocr      # rapidocr, our settings vs its defaults
  PYTHONPATH=. python benchmarks/features.py --what=prepare  # whole prepare of the synthetic default
  PYTHONPATH=. python benchmarks/features.py --what=probe    # what h_fig / h_ocr keep (after prepare)

Each prints one JSON line per measurement, with the load average (the dev box is shared).
"""
import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')

import numpy as np  # pylint: disable=g-import-not-at-top


def _emit(**record):
  record['loadavg_1m'] = round(os.getloadavg()[0], 2)
  print(json.dumps(record), flush=True)


def bench_vgg(batch: int, repeats: int) -> None:
  """Images/s at 224x224: jitted Flax VGG16 (f32, bf16) vs Keras predict_on_batch, same weights."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  from data_prep import vgg16, vgg16_weights  # pylint: disable=g-import-not-at-top
  keras_model = keras.applications.VGG16(weights=None, include_top=True)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'vgg16.weights.h5')
    keras_model.save_weights(path)
    params, preprocess = vgg16_weights.load_weights(path)
  x = np.random.RandomState(0).uniform(0, 255, (batch, 224, 224, 3)).astype(np.float32)
  x_keras = keras.applications.vgg16.preprocess_input(x.copy())
  device_params = jax.device_put(params)
  runners = {}
  for name, dtype in (('flax_f32', jnp.float32), ('flax_bf16', jnp.bfloat16)):
    model = vgg16.model_for(params, preprocess, dtype=dtype)
    fn = jax.jit(lambda p, x, model=model: model.apply({'params': p}, x)['predictions'])
    runners[name] = lambda fn=fn: fn(device_params, x).block_until_ready()
  runners['keras_predict_on_batch'] = lambda: keras_model.predict_on_batch(x_keras)
  for name, run in runners.items():                     # compile + warm up
    t = time.perf_counter()
    run()
    _emit(what='vgg_first_call', runner=name, seconds=round(time.perf_counter() - t, 2))
  times = {name: [] for name in runners}
  for _ in range(repeats):                               # interleaved, so load hits all alike
    for name, run in runners.items():
      t = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t)
  for name, ts in times.items():
    _emit(what='vgg_images_per_s', runner=name, batch=batch, repeats=repeats,
          images_per_s=round(batch / statistics.median(ts), 3),
          seconds_per_batch=[round(t, 2) for t in ts])
  ratio = statistics.median(times['keras_predict_on_batch']) / statistics.median(times['flax_f32'])
  _emit(what='vgg_speed_ratio_flax_f32_over_keras', ratio=round(ratio, 3))


def _synthetic(root: str) -> str:
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  if not os.path.exists(root):
    synthetic.generate(root, seed=0)
  return root


def bench_ocr(num: int, raw: str) -> None:
  """OCR images/s and exact brand reads on the first `num` synthetic product images."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from data_prep import ocr  # pylint: disable=g-import-not-at-top
  root = _synthetic(raw)
  with open(os.path.join(root, 'synthetic_meta.json'), encoding='utf-8') as f:
    printed = json.load(f)['printed_text']
  names = sorted(printed)[:num]
  images = [np.asarray(Image.open(os.path.join(root, 'OpenBG-IMG_images', n, 'main.jpg'))
                      .convert('RGB')) for n in names]
  settings = {'ours (det224, no cls, min_chars 2)': (dict(det_limit_side_len=224), 2),
              'ours, min_chars 1': (dict(det_limit_side_len=224), 1),
              'rapidocr defaults (det736, cls)': (dict(det_limit_side_len=736, use_cls=True), 1)}
  for label, (kwargs, min_chars) in settings.items():
    engine = ocr.RapidOcrEngine(**kwargs)
    engine.read_lines(images[0])                         # warm up
    t = time.perf_counter()
    texts = [ocr.ocr_text(engine.read_lines(img), min_chars) for img in images]
    seconds = time.perf_counter() - t
    exact = sum(t == printed[n] for t, n in zip(texts, names)) / len(names)
    _emit(what='ocr', setting=label, images=len(names), images_per_s=round(len(names) / seconds, 3),
          brand_exact=round(exact, 4))


def bench_prepare(workdir: str) -> None:
  """Wall time of `prepare` (synthetic → kg → features → trajectories) on configs/synthetic.py."""
  from configs import synthetic as synthetic_config  # pylint: disable=g-import-not-at-top
  from data_prep import prepare  # pylint: disable=g-import-not-at-top
  config = synthetic_config.get_config()
  shutil.rmtree(os.path.join(workdir, 'prepared'), ignore_errors=True)    # no OCR cache
  for run in ('fresh', 'rerun_features'):
    if run == 'rerun_features':                          # same OCR cache; VGG16 and AE again
      os.remove(os.path.join(workdir, 'prepared', prepare.FINGERPRINT_FILE))
    t = time.perf_counter()
    stats = prepare.prepare(config, workdir)
    keep = ('images', 'images_unreadable', 'ocr_nonempty', 'ocr_brand_exact', 'ocr_cache_hits',
            'vgg_seconds', 'ocr_seconds', 'ae_seconds', 'fig_ae_loss', 'ocr_ae_loss')
    _emit(what='prepare', run=run, wall_seconds=round(time.perf_counter() - t, 1),
          **{k: v for k, v in stats.items() if k in keep or k.startswith('seconds_')})


def _loo_1nn(x: np.ndarray, labels: np.ndarray) -> float:
  """Leave-one-out 1-nearest-neighbour accuracy on per-dimension standardised `x`."""
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  dist = ((x[:, None] - x[None]) ** 2).sum(-1)                          # [n, n]
  np.fill_diagonal(dist, np.inf)
  return float((labels[dist.argmin(1)] == labels).mean())


def bench_probe(workdir: str) -> None:
  """How well raw vectors and their Eq. 3-7 codes name colour/category (image) and brand (OCR)."""
  from imkga_jax import kg as kg_lib  # pylint: disable=g-import-not-at-top
  out = os.path.join(workdir, 'prepared')
  kg = kg_lib.KnowledgeGraph.load(out)
  with np.load(os.path.join(out, 'features.npz')) as z:
    f = dict(z)
  facts = {'colour': {}, 'category': {}, 'brand': {}}
  for split in ('train', 'valid', 'test'):
    for h, r, t in kg.split(split):
      if kg.relations[r] in facts:
        facts[kg.relations[r]][h] = t
  for relation, raw, code, present in (('colour', 'image_vector', 'h_fig', 'image_present'),
                                       ('category', 'image_vector', 'h_fig', 'image_present'),
                                       ('brand', 'ocr_vector', 'h_ocr', 'ocr_present')):
    ids = np.asarray([i for i in np.flatnonzero(f[present]) if i in facts[relation]])
    labels = np.asarray([facts[relation][i] for i in ids])
    _emit(what='probe_loo_1nn', relation=relation, entities=len(ids), classes=len(set(labels)),
          **{raw: round(_loo_1nn(f[raw][ids], labels), 3),
             code: round(_loo_1nn(f[code][ids], labels), 3)})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--what', choices=('vgg', 'ocr', 'prepare', 'probe'), required=True)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--ocr_images', type=int, default=100)
  parser.add_argument('--workdir', default='/tmp/imkga_features_bench')
  args = parser.parse_args()
  if args.what == 'vgg':
    bench_vgg(args.batch, args.repeats)
  elif args.what == 'ocr':
    bench_ocr(args.ocr_images, os.path.join(args.workdir, 'raw'))
  elif args.what == 'prepare':
    bench_prepare(args.workdir)
  else:
    bench_probe(args.workdir)


if __name__ == '__main__':
  main()
