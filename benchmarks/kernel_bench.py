"""lgjax's Pallas kernels alone at a ViT's activation shape, forward and forward + backward,
against XLA's ops as the model runs them without the kernels, timed in turns:

- residual_norm (norm_impl='pallas'): a residual add and the LayerNorm after it. Its rate
  is the HBM rate its bytes imply: x and h read and x' and y written forward; x', dy and
  dx' read and dx' written backward, plus the forward again.
- gelu_mlp (mlp_impl='pallas'): the MLP (Dense, GELU, Dense) with the bias and GELU in
  the matmuls' epilogues. Its rate is TFLOP/s: 4 x tokens x width x mlp_dim forward
  (mlp_dim = 4 x width), 3 times that with the backward.
- qkv_projection (qkv_impl='pallas'): attention's query, key and value projections with
  the query's bias in its matmul and the input's three gradients summed in one. TFLOP/s:
  6 x tokens x width^2 forward, 3 times that with the backward.

On a GPU the kernels run; elsewhere their jnp formulas run through XLA.

  python -m benchmarks.kernel_bench [--batch 1024 --tokens 196 --width 384 --dtype bfloat16] [--rounds 5]
      [--tiles 128x128x64x8x3,64x256x64x8x4]   (pallas_gemm.Tiles of both GEMM kernels:
                                                block_m x block_n x block_k x warps x stages)
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.common import interleaved_times
from lgjax.models import gelu_mlp, pallas_gemm, qkv_projection, residual_norm, vit

EPS = 1e-6


def xla_norm(x, h, b, scale, bias):
  """The unfused model's ops: the branch's bias, the residual add, then nn.LayerNorm."""
  new_x = x + (h + b.astype(h.dtype))
  y = nn.LayerNorm(epsilon=EPS, dtype=x.dtype).apply({'params': {'scale': scale, 'bias': bias}}, new_x)
  return new_x, y


def fused_norm(x, h, b, scale, bias):
  return residual_norm.add_layer_norm(x, h, b, None, scale, bias, epsilon=EPS, dtype=x.dtype)


def xla_mlp(params, x):
  """vit.MlpBlock as the model applies it without mlp_impl."""
  return vit.MlpBlock(params['params']['Dense_0']['bias'].shape[0], dtype=x.dtype).apply(params, x, True)


def fused_mlp(tiles: pallas_gemm.Tiles):
  """vit.PallasMlpBlock's computation, with `tiles`."""
  def fn(params, x):
    d0, d1 = params['params']['Dense_0'], params['params']['Dense_1']
    return gelu_mlp.mlp(x, d0['kernel'], d0['bias'], d1['kernel'], tiles=tiles) + d1['bias'].astype(x.dtype)
  return fn


def xla_qkv(p, x):
  """vit.MultiHeadDotProductAttention's projections as the model runs them without qkv_impl."""
  project = lambda name: jnp.einsum('...d,dhk->...hk', x, p[name]['kernel'].astype(x.dtype))
  return project('query') + p['query']['bias'].astype(x.dtype), project('key'), project('value')


def fused_qkv(tiles: pallas_gemm.Tiles):
  """The same by qkv_projection.project, with `tiles`."""
  return lambda p, x: qkv_projection.project(x, p['query']['kernel'], p['query']['bias'], p['key']['kernel'],
                                             p['value']['kernel'], tiles=tiles)


def gemm_runs(op, fns, params, x, cotangent, flops):
  """runs' entries of one GEMM kernel: forward and forward + backward of each fn (XLA's
  ops first), `flops` (TFLOP) forward and 3 times that with the backward."""
  found = {}
  for name, fn in fns:
    forward = jax.jit(fn)
    both = jax.jit(lambda p, x, fn=fn: jax.vjp(fn, p, x)[1](cotangent))
    try:  # a tiling Triton cannot compile (e.g. out of shared memory) is reported, not fatal
      forward.lower(params, x).compile(), both.lower(params, x).compile()
    except Exception as e:  # noqa: BLE001 (Triton's and XLA's errors have no common type)
      print(f'{op}, {name}: does not compile here ({type(e).__name__}: {str(e)[:200]})')
      continue
    for part, fn, work in (('forward', forward, 1), ('forward + backward', both, 3)):
      found[f'{op}, {name}: {part}'] = (lambda f=fn: f(params, x), work * flops, 'TFLOP/s', f'{op}, XLA ops: {part}')
  return found


