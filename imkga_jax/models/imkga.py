"""IMKGA-SM: state/action tokens, three modality branches, tied output head (Eq. 13-15, 21-22).

A trajectory of L steps becomes 2L tokens `[C_0, a_0, C_1, a_1, …]`:

* the state token `C(R̂n, s) = Sigmoid(LN(W·[R̂n; emb(h); emb(r); h_fig; h_ocr] + b))`
  (Eq. 15) — one projection of the return-to-go, the query (head and relation
  token embeddings) and the entity features; with `query_product` (off by default) the projection
  also reads `LN(emb(h)) ⊙ LN(emb(r))`, the query's multiplicative interaction;
* the action token `Sigmoid(LN(emb(a_n)))` (Eq. 15 applies it to both kinds);
* both tokens of step n get position embedding n (Eq. 14); Mask II's
  `token_keep` zeroes token embeddings before the position is added; in training, dropout then
  hits every token (`embed_dropout='all'`, the default), every token but C_0 (`'except_first'`),
  the action tokens only (`'actions'`) or none (`'none'`) before the encoder.

**Initialisation.** The token embedding is Normal(`embed_std`) (0: 1/sqrt(emb_dim)), the ∅ feature
vectors Normal(`null_std`), every kernel Normal(0.02) (`encoder.kernel_init`), positions
Normal(0.02).

The encoder (Mask I causal attention, `encoder.py`) reads the output at C_n,
which predicts a_n: `logits[:, :, n]` depends only on `rtg[:, :n+1]` and
`actions[:, :n]`.

**Branches.** `fig` sees h_fig only, `ocr` h_ocr only, `concat` both; the
state vector always has both slots and a branch multiplies the slot it must not
see by 0 (so its weights there get no gradient). A modality whose presence flag
is False is replaced by that branch's learned ∅ vector (`null_fig`,
`null_ocr`) BEFORE the branch's slot mask. The three branches share the token
embedding; everything else of a branch (state projection, ∅ vectors, token
LayerNorms, position embedding, encoder stack) is its own, stacked on a leading
`'branch'` parameter axis by `nn.vmap`: one traced computation for all branches.

**Variants** (Table 3, `config.model.variant`): `no_img` (no features, no R̂,
one branch `('concat',)`), `mkg` (features, three branches, no R̂), `rl` (R̂, no
features, one branch), `mkg_rl` (all). "No R̂" and "no features" DROP those
inputs from the state projection (the input vector is shorter; the batch's
`rtg` / feature entries are ignored); they are not fed as zeros.

**Output head.** `logits_k = h_k · Eᵀ + c_k·b` with E the shared token embedding
(tied head) and b one shared output bias. Following Eq. 21-22 literally,
`c_k = 1/2` for the single-modal branches fig and ocr (the paper's b/2 "bias
compensation", from OGM-GE where unimodal logits are slices of one fused
classifier sharing b) and `c_concat = 1`. Each branch's encoder can absorb the
difference, so the halving only changes how strongly the token prior enters a
single-modal branch at initialisation.

**Logical axis names** of the parameters (read them with
`nn.get_partition_spec(variables)`): `'vocab'` (token axis of the embedding
and the output bias), `'embed'` (model width), `'mlp'` (FFN width), `'heads'`,
`'kv'` (per-head width), `'branch'` (leading axis of every branch parameter),
`'layers'` (leading axis, after 'branch', of every encoder-block parameter);
`None` for small axes never worth sharding (the state projection's input rows,
feature dims of the ∅ vectors, positions).

**dtype.** Parameters are float32; computation runs in `config.model.dtype`;
logits come back in that dtype (`losses.path_loss` upcasts to float32).

**Cached decoding** (`IMKGA.decode_step`): step n feeds only the two new tokens
`a_{n-1}` and `C(R̂n, s)` (just `C(R̂0, s)` at n = 0), keeps every earlier
token's keys and values in the flax `'cache'` collection (`encoder.py`), and
returns the logits at `C_n` for a contiguous token range only (a typed head: a
relation position never needs the entity logits). It equals
`model.apply(...)[:, :, n, lo:hi]` of the full sequence.

Example:
  >>> import jax
  >>> from configs import default
  >>> model = build_model(default.get_config(), num_tokens=50)
  >>> inputs = dummy_inputs(model.config, batch_size=2)
  >>> params = jax.jit(model.init)(jax.random.key(0), inputs)['params']
  >>> model.apply({'params': params}, inputs).shape   # [branch, batch, steps, vocab]
  (3, 2, 7, 50)
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imkga_jax import masks
from imkga_jax import prepared
from imkga_jax.models import encoder

VARIANTS = ('no_img', 'mkg', 'rl', 'mkg_rl')
EMBED_DROPOUT = ('all', 'except_first', 'actions', 'none')
FEATURE_BRANCHES = ('fig', 'ocr', 'concat')
# Which feature slots (fig, ocr) each branch sees.
_BRANCH_SLOTS = {'fig': (1.0, 0.0), 'ocr': (0.0, 1.0), 'concat': (1.0, 1.0)}
# Scale of the shared output bias per branch (Eq. 21-22: b/2 for single-modal branches).
_BIAS_SCALE = {'fig': 0.5, 'ocr': 0.5, 'concat': 1.0}
_POSITION_STD = 0.02
# Axis of the rows (batch) in every array of the decoding cache: [branch, layer, row, token, head, kv].
CACHE_ROW_AXIS = 2


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hashable hyper-parameters of `IMKGA` (see configs/default.py, section model)."""
  vocab_size: int
  num_steps: int = 7
  variant: str = 'mkg_rl'
  emb_dim: int = 256
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  dtype: str = 'float32'
  # Also feed LN(emb(h)) ⊙ LN(emb(r)) to the state projection (config.model.query_product).
  query_product: bool = False
  # Std of the token embedding's normal init; 0 = 1/sqrt(emb_dim) (config.model.embed_std).
  embed_std: float = 0.02
  # Std of the ∅ feature vectors' normal init (config.model.null_std).
  null_std: float = 1.0
  # Dropout on the token sequence before the encoder (config.model.embed_dropout): 'all' tokens,
  # all but C_0 ('except_first': the step-0 classifier reads its token whole), the 'actions' only
  # (every state token whole) or 'none'.
  embed_dropout: str = 'all'
  fig_dim: int = 8
  ocr_dim: int = 3
  # Entities named by the head's OCR text per query (`mentions` input; 0 = none read).
  max_mentions: int = 0
  # Run only this branch (decoding reads one branch; see `select_branch`). None = all branches.
  only_branch: str | None = None

  def __post_init__(self):
    if self.embed_dropout not in EMBED_DROPOUT:
      raise ValueError(f'ModelConfig: model.embed_dropout={self.embed_dropout!r} is not one of '
                       f'{EMBED_DROPOUT}.')
    if self.variant not in VARIANTS:
      raise ValueError(f'ModelConfig: model.variant={self.variant!r} is not one of {VARIANTS}.')
    if self.emb_dim % self.num_heads:
      raise ValueError(f'ModelConfig: model.emb_dim={self.emb_dim} is not divisible by '
                       f'model.num_heads={self.num_heads}.')
    if self.only_branch is not None and self.only_branch not in self.all_branches:
      raise ValueError(f'ModelConfig: only_branch={self.only_branch!r} is not a branch of variant '
                       f'{self.variant!r} {self.all_branches}.')
    if self.vocab_size < 5 or self.num_steps < 1:
      raise ValueError(f'ModelConfig: vocab_size={self.vocab_size} (needs >= 5: 4 specials + '
                       f'a token) or num_steps={self.num_steps} (needs >= 1) is invalid.')

  @property
  def embedding_std(self) -> float:
    """The token embedding's init std: `embed_std`, or 1/sqrt(emb_dim) when it is 0."""
    return self.embed_std if self.embed_std > 0 else self.emb_dim ** -0.5

  @property
  def use_rtg(self) -> bool:
    return self.variant in ('rl', 'mkg_rl')

  @property
  def use_features(self) -> bool:
    return self.variant in ('mkg', 'mkg_rl')

  @property
  def use_mentions(self) -> bool:
    return self.use_features and self.max_mentions > 0

  @property
  def branches(self) -> tuple[str, ...]:
    if self.only_branch is not None:
      return (self.only_branch,)
    return self.all_branches

  @property
  def all_branches(self) -> tuple[str, ...]:
    """The variant's branches, whatever `only_branch` says."""
    return FEATURE_BRANCHES if self.use_features else ('concat',)

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @classmethod
  def from_config(cls, config: Any, num_tokens: int) -> 'ModelConfig':
    """Reads config.model, config.features (dims) and config.trajectories (steps)."""
    m = config.model
    return cls(vocab_size=int(num_tokens), num_steps=2 * int(config.trajectories.max_hops) + 1,
               variant=m.variant, emb_dim=m.emb_dim, num_layers=m.num_layers,
               num_heads=m.num_heads, mlp_dim=m.mlp_dim, dropout_rate=m.dropout_rate,
               attention_dropout_rate=m.dropout_rate, dtype=m.dtype,
               query_product=m.query_product, embed_std=m.embed_std, null_std=m.null_std,
               embed_dropout=m.embed_dropout,
               fig_dim=config.features.fig_dim, ocr_dim=config.features.ocr_dim,
               max_mentions=config.features.max_mentions)


