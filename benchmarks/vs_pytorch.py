"""lgjax vs a minimal PyTorch ViT (the official TLEG/SWS code is PyTorch), side by side.

The same pre-norm ViT (gap pooling, tanh GELU, LayerNorm eps 1e-6) and the
same train step (forward, cross-entropy, backward, AdamW) run on the same
random images in one process (lgjax's step takes their uint8 pixels and scales
them, as train.py's does; PyTorch's takes them scaled, as from a DataLoader's
workers); images/s, the ratio lgjax/PyTorch, and achieved
GFLOP/s (analytic model FLOPs, 3x forward) as a fraction of a matmul peak
measured in the same run. Needs the `bench` extra (PyTorch).

Each model is timed four ways per framework. The step takes the whole batch
in one pass, or gradient-accumulation micro-batches of about --micro-tokens
tokens (the same update: the mean gradient over the batch), which keep a
layer's activations in cache. The cores run as one process's threads, or as
single-core data-parallel replicas: lgjax with one XLA CPU device per core
(JAX_NUM_CPU_DEVICES, the train loop's jit backend), PyTorch with
DistributedDataParallel over gloo, one single-threaded process per core (what
torchrun would start).

  python -m benchmarks.vs_pytorch [--rounds 5] [--micro-tokens 512] [--cores N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket

import jax
import numpy as np
import torch
from torch import distributed as dist, nn
from torch.nn.parallel import DistributedDataParallel

from benchmarks.common import interleaved_times, matmul, model_config, random_batch, step_runner
from lgjax import data
from lgjax.models import ViT, flops

CASES = (dict(width=192, depth=12, heads=3, image=32, patch=4, batch=128, channels=3),
         dict(width=64, depth=6, heads=4, image=28, patch=7, batch=256, channels=1))
CLASSES = 10


class TorchBlock(nn.Module):
  def __init__(self, d, heads, mlp):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
    self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
    self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)
    self.heads = heads

  def forward(self, x):
    b, t, d = x.shape
    q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    y = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
    x = x + self.proj(y)
    return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x)), approximate='tanh'))


class TorchViT(nn.Module):
  def __init__(self, c):
    super().__init__()
    d = c['width']
    self.embed = nn.Conv2d(c['channels'], d, c['patch'], c['patch'])
    self.pos = nn.Parameter(torch.zeros(1, (c['image'] // c['patch']) ** 2, d))
    self.blocks = nn.Sequential(*[TorchBlock(d, c['heads'], 4 * d) for _ in range(c['depth'])])
    self.norm, self.head = nn.LayerNorm(d, eps=1e-6), nn.Linear(d, CLASSES)

  def forward(self, x):
    x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
    return self.head(self.norm(self.blocks(x)).mean(1))


def torch_train(model, images, labels, accum):
  """() -> None: one PyTorch train step, `accum` micro-batches of the batch (NHWC numpy).
  Under DDP only the last micro-batch's backward all-reduces the gradients."""
  opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(labels.astype(np.int64))
  no_sync = getattr(model, 'no_sync', contextlib.nullcontext)

  def one():
    opt.zero_grad(set_to_none=True)
    for i, (xs, ys) in enumerate(zip(x.chunk(accum), y.chunk(accum))):
      with contextlib.nullcontext() if i == accum - 1 else no_sync():
        (nn.functional.cross_entropy(model(xs), ys) / accum).backward()
    opt.step()

  return one


