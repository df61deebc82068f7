"""A pre-norm ViT/DeiT in Flax linen with big_vision's parameter names.

Parameter tree (unscanned layout, depth L):

  embedding/{kernel,bias}            patch embedding (a strided conv)
  pos_embedding                      (1, tokens, width), only for posemb='learn'
  cls                                (1, 1, width), only for pool_type='tok'
  Transformer/encoderblock_{i}/      i = 0..L-1
      LayerNorm_0/{scale,bias}
      MultiHeadDotProductAttention_0/{query,key,value,out}/{kernel,bias}
      LayerNorm_1/{scale,bias}
      MlpBlock_0/{Dense_0,Dense_1}/{kernel,bias}
  Transformer/encoder_norm/{scale,bias}
  head/{kernel,bias}                 only when num_classes

With `scan=True` the blocks are one `Transformer/encoderblock/...` subtree
whose leaves carry a leading layer axis; `lgjax.models.blocks` converts
between the two layouts. Names match big_vision so checkpoints load there.

Sharded (FSDP) training traces the model inside `gathered_weights(sharding)`:
every module reads its params through that sharding constraint, so XLA gathers
each block's weights where the block runs (inside the scan body when scanned,
one layer at a time) and keeps the activations split over the batch.
Outside it the constraint is the identity.
"""

from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import dataclasses
import functools
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from lgjax.models import batched_kernels, blocks, gelu_mlp, inits, qkv_projection, residual_norm

POSEMBS = ('learn', 'sincos2d')
POOL_TYPES = ('gap', 'tok')
FINAL_NORMS = ('tokens', 'pooled')
ATTENTION_IMPLS = (None, 'xla', 'cudnn')  # jax.nn.dot_product_attention's `implementation`
# The fields naming a Pallas kernel: how residual adds and the LayerNorms after them run
# (residual_norm), the MLP's bias and GELU (gelu_mlp), the query's bias and dx's sum
# (qkv_projection). Each is None (XLA's ops) or 'pallas' (lgjax's kernel that fuses them).
KERNEL_IMPLS = ('norm_impl', 'mlp_impl', 'qkv_impl')
KERNEL_CHOICES = (None, 'pallas')
# What each block keeps for the backward pass (names in jax.checkpoint_policies); None: all.
REMAT_POLICIES = (None, 'nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable')


_WEIGHT_SHARDING = contextvars.ContextVar('lgjax_weight_sharding', default=None)
_EXAMPLE_IDS = contextvars.ContextVar('lgjax_example_ids', default=None)


@contextlib.contextmanager
def gathered_weights(sharding: jax.sharding.Sharding,
                     stored: Callable[[tuple[int, ...]], jax.sharding.Sharding] | None = None):
  """Within it, modules use their params as `sharding` (e.g. replicated over the mesh):
  the all-gather of FSDP, placed by XLA where each module runs. `stored(shape)`: where
  a param of that shape is kept (its shard); see as_used. Enter it inside a jitted
  function, around the model's apply, so that tracing sees it."""
  token = _WEIGHT_SHARDING.set((sharding, stored))
  try:
    yield
  finally:
    _WEIGHT_SHARDING.reset(token)


@contextlib.contextmanager
def draws_per_example(ids: jax.Array):
  """Within it, a model's dropout and drop-path draws for batch row i come from its key
  folded with ids[i] (e.g. the example's index in the dataset): the same whichever other
  examples share the batch, device or micro-batch. So a train step can run a random model
  on a whole batch at once, rather than vmap it one example at a time. Enter it inside
  jitted code, around the model's apply; `ids` is an int array of the batch's length."""
  token = _EXAMPLE_IDS.set(ids)
  try:
    yield
  finally:
    _EXAMPLE_IDS.reset(token)


def _bernoulli(key: jax.Array, p, shape) -> jax.Array:
  """Bernoulli(p) draws of `shape`, batch first: in one draw, or within draws_per_example
  one per row, from fold_in(key, id)."""
  ids = _EXAMPLE_IDS.get()
  if ids is None:
    return jax.random.bernoulli(key, p, shape)
  if ids.shape != tuple(shape[:1]):
    raise ValueError(f'draws_per_example: ids must be shaped (batch,) = {tuple(shape[:1])}, got {ids.shape}.')
  return jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i), p, shape[1:]))(ids)


class Dropout(nn.Dropout):
  """nn.Dropout (its name, key and numbers), drawing its mask per example within
  draws_per_example."""

  def __call__(self, inputs, deterministic: bool | None = None, rng=None):
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if deterministic or self.rate in (0.0, 1.0) or self.broadcast_dims or _EXAMPLE_IDS.get() is None:
      return super().__call__(inputs, deterministic, rng)
    keep = _bernoulli(self.make_rng(self.rng_collection) if rng is None else rng, 1.0 - self.rate, inputs.shape)
    return jax.lax.select(keep, inputs / (1.0 - self.rate), jnp.zeros_like(inputs))


