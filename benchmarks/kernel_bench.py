"""lgjax's Pallas kernels alone at a ViT's activation shape, forward and forward + backward,
against XLA's ops as the model runs them without the kernels, timed in turns:

- residual_norm (norm_impl='pallas'): a residual add and the LayerNorm after it. Its rate
  is the HBM rate its bytes imply: x and h read and x' and y written forward; x', dy and
  dx' read and dx' written backward, plus the forward again.
- gelu_mlp (mlp_impl='pallas'): the MLP (Dense, GELU, Dense) with the bias and GELU in
  the matmuls' epilogues. Its rate is TFLOP/s: 4 x tokens x width x mlp_dim forward
  (mlp_dim = 4 x width), 3 times that with the backward.

On a GPU the kernels run; elsewhere their jnp formulas run through XLA.

  python -m benchmarks.kernel_bench [--batch 1024 --tokens 196 --width 384 --dtype bfloat16] [--rounds 5]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.common import interleaved_times
from lgjax.models import residual_norm, vit

EPS = 1e-6


def xla_norm(x, h, b, scale, bias):
  """The unfused model's ops: the branch's bias, the residual add, then nn.LayerNorm."""
  new_x = x + (h + b.astype(h.dtype))
  y = nn.LayerNorm(epsilon=EPS, dtype=x.dtype).apply({'params': {'scale': scale, 'bias': bias}}, new_x)
  return new_x, y


def fused_norm(x, h, b, scale, bias):
  return residual_norm.add_layer_norm(x, h, b, None, scale, bias, epsilon=EPS, dtype=x.dtype)


def mlp(module_class, width: int, dtype):
  """module_class (vit.MlpBlock or vit.PallasMlpBlock) applied as the model applies it."""
  module = module_class(4 * width, dtype=dtype)
  return lambda params, x: module.apply(params, x, True)


def runs(x, dtype, keys):
  """name -> (fn of no args, work it does, unit of the rate)."""
  width = x.shape[-1]
  h, dnew_x, dy = (jax.random.normal(k, x.shape, dtype) for k in keys[:3])
  b, scale = jax.random.normal(keys[3], (width,)), 1.0 + jax.random.normal(keys[4], (width,))
  bias, tensor, found = jnp.zeros((width,)), x.size * dtype.itemsize, {}
  for name, fn in (('XLA ops', xla_norm), ('residual_norm', fused_norm)):
    forward = jax.jit(fn)
    both = jax.jit(lambda *a, fn=fn: jax.vjp(fn, *a)[1]((dnew_x, dy)))
    found[f'norm, {name}: forward'] = (lambda f=forward: f(x, h, b, scale, bias), 4 * tensor / 1e9, 'GB/s')
    found[f'norm, {name}: forward + backward'] = (lambda f=both: f(x, h, b, scale, bias), 8 * tensor / 1e9, 'GB/s')
  params = vit.MlpBlock(4 * width).init(keys[5], x[:1], True)
  flops = 4 * x.size * 4 * width / 1e12
  for name, cls in (('XLA ops', vit.MlpBlock), ('gelu_mlp', vit.PallasMlpBlock)):
    forward = jax.jit(mlp(cls, width, dtype))
    both = jax.jit(lambda p, x, fn=forward: jax.vjp(fn, p, x)[1](dy))
    found[f'MLP, {name}: forward'] = (lambda f=forward: f(params, x), flops, 'TFLOP/s')
    found[f'MLP, {name}: forward + backward'] = (lambda f=both: f(params, x), 3 * flops, 'TFLOP/s')
  return found


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=1024)
  p.add_argument('--tokens', type=int, default=196)
  p.add_argument('--width', type=int, default=384)
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--rounds', type=int, default=5)
  args = p.parse_args()
  dtype = jnp.dtype(args.dtype)
  keys = jax.random.split(jax.random.key(0), 7)
  x = jax.random.normal(keys[6], (args.batch, args.tokens, args.width), dtype)
  found = runs(x, dtype, keys)
  times = interleaved_times({name: fn for name, (fn, _, _) in found.items()}, args.rounds)
  where = 'Pallas kernels' if jax.default_backend() == 'gpu' else 'jnp formulas (no GPU here)'
  print(f'({args.batch}, {args.tokens}, {args.width}) {args.dtype} on {jax.devices()[0].device_kind}; the kernels '
        f'run their {where}. Rate: GB/s of the fused kernels\' bytes, or TFLOP/s of the MLP\'s matmuls')
  print(f'| {"run":<40} | {"ms":>8} | {"rate":>14} | {"vs XLA":>7} |')
  print(f'|{"-" * 42}|{"-" * 10}|{"-" * 16}|{"-" * 9}|')
  for name, t in times.items():
    _, work, unit = found[name]
    base = times[name.replace('residual_norm', 'XLA ops').replace('gelu_mlp', 'XLA ops')]
    print(f'| {name:<40} | {t * 1e3:8.3f} | {work / t:6.4g} {unit:>7} | {base / t:6.2f}x |')


if __name__ == '__main__':
  main()
