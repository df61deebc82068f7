"""The pieces of a Pallas GEMM with its elementwise work in the epilogue (gelu_mlp,
qkv_projection).

A program computes one Tiles output block of a (rows, columns) product, block_k deep a
step in float32, columns fastest so that a row block of the activations stays in L2
while all its column blocks are computed; Triton makes Hopper's wgmma of the dots (PTX
checked). Pallas's Triton lowering neither pads nor masks a block that overhangs its
array, so every load and store here masks what lies past the end. Column sums (a bias's
gradient) are written per row block and placed per example (`example_sums`), so that
they split over devices with the batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from lgjax.models import batched_kernels

plgpu = batched_kernels.triton


class Tiles(NamedTuple):
  """A kernel program's output block (block_m rows, block_n columns), the depth of one
  matmul step, and Triton's warps and pipeline stages."""
  block_m: int = 128
  block_n: int = 128
  block_k: int = 64
  warps: int = 8
  stages: int = 3

  def __str__(self):
    return f'{self.block_m}x{self.block_n}x{self.block_k} w{self.warps} s{self.stages}'


TILES = Tiles()  # two warpgroups on a 128 x 128 block, three K steps in flight: ptxas fits two an SM


def fit(tiles: Tiles, depth: int, columns: int) -> Tiles | None:
  """`tiles` for matmuls `depth` deep into `columns` columns: K steps that divide depth (of
  16 at least, bf16 wgmma's depth), blocks no wider than the columns need. None: none fits."""
  block_k = next((b for b in (tiles.block_k, 32, 16) if b <= tiles.block_k and depth % b == 0), None)
  if block_k is None:
    return None
  return tiles._replace(block_n=min(tiles.block_n, max(16, pl.next_power_of_2(columns))), block_k=block_k)


def fits(tiles: Tiles, *depths_and_columns: tuple[int, int]) -> bool:
  """Whether `tiles` fit every (depth, columns) matmul of a kernel pair (forward and
  backward): where one does not, both run as jnp."""
  return all(fit(tiles, depth, columns) is not None for depth, columns in depths_and_columns)


def slots(tokens: int, block_m: int) -> int:
  """Row blocks that can start within one example: a kernel's column sums are kept per
  example (batch, slots, columns)."""
  return pl.cdiv(tokens, block_m)


def reference_sums(x, block_m: int):
  """x's (batch, tokens, columns) column sums per example as the kernels lay them out
  (batch, slots, columns), here all in slot 0, in float32."""
  batch, tokens, columns = x.shape
  sums = jnp.zeros((batch, slots(tokens, block_m), columns), jnp.float32)
  return sums.at[:, 0].set(x.astype(jnp.float32).sum(1))