def as_used(variables: Any, dtype: Any = None) -> Any:
  """`variables` as gathered_weights says a model uses them: for params read outside a
  ViT module (e.g. the Learngene Pool's width maps); themselves outside it.

  Each param is first pinned where it is stored, then gathered. Pinned, a kernel that
  the module casts to a narrower compute `dtype` (bfloat16) is cast on its shard, so the
  gather moves half the bytes (the module's own cast then does nothing: the same
  numbers), and the gradient is brought back to the shard, which XLA does as a
  reduce-scatter; unpinned, XLA:GPU gathered float32 kernels and all-reduced whole
  gradients (benchmarks/results/sharding_tpu.md)."""
  if _WEIGHT_SHARDING.get() is None:
    return variables
  sharding, stored = _WEIGHT_SHARDING.get()
  narrower = dtype is not None and jnp.dtype(dtype).itemsize

  def pinned(path, x):
    if narrower and narrower < x.dtype.itemsize and getattr(path[-1], 'key', None) == 'kernel':
      x = x.astype(dtype)
    return x if stored is None else jax.lax.with_sharding_constraint(x, stored(x.shape))

  return jax.lax.with_sharding_constraint(jax.tree_util.tree_map_with_path(pinned, variables), sharding)


def gathered(module_class: type[nn.Module], parent: nn.Module, dtype: Any = None) -> type[nn.Module]:
  """`module_class`, reading its params as gathered_weights says (same param names);
  `module_class` itself outside gathered_weights (no lifting cost in eager code).
  `dtype`: the module's compute dtype, to which it casts its kernels (as_used)."""
  if _WEIGHT_SHARDING.get() is None:
    return module_class
  return nn.map_variables(module_class, 'params', functools.partial(as_used, dtype=dtype),
                          init=parent.is_initializing())


def block_class(module_class: type[nn.Module], parent: nn.Module, remat_policy: str | None,
                scan: bool = False, dtype: Any = None) -> type[nn.Module]:
  """A block class as the encoder runs it: gathered (FSDP), then rematerialized under
  `remat_policy`, so that the backward pass recomputes each block's activations from its
  input, and gathers its weights again, instead of keeping them all from the forward
  pass (less memory for a second forward). Inside nn.scan, XLA cannot merge the
  recomputation into the forward (big_vision's prevent_cse=False there)."""
  module_class = gathered(module_class, parent, dtype)
  if remat_policy is None:
    return module_class
  return nn.remat(module_class, prevent_cse=not scan, static_argnums=(3,),  # self, x, rate, deterministic
                  policy=getattr(jax.checkpoint_policies, remat_policy))


