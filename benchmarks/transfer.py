"""Does a learngene make a descendant train faster? The transfer protocol, with ablations.

The protocol (issue 13, as an independent PyTorch check ran it), through
lgjax's own recipes with overrides only:
- MNIST-5k: source = digits 0-4, downstream = digits 5-9 (400/class train);
- ViT 28x28, patch 7, width 64, 4 heads, mlp 256, cls token, exact GELU,
  no dropout, drop path, augmentation or label smoothing;
- teacher: depth 6, 800 steps, batch 128, AdamW lr 1e-3, wd 0.05, cosine,
  no warmup or clipping; TLEG auxiliary model: depth 6, 800 steps, batch
  128, pure soft distillation (alpha 1, tau 1) from the teacher;
- descendants (every param but the head inherited): 300 steps, batch 64,
  lr 1e-3; test accuracy every 25 steps.
Arms: `tleg` (the learngene expanded to the depth), `scratch`, and `body`
(the teacher's whole depth-6 body). Each seed trains its own teacher and
learngene and fine-tunes with the same seed.

A variant changes one thing against the protocol (e.g. one part of the
initialization), so the table says what each piece does. Writes
transfer.md (and transfer_quick.md) to --out; runs resume from --work.

  python -m benchmarks.transfer [--quick] [--variants deit,big_vision]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import numpy as np

from benchmarks.common import train_once
from configs import descendant, teacher, tleg_aux
from lgjax.models import inits
from lgjax.train.reporting import eval_curve

STEPS = (25, 50, 100, 300)
ARMS = ('tleg', 'scratch', 'body')
TEACHER_DEPTH = 6
_DEIT, _BV = inits.SCHEMES['deit'], inits.SCHEMES['big_vision']


@dataclasses.dataclass(frozen=True)
class Variant:
  """One change to the protocol: an init scheme and ViT/optimizer overrides."""
  about: str
  param_init: str
  model: tuple = ()  # (field, value) overrides of every ViT

inits.SCHEMES.setdefault('big_vision+torch_kernels', dataclasses.replace(
    _BV, kernel=inits.SCHEMES['torch'].kernel, mlp_bias=_DEIT.mlp_bias))
inits.SCHEMES.setdefault('deit+torch_head', dataclasses.replace(_DEIT, head_kernel=inits.SCHEMES['torch'].kernel))
_ZERO, _RANDOM = (('head_zeroinit', True),), (('head_zeroinit', False),)

VARIANTS = {
    'deit': Variant("the papers' init (DeiT/timm), heads trunc-normal(0.02): lgjax's default", 'deit', _RANDOM),
    'deit+zero_head': Variant("the papers' init, heads 0", 'deit', _ZERO),
    'torch': Variant("PyTorch's layer defaults, pos/cls 0.02, heads U(+-1/sqrt(width)) "
                     "(as the independent PyTorch check)", 'torch', _RANDOM),
    'torch+zero_head': Variant("PyTorch's layer defaults, heads 0", 'torch', _ZERO),
    'big_vision+zero_head': Variant("big_vision's init with its zero heads: lgjax's default before",
                                    'big_vision', _ZERO),
    'big_vision': Variant("big_vision's init, heads lecun-normal", 'big_vision', _RANDOM),
    'deit+torch_head': Variant("the papers' init, heads as PyTorch's nn.Linear (U(+-1/sqrt(width)), "
                               "as DeiT's reset_classifier); in results/transfer.md its teachers and "
                               "learngenes are `deit`'s, the head being the only change", 'deit+torch_head', _RANDOM),
    'big_vision+zero_head+torch_kernels': Variant(
        "big_vision's init and zero heads, with PyTorch's default Linear kernels (1.7x smaller)",
        'big_vision+torch_kernels', _ZERO),
}
FULL_VARIANTS = ('deit', 'deit+zero_head', 'torch', 'torch+zero_head', 'big_vision+zero_head')


@dataclasses.dataclass(frozen=True)
class Plan:
  upstream_steps: int
  finetune_steps: int
  depths: tuple[int, ...]
  seeds: tuple[int, ...]


FULL = Plan(upstream_steps=800, finetune_steps=300, depths=(2, 4, 6, 8), seeds=(0, 1, 2))
ABLATION = dataclasses.replace(FULL, depths=(2, 6))  # the component variants: two depths
QUICK = Plan(upstream_steps=200, finetune_steps=100, depths=(2, 6), seeds=(0,))


def protocol(config, variant: Variant, *, depth: int, steps: int, batch: int, seed: int):
  """The protocol's overrides of a recipe's config (lr 1e-3 absolute = lr·batch/512);
  descendants are evaluated every 25 steps, upstream runs at their end."""
  every = min(25, steps) if config.kind == 'descendant' else steps
  config.update(total_steps=steps, batch_size=batch, seed=seed, checkpoint_every=steps,
                eval_every=every, log_every=25)
  config.model.update(depth=depth, mlp_dim=256, pool_type='tok', gelu_approximate=False,
                      param_init=variant.param_init, **dict(variant.model))
  config.optimizer.update(lr=1e-3 * 512 / batch, warmup_steps=0, clip_norm=0.0, weight_decay=0.05)
  config.loss.label_smoothing = 0.0
  return config


def run(config, workdir: str) -> dict[int, float]:
  """The run's eval curve (step -> accuracy); a finished run is read, not redone."""
  return eval_curve(train_once(config, workdir))