def _ddp_worker(rank, world, port, c, images, labels, accum, conn):
  """One single-threaded DDP replica on its rows of the batch; runs steps when told."""
  torch.set_num_threads(1)
  dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
  rows = slice(rank * len(labels) // world, (rank + 1) * len(labels) // world)
  one = torch_train(DistributedDataParallel(TorchViT(c)), images[rows], labels[rows], accum)
  with contextlib.suppress(EOFError):  # the parent exited
    while steps := conn.recv():
      for _ in range(steps):
        one()
      conn.send(None)


def torch_ddp(c, images, labels, accum, world):
  """() -> None: one DDP step over `world` single-threaded processes (gloo), as torchrun
  would start on this CPU; the processes start now and wait between calls."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  ctx = torch.multiprocessing.get_context('spawn')
  conns = []
  for rank in range(world):
    conn, child = ctx.Pipe()
    ctx.Process(target=_ddp_worker, args=(rank, world, port, c, images, labels, accum, child),
                daemon=True).start()
    conns.append(conn)

  def one():
    for conn in conns:
      conn.send(1)
    for conn in conns:
      conn.recv()

  return one


def lgjax_step(c, batch, accum, devices):
  """() -> loss: one lgjax train step, `accum` micro-batches, data parallel over `devices`."""
  cfg = model_config(c, CLASSES)
  params = jax.jit(ViT(**cfg).init)(jax.random.key(0), batch['image'][:1])['params']
  return step_runner(cfg, params, batch, grad_accum_steps=accum, devices=devices)


def micro_batches(c, micro_tokens: int) -> int:
  """Gradient-accumulation steps whose micro-batches hold about `micro_tokens` tokens."""
  images = max(1, micro_tokens // (c['image'] // c['patch']) ** 2)
  while c['batch'] % images:
    images -= 1
  return c['batch'] // images


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--rounds', type=int, default=5, help='turns each step takes (2 timed steps each)')
  p.add_argument('--micro-tokens', type=int, default=512, help='tokens per micro-batch (all replicas)')
  p.add_argument('--cores', type=int, default=os.cpu_count() or 1, help='threads, or single-core replicas')
  args = p.parse_args()
  jax.config.update('jax_num_cpu_devices', args.cores)  # before any device use
  torch.set_num_threads(args.cores)
  print(f'{args.cores} CPU cores, torch {torch.__version__}, jax {jax.__version__}; '
        'peak: a 2048^2 f32 matmul, timed in turns with the steps')
  print('| model | step | cores as | lgjax img/s | PyTorch img/s | lgjax/PyTorch | lgjax GFLOP/s (of peak) | '
        'PyTorch GFLOP/s (of peak) | peak GFLOP/s |')
  print('|---|---|---|---|---|---|---|---|---|')
  parallel = {'threads': 1, 'replicas': args.cores}
  for c in CASES:
    batch = random_batch(c['batch'], (c['image'], c['image'], c['channels']), CLASSES)
    images, labels = np.asarray(data.to_float(batch['image'])), np.asarray(batch['label'])  # as a torch loader's
    steps = {}
    for accum in (1, micro_batches(c, args.micro_tokens)):
      for how, n in parallel.items():
        steps['lgjax', accum, how] = lgjax_step(c, batch, accum, jax.devices()[:n])
        steps['torch', accum, how] = (torch_ddp(c, images, labels, accum, n) if n > 1 else
                                      torch_train(TorchViT(c), images, labels, accum))
    steps['peak'], peak_gflop = matmul()
    times = interleaved_times(steps, args.rounds)
    peak = peak_gflop / times.pop('peak')
    gflop = 3 * flops.forward_flops(model_config(c, CLASSES), batch['image'].shape[1:]) * c['batch'] / 1e9
    for _, accum, how in [k for k in times if k[0] == 'lgjax']:
      t_jax, t_torch = times['lgjax', accum, how], times['torch', accum, how]
      step = 'whole batch' if accum == 1 else f'{accum} x {c["batch"] // accum} images'
      cores = f'{args.cores} threads' if how == 'threads' else f'{args.cores} replicas'
      print(f'| w{c["width"]} d{c["depth"]} {c["image"]}px/p{c["patch"]} b{c["batch"]} | {step} | {cores} | '
            f'{c["batch"] / t_jax:.1f} | {c["batch"] / t_torch:.1f} | {t_torch / t_jax:.2f} | '
            f'{gflop / t_jax:.1f} ({gflop / t_jax / peak:.0%}) | {gflop / t_torch:.1f} ({gflop / t_torch / peak:.0%}) | '
            f'{peak:.0f} |')
    best = lambda who: min(t for k, t in times.items() if k[0] == who)
    print(f'| | each at its best | | | | {best("torch") / best("lgjax"):.2f} | | | |', flush=True)


if __name__ == '__main__':
  main()