def check_config(config: dict[str, Any]) -> None:
  """Raises a ValueError naming the first ViT field that cannot work."""
  unknown = set(config) - {f.name for f in dataclasses.fields(ViT)} - {'parent', 'name'}
  if unknown:
    raise ValueError(f'Unknown ViT field(s) {sorted(unknown)}; expected a subset of '
                     f'{sorted(f.name for f in dataclasses.fields(ViT) if f.name not in ("parent", "name"))}.')
  get = lambda k: config.get(k, getattr(ViT, k, None))
  if not isinstance(get('depth'), (int, np.integer)) or get('depth') < 1:
    raise ValueError(f'depth must be an integer >= 1, got {get("depth")!r}.')
  width, heads = get('width'), get('num_heads')
  if not isinstance(width, (int, np.integer)) or width < 1:
    raise ValueError(f'width must be an integer >= 1, got {width!r}.')
  if not isinstance(heads, (int, np.integer)) or heads < 1 or width % heads:
    raise ValueError(f'num_heads must be a positive divisor of width={width}, got {heads!r}.')
  def check_choice(*fields_and_choices):
    for k, choices in fields_and_choices:
      if get(k) not in choices:
        raise ValueError(f'{k} must be one of {choices}, got {get(k)!r}.')

  check_choice(('posemb', POSEMBS), ('pool_type', POOL_TYPES), ('final_norm', FINAL_NORMS))
  for k in ('dropout', 'drop_path'):
    if not 0.0 <= get(k) < 1.0:
      raise ValueError(f'{k} must be in [0, 1), got {get(k)!r}.')
  inits.get(get('param_init'))
  check_choice(('attention_impl', ATTENTION_IMPLS), ('remat_policy', REMAT_POLICIES),
               *((k, KERNEL_CHOICES) for k in KERNEL_IMPLS))
  for k in KERNEL_IMPLS:
    batched_kernels.check_available(k, get(k))
  for k in ('num_classes', 'mlp_dim'):
    if get(k) is not None and (isinstance(get(k), bool) or not isinstance(get(k), (int, np.integer))):
      raise ValueError(f'{k} must be an integer or None, got {get(k)!r}.')
  if get('mlp_dim') is not None and get('mlp_dim') < 1:
    raise ValueError(f'mlp_dim must be None (4 * width) or >= 1, got {get("mlp_dim")!r}.')


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0,
                     dtype=jnp.float32) -> jax.Array:
  """Fixed 2D sin-cos position embedding (MoCo v3 / big_vision), (1, h*w, width)."""
  if width % 4:
    raise ValueError(f'width must be divisible by 4 for posemb="sincos2d", got {width}.')
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1 or 1))
  y = np.einsum('m,d->md', y.flatten(), omega)
  x = np.einsum('m,d->md', x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return jnp.asarray(pe, dtype)[None]


def drop_path_rates(drop_path: float, depth: int) -> np.ndarray:
  """Per-block stochastic depth rates, rising linearly from 0 (DeiT's rule)."""
  return np.linspace(0.0, drop_path, depth) if depth > 1 else np.zeros(1)


class MultiHeadDotProductAttention(nn.Module):
  """Self-attention with Flax's parameter layout, via jax.nn.dot_product_attention.

  The key's and the value's biases cost no kernels: the key's adds the same q·b_k to
  every logit of a query, which softmax ignores, and the value's passes through the
  attention's weights (each row sums to 1) into the output projection, whose bias
  takes it (b_out + b_v·W_out). Same outputs and params; the key's bias has a zero
  gradient, as it has in exact arithmetic anyway. DenseGeneral makes the params
  (its init and names); the call applies them. With `out_bias=False` the call
  returns (output less that bias, the bias) for a caller that adds it in its own
  kernel (residual_norm). With `qkv_impl` 'pallas' the projections run as
  qkv_projection.project (the query's bias in its matmul, the input's three gradients
  summed in one): the same params and numbers.
  """
  num_heads: int
  param_init: str = inits.DEFAULT
  attention_impl: str | None = None
  dtype: Any = jnp.float32
  out_bias: bool = True
  qkv_impl: str | None = None

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    heads = (self.num_heads, width // self.num_heads)
    kernel_init = inits.get(self.param_init).kernel
    dense = lambda name, features, axis=-1: nn.DenseGeneral(
        features, axis=axis, dtype=self.dtype, name=name, kernel_init=kernel_init)
    if self.is_initializing():
      for name in ('query', 'key', 'value'):
        dense(name, heads)(x)
      dense('out', width, (-2, -1))(jnp.zeros(x.shape[:-1] + heads, x.dtype))
    p = self.variables['params']
    cast = lambda a: jnp.asarray(a, self.dtype)
    if self.qkv_impl is None:
      project = lambda name: jnp.einsum('...d,dhk->...hk', cast(x), cast(p[name]['kernel']))
      q, k, v = project('query') + cast(p['query']['bias']), project('key'), project('value')
    else:
      q, k, v = qkv_projection.project(cast(x), p['query']['kernel'], p['query']['bias'], p['key']['kernel'],
                                       p['value']['kernel'])
    y = jax.nn.dot_product_attention(q, k, v, implementation=self.attention_impl)
    bias = p['out']['bias'] + jnp.einsum('hk,hkd->d', p['value']['bias'], cast(p['out']['kernel']))
    y = jnp.einsum('...hk,hkd->...d', y, cast(p['out']['kernel']))
    return y + cast(bias) if self.out_bias else (y, bias)


# What the MLP keeps for its backward pass: its matmuls' outputs (the first before its bias)
# and the GELU's output, which the second matmul's gradient reads. Autodiff would also keep
# the GELU's tanh and write the biased pre-activation: two more (tokens, mlp_dim) tensors to
# write and read back, where recomputing them in the backward's fused kernel is free.
MLP_SAVED = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    jax.checkpoint_policies.save_only_these_names('mlp_gelu'))


class MlpBlock(nn.Module):
  """Dense, GELU, Dense. With `out_bias=False` it returns (output less the last Dense's
  bias, that bias), as MultiHeadDotProductAttention does."""
  mlp_dim: int
  dropout: float = 0.0
  gelu_approximate: bool = True
  param_init: str = inits.DEFAULT
  dtype: Any = jnp.float32
  out_bias: bool = True

  @functools.partial(nn.remat, policy=MLP_SAVED, static_argnums=(2,))  # self, x, deterministic
  @nn.compact
  def __call__(self, x, deterministic: bool):
    scheme = inits.get(self.param_init)
    kw = dict(kernel_init=scheme.kernel, bias_init=scheme.mlp_bias, dtype=self.dtype)
    width = x.shape[-1]
    x = nn.gelu(nn.Dense(self.mlp_dim, **kw)(x), approximate=self.gelu_approximate)
    x = checkpoint_name(x, 'mlp_gelu')
    x = Dropout(rate=self.dropout)(x, deterministic)
    out = nn.Dense(width, **kw, name='Dense_1')
    if self.out_bias:
      return out(x)
    if self.is_initializing():
      out(x)  # makes the params
    p = self.variables['params']['Dense_1']
    return jnp.einsum('...d,df->...f', x, jnp.asarray(p['kernel'], self.dtype)), p['bias']


class PallasMlpBlock(MlpBlock):
  """MlpBlock with the first Dense's bias and the GELU in the matmuls' epilogues on GPUs
  (gelu_mlp.mlp; its jnp formulas elsewhere): the same params and numbers, and the same
  two hidden tensors kept. No dropout between GELU and Dense_1: with dropout on,
  Encoder1DBlock runs MlpBlock instead."""

  @nn.compact
  def __call__(self, x, deterministic: bool):
    scheme = inits.get(self.param_init)
    kw = dict(kernel_init=scheme.kernel, bias_init=scheme.mlp_bias, dtype=self.dtype)
    if self.is_initializing():  # makes MlpBlock's params
      nn.Dense(x.shape[-1], **kw, name='Dense_1')(nn.Dense(self.mlp_dim, **kw, name='Dense_0')(x))
    p = self.variables['params']
    y = gelu_mlp.mlp(jnp.asarray(x, self.dtype), p['Dense_0']['kernel'], p['Dense_0']['bias'],
                     p['Dense_1']['kernel'], approximate=self.gelu_approximate)
    bias = p['Dense_1']['bias']
    return y + jnp.asarray(bias, self.dtype) if self.out_bias else (y, bias)


def _drop_path_mask(module: nn.Module, rate, shape) -> jax.Array:
  """Which examples keep their residual branch (probability 1 - `rate`), broadcastable to `shape`."""
  return _bernoulli(module.make_rng('dropout'), 1.0 - rate, (shape[0],) + (1,) * (len(shape) - 1))


def _drop_path(module: nn.Module, x, rate, deterministic: bool):
  """Drops the whole residual branch per example with probability `rate`."""
  if deterministic:
    return x
  return jnp.where(_drop_path_mask(module, rate, x.shape), x / (1.0 - rate), 0.0).astype(x.dtype)


class AddLayerNorm(nn.Module):
  """x + keep * (h + b), and the LayerNorm of that, in one kernel on GPUs
  (residual_norm.add_layer_norm): nn.LayerNorm's params (scale, bias), so that a
  checkpoint cannot tell which ran. Returns (the sum, its LayerNorm in `dtype`)."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, h, b, keep):
    width = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (width,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (width,), jnp.float32)
    return residual_norm.add_layer_norm(x, h, b, keep, scale, bias, epsilon=self.epsilon, dtype=self.dtype)


class Residual(NamedTuple):
  """The residual stream x + keep * (h + b), not yet added: a block with norm_impl leaves
  its MLP branch so, and the next LayerNorm adds it in its own kernel (AddLayerNorm)."""
  x: jax.Array
  h: jax.Array
  b: jax.Array
  keep: jax.Array | None

  @classmethod
  def of(cls, x, use_drop_path: bool) -> 'Residual':
    """x as a Residual with nothing to add (keep is ones where drop path draws one)."""
    keep = jnp.ones(x.shape[:1], jnp.float32) if use_drop_path else None
    return cls(x, jnp.zeros_like(x), jnp.zeros(x.shape[-1:], jnp.float32), keep)


def added(x: 'jax.Array | Residual') -> jax.Array:
  """The residual stream as an array: a Residual's add done by XLA (rounded as
  AddLayerNorm rounds it), an array itself."""
  return residual_norm.add(*x) if isinstance(x, Residual) else x


class Encoder1DBlock(nn.Module):
  """Pre-norm block: x + attn(LN(x)), then x + mlp(LN(x)). Sows both branches.

  With `norm_impl`, each residual add runs in the kernel of the LayerNorm after it
  (AddLayerNorm): the block takes and returns a Residual (an array is taken as one with
  nothing to add), so its MLP branch is added by the next block's first LayerNorm or
  the encoder's norm. Same params and numbers, rounded once per add instead of per op."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  use_drop_path: bool = False
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  param_init: str = inits.DEFAULT
  attention_impl: str | None = None
  norm_impl: str | None = None
  mlp_impl: str | None = None
  qkv_impl: str | None = None
  dtype: Any = jnp.float32
  # Under nn.scan, autodiff keeps what the scanned body's backward reads as stacked arrays,
  # XLA's fusions aside: each LayerNorm's float32 input, centred input and square, 1.7x an
  # unscanned step's temporaries. Rematerialized, a LayerNorm keeps only its input, which
  # the stream keeps anyway. (Unscanned, XLA's fusions do better without.)
  remat_norms: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x, drop_path_rate, deterministic: bool):
    no_drop_path = deterministic or not self.use_drop_path
    if self.norm_impl is not None:
      return self._fused(x, drop_path_rate, deterministic, no_drop_path)
    norm = nn.remat(nn.LayerNorm, policy=jax.checkpoint_policies.nothing_saveable) if self.remat_norms else nn.LayerNorm
    y = norm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, name='LayerNorm_0')(x)
    y = self._attention(y, deterministic)
    self.sow('intermediates', 'attn', y)
    y = Dropout(rate=self.dropout)(y, deterministic)
    x = x + _drop_path(self, y, drop_path_rate, no_drop_path)
    y = norm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, name='LayerNorm_1')(x)
    y = self._mlp(y, deterministic)
    y = Dropout(rate=self.dropout)(y, deterministic)
    x = x + _drop_path(self, y, drop_path_rate, no_drop_path)
    self.sow('intermediates', 'out', x)
    return x

  def _fused(self, x, drop_path_rate, deterministic, no_drop_path) -> Residual:
    """The lines above with each add and the LayerNorm after it as AddLayerNorm. The
    intermediates are sown as above, computed only where they are kept."""
    norm = lambda name, r: AddLayerNorm(self.layer_norm_epsilon, self.dtype, name=name)(*r)

    def branch(x, h, b):  # dropout, then drop path's per-example keep, not yet applied
      if self.dropout and not deterministic:
        h, b = Dropout(rate=self.dropout)(h + b.astype(h.dtype), deterministic), jnp.zeros_like(b)
      keep = None
      if not no_drop_path:
        mask = _drop_path_mask(self, drop_path_rate, x.shape[:1])
        keep = jnp.where(mask, 1.0 / (1.0 - drop_path_rate), 0.0).astype(jnp.float32)
      return Residual(x, h, jnp.asarray(b, jnp.float32), keep)  # one carry type, whatever the params' dtype

    x = x if isinstance(x, Residual) else Residual.of(x, not no_drop_path)
    x, y = norm('LayerNorm_0', x)
    h, b = self._attention(y, deterministic, out_bias=False)
    self.sow('intermediates', 'attn', h + b.astype(h.dtype))
    x, y = norm('LayerNorm_1', branch(x, h, b))
    h, b = self._mlp(y, deterministic, out_bias=False)
    x = branch(x, h, b)
    self.sow('intermediates', 'out', added(x))
    return x

  def _batched(self, deterministic: bool, dropout_inside: bool) -> bool:
    """Whether a kernel with a custom VJP may run: where the block draws no randomness or
    draws it per example in a batch (draws_per_example, the train step's batched loss).
    Otherwise a train step vmaps a per-example loss (step.py), and under vmap a custom
    VJP's weight gradients are made per example, then summed: (batch, width, mlp_dim)
    twice a block for the MLP. Nor where the kernel would skip a dropout inside it."""
    random = not deterministic and (self.dropout or self.use_drop_path)
    return not (random and ((self.dropout and dropout_inside) or _EXAMPLE_IDS.get() is None))

  def _attention(self, y, deterministic: bool, out_bias: bool = True):
    """MultiHeadDotProductAttention_0, its projections by qkv_impl where _batched."""
    qkv_impl = self.qkv_impl if self._batched(deterministic, dropout_inside=False) else None
    return MultiHeadDotProductAttention(self.num_heads, self.param_init, self.attention_impl, dtype=self.dtype,
                                        out_bias=out_bias, qkv_impl=qkv_impl)(y)

  def _mlp(self, y, deterministic: bool, out_bias: bool = True):
    """MlpBlock_0, as PallasMlpBlock with mlp_impl where _batched (XLA's MLP runs the
    dropout between its Dense layers)."""
    fused = self.mlp_impl is not None and self._batched(deterministic, dropout_inside=True)
    return (PallasMlpBlock if fused else MlpBlock)(
        self.mlp_dim, self.dropout, self.gelu_approximate, self.param_init, self.dtype, out_bias=out_bias,
        name='MlpBlock_0')(y, deterministic)


