"""Replicated vs sharded (FSDP) train state: per-device memory, collectives and step time.

Each row is the train loop's jit backend for one `sharding.fsdp` (1: every device
holds the whole params and Adam moments; k: each holds 1/k of every large leaf),
the same model, batch and step. Memory per device is XLA's own account of the
compiled step (arguments: state and batch; temporaries: activations, gradients,
gathered weights) and the state's bytes per device; a row fits the budget when
arguments + temporaries do. `init/dev` is what creating the state takes per device
(output + temporaries of the loop's jitted init, lgjax.train.loop.state_init): under
FSDP no device ever holds the whole state. `gathered`, `all-reduced` and `scattered`
are the MiB of arrays the compiled step all-gathers, all-reduces and reduce-scatters
per device (collected_bytes), each computation of its HLO counted once (a scanned
model's loop body once, not per layer). Steps are timed in turns (benchmarks.common).

`--topology NAME` compiles the same steps for chips that are not here: a TPU slice,
e.g. v5e:4x4 (16 chips on 4 hosts), v4:2x2x4, v5p:4x4x4 or v6e:8x8 (libtpu), or
h100:N / h200:N, N GPUs of one host (JAX's CUDA plugin, as kernel_bytes): XLA's
deviceless compilation, best in a scratch virtual environment. Memory is then that
compiler's account, the budget the chip's HBM, and nothing runs, so there are no step
times. (Deviceless XLA:GPU 0.10 finds no Triton GEMM tiles for some sharded bf16 steps:
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false; 0.11 does.)

  JAX_NUM_CPU_DEVICES=8 python -m benchmarks.sharding   # CPU devices stand in for accelerators
  python -m benchmarks.sharding --width 1024 --heads 16 --depth 24 --budget-gb 4   # ViT-L layers
  python -m benchmarks.sharding --scan --remat-policy nothing_saveable   # activations recomputed
  python -m venv /tmp/tpu && /tmp/tpu/bin/pip install -e . "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"
  /tmp/tpu/bin/python -m benchmarks.sharding --topology v5e:4x4 --width 1024 --heads 16 --depth 24 \\
      --image 224 --patch 16 --batch 512 --dtype bfloat16   # ViT-L/16 on 16 v5e chips
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import optax

from benchmarks import kernel_bytes, profile_step
from benchmarks.common import add_model_args, compile_step, interleaved_times, model_config, random_batch, step_runner
from lgjax import tree as tree_lib
from lgjax.models import ViT, param_shapes
from lgjax.train import loop, parallel

GB = 1 << 30
MiB = 1 << 20
HBM_GIB = {'TPU v4': 32, 'TPU v5 lite': 16, 'TPU v5': 95, 'TPU v6 lite': 32,  # per chip (v4, v5e, v5p, v6e)
           **{chip['name']: chip['memory'] / GB for chip in kernel_bytes.CHIPS.values()}}


def per_device_bytes(shapes, shardings) -> int:
  """Bytes of `shapes` (arrays or ShapeDtypeStructs) that each device holds under `shardings`."""
  return sum(math.prod(where.shard_shape(x.shape)) * x.dtype.itemsize
             for x, where in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)))


def collected_bytes(hlo_text: str) -> dict[str, int]:
  """'gathered', 'all-reduced' and 'reduce-scattered' -> bytes of the whole arrays a compiled
  step collects per device: each all-gather's output, each all-reduce's output, each
  reduce-scatter's input, XLA:TPU's reduce-scatter being an all-reduce fused with the slice
  it keeps (in a computation named all-reduce-scatter). An async pair counts once, at its done."""
  totals = {'gathered': 0, 'all-reduced': 0, 'reduce-scattered': 0}
  for computation, body in profile_step.computations(hlo_text).items():
    shapes = {}
    for name, shape, opcode, rest in profile_step.INSTRUCTION.findall(body):
      shapes[name] = shape
      op = opcode.removesuffix('-done')
      if op == 'all-gather':
        totals['gathered'] += profile_step.shape_bytes(shape)
      elif op == 'all-reduce':
        scatter = computation.startswith('all-reduce-scatter')
        totals['reduce-scattered' if scatter else 'all-reduced'] += profile_step.shape_bytes(shape)
      elif op == 'reduce-scatter':
        totals['reduce-scattered'] += sum(profile_step.shape_bytes(shapes.get(o, ''))
                                          for o in profile_step.operands(rest))
  return totals


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_args(p, width=768, heads=12, depth=6, batch=16, patch=8)
  p.add_argument('--fsdp', default='1,-1', help='comma-separated sharding.fsdp values (-1: all devices)')
  p.add_argument('--budget-gb', type=float, default=None,
                 help='memory per device the model must fit in (default 0.5; with --topology the chip\'s HBM)')
  p.add_argument('--min-size', type=int, default=parallel.MIN_SHARD_SIZE, help='sharding.min_size')
  p.add_argument('--scan', action='store_true', help='scan over layers (weights gathered one layer at a time)')
  p.add_argument('--remat-policy', default=None, help='ViT.remat_policy (e.g. nothing_saveable: with --scan, '
                                                      'each block keeps only its input for the backward pass)')
  p.add_argument('--topology', default=None,
                 help='chips to compile for instead: a TPU slice (e.g. v5e:4x4) or GPUs of one host (h200:8)')
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()
  devices = kernel_bytes.topology_devices(args.topology) if args.topology else jax.devices()
  kind = devices[0].device_kind
  budget = args.budget_gb or (HBM_GIB.get(kind) if args.topology else 0.5)
  if budget is None:
    raise SystemExit(f'--budget-gb: no HBM size known for {kind!r} (known: {HBM_GIB}); give one.')
  cfg = model_config(vars(args), num_classes=1000, scan=args.scan, remat_policy=args.remat_policy)
  shape = (args.image, args.image, 3)
  init = lambda rng: ViT(**cfg).init(rng, jnp.zeros((1, *shape), jnp.uint8))['params']
  count = tree_lib.num_params(param_shapes(cfg, shape))
  key = jax.eval_shape(lambda: jax.random.key(0))

  runs, rows = {}, {}
  for fsdp in (int(f) for f in args.fsdp.split(',')):
    size = parallel.fsdp_size(fsdp, len(devices))
    backend = (parallel.FsdpBackend(fsdp, args.min_size, devices) if size > 1 else parallel.JitBackend(devices))
    name = 'replicated' if size == 1 else f'fsdp {size}'
    create, shardings = loop.state_init(init, optax.adamw(1e-3), backend, jax.random.key(0), jax.random.key(1))
    made = create.lower(key, key).compile().memory_analysis()
    state = per_device_bytes(jax.eval_shape(create, key, key), shardings)
    try:
      compiled = compile_step(cfg, shape, args.batch, backend)
    except jax.errors.JaxRuntimeError as e:  # a TPU compiler that finds the step too big for the chip says so
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      rows[name] = (state, made.output_size_in_bytes + made.temp_size_in_bytes, str(e).splitlines()[0])
      continue
    stats = compiled.memory_analysis()
    rows[name] = (state, made.output_size_in_bytes + made.temp_size_in_bytes,
                  stats.argument_size_in_bytes, stats.temp_size_in_bytes, collected_bytes(compiled.as_text()))
    if not args.topology:
      runs[name] = step_runner(cfg, jax.jit(init)(jax.random.key(0)), random_batch(args.batch, shape, 1000),
                               backend=backend)
  times = interleaved_times(runs, args.repeats) if runs else {}

  print(f'ViT width {args.width} depth {args.depth} ({count / 1e6:.1f}M params), {args.image}x{args.image} '
        f'patch {args.patch}, batch {args.batch}, {args.dtype}{", scan" if args.scan else ""}'
        f'{", remat " + args.remat_policy if args.remat_policy else ""}, {len(devices)} x {kind}'
        f'{f" ({args.topology}, compiled for, not run)" if args.topology else ""}; budget {budget:g} GiB per device')
  print(table(rows, times, budget))


def table(rows: dict, times: dict, budget: float) -> str:
  """The markdown table of main's rows: name -> (state, init, arguments, temporaries, collected
  bytes), or (state, init, XLA's refusal) for a step the compiler found too big."""
  lines = [f'| {"state":<10} | {"state/dev MiB":>13} | {"init/dev MiB":>12} | {"args/dev MiB":>12} '
           f'| {"temp/dev MiB":>12} | {"fits":>4} | {"gathered MiB":>12} | {"all-reduced MiB":>15} '
           f'| {"scattered MiB":>13} |' + (f' {"step s":>7} | {"vs replicated":>13} |' if times else ''),
           f'|{"-" * 12}|{"-" * 15}|{"-" * 14}|{"-" * 14}|{"-" * 14}|{"-" * 6}|{"-" * 14}|{"-" * 17}|{"-" * 15}|'
           + (f'{"-" * 9}|{"-" * 15}|' if times else '')]
  first, refusals = next(iter(times.values()), None), []
  for name, (state, made, *step) in rows.items():
    line = f'| {name:<10} | {state / MiB:13.1f} | {made / MiB:12.1f} | '
    if len(step) == 1:
      refusals.append(f'{name}: XLA did not compile the step: {step[0]}')
      lines.append(line + f'{"-":>12} | {"-":>12} | {"no":>4} | {"-":>12} | {"-":>15} | {"-":>13} |')
      continue
    arguments, temp, collected = step
    fits = 'yes' if arguments + temp <= budget * GB else 'no'
    line += (f'{arguments / MiB:12.1f} | {temp / MiB:12.1f} | {fits:>4} | {collected["gathered"] / MiB:12.1f} '
             f'| {collected["all-reduced"] / MiB:15.1f} | {collected["reduce-scattered"] / MiB:13.1f} |')
    lines.append(line + (f' {times[name]:7.3f} | {times[name] / first:13.2f} |' if times else ''))
  return '\n'.join(lines + refusals)

if __name__ == '__main__':
  main()
