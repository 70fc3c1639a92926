"""Pre-LN transformer encoder of IMKGA-SM (Eq. 16-19).

One block is `x += Dropout(MHA(LN(x), mask))` (Eq. 18) followed by
`x += Dropout(FFN(LN(x)))` (Eq. 19); the stack ends with a final LayerNorm.
The layers are one `nn.scan` over a leading `'layers'` parameter axis, so a
deep stack is traced and compiled once. The attention mask (Mask I, built by
`imkga_jax.masks.causal_mask`) is given by the caller.

The paper's Eq. 16 gives each input modality its own key/value projections;
here every modality is already fused into the one state token
C(R̂n, s) (see `imkga.py`), so one standard multi-head self-attention over the
interleaved sequence plays that role.

Logical axis names of the parameters (for `nn.get_partition_spec` and the
sharding rules of the training code):

* `'embed'`  model width (emb_dim);
* `'mlp'`    hidden width of the feed-forward block (mlp_dim);
* `'heads'`  attention heads;
* `'kv'`     per-head width (emb_dim // num_heads);
* `'layers'` the scanned layer axis (leading axis of every block parameter).

Parameters are float32; computation runs in `dtype`; the softmax of the
attention and the LayerNorm statistics are computed in float32.

**Cached decoding.** With `decode_pos=p` (a static int) the encoder reads only the
new tokens `x [batch, n, embed]`, which sit at positions `p … p+n-1` of the
sequence, and keeps the keys and values of every token seen so far in the flax
`'cache'` collection (`cached_key`, `cached_value`: `[batch, max_tokens, heads, kv]`
per layer; created on first use when the collection is mutable). Each new token
attends to the cached tokens before it and to the new ones up to itself, which
is exactly the causal mask of the full sequence, so the outputs equal those of
the full computation at the same positions.

Example:
  >>> import jax, jax.numpy as jnp
  >>> enc = Encoder(num_layers=2, num_heads=2, mlp_dim=16)
  >>> x = jnp.ones((1, 4, 8))                                  # [batch, tokens, embed]
  >>> mask = jnp.tril(jnp.ones((4, 4), bool))
  >>> params = enc.init(jax.random.key(0), x, mask)
  >>> enc.apply(params, x, mask).shape
  (1, 4, 8)
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

# Standard deviation of the normal initialiser of every kernel.
_KERNEL_STD = 0.02


def kernel_init(names: tuple[str | None, ...]) -> Any:
  """Normal(0.02) initialiser that tags the parameter with logical axis `names`."""
  return nn.with_logical_partitioning(nn.initializers.normal(_KERNEL_STD), names)


def zeros_init(names: tuple[str | None, ...]) -> Any:
  """Zeros initialiser that tags the parameter with logical axis `names`."""
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def layer_norm(dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
  """A LayerNorm whose scale and bias carry the logical axis name 'embed'."""
  return nn.LayerNorm(
      dtype=dtype, param_dtype=jnp.float32, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',)),
      bias_init=zeros_init(('embed',)))


class SelfAttention(nn.Module):
  """Multi-head self-attention (Eq. 16) with explicit, named projection kernels.

  Attributes:
    num_heads: number of heads; the width must be divisible by it.
    dropout_rate: dropout on the attention probabilities.
    deterministic: True disables dropout.
    dtype: computation dtype.
  """
  num_heads: int
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  # Cached decoding (module docstring): the position of x's first token, and the cache length.
  decode_pos: int | None = None
  max_tokens: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x: [batch, tokens, embed]; mask: bool broadcastable to [batch, heads, tokens, tokens]
    (ignored when decoding: the cache positions give the causal mask)."""
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f'encoder.SelfAttention: width {width} is not divisible by '
                       f'num_heads={self.num_heads}; change model.emb_dim or model.num_heads.')
    head_dim = width // self.num_heads
    shape_in = (width, self.num_heads, head_dim)

    def project(name: str) -> jax.Array:
      kernel = self.param(name, kernel_init(('embed', 'heads', 'kv')), shape_in, jnp.float32)
      bias = self.param(f'{name}_bias', zeros_init(('heads', 'kv')), shape_in[1:], jnp.float32)
      return (jnp.einsum('bte,ehd->bthd', x, kernel.astype(self.dtype))
              + bias.astype(self.dtype))  # [batch, tokens, heads, kv]

    query, key, value = project('query'), project('key'), project('value')
    if self.decode_pos is not None:
      key, value, mask = self._cached(key, value)
    query = query / jnp.sqrt(head_dim).astype(self.dtype)
    scores = jnp.einsum('bqhd,bkhd->bhqk', query, key).astype(jnp.float32)  # [b, h, q, k]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)  # [b, h, q, k]
    probs = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(probs)
    heads = jnp.einsum('bhqk,bkhd->bqhd', probs, value)  # [batch, tokens, heads, kv]
    out_kernel = self.param('out', kernel_init(('heads', 'kv', 'embed')),
                            (self.num_heads, head_dim, width), jnp.float32)
    out_bias = self.param('out_bias', zeros_init(('embed',)), (width,), jnp.float32)
    return (jnp.einsum('bqhd,hde->bqe', heads, out_kernel.astype(self.dtype))
            + out_bias.astype(self.dtype))  # [batch, tokens, embed]

  def _cached(self, key: jax.Array, value: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Writes the new keys/values at `decode_pos` into the cache; returns all cached keys and
    values `[batch, max_tokens, heads, kv]` and the causal mask `[new, max_tokens]`."""
    batch, new, heads, head_dim = key.shape
    pos = self.decode_pos
    if pos + new > self.max_tokens:
      raise ValueError(f'encoder.SelfAttention: decoding positions {pos}..{pos + new - 1} exceed '
                       f'the cache of {self.max_tokens} tokens')
    shape = (batch, self.max_tokens, heads, head_dim)
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, shape, key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, shape, value.dtype)
    cached_key.value = lax.dynamic_update_slice_in_dim(cached_key.value, key, pos, axis=1)
    cached_value.value = lax.dynamic_update_slice_in_dim(cached_value.value, value, pos, axis=1)
    query_pos = pos + jnp.arange(new)[:, None]  # [new, 1]
    mask = jnp.arange(self.max_tokens)[None, :] <= query_pos  # [new, max_tokens]
    return cached_key.value, cached_value.value, mask


class FeedForward(nn.Module):
  """Position-wise FFN `Dense(mlp) -> GELU -> Dropout -> Dense(embed)` of Eq. 19."""
  mlp_dim: int
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=kernel_init(('embed', 'mlp')), bias_init=zeros_init(('mlp',)),
                 name='wi')(x)  # [batch, tokens, mlp]
    y = nn.gelu(y)
    y = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(y)
    return nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init(('mlp', 'embed')), bias_init=zeros_init(('embed',)),
                    name='wo')(y)  # [batch, tokens, embed]


class EncoderBlock(nn.Module):
  """One pre-LN block (Eq. 18-19); `(x, mask) -> (x, None)` so `nn.scan` can stack it."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  decode_pos: int | None = None
  max_tokens: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, None]:
    drop = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)
    y = layer_norm(self.dtype, 'ln_attention')(x)
    y = SelfAttention(self.num_heads, self.attention_dropout_rate, self.deterministic,
                      self.dtype, self.decode_pos, self.max_tokens, name='attention')(y, mask)
    x = x + drop(y)  # Eq. 18
    y = layer_norm(self.dtype, 'ln_mlp')(x)
    y = FeedForward(self.mlp_dim, self.dropout_rate, self.deterministic, self.dtype,
                    name='mlp')(y)
    return x + drop(y), None  # Eq. 19