class _ScanBlock(Encoder1DBlock):
  """Scan body: carries x, takes the block's drop-path rate as scanned input."""
  remat_norms: ClassVar[bool] = True

  def __call__(self, x, drop_path_rate, deterministic: bool):
    return super().__call__(x, drop_path_rate, deterministic), None


class Encoder(nn.Module):
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  drop_path: float = 0.0
  scan: bool = False
  pool_type: str = 'gap'
  final_norm: str = 'tokens'
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  param_init: str = inits.DEFAULT
  attention_impl: str | None = None
  norm_impl: str | None = None
  mlp_impl: str | None = None
  qkv_impl: str | None = None
  remat_policy: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    """Tokens -> pooled representation (blocks, encoder_norm, pooling)."""
    rates = drop_path_rates(self.drop_path, self.depth)
    kw = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout=self.dropout,
              use_drop_path=self.drop_path > 0, gelu_approximate=self.gelu_approximate,
              layer_norm_epsilon=self.layer_norm_epsilon, param_init=self.param_init,
              attention_impl=self.attention_impl, norm_impl=self.norm_impl, mlp_impl=self.mlp_impl,
              qkv_impl=self.qkv_impl, dtype=self.dtype)
    if self.norm_impl is not None:  # the blocks pass a Residual on: one type in and out of the scan body
      x = Residual.of(x, self.drop_path > 0 and not deterministic)
    if self.scan:
      scanned = nn.scan(
          block_class(_ScanBlock, self, self.remat_policy, scan=True, dtype=self.dtype), variable_axes={'params': 0, 'intermediates': 0},
          split_rngs={'params': True, 'dropout': True},
          in_axes=(0, nn.broadcast), length=self.depth)
      x, _ = scanned(name=blocks.SCANNED, **kw)(x, jnp.asarray(rates, jnp.float32), deterministic)
    else:
      block = block_class(Encoder1DBlock, self, self.remat_policy, dtype=self.dtype)  # one lifted class for every layer
      for i in range(self.depth):
        x = block(name=blocks.block_name(i), **kw)(x, float(rates[i]), deterministic)
    if isinstance(x, Residual) and self.final_norm == 'tokens':  # the last add in the norm's kernel
      _, y = gathered(AddLayerNorm, self)(self.layer_norm_epsilon, name='encoder_norm')(*x)
      return norm_and_pool(y, lambda t: t, self.pool_type, self.final_norm)
    norm = gathered(nn.LayerNorm, self)(epsilon=self.layer_norm_epsilon, name='encoder_norm')
    return norm_and_pool(added(x), norm, self.pool_type, self.final_norm)


