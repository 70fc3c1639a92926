"""Does a trained IMKGA-SM model read the head's image? Teacher-forced checks and an exposure curve.

Two measurements behind benchmarks/RESULTS.md "Why the image-evidence relations lag":

* `--mode=probe --workdir=W`: the first decoding step of `(head, r, ?)` for the image-evidence
  relations (and sold_by as a structure reference), teacher-forced, on TRAIN and TEST triples whose head
  has an image: top-1 accuracy and MRR of the true answer among the answers of that relation (chance
  = 1 / their number), the spread of those logits across heads vs across answers, and how much they
  move when the heads' image/OCR features are shuffled. A model that reads the image shows TRAIN top-1
  far above chance and a large shuffle effect.
* `--mode=isolated --workdir=W`: the same model and `train.train_step`, trained from scratch on the
  direct trajectories `t <eos>` of one relation's train triples with an OCR/image vector (default
  brand), evaluated every 50 steps on them and on the relation's test triples (products never seen
  with that relation): how many exposures the image → answer mapping needs, and whether it
  generalises or memorises the head.

Usage (after the main job, `python launch.py --config=configs/synthetic.py --workdir=/tmp/mainjob`):
  python benchmarks/exposure.py --mode=probe --workdir=/tmp/mainjob
  python benchmarks/exposure.py --mode=isolated --workdir=/tmp/mainjob --relation=brand --steps=300
Config overrides of the run go after `--set` (e.g. `--set=trajectories.image_direct_repeat=8`).
"""
import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..')))

from configs import synthetic  # pylint: disable=g-import-not-at-top
from imkga_jax import checkpoints
from imkga_jax import kg as kg_lib
from imkga_jax import prepared as prepared_lib
from imkga_jax import rtg as rtg_lib
from imkga_jax import train
from imkga_jax.models import imkga

PROBE_RELATIONS = ('brand', 'colour', 'category', 'style', 'sold_by')
FEATURE_INPUTS = ('fig', 'ocr', 'fig_present', 'ocr_present')


def load(args):
  config = synthetic.get_config()
  for kv in args.set:
    key, value = kv.split('=', 1)
    section, name = key.split('.')
    config[section][name] = type(config[section][name])(value)
  prepared = os.path.join(args.workdir, 'prepared')
  kg = kg_lib.KnowledgeGraph.load(prepared)
  table = {k: jnp.asarray(v) for k, v in prepared_lib.load_features(
      prepared, kg.num_entities, config.features.fig_dim, config.features.ocr_dim,
      max_mentions=config.features.max_mentions, entity_offset=kg.space.entity_offset).items()}
  return config, kg, table


def step0_batch(kg, q, config, actions=None):
  """Model inputs of `(h, r)` rows `q`; actions all `<pad>` (only step 0 is read) unless given."""
  b, length = len(q), prepared_lib.config_sequence_length(config)
  r_good = rtg_lib.constants_from_config(config, kg.space).r_good
  return {'head_token': kg.space.entity_token(q[:, 0]).astype(np.int32),
          'relation_token': kg.space.relation_token(q[:, 1]).astype(np.int32),
          'actions': np.zeros((b, length), np.int32) if actions is None else actions,
          'rtg': np.full((b, length), r_good, np.float32),
          'target': q[:, 2].astype(np.int32), 'kind': np.ones(b, np.int32)}


def with_features(kg, table, batch):
  """The batch with each head's image/OCR features gathered (`prepared.head_features`)."""
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  return dict(batch, **prepared_lib.head_features(
      table, kg.space.token_to_entity(batch['head_token'])))


def step0_logits(model, params, inputs, answers_tok):
  """`[branches, B, A]` step-0 logits of model `inputs` restricted to the answer tokens."""
  logits = np.asarray(model.apply({'params': params}, inputs, train=False))  # [K, B, L, V]
  return logits[:, :, 0][:, :, answers_tok]


def accuracy(logits, q, kg, answers_tok):
  """Top-1 and MRR of the true answer among `answers_tok` (ties: optimistic) from `[B, A]` logits."""
  column = {t: i for i, t in enumerate(answers_tok)}
  true = logits[np.arange(len(q)), [column[t] for t in kg.space.entity_token(q[:, 2])]]
  rank = 1 + (logits > true[:, None]).sum(1)
  return float(np.mean(rank == 1)), float(np.mean(1.0 / rank))


