"""The memory traffic of a train step's GPU kernels, on a machine without a GPU.

Compiles the step `profile_step` traces (`common.train_step`) for an H100 or H200 that
is not here (XLA's deviceless compilation, from a target description of the chip) and
reads the kernels out of the compiled HLO: each fusion or library call is one kernel, and its operands
and outputs are what it reads from and writes to HBM, at least. It also prints XLA's memory analysis
of the step (temporaries and arguments per device). Memory-bound kernels
(LayerNorm, GELU, bias and residual adds, bias gradients) take about their bytes over
the HBM rate, so a change to the model or to XLA's flags can be judged by the bytes
it saves before a GPU is lent; a profile on the GPU confirms it. On an H200, DeiT-S's
elementwise kernels moved 128 GB in 36.4 ms a step (3.55 TB/s, the default rate here;
benchmarks/results/gpu_h200.md, batch 1024).

Needs JAX's CUDA plugin (~6 GB; no GPU or driver), best in a scratch virtual environment:

  python -m venv /tmp/aot && /tmp/aot/bin/pip install -e . "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"
  /tmp/aot/bin/python -m benchmarks.kernel_bytes [--chip h200] [--width 384 --depth 12 --heads 6 --image 224
      --patch 16 --batch 1024 --dtype bfloat16 --attention-impl cudnn] [--scan] [--block 5] [--out DIR]

A scanned model's kernels are its loop body's, once per block; a kernel that slices one
layer out of the stacked arrays, or updates one in place, counts that layer's bytes.

XLA_FLAGS apply as on a GPU (e.g. --xla_gpu_enable_cublaslt=true), so flags can be compared too.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
from typing import NamedTuple

import jax
from jax.experimental import topologies

from benchmarks import common, profile_step
from lgjax.train import parallel

# What XLA needs to know of a chip to compile for it (xla/stream_executor/device_description.proto).
CHIPS = {
    'h100': dict(name='NVIDIA H100 80GB HBM3', bandwidth=3.35e12, memory=80 * 2 ** 30),
    'h200': dict(name='NVIDIA H200', bandwidth=4.8e12, memory=141 * 10 ** 9),
}
HOPPER = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth:.0f} l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 9 }}
device_description_str: "{name}"
"""
GEMM_KERNELS = ('gelu_mlp', 'qkv_projection')  # the Pallas kernels that are GEMMs (their pallas_call names)
KINDS = ('GEMM', 'attention', 'elementwise / reduction', 'copy', 'other')
_NOT_KERNELS = ('parameter', 'constant', 'bitcast', 'tuple', 'get-tuple-element', 'fusion-done')  # done: its start's


class Kernel(NamedTuple):
  name: str
  kind: str    # one of KINDS
  bytes: int   # operands + outputs
  shape: str   # its output
  where: str   # the model op it comes from (metadata op_name)


def kernels(hlo_text: str) -> list[Kernel]:
  """The compiled step's kernels in order: each instruction of the entry computation that
  is not a parameter, constant, bitcast or tuple plumbing (which run no kernel), and a
  while loop's (a scanned model's layers) as its body's kernels once per trip."""
  ops = profile_step.parse_hlo(hlo_text)
  computations = profile_step.computations(hlo_text)

  def listed(computation: str) -> list[Kernel]:
    found = []
    for name, _, _, rest in profile_step.INSTRUCTION.findall(computation):
      op = ops[name]
      if op.opcode == 'while':
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        found += listed(computations[re.search(r'body=%([^,\s]+)', rest).group(1)]) * int(trips.group(1) if trips else 1)
      elif op.opcode not in _NOT_KERNELS:
        found.append(Kernel(name, kind_of(op), op.bytes, re.sub(r'\{[^}]*\}', '', op.shape), op.where))
    return found

  return listed(computations[re.search(r'^ENTRY %(\S+) ', hlo_text, re.M).group(1)])


def kind_of(op: profile_step.HloOp) -> str:
  """GEMM (a dot or convolution, or a fusion or library call around one), attention
  (cuDNN's fused attention), copy (a copy or transpose alone), or an elementwise /
  reduction fusion."""
  target = op.target.lower()
  if 'fmha' in target or 'attention' in target:
    return 'attention'
  if op.matmul or re.search(r'gemm|matmul|cublas|conv', target):
    return 'GEMM'
  if 'triton' in target:  # a Pallas kernel: a GEMM (pallas_gemm's users), or residual_norm's (memory-bound)
    return 'GEMM' if any(name in op.where for name in GEMM_KERNELS) else 'elementwise / reduction'
  if op.opcode in ('copy', 'transpose') or (op.opcode == 'fusion' and set(op.fuses.split()) <= {'copy', 'transpose'}):
    return 'copy'
  return 'elementwise / reduction' if op.opcode == 'fusion' else 'other'


def by_kind(found: list[Kernel]) -> dict[str, tuple[int, int]]:
  """Kind -> (kernels, bytes), in KINDS order."""
  totals = collections.defaultdict(lambda: [0, 0])
  for k in found:
    totals[k.kind][0] += 1
    totals[k.kind][1] += k.bytes
  return {kind: tuple(totals[kind]) for kind in KINDS if kind in totals}


