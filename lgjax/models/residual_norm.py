"""A pre-norm ViT's residual add and the LayerNorm after it, in one pass over memory.

  x' = x + keep * (h + b)        the residual stream, in x's dtype
  y  = (x' - mean) * rstd * scale + bias,   statistics of x' in float32

`h` is a branch's matmul output (attention's or the MLP's) before its bias `b`,
and `keep` a per-example drop-path scale (None: 1); the LayerNorm is the next one
in the model (the block's second, the next block's first, or encoder_norm).

XLA runs this as three kernels forward (the add, the statistics, the
normalization) and three backward, each reading the (tokens, width) tensors
again. The Pallas kernels here read them once each way: forward reads x and h
and writes x' and y; backward reads x', dy and dx' and writes dx' (and keep * dx'
for h, with drop path), with the column sums for scale, bias and b as partial
sums per CHUNK tokens of each example. On CUDA the kernels run; on other
platforms the same formulas run as jnp (`lax.platform_dependent` picks at
lowering), so a model that uses this compiles everywhere.

`add_layer_norm` takes (..., width) arrays whose leading axis is the batch, and a
kernel program works within one example (forward: ROWS tokens of it; backward:
CHUNK tokens, summing its columns as it goes), so a batch split over devices runs
the kernels on each device's examples, never gathering activations
(batched_kernels). Tile sizes and warps are set by reasoning, not yet timed on a GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from lgjax.models import batched_kernels

plgpu = batched_kernels.triton

ROWS = 8  # token rows a kernel program loads at once: (8, next power of 2 >= width) tiles
# Tokens a backward program sums over: DeiT's 196 make 4 programs an example, so that even
# 128 examples a device (a data-parallel share) keep a GPU's 132 SMs busy, for partial sums
# of 4 x 3 x width floats an example (3 % of the kernel's bytes).
CHUNK = 8 * ROWS


def add(x, h, b, keep):
  """x' alone, by XLA: x + keep * (h + b) in float32, rounded to x's dtype once."""
  s = x.astype(jnp.float32) + _keep(keep, x.ndim) * (h.astype(jnp.float32) + b.astype(jnp.float32))
  return s.astype(x.dtype)


def reference_forward(x, h, b, keep, scale, bias, *, epsilon: float, dtype):
  """(x', y, mean, rstd): the formulas above in jnp, as the kernel computes them."""
  new_x = add(x, h, b, keep)
  f = new_x.astype(jnp.float32)
  mean = f.mean(-1)
  centered = f - mean[..., None]
  rstd = jax.lax.rsqrt((centered * centered).mean(-1) + epsilon)
  y = centered * rstd[..., None] * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  return new_x, y.astype(dtype), mean, rstd


def reference_backward(new_x, mean, rstd, keep, scale, dnew_x, dy, *, h_dtype):
  """(dx, dh, sums) from x' and its statistics and the cotangents of x' and y (batch,
  tokens, width): LayerNorm's gradient added to the residual's, then split over x and h;
  sums[i, c] are the column sums for b, scale and bias over chunk c (CHUNK tokens) of
  example i: (batch, chunks, 3, width)."""
  xhat = (new_x.astype(jnp.float32) - mean[..., None]) * rstd[..., None]
  dy = dy.astype(jnp.float32)
  g = dy * scale.astype(jnp.float32)
  total = dnew_x.astype(jnp.float32) + rstd[..., None] * (
      g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
  dh = _keep(keep, new_x.ndim) * total
  batch, tokens, width = new_x.shape
  chunks = pl.cdiv(tokens, CHUNK)
  by_chunk = lambda a: jnp.pad(a, ((0, 0), (0, chunks * CHUNK - tokens), (0, 0))).reshape(
      batch, chunks, CHUNK, width).sum(2)
  sums = jnp.stack([by_chunk(dh), by_chunk(dy * xhat), by_chunk(dy)], axis=2)
  return total.astype(new_x.dtype), dh.astype(h_dtype), sums


def _keep(keep, ndim):
  return 1.0 if keep is None else keep.astype(jnp.float32).reshape(keep.shape + (1,) * (ndim - 1))


def _tile(ref, example, block, width):
  """Rows `block * ROWS ...` of one example's (tokens, width) slab: (ref view, mask)."""
  tokens = ref.shape[1]
  rows = block * ROWS + jnp.arange(ROWS)
  cols = jnp.arange(pl.next_power_of_2(width))
  mask = (rows[:, None] < tokens) & (cols[None, :] < width)
  return ref.at[example, rows[:, None], cols[None, :]], mask


def _warps(width):
  """4 warps for tiles up to 512 wide, 8 above: about 32 float32s of each tile a thread."""
  return plgpu.CompilerParams(num_warps=4 if pl.next_power_of_2(width) <= 512 else 8)


def _vector(ref, width):
  cols = jnp.arange(pl.next_power_of_2(width))
  return plgpu.load(ref.at[cols], mask=cols < width, other=0.0).astype(jnp.float32)


def _forward_kernel(x_ref, h_ref, b_ref, keep_ref, scale_ref, bias_ref,
                    new_x_ref, y_ref, mean_ref, rstd_ref, *, epsilon: float):
  example, block = pl.program_id(0), pl.program_id(1)
  tokens, width = x_ref.shape[1:]
  b, scale, bias = _vector(b_ref, width), _vector(scale_ref, width), _vector(bias_ref, width)
  keep = 1.0 if keep_ref is None else plgpu.load(keep_ref.at[example]).astype(jnp.float32)
  x, mask = _tile(x_ref, example, block, width)
  h, _ = _tile(h_ref, example, block, width)
  s = plgpu.load(x, mask=mask, other=0.0).astype(jnp.float32) + keep * (
      plgpu.load(h, mask=mask, other=0.0).astype(jnp.float32) + b[None, :])
  new_x = s.astype(new_x_ref.dtype)
  out, _ = _tile(new_x_ref, example, block, width)
  plgpu.store(out, new_x, mask=mask)
  f = new_x.astype(jnp.float32)
  mean = jnp.sum(f, axis=1) / width
  centered = jnp.where(mask, f - mean[:, None], 0.0)
  rstd = jax.lax.rsqrt(jnp.sum(centered * centered, axis=1) / width + epsilon)
  out, _ = _tile(y_ref, example, block, width)
  plgpu.store(out, (centered * rstd[:, None] * scale[None, :] + bias[None, :]).astype(y_ref.dtype), mask=mask)
  rows = block * ROWS + jnp.arange(ROWS)
  plgpu.store(mean_ref.at[example, rows], mean, mask=rows < tokens)
  plgpu.store(rstd_ref.at[example, rows], rstd, mask=rows < tokens)


def _backward_kernel(new_x_ref, mean_ref, rstd_ref, keep_ref, scale_ref, dnew_x_ref, dy_ref,
                     dx_ref, *rest):
  dh_ref, sums_ref = rest if keep_ref is not None else (None, *rest)
  example, chunk = pl.program_id(0), pl.program_id(1)
  tokens, width = new_x_ref.shape[1:]
  scale = _vector(scale_ref, width)
  keep = 1.0 if keep_ref is None else plgpu.load(keep_ref.at[example]).astype(jnp.float32)
  zeros = jnp.zeros((pl.next_power_of_2(width),), jnp.float32)

  def body(block, sums):
    db, dscale, dbias = sums
    rows = block * ROWS + jnp.arange(ROWS)
    valid = rows < tokens
    new_x, mask = _tile(new_x_ref, example, block, width)
    mean = plgpu.load(mean_ref.at[example, rows], mask=valid, other=0.0)
    rstd = plgpu.load(rstd_ref.at[example, rows], mask=valid, other=0.0)
    xhat = jnp.where(mask, (plgpu.load(new_x, mask=mask, other=0.0).astype(jnp.float32) - mean[:, None])
                     * rstd[:, None], 0.0)
    dy, _ = _tile(dy_ref, example, block, width)
    dy = plgpu.load(dy, mask=mask, other=0.0).astype(jnp.float32)
    g = dy * scale[None, :]
    dnew_x, _ = _tile(dnew_x_ref, example, block, width)
    total = plgpu.load(dnew_x, mask=mask, other=0.0).astype(jnp.float32) + rstd[:, None] * (
        g - (jnp.sum(g, axis=1) / width)[:, None] - xhat * (jnp.sum(g * xhat, axis=1) / width)[:, None])
    out, _ = _tile(dx_ref, example, block, width)
    plgpu.store(out, total.astype(dx_ref.dtype), mask=mask)
    dh = keep * total
    if dh_ref is not None:
      out, _ = _tile(dh_ref, example, block, width)
      plgpu.store(out, dh.astype(dh_ref.dtype), mask=mask)
    return db + jnp.sum(dh, axis=0), dscale + jnp.sum(dy * xhat, axis=0), dbias + jnp.sum(dy, axis=0)

  first = chunk * (CHUNK // ROWS)
  sums = jax.lax.fori_loop(first, first + CHUNK // ROWS, body, (zeros, zeros, zeros))  # rows past tokens: masked
  cols = jnp.arange(pl.next_power_of_2(width))
  for i, total in enumerate(sums):
    plgpu.store(sums_ref.at[example, chunk, i, cols], total, mask=cols < width)


def kernel_forward(x, h, b, keep, scale, bias, *, epsilon: float, dtype, interpret: bool = False):
  """reference_forward by the Pallas kernel (batch, tokens, width); `interpret` runs it
  off-GPU (tests)."""
  batch, tokens, width = x.shape
  out_shape = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(x.shape, dtype),
               jax.ShapeDtypeStruct((batch, tokens), jnp.float32), jax.ShapeDtypeStruct((batch, tokens), jnp.float32))
  return pl.pallas_call(functools.partial(_forward_kernel, epsilon=epsilon), out_shape=out_shape,
                        grid=(batch, pl.cdiv(tokens, ROWS)), compiler_params=_warps(width), interpret=interpret,
                        name='add_layer_norm_fwd')(x, h, b, keep, scale, bias)


def kernel_backward(new_x, mean, rstd, keep, scale, dnew_x, dy, *, h_dtype, interpret: bool = False):
  """reference_backward by the Pallas kernel: one program per CHUNK tokens of an example."""
  batch, tokens, width = new_x.shape
  out_shape = [jax.ShapeDtypeStruct(new_x.shape, new_x.dtype)]
  if keep is not None:
    out_shape.append(jax.ShapeDtypeStruct(new_x.shape, h_dtype))
  chunks = pl.cdiv(tokens, CHUNK)
  out_shape.append(jax.ShapeDtypeStruct((batch, chunks, 3, width), jnp.float32))
  dx, *dh, sums = pl.pallas_call(_backward_kernel, out_shape=out_shape, grid=(batch, chunks),
                                 compiler_params=_warps(width), interpret=interpret,
                                 name='add_layer_norm_bwd')(new_x, mean, rstd, keep, scale, dnew_x, dy)
  return dx, (dh[0] if dh else dx), sums


@functools.cache
def _forward(epsilon: float, dtype):
  return batched_kernels.by_example(
      batched_kernels.on_platform(kernel_forward, reference_forward, epsilon=epsilon, dtype=dtype),
      ('b t d', 'b t d', 'd', 'b', 'd', 'd'), ('b t d', 'b t d', 'b t', 'b t'))


@functools.cache
def _backward(h_dtype):
  return batched_kernels.by_example(
      batched_kernels.on_platform(kernel_backward, reference_backward, h_dtype=h_dtype),
      ('b t d', 'b t', 'b t', 'b', 'd', 'b t d', 'b t d'), ('b t d', 'b t d', 'b c k d'))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _add_layer_norm(x, h, b, keep, scale, bias, epsilon, dtype):
  return tuple(_forward(epsilon, dtype)(x, h, b, keep, scale, bias)[:2])


def _add_layer_norm_fwd(x, h, b, keep, scale, bias, epsilon, dtype):
  new_x, y, mean, rstd = _forward(epsilon, dtype)(x, h, b, keep, scale, bias)
  return (new_x, y), (new_x, mean, rstd, keep, scale, b, bias)


def _add_layer_norm_bwd(epsilon, dtype, residuals, cotangents):
  new_x, mean, rstd, keep, scale, b, bias = residuals
  dx, dh, sums = _backward(new_x.dtype)(new_x, mean, rstd, keep, scale, *cotangents)
  db, dscale, dbias = sums.sum((0, 1))
  return (dx, dh, db.astype(b.dtype), None if keep is None else jnp.zeros_like(keep),
          dscale.astype(scale.dtype), dbias.astype(bias.dtype))


_add_layer_norm.defvjp(_add_layer_norm_fwd, _add_layer_norm_bwd)


def add_layer_norm(x, h, b, keep, scale, bias, *, epsilon: float, dtype):
  """(x', y) as the module docstring says, for x and h of one dtype, shaped (batch, ...,
  width); b, scale and bias (width,); keep (batch,) or None. y is in `dtype`. keep is a
  constant to the gradient (a drop-path draw), x' a rounding of the float32 sum."""
  if x.shape != h.shape or x.dtype != h.dtype:
    raise ValueError(f'add_layer_norm: x and h must have one shape and dtype, got {x.shape} {x.dtype} '
                     f'and {h.shape} {h.dtype}.')
  shape = x.shape
  flat = lambda a: a.reshape(shape[0], -1, shape[-1])
  new_x, y = _add_layer_norm(flat(x), flat(h), b, keep, scale, bias, float(epsilon), jnp.dtype(dtype))
  return new_x.reshape(shape), y.reshape(shape)
