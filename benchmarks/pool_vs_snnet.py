"""Learngene Pool vs an SN-Net-style baseline on MNIST-5k downstream digits (5-9).

Pool: one teacher (trained on the downstream classes here, so heads match)
distilled into K small instances. SN-Net baseline: K anchors of the same
widths, each trained independently from scratch for the same steps. Both
are stitched and every spec is trained jointly for the same stitch-training
steps, with learned (pool only: it has width maps) and least-squares stitch
init. Reports stored parameters (what must be kept to build every spec) and
accuracy vs FLOPs of every spec; writes pool_vs_snnet.md and .png.

  python -m benchmarks.pool_vs_snnet [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os

from configs import pool_distill, stitched, teacher
from lgjax import checkpoint
from lgjax import tree as tree_lib
from lgjax.learngene import pool as pool_lib
from lgjax.train import train_and_evaluate

PRESET = 'mnist5k'


def downstream(config):
  config.dataset.classes = 'downstream'
  return config


def run(config, workdir):
  return train_and_evaluate(config, workdir)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default='benchmarks/results')
  p.add_argument('--work', default='/tmp/lgjax_pool_bench')
  p.add_argument('--quick', action='store_true')
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  # Runs resume from their workdirs: keep quick and full runs apart.
  args.work = os.path.join(args.work, 'quick' if args.quick else 'full')
  distill_steps = 60 if args.quick else 234
  stitch_steps = 30 if args.quick else 120

  t = downstream(teacher.get_config(PRESET))
  t.total_steps = distill_steps
  run(t, os.path.join(args.work, 'teacher'))

  d = downstream(pool_distill.get_config(PRESET))
  d.total_steps = distill_steps
  d.teacher.dir = os.path.join(args.work, 'teacher', 'export')
  run(d, os.path.join(args.work, 'pool'))
  pool_tree, meta = checkpoint.load_learngene(os.path.join(args.work, 'pool', 'export'))
  configs = meta['instance_configs']

  # SN-Net anchors: the same widths, each trained alone from scratch, for the same steps.
  anchors = []
  for i, cfg in enumerate(configs):
    a = downstream(teacher.get_config(PRESET))
    a.total_steps = distill_steps
    a.model.update(width=cfg['width'], num_heads=cfg['num_heads'], mlp_dim=cfg['mlp_dim'], depth=cfg['depth'])
    run(a, os.path.join(args.work, f'anchor{i}'))
    anchors.append(checkpoint.load_params(os.path.join(args.work, f'anchor{i}', 'export'))[0])
  anchor_pool_dir = os.path.join(args.work, 'anchors_pool')
  # Anchors have no teacher width maps; the pool's stand in, unused by the lstsq init.
  checkpoint.save_learngene(anchor_pool_dir, {'instances': anchors, 'maps': pool_tree['maps']}, method='pool',
                            model_config=configs[0], instance_configs=configs)

  results = {}
  for name, pool_dir, init in (('pool, learned init', os.path.join(args.work, 'pool', 'export'), 'learned'),
                               ('pool, lstsq init', os.path.join(args.work, 'pool', 'export'), 'lstsq'),
                               ('SN-Net anchors, lstsq init', anchor_pool_dir, 'lstsq')):
    s = downstream(stitched.get_config(PRESET))
    s.update(total_steps=stitch_steps, eval_every=stitch_steps)
    s.pool.dir = pool_dir
    s.stitch.init = init
    workdir = os.path.join(args.work, name.replace(' ', '_').replace(',', ''))
    final = run(s, workdir)
    results[name] = {k[len('eval_accuracy_'):]: v for k, v in final.items() if k.startswith('eval_accuracy_')}

  specs = pool_lib.enumerate_specs(pool_tree, configs, (28, 28, 1))
  pool_stored = tree_lib.num_params(pool_tree['instances']) + tree_lib.num_params(pool_tree['maps'])
  teacher_params = tree_lib.num_params(checkpoint.load_params(os.path.join(args.work, 'teacher', 'export'))[0])
  anchors_stored = tree_lib.num_params(anchors)
  lines = [f'# Learngene Pool vs SN-Net-style anchors ({PRESET} downstream, {distill_steps} distill/anchor steps, '
           f'{stitch_steps} stitch steps)', '',
           f'Stored to build every spec: pool {pool_stored:,} params (instances + width maps; one teacher of '
           f'{teacher_params:,} distilled), SN-Net anchors {anchors_stored:,} params (each anchor trained alone).',
           '', '| spec | params | MFLOPs | ' + ' | '.join(results) + ' |', '|---|---|---|' + '---|' * len(results)]
  for r in specs:
    name = pool_lib.spec_name(r['spec'])
    lines.append(f'| {name} | {r["params"]:,} | {r["flops"] / 1e6:.2f} | '
                 + ' | '.join(f'{results[k].get(name, float("nan")):.3f}' for k in results) + ' |')
  means = {k: sum(v.values()) / max(len(v), 1) for k, v in results.items()}
  lines += ['', 'Mean accuracy over specs: ' + ', '.join(f'{k} {m:.3f}' for k, m in means.items())]
  table = '\n'.join(lines)
  with open(os.path.join(args.out, 'pool_vs_snnet.md'), 'w') as f:
    f.write(table + '\n')
  print(table)

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for k, accs in results.items():
    xs = [r['flops'] / 1e6 for r in specs]
    ax.scatter(xs, [accs.get(pool_lib.spec_name(r['spec']), float('nan')) for r in specs], label=k, s=18)
  ax.set(xlabel='forward MFLOPs per image', ylabel='downstream eval accuracy', title='stitched specs')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'pool_vs_snnet.png'), dpi=100)


if __name__ == '__main__':
  main()
