"""Embedding baselines (imkga_jax/baselines): TransE, DistMult, ComplEx, RotatE, TuckER.

Pick the model, and optionally the dataset config to start from, after the colon:
`--config=configs/baselines.py:complex` (synthetic KG) or `--config=configs/baselines.py:tucker,umls`.

  python -m imkga_jax.baselines.train --config=configs/baselines.py:complex,umls \
      --workdir=/tmp/complex_umls

The defaults are one budget for every dataset (about a minute per model on UMLS on a 2-core CPU);
the per-model sections hold the usual settings of each model's paper, scaled down.
"""
import ml_collections

from configs import default
from configs import structure
from configs import synthetic

# Dataset configs the baselines start from (the same data and ranking priors as IMKGA-SM).
BASES = {'synthetic': synthetic.get_config, 'default': default.get_config,
         **{name: (lambda n=name: structure.get_config(n)) for name in structure.SIZES if name}}

# Per model: embedding size, training mode, loss and regularisation defaults, and the model's own
# hyper-parameters (fields of the flax module in imkga_jax/baselines/models.py).
MODEL_DEFAULTS = {
    'transe': dict(dim=100, training='1vsall', regularizer='none', reg_weight=0.0,
                   learning_rate=3e-3, label_smoothing=0.1,
                   hyper=dict(gamma=12.0, p_norm=1, input_dropout=0.0)),
    'distmult': dict(dim=200, training='1vsall', regularizer='n3', reg_weight=1e-2,
                     learning_rate=3e-3, label_smoothing=0.1,
                     hyper=dict(init_scale=1e-3, input_dropout=0.1)),
    'complex': dict(dim=100, training='1vsall', regularizer='n3', reg_weight=1e-2,
                    learning_rate=3e-3, label_smoothing=0.1,
                    hyper=dict(init_scale=1e-3, input_dropout=0.1)),
    'rotate': dict(dim=100, training='1vsall', regularizer='none', reg_weight=0.0,
                   learning_rate=3e-3, label_smoothing=0.1,
                   hyper=dict(gamma=12.0, p_norm=2, input_dropout=0.0)),
    'tucker': dict(dim=64, training='kvsall', regularizer='none', reg_weight=0.0,
                   learning_rate=1e-2, label_smoothing=0.1,
                   hyper=dict(relation_dim=64, input_dropout=0.2, hidden_dropout1=0.2,
                              hidden_dropout2=0.3, batch_norm=True)),
}

# Exceptions by dataset. The synthetic KG has ~2.9k entities and ~53k train examples with reciprocals:
# TransE's L1 distance to every entity costs [batch, E, dim] per step there, so it is trained with
# negative sampling as in its paper; TuckER's KvsAll BCE barely moves in 30 epochs there (mostly
# all-zero labels over 2.9k entities) while 1vsAll CE learns (benchmarks/RESULTS.md, baselines); and
# fewer epochs suffice.
BASE_OVERRIDES = {
    'synthetic': dict(num_epochs=30, eval_every=3, patience=4),
    ('transe', 'synthetic'): dict(training='negsample'),
    ('tucker', 'synthetic'): dict(training='1vsall'),
}


def get_config(arg: str = 'complex,synthetic') -> ml_collections.ConfigDict:
  """`arg` = 'MODEL' or 'MODEL,BASE' (BASE: synthetic (default), umls, kinship, wn18rr or default)."""
  parts = [p.strip() for p in arg.split(',')]
  model = parts[0]
  base = parts[1] if len(parts) > 1 else 'synthetic'
  if model not in MODEL_DEFAULTS or base not in BASES or len(parts) > 2:
    raise ValueError(f'configs/baselines.py: argument {arg!r} must be MODEL[,BASE] with MODEL in '
                     f'{sorted(MODEL_DEFAULTS)} and BASE in {sorted(BASES)}, e.g. "transe,umls"')
  # The base is left unchanged (same prepared data as IMKGA-SM); baselines read only vocab + triples.
  config = BASES[base]()
  d = MODEL_DEFAULTS[model]

  config.baseline = b = ml_collections.ConfigDict()
  # Which baseline: 'transe', 'distmult', 'complex', 'rotate' or 'tucker'.
  b.model = model
  # Embedding size (complex coordinates for ComplEx/RotatE, entity size for TuckER).
  b.dim = d['dim']
  # '1vsall': per train triple, softmax cross entropy over all entities; 'kvsall': per distinct
  # train query (h, r), binary cross entropy against all its train answers.
  b.training = d['training']
  # 'negsample': per train triple, self-adversarial loss against num_negatives random entities.
  # Negatives per train triple and the self-adversarial temperature alpha (0 = uniform weights).
  b.num_negatives = 64
  b.adversarial_temperature = 1.0
  # Share of the label mass spread uniformly over all entities (0 = none; 1vsall and kvsall).
  b.label_smoothing = d['label_smoothing']
  # Regulariser of the batch's embeddings: 'none', 'l2' or 'n3' (Lacroix et al. 2018), and its weight.
  b.regularizer = d['regularizer']
  b.reg_weight = d['reg_weight']
  # Adam learning rate.
  b.learning_rate = d['learning_rate']
  # Training examples per step (triples for 1vsall, queries for kvsall; reciprocals included).
  b.batch_size = 256
  # Passes over the training examples (the run may stop earlier, see patience).
  b.num_epochs = 200
  # Evaluate the validation MRR every this many epochs; the best evaluation is kept and tested.
  b.eval_every = 10
  # Stop after this many evaluations without a better validation MRR (0 = never stop early).
  b.patience = 5
  # Queries per scoring call during evaluation.
  b.eval_batch_size = 512
  # Final valid/test evaluation on this many triples per split (the seeded subset of
  # ranking.direction_queries, as decode.max_queries does for IMKGA-SM); -1 = all. Early stopping
  # always uses the whole valid split. The ranking priors are the dataset config's ranking.priors.
  b.max_queries = -1
  # Show a tqdm progress bar over epochs.
  b.progress_bar = True
  # Model-specific fields of the flax module (see imkga_jax/baselines/models.py).
  b.hyper = ml_collections.ConfigDict(d['hyper'])
  for key, value in {**BASE_OVERRIDES.get(base, {}), **BASE_OVERRIDES.get((model, base), {})}.items():
    b[key] = value
  return config
