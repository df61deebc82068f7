"""Self-attention's query, key and value projections, with the query's bias in its
matmul's epilogue and the three input gradients summed inside one matmul.

  q = x @ wq + bq,   k = x @ wk,   v = x @ wv
  (MultiHeadDotProductAttention needs no key or value bias: see its docstring)

XLA's query GEMM writes x @ wq, then a kernel of its own adds bq: one (tokens, width)
tensor read and written again. Backward, XLA's three GEMMs each write their share of
dx, and a kernel reads the three and writes their sum: six (tokens, width) tensors
more than one GEMM that sums all three. The Pallas kernels (pallas_gemm's GEMMs) are:

  forward   (x, wq, bq) -> q                    the bias added to the float32 sums
  backward  (dq, dk, dv, wq, wk, wv) -> dx = dq wq.T + dk wk.T + dv wv.T
            in one float32 accumulator

The key's and value's projections, the weights' gradients and bq's (dq's column sums)
stay XLA's. (Summing dq in the backward kernel too, as gelu_mlp's does dh, would save
reading it once more, but takes ptxas from 120 registers to 166: one program an SM, not
two.) On other platforms, or widths the tiles do not fit (not multiples of 16), the
same formulas run as jnp; a batch split over devices runs on each device's examples
(batched_kernels).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from lgjax.models import batched_kernels, pallas_gemm
from lgjax.models.pallas_gemm import TILES, Tiles, fit, in_bounds, store


def reference_forward(x, wq, bq, *, tiles: Tiles = TILES):
  """q = x @ wq + bq for x (batch, tokens, width), in x's dtype from float32 sums."""
  del tiles
  q = jnp.einsum('btd,dn->btn', x, wq, preferred_element_type=jnp.float32) + bq.astype(jnp.float32)
  return q.astype(x.dtype)


def reference_backward(dq, dk, dv, wq, wk, wv, *, tiles: Tiles = TILES):
  """dx = dq wq.T + dk wk.T + dv wv.T from float32 sums, in dq's dtype."""
  del tiles
  dx = sum(jnp.einsum('btn,dn->btd', d, w, preferred_element_type=jnp.float32)
           for d, w in ((dq, wq), (dk, wk), (dv, wv)))
  return dx.astype(dq.dtype)


def _forward_kernel(x_ref, w_ref, b_ref, q_ref, *, block_k: int, shape):
  q, rows, cols = pallas_gemm.biased_matmul(x_ref, w_ref, b_ref, block_k, q_ref.shape, shape)
  store(q_ref, q, rows, cols)


def _backward_kernel(dq_ref, dk_ref, dv_ref, wq_ref, wk_ref, wv_ref, dx_ref, *, block_k: int, shape):
  rows, cols = in_bounds(dx_ref.shape, shape)
  dx = jnp.zeros(dx_ref.shape, jnp.float32)
  for d_ref, w_ref in ((dq_ref, wq_ref), (dk_ref, wk_ref), (dv_ref, wv_ref)):
    dx = pallas_gemm.matmul(d_ref, w_ref, block_k, dx, rows, cols, trans_b=True)
  store(dx_ref, dx, rows, cols)


def kernel_forward(x, wq, bq, *, tiles: Tiles = TILES, interpret: bool = False):
  """reference_forward by the Pallas kernel; `interpret` runs it off-GPU (tests)."""
  (q,) = pallas_gemm.biased_call(_forward_kernel, x, wq, bq, 1, tiles, 'qkv_projection_fwd', interpret)
  return q


