"""An independent PyTorch implementation of the transfer protocol, to cross-check lgjax.

The protocol of benchmarks/transfer.py (teacher, TLEG auxiliary model by pure
soft distillation, descendants fine-tuned 300 steps), written plainly in
PyTorch with its own defaults: Linear/Conv layers as PyTorch initializes
them, position embedding and cls token N(0, 0.02), AdamW on every param,
cosine schedule. It reads the same MNIST-5k splits as lgjax.

Its parameter names map one to one onto lgjax's, so each framework can
fine-tune the other's teacher (`--teacher-from lgjax:DIR`): that splits a
gap between them into "the pretrained model" and "the fine-tuning loop".
Needs the `bench` extra (PyTorch).

  python -m benchmarks.transfer_torch [--seeds 0,1,2] [--depths 2,6] [--teacher-from lgjax:DIR]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lgjax.data import mnist5k

WIDTH, HEADS, MLP, PATCH, CLASSES, TEACHER_DEPTH = 64, 4, 256, 7, 5, 6
STEPS = (25, 50, 100, 300)


class Block(nn.Module):
  def __init__(self):
    super().__init__()
    self.ln1, self.ln2 = nn.LayerNorm(WIDTH, eps=1e-6), nn.LayerNorm(WIDTH, eps=1e-6)
    self.q, self.k, self.v, self.out = (nn.Linear(WIDTH, WIDTH) for _ in range(4))
    self.fc1, self.fc2 = nn.Linear(WIDTH, MLP), nn.Linear(MLP, WIDTH)

  def forward(self, x):
    b, t, d = x.shape
    y = self.ln1(x)
    q, k, v = (f(y).reshape(b, t, HEADS, d // HEADS).transpose(1, 2) for f in (self.q, self.k, self.v))
    x = x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
    return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ViT(nn.Module):
  """Pre-norm ViT, cls token read out, pos embedding on the patches (as lgjax's)."""

  def __init__(self, depth: int):
    super().__init__()
    self.embed = nn.Conv2d(1, WIDTH, PATCH, PATCH)
    self.pos = nn.Parameter(torch.randn(1, (28 // PATCH) ** 2, WIDTH) * 0.02)
    self.cls = nn.Parameter(torch.randn(1, 1, WIDTH) * 0.02)
    self.blocks = nn.ModuleList(Block() for _ in range(depth))
    self.norm, self.head = nn.LayerNorm(WIDTH, eps=1e-6), nn.Linear(WIDTH, CLASSES)

  def forward(self, x):
    x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
    x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1)
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x)[:, 0])


def data(split: str, classes: str):
  images, labels = mnist5k.load(split, classes)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
  return x, torch.from_numpy(labels.astype(np.int64))


def accuracy(model, x, y) -> float:
  model.eval()
  with torch.no_grad():
    acc = float((model(x).argmax(-1) == y).float().mean())
  model.train()
  return acc


def train(model, classes: str, *, steps: int, batch: int, seed: int, teacher=None,
          eval_at=()) -> dict[int, float]:
  """AdamW lr 1e-3, wd 0.05, cosine to 0, no warmup; CE, or KL to `teacher` (tau 1)."""
  x, y = data('train', classes)
  xt, yt = data('test', classes)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
  gen = torch.Generator().manual_seed(seed)
  order, curve = torch.randperm(len(y), generator=gen), {}
  pos = 0
  for step in range(1, steps + 1):
    if pos + batch > len(y):  # a new epoch, a new order
      order, pos = torch.randperm(len(y), generator=gen), 0
    idx = order[pos:pos + batch]
    pos += batch
    logits = model(x[idx])
    if teacher is None:
      loss = F.cross_entropy(logits, y[idx])
    else:
      with torch.no_grad():
        t = F.log_softmax(teacher(x[idx]), -1)
      loss = F.kl_div(F.log_softmax(logits, -1), t, log_target=True, reduction='batchmean')
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    if step in eval_at or step == steps:
      curve[step] = accuracy(model, xt, yt)
  return curve


def tleg_expand(base: ViT, slope: dict[str, torch.Tensor], depth: int) -> ViT:
  """A depth-`depth` ViT: non-block params of `base`, block l = A + (l / depth) B."""
  out = ViT(depth)
  state = {k: v for k, v in base.state_dict().items() if not k.startswith('blocks.')}
  a = {k[len('blocks.0.'):]: v for k, v in base.state_dict().items() if k.startswith('blocks.0.')}
  for l in range(depth):
    state.update({f'blocks.{l}.{k}': a[k] + (l / depth) * slope[k] for k in a})
  out.load_state_dict(state)
  return out


class TLEGAux(nn.Module):
  """The auxiliary model: params (A, B) with block l of `depth` = A + (l/depth) B."""

  def __init__(self, depth: int):
    super().__init__()
    self.depth, self.base = depth, ViT(1)
    for name, p in self.base.blocks[0].named_parameters():  # the paper's init
      with torch.no_grad():
        if name.endswith('weight') and p.ndim == 2:
          nn.init.trunc_normal_(p, std=0.02)
        elif 'ln' in name and name.endswith('weight'):
          p.fill_(1.0)
        else:
          p.zero_()
    self.slope = nn.ParameterDict({k.replace('.', '__'): nn.Parameter(
        torch.randn_like(p) * 0.02 if p.ndim == 2 else torch.zeros_like(p))
        for k, p in self.base.blocks[0].named_parameters()})

  def forward(self, x):
    m = self.base
    x = m.embed(x).flatten(2).transpose(1, 2) + m.pos
    x = torch.cat([m.cls.expand(len(x), -1, -1), x], 1)
    for l in range(self.depth):
      params = {k: p + (l / self.depth) * self.slope[k.replace('.', '__')]
                for k, p in m.blocks[0].named_parameters()}
      x = torch.func.functional_call(m.blocks[0], params, (x,))
    return m.head(m.norm(x)[:, 0])

  def slopes(self) -> dict[str, torch.Tensor]:
    return {k.replace('__', '.'): p.detach() for k, p in self.slope.items()}


def from_lgjax(directory: str) -> ViT:
  """An lgjax params export as this ViT (same names up to layout)."""
  from lgjax import checkpoint, tree
  params, cfg = checkpoint.load_params(directory)
  flat = {n: np.asarray(x) for n, x in tree.flatten_with_names(params)}
  model = ViT(cfg['depth'])
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  state = {'embed.weight': t(flat['embedding/kernel'].transpose(3, 2, 0, 1)),
           'embed.bias': t(flat['embedding/bias']), 'pos': t(flat['pos_embedding']), 'cls': t(flat['cls']),
           'norm.weight': t(flat['Transformer/encoder_norm/scale']),
           'norm.bias': t(flat['Transformer/encoder_norm/bias']),
           'head.weight': t(flat['head/kernel'].T), 'head.bias': t(flat['head/bias'])}
  for l in range(cfg['depth']):
    p = f'Transformer/encoderblock_{l}/'
    a = p + 'MultiHeadDotProductAttention_0/'
    for name in ('query', 'key', 'value'):
      state[f'blocks.{l}.{name[0]}.weight'] = t(flat[a + name + '/kernel'].reshape(WIDTH, WIDTH).T)
      state[f'blocks.{l}.{name[0]}.bias'] = t(flat[a + name + '/bias'].reshape(WIDTH))
    state[f'blocks.{l}.out.weight'] = t(flat[a + 'out/kernel'].reshape(WIDTH, WIDTH).T)
    state[f'blocks.{l}.out.bias'] = t(flat[a + 'out/bias'])
    for mine, theirs in (('ln1', 'LayerNorm_0'), ('ln2', 'LayerNorm_1')):
      state[f'blocks.{l}.{mine}.weight'] = t(flat[p + theirs + '/scale'])
      state[f'blocks.{l}.{mine}.bias'] = t(flat[p + theirs + '/bias'])
    for mine, theirs in (('fc1', 'Dense_0'), ('fc2', 'Dense_1')):
      state[f'blocks.{l}.{mine}.weight'] = t(flat[p + 'MlpBlock_0/' + theirs + '/kernel'].T)
      state[f'blocks.{l}.{mine}.bias'] = t(flat[p + 'MlpBlock_0/' + theirs + '/bias'])
  model.load_state_dict(state)
  return model


def finetune(body: ViT | None, depth: int, seed: int, zero_head: bool = False) -> dict[int, float]:
  """Every param but the head from `body` (None: scratch), 300 steps of batch 64."""
  torch.manual_seed(1000 + seed)
  model = ViT(depth)
  if zero_head:
    nn.init.zeros_(model.head.weight)
  if body is not None:
    state = {k: v for k, v in body.state_dict().items() if not k.startswith('head.')}
    model.load_state_dict({**model.state_dict(), **state})
  return train(model, 'downstream', steps=300, batch=64, seed=seed, eval_at=STEPS)


def table(rows: dict, heads: list[str]) -> list[str]:
  """Markdown: mean ± std over seeds at each eval step, per head init, arm and depth."""
  keys = sorted({k[1:] for k in rows}, key=lambda k: (k[0], k[2], k[1]))
  seeds = sorted({k[0] for k in rows})
  lines = ['| head | depth | arm | ' + ' | '.join(f'step {s}' for s in STEPS) + ' |',
           '|---|---|---|' + '---|' * len(STEPS)]
  for head, arm, depth in keys:
    cells = []
    for step in STEPS:
      v = np.array([rows[s, head, arm, depth][step] for s in seeds])
      cells.append(f'{v.mean():.3f} ± {v.std():.3f}')
    lines.append(f'| {head} | {depth} | {arm} | ' + ' | '.join(cells) + ' |')
  return lines


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--depths', default='2,6')
  p.add_argument('--heads', default='random,zero',
                 help="descendant heads: 'random' (PyTorch's Linear default) and/or 'zero'")
  p.add_argument('--teacher-from', default='',
                 help='lgjax:DIR with {seed}: fine-tune lgjax teacher exports instead of training here')
  p.add_argument('--out', default='', help='a markdown file for the table')
  p.add_argument('--ablations', action='store_true',
                 help='also TLEG with slope B = 0 and with B permuted within each parameter (as benchmarks/claims.py)')
  args = p.parse_args()
  torch.set_num_threads(1)
  heads = args.heads.split(',')
  rows, notes = {}, []
  for seed in map(int, args.seeds.split(',')):
    torch.manual_seed(seed)
    aux = None
    if args.teacher_from:
      teacher = from_lgjax(args.teacher_from.removeprefix('lgjax:').format(seed=seed))
    else:
      teacher = ViT(TEACHER_DEPTH)
      t_acc = train(teacher, 'source', steps=800, batch=128, seed=seed)[800]
      aux = TLEGAux(TEACHER_DEPTH)
      teacher.eval()
      aux_acc = train(aux, 'source', steps=800, batch=128, seed=seed, teacher=teacher)[800]
      notes.append(f'seed {seed}: teacher {t_acc:.3f}, TLEG aux {aux_acc:.3f} on the source test set')
      print(notes[-1], flush=True)
    for head in heads:
      zero = head == 'zero'
      rows[seed, head, 'body', TEACHER_DEPTH] = finetune(teacher, TEACHER_DEPTH, seed, zero)
      for depth in map(int, args.depths.split(',')):
        rows[seed, head, 'scratch', depth] = finetune(None, depth, seed, zero)
        if aux is not None:
          rows[seed, head, 'tleg', depth] = finetune(tleg_expand(aux.base, aux.slopes(), depth), depth, seed, zero)
          if args.ablations:
            g = torch.Generator().manual_seed(seed)
            for arm, slope in (('tleg_b0', {k: torch.zeros_like(v) for k, v in aux.slopes().items()}),
                               ('tleg_shuffled', {k: v.flatten()[torch.randperm(v.numel(), generator=g)].view_as(v)
                                                  for k, v in aux.slopes().items()})):
              rows[seed, head, arm, depth] = finetune(tleg_expand(aux.base, slope, depth), depth, seed, zero)
  lines = table(rows, heads)
  print('\n'.join(lines))
  if args.out:
    source = f'lgjax teachers {args.teacher_from}' if args.teacher_from else 'teachers and learngenes trained here'
    with open(args.out, 'w') as f:
      f.write('\n'.join([f'# Transfer protocol in PyTorch ({source})', '', *notes, '',
                          f'Mean ± std over seeds {args.seeds}.', '', *lines]) + '\n')


if __name__ == '__main__':
  main()
