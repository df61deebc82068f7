"""Condense and inherit vs scratch on MNIST-5k (source digits 0-4 -> downstream 5-9).

An ancestry trained on the source classes is condensed to k layers (rule
'last', as the released baseline, or 'best_match' against a pseudo
descendant trained briefly on the downstream data); descendants inherit
them (fresh blocks below) and train on the downstream classes, against
scratch models of the same depth. Reports accuracy at step budgets, steps
to reach scratch's final accuracy, accuracy with 10/25/100 % of the
downstream samples, and the spread over 3 learning rates. Writes a
Markdown table and a PNG to --out.

  python -m benchmarks.condense_bench [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks.common import steps_to_reach
from lgjax.train.reporting import eval_curve
from lgjax.learngene import save_learngene
from configs import descendant, teacher
from lgjax import checkpoint, data
from lgjax.learngene import condense
from lgjax.train import train_and_evaluate


def descendant_run(root, name, *, method, depth, steps, lr_scale=1.0, fraction=1.0, seed=0, learngene_dir=''):
  config = descendant.get_config('mnist5k')
  config.update(total_steps=steps, eval_every=max(1, steps // 8), checkpoint_every=steps, seed=seed)
  config.model.depth = depth
  config.optimizer.lr *= lr_scale
  config.dataset.train_fraction = fraction
  config.init.method = method
  config.init.learngene_dir = learngene_dir
  workdir = os.path.join(root, name)
  final = train_and_evaluate(config, workdir)
  return final['eval_accuracy'], eval_curve(workdir)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default='benchmarks/results')
  p.add_argument('--work', default='/tmp/lgjax_condense_bench')
  p.add_argument('--quick', action='store_true', help='fewer steps, one learning rate per side')
  p.add_argument('--k', type=int, default=3, help='layers condensed from the 6-layer ancestry')
  p.add_argument('--depth', type=int, default=5, help='descendant depth (k inherited + fresh)')
  p.add_argument('--rule', default='last', choices=['last', 'best_match'])
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  # Runs resume from their workdirs: keep quick and full runs apart.
  args.work = os.path.join(args.work, 'quick' if args.quick else 'full')
  steps = 60 if args.quick else 160

  ancestry_cfg = teacher.get_config('mnist5k')
  if args.quick:
    ancestry_cfg.total_steps = 120
  train_and_evaluate(ancestry_cfg, os.path.join(args.work, 'ancestry'))
  params, model_cfg = checkpoint.load_params(os.path.join(args.work, 'ancestry', 'export'))
  if args.rule == 'best_match':
    descendant_run(args.work, 'pseudo', method='scratch', depth=args.depth, steps=steps // 2)
    pseudo = checkpoint.load_params(os.path.join(args.work, 'pseudo', 'export'))
    images, _ = data.mnist5k.load('train', 'downstream')
    sim = condense.layer_similarity(params, model_cfg, data.to_float(images[:512]), other=pseudo)
  else:
    sim = np.zeros((model_cfg['depth'], args.depth))
  layers = condense.select_layers(sim, args.k, args.rule)
  lg_dir = os.path.join(args.work, 'learngene')
  save_learngene(lg_dir, condense.condense(params, layers), method='condense', model_config=model_cfg)

  rows, curves = [], {}
  for method in ('condense', 'scratch'):
    acc, curves[method] = descendant_run(args.work, f'{method}_full', method=method, depth=args.depth,
                                         steps=steps, learngene_dir=lg_dir)
    rows.append((method, 'budget curve', 1.0, 1.0, acc))
  fractions = (0.1, 0.25) if not args.quick else (0.1,)
  for method in ('condense', 'scratch'):
    for fraction in fractions:
      acc, _ = descendant_run(args.work, f'{method}_frac{fraction}', method=method, depth=args.depth,
                              steps=steps, fraction=fraction, learngene_dir=lg_dir)
      rows.append((method, 'samples', fraction, 1.0, acc))
  lr_scales = (0.3, 3.0) if not args.quick else ()
  for method in ('condense', 'scratch'):
    for scale in lr_scales:
      acc, _ = descendant_run(args.work, f'{method}_lr{scale}', method=method, depth=args.depth,
                              steps=steps, lr_scale=scale, learngene_dir=lg_dir)
      rows.append((method, 'lr', 1.0, scale, acc))

  target = max(curves['scratch'].values())
  lines = [f'# Condense ({args.rule}: ancestry layers {layers}) vs scratch, depth {args.depth}, {steps} steps',
           '', '## Accuracy at step budgets', '', '| step | condense | scratch |', '|---|---|---|']
  lines += [f'| {s} | {curves["condense"][s]:.3f} | {curves["scratch"][s]:.3f} |' for s in sorted(curves['scratch'])]
  reach = steps_to_reach(curves['condense'], target)
  lines += ['', f'Steps to reach scratch\'s best accuracy {target:.3f}: condense {reach}, '
            f'scratch {steps_to_reach(curves["scratch"], target)}.', '',
            '## Sample efficiency and learning-rate sensitivity', '',
            '| init | study | train fraction | lr x | accuracy |', '|---|---|---|---|---|']
  lines += [f'| {m} | {study} | {f:g} | {lr:g} | {acc:.3f} |' for m, study, f, lr, acc in rows]
  for method in ('condense', 'scratch'):
    accs = [acc for m, study, _, _, acc in rows if m == method and study in ('lr', 'budget curve')]
    lines.append(f'\n{method}: accuracy over {len(accs)} learning rates: mean {np.mean(accs):.3f}, '
                 f'spread (max-min) {np.ptp(accs):.3f}')
  table = '\n'.join(lines)
  with open(os.path.join(args.out, 'condense.md'), 'w') as f:
    f.write(table + '\n')
  print(table)

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, curve in curves.items():
    ax.plot(sorted(curve), [curve[s] for s in sorted(curve)], marker='o', label=method)
  ax.set(xlabel='step', ylabel='downstream eval accuracy', title=f'condense ({args.rule}) vs scratch')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'condense.png'), dpi=100)


if __name__ == '__main__':
  main()
