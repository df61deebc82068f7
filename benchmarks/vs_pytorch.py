"""lgjax vs a minimal PyTorch ViT (the official TLEG/SWS code is PyTorch), side by side.

The same pre-norm ViT (gap pooling, tanh GELU, LayerNorm eps 1e-6) and the
same train step (forward, cross-entropy, backward, AdamW) run on the same
random data in one process; images/s, the ratio lgjax/PyTorch, and achieved
GFLOP/s (analytic model FLOPs, 3x forward) as a fraction of a matmul peak
measured in the same run. Needs the `bench` extra (PyTorch).

  python -m benchmarks.vs_pytorch [--repeats 5]
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
import torch
from torch import nn

from benchmarks.common import matmul_peak_gflops, median_time, random_batch, step_runner
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


def torch_step(c, images, labels, repeats):
  model = TorchViT(c)
  opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(labels.astype(np.int64))

  def one():
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()

  return median_time(one, repeats)


def lgjax_step(c, batch, repeats):
  cfg = dict(num_classes=CLASSES, patch_size=c['patch'], width=c['width'], depth=c['depth'],
             num_heads=c['heads'], mlp_dim=4 * c['width'])
  params = jax.jit(ViT(**cfg).init)(jax.random.key(0), batch['image'][:1])['params']
  return median_time(step_runner(cfg, params, batch), repeats), cfg


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--repeats', type=int, default=5)
  args = p.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  peak = matmul_peak_gflops()
  print(f'CPU threads {torch.get_num_threads()}, torch {torch.__version__}, jax {jax.__version__}; '
        f'f32 matmul peak {peak:.0f} GFLOP/s')
  print('| model | lgjax img/s | PyTorch img/s | lgjax/PyTorch | lgjax GFLOP/s (of peak) | PyTorch GFLOP/s (of peak) |')
  print('|---|---|---|---|---|---|')
  for c in CASES:
    batch = random_batch(c['batch'], (c['image'], c['image'], c['channels']), CLASSES)
    t_jax, cfg = lgjax_step(c, batch, args.repeats)
    t_torch = torch_step(c, np.asarray(batch['image']), np.asarray(batch['label']), args.repeats)
    gflop = 3 * flops.forward_flops(cfg, batch['image'].shape[1:]) * c['batch'] / 1e9
    print(f'| w{c["width"]} d{c["depth"]} {c["image"]}px/p{c["patch"]} b{c["batch"]} | {c["batch"] / t_jax:.1f} | '
          f'{c["batch"] / t_torch:.1f} | {t_torch / t_jax:.2f} | {gflop / t_jax:.1f} ({gflop / t_jax / peak:.0%}) | '
          f'{gflop / t_torch:.1f} ({gflop / t_torch / peak:.0%}) |', flush=True)


if __name__ == '__main__':
  main()
