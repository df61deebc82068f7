"""A Transformer MLP's hidden layer with its bias and GELU in the matmuls' epilogues.

  h = x @ w1 + b1,   g = gelu(h),   z = g @ w2       (the caller adds z's bias)

XLA's forward GEMM writes h, then a kernel of its own reads h and writes g: 3
(tokens, mlp_dim) tensors of traffic. Its backward GEMM writes dg, then a kernel reads
dg and h and writes dh, summing dh for b1's gradient: 4. Only GEMM epilogues remove
the extra passes. The Pallas kernels here are those GEMMs:

  forward   (x, w1, b1) -> (h, g)                        h and g kept for the backward
  backward  (dz, w2, h) -> dh = (dz @ w2.T) * gelu'(h)   with dh's column sums for b1

2 tensors each way; the other matmuls (z, and the gradients of w2, w1 and x) stay XLA's.
The GEMMs are pallas_gemm's (tiles reasoned, not yet timed). On other platforms, or
widths the tiles do not fit (not a multiple of 16), the same formulas run as jnp; a
batch split over devices runs on each device's examples (batched_kernels).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from lgjax.models import batched_kernels, pallas_gemm
from lgjax.models.pallas_gemm import TILES, Tiles, fit, in_bounds, load, store

__all__ = ['TILES', 'Tiles', 'fit', 'gelu', 'gelu_grad', 'kernel_backward', 'kernel_forward', 'mlp',
           'reference_backward', 'reference_forward']


def gelu(h, approximate: bool):
  """jax.nn.gelu, with erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): Pallas's
  Triton lowering has no erf, and the kernels and their reference must agree."""
  if approximate:
    return jax.nn.gelu(h, approximate=True)
  return 0.5 * h * (1.0 + _erf(h * math.sqrt(0.5)))


def gelu_grad(h, approximate: bool):
  """d gelu(h) / dh, by the formula (the backward kernel computes it from h alone)."""
  if approximate:
    c = math.sqrt(2.0 / math.pi)
    t = jnp.tanh(c * (h + 0.044715 * h * h * h))
    return 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * h * h)
  return 0.5 * (1.0 + _erf(h * math.sqrt(0.5))) + h * jnp.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)


def _erf(x):
  a = jnp.abs(x)
  t = 1.0 / (1.0 + 0.3275911 * a)
  poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
  return jnp.sign(x) * (1.0 - poly * jnp.exp(-a * a))


def reference_forward(x, w1, b1, *, approximate: bool, tiles: Tiles = TILES):
  """(h, g) for x (batch, tokens, width), in x's dtype from float32 sums."""
  del tiles
  h = jnp.einsum('btd,df->btf', x, w1, preferred_element_type=jnp.float32) + b1.astype(jnp.float32)
  return h.astype(x.dtype), gelu(h, approximate).astype(x.dtype)


def reference_backward(dz, w2, h, *, approximate: bool, tiles: Tiles = TILES):
  """(dh, sums): dh = (dz @ w2.T) * gelu'(h), and its column sums per example (batch,
  slots, hidden; here all in slot 0)."""
  dg = jnp.einsum('btd,fd->btf', dz, w2, preferred_element_type=jnp.float32)
  dh = dg * gelu_grad(h.astype(jnp.float32), approximate)
  return dh.astype(h.dtype), pallas_gemm.reference_sums(dh, tiles.block_m)


def _forward_kernel(x_ref, w_ref, b_ref, h_ref, g_ref, *, block_k: int, approximate: bool, shape):
  h, rows, cols = pallas_gemm.biased_matmul(x_ref, w_ref, b_ref, block_k, h_ref.shape, shape)
  store(h_ref, h, rows, cols)
  store(g_ref, gelu(h, approximate), rows, cols)


def _backward_kernel(dz_ref, w_ref, h_ref, dh_ref, sums_ref, *, block_k: int, approximate: bool, shape):
  rows, cols = in_bounds(dh_ref.shape, shape)
  dg = pallas_gemm.matmul(dz_ref, w_ref, block_k, jnp.zeros(dh_ref.shape, jnp.float32), rows, cols, trans_b=True)
  dh = dg * gelu_grad(load(h_ref, rows, cols).astype(jnp.float32), approximate)
  store(dh_ref, dh, rows, cols)
  # Masked even where the blocks tile the rows exactly: ptxas then keeps 104 registers, not 140
  # (two programs an SM, not one).
  valid = pl.program_id(1) * dh_ref.shape[0] + jnp.arange(dh_ref.shape[0]) < shape[0]
  store(sums_ref, jnp.sum(jnp.where(valid[:, None], dh, 0.0), axis=0)[None, :], cols=cols)


