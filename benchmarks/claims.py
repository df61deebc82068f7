"""The papers' claims, measured: TLEG, SWS, Learngene Pool and condense on MNIST-5k.

Upstream (digits 0-4, trained once with seed 0): a teacher, which is also the
condense ancestry and the pool's teacher; the TLEG and SWS auxiliary models
distilled from it; a Learngene Pool distilled from it; and the baseline
"pretrain one model per depth": a plain ViT of every descendant depth (and of
every pool instance size) trained alone on the same data for the same steps.

Downstream (digits 5-9, seeds 0..2): descendants of every depth fine-tuned
for equal step budgets from each learngene, from the pretrained model of
their depth (fresh head) and from scratch; every pool spec stitched and
trained jointly (SN-Net style, least-squares stitch init) from the pool,
from the separately pretrained instances and from random instances.

Reports (claims.md, claims.png in --out): accuracy for every depth or spec;
steps to reach scratch's final accuracy; parameters stored to initialize
every depth; analytic training FLOPs, upstream + descendants; accuracy with
10 / 25 / 100 % of the downstream samples; accuracy at 3 learning rates.
Means and standard deviations over the seeds. Runs resume from --work, and
a persistent compilation cache there saves recompiling identical steps.

  python -m benchmarks.claims [--quick] [--out benchmarks/results] [--work /tmp/lgjax_claims]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

from benchmarks.common import steps_to_reach
from lgjax.train.reporting import eval_curve
from configs import common, descendant, pool_distill, sws_aux, stitched, teacher, tleg_aux
from lgjax import checkpoint
from lgjax import tree as tree_lib
from lgjax.learngene import condense
from lgjax.learngene import pool as pool_lib
from lgjax.models import ViT, flops
from lgjax.train import train_and_evaluate

PRESET = 'mnist5k'
IMAGE = (28, 28, 1)
METHODS = ('tleg', 'sws', 'condense', 'pretrained', 'scratch')
LEARNGENES = ('tleg', 'sws', 'condense')
SWS_STAGES = (3, 3)      # 2 stages so that a depth-2 descendant still gets one block of each
CONDENSE_LAYERS = (4, 5)  # the ancestry's last 2 blocks (the released baseline's rule)
POOL_VARIANTS = ('pool', 'pretrained', 'scratch')
TUNE_BATCH = descendant.get_config(PRESET).batch_size


@dataclasses.dataclass(frozen=True)
class Plan:
  upstream_steps: int
  finetune_steps: int
  stitch_steps: int
  depths: tuple[int, ...]
  seeds: tuple[int, ...]
  study_depth: int             # depth of the sample-efficiency and learning-rate studies
  fractions: tuple[float, ...]  # besides 1.0
  lr_scales: tuple[float, ...]  # besides 1.0
  pool_specs: tuple[tuple[int, int, int, int], ...]  # (front, j, end, k) stitched on the downstream data


# Pool specs: each 4-block instance alone, and every ordered pair cut in the middle.
_SPECS = tuple((a, 4, a, 4) for a in range(3)) + tuple((a, 2, b, 2) for a in range(3) for b in range(3) if a != b)
FULL = Plan(upstream_steps=234, finetune_steps=80, stitch_steps=80, depths=tuple(range(2, 9)),
            seeds=(0, 1, 2), study_depth=4, fractions=(0.1, 0.25), lr_scales=(0.3, 3.0), pool_specs=_SPECS)
QUICK = Plan(upstream_steps=60, finetune_steps=40, stitch_steps=20, depths=(2, 4), seeds=(0,),
             study_depth=4, fractions=(0.1,), lr_scales=(3.0,), pool_specs=((0, 4, 0, 4), (0, 2, 2, 2)))


def model_cfg(depth: int, **kw) -> dict:
  return {**common.model(PRESET, depth=depth).to_dict(), **kw}


def train_flops(configs: list[dict], batch: int, steps: int, teacher_cfg: dict | None = None) -> float:
  """Forward + backward (3x forward) of every trained model, plus one teacher forward when distilling."""
  per_image = sum(3 * flops.forward_flops(c, IMAGE) for c in configs)
  if teacher_cfg:
    per_image += flops.forward_flops(teacher_cfg, IMAGE)
  return float(per_image) * batch * steps


def run(config, workdir: str) -> dict:
  """train_and_evaluate, remembering the wall time of the first (uninterrupted) run."""
  record = os.path.join(workdir, 'claims_run.json')
  if os.path.exists(record):
    with open(record) as f:
      return json.load(f)
  start = time.perf_counter()
  final = train_and_evaluate(config, workdir)
  result = {'final': {k: float(v) for k, v in final.items()}, 'seconds': time.perf_counter() - start,
            'curve': {str(s): a for s, a in eval_curve(workdir).items()}}
  with open(record, 'w') as f:
    json.dump(result, f)
  return result


def upstream(work: str, plan: Plan) -> dict:
  """Trains every source-side asset once; returns their dirs, stored sizes and FLOPs."""
  up = lambda name: os.path.join(work, 'upstream', name)
  export = lambda name: os.path.join(up(name), 'export')
  steps, out = plan.upstream_steps, {'dirs': {}, 'stored': {}, 'flops': {}}

  def train(name, config, teacher_cfg=None, model_cfgs=None) -> float:
    """Runs `config` for the upstream steps; returns its training FLOPs."""
    config.total_steps = steps
    run(config, up(name))
    return train_flops(model_cfgs or [config.model.to_dict()], config.batch_size, steps, teacher_cfg)

  t = teacher.get_config(PRESET)
  out['flops']['teacher'] = train('teacher', t)
  teacher_cfg = t.model.to_dict()
  for name, module in (('tleg', tleg_aux), ('sws', sws_aux)):
    c = module.get_config(PRESET)
    c.teacher.dir = export('teacher')
    if name == 'sws':
      c.learngene.stage_depths = list(SWS_STAGES)
      c.model.depth = sum(SWS_STAGES)
    out['flops'][name] = train(name, c, teacher_cfg)
    out['dirs'][name] = export(name)
    out['stored'][name] = tree_lib.num_params(checkpoint.load_learngene(export(name))[0])

  ancestry, ancestry_cfg = checkpoint.load_params(export('teacher'))
  out['dirs']['condense'] = up('condense_learngene')
  learngene = condense.condense(ancestry, list(CONDENSE_LAYERS))
  if not os.path.exists(out['dirs']['condense']):
    checkpoint.save_learngene(out['dirs']['condense'], learngene, method='condense', model_config=ancestry_cfg)
  out['stored']['condense'] = tree_lib.num_params(learngene)
  out['flops']['condense'] = 0.0  # the teacher is the ancestry: condensing is free

  out['pretrained'], out['flops']['pretrained'] = {}, 0.0
  for depth in plan.depths:
    c = teacher.get_config(PRESET)
    c.model.depth = depth
    out['flops']['pretrained'] += train(f'pretrained_d{depth}', c)
    out['pretrained'][depth] = export(f'pretrained_d{depth}')
  out['stored']['pretrained'] = sum(
      tree_lib.num_params(checkpoint.load_params(d)[0]) for d in out['pretrained'].values())

  c = pool_distill.get_config(PRESET)
  c.teacher.dir = export('teacher')
  instance_cfgs = [model_cfg(c.pool.depth, **inst) for inst in c.pool.instances]
  out['flops']['pool'] = train('pool', c, teacher_cfg, instance_cfgs)
  pool_tree, meta = checkpoint.load_learngene(export('pool'))
  configs = meta['instance_configs']
  out['dirs']['pool'] = export('pool')
  out['stored']['pool'] = tree_lib.num_params(pool_tree)
  anchors, out['flops']['pool_pretrained'] = [], 0.0
  for i, cfg in enumerate(configs):
    a = teacher.get_config(PRESET)
    a.model.update({k: cfg[k] for k in ('width', 'num_heads', 'mlp_dim', 'depth')})
    out['flops']['pool_pretrained'] += train(f'anchor{i}', a)
    anchors.append(checkpoint.load_params(export(f'anchor{i}'))[0])
  out['stored']['pool_pretrained'] = tree_lib.num_params(anchors)
  # The pool's width maps stand in for the other variants' (the lstsq stitch init ignores them).
  randoms = [jax.jit(ViT(**cfg).init)(jax.random.key(i), np.zeros((1, *IMAGE), np.float32))['params']
             for i, cfg in enumerate(configs)]
  for name, instances in (('pool_pretrained', anchors), ('pool_scratch', randoms)):
    out['dirs'][name] = up(name)
    if not os.path.exists(up(name)):
      checkpoint.save_learngene(up(name), {'instances': instances, 'maps': pool_tree['maps']}, method='pool',
                                model_config=configs[0], instance_configs=configs)
  wanted = {pool_lib.check_spec(configs, s) for s in plan.pool_specs}
  out['pool_specs'] = [r for r in pool_lib.enumerate_specs(pool_tree, configs, IMAGE) if r['spec'] in wanted]
  return out


def descendant_run(work, assets, method, depth, *, seed, steps, lr_scale=1.0, fraction=1.0) -> dict:
  c = descendant.get_config(PRESET)
  c.update(total_steps=steps, eval_every=max(1, steps // 10), checkpoint_every=steps, seed=seed)
  c.model.depth = depth
  c.optimizer.lr *= lr_scale
  c.dataset.train_fraction = fraction
  if method == 'scratch':
    c.init.method = 'scratch'
  elif method == 'pretrained':  # the whole pretrained model of this depth, with a fresh head
    c.init.update(method='condense', ancestry=assets['pretrained'][depth], layers=list(range(depth)))
  else:
    c.init.update(method=method, learngene_dir=assets['dirs'][method])
  name = f'{method}_d{depth}_seed{seed}_lr{lr_scale:g}_frac{fraction:g}'
  result = run(c, os.path.join(work, 'descendants', name))
  return {'accuracy': result['final']['eval_accuracy'],
          'curve': {int(s): a for s, a in result['curve'].items()}}


def stitched_run(work, assets, variant, *, seed, steps, specs) -> dict[str, float]:
  c = stitched.get_config(PRESET)
  c.stitch.specs = [list(s) for s in specs]
  c.update(total_steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed)
  c.dataset.classes = 'downstream'
  c.pool.dir = assets['dirs']['pool' if variant == 'pool' else f'pool_{variant}']
  c.stitch.init = 'lstsq'
  final = run(c, os.path.join(work, 'stitched', f'{variant}_seed{seed}'))['final']
  return {k[len('eval_accuracy_'):]: v for k, v in final.items() if k.startswith('eval_accuracy_')}


def stats(values) -> tuple[float, float]:
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def fmt(values) -> str:
  mean, std = stats(values)
  return f'{mean:.3f} ± {std:.3f}'


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', default='benchmarks/results')
  p.add_argument('--work', default='/tmp/lgjax_claims')
  p.add_argument('--quick', action='store_true', help='a reduced study: minutes, one seed, two depths')
  args = p.parse_args()
  plan = QUICK if args.quick else FULL
  work = os.path.join(args.work, 'quick' if args.quick else 'full')  # runs resume from their workdirs
  os.makedirs(args.out, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', os.path.join(args.work, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  start = time.perf_counter()

  assets = upstream(work, plan)
  S = plan.finetune_steps
  sweep = {(m, d, s): descendant_run(work, assets, m, d, seed=s, steps=S)
           for d in plan.depths for m in METHODS for s in plan.seeds}
  samples = {(m, f, s): descendant_run(work, assets, m, plan.study_depth, seed=s, steps=S, fraction=f)
             for f in plan.fractions for m in METHODS for s in plan.seeds}
  rates = {(m, r, s): descendant_run(work, assets, m, plan.study_depth, seed=s, steps=S, lr_scale=r)
           for r in plan.lr_scales for m in METHODS for s in plan.seeds}
  for m in METHODS:
    for s in plan.seeds:
      samples[m, 1.0, s] = rates[m, 1.0, s] = sweep[m, plan.study_depth, s]
  pools = {(v, s): stitched_run(work, assets, v, seed=s, steps=plan.stitch_steps, specs=plan.pool_specs)
           for v in POOL_VARIANTS for s in plan.seeds}
  minutes = (time.perf_counter() - start) / 60

  lines = report(plan, assets, sweep, samples, rates, pools, minutes)
  text = '\n'.join(lines)
  name = 'claims_quick' if args.quick else 'claims'
  with open(os.path.join(args.out, name + '.md'), 'w') as f:
    f.write(text + '\n')
  print(text)
  plot(plan, assets, sweep, samples, rates, pools, os.path.join(args.out, name + '.png'))


def reach_steps(sweep, plan, method, depth) -> list[int | None]:
  """Per seed: the first eval step at which `method` reaches scratch's final accuracy (same seed)."""
  return [steps_to_reach(sweep[method, depth, s]['curve'], sweep['scratch', depth, s]['accuracy'])
          for s in plan.seeds]


