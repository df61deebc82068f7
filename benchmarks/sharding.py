"""Replicated vs sharded (FSDP) train state: per-device memory and step time.

Each row is the train loop's jit backend for one `sharding.fsdp` (1: every device
holds the whole params and Adam moments; k: each holds 1/k of every large leaf),
the same model, batch and step. Memory per device is XLA's own account of the
compiled step (arguments: state and batch; temporaries: activations, gradients,
gathered weights) and the state's bytes on device 0; a row fits the budget when
arguments + temporaries do. `init/dev` is what creating the state takes per device
(output + temporaries of the loop's jitted init, lgjax.train.loop.state_init): under
FSDP no device ever holds the whole state. Steps are timed in turns (benchmarks.common).

  JAX_NUM_CPU_DEVICES=8 python -m benchmarks.sharding   # CPU devices stand in for accelerators
  python -m benchmarks.sharding --width 1024 --heads 16 --depth 24 --budget-gb 4   # ViT-L layers
  python -m benchmarks.sharding --scan --remat-policy nothing_saveable   # activations recomputed
"""

from __future__ import annotations

import argparse

import jax
import optax

from benchmarks.common import add_model_args, interleaved_times, model_config, random_batch, step_runner
from lgjax import tree as tree_lib
from lgjax.models import ViT
from lgjax.train import loop, parallel

GB = 1 << 30


def device0_bytes(tree) -> int:
  device = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == device)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_args(p, width=768, heads=12, depth=6, batch=16, patch=8)
  p.add_argument('--fsdp', default='1,-1', help='comma-separated sharding.fsdp values (-1: all devices)')
  p.add_argument('--budget-gb', type=float, default=0.5, help='memory per device the model must fit in')
  p.add_argument('--min-size', type=int, default=parallel.MIN_SHARD_SIZE, help='sharding.min_size')
  p.add_argument('--scan', action='store_true', help='scan over layers (weights gathered one layer at a time)')
  p.add_argument('--remat-policy', default=None, help='ViT.remat_policy (e.g. nothing_saveable: with --scan, '
                                                      'each block keeps only its input for the backward pass)')
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()
  cfg = model_config(vars(args), num_classes=1000, scan=args.scan, remat_policy=args.remat_policy)
  shape = (args.image, args.image, 3)
  batch = random_batch(args.batch, shape, 1000)
  init = jax.jit(lambda rng: ViT(**cfg).init(rng, batch['image'][:1])['params'])
  params = init(jax.random.key(0))
  count = tree_lib.num_params(params)

  runs, memory = {}, {}
  for fsdp in (int(f) for f in args.fsdp.split(',')):
    backend = parallel.make_backend('jit', {'fsdp': fsdp, 'min_size': args.min_size})
    name = 'replicated' if fsdp == 1 else f'fsdp {parallel.fsdp_size(fsdp)}'
    runs[name] = step_runner(cfg, params, batch, backend=backend)
    stats = runs[name].compiled().memory_analysis()
    create, _ = loop.state_init(init, optax.adamw(1e-3), backend, jax.random.key(0), jax.random.key(1))
    made = create.lower(jax.random.key(0), jax.random.key(1)).compile().memory_analysis()
    memory[name] = (device0_bytes(runs[name].state()), made.output_size_in_bytes + made.temp_size_in_bytes,
                    stats.argument_size_in_bytes, stats.temp_size_in_bytes)
  times = interleaved_times(runs, args.repeats)

  print(f'ViT width {args.width} depth {args.depth} ({count / 1e6:.1f}M params), {args.image}x{args.image} '
        f'patch {args.patch}, batch {args.batch}, {args.dtype}{", scan" if args.scan else ""}'
        f'{", remat " + args.remat_policy if args.remat_policy else ""}, '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}; budget {args.budget_gb:g} GiB per device')
  print(f'| {"state":<10} | {"state/dev MiB":>13} | {"init/dev MiB":>12} | {"args/dev MiB":>12} '
        f'| {"temp/dev MiB":>12} | {"fits":>4} | {"step s":>7} | {"vs replicated":>13} |')
  print(f'|{"-" * 12}|{"-" * 15}|{"-" * 14}|{"-" * 14}|{"-" * 14}|{"-" * 6}|{"-" * 9}|{"-" * 15}|')
  first = next(iter(times.values()))
  for name, t in times.items():
    state, made, arguments, temp = memory[name]
    fits = 'yes' if arguments + temp <= args.budget_gb * GB else 'no'
    print(f'| {name:<10} | {state / 2**20:13.1f} | {made / 2**20:12.1f} | {arguments / 2**20:12.1f} '
          f'| {temp / 2**20:12.1f} | {fits:>4} | {t:7.3f} | {t / first:13.2f} |')


if __name__ == '__main__':
  main()
