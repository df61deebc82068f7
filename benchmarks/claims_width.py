"""Learngenes across widths and depths: WAVE against Weight Selection, TLEG, pretrained and scratch.

The transfer protocol of benchmarks/claims.py (MNIST-5k; upstream on digits
0-4, a teacher of width 64 and depth 6 trained 800 steps; descendants
fine-tuned 300 steps, batch 64, on digits 5-9), for descendants of widths
32/48/64 (head_dim 16: 2/3/4 heads; mlp 4 x width) and depths 2/4/6/8:

- wave: 16 weight templates of width 16 distilled from the teacher through a
  width-64, depth-6 auxiliary model (800 steps, as TLEG's); then, per size,
  its weight scalers trained on the source digits with the templates frozen
  (--scaler-steps, distilled from the teacher); then the descendant.
- weight_selection: the teacher's first layers, elements selected uniformly
  (training-free; it only shrinks, so depth 8 has none).
- tleg: claims.py's TLEG learngene, at the teacher's width only.
- pretrained: a plain ViT of that size pretrained on the source (800 steps;
  the teacher itself at width 64, depth 6).
- scratch.
Every descendant inherits every param but the head. Upstream seed u and
fine-tune seed f are matched (u = f). Runs are shared with claims.py when
--work is the same (the teachers, TLEG, the width-64 pretrained models).

  python -m benchmarks.claims_width [--quick] [--workers 2] [--out benchmarks/results] [--work /tmp/lgjax_claims]
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from benchmarks import claims
from benchmarks.common import steps_to_reach
from configs import descendant, teacher, wave_aux, wave_scalers
from lgjax import checkpoint
from lgjax import tree as tree_lib
from lgjax.learngene import load_learngene
from lgjax.models import param_shapes
from lgjax.train.recipe import accuracy_at

ARMS = ('wave', 'weight_selection', 'tleg', 'pretrained', 'scratch')
HEAD_DIM = 16
STEPS = (25, 100, 300)
TEACHER = (64, claims.TEACHER_DEPTH)  # (width, depth)


@dataclasses.dataclass(frozen=True)
class Plan:
  upstream_steps: int
  finetune_steps: int
  scaler_steps: int
  widths: tuple[int, ...]
  depths: tuple[int, ...]
  seeds: tuple[int, ...]


FULL = Plan(upstream_steps=800, finetune_steps=300, scaler_steps=100, widths=(32, 48, 64), depths=(2, 4, 6, 8),
            seeds=(0, 1, 2))
QUICK = Plan(upstream_steps=200, finetune_steps=100, scaler_steps=50, widths=(32, 64), depths=(2, 6), seeds=(0,))


def size(width: int, depth: int) -> dict:
  return dict(width=width, num_heads=width // HEAD_DIM, mlp_dim=4 * width, depth=depth)


def model_cfg(width: int, depth: int) -> dict:
  return {**claims.model_cfg(depth), **size(width, depth)}


def applies(arm: str, width: int, depth: int) -> bool:
  if arm == 'weight_selection':
    return depth <= TEACHER[1] and width <= TEACHER[0]
  return arm != 'tleg' or width == TEACHER[0]


def _up(work: str, u: int, name: str) -> str:
  return os.path.join(work, 'upstream', f'u{u}', name)


def pretrained_name(width: int, depth: int) -> str:
  """claims.py's names at the teacher's width, so the two studies share those runs."""
  if (width, depth) == TEACHER:
    return 'teacher'
  return f'pretrained_d{depth}' if width == TEACHER[0] else f'pretrained_w{width}_d{depth}'


def _claims_plan(plan: Plan) -> claims.Plan:
  return dataclasses.replace(claims.FULL, upstream_steps=plan.upstream_steps)


def upstream_jobs(work: str, plan: Plan, u: int, stage: str) -> dict:
  """'teacher'; 'rest': TLEG (claims.py's run), WAVE's templates, a pretrained model per size;
  'scalers': WAVE's scalers of every size."""
  steps = dict(total_steps=plan.upstream_steps, seed=u, eval_every=plan.upstream_steps,
               checkpoint_every=plan.upstream_steps)
  teacher_export = os.path.join(_up(work, u, 'teacher'), 'export')
  if stage == 'teacher':
    return claims.upstream_jobs(work, _claims_plan(plan), u, 'teacher')
  if stage == 'scalers':
    jobs = {}
    for w in plan.widths:
      for d in plan.depths:
        c = wave_scalers.get_config(claims.PRESET)
        c.update(**{**steps, 'total_steps': plan.scaler_steps, 'eval_every': plan.scaler_steps,
                    'checkpoint_every': plan.scaler_steps})
        c.teacher.dir = teacher_export
        c.learngene.templates_from = os.path.join(_up(work, u, 'wave'), 'export')
        c.model.update(size(w, d))
        jobs[f'wave_w{w}_d{d}', u] = (c, _up(work, u, f'wave_w{w}_d{d}'))
    return jobs
  jobs = {('tleg', u): claims.upstream_jobs(work, _claims_plan(plan), u, 'rest')['tleg', u]}
  c = wave_aux.get_config(claims.PRESET)
  c.update(**steps)
  c.teacher.dir = teacher_export
  jobs['wave', u] = (c, _up(work, u, 'wave'))
  for w in plan.widths:
    for d in plan.depths:
      if (w, d) != TEACHER:
        c = teacher.get_config(claims.PRESET)
        c.update(**steps)
        c.model.update(size(w, d))
        jobs[pretrained_name(w, d), u] = (c, _up(work, u, pretrained_name(w, d)))
  return jobs


def tune_job(work: str, plan: Plan, arm: str, width: int, depth: int, seed: int):
  c = descendant.get_config(claims.PRESET)
  c.update(total_steps=plan.finetune_steps, seed=seed, checkpoint_every=plan.finetune_steps,
           eval_every=min(25, plan.finetune_steps))
  c.model.update(size(width, depth))
  if arm == 'scratch':
    c.init.method = 'scratch'
  elif arm == 'pretrained':
    c.init.update(method='condense', source=os.path.join(_up(work, seed, pretrained_name(width, depth)), 'export'),
                  layers=list(range(depth)))
  elif arm == 'weight_selection':
    c.init.update(method='weight_selection', source=os.path.join(_up(work, seed, 'teacher'), 'export'))
  elif arm == 'tleg':
    c.init.update(method='tleg', learngene_dir=os.path.join(_up(work, seed, 'tleg'), 'export'))
  else:
    c.init.update(method='wave', learngene_dir=os.path.join(_up(work, seed, f'wave_w{width}_d{depth}'), 'export'))
  return c, os.path.join(work, 'descendants_width', f'{arm}_w{width}_d{depth}_s{seed}')


def tunes(plan: Plan) -> list[tuple]:
  return [(arm, w, d, s) for w in plan.widths for d in plan.depths for arm in ARMS for s in plan.seeds
          if applies(arm, w, d)]


# -- costs ----------------------------------------------------------------------

def costs(work: str, plan: Plan) -> tuple[dict, dict]:
  """Parameters stored and analytic upstream FLOPs per route, to initialize every size."""
  u = plan.seeds[0]
  sizes = [(w, d) for w in plan.widths for d in plan.depths]
  lg = lambda name: load_learngene(os.path.join(_up(work, u, name), 'export'))[0]
  scalers = sum(tree_lib.num_params(lg(f'wave_w{w}_d{d}')['scalers']) for w, d in sizes)
  stored = {'wave': tree_lib.num_params(lg('wave')['templates']) + scalers,
            'weight_selection': tree_lib.num_params(checkpoint.load_params(
                os.path.join(_up(work, u, 'teacher'), 'export'))[0]),
            'tleg': tree_lib.num_params(lg('tleg')),
            'pretrained': sum(tree_lib.num_params(param_shapes(model_cfg(w, d), claims.IMAGE)) for w, d in sizes)}
  teacher_cfg, steps, batch = model_cfg(*TEACHER), plan.upstream_steps, teacher.get_config(claims.PRESET).batch_size
  fl = {'teacher': claims.train_flops([teacher_cfg], batch, steps),
        'wave': claims.train_flops([teacher_cfg], batch, steps, teacher_cfg)
                + sum(claims.train_flops([model_cfg(w, d)], batch, plan.scaler_steps, teacher_cfg) for w, d in sizes),
        'weight_selection': 0.0,
        'tleg': claims.train_flops([teacher_cfg], batch, steps, teacher_cfg),
        'pretrained': claims.train_flops([model_cfg(w, d) for w, d in sizes if (w, d) != TEACHER], batch, steps)}
  return stored, fl


# -- reporting ------------------------------------------------------------------

def runs(curves: dict, arm: str, width: int, depth: int) -> list:
  return [k for k in curves if k[:3] == (arm, width, depth)]


def report(plan: Plan, curves: dict, stored: dict, fl: dict, minutes: float) -> list[str]:
  S = plan.finetune_steps
  steps = [s for s in STEPS if s <= S]
  lines = [f'# Learngenes across widths and depths on MNIST-5k ({"quick" if plan is QUICK else "full"} study)', '',
           __doc__.split('\n\n')[1].replace('\n', ' '), '',
           f'This run: upstream {plan.upstream_steps} steps, scalers {plan.scaler_steps} steps, fine-tunes {S} '
           f'steps, seeds {list(plan.seeds)}; mean ± std over seeds. Study wall time {minutes:.0f} min '
           f'(runs resumed from an earlier invocation, or shared with claims.py, count as 0).', '',
           '## Accuracy during fine-tuning', '',
           '| width | depth | arm | ' + ' | '.join(f'step {s}' for s in steps) + ' | mean over steps (AUC) | '
           "steps to scratch's final |", '|---|---|---|' + '---|' * (len(steps) + 2)]
  for w in plan.widths:
    for d in plan.depths:
      scratch = {k[3]: curves[k] for k in runs(curves, 'scratch', w, d)}
      for arm in ARMS:
        ks = runs(curves, arm, w, d)
        if not ks:
          continue
        reach = [steps_to_reach(curves[k], scratch[k[3]][S]) for k in ks]
        got = [r for r in reach if r is not None]
        reach_txt = (f'{np.mean(got):.0f}' + ('' if len(got) == len(reach) else f' ({len(got)}/{len(reach)})')
                     if got else f'> {S}')
        lines.append(f'| {w} | {d} | {arm} | '
                     + ' | '.join(claims.fmt([accuracy_at(curves[k], s) for k in ks]) for s in steps)
                     + f' | {claims.fmt([claims.auc(curves[k], S) for k in ks])} | {reach_txt} |')
  first = steps[0]
  lines += ['', f'## WAVE at step {first} against the best of Weight Selection and scratch', '',
            '| width | depth | wave | weight_selection | scratch | wave - best other |', '|---|---|---|---|---|---|']
  for w in plan.widths:
    for d in plan.depths:
      mean = {a: np.mean([accuracy_at(curves[k], first) for k in runs(curves, a, w, d)]) if runs(curves, a, w, d)
              else float('nan') for a in ('wave', 'weight_selection', 'scratch')}
      best = np.nanmax([mean['weight_selection'], mean['scratch']])
      lines.append(f'| {w} | {d} | ' + ' | '.join('-' if np.isnan(v) else f'{v:.3f}' for v in mean.values())
                   + f' | {mean["wave"] - best:+.3f} |')
  lines += ['', f'## Parameters stored to initialize all {len(plan.widths) * len(plan.depths)} sizes', '',
            '| route | parameters | note |', '|---|---|---|',
            f'| wave | {stored["wave"]:,} | templates once + the scalers of every size |',
            f'| weight_selection | {stored["weight_selection"]:,} | the teacher |',
            f'| tleg | {stored["tleg"]:,} | width {TEACHER[0]} only |',
            f'| pretrained | {stored["pretrained"]:,} | one model per size |']
  lines += ['', '## Upstream training compute (analytic GFLOPs; fine-tuning is the same for every route)', '',
            '| route | teacher | its own | total |', '|---|---|---|---|']
  for route in ('wave', 'weight_selection', 'tleg'):
    lines.append(f'| {route} | {fl["teacher"] / 1e9:,.0f} | {fl[route] / 1e9:,.0f} | '
                 f'{(fl["teacher"] + fl[route]) / 1e9:,.0f} |')
  lines.append(f'| pretrained (one per size; the teacher is one) | {fl["teacher"] / 1e9:,.0f} | '
               f'{fl["pretrained"] / 1e9:,.0f} | {(fl["teacher"] + fl["pretrained"]) / 1e9:,.0f} |')
  lines.append('| scratch | 0 | 0 | 0 |')
  return lines


def plot(plan: Plan, curves: dict, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  steps = [s for s in STEPS if s <= plan.finetune_steps]
  fig, axes = plt.subplots(len(steps), len(plan.widths), figsize=(3.6 * len(plan.widths), 3 * len(steps)),
                           squeeze=False, layout='constrained', sharey='row')
  for row, step in enumerate(steps):
    for col, w in enumerate(plan.widths):
      ax = axes[row][col]
      for i, arm in enumerate(ARMS):
        pts = [(d, [accuracy_at(curves[k], step) for k in runs(curves, arm, w, d)]) for d in plan.depths]
        pts = [(d, v) for d, v in pts if v]
        if pts:
          ds, vs = zip(*pts)
          ax.errorbar(ds, [np.mean(v) for v in vs], yerr=[np.std(v) for v in vs], marker='o', capsize=3,
                      label=arm, color=f'C{i}')
      ax.set(title=f'width {w}: accuracy at step {step}', xlabel='descendant depth', xticks=plan.depths)
      ax.grid(alpha=0.3)
  for row in axes:
    row[0].set_ylabel('eval accuracy, digits 5-9')
  handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
  fig.legend([handles[a] for a in ARMS if a in handles], [a for a in ARMS if a in handles],
             loc='outside lower center', ncols=len(handles))
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main():
  args, work, cache = claims.study_args(__doc__.splitlines()[0])
  plan = QUICK if args.quick else FULL
  start = time.perf_counter()
  for stage in ('teacher', 'rest', 'scalers'):
    claims.run_all({k: v for u in plan.seeds for k, v in upstream_jobs(work, plan, u, stage).items()},
                   args.workers, cache)
  curves = claims.run_all({t: tune_job(work, plan, *t) for t in tunes(plan)}, args.workers, cache)
  minutes = (time.perf_counter() - start) / 60
  stored, fl = costs(work, plan)
  name = 'claims_width_quick' if args.quick else 'claims_width'
  claims.write_report(args.out, name, report(plan, curves, stored, fl, minutes))
  plot(plan, curves, os.path.join(args.out, name + '.png'))


if __name__ == '__main__':
  main()
