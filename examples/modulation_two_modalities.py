r"""Two-modality classifier with and without `modality_modulation` (OGM-GE).

Synthetic data: `classes` classes; each modality sees a class prototype plus
Gaussian noise. The `easy` modality's noise is small (alone it is almost
perfect), the `weak` modality's noise is large (alone it is far from perfect
but clearly learnable). Both go through their own small MLP encoder; a fused
linear classifier sits on the concatenated features.

Set-up of OGM-GE (Peng et al., CVPR 2022): ONLY the fused loss is
back-propagated; the unimodal logits are slices of the fused classifier,
`out_u = h_u · W_u + b / 2`, and only measure each modality. Their losses are
passed to the transform as `modality_losses` (lower = stronger). The encoders
are labelled by modality, the fused head is unlabelled.

Reported for each seed, with and without the transform:
  * weak/easy: unimodal test accuracy from the fused classifier's slices
    (OGM-GE's measure);
  * probe: test accuracy of a ridge-regression probe on the frozen weak
    encoder's features (how much the weak encoder itself learnt);
  * fused: test accuracy of the whole model.

Run:
  python examples/modulation_two_modalities.py --seeds=5 --optimizer=sgd
  python examples/modulation_two_modalities.py --seeds=5 --optimizer=adamw
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from imkga_jax.optim import modality_modulation

MODALITIES = ('easy', 'weak')


def make_data(seed: int, n: int, classes: int, dim: int, noise: dict[str, float]):
  """Returns ({modality: float32 [n, dim]}, int32 [n]) for one split."""
  protos = np.random.default_rng(1234).normal(size=(len(MODALITIES), classes, dim))
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, size=n)  # [n]
  x = {m: (protos[i][y] + noise[m] * rng.normal(size=(n, dim))).astype(np.float32)
       for i, m in enumerate(MODALITIES)}
  return x, y.astype(np.int32)


def init_params(key: jax.Array, dim: int, hidden: int, classes: int):
  ks = jax.random.split(key, 5)
  dense = lambda k, i, o: jax.random.normal(k, (i, o)) * jnp.sqrt(2.0 / i)
  return {
      'enc_easy': {'w1': dense(ks[0], dim, hidden), 'b1': jnp.zeros(hidden),
                   'w2': dense(ks[1], hidden, hidden), 'b2': jnp.zeros(hidden)},
      'enc_weak': {'w1': dense(ks[2], dim, hidden), 'b1': jnp.zeros(hidden),
                   'w2': dense(ks[3], hidden, hidden), 'b2': jnp.zeros(hidden)},
      'head': {'w': dense(ks[4], 2 * hidden, classes) * 0.5,
               'b': jnp.zeros(classes)},
  }


LABELS = {'enc_easy': 'easy', 'enc_weak': 'weak', 'head': None}


def encode(p, x):
  h = jax.nn.relu(x @ p['w1'] + p['b1'])  # [batch, hidden]
  return jax.nn.relu(h @ p['w2'] + p['b2'])  # [batch, hidden]


def forward(params, x):
  """Fused logits and the per-modality slice logits, each [batch, classes]."""
  h = {m: encode(params[f'enc_{m}'], x[m]) for m in MODALITIES}
  hidden = h['easy'].shape[-1]
  w, b = params['head']['w'], params['head']['b']
  fused = jnp.concatenate([h['easy'], h['weak']], -1) @ w + b
  uni = {'easy': h['easy'] @ w[:hidden] + b / 2,
         'weak': h['weak'] @ w[hidden:] + b / 2}
  return fused, uni, h


def xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_train(tx, modulate: bool, batch: int):
  """Returns a jitted `epoch(params, state, x, y, perm)` doing one epoch."""

  def step(carry, idx):
    params, state, x, y = carry
    xb = {m: x[m][idx] for m in MODALITIES}  # [batch, dim]
    yb = y[idx]  # [batch]

    def loss_fn(p):
      fused, uni, _ = forward(p, xb)
      return xent(fused, yb), uni

    (loss, uni), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    extra = {}
    if modulate:  # unimodal losses only measure: no gradient flows from them
      extra['modality_losses'] = {
          m: jax.lax.stop_gradient(xent(uni[m], yb)) for m in MODALITIES}
    updates, state = tx.update(grads, state, params, **extra)
    return (optax.apply_updates(params, updates), state, x, y), loss

  @jax.jit
  def epoch(params, state, x, y, perm):
    idx = perm[: perm.shape[0] // batch * batch].reshape(-1, batch)
    (params, state, _, _), losses = jax.lax.scan(step, (params, state, x, y), idx)
    return params, state, losses.mean()

  return epoch


def ridge_probe_acc(h_tr, y_tr, h_te, y_te, classes, lam=1e-2):
  """Accuracy of a closed-form ridge classifier on frozen features."""
  add1 = lambda h: np.concatenate([h, np.ones((h.shape[0], 1))], 1)
  a, t = add1(np.asarray(h_tr, np.float64)), np.eye(classes)[y_tr]
  w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ t)
  return float(((add1(np.asarray(h_te, np.float64)) @ w).argmax(1) == y_te).mean())


def run_one(seed: int, modulate: bool, args) -> dict[str, float]:
  noise = {'easy': args.easy_noise, 'weak': args.weak_noise}
  x_tr, y_tr = make_data(seed, args.train, args.classes, args.dim, noise)
  x_te, y_te = make_data(seed + 10_000, args.test, args.classes, args.dim, noise)
  if args.optimizer == 'sgd':
    base = optax.sgd(args.lr, momentum=0.9)
  else:
    base = optax.adamw(args.lr, weight_decay=1e-4)
  parts = [optax.clip_by_global_norm(args.clip), base]
  if modulate:
    parts.insert(0, modality_modulation(LABELS, args.alpha,
                                        noise_scale=args.noise_scale, seed=seed))
  tx = optax.chain(*parts)
  params = init_params(jax.random.PRNGKey(seed), args.dim, args.hidden,
                       args.classes)
  state = tx.init(params)
  epoch = make_train(tx, modulate, args.batch)
  rng = np.random.default_rng(seed)
  for _ in range(args.epochs):
    params, state, _ = epoch(params, state, x_tr, y_tr,
                             rng.permutation(args.train))
  fused, uni, h_te = forward(params, x_te)
  _, _, h_tr = forward(params, x_tr)
  acc = lambda logits: float((np.asarray(logits).argmax(-1) == y_te).mean())
  out = {'weak': acc(uni['weak']), 'easy': acc(uni['easy']),
         'probe': ridge_probe_acc(h_tr['weak'], y_tr, h_te['weak'], y_te,
                                  args.classes),
         'fused': acc(fused)}
  if modulate:
    out['coeff_easy'] = float(state[0].coefficients[0])  # sorted: easy, weak
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', type=int, default=5)
  parser.add_argument('--optimizer', choices=('sgd', 'adamw'), default='sgd')
  parser.add_argument('--lr', type=float, default=None,
                      help='default: 0.01 for sgd, 1e-3 for adamw')
  parser.add_argument('--alpha', type=float, default=0.6)
  parser.add_argument('--noise_scale', type=float, default=1.0,
                      help='0: OGM (no noise); 1: OGM-GE')
  parser.add_argument('--epochs', type=int, default=30)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--clip', type=float, default=5.0)
  parser.add_argument('--train', type=int, default=2048)
  parser.add_argument('--test', type=int, default=2048)
  parser.add_argument('--classes', type=int, default=10)
  parser.add_argument('--dim', type=int, default=16)
  parser.add_argument('--hidden', type=int, default=32)
  parser.add_argument('--easy_noise', type=float, default=0.3)
  parser.add_argument('--weak_noise', type=float, default=1.5)
  args = parser.parse_args()
  if args.lr is None:
    args.lr = 0.01 if args.optimizer == 'sgd' else 1e-3

  results = {False: [], True: []}
  for seed in range(args.seeds):
    for modulate in (False, True):
      t0 = time.time()
      r = run_one(seed, modulate, args)
      results[modulate].append(r)
      print(f'seed={seed} modulation={"on " if modulate else "off"} '
            + ' '.join(f'{k}={v:.4f}' for k, v in r.items())
            + f' ({time.time() - t0:.1f}s)', flush=True)
  print(f'\n{args.optimizer}, alpha={args.alpha}, noise_scale={args.noise_scale},'
        f' {args.seeds} seeds '
        '(mean ± std over seeds; test accuracy):')
  for key in ('weak', 'probe', 'easy', 'fused'):
    cells = []
    for modulate in (False, True):
      v = np.array([r[key] for r in results[modulate]])
      cells.append(f'{v.mean():.4f} ± {v.std():.4f}')
    wins = sum(on[key] > off[key] for on, off in zip(results[True], results[False]))
    print(f'  {key:5s}  without: {cells[0]}   with: {cells[1]}   '
          f'with > without in {wins}/{args.seeds} seeds')


if __name__ == '__main__':
  main()
