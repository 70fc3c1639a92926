"""On-the-fly per-modality gradient modulation (IMKGA-SM Eq. 26-28, OGM-GE).

A self-contained optax transform: it imports nothing from this project and can
be dropped into any multimodal model whose parameters can be labelled by
modality.

Reading of the paper (IMKGA-SM §3.5) and of OGM-GE (Peng et al., CVPR 2022):

* Eq. 26, ``ρ_ocr = L_ocr / L_fig``: the paper defines the ratio from the
  modalities' losses. A LOWER loss means a STRONGER modality, so the dominant
  modality is the one with the lowest loss and its ratio is
  ``ρ = L_other / L_dominant >= 1``. This matches OGM-GE, whose ratio is
  ``score_dominant / score_other`` with score = true-class softmax mass (higher
  = stronger); ``modality_scores`` accepts such scores directly.
* Eq. 27, ``coeff_u = 1 - tanh(α·relu(ρ_u))`` if ``ρ_u > 1`` else 1: only the
  dominant modality (the one whose ratio exceeds 1) is slowed down; every other
  modality keeps coefficient 1. The relu is a no-op there (ρ > 1) and is kept
  only to follow the formula. Note the jump at ρ = 1: equal losses give 1 for
  everyone, an infinitesimally stronger modality gets ``1 - tanh(α)``.
* Eq. 28, ``∇W ← ∇W·coeff_u + N(0, std(∇W) + 1e-8)``: the second argument of
  N is a standard deviation (OGM-GE: ``normal_(0, grad.std() + 1e-8)``),
  computed per parameter tensor BEFORE scaling; the paper's Σ is read as "for
  every tensor of the modality". The noise is added to every labelled tensor,
  including those of the modalities with coefficient 1 (OGM-GE does the same).
  We use the population std (ddof=0); torch's ``Tensor.std`` is unbiased, the
  difference is a factor sqrt(n/(n-1)), negligible for real tensors.
* OGM-GE applies all this only while ``start <= epoch <= end``; here the window
  is counted in update steps, ``start_step <= step <= end_step`` (both
  inclusive, step counted from 0); outside it the transform is the identity.

More than two modalities: the dominant modality is the one with the lowest
loss (every modality tied at the lowest loss is dominant); its ratio pairs it
with the MEAN loss of all the other modalities,
``ρ_m = mean_{k != m}(L_k) / L_m``; with scores, ``ρ_m = s_m / mean_{k != m}(s_k)``.
For two modalities both reduce exactly to Eq. 26 / OGM-GE.

The state keeps the dominant modality's ratio (a scalar) and the applied
coefficients, float32 [num_modalities] ordered by the SORTED modality labels,
e.g. ``('fig', 'ocr')``.

Stacked parameters. Models that stack the parameters of several branches on a
leading axis (one ``vmap``/``scan`` over branches, one traced computation) label
such a leaf with ``PerIndex(('fig', 'ocr', None))``: index i of axis 0 belongs
to the i-th label. Each labelled slice is then treated as a tensor of its own
(its own std and noise draw), exactly as if the branches were separate leaves.
One noise key is split off per labelled tensor, in leaf order, then index order.

Example:

  >>> import jax, jax.numpy as jnp, optax
  >>> from imkga_jax.optim import modality_modulation
  >>> params = {'fig': jnp.ones(3), 'ocr': jnp.ones(3), 'head': jnp.ones(2)}
  >>> labels = {'fig': 'fig', 'ocr': 'ocr', 'head': None}
  >>> tx = optax.chain(modality_modulation(labels, alpha=0.6),
  ...                  optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  >>> state = tx.init(params)
  >>> grads = jax.tree.map(jnp.ones_like, params)
  >>> updates, state = tx.update(
  ...     grads, state, params, modality_losses={'fig': 0.5, 'ocr': 1.0})
  >>> state[0].coefficients  # fig dominant: 1 - tanh(0.6 * 2.0); ocr: 1
  Array([0.16634539, 1.        ], dtype=float32)
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Labels = Any  # a pytree (prefix of params) of `str | None | PerIndex`
LabelsOrFn = Labels | Callable[[Any], Labels]

# Added to a std before it scales N(0, 1) (Eq. 28, OGM-GE).
_NOISE_EPS = 1e-8
# Guards the ratio's denominator against zero losses / scores.
_TINY = 1e-12


class PerIndex:
  """A label per index of a leaf's leading axis (module docstring: stacked parameters).

  Example:
    >>> PerIndex(('fig', 'ocr', None)).labels
    ('fig', 'ocr', None)
  """
  __slots__ = ('labels',)

  def __init__(self, labels: Sequence[str | None]):
    self.labels = tuple(labels)

  def __repr__(self) -> str:
    return f'PerIndex({self.labels!r})'


class ModalityModulationState(NamedTuple):
  """State of `modality_modulation`; every field is a small jit-friendly array.

  Attributes:
    count: int32 [], number of updates done so far (the next update's step).
    key: uint32 [2], PRNG key for the next update's noise.
    ratio: float32 [], ρ of the dominant modality at the last update
      (>= 1; 1 when all losses are equal). Logged for every update, also
      outside the active window.
    coefficients: float32 [num_modalities], the coefficients APPLIED at the
      last update (all 1 outside the active window), ordered by the sorted
      modality labels.
  """
  count: jax.Array
  key: jax.Array
  ratio: jax.Array
  coefficients: jax.Array


def _is_label_leaf(x: Any) -> bool:
  return x is None or isinstance(x, PerIndex)


def _names(label: Any) -> tuple[str | None, ...]:
  """The modality names a label leaf carries (one, or one per index)."""
  return label.labels if isinstance(label, PerIndex) else (label,)


def _unmatched(label_items: list[tuple[Any, Any]], tree: Any) -> list[str]:
  """'path=label' for each labelled node whose path prefixes no parameter."""
  param_paths = [jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(tree)[0]]
  out = []
  for path, label in label_items:
    prefix = jax.tree_util.keystr(path)
    if label is not None and not any(pp.startswith(prefix) for pp in param_paths):
      out.append(f'{prefix or "<root>"}={label!r}')
  return out


def _resolve_labels(param_labels: LabelsOrFn, tree: Any) -> Labels:
  return param_labels(tree) if callable(param_labels) else param_labels


def _leaf_labels(labels: Labels, tree: Any) -> list[str | None]:
  """One label per leaf of `tree` (labels may be a prefix of `tree`).

  Raises:
    ValueError: when a label is not a string or None, when a labelled node
      matches no parameter, or when the label tree does not fit `tree`.
  """
  label_items, label_def = jax.tree_util.tree_flatten_with_path(
      labels, is_leaf=_is_label_leaf)
  bad = [(jax.tree_util.keystr(p), l) for p, l in label_items
         if any(n is not None and not isinstance(n, str) for n in _names(l))]
  if bad:
    raise ValueError(f'modality_modulation: labels must be str or None (or PerIndex of them), got '
                     f'{bad[:5]}. Give each parameter (or subtree) a modality name or None.')
  try:
    subtrees = label_def.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
        'modality_modulation: the label tree does not match the parameter tree;'
        f' labels {_unmatched(label_items, tree)} match no parameter (labels: '
        f'{label_def}; params: {jax.tree.structure(tree)}). Give labels as a '
        'pytree with the structure of params (or a prefix of it), or as a '
        f'function of params. Original error: {e}') from e
  empty = [f'{jax.tree_util.keystr(p) or "<root>"}={l!r}'
           for (p, l), sub in zip(label_items, subtrees)
           if l is not None and not jax.tree.leaves(sub)]
  if empty:
    raise ValueError(f'modality_modulation: labels {empty} match no parameter (their subtree is '
                     'empty). Check the label tree (or label function) against params.')
  per_leaf = []
  for (path, label), sub in zip(label_items, subtrees):
    leaves = jax.tree.leaves(sub)
    if isinstance(label, PerIndex):
      wrong = [jnp.shape(x) for x in leaves
               if not jnp.ndim(x) or jnp.shape(x)[0] != len(label.labels)]
      if wrong:
        raise ValueError(
            f'modality_modulation: {jax.tree_util.keystr(path) or "<root>"}={label!r} has '
            f'{len(label.labels)} labels but its leaves have leading axes {wrong[:3]}; '
            'give one label per index of the stacked axis.')
    per_leaf.extend([label] * len(leaves))
  return per_leaf


def _labelled_slices(leaf_labels: Sequence[Any]) -> list[tuple[int, int | None, str]]:
  """`(leaf index, axis-0 index or None for the whole leaf, modality)` of every labelled tensor, in
  leaf order, then index order (the order noise keys are handed out)."""
  out = []
  for i, label in enumerate(leaf_labels):
    if isinstance(label, PerIndex):
      out.extend((i, j, name) for j, name in enumerate(label.labels) if name is not None)
    elif label is not None:
      out.append((i, None, label))
  return out


def _modalities(leaf_labels: Sequence[str | None],
                expected: Sequence[str] | None) -> tuple[str, ...]:
  """The sorted modality names; checks them against `expected` if given."""
  found = sorted({n for l in leaf_labels for n in _names(l) if n is not None})
  if expected is not None:
    unknown = sorted(set(found) - set(expected))
    if unknown:
      raise ValueError(f'modality_modulation: labels {unknown} are not among the declared '
                       f'modalities {sorted(expected)}. Add them to `modalities` or fix the labels.')
    missing = sorted(set(expected) - set(found))
    if missing:
      raise ValueError(f'modality_modulation: modalities {missing} match no parameter. Label at '
                       'least one parameter with each of them, or drop them from `modalities`.')
    found = sorted(expected)
  if len(found) < 2:
    raise ValueError(f'modality_modulation needs at least two modality labels, found {found}. '
                     'Label the parameters of each modality branch with its name.')
  return tuple(found)


def _stack_values(values: Mapping[str, Any], names: tuple[str, ...],
                  what: str) -> jax.Array:
  """Stacks one scalar per modality, in `names` order, as float32 [M]."""
  unknown = sorted(set(values) - set(names))
  missing = sorted(set(names) - set(values))
  if unknown or missing:
    raise ValueError(f'modality_modulation: {what} has unknown labels {unknown} and lacks labels '
                     f'{missing}; expected exactly one scalar for each of {list(names)}.')
  out = []
  for name in names:
    value = jnp.asarray(values[name], jnp.float32)
    if value.shape != ():
      raise ValueError(f'modality_modulation: {what}[{name!r}] must be a scalar, got shape '
                       f'{value.shape}. Reduce it (e.g. mean over the batch) first.')
    out.append(value)
  return jnp.stack(out)  # [M]


def _raw_key(key: jax.Array | None) -> jax.Array:
  """A uint32 [2] key (kept in the state) from a typed or raw key."""
  if key is None:
    return jax.random.PRNGKey(0)
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return jnp.asarray(key, jnp.uint32)


def modulation_coefficients(
    alpha: float,
    losses: jax.Array | None = None,
    scores: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Eq. 26-27 for M modalities; exactly one of `losses` / `scores` is given.

  Args:
    alpha: modulation strength α.
    losses: float [M], lower = stronger modality (positive values).
    scores: float [M], higher = stronger modality (positive values).

  Returns:
    `(ratio, coefficients)`: float32 [] the dominant modality's ρ, and
    float32 [M] the coefficients: `1 - tanh(α·relu(ρ_m))` for a dominant
    modality m with ρ_m > 1, else 1.
  """
  if (losses is None) == (scores is None):
    raise ValueError('modulation_coefficients: give exactly one of losses, scores.')
  values = losses if losses is not None else scores
  values = jnp.asarray(values, jnp.float32)  # [M]
  num = values.shape[0]
  # Mean of the OTHER modalities; a masked sum (not sum - self: no cancellation,
  # not a matmul: no reduced TPU matmul precision).
  is_other = ~jnp.eye(num, dtype=bool)  # [M, M]
  others_mean = jnp.where(is_other, values[None, :], 0.0).sum(1) / (num - 1)  # [M]
  if losses is not None:
    is_dominant = values == jnp.min(values)  # [M]
    ratios = others_mean / jnp.maximum(values, _TINY)  # [M]
  else:
    is_dominant = values == jnp.max(values)
    ratios = values / jnp.maximum(others_mean, _TINY)
  damp = is_dominant & (ratios > 1.0)
  # 1 - tanh(x) == 2·sigmoid(-2x), without float32 cancellation for large x.
  coefficients = jnp.where(
      damp, 2.0 * jax.nn.sigmoid(-2.0 * alpha * jax.nn.relu(ratios)), 1.0)
  ratio = jnp.max(jnp.where(is_dominant, ratios, -jnp.inf))
  return ratio, coefficients


def modality_modulation(
    param_labels: LabelsOrFn,
    alpha: float,
    noise_scale: float = 1.0,
    key: jax.Array | None = None,
    *,
    start_step: int = 0,
    end_step: int | None = None,
    modalities: Sequence[str] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Slows down the dominant modality and adds Gaussian noise (Eq. 26-28).

  Put it FIRST in the chain, so that it sees raw gradients:
  `optax.chain(modality_modulation(...), optax.clip_by_global_norm(c),
  optax.adamw(lr))`; `chain` forwards `modality_losses` to it, and the other
  members ignore it. See the module docstring for the exact reading of the
  paper and of OGM-GE.

  Args:
    param_labels: a pytree with the structure of params (or a prefix of it)
      whose leaves are a modality name (str), None, or `PerIndex` (one of
      those per index of the leaf's leading axis), or a function `params ->
      such a pytree`. Leaves (and slices) labelled None pass through unchanged.
    alpha: modulation strength α (OGM-GE default 0.1; IMKGA-SM best 0.6).
    noise_scale: multiplies the noise std `std(grad) + 1e-8`; 0 disables the
      noise (OGM instead of OGM-GE).
    key: the noise PRNG key kept in the state (`jax.random.key` or the raw
      `jax.random.PRNGKey`); None = `jax.random.PRNGKey(0)`.
    start_step: first update step (0-based, inclusive) that is modulated.
    end_step: last modulated step (inclusive); None or -1 means no end.
    modalities: optional declared modality names; then every label must be one
      of them and each of them must label at least one parameter.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose update is
    `update(updates, state, params=None, *, modality_losses=None,
    modality_scores=None)`; give exactly one of `modality_losses` (a mapping
    label -> scalar loss, lower = stronger, as in Eq. 26) or `modality_scores`
    (label -> scalar score, higher = stronger, e.g. OGM-GE's summed true-class
    softmax). Its state is a `ModalityModulationState`.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = modality_modulation({'a': 'audio', 'v': 'visual'}, alpha=0.1,
    ...                          noise_scale=0.0)
    >>> g = {'a': jnp.ones(2), 'v': jnp.ones(2)}
    >>> u, s = tx.update(g, tx.init(g), modality_losses={'audio': 1.0,
    ...                                                  'visual': 3.0})
    >>> u['a']  # audio dominant: ρ = 3, 1 - tanh(0.3)
    Array([0.7086874, 0.7086874], dtype=float32)
  """
  if end_step is not None and end_step != -1 and end_step < start_step:
    raise ValueError(
        f'modality_modulation: end_step={end_step} < start_step={start_step}; '
        'use end_step=None (or -1) for no end.')
  last_step = None if end_step is None or end_step == -1 else int(end_step)

  def init_fn(params: Any) -> ModalityModulationState:
    names = _modalities(_leaf_labels(_resolve_labels(param_labels, params),
                                     params), modalities)
    return ModalityModulationState(
        count=jnp.zeros([], jnp.int32),
        key=_raw_key(key),
        ratio=jnp.ones([], jnp.float32),
        coefficients=jnp.ones([len(names)], jnp.float32))

  def update_fn(updates: Any, state: ModalityModulationState,
                params: Any = None, *,
                modality_losses: Mapping[str, Any] | None = None,
                modality_scores: Mapping[str, Any] | None = None,
                **extra_args: Any) -> tuple[Any, ModalityModulationState]:
    del extra_args  # other members' extra args, forwarded by optax.chain
    tree = updates if params is None else params
    leaf_labels = _leaf_labels(_resolve_labels(param_labels, tree), updates)
    names = _modalities(leaf_labels, modalities)
    if len(names) != state.coefficients.shape[0]:
      raise ValueError(
          f'modality_modulation: the labels now give modalities {list(names)}, '
          f'but the state was built for {state.coefficients.shape[0]}. '
          'Re-initialise the optimiser state after changing the labels.')
    if (modality_losses is None) == (modality_scores is None):
      raise ValueError(
          'modality_modulation.update needs exactly one of modality_losses= or '
          f'modality_scores= (one scalar per label in {list(names)}); pass it '
          'as a keyword to tx.update (optax.chain forwards it).')
    if modality_losses is not None:
      ratio, coeffs = modulation_coefficients(
          alpha, losses=_stack_values(modality_losses, names, 'modality_losses'))
    else:
      ratio, coeffs = modulation_coefficients(
          alpha, scores=_stack_values(modality_scores, names, 'modality_scores'))

    active = state.count >= start_step
    if last_step is not None:
      active &= state.count <= last_step
    coeffs = jnp.where(active, coeffs, 1.0)  # [M]
    key, step_key = jax.random.split(state.key)

    leaves, treedef = jax.tree.flatten(updates)
    labelled = _labelled_slices(leaf_labels)
    slice_keys = jax.random.split(step_key, max(len(labelled), 1))
    out = list(leaves)
    for k, (i, j, name) in enumerate(labelled):
      g = leaves[i] if j is None else leaves[i][j]
      new = g * coeffs[names.index(name)].astype(g.dtype)
      if noise_scale:
        std = jnp.std(g.astype(jnp.float32)) + _NOISE_EPS  # before scaling
        noise = jax.random.normal(slice_keys[k], g.shape, jnp.float32)
        noise = jnp.where(active, noise_scale * std, 0.0) * noise
        new = new + noise.astype(g.dtype)
      out[i] = new if j is None else out[i].at[j].set(new)
    new_state = ModalityModulationState(
        count=optax.safe_increment(state.count), key=key,
        ratio=ratio, coefficients=coeffs)
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