class Branch(nn.Module):
  """One branch: its state projection, ∅ vectors, token norms, positions and encoder.

  `IMKGA` vmaps it over the branch axis; `slots` (fig, ocr) is the only mapped input.
  """
  config: ModelConfig
  deterministic: bool = True
  # Cached decoding of step n (module docstring): `rtg` is [batch, 1] (R̂n) and `action_emb`
  # [batch, 1, embed] (a_{n-1}; [batch, 0, embed] at n = 0). None: whole sequences.
  decode_step: int | None = None

  @nn.compact
  def __call__(self, query: jax.Array, rtg: jax.Array, fig: jax.Array, ocr: jax.Array,
               fig_present: jax.Array, ocr_present: jax.Array, action_emb: jax.Array,
               token_keep: jax.Array, slots: jax.Array) -> jax.Array:
    """Returns the encoder output at the state tokens, [batch, steps, embed] ([batch, 1, embed]
    when decoding)."""
    cfg, dtype = self.config, self.config.compute_dtype
    batch, steps = rtg.shape
    parts = []  # pieces of the state vector, each [batch, steps, ·]
    if cfg.use_rtg:
      parts.append(rtg[..., None].astype(dtype))
    if cfg.query_product:  # the query's interaction: LN(emb(h)) ⊙ LN(emb(r))
      head, relation = jnp.split(query, 2, axis=-1)
      product = (encoder.layer_norm(dtype, 'ln_head')(head)
                 * encoder.layer_norm(dtype, 'ln_relation')(relation))
      query = jnp.concatenate([query, product], axis=-1)  # [B, 3E]
    parts.append(jnp.broadcast_to(query[:, None], (batch, steps, query.shape[-1])))
    if cfg.use_features:
      for name, feat, present, dim, slot in (('fig', fig, fig_present, cfg.fig_dim, slots[0]),
                                             ('ocr', ocr, ocr_present, cfg.ocr_dim, slots[1])):
        null = self.param(f'null_{name}', nn.with_logical_partitioning(
            nn.initializers.normal(cfg.null_std), (None,)), (dim,), jnp.float32)
        value = jnp.where(present[:, None], feat.astype(dtype), null.astype(dtype))  # [B, dim]
        value = value * slot.astype(dtype)
        parts.append(jnp.broadcast_to(value[:, None], (batch, steps, dim)))
    state = nn.Dense(cfg.emb_dim, dtype=dtype, param_dtype=jnp.float32,
                     kernel_init=encoder.kernel_init((None, 'embed')),
                     bias_init=encoder.zeros_init(('embed',)),
                     name='state_proj')(jnp.concatenate(parts, axis=-1))  # [B, L, E]
    state = nn.sigmoid(encoder.layer_norm(dtype, 'ln_state')(state))  # Eq. 15
    action = nn.sigmoid(encoder.layer_norm(dtype, 'ln_action')(action_emb))  # Eq. 15
    positions = self.param('position', nn.with_logical_partitioning(
        nn.initializers.normal(_POSITION_STD), (None, 'embed')), (cfg.num_steps, cfg.emb_dim),
        jnp.float32)
    n = self.decode_step
    if n is not None:  # the new tokens [a_{n-1}, C_n] (only C_0 at n = 0)
      x = jnp.concatenate([action, state], axis=1)  # [B, 1 or 2, E]
      x = x + positions[max(n - action.shape[1], 0):n + 1].astype(dtype)  # Eq. 14
      x = encoder.Encoder(cfg.num_layers, cfg.num_heads, cfg.mlp_dim, cfg.dropout_rate,
                          cfg.attention_dropout_rate, True, dtype, decode_pos=2 * n + 1 - x.shape[1],
                          max_tokens=2 * cfg.num_steps, name='encoder')(x, None)
      return x[:, -1:]  # [B, 1, E]: the output at C_n
    x = jnp.stack([state, action], axis=2).reshape(batch, 2 * steps, cfg.emb_dim)  # [B, 2L, E]
    x = x * token_keep[..., None].astype(dtype)  # Mask II
    x = x + jnp.repeat(positions[:steps], 2, axis=0).astype(dtype)  # Eq. 14: shared per step
    if cfg.embed_dropout != 'none':
      dropped = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)(x)
      if cfg.embed_dropout != 'all':  # keep C_0 whole ('except_first') or every C_n ('actions')
        token = jnp.arange(2 * steps)
        hit = token % 2 == 1 if cfg.embed_dropout == 'actions' else token > 0
        dropped = jnp.where(hit[None, :, None], dropped, x)
      x = dropped
    x = encoder.Encoder(cfg.num_layers, cfg.num_heads, cfg.mlp_dim, cfg.dropout_rate,
                        cfg.attention_dropout_rate, self.deterministic, dtype,
                        name='encoder')(x, masks.causal_mask(steps))  # Mask I
    return x[:, 0::2]  # [B, L, E]: outputs at C_0 … C_{L-1}