def embed(module: nn.Module, image, config) -> jax.Array:
  """Patch embedding, position embedding and cls token, as params of `module`
  (embedding, pos_embedding, cls). Called inside a compact method; `config`
  is anything with the ViT's fields (the ViT itself, or a stitched model's front)."""
  dtype = jnp.dtype(config.dtype)
  scheme = inits.get(config.param_init)
  ps = config.patch_size
  patch = tuple(ps) if isinstance(ps, Sequence) else (ps,) * 2
  fan_in = patch[0] * patch[1] * image.shape[-1]
  conv = gathered(nn.Conv, module, dtype)
  x = conv(config.width, patch, strides=patch, padding='VALID', name='embedding',
           kernel_init=scheme.patch_kernel, bias_init=scheme.patch_bias(fan_in),
           dtype=dtype, parent=module)(jnp.asarray(image, dtype))
  n, h, w, c = x.shape
  x = x.reshape(n, h * w, c)
  if config.posemb == 'learn':
    pos = as_used(module.param('pos_embedding', scheme.pos_embedding, (1, h * w, c), jnp.float32))
  else:
    pos = posemb_sincos_2d(h, w, c)
  x = x + pos.astype(dtype)
  if config.pool_type == 'tok':
    cls = as_used(module.param('cls', scheme.cls, (1, 1, c), jnp.float32))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (n, 1, c)), x], axis=1)
  return x