def upstream(work: str, variant: Variant, plan: Plan, seed: int) -> tuple[str, str, float]:
  """Trains the teacher and the TLEG learngene of one seed; (teacher dir, learngene dir, aux accuracy)."""
  kw = dict(depth=TEACHER_DEPTH, steps=plan.upstream_steps, batch=128, seed=seed)
  t_dir = os.path.join(work, f'teacher_seed{seed}')
  run(protocol(teacher.get_config('mnist5k'), variant, **kw), t_dir)
  aux = protocol(tleg_aux.get_config('mnist5k'), variant, **kw)
  aux.teacher.dir = os.path.join(t_dir, 'export')
  aux.loss.update(alpha=1.0, temperature=1.0)
  a_dir = os.path.join(work, f'tleg_seed{seed}')
  curve = run(aux, a_dir)
  return os.path.join(t_dir, 'export'), os.path.join(a_dir, 'export'), curve[max(curve)]


def finetune(work: str, variant: Variant, plan: Plan, seed: int, arm: str, depth: int,
             dirs: tuple[str, str]) -> dict[int, float]:
  config = protocol(descendant.get_config('mnist5k'), variant, depth=depth,
                    steps=plan.finetune_steps, batch=64, seed=seed)
  if arm == 'tleg':
    config.init.update(method='tleg', learngene_dir=dirs[1])
  elif arm == 'body':  # the teacher's whole body: every block, a fresh head
    config.init.update(method='condense', source=dirs[0], layers=list(range(depth)))
  else:
    config.init.method = 'scratch'
  return run(config, os.path.join(work, f'{arm}_d{depth}_seed{seed}'))


def study(work: str, name: str, plan: Plan) -> dict:
  """Every arm, depth and seed of one variant: {'aux': [acc], (arm, depth): [curve per seed]}."""
  variant, out = VARIANTS[name], {'aux': []}
  for seed in plan.seeds:
    dirs = upstream(os.path.join(work, name), variant, plan, seed)
    out['aux'].append(dirs[2])
    for depth in plan.depths:
      for arm in ARMS:
        if arm != 'body' or depth == TEACHER_DEPTH:
          out.setdefault((arm, depth), []).append(
              finetune(os.path.join(work, name), variant, plan, seed, arm, depth, dirs[:2]))
  return out


def at(curves: list[dict[int, float]], step: int) -> np.ndarray:
  return np.array([c[step] for c in curves])