class IMKGA(nn.Module):
  """The IMKGA-SM sequence model; see the module docstring.

  Call: `model.apply({'params': p}, inputs, train=bool, rngs={'dropout': key})`
  with `inputs` a dict of `head_token [B]`, `relation_token [B]`,
  `actions [B, L]` (history; possibly Mask III'd), `rtg [B, L]` (R̂ variants),
  `fig [B, fig_dim]`, `ocr [B, ocr_dim]`, `fig_present [B]`, `ocr_present [B]`
  (feature variants), `mentions [B, M]` (the tokens of the entities the head's
  OCR text names, -1 after the last; feature variants with `max_mentions`),
  optional `token_keep [B, 2L] bool` (Mask II). Other keys
  are ignored. Returns logits `[num_branches, B, L, vocab]` in
  `model.branches` order; with `heads=((steps, (lo, hi)), …)` (a typed head,
  `grammar.head_groups`) a tuple of `[num_branches, B, len(steps), hi - lo]`,
  one per group: `logits[:, :, steps, lo:hi]` without the rest.
  """
  config: ModelConfig

  @property
  def branches(self) -> tuple[str, ...]:
    return self.config.branches

  @nn.compact
  def __call__(self, inputs: dict[str, Any], train: bool = False, decode_step: int | None = None,
               token_range: tuple[int, int] | None = None, output_step: int | None = None,
               heads: tuple[tuple[tuple[int, ...], tuple[int, int]], ...] | None = None
               ) -> jax.Array | tuple[jax.Array, ...]:
    cfg, dtype = self.config, self.config.compute_dtype
    if decode_step is None:
      _check_inputs(cfg, inputs)
    actions = jnp.asarray(inputs['actions'], jnp.int32)  # [B, L] ([B, 0 or 1] when decoding)
    batch = actions.shape[0]
    steps = 1 if decode_step is not None else actions.shape[1]
    table = self.param('token_embedding', nn.with_logical_partitioning(
        nn.initializers.normal(cfg.embedding_std), ('vocab', 'embed')),
        (cfg.vocab_size, cfg.emb_dim), jnp.float32).astype(dtype)  # [V, E]
    bias = self.param('output_bias', encoder.zeros_init(('vocab',)), (cfg.vocab_size,),
                      jnp.float32).astype(dtype)  # [V]
    query = jnp.concatenate([jnp.take(table, jnp.asarray(inputs['head_token']), axis=0),
                             jnp.take(table, jnp.asarray(inputs['relation_token']), axis=0)],
                            axis=-1)  # [B, 2E]
    action_emb = jnp.take(table, actions, axis=0)  # [B, L, E]

    def get(key: str, shape: tuple[int, ...], dt: Any, fill: Any = 0) -> jax.Array:
      # Inputs a variant does not use may be absent: a constant stands in (never read).
      return jnp.asarray(inputs[key], dt) if key in inputs else jnp.full(shape, fill, dt)

    rtg = get('rtg', (batch, steps), jnp.float32)
    fig, ocr = get('fig', (batch, cfg.fig_dim), dtype), get('ocr', (batch, cfg.ocr_dim), dtype)
    fig_present = get('fig_present', (batch,), jnp.bool_)
    ocr_present = get('ocr_present', (batch,), jnp.bool_)
    token_keep = get('token_keep', (batch, 2 * steps), jnp.bool_, fill=True)  # Mask II
    slots = jnp.asarray([_BRANCH_SLOTS[b] for b in cfg.branches], jnp.float32)  # [K, 2]

    branches = nn.vmap(
        Branch, variable_axes={'params': 0, 'cache': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(None,) * 8 + (0,), out_axes=0, axis_size=len(cfg.branches),
        metadata_params={nn.PARTITION_NAME: 'branch'})
    hidden = branches(cfg, deterministic=not train, decode_step=decode_step, name='branches')(
        query, rtg, fig, ocr, fig_present, ocr_present, action_emb, token_keep,
        slots)  # [K, B, L, E]
    if heads is not None:  # a typed head: each group of steps scores its token range only
      return tuple(self._head(hidden[:, :, list(steps)], table, bias, inputs, slots, rng,
                              steps[0] == 0) for steps, rng in heads)
    if output_step is not None:  # the head at one step only (uncached decoding)
      hidden = hidden[:, :, output_step:output_step + 1]  # [K, B, 1, E]
    current = decode_step if decode_step is not None else output_step
    return self._head(hidden, table, bias, inputs, slots,
                      token_range if token_range is not None else (0, cfg.vocab_size),
                      current in (None, 0))

  def _head(self, hidden: jax.Array, table: jax.Array, bias: jax.Array, inputs: dict[str, Any],
            slots: jax.Array, tokens: tuple[int, int], first_is_step0: bool) -> jax.Array:
    """Logits `[K, B, L', hi - lo]` of `hidden [K, B, L', E]` for tokens `lo … hi-1` (tied head);
    `first_is_step0`: `hidden[:, :, 0]` is the output at C_0 (it gets the mention evidence)."""
    lo, hi = tokens
    scale = jnp.asarray([_BIAS_SCALE[b] for b in self.config.branches], hidden.dtype)  # [K]
    logits = jnp.einsum('kble,ve->kblv', hidden, table[lo:hi])  # [K, B, L', hi - lo]
    logits = logits + scale[:, None, None, None] * bias[lo:hi]
    if self.config.use_mentions and first_is_step0:
      logits = logits.at[:, :, 0].add(self._mention_evidence(inputs, slots[:, 1], lo, hi))
    return logits

  def _mention_evidence(self, inputs: dict[str, Any], reads_ocr: jax.Array, lo: int, hi: int
                        ) -> jax.Array:
    """`[K, B, hi - lo]`: w_r at each entity the head's OCR text names (`mentions`,
    data_prep/mentions.py), added to the step-0 logits (the direct answer `t <eos>`); w is learnt
    per query relation from zero, on the branches that read the OCR text (`reads_ocr [K]`)."""
    cfg, dtype = self.config, self.config.compute_dtype
    weight = self.param('mention_weight', encoder.zeros_init(('vocab',)), (cfg.vocab_size,),
                        jnp.float32)  # indexed by the relation token
    named = jnp.asarray(inputs['mentions'], jnp.int32)  # [B, M] tokens, -1 = none
    batch = named.shape[0]
    inside = (named >= lo) & (named < hi)
    hits = jnp.zeros((batch, hi - lo), dtype).at[
        jnp.arange(batch)[:, None], jnp.where(inside, named - lo, hi - lo)].add(1.0, mode='drop')
    w = jnp.take(weight, jnp.asarray(inputs['relation_token']), axis=0).astype(dtype)  # [B]
    return reads_ocr.astype(dtype)[:, None, None] * (w[:, None] * hits)[None]

  def decode_step(self, inputs: dict[str, Any], step: int, token_range: tuple[int, int]
                  ) -> jax.Array:
    """Logits `[branches, B, hi - lo]` at `C_step` for tokens `lo … hi-1` (cached decoding).

    Call with `model.apply({'params': p, 'cache': c}, inputs, step, (lo, hi),
    method=IMKGA.decode_step, mutable=['cache'])` (no 'cache' at step 0: it is created).
    `inputs` holds the query context of `__call__` per row, `actions [B, 1]` = a_{step-1}
    (`[B, 0]` at step 0) and `rtg [B, 1]` = R̂_step. Steps must be fed in order 0, 1, …
    """
    return self(inputs, decode_step=step, token_range=token_range)[:, :, 0]


def select_branch(model: IMKGA, params: Any, branch: str) -> tuple[IMKGA, Any]:
  """A model that runs only `branch`, and the matching slice of `params` (works inside jit).

  Its output equals `model.apply({'params': params}, ...)[index of branch]` at a third of the cost
  for the three-branch variants; decoding uses it (`imkga_jax/decode.py`).
  """
  names = model.config.all_branches
  if branch not in names:
    raise ValueError(f'select_branch: {branch!r} is not one of the branches {names}')
  k = names.index(branch)
  single = IMKGA(dataclasses.replace(model.config, only_branch=branch))
  sliced = jax.tree_util.tree_map_with_path(
      lambda path, x: x[k:k + 1] if is_branch_stacked(path) else x, params)
  return single, sliced


def build_model(config: Any, num_tokens: int) -> IMKGA:
  """The model of `config` (config.model, features dims, trajectories.max_hops) over `num_tokens` tokens."""
  return IMKGA(ModelConfig.from_config(config, num_tokens))


def dummy_inputs(config: ModelConfig, batch_size: int = 1) -> dict[str, Any]:
  """Zero inputs of the right shapes and dtypes, for `init` / `jax.eval_shape`."""
  return prepared.dummy_inputs(config.num_steps, config.fig_dim, config.ocr_dim, batch_size,
                               config.max_mentions)


def _check_inputs(cfg: ModelConfig, inputs: dict[str, Any]) -> None:
  """Raises a ValueError naming what is missing or mis-shaped."""
  required = ['head_token', 'relation_token', 'actions']
  if cfg.use_rtg:
    required.append('rtg')
  if cfg.use_features:
    required += ['fig', 'ocr', 'fig_present', 'ocr_present']
  if cfg.use_mentions:
    required.append('mentions')
  missing = [k for k in required if k not in inputs]
  if missing:
    raise ValueError(f'IMKGA (variant {cfg.variant!r}): inputs lack {missing}; got '
                     f'{sorted(inputs)}. See imkga_jax/models/imkga.py IMKGA docstring.')
  batch, steps = jnp.shape(inputs['actions'])
  if steps > cfg.num_steps:
    raise ValueError(f'IMKGA: actions have {steps} steps but the model has position embeddings '
                     f'for {cfg.num_steps} (2*trajectories.max_hops+1); rebuild the model.')
  expect = {'head_token': (batch,), 'relation_token': (batch,), 'rtg': (batch, steps),
            'fig': (batch, cfg.fig_dim), 'ocr': (batch, cfg.ocr_dim), 'fig_present': (batch,),
            'ocr_present': (batch,), 'token_keep': (batch, 2 * steps),
            'mentions': (batch, cfg.max_mentions)}
  bad = {k: (tuple(jnp.shape(inputs[k])), v) for k, v in expect.items()
         if k in inputs and (k in required or k == 'token_keep')
         and tuple(jnp.shape(inputs[k])) != v}
  if bad:
    raise ValueError(f'IMKGA: inputs with wrong shapes {{key: (got, expected)}}: {bad}.')



def is_branch_stacked(path: tuple[Any, ...]) -> bool:
  """True when the key path of a params (or grads) leaf lies under 'branches' (leading branch axis).

  Args:
    path: a key path from `jax.tree_util.tree_flatten_with_path` over the `params`
      collection (or over a tree that contains it, e.g. `{'params': …}`).

  Returns:
    Whether axis 0 of that leaf indexes `model.branches`.
  """
  names = [getattr(k, 'key', getattr(k, 'name', None)) for k in path]
  return 'branches' in names