def norm_and_pool(x, norm: nn.Module, pool_type: str, final_norm: str):
  """Tokens -> one vector: LayerNorm then pool ('tokens'), or pool then LayerNorm ('pooled')."""
  pool = lambda t: t[:, 0] if pool_type == 'tok' else jnp.mean(t, axis=1)
  return norm(pool(x)) if final_norm == 'pooled' else pool(norm(x))


class ViT(nn.Module):
  """Pre-norm Vision Transformer; fields and parameter names follow big_vision.

  `num_classes` None or 0 drops the head (the output is the pooled feature).
  `pool_type` 'gap' averages tokens (TLEG's default, no cls token); 'tok'
  prepends a learned `cls` token and reads it out. `drop_path` is the largest
  stochastic-depth rate (linear over depth as in DeiT). `scan` runs the blocks
  with `nn.scan` so compile time stays flat in depth; its blocks rematerialize
  their LayerNorms, so that it keeps about what an unscanned model keeps.

  Fields that let lgjax compute what other codebases' ViTs compute (defaults
  are big_vision's): `gelu_approximate` (False: timm's exact-erf GELU),
  `layer_norm_epsilon`, `final_norm` ('tokens': LayerNorm every token, then
  pool; 'pooled': pool, then LayerNorm, as timm's fc_norm with avg pooling).

  `param_init` names how params start (`lgjax.models.inits`): 'deit', the
  learngene papers' trunc-normal(0.02), 'torch' or 'big_vision'. The head
  starts as the scheme says unless `head_zeroinit` (big_vision's default,
  not ours: with Adam, a zero head lets an inherited body drift for the
  first steps, before the head knows the classes; benchmarks/transfer.py).
  `attention_impl` picks jax.nn.dot_product_attention's kernel: None (JAX's
  choice, XLA today), 'xla', or 'cudnn' (fused, GPU only, bf16/fp16).
  `norm_impl` 'pallas' runs each residual add and the LayerNorm after it
  (the next block's first, or encoder_norm) as one Pallas kernel on GPUs
  (`lgjax.models.residual_norm`; the same formulas in jnp elsewhere), where
  XLA makes three kernels each way; None: XLA's ops. The blocks then hand
  each other the stream with its last add pending (`Residual`), so a
  remat_policy keeps two (tokens, width) tensors per block, not one.
  `mlp_impl` 'pallas' runs the MLP's first bias and GELU in its matmuls'
  epilogues on GPUs, forward and backward (`lgjax.models.gelu_mlp`; jnp
  elsewhere), where XLA makes them a kernel each way; None: XLA's ops.
  In training with dropout, or with drop path unless its draws are per
  example in the batch (`draws_per_example`, as the train step's loss runs
  it), the blocks run XLA's MLP: vmapped one example at a time, the
  kernels' weight gradients would be per example. `qkv_impl` 'pallas' adds
  the query's bias in its matmul's epilogue and sums the attention input's
  three gradients in one matmul (`lgjax.models.qkv_projection`; jnp
  elsewhere), where XLA makes each a kernel of its own; like mlp_impl, not in
  a vmapped per-example loss. Under a remat_policy other
  than None the kernels' outputs count as not dots: they are recomputed.
  `remat_policy` (None: keep every activation for the backward pass) names a
  jax.checkpoint_policies policy each block is rematerialized under:
  'nothing_saveable' keeps only each block's input (the least memory, about
  a third more compute), 'dots_saveable' keeps the matmul outputs. The params
  and the numbers are the same; only memory and time change. Whatever the
  policy, MlpBlock keeps what MLP_SAVED says, and in bfloat16 the blocks'
  LayerNorms output bfloat16 (float32 statistics): what the next matmul reads
  anyway, at half the bytes of float32 written and read back.
  """
  num_classes: int | None = None
  patch_size: int | Sequence[int] = 16
  width: int = 768
  depth: int = 12
  mlp_dim: int | None = None
  num_heads: int = 12
  posemb: str = 'learn'
  pool_type: str = 'gap'
  dropout: float = 0.0
  drop_path: float = 0.0
  scan: bool = False
  head_zeroinit: bool = False
  gelu_approximate: bool = True
  layer_norm_epsilon: float = 1e-6
  final_norm: str = 'tokens'
  param_init: str = inits.DEFAULT
  attention_impl: str | None = None
  norm_impl: str | None = None
  mlp_impl: str | None = None
  qkv_impl: str | None = None
  remat_policy: str | None = None
  dtype: Any = 'float32'

  def __post_init__(self):
    check_config({f.name: getattr(self, f.name) for f in dataclasses.fields(ViT)
                  if f.name not in ('parent', 'name')})
    super().__post_init__()

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    dtype = jnp.dtype(self.dtype)
    x = embed(self, image, self)
    x = Dropout(rate=self.dropout)(x, not train)
    x = Encoder(depth=self.depth, num_heads=self.num_heads,
                mlp_dim=self.mlp_dim or 4 * self.width, dropout=self.dropout,
                drop_path=self.drop_path, scan=self.scan, pool_type=self.pool_type,
                final_norm=self.final_norm, gelu_approximate=self.gelu_approximate,
                layer_norm_epsilon=self.layer_norm_epsilon, param_init=self.param_init,
                attention_impl=self.attention_impl, norm_impl=self.norm_impl,
                mlp_impl=self.mlp_impl, qkv_impl=self.qkv_impl, remat_policy=self.remat_policy, dtype=dtype,
                name='Transformer')(x, not train)
    if self.num_classes:
      head_init = nn.initializers.zeros if self.head_zeroinit else inits.get(self.param_init).head_kernel
      x = gathered(nn.Dense, self)(self.num_classes, name='head', kernel_init=head_init)(x)
    return x.astype(jnp.float32)


