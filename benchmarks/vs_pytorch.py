"""lgjax vs a minimal PyTorch ViT (the official TLEG/SWS code is PyTorch), side by side.

The same pre-norm ViT (gap pooling, tanh GELU, LayerNorm eps 1e-6) and the
same train step (forward, cross-entropy, backward, AdamW) run on the same
random data in one process; images/s, the ratio lgjax/PyTorch, and achieved
GFLOP/s (analytic model FLOPs, 3x forward) as a fraction of a matmul peak
measured in the same run. Needs the `bench` extra (PyTorch).

Each model is timed twice per framework: the whole batch in one pass, and as
gradient-accumulation micro-batches of about --micro-tokens tokens (the same
update: the mean gradient over the batch). On a CPU the micro-batches keep a
layer's activations in cache; XLA:CPU gains far more from that than PyTorch.

  python -m benchmarks.vs_pytorch [--rounds 5] [--micro-tokens 512]
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
import torch
from torch import nn

from benchmarks.common import interleaved_times, matmul, random_batch, step_runner
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


def torch_step(c, images, labels, accum):
  """() -> None: one PyTorch train step, `accum` micro-batches of the same batch."""
  model = TorchViT(c)
  opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(labels.astype(np.int64))

  def one():
    opt.zero_grad(set_to_none=True)
    for xs, ys in zip(x.chunk(accum), y.chunk(accum)):
      (nn.functional.cross_entropy(model(xs), ys) / accum).backward()
    opt.step()

  return one


def model_config(c):
  return dict(num_classes=CLASSES, patch_size=c['patch'], width=c['width'], depth=c['depth'],
              num_heads=c['heads'], mlp_dim=4 * c['width'])


def lgjax_step(c, batch, accum):
  """() -> loss: one lgjax train step, `accum` micro-batches of the same batch."""
  cfg = model_config(c)
  params = jax.jit(ViT(**cfg).init)(jax.random.key(0), batch['image'][:1])['params']
  return step_runner(cfg, params, batch, grad_accum_steps=accum)


def micro_batches(c, micro_tokens: int) -> int:
  """Gradient-accumulation steps whose micro-batches hold about `micro_tokens` tokens."""
  images = max(1, micro_tokens // (c['image'] // c['patch']) ** 2)
  while c['batch'] % images:
    images -= 1
  return c['batch'] // images


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--rounds', type=int, default=5, help='turns each step takes (2 timed steps each)')
  p.add_argument('--micro-tokens', type=int, default=512, help='tokens per micro-batch in the second row')
  args = p.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  print(f'CPU threads {torch.get_num_threads()}, torch {torch.__version__}, jax {jax.__version__}; '
        'peak: a 2048^2 f32 matmul, timed in turns with the steps')
  print('| model | step | lgjax img/s | PyTorch img/s | lgjax/PyTorch | lgjax GFLOP/s (of peak) | '
        'PyTorch GFLOP/s (of peak) | peak GFLOP/s |')
  print('|---|---|---|---|---|---|---|---|')
  for c in CASES:
    batch = random_batch(c['batch'], (c['image'], c['image'], c['channels']), CLASSES)
    images, labels = np.asarray(batch['image']), np.asarray(batch['label'])
    steps = {}
    for accum in (1, micro_batches(c, args.micro_tokens)):
      steps['lgjax', accum] = lgjax_step(c, batch, accum)
      steps['torch', accum] = torch_step(c, images, labels, accum)
    steps['peak', 0], peak_gflop = matmul()
    times = interleaved_times(steps, args.rounds)
    peak = peak_gflop / times.pop(('peak', 0))
    gflop = 3 * flops.forward_flops(model_config(c), batch['image'].shape[1:]) * c['batch'] / 1e9
    for accum in sorted({a for _, a in times}):
      t_jax, t_torch = times['lgjax', accum], times['torch', accum]
      how = 'whole batch' if accum == 1 else f'{accum} x {c["batch"] // accum} images'
      print(f'| w{c["width"]} d{c["depth"]} {c["image"]}px/p{c["patch"]} b{c["batch"]} | {how} | '
            f'{c["batch"] / t_jax:.1f} | {c["batch"] / t_torch:.1f} | {t_torch / t_jax:.2f} | '
            f'{gflop / t_jax:.1f} ({gflop / t_jax / peak:.0%}) | {gflop / t_torch:.1f} ({gflop / t_torch / peak:.0%}) | '
            f'{peak:.0f} |')
    best = lambda who: min(t for (w, _), t in times.items() if w == who)
    print(f'| | each at its best | | | {best("torch") / best("lgjax"):.2f} | | | |', flush=True)


if __name__ == '__main__':
  main()