def kernel_forward(x, w1, b1, *, approximate: bool, tiles: Tiles = TILES, interpret: bool = False):
  """reference_forward by the Pallas kernel; `interpret` runs it off-GPU (tests)."""
  return tuple(pallas_gemm.biased_call(functools.partial(_forward_kernel, approximate=approximate), x, w1, b1, 2,
                                       tiles, 'gelu_mlp_fwd', interpret))


def kernel_backward(dz, w2, h, *, approximate: bool, tiles: Tiles = TILES, interpret: bool = False):
  """reference_backward by the Pallas kernel: its column sums are per row block, then
  placed in the slot of the example the block starts in."""
  batch, tokens, width = dz.shape
  hidden, rows = h.shape[-1], batch * tokens
  tiles = fit(tiles, width, hidden)
  block_m, block_n, block_k = tiles[:3]
  tile = ((block_m, block_n), lambda j, i: (i, j))
  row_blocks = pl.cdiv(rows, block_m)
  dh, sums = pallas_gemm.call(
      functools.partial(_backward_kernel, block_k=block_k, approximate=approximate, shape=(rows, hidden)),
      (dz.reshape(rows, width), w2, h.reshape(rows, hidden)),
      [jax.ShapeDtypeStruct((rows, hidden), h.dtype), jax.ShapeDtypeStruct((row_blocks, hidden), jnp.float32)],
      [((block_m, width), lambda j, i: (i, 0)), ((block_n, width), lambda j, i: (j, 0)), tile],
      [tile, ((1, block_n), lambda j, i: (i, j))],
      (pl.cdiv(hidden, block_n), row_blocks), tiles, 'gelu_mlp_bwd', interpret)
  return dh.reshape(batch, tokens, hidden), pallas_gemm.example_sums(sums, batch, tokens, block_m)


@functools.cache
def _forward(approximate: bool, tiles: Tiles, fits: bool):
  kernel = kernel_forward if fits else reference_forward  # widths the tiles do not fit: jnp on CUDA too
  return batched_kernels.by_example(
      batched_kernels.on_platform(kernel, reference_forward, approximate=approximate, tiles=tiles),
      ('b t d', 'd f', 'f'), ('b t f', 'b t f'))


@functools.cache
def _backward(approximate: bool, tiles: Tiles, fits: bool):
  kernel = kernel_backward if fits else reference_backward
  return batched_kernels.by_example(
      batched_kernels.on_platform(kernel, reference_backward, approximate=approximate, tiles=tiles),
      ('b t d', 'f d', 'b t f'), ('b t f', 'b s f'))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _mlp(x, w1, b1, w2, approximate, tiles):
  return _mlp_fwd(x, w1, b1, w2, approximate, tiles)[0]


def _fits(tiles, w1, w2) -> bool:
  """Both kernels' matmuls fit the tiles: over x's width forward, over z's backward."""
  return pallas_gemm.fits(tiles, w1.shape, w2.shape[::-1])


def _mlp_fwd(x, w1, b1, w2, approximate, tiles):
  h, g = _forward(approximate, tiles, _fits(tiles, w1, w2))(x, w1, b1)
  return jnp.einsum('btf,fd->btd', g, w2), (x, w1, b1, w2, h, g)


def _mlp_bwd(approximate, tiles, residuals, dz):
  x, w1, b1, w2, h, g = residuals
  dh, sums = _backward(approximate, tiles, _fits(tiles, w1, w2))(dz, w2, h)
  return (jnp.einsum('btf,df->btd', dh, w1), jnp.einsum('btd,btf->df', x, dh),
          sums.sum((0, 1)).astype(b1.dtype), jnp.einsum('btf,btd->fd', g, dz))


_mlp.defvjp(_mlp_fwd, _mlp_bwd)


def mlp(x, w1, b1, w2, *, approximate: bool = True, tiles: Tiles = TILES):
  """gelu(x @ w1 + b1) @ w2 as the module docstring says, for x (batch, ..., width), w1
  (width, hidden), b1 (hidden,), w2 (hidden, out); the matmuls in x's dtype (w1 and w2 are
  cast to it), h and the GELU from float32 sums. Keeps h and g for the backward, as a
  rematerialized MlpBlock keeps its matmul's and GELU's outputs. `tiles`: the kernels'
  blocks (benchmarks/kernel_bench.py times others)."""
  width, hidden = x.shape[-1], w1.shape[-1]
  if w1.shape != (width, hidden) or b1.shape != (hidden,) or w2.ndim != 2 or w2.shape[0] != hidden:
    raise ValueError(f'gelu_mlp.mlp: expected w1 ({width}, hidden), b1 (hidden,) and w2 (hidden, out) for x of '
                     f'width {width}, got {w1.shape}, {b1.shape} and {w2.shape}.')
  flat = x.reshape(x.shape[0], -1, width)
  z = _mlp(flat, w1.astype(x.dtype), b1, w2.astype(x.dtype), bool(approximate), Tiles(*tiles))
  return z.reshape(*x.shape[:-1], w2.shape[1])