def with_block_outputs(model: ViT, params: Any, images, **apply_kwargs) -> tuple[jax.Array, dict[str, list]]:
  """(logits, {'out': [block output, ...], 'attn': [attention branch, ...]}), in depth
  order, each (batch, tokens, width): the one way to read a ViT's blocks' outputs.
  Scanned or not, the model runs unscanned so that every block is reported."""
  model = model.clone(scan=False)
  logits, state = model.apply({'params': blocks.to_unscanned(params)}, images,
                              mutable=['intermediates'], **apply_kwargs)
  inter = state['intermediates']['Transformer']
  names = [blocks.block_name(i) for i in range(model.depth)]
  return logits, {key: [inter[n][key][0] for n in names] for key in ('out', 'attn')}


_RUNTIME = ('parent', 'name', 'dtype')  # ViT fields that are not the architecture


class _ConfigMapping(collections.abc.Mapping):
  """What ViTConfig adds to its fields: validation, resolved defaults, and dict behaviour."""

  def __post_init__(self):
    check_config(dict(self._fields()))
    if self.mlp_dim is None:  # the one place the 4 x width default is written out
      object.__setattr__(self, 'mlp_dim', 4 * self.width)
    if isinstance(self.patch_size, (list, tuple)):
      object.__setattr__(self, 'patch_size', tuple(int(p) for p in self.patch_size))

  def _fields(self):
    return ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))

  def __getitem__(self, key: str) -> Any:
    if key not in self.__dataclass_fields__:
      raise KeyError(key)
    return getattr(self, key)

  def __iter__(self):
    return iter(self.__dataclass_fields__)

  def __len__(self) -> int:
    return len(self.__dataclass_fields__)

  @classmethod
  def of(cls, config: 'collections.abc.Mapping[str, Any] | ViT') -> 'ViTConfig':
    """A ViTConfig from a mapping of ViT fields (a dict, JSON, an ml_collections
    section, another ViTConfig) or a ViT; unknown fields are refused by name."""
    if isinstance(config, cls):
      return config
    if isinstance(config, ViT):
      config = {f.name: getattr(config, f.name) for f in dataclasses.fields(ViT) if f.name not in _RUNTIME}
    config = dict(config)
    check_config(config)
    return cls(**{k: v for k, v in config.items() if k != 'dtype'})

  def __eq__(self, other: Any) -> bool:
    """Equal to any mapping that describes the same ViT (unset fields at their defaults)."""
    if not isinstance(other, collections.abc.Mapping):
      return NotImplemented
    try:
      return self.to_json() == ViTConfig.of(other).to_json()
    except (ValueError, TypeError):
      return False

  __hash__ = None

  def replace(self, **changes: Any) -> 'ViTConfig':
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict[str, Any]:
    """Plain JSON types: what model_config.json and learngene.json hold."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in self._fields()}


ViTConfig = dataclasses.make_dataclass(
    'ViTConfig', [(f.name, f.type, dataclasses.field(default=f.default))
                  for f in dataclasses.fields(ViT) if f.name not in _RUNTIME],
    bases=(_ConfigMapping,), frozen=True, eq=False, namespace={'__module__': __name__})
ViTConfig.__doc__ = """A ViT's architecture, frozen and validated: the fields of `ViT` (less the
compute dtype) with their defaults, mlp_dim resolved to 4 x width when unset.

