"""Embedding baselines for link prediction: TransE, DistMult, ComplEx, RotatE and TuckER.

Every model scores a batch of queries `(head, relation)` against ALL entities at once (1-N scoring):

  scores = model.apply(variables, heads [B], relations [B], train=False)   # [B, E] logits

or, for negative sampling, against candidate entities only: `candidates=ids [K]` (shared by the
batch) gives `[B, K]`, `candidates=ids [B, K]` (one list per query) gives `[B, K]` too.

Relation ids run over `[0, 2R)`: the KG's inverse relations (`r + R`, see `imkga_jax.kg`) get their own
embedding, so a head query `(?, r, t)` is the tail query `(t, r + R, ?)` ("reciprocal relations",
Lacroix et al. 2018; Dettmers et al. 2018). `model.factors(heads, relations, tails)` returns the
per-coordinate moduli the N3 / L2 regularisers act on.

Example:
  >>> model = build_model('complex', num_entities=20, num_relations=4, dim=8)
  >>> variables = model.init(jax.random.key(0), jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.int32))
  >>> model.apply(variables, jnp.array([0, 1]), jnp.array([2, 3])).shape
  (2, 20)
"""
from __future__ import annotations

import math
from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Added under the square root of the L1 complex modulus so its gradient stays finite at 0.
_EPS = 1e-9


def _dot(queries: jax.Array, entities: jax.Array) -> jax.Array:
  """`[B, D]` x (`[E, D]` shared or `[B, E, D]` per query) -> `[B, E]` inner products."""
  if entities.ndim == 2:
    return queries @ entities.T
  return jnp.einsum('bd,bed->be', queries, entities)


def pairwise_distance(queries: Sequence[jax.Array], entities: Sequence[jax.Array],
                      p_norm: int) -> jax.Array:
  """Distance from every query to every entity, `[B, E]`.

  A vector is given by its parts (one real part, or the real and imaginary parts of a complex vector).
  `p_norm=2`: the Euclidean norm over all parts, computed with matrix products (memory `[B, E]`).
  `p_norm=1`: the sum over coordinates of the modulus of each coordinate (|x| for a real vector, the
  complex modulus for a complex one, as in TransE-L1 and RotatE); memory `[B, E, D]`.

  Args:
    queries: parts of the query vectors, each `[B, D]`.
    entities: parts of the entity vectors, each `[E, D]` (shared) or `[B, E, D]` (per query).
    p_norm: 1 or 2.

  Returns:
    `[B, E]` float distances.
  """
  if p_norm == 2:
    sq = sum(jnp.sum(q * q, -1)[:, None] - 2.0 * _dot(q, e) + jnp.sum(e * e, -1)
             for q, e in zip(queries, entities))  # [B, E]
    return jnp.sqrt(jnp.maximum(sq, 0.0) + _EPS)
  if p_norm == 1:
    if len(queries) == 1:
      return jnp.sum(jnp.abs(queries[0][:, None, :] - entities[0]), -1)  # [B, E]
    sq = sum((q[:, None, :] - e) ** 2 for q, e in zip(queries, entities))  # [B, E, D]
    return jnp.sum(jnp.sqrt(sq + _EPS), -1)  # [B, E]
  raise ValueError(f'baseline.p_norm must be 1 or 2, got {p_norm}')


