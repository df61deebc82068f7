"""Times jitted TLEG expansion of a ViT-B-sized learngene to depth 12.

Compares, side by side in one run, against (a) a numpy broadcast of the same
formula and (b) copying the output's bytes once (the memory-bandwidth floor).

  python -m benchmarks.expand_bench [--depth 12] [--repeats 10]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks.common import median_time
from lgjax import tree as tree_lib
from lgjax.learngene import tleg

VIT_B = dict(num_classes=1000, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--depth', type=int, default=12)
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args()
  depth = args.depth

  lg = tleg.init_learngene(jax.random.key(0), VIT_B)
  np_base = jax.tree.map(np.asarray, lg['base'])
  np_slope = jax.tree.map(np.asarray, lg['slope'])
  coeff = np.arange(depth, dtype=np.float32) / depth

  def numpy_expand():
    return jax.tree.map(lambda a, b: a[None] + coeff.reshape((depth,) + (1,) * a.ndim) * b[None],
                        np_base, np_slope)

  out_bytes = depth * tree_lib.num_params(lg['base']) * 4
  source = np.ones(out_bytes // 4, np.float32)
  target = np.empty_like(source)

  rows = []
  for scan in (False, True):
    fn = jax.jit(lambda l, scan=scan: tleg.expand(l, depth, scan=scan))
    rows.append((f'lgjax expand (jit, scan={scan})', median_time(lambda: fn(lg), args.repeats)))
  rows.append(('numpy broadcast', median_time(numpy_expand, args.repeats)))
  floor = median_time(lambda: np.copyto(target, source), args.repeats)
  rows.append(('copy output bytes once (floor)', floor))

  print(f'TLEG expand, width {VIT_B["width"]}, mlp {VIT_B["mlp_dim"]}, depth {depth}: '
        f'{out_bytes / 2**20:.0f} MiB of blocks, {jax.device_count()} {jax.default_backend()} device(s)')
  print(f'| {"what":<34} | {"ms":>8} | {"x copy floor":>12} |')
  print(f'|{"-" * 36}|{"-" * 10}|{"-" * 14}|')
  for name, t in rows:
    print(f'| {name:<34} | {t * 1e3:8.1f} | {t / floor:12.2f} |')


if __name__ == '__main__':
  main()