def table(name: str, result: dict, plan: Plan) -> list[str]:
  steps = [s for s in STEPS if s <= plan.finetune_steps]
  lines = [f'### `{name}`: {VARIANTS[name].about}', '',
           f'TLEG auxiliary model on the source test set: {np.mean(result["aux"]):.3f} '
           f'(seeds: {", ".join(f"{a:.3f}" for a in result["aux"])}).', '',
           '| depth | arm | ' + ' | '.join(f'step {s}' for s in steps) + ' | tleg - scratch at step '
           f'{steps[0]} |', '|---|---|' + '---|' * (len(steps) + 1)]
  for depth in plan.depths:
    for arm in ARMS:
      if (arm, depth) not in result:
        continue
      cells = [f'{at(result[arm, depth], s).mean():.3f} ± {at(result[arm, depth], s).std():.3f}' for s in steps]
      gain = ''
      if arm != 'scratch':
        g = at(result[arm, depth], steps[0]) - at(result['scratch', depth], steps[0])
        gain = f'{g.mean():+.3f}'
      lines.append(f'| {depth} | {arm} | ' + ' | '.join(cells) + f' | {gain} |')
  return lines + ['']


def summary(results: dict[str, dict], plans: dict[str, Plan]) -> list[str]:
  """One line per variant: gains at the first step, body accuracy, aux accuracy."""
  depths = sorted({d for p in plans.values() for d in p.depths})
  first = STEPS[0]
  lines = ['| variant | aux on source | ' + ' | '.join(f'tleg - scratch d{d}' for d in depths)
           + f' | body d{TEACHER_DEPTH} | scratch d{TEACHER_DEPTH} |',
           '|---|---|' + '---|' * (len(depths) + 2)]
  for name, r in results.items():
    gains = [f'{(at(r["tleg", d], first) - at(r["scratch", d], first)).mean():+.3f}'
             if ('tleg', d) in r else '' for d in depths]
    lines.append(f'| `{name}` | {np.mean(r["aux"]):.3f} | ' + ' | '.join(gains)
                 + f' | {at(r["body", TEACHER_DEPTH], first).mean():.3f}'
                 + f' | {at(r["scratch", TEACHER_DEPTH], first).mean():.3f} |')
  return lines


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default='benchmarks/results')
  p.add_argument('--work', default='/tmp/lgjax_transfer')
  p.add_argument('--quick', action='store_true', help='one seed, short runs: minutes')
  p.add_argument('--variants', default=','.join(VARIANTS),
                 help=f'comma-separated, of {list(VARIANTS)}; {list(FULL_VARIANTS)} run at every depth')
  args = p.parse_args()
  names = args.variants.split(',')
  unknown = set(names) - set(VARIANTS)
  if unknown:
    p.error(f'--variants: unknown {sorted(unknown)}; expected some of {list(VARIANTS)}')
  work = os.path.join(args.work, 'quick' if args.quick else 'full')
  jax.config.update('jax_compilation_cache_dir', os.path.join(args.work, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  plans = {n: QUICK if args.quick else (FULL if n in FULL_VARIANTS else ABLATION) for n in names}
  start = time.perf_counter()
  results = {n: study(work, n, plans[n]) for n in names}
  minutes = (time.perf_counter() - start) / 60
  first = STEPS[0]
  lines = ['# Transfer: descendants from a TLEG learngene vs scratch, one change at a time', '',
           __doc__.split('\n\n')[1], '',
           f'Mean ± std over seeds {list(next(iter(plans.values())).seeds)}; wall time {minutes:.0f} min '
           '(runs resumed from an earlier invocation count as 0).', '',
           f'## Summary: gain over scratch at step {first}, and the teacher\'s body', '',
           *summary(results, plans), '', '## Every variant', '']
  for n in names:
    lines += table(n, results[n], plans[n])
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'transfer_quick.md' if args.quick else 'transfer.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