def block_kernels(found: list[Kernel], block: int) -> list[tuple[str, str, Kernel]]:
  """(pass, model op, kernel) for one encoder block's non-GEMM kernels, in order: what each
  op of a block costs in HBM traffic (an unscanned ViT's blocks compile alike)."""
  rows = []
  for k in found:
    at = re.search(rf'.*encoderblock_{block}/(?:checkpoint/)?(?:rematted_computation/)?(.*)', k.where)
    if at and k.kind != 'GEMM':
      rows.append(('backward' if 'transpose(' in k.where else 'forward', at.group(1), k))
  return rows


def topology_devices(name: str) -> list:
  """The chips of `name` as XLA describes them, to compile for (none needed): a TPU slice
  libtpu knows (e.g. v5e:4x4), or CHIP:N, N GPUs of CHIPS on one host (e.g.
  h200:8; JAX's CUDA plugin)."""
  jax.config.update('jax_platforms', 'cpu')  # before any backend starts: nothing looks for a chip
  chip, _, count = name.partition(':')
  try:
    if chip in CHIPS:
      return list(topologies.get_topology_desc(platform='cuda', topology=f'1x1x{int(count)}',
                                               target_config=HOPPER.format(**CHIPS[chip])).devices)
    return list(topologies.get_topology_desc(topology_name=name, platform='tpu').devices)
  except Exception as e:  # a missing libtpu or CUDA plugin, an unknown slice: whatever they raise
    needs = (f'JAX\'s CUDA plugin (pip install "jax[cuda12]=={jax.__version__}"' if chip in CHIPS else
             f'libtpu (pip install "jax[tpu]=={jax.__version__}"')
    raise SystemExit(f'Compiling for {name} needs {needs}, in a scratch venv) and a topology it knows, '
                     f'e.g. v5e:4x4, v4:2x2x2 or h200:8. ({type(e).__name__}: {e})')


def compile_for(chip: str, model_cfg: dict, image_shape: tuple, batch_size: int) -> jax.stages.Compiled:
  """benchmarks.common.train_step compiled for `chip`, from shapes alone (its HLO: .as_text();
  its memory: .memory_analysis())."""
  return common.compile_step(model_cfg, image_shape, batch_size, parallel.JitBackend(topology_devices(f'{chip}:1')))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--chip', default='h200', choices=sorted(CHIPS))
  common.add_model_args(p, width=384, heads=6, image=224, patch=16, batch=1024, dtype='bfloat16', attention_impl='cudnn')
  p.add_argument('--rate-tbps', type=float, default=3.55, help='HBM rate of memory-bound kernels')
  p.add_argument('--block', type=int, default=None, help='list this block\'s kernels (default: the middle one)')
  p.add_argument('--scan', action='store_true', help='ViT.scan: the blocks as one loop (nn.scan)')
  p.add_argument('--out', default=None, help='directory for the compiled HLO')
  args = p.parse_args()
  cfg = common.model_config(vars(args), num_classes=1000, scan=args.scan)
  compiled = compile_for(args.chip, cfg, (args.image, args.image, 3), args.batch)
  hlo, memory = compiled.as_text(), compiled.memory_analysis()
  found = kernels(hlo)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'step_hlo.txt'), 'w') as f:
      f.write(hlo)
  print(f'ViT width {args.width} depth {args.depth} heads {args.heads}, {args.image}px/p{args.patch}, '
        f'batch {args.batch}, {args.dtype}, attention {args.attention_impl}, {common.kernel_impls(vars(args))}: the train step compiled for '
        f'{CHIPS[args.chip]["name"]}, {len(found)} kernels; XLA\'s memory analysis: '
        f'{memory.temp_size_in_bytes / 1e9:.2f} GB of temporaries, {memory.argument_size_in_bytes / 1e9:.2f} GB '
        f'of arguments')
  print(f'| kernels | count | GB moved | ms at {args.rate_tbps} TB/s (memory-bound ones) |\n|---|---|---|---|')
  for kind, (count, size) in by_kind(found).items():
    ms = f'{size / args.rate_tbps / 1e9:.1f}' if kind in ('elementwise / reduction', 'copy') else '(compute-bound)'
    print(f'| {kind} | {count} | {size / 1e9:.1f} | {ms} |')
  block = args.depth // 2 if args.block is None else args.block
  rows, totals = block_kernels(found, block), collections.Counter()
  if not rows:
    print(f'\nNo kernels named for block {block}: a scanned model\'s blocks share one loop body, '
          'counted above once per block.')
    return
  print(f'\nBlock {block}\'s other kernels (those of 16 MiB or more listed):\n| pass | op | kind | output | MB |\n'
        '|---|---|---|---|---|')
  for phase, op, k in rows:
    totals[phase] += k.bytes
    if k.bytes >= 2 ** 24:
      print(f'| {phase} | {op} | {k.kind} | {k.shape} | {k.bytes / 1e6:,.0f} |')
  for phase, size in totals.items():
    print(f'| {phase} | all | | | {size / 1e6:,.0f} |')


if __name__ == '__main__':
  main()
