"""Learngene Pool vs SN-Net-style anchors, the learngene way: pools built on digits 0-4, stitched models trained on 5-9.

Upstream, on MNIST-5k source digits (0-4): a teacher (the mnist5k preset), and
from it a pool of 3 instances (widths 32/48/64, depth 4) distilled two ways:
lgjax's recipe (every instance layer's states supervised through one width
map, pool.supervise='every') and the official code's (the last block's only,
'last'). SN-Net's anchors: the same 3 configs, each trained alone on source
for as many steps.

Step 0, on source: every spec of the pool assembled with its least-squares
stitch (one random training batch), before any stitched training. Does a
cross spec keep its instances' accuracy?

Downstream, on digits 5-9: every spec trained jointly (one drawn per step, as
SN-Net), heads re-initialized for the new classes, for --steps-per-spec x
(number of specs) steps, so that each spec gets its own budget. Arms: (pool
or anchors) x stitch.rule ('snnet': every pair, same relative depth; 'pool':
narrow -> wide at neighbouring cuts, the official code's), and random
instances (fresh inits) stitched and trained the same way.

Writes pool_vs_snnet.md and .png (downstream accuracy vs FLOPs per arm).

  python -m benchmarks.pool_vs_snnet [--quick] [--out benchmarks/results] [--work /tmp/lgjax_pool_bench]
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

from benchmarks.common import train_once
from configs import pool_distill, stitched, teacher
from lgjax import checkpoint
from lgjax.learngene import load_learngene, save_learngene
from lgjax import tree as tree_lib
from lgjax.learngene import pool as pool_lib
from lgjax.models import ViT
from lgjax.train import pool_training
from lgjax.train.reporting import read_metrics

PRESET = 'mnist5k'
IMAGE = (28, 28, 1)


def run(config, workdir: str) -> dict[str, float]:
  """The final metrics of a run; a finished run (its export written) is read, not redone."""
  return read_metrics(train_once(config, workdir))[config.total_steps]


def upstream(work: str, steps: dict) -> dict[str, str]:
  """Teacher, the two pools and the anchors on source; {pool name: learngene dir}."""
  t = teacher.get_config(PRESET)
  t.update(total_steps=steps['teacher'], eval_every=steps['teacher'], checkpoint_every=steps['teacher'])
  run(t, os.path.join(work, 'teacher'))
  pools = {}
  for supervise in ('every', 'last'):
    d = pool_distill.get_config(PRESET)
    d.update(total_steps=steps['distill'], eval_every=steps['distill'], checkpoint_every=steps['distill'])
    d.teacher.dir = os.path.join(work, 'teacher', 'export')
    d.pool.supervise = supervise
    run(d, os.path.join(work, f'pool_{supervise}'))
    pools[f'pool ({supervise})'] = os.path.join(work, f'pool_{supervise}', 'export')
  pool_tree, meta = load_learngene(pools['pool (every)'])
  configs = meta['instance_configs']
  anchors = []
  for i, cfg in enumerate(configs):  # SN-Net: each anchor trained alone
    a = teacher.get_config(PRESET)
    a.update(total_steps=steps['distill'], eval_every=steps['distill'], checkpoint_every=steps['distill'])
    a.model.update(width=cfg['width'], num_heads=cfg['num_heads'], mlp_dim=cfg['mlp_dim'], depth=cfg['depth'])
    run(a, os.path.join(work, f'anchor{i}'))
    anchors.append(checkpoint.load_params(os.path.join(work, f'anchor{i}', 'export'))[0])
  # Random instances (fresh inits) stitched and trained the same way: what the pool adds over random init.
  x = np.zeros((1, *IMAGE), np.float32)
  fresh = [ViT(**c).init(k, x)['params'] for c, k in zip(configs, jax.random.split(jax.random.key(0), len(configs)))]
  for name, instances in (('anchors', anchors), ('random', fresh)):
    pools[name] = os.path.join(work, f'{name}_pool')
    if not os.path.exists(pools[name]):  # no width maps of their own (stitching does not use them)
      save_learngene(pools[name], {'instances': instances, 'maps': pool_tree['maps']}, method='pool',
                                model_config=configs[0], instance_configs=configs)
  return pools


def step0_accuracy(pool_dir: str, rule: str, seed: int = 0) -> dict[str, float]:
  """Source test accuracy of every spec of `rule`, stitched by least squares on one
  random source training batch, before any stitched training."""
  tree, meta = load_learngene(pool_dir)
  configs = meta['instance_configs']
  config = stitched.get_config(PRESET)
  config.seed = seed
  specs = [r['spec'] for r in pool_lib.enumerate_specs(tree, configs, IMAGE, rule)]
  return pool_training.stitched_accuracy(tree, configs, specs, pool_training.stitch_batch(config), config.dataset)


def downstream(work: str, name: str, pool_dir: str, rule: str, steps_per_spec: int) -> dict[str, float]:
  """Every spec of `rule` trained jointly on digits 5-9 (fresh heads); spec name -> accuracy."""
  tree, meta = load_learngene(pool_dir)
  num_specs = len(pool_lib.enumerate_specs(tree, meta['instance_configs'], IMAGE, rule))
  s = stitched.get_config(PRESET)
  total = steps_per_spec * num_specs
  s.update(total_steps=total, eval_every=total, checkpoint_every=total)
  s.dataset.classes = 'downstream'
  s.pool.dir = pool_dir
  s.stitch.rule = rule
  s.init.reinit = ['^head/']
  final = run(s, os.path.join(work, 'stitched_' + name.replace(' ', '_').replace('(', '').replace(')', '')
                                + '_' + rule))
  return {k[len('eval_accuracy_'):]: v for k, v in final.items() if k.startswith('eval_accuracy_')}


def is_alone(name: str) -> bool:
  front, end = name.split('-')
  return front == end


def mean(values) -> str:
  values = list(values)
  return f'{np.mean(values):.3f}' if values else '-'


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default='benchmarks/results')
  p.add_argument('--work', default='/tmp/lgjax_pool_bench')
  p.add_argument('--quick', action='store_true', help='short upstream and budgets: minutes')
  p.add_argument('--steps-per-spec', type=int, default=None, help='downstream steps per spec (default 100; quick 20)')
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  work = os.path.join(args.work, 'quick' if args.quick else 'full')  # runs resume: keep them apart
  steps = dict(teacher=200, distill=100) if args.quick else dict(teacher=800, distill=234)
  per_spec = args.steps_per_spec or (20 if args.quick else 100)

  pools = upstream(work, steps)
  arms = [('pool (every)', 'snnet'), ('pool (last)', 'snnet'), ('pool (last)', 'pool'),
          ('anchors', 'snnet'), ('anchors', 'pool'), ('random', 'snnet')]
  results = {}
  for name, rule in arms:
    results[name, rule] = (step0_accuracy(pools[name], rule), downstream(work, name, pools[name], rule, per_spec))
  tree, meta = load_learngene(pools['pool (every)'])
  configs = meta['instance_configs']

  stored = {name: tree_lib.num_params(load_learngene(d)[0]['instances'])
            for name, d in pools.items()}
  teacher_params = tree_lib.num_params(checkpoint.load_params(os.path.join(work, 'teacher', 'export'))[0])
  label = lambda name, rule: f'{name}, rule {rule}'
  lines = [f'# Learngene Pool vs SN-Net-style anchors ({"quick" if args.quick else "full"} run)', '',
           __doc__.split('\n\n')[1].replace('\n', ' '), '',
           f'This run: teacher {steps["teacher"]} steps, distillation and anchors {steps["distill"]} steps, '
           f'{per_spec} downstream steps per spec (batch {stitched.get_config(PRESET).batch_size}); one seed. '
           f'Instances stored: {stored["pool (every)"]:,} params per pool (the width maps only serve '
           f'distillation), {stored["anchors"]:,} for the anchors; the teacher has {teacher_params:,}.', '',
           '## Summary', '',
           '| arm | specs | source, step 0: instances alone / cross specs (min) | '
           'downstream: instances alone / cross specs / all |', '|---|---|---|---|']
  for (name, rule), (step0, down) in results.items():
    alone0 = [v for k, v in step0.items() if is_alone(k)]
    cross0 = [v for k, v in step0.items() if not is_alone(k)]
    lines.append(f'| {label(name, rule)} | {len(down)} | {mean(alone0)} / {mean(cross0)} '
                 f'({min(cross0, default=float("nan")):.3f}) | {mean(v for k, v in down.items() if is_alone(k))} / '
                 f'{mean(v for k, v in down.items() if not is_alone(k))} / {mean(down.values())} |')

  rows = {}
  for name, rule in arms:
    for r in pool_lib.enumerate_specs(tree, configs, IMAGE, rule):
      rows[pool_lib.spec_name(r['spec'])] = r
  lines += ['', '## Every spec: downstream accuracy (source accuracy at step 0)', '',
            '| spec | params | MFLOPs | ' + ' | '.join(label(*a) for a in arms) + ' |',
            '|---|---|---|' + '---|' * len(arms)]
  for spec, r in sorted(rows.items(), key=lambda kv: (kv[1]['flops'], kv[0])):
    cells = [f'{results[a][1][spec]:.3f} ({results[a][0][spec]:.3f})' if spec in results[a][1] else '-'
             for a in arms]
    lines.append(f'| {spec} | {r["params"]:,} | {r["flops"] / 1e6:.2f} | ' + ' | '.join(cells) + ' |')
  text = '\n'.join(lines)
  name = 'pool_vs_snnet_quick' if args.quick else 'pool_vs_snnet_full'
  with open(os.path.join(args.out, name + '.md'), 'w') as f:
    f.write(text + '\n')
  print(text)

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for arm in arms:
    specs = sorted(results[arm][1], key=lambda s: rows[s]['flops'])
    ax.plot([rows[s]['flops'] / 1e6 for s in specs], [results[arm][1][s] for s in specs], 'o', ms=4,
            label=label(*arm), alpha=0.8)
  ax.set(xlabel='forward MFLOPs per image', ylabel='downstream accuracy (digits 5-9)',
         title=f'stitched models, {per_spec} steps per spec')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, name + '.png'), dpi=100)


if __name__ == '__main__':
  main()