It is a Mapping, so it reads and writes the same JSON as the plain dicts it
replaces: `ViT(**cfg)`, `cfg['width']`, `dict(cfg)`; it equals any mapping of
the same ViT (`cfg == {'width': 64, ...}`, unset fields at their defaults);
`ViTConfig.of(mapping)` builds one, `cfg.replace(depth=8)` changes one and
`cfg.to_json()` gives plain JSON types."""


def model_config(model: ViT) -> ViTConfig:
  """The ViT's architecture, so that `ViT(**config)` rebuilds it."""
  return ViTConfig.of(model)


def param_shapes(config: dict[str, Any], image_shape: Sequence[int]) -> Any:
  """The ViT's param tree as ShapeDtypeStructs for (H, W, C) images, allocating nothing."""
  model = ViT(**config)
  image = jnp.zeros((1, *image_shape), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), image))['params']


def config_from_params(params: Any, **overrides: Any) -> ViTConfig:
  """ViT fields read off a param tree's names and shapes; `overrides` win.

  Shapes fix patch_size, width, depth, num_heads, mlp_dim, num_classes, the
  layout (scan) and which of cls / pos_embedding exist. What shapes cannot
  tell (GELU flavour, where the final norm runs, epsilon) keeps big_vision's
  defaults unless overridden.
  """
  try:
    ph, pw, _, width = np.shape(params['embedding']['kernel'])
    shared, (first, *_) = blocks.split(params)  # block 0 sets the shapes; check_params tests the rest
    attn = first['MultiHeadDotProductAttention_0']['query']['kernel']
    mlp = first['MlpBlock_0']['Dense_0']['kernel']
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'Cannot read a ViT config off these params: missing or misshapen {e}.') from None
  config = dict(
      patch_size=int(ph) if ph == pw else [int(ph), int(pw)], width=int(width),
      depth=blocks.depth(params), num_heads=int(np.shape(attn)[-2]), mlp_dim=int(np.shape(mlp)[-1]),
      num_classes=int(np.shape(shared['head']['kernel'])[-1]) if 'head' in shared else None,
      pool_type='tok' if 'cls' in shared else 'gap',
      posemb='learn' if 'pos_embedding' in shared else 'sincos2d',
      scan=blocks.is_scanned(params))
  config.update(overrides)
  return ViTConfig.of(config)