def _uniform(scale: float):
  """Initialiser drawing uniformly from `[-scale, scale)`."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def _targets(entity: nn.Embed, candidates: jax.Array | None) -> jax.Array:
  """The whole entity table `[E, D]`, or the rows of `candidates` (`[K, D]` or `[B, K, D]`)."""
  return entity.embedding if candidates is None else entity(candidates)


class TransE(nn.Module):
  """TransE (Bordes et al. 2013): score = gamma - ||h + r - t||_p."""
  num_entities: int
  num_relations: int  # 2R, inverses included.
  dim: int
  gamma: float = 12.0
  p_norm: int = 1
  input_dropout: float = 0.0

  def setup(self):
    init = _uniform((self.gamma + 2.0) / self.dim)  # RotatE's "embedding range": distances ~ gamma.
    self.entity = nn.Embed(self.num_entities, self.dim, embedding_init=init)
    self.relation = nn.Embed(self.num_relations, self.dim, embedding_init=init)
    self.dropout = nn.Dropout(self.input_dropout)

  def __call__(self, heads: jax.Array, relations: jax.Array, train: bool = False,
               candidates: jax.Array | None = None) -> jax.Array:
    """Scores `[B, E]` (or `[B, K]` against `candidates`, `[K]` or `[B, K]` entity ids)."""
    query = self.dropout(self.entity(heads) + self.relation(relations), deterministic=not train)
    targets = _targets(self.entity, candidates)  # [E, D], [K, D] or [B, K, D]
    return self.gamma - pairwise_distance([query], [targets], self.p_norm)

  def factors(self, heads, relations, tails) -> tuple[jax.Array, ...]:
    return tuple(jnp.abs(x) for x in (self.entity(heads), self.relation(relations),
                                      self.entity(tails)))


class _Bilinear(nn.Module):
  """Fields and tables shared by the multiplicative models: `width * dim` entity/relation rows,
  normal(init_scale) initialisation, input dropout on the query (the score is `<query, t>`)."""
  num_entities: int
  num_relations: int  # 2R, inverses included.
  dim: int
  init_scale: float = 1e-3
  input_dropout: float = 0.0
  width: ClassVar[int] = 1  # real coordinates per embedding dimension

  def setup(self):
    init = nn.initializers.normal(self.init_scale)
    self.entity = nn.Embed(self.num_entities, self.width * self.dim, embedding_init=init)
    self.relation = nn.Embed(self.num_relations, self.width * self.dim, embedding_init=init)
    self.dropout = nn.Dropout(self.input_dropout)

  def score(self, query: jax.Array, train: bool, candidates: jax.Array | None) -> jax.Array:
    """`<dropout(query), t>` for every entity `[B, E]` or the candidates `[B, K]`."""
    query = self.dropout(query, deterministic=not train)
    return _dot(query, _targets(self.entity, candidates))


class DistMult(_Bilinear):
  """DistMult (Yang et al. 2015): score = <h, r, t>."""

  def __call__(self, heads, relations, train: bool = False, candidates=None):
    return self.score(self.entity(heads) * self.relation(relations), train, candidates)

  def factors(self, heads, relations, tails):
    return tuple(jnp.abs(x) for x in (self.entity(heads), self.relation(relations),
                                      self.entity(tails)))


def _complex_parts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`[..., 2D]` -> real `[..., D]`, imaginary `[..., D]`."""
  d = x.shape[-1] // 2
  return x[..., :d], x[..., d:]


def _modulus(x: jax.Array) -> jax.Array:
  re, im = _complex_parts(x)
  return jnp.sqrt(re * re + im * im + _EPS)


class ComplEx(_Bilinear):
  """ComplEx (Trouillon et al. 2016): score = Re(<h, r, conj(t)>); `dim` complex coordinates."""
  width: ClassVar[int] = 2  # real and imaginary parts

  def __call__(self, heads, relations, train: bool = False, candidates=None):
    h_re, h_im = _complex_parts(self.entity(heads))  # [B, D] each
    r_re, r_im = _complex_parts(self.relation(relations))
    query = jnp.concatenate([h_re * r_re - h_im * r_im, h_re * r_im + h_im * r_re], -1)  # [B, 2D]
    return self.score(query, train, candidates)  # Re(hr)t_re + Im(hr)t_im

  def factors(self, heads, relations, tails):
    return tuple(_modulus(x) for x in (self.entity(heads), self.relation(relations),
                                       self.entity(tails)))


