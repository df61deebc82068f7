"""Train-step throughput: plain ViT vs the TLEG auxiliary model of the same depth.

The aux model's params are computed from the learngene in every step
(tleg.expand, the kind's to_params), so the ratio aux/plain is the cost of that
computation (target ≥ 0.95 in images/s, i.e. ≤ 1.05x time). Both run in one
process taking turns with a large matmul, whose rate is the peak ("of peak");
"of spec" divides by the chip's datasheet bf16 figure instead (a fixed denominator,
lgjax.models.flops.CHIP_BF16_TFLOPS: the train loop's logged mfu). Model FLOPs are
counted analytically (lgjax.models.flops, training = 3x forward), since XLA's cost
analysis does not see the GEMMs that GPUs hand to cuBLAS.

  python -m benchmarks.train_throughput [--width 192 --depth 12 --batch 128 --image 32 --patch 4]
      [--grad-accum-steps 16]   # on a CPU: cache-sized micro-batches, the same update
  JAX_NUM_CPU_DEVICES=2 python -m benchmarks.train_throughput ...  # data parallel over 2 cores
"""

from __future__ import annotations

import argparse

import jax

from benchmarks.common import (add_model_args, interleaved_times, kernel_impls, matmul, model_config, random_batch,
                               step_runner)
from lgjax.learngene import tleg
from lgjax.models import flops
from lgjax.train import reporting


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_args(p)
  p.add_argument('--repeats', type=int, default=5, help='turns each step takes (2 timed steps each)')
  p.add_argument('--grad-accum-steps', type=int, default=1, help='micro-batches per step')
  args = p.parse_args()
  cfg = model_config(vars(args), num_classes=100)
  shape = (args.image, args.image, 3)
  batch = random_batch(args.batch, shape, 100)

  lg = tleg.init_learngene(jax.random.key(0), {**cfg, 'dtype': 'float32', 'attention_impl': None}, image_shape=shape)
  accum = args.grad_accum_steps
  runs = {'plain ViT': step_runner(cfg, tleg.expand(lg, args.depth), batch, grad_accum_steps=accum),
          'TLEG aux (params = expand(lg))': step_runner(
              cfg, lg, batch, lambda l: tleg.expand(l, args.depth), accum)}

  on_gpu = jax.default_backend() == 'gpu'
  runs['peak'], peak_gflop = matmul(8192 if on_gpu else 2048, args.dtype, count=8 if on_gpu else 1)
  times = interleaved_times(runs, args.repeats)
  peak = peak_gflop / times.pop('peak')
  train_flops = 3 * flops.forward_flops(cfg, shape)
  rows = [(name, args.batch / t, train_flops * args.batch / t / 1e9) for name, t in times.items()]
  kind = jax.devices()[0].device_kind
  spec = (flops.chip_peak(kind, args.dtype) or 0) / 1e9

  print(f'ViT width {args.width} depth {args.depth} on {args.image}x{args.image} patch {args.patch}, '
        f'attention {args.attention_impl or "default"}, {kernel_impls(vars(args))}, '
        f'drop path {args.drop_path}, batch {args.batch} in {accum} micro-batch(es), {args.dtype}, '
        f'{jax.device_count()} x {kind}; {args.dtype} matmul peak {peak:.0f} GFLOP/s, timed in turns '
        f'(MFU = "of peak"' + (f'; "of spec": of the datasheet\'s {spec:.0f} GFLOP/s per chip)' if spec else ')'))
  print(f'| {"step":<32} | {"images/s":>9} | {"GFLOP/s":>8} | {"of peak":>7} | {"of spec":>7} | {"vs plain":>8} |')
  print(f'|{"-" * 34}|{"-" * 11}|{"-" * 10}|{"-" * 9}|{"-" * 9}|{"-" * 10}|')
  for name, ips, gflops in rows:
    mfu = reporting.speed(ips, train_flops, args.dtype).get('mfu')  # as the train loop logs it
    of_spec = f'{mfu:7.1%}' if mfu is not None else f'{"-":>7}'
    print(f'| {name:<32} | {ips:9.1f} | {gflops:8.1f} | {gflops / peak:7.1%} | {of_spec} | {ips / rows[0][1]:8.3f} |')


if __name__ == '__main__':
  main()