def example_sums(sums, batch: int, tokens: int, block_m: int):
  """A kernel's column sums per row block (row_blocks, columns) placed in the slot of the
  example each block starts in: row block r starts in example r * block_m // tokens, and an
  example's blocks take its slots in order. (jnp, not numpy, index arrays: custom_partitioning
  takes no constants.)"""
  row_blocks = sums.shape[0]
  example = jnp.arange(batch)[:, None]
  index = -(-example * tokens // block_m) + jnp.arange(slots(tokens, block_m))[None, :]
  starts_inside = index * block_m < (example + 1) * tokens
  return jnp.where(starts_inside[..., None], sums[jnp.minimum(index, row_blocks - 1)], 0.0)


def _in_bounds(axis: int, block: int, size: int):
  """Which of this program's `block` indices along grid axis `axis` fall inside `size`, or
  None where the blocks tile it exactly."""
  return None if size % block == 0 else pl.program_id(axis) * block + jnp.arange(block) < size


def in_bounds(block_shape, shape):
  """(rows, cols): which of this program's `block_shape` output block's rows and columns
  fall inside the (rows, columns) `shape`, each None where the blocks tile it exactly
  (call's grid: columns on axis 0, rows on axis 1)."""
  return _in_bounds(1, block_shape[0], shape[0]), _in_bounds(0, block_shape[1], shape[1])


def _mask(rows, cols, shape):
  """The (rows, cols) mask of a 2-D block from either axis' in-bounds vector (None: all)."""
  found = [m for m in (None if rows is None else rows[:, None], None if cols is None else cols[None, :])
           if m is not None]
  return None if not found else jnp.broadcast_to(functools.reduce(jnp.logical_and, found), shape)


def load(ref, rows=None, cols=None):
  """ref's block, its rows / columns past the array's end (the in-bounds vectors False) read as 0."""
  mask = _mask(rows, cols, ref.shape) if len(ref.shape) == 2 else cols
  return ref[...] if mask is None else plgpu.load(ref, mask=mask, other=0.0)


def store(ref, value, rows=None, cols=None):
  """value into ref's block, in its dtype, where rows and columns are in bounds."""
  mask = _mask(rows, cols, ref.shape)
  if mask is None:
    ref[...] = value.astype(ref.dtype)
  else:
    plgpu.store(ref, value.astype(ref.dtype), mask=mask)


def matmul(a_ref, b_ref, block_k: int, acc, rows, cols, trans_b: bool = False):
  """acc + a_ref's rows times b_ref's columns (rows with trans_b), block_k deep a step, in
  float32; rows of a and columns of b past their arrays' ends count as 0."""
  def step(i, acc):
    k = pl.ds(i * block_k, block_k)
    a = load(a_ref.at[:, k], rows=rows)
    b = load(b_ref.at[:, k], rows=cols) if trans_b else load(b_ref.at[k, :], cols=cols)
    return acc + plgpu.dot(a, b, trans_b=trans_b)
  return jax.lax.fori_loop(0, a_ref.shape[1] // block_k, step, acc)


def call(kernel, operands, out_shape, in_blocks, out_blocks, grid, tiles, name, interpret):
  """A pallas_call over (column block, row block), columns fastest: a row block of the
  activations is read from HBM once and from L2 by the other column blocks. in_blocks and
  out_blocks: (block shape, index map) of each operand and result."""
  spec = lambda shape_and_index: pl.BlockSpec(*shape_and_index)
  return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=list(map(spec, in_blocks)),
                        out_specs=list(map(spec, out_blocks)), interpret=interpret, name=name,
                        compiler_params=plgpu.CompilerParams(num_warps=tiles.warps, num_stages=tiles.stages))(*operands)


def biased_matmul(x_ref, w_ref, b_ref, block_k: int, block_shape, shape):
  """(x @ w + b in float32, its rows' and columns' in-bounds vectors) for this program's
  `block_shape` block of a (rows, columns) = `shape` product (biased_call's grid)."""
  rows, cols = in_bounds(block_shape, shape)
  h = matmul(x_ref, w_ref, block_k, jnp.zeros(block_shape, jnp.float32), rows, cols)
  return h + load(b_ref, cols=cols).astype(jnp.float32)[None, :], rows, cols


def biased_call(kernel, x, w, b, outputs: int, tiles: Tiles, name: str, interpret: bool):
  """`outputs` (batch, tokens, columns) arrays in x's dtype from kernel(x_ref, w_ref, b_ref,
  *out_refs, block_k=, shape=), each program one block of x (batch, tokens, depth) @ w
  (depth, columns) + b (biased_matmul), then its epilogue."""
  batch, tokens, depth = x.shape
  columns, rows = w.shape[1], batch * tokens
  tiles = fit(tiles, depth, columns)
  block_m, block_n, block_k = tiles[:3]
  tile = ((block_m, block_n), lambda j, i: (i, j))
  outs = call(functools.partial(kernel, block_k=block_k, shape=(rows, columns)), (x.reshape(rows, depth), w, b),
              [jax.ShapeDtypeStruct((rows, columns), x.dtype)] * outputs,
              [((block_m, depth), lambda j, i: (i, 0)), ((depth, block_n), lambda j, i: (0, j)),
               ((block_n,), lambda j, i: (j,))], [tile] * outputs,
              (pl.cdiv(columns, block_n), pl.cdiv(rows, block_m)), tiles, name, interpret)
  return [o.reshape(batch, tokens, columns) for o in outs]
