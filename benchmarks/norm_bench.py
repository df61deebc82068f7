"""A residual add and the LayerNorm after it, forward and forward + backward, at a ViT's
activation shape: XLA's ops (as the model runs them with norm_impl=None) against
lgjax.models.residual_norm (norm_impl='pallas'), timed in turns.

Each row reports ms and the HBM rate the fused kernels' bytes imply at that time: x and h
read and x' and y written forward; x', dy and dx' read and dx' written backward, plus the
forward again (the vjp recomputes nothing else). On a GPU the fused rows run the Pallas
kernels; elsewhere they run residual_norm's jnp formulas through XLA.

  python -m benchmarks.norm_bench [--batch 1024 --tokens 196 --width 384 --dtype bfloat16] [--rounds 5]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.common import interleaved_times
from lgjax.models import residual_norm

EPS = 1e-6


def xla_ops(x, h, b, scale, bias):
  """The unfused model's ops: the branch's bias, the residual add, then nn.LayerNorm."""
  new_x = x + (h + b.astype(h.dtype))
  y = nn.LayerNorm(epsilon=EPS, dtype=x.dtype).apply({'params': {'scale': scale, 'bias': bias}}, new_x)
  return new_x, y


def fused(x, h, b, scale, bias):
  return residual_norm.add_layer_norm(x, h, b, None, scale, bias, epsilon=EPS, dtype=x.dtype)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--batch', type=int, default=1024)
  p.add_argument('--tokens', type=int, default=196)
  p.add_argument('--width', type=int, default=384)
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--rounds', type=int, default=5)
  args = p.parse_args()
  shape, dtype = (args.batch, args.tokens, args.width), jnp.dtype(args.dtype)
  keys = jax.random.split(jax.random.key(0), 6)
  x, h, dnew_x, dy = (jax.random.normal(k, shape, dtype) for k in keys[:4])
  b, scale = jax.random.normal(keys[4], (args.width,)), 1.0 + jax.random.normal(keys[5], (args.width,))
  bias = jnp.zeros((args.width,))
  runs, moved = {}, {}
  tensor = x.size * dtype.itemsize
  for name, fn in (('XLA ops', xla_ops), ('residual_norm', fused)):
    forward = jax.jit(fn)
    both = jax.jit(lambda *a, fn=fn: jax.vjp(fn, *a)[1]((dnew_x, dy)))
    runs[f'{name}: forward'] = lambda forward=forward: forward(x, h, b, scale, bias)
    runs[f'{name}: forward + backward'] = lambda both=both: both(x, h, b, scale, bias)
    moved[f'{name}: forward'], moved[f'{name}: forward + backward'] = 4 * tensor, 8 * tensor
  times = interleaved_times(runs, args.rounds)
  where = 'Pallas kernels' if jax.default_backend() == 'gpu' else 'jnp formulas (no GPU here)'
  print(f'x + (h + b), then LayerNorm: ({args.batch}, {args.tokens}, {args.width}) {args.dtype} on '
        f'{jax.devices()[0].device_kind}; residual_norm runs its {where}. GB/s: the fused kernels\' bytes '
        f'({4 * tensor / 1e9:.2f} GB forward, {8 * tensor / 1e9:.2f} GB both) over the time')
  print(f'| {"run":<34} | {"ms":>8} | {"GB/s":>8} | {"vs XLA":>7} |')
  print(f'|{"-" * 36}|{"-" * 10}|{"-" * 10}|{"-" * 9}|')
  for name, t in times.items():
    base = times[name.replace('residual_norm', 'XLA ops')]
    print(f'| {name:<34} | {t * 1e3:8.3f} | {moved[name] / t / 1e9:8.0f} | {base / t:6.2f}x |')


if __name__ == '__main__':
  main()