def mean_steps(steps: list[int | None], budget: int) -> str:
  reached = [s for s in steps if s is not None]
  if not reached:
    return f'> {budget}'
  return f'{np.mean(reached):.0f}' + ('' if len(reached) == len(steps) else f' ({len(reached)}/{len(steps)} seeds)')


def report(plan, assets, sweep, samples, rates, pools, minutes) -> list[str]:
  S, seeds = plan.finetune_steps, plan.seeds
  acc = lambda m, d: [sweep[m, d, s]['accuracy'] for s in seeds]
  lines = [f'# Learngene claims on MNIST-5k ({"quick" if plan is QUICK else "full"} study)', '',
           f'Upstream on digits 0-4 ({plan.upstream_steps} steps each, seed 0); descendants on digits 5-9, '
           f'{S} fine-tuning steps of batch {TUNE_BATCH}, seeds {list(seeds)}; mean ± std over seeds. '
           f'Study wall time {minutes:.0f} min (runs resumed from an earlier invocation count as 0).', '',
           '## Accuracy after equal fine-tuning budgets', '',
           '| depth | ' + ' | '.join(METHODS) + ' |', '|---|' + '---|' * len(METHODS)]
  lines += [f'| {d} | ' + ' | '.join(fmt(acc(m, d)) for m in METHODS) + ' |' for d in plan.depths]
  quarter = {m: [np.mean([curve_at(sweep[m, d, s]['curve'], S // 4) for s in seeds]) for d in plan.depths]
             for m in METHODS}
  lines += ['', f'At a quarter of the budget (step {S // 4}), mean over depths: '
            + ', '.join(f'{m} {np.mean(v):.3f}' for m, v in quarter.items()) + '.']

  lines += ['', "## Steps to reach scratch's final accuracy", '',
            f'First eval step (every {max(1, S // 10)}) at which a descendant reaches the scratch model\'s '
            f'final accuracy of the same depth and seed; scratch itself needs at most {S}.', '',
            '| depth | ' + ' | '.join(METHODS) + ' |', '|---|' + '---|' * len(METHODS)]
  lines += [f'| {d} | ' + ' | '.join(mean_steps(reach_steps(sweep, plan, m, d), S) for m in METHODS) + ' |'
            for d in plan.depths]

  stored = assets['stored']
  lines += ['', '## Parameters stored to initialize every depth ' + f'{list(plan.depths)}', '',
            '| what is stored | parameters | pretrained / this |', '|---|---|---|']
  lines += [f'| {m} learngene | {stored[m]:,} | {stored["pretrained"] / stored[m]:.1f}x |' for m in LEARNGENES]
  lines += [f'| one pretrained model per depth | {stored["pretrained"]:,} | 1.0x |',
            f'| Learngene Pool (instances + width maps) | {stored["pool"]:,} | '
            f'{stored["pool_pretrained"] / stored["pool"]:.2f}x (vs its instances pretrained alone, '
            f'{stored["pool_pretrained"]:,}) |']

  fl = assets['flops']
  tune = train_flops([model_cfg(d) for d in plan.depths], TUNE_BATCH, S)
  lines += ['', '## Training compute for descendants of every depth (analytic GFLOPs)', '',
            f'Fine-tuning all depths costs {tune / 1e9:,.0f} GFLOPs for every method. The teacher '
            f'({fl["teacher"] / 1e9:,.0f} GFLOPs) is needed by TLEG, SWS and the pool (distillation) and is '
            'the ancestry condense takes its layers from.', '',
            '| method | upstream | + teacher | + fine-tuning | pretrained total / this total |',
            '|---|---|---|---|---|']
  total_pre = fl['pretrained'] + tune
  for m in LEARNGENES:
    total = fl[m] + fl['teacher'] + tune
    lines.append(f'| {m} | {fl[m] / 1e9:,.0f} | {(fl[m] + fl["teacher"]) / 1e9:,.0f} | {total / 1e9:,.0f} | '
                 f'{total_pre / total:.2f}x |')
  lines.append(f'| pretrained (one per depth) | {fl["pretrained"] / 1e9:,.0f} | - | {total_pre / 1e9:,.0f} | 1.00x |')
  lines.append(f'| scratch | 0 | - | {tune / 1e9:,.0f} | {total_pre / tune:.2f}x |')

  lines += ['', f'## Sample efficiency (depth {plan.study_depth})', '',
            '| train fraction | ' + ' | '.join(METHODS) + ' |', '|---|' + '---|' * len(METHODS)]
  for f in (*plan.fractions, 1.0):
    lines.append(f'| {f:g} | ' + ' | '.join(fmt([samples[m, f, s]['accuracy'] for s in seeds]) for m in METHODS) + ' |')
  lines += ['', f'## Learning-rate sensitivity (depth {plan.study_depth}; base lr '
            f'{descendant.get_config(PRESET).optimizer.lr:g} per 512 examples)', '',
            '| lr x | ' + ' | '.join(METHODS) + ' |', '|---|' + '---|' * len(METHODS)]
  scales = sorted((*plan.lr_scales, 1.0))
  for r in scales:
    lines.append(f'| {r:g} | ' + ' | '.join(fmt([rates[m, r, s]['accuracy'] for s in seeds]) for m in METHODS) + ' |')
  spread = {m: np.mean([np.ptp([rates[m, r, s]['accuracy'] for r in scales]) for s in seeds]) for m in METHODS}
  lines.append('| spread (max - min over rates) | ' + ' | '.join(f'{spread[m]:.3f}' for m in METHODS) + ' |')

  lines += ['', f'## Learngene Pool: every spec, stitched and trained {plan.stitch_steps} steps on digits 5-9', '',
            'pool: instances distilled from the teacher; pretrained: the same instance sizes trained alone on '
            'digits 0-4 (SN-Net anchors); scratch: random instances. Least-squares stitch init for all.', '',
            '| spec | params | MFLOPs | ' + ' | '.join(POOL_VARIANTS) + ' |', '|---|---|---|' + '---|' * len(POOL_VARIANTS)]
  for r in assets['pool_specs']:
    name = pool_lib.spec_name(r['spec'])
    lines.append(f'| {name} | {r["params"]:,} | {r["flops"] / 1e6:.2f} | '
                 + ' | '.join(fmt([pools[v, s][name] for s in seeds]) for v in POOL_VARIANTS) + ' |')
  pool_means = {v: [np.mean(list(pools[v, s].values())) for s in seeds] for v in POOL_VARIANTS}
  lines.append('| mean over specs | | | ' + ' | '.join(fmt(pool_means[v]) for v in POOL_VARIANTS) + ' |')

  lines += ['', '## The claims against these numbers', '', '| claim (papers, ImageNet) | measured here |', '|---|---|']
  for m, paper in (('tleg', '~2x'), ('sws', '~6.6x')):
    ratios = [S / r for d in plan.depths for r in reach_steps(sweep, plan, m, d) if r]
    reached = sum(r is not None for d in plan.depths for r in reach_steps(sweep, plan, m, d))
    speedup = f'where it does, in {np.mean(ratios):.2f}x fewer steps than scratch\'s {S}' if ratios else 'never within the budget'
    lines.append(f'| {m.upper()} trains faster than scratch ({paper} fewer steps) | reaches scratch\'s final accuracy '
                 f'in {reached}/{len(plan.depths) * len(seeds)} depth x seed runs; {speedup} |')
  lines.append(f'| TLEG stores ~19x fewer parameters than pretrained models | '
               f'{stored["pretrained"] / stored["tleg"]:.1f}x fewer for {len(plan.depths)} depths |')
  lines.append(f'| learngenes cost ~5x less compute than pretraining each depth | pretraining every depth + fine-tuning '
               f'costs {total_pre / (fl["tleg"] + fl["teacher"] + tune):.2f}x the TLEG route and '
               f'{total_pre / (fl["sws"] + fl["teacher"] + tune):.2f}x the SWS route, teacher included (> 1: the '
               f'learngene is cheaper); upstream alone {fl["pretrained"] / (fl["tleg"] + fl["teacher"]):.2f}x |')
  for m in LEARNGENES:
    gap = [np.mean(acc(m, d)) - np.mean(acc('scratch', d)) for d in plan.depths]
    gap_pre = [np.mean(acc(m, d)) - np.mean(acc('pretrained', d)) for d in plan.depths]
    lines.append(f'| {m} descendants beat scratch, match pretrained | mean accuracy vs scratch {np.mean(gap):+.3f}, '
                 f'vs pretrained {np.mean(gap_pre):+.3f} (over depths) |')
  low = min(plan.fractions)
  lines.append(f'| learngenes help most with few samples | at {low:g} of the samples: ' + ', '.join(
      f'{m} {np.mean([samples[m, low, s]["accuracy"] for s in seeds]):.3f}' for m in METHODS) + ' |')
  lines.append('| descendants are less sensitive to the learning rate | spread over rates: ' + ', '.join(
      f'{m} {spread[m]:.3f}' for m in METHODS) + ' |')
  lines.append(f'| a distilled pool beats pretrained anchors (SN-Net) | mean over specs: ' + ', '.join(
      f'{v} {np.mean(pool_means[v]):.3f}' for v in POOL_VARIANTS) + f'; stored {stored["pool"]:,} vs '
      f'{stored["pool_pretrained"]:,} |')
  return lines


def curve_at(curve: dict[int, float], step: int) -> float:
  """Accuracy at the last eval at or before `step`."""
  return curve[max(s for s in curve if s <= step)] if any(s <= step for s in curve) else float('nan')


def plot(plan, assets, sweep, samples, rates, pools, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  seeds = plan.seeds
  fig, axes = plt.subplots(2, 3, figsize=(15, 8))
  ax = axes[0, 0]
  for m in METHODS:
    means = [stats([sweep[m, d, s]['accuracy'] for s in seeds]) for d in plan.depths]
    ax.errorbar(plan.depths, [x for x, _ in means], yerr=[e for _, e in means], marker='o', capsize=3, label=m)
  ax.set(xlabel='descendant depth', ylabel='eval accuracy', title=f'after {plan.finetune_steps} steps')
  ax = axes[0, 1]
  for m in METHODS:
    steps = sorted(sweep[m, plan.study_depth, seeds[0]]['curve'])
    ax.plot(steps, [np.mean([sweep[m, plan.study_depth, s]['curve'][t] for s in seeds]) for t in steps],
            marker='.', label=m)
  ax.set(xlabel='fine-tuning step', ylabel='eval accuracy', title=f'depth {plan.study_depth}, mean over seeds')
  ax = axes[0, 2]
  names = [*LEARNGENES, 'pretrained', 'pool', 'pool_pretrained']
  ax.bar(range(len(names)), [assets['stored'][n] for n in names])
  ax.set_xticks(range(len(names)), names, rotation=30)
  ax.set(yscale='log', ylabel='parameters stored', title=f'to build depths {plan.depths[0]}..{plan.depths[-1]} / every spec')
  ax = axes[1, 0]
  fractions = (*plan.fractions, 1.0)
  for m in METHODS:
    ax.plot(fractions, [np.mean([samples[m, f, s]['accuracy'] for s in seeds]) for f in fractions], marker='o', label=m)
  ax.set(xscale='log', xlabel='fraction of downstream samples', ylabel='eval accuracy', title='sample efficiency')
  ax = axes[1, 1]
  scales = sorted((*plan.lr_scales, 1.0))
  for m in METHODS:
    ax.plot(scales, [np.mean([rates[m, r, s]['accuracy'] for s in seeds]) for r in scales], marker='o', label=m)
  ax.set(xscale='log', xlabel='learning rate x', ylabel='eval accuracy', title='learning-rate sensitivity')
  ax = axes[1, 2]
  xs = [r['flops'] / 1e6 for r in assets['pool_specs']]
  for v in POOL_VARIANTS:
    ax.scatter(xs, [np.mean([pools[v, s][pool_lib.spec_name(r['spec'])] for s in seeds]) for r in assets['pool_specs']],
               s=16, label=v)
  ax.set(xlabel='forward MFLOPs per image', ylabel='eval accuracy', title='pool specs')
  for ax in axes.flat:
    ax.grid(alpha=0.3)
    if ax is not axes[0, 2]:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


if __name__ == '__main__':
  main()