class Encoder(nn.Module):
  """`num_layers` pre-LN blocks scanned over a 'layers' parameter axis, then a final LayerNorm.

  Attributes:
    num_layers: number of blocks L.
    num_heads: attention heads per block.
    mlp_dim: hidden width of the feed-forward block.
    dropout_rate: dropout after attention and feed-forward (and inside the FFN).
    attention_dropout_rate: dropout on the attention probabilities.
    deterministic: True disables dropout.
    dtype: computation dtype.
    decode_pos: cached decoding (module docstring): position of x's first token; None = off.
    max_tokens: cache length (the longest sequence) when decoding.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  decode_pos: int | None = None
  max_tokens: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x: [batch, tokens, embed]; mask: bool [tokens, tokens] (or broadcastable; None when
    decoding). Returns [batch, tokens, embed]."""
    blocks = nn.scan(
        EncoderBlock, variable_axes={'params': 0, 'cache': 0},
        split_rngs={'params': True, 'dropout': True}, in_axes=(nn.broadcast,),
        length=self.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = blocks(self.num_heads, self.mlp_dim, self.dropout_rate,
                  self.attention_dropout_rate, self.deterministic, self.dtype,
                  self.decode_pos, self.max_tokens, name='blocks')(x, mask)
    return layer_norm(self.dtype, 'ln_final')(x)