def kernel_backward(dq, dk, dv, wq, wk, wv, *, tiles: Tiles = TILES, interpret: bool = False):
  """reference_backward by the Pallas kernel: a program sums the three products into one
  block of dx, over the (dq, wq), (dk, wk), (dv, wv) pairs in turn."""
  batch, tokens, inner = dq.shape
  width, rows = wq.shape[0], batch * tokens
  tiles = fit(tiles, inner, width)
  block_m, block_n, block_k = tiles[:3]
  flat = lambda a: a.reshape(rows, inner)
  (dx,) = pallas_gemm.call(
      functools.partial(_backward_kernel, block_k=block_k, shape=(rows, width)),
      (flat(dq), flat(dk), flat(dv), wq, wk, wv), [jax.ShapeDtypeStruct((rows, width), dq.dtype)],
      [((block_m, inner), lambda j, i: (i, 0))] * 3 + [((block_n, inner), lambda j, i: (j, 0))] * 3,
      [((block_m, block_n), lambda j, i: (i, j))],
      (pl.cdiv(width, block_n), pl.cdiv(rows, block_m)), tiles, 'qkv_projection_bwd', interpret)
  return dx.reshape(batch, tokens, width)


@functools.cache
def _forward(tiles: Tiles, fits: bool):
  kernel = kernel_forward if fits else reference_forward  # widths the tiles do not fit: jnp on CUDA too
  return batched_kernels.by_example(batched_kernels.on_platform(kernel, reference_forward, tiles=tiles),
                                    ('b t d', 'd n', 'n'), ('b t n',))


@functools.cache
def _backward(tiles: Tiles, fits: bool):
  kernel = kernel_backward if fits else reference_backward
  return batched_kernels.by_example(batched_kernels.on_platform(kernel, reference_backward, tiles=tiles),
                                    ('b t n', 'b t n', 'b t n', 'd n', 'd n', 'd n'), ('b t d',))


def _fits(tiles, wq) -> bool:
  """Both kernels' matmuls fit the tiles: over x's width forward, over q's backward."""
  return pallas_gemm.fits(tiles, wq.shape, wq.shape[::-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _project(x, wq, bq, wk, wv, tiles):
  return _project_fwd(x, wq, bq, wk, wv, tiles)[0]


def _project_fwd(x, wq, bq, wk, wv, tiles):
  q = _forward(tiles, _fits(tiles, wq))(x, wq, bq)
  k, v = (jnp.einsum('btd,dn->btn', x, w) for w in (wk, wv))
  return (q, k, v), (x, wq, bq, wk, wv)


def _project_bwd(tiles, residuals, grads):
  x, wq, bq, wk, wv = residuals
  dq, dk, dv = grads
  dx = _backward(tiles, _fits(tiles, wq))(dq, dk, dv, wq, wk, wv)
  dw = [jnp.einsum('btd,btn->dn', x, d) for d in (dq, dk, dv)]
  return dx, dw[0], dq.sum((0, 1), dtype=jnp.float32).astype(bq.dtype), dw[1], dw[2]


_project.defvjp(_project_fwd, _project_bwd)


def project(x, wq, bq, wk, wv, *, tiles: Tiles = TILES):
  """(q, k, v) as the module docstring says, for x (batch, ..., width) and Flax
  DenseGeneral's layout: wq, wk, wv (width, heads, head_dim), bq (heads, head_dim). The
  matmuls in x's dtype (the weights are cast to it), q's bias added to float32 sums;
  q, k, v are (batch, ..., heads, head_dim). `tiles`: the kernels' blocks."""
  width, heads = x.shape[-1], wq.shape[1:]
  if wq.ndim != 3 or wq.shape[0] != width or wk.shape != wq.shape or wv.shape != wq.shape or bq.shape != heads:
    raise ValueError(f'qkv_projection.project: expected wq, wk and wv (width, heads, head_dim) with width {width} '
                     f'and bq (heads, head_dim), got {wq.shape}, {wk.shape}, {wv.shape} and {bq.shape}.')
  flat = lambda w: w.reshape(width, -1).astype(x.dtype)
  qkv = _project(x.reshape(x.shape[0], -1, width), flat(wq), bq.reshape(-1), flat(wk), flat(wv), Tiles(*tiles))
  return tuple(a.reshape(*x.shape[:-1], *heads) for a in qkv)