def runs(x, dtype, keys, tiles):
  """name -> (fn of no args, work it does, unit of the rate, the name of XLA's run)."""
  width = x.shape[-1]
  h, dnew_x, dy = (jax.random.normal(k, x.shape, dtype) for k in keys[:3])
  b, scale = jax.random.normal(keys[3], (width,)), 1.0 + jax.random.normal(keys[4], (width,))
  bias, tensor, found = jnp.zeros((width,)), x.size * dtype.itemsize, {}
  for name, fn in (('XLA ops', xla_norm), ('residual_norm', fused_norm)):
    forward = jax.jit(fn)
    both = jax.jit(lambda *a, fn=fn: jax.vjp(fn, *a)[1]((dnew_x, dy)))
    for part, fn, work in (('forward', forward, 4), ('forward + backward', both, 8)):
      found[f'norm, {name}: {part}'] = (lambda f=fn: f(x, h, b, scale, bias), work * tensor / 1e9, 'GB/s',
                                        f'norm, XLA ops: {part}')
  params = vit.MlpBlock(4 * width).init(keys[5], x[:1], True)
  found |= gemm_runs('MLP', [('XLA ops', xla_mlp), *((f'gelu_mlp {t}', fused_mlp(t)) for t in tiles)],
                     params, x, dy, 4 * x.size * 4 * width / 1e12)
  heads = max(1, width // 64)
  attention = vit.MultiHeadDotProductAttention(heads)
  params = attention.init(keys[5], x[:1])['params']
  dqkv = tuple(d.reshape(*x.shape[:-1], heads, -1) for d in (h, dnew_x, dy))
  found |= gemm_runs('QKV', [('XLA ops', xla_qkv), *((f'qkv_projection {t}', fused_qkv(t)) for t in tiles)],
                     params, x, dqkv, 6 * x.size * width / 1e12)
  return found


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=1024)
  p.add_argument('--tokens', type=int, default=196)
  p.add_argument('--width', type=int, default=384)
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--tiles', default=None, help='tiles of the GEMM kernels (gelu_mlp, qkv_projection) to time, '
                 'comma-separated (default: pallas_gemm.TILES, what the model runs)')
  args = p.parse_args()
  tiles = [pallas_gemm.TILES] if args.tiles is None else [
      pallas_gemm.Tiles(*map(int, t.split('x'))) for t in args.tiles.split(',')]
  dtype = jnp.dtype(args.dtype)
  keys = jax.random.split(jax.random.key(0), 7)
  x = jax.random.normal(keys[6], (args.batch, args.tokens, args.width), dtype)
  found = runs(x, dtype, keys, tiles)
  times = interleaved_times({name: fn for name, (fn, *_) in found.items()}, args.rounds)
  where = 'Pallas kernels' if jax.default_backend() == 'gpu' else 'jnp formulas (no GPU here)'
  print(f'({args.batch}, {args.tokens}, {args.width}) {args.dtype} on {jax.devices()[0].device_kind}; the kernels '
        f'run their {where}. Rate: GB/s of the fused kernels\' bytes, or TFLOP/s of the GEMM kernels\' matmuls')
  wide = max(map(len, times))
  print(f'| {"run":<{wide}} | {"ms":>8} | {"rate":>16} | {"vs XLA":>7} |')
  print(f'|{"-" * (wide + 2)}|{"-" * 10}|{"-" * 18}|{"-" * 9}|')
  for name, t in times.items():
    _, work, unit, base = found[name]
    print(f'| {name:<{wide}} | {t * 1e3:8.3f} | {work / t:8.4g} {unit:>7} | {times[base] / t:6.2f}x |')


if __name__ == '__main__':
  main()