class RotatE(nn.Module):
  """RotatE (Sun et al. 2019): score = gamma - ||h o r - t||, |r_i| = 1; `dim` complex coordinates."""
  num_entities: int
  num_relations: int
  dim: int
  gamma: float = 12.0
  p_norm: int = 1
  input_dropout: float = 0.0

  def setup(self):
    self.entity = nn.Embed(self.num_entities, 2 * self.dim,
                           embedding_init=_uniform((self.gamma + 2.0) / self.dim))
    self.phase = nn.Embed(self.num_relations, self.dim, embedding_init=_uniform(math.pi))
    self.dropout = nn.Dropout(self.input_dropout)

  def __call__(self, heads, relations, train: bool = False, candidates=None):
    h_re, h_im = _complex_parts(self.entity(heads))  # [B, D]
    phase = self.phase(relations)  # [B, D]
    r_re, r_im = jnp.cos(phase), jnp.sin(phase)
    q = jnp.concatenate([h_re * r_re - h_im * r_im, h_re * r_im + h_im * r_re], -1)  # [B, 2D]
    q_re, q_im = _complex_parts(self.dropout(q, deterministic=not train))
    e_re, e_im = _complex_parts(_targets(self.entity, candidates))  # [E or K, D]
    return self.gamma - pairwise_distance([q_re, q_im], [e_re, e_im], self.p_norm)

  def factors(self, heads, relations, tails):
    del relations  # Unit-modulus rotations are not regularised.
    return tuple(_modulus(x) for x in (self.entity(heads), self.entity(tails)))


class TuckER(nn.Module):
  """TuckER (Balažević et al. 2019): score = W x_1 h x_2 r x_3 t, with batch norm and dropouts."""
  num_entities: int
  num_relations: int
  dim: int
  relation_dim: int = 0  # 0 means `dim`.
  input_dropout: float = 0.2
  hidden_dropout1: float = 0.2
  hidden_dropout2: float = 0.3
  batch_norm: bool = True

  def setup(self):
    rdim = self.relation_dim or self.dim
    init = nn.initializers.xavier_normal()
    self.entity = nn.Embed(self.num_entities, self.dim, embedding_init=init)
    self.relation = nn.Embed(self.num_relations, rdim, embedding_init=init)
    self.core = self.param('core', _uniform(1.0), (rdim, self.dim, self.dim))
    if self.batch_norm:
      self.bn0 = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
      self.bn1 = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
    self.drop_in = nn.Dropout(self.input_dropout)
    self.drop1 = nn.Dropout(self.hidden_dropout1)
    self.drop2 = nn.Dropout(self.hidden_dropout2)

  def __call__(self, heads, relations, train: bool = False, candidates=None):
    x = self.entity(heads)  # [B, D]
    if self.batch_norm:
      x = self.bn0(x, use_running_average=not train)
    x = self.drop_in(x, deterministic=not train)
    w = jnp.einsum('br,rij->bij', self.relation(relations), self.core)  # [B, D, D]
    w = self.drop1(w, deterministic=not train)
    x = jnp.einsum('bi,bij->bj', x, w)  # [B, D]
    if self.batch_norm:
      x = self.bn1(x, use_running_average=not train)
    x = self.drop2(x, deterministic=not train)
    return _dot(x, _targets(self.entity, candidates))  # [B, E or K]

  def factors(self, heads, relations, tails):
    return tuple(jnp.abs(x) for x in (self.entity(heads), self.relation(relations),
                                      self.entity(tails)))


MODELS = {'transe': TransE, 'distmult': DistMult, 'complex': ComplEx, 'rotate': RotatE,
          'tucker': TuckER}


def build_model(name: str, num_entities: int, num_relations: int, dim: int,
                **hyper) -> nn.Module:
  """Builds one baseline by name.

  Args:
    name: 'transe', 'distmult', 'complex', 'rotate' or 'tucker'.
    num_entities: E.
    num_relations: number of relation ids the model embeds (2R with inverses).
    dim: embedding size (complex coordinates for ComplEx/RotatE, entity size for TuckER).
    **hyper: other fields of the model class (e.g. `gamma`, `p_norm`, `input_dropout`); a field the
      model does not have is an error.

  Returns:
    The flax module.
  """
  if name not in MODELS:
    raise ValueError(f'baseline.model must be one of {sorted(MODELS)}, got {name!r}')
  cls = MODELS[name]
  unknown = set(hyper) - set(cls.__dataclass_fields__)
  if unknown:
    raise ValueError(f'{cls.__name__} has no hyper-parameter(s) {sorted(unknown)}; known: '
                     f'{sorted(f for f in cls.__dataclass_fields__ if f not in ("parent", "name"))}')
  return cls(num_entities=num_entities, num_relations=num_relations, dim=dim, **hyper)