def probe(args):
  config, kg, table = load(args)
  model, params, step = checkpoints.restore_params(config, args.workdir, kg)
  has_image = np.asarray(table['fig_present']) | np.asarray(table['ocr_present'])
  print(f'checkpoint step {step}; branch = the decoding branch ({config.decode.branch} or the only one)')
  print('| split | relation | n | answers | chance | top-1 | MRR | logit std over heads | '
        'over answers | change when features shuffled |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  rng = np.random.default_rng(0)
  names = tuple(model.branches)
  k = names.index(config.decode.branch) if config.decode.branch in names else 0
  every = np.concatenate([kg.split(s) for s in ('train', 'valid', 'test')])
  for split in ('train', 'test'):
    triples = kg.split(split)
    for rel in PROBE_RELATIONS:
      rid = kg.relations.index(rel)
      answers_tok = np.unique(kg.space.entity_token(every[every[:, 1] == rid][:, 2]))
      q = triples[(triples[:, 1] == rid) & has_image[triples[:, 0]]][:args.max_rows]
      if not len(q):
        continue
      inputs = with_features(kg, table, step0_batch(kg, q, config))
      base = step0_logits(model, params, inputs, answers_tok)[k]  # [B, A]
      top1, mrr = accuracy(base, q, kg, answers_tok)
      # Shuffle which head's image/OCR features each row sees (heads and relations unchanged).
      perm = rng.permutation(len(q))
      shuffled = {kk: v[perm] if kk in FEATURE_INPUTS else v for kk, v in inputs.items()}
      other = step0_logits(model, params, shuffled, answers_tok)[k]
      print(f'| {split} | {rel} | {len(q)} | {len(answers_tok)} | {1 / len(answers_tok):.3f} | '
            f'{top1:.3f} | {mrr:.3f} | {base.std(0).mean():.3f} | {base.std(1).mean():.3f} | '
            f'{np.abs(other - base).mean():.3f} |')


def isolated(args):
  config, kg, table = load(args)
  config.optim.warmup_steps = args.warmup
  config.train.num_steps = args.steps
  rid = kg.relations.index(args.relation)
  triples = kg.split('train')
  present = np.asarray(table['ocr_present'] | table['fig_present'])
  q = triples[(triples[:, 1] == rid) & present[triples[:, 0]]]
  held = kg.split('test')
  held = held[(held[:, 1] == rid) & present[held[:, 0]]]
  answers_tok = np.unique(kg.space.entity_token(np.concatenate([q, held])[:, 2]))
  model = imkga.build_model(config, kg.space.num_tokens)
  tx = train.make_optimizer(config, model.branches)
  params = model.init(jax.random.key(config.seed), imkga.dummy_inputs(model.config, 2), train=False)
  params = jax.tree.map(lambda x: getattr(x, 'value', x), params['params'],
                        is_leaf=lambda x: hasattr(x, 'value'))
  state = train.TrainState(step=jnp.asarray(0), params=params, opt_state=tx.init(params))
  step_fn = jax.jit(functools.partial(train.train_step, model=model, tx=tx, config=config,
                                      entity_offset=kg.space.entity_offset))

  def direct(rows):
    actions = np.zeros((len(rows), prepared_lib.config_sequence_length(config)), np.int32)
    actions[:, 0], actions[:, 1] = kg.space.entity_token(rows[:, 2]), kg_lib.EOS
    return step0_batch(kg, rows, config, actions)

  names = tuple(model.branches)
  k = names.index(config.decode.branch) if config.decode.branch in names else 0
  print(f'{args.relation}: {len(q)} train triples with an image, {len(answers_tok)} answers '
        f'(chance {1 / len(answers_tok):.3f}); batch {args.batch_size}, lr '
        f'{config.optim.learning_rate}, {args.warmup} warm-up steps')
  print(f'held out: the {len(held)} test triples of {args.relation} with an image (unseen products)')
  print('| step | exposures | train top-1 | train MRR | test top-1 | test MRR |')
  print('|---|---|---|---|---|---|')
  rng = np.random.default_rng(0)
  key = jax.random.key(config.seed + 1)
  for s in range(1, args.steps + 1):
    batch = direct(q[rng.integers(0, len(q), args.batch_size)])
    state, _ = step_fn(state, batch, table, jax.random.fold_in(key, s))
    if s % args.every == 0 or s == args.steps:
      logits = step0_logits(model, state.params, with_features(kg, table, direct(q)),
                            answers_tok)[k]
      top1, mrr = accuracy(logits, q, kg, answers_tok)
      logits = step0_logits(model, state.params, with_features(kg, table, direct(held)),
                            answers_tok)[k]
      test_top1, test_mrr = accuracy(logits, held, kg, answers_tok)
      print(f'| {s} | {s * args.batch_size:,} | {top1:.3f} | {mrr:.3f} | {test_top1:.3f} | '
            f'{test_mrr:.3f} |', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--mode', required=True, choices=('probe', 'isolated'))
  parser.add_argument('--workdir', required=True, help='a synthetic run (its prepared/ and checkpoints/)')
  parser.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                      help='config override the run was made with (repeatable)')
  parser.add_argument('--max_rows', type=int, default=400, help='probe: triples per split and relation')
  parser.add_argument('--relation', default='brand', help='isolated: the relation trained on')
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--warmup', type=int, default=20)
  parser.add_argument('--every', type=int, default=50)
  args = parser.parse_args()
  probe(args) if args.mode == 'probe' else isolated(args)


if __name__ == '__main__':
  main()
