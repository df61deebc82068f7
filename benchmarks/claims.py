"""The papers' claims, measured where a learngene acts: TLEG, SWS and condense on MNIST-5k.

The transfer protocol (benchmarks/transfer.py, lgjax's mnist5k presets):
upstream on digits 0-4, for each upstream seed u: a teacher (depth 6, 800
steps), the TLEG and SWS auxiliary models distilled from it (depth 6; SWS as
2 stages of 3), the condense learngene (the teacher's last 2 blocks, as the
released baseline) and "pretrain one model per depth" (a plain ViT of each
depth, 800 steps; at depth 6 it is the teacher: the teacher's layers).
Downstream on digits 5-9, for each fine-tune seed f: descendants fine-tuned
300 steps (batch 64) from each learngene, from the pretrained model of their
depth (fresh head) and from scratch, evaluated every 25 steps.

What a learngene carries, as ablations of TLEG: slope B = 0 (every block the
base A), B with its entries permuted within each parameter (same values,
no structure), a learngene trained with cross-entropy only (no teacher), and
TLEG's blocks or its stem alone (patch/position embedding, cls, final norm),
the other part fresh as scratch's. A second downstream task (generated shapes,
lgjax.data.shapes) is farther from the source than digits 5-9.
Also: depths beyond the auxiliary depth (10, 12), 40 samples per class, and
3 learning rates.

Reports (claims.md, claims.png in --out): accuracy at steps 25/50/100/300,
the area under the accuracy curve (mean accuracy over the 300 steps), steps
to reach scratch's final accuracy, parameters stored, training FLOPs.
Mean ± std over runs; at the grid depths every upstream seed meets every
fine-tune seed (3 x 3), elsewhere seeds are matched (u = f). Runs resume
from --work and share a persistent compilation cache; --workers processes
run them side by side.

  python -m benchmarks.claims [--quick] [--workers 2] [--out benchmarks/results] [--work /tmp/lgjax_claims]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import time

import jax
import numpy as np

from benchmarks.common import steps_to_reach, train_once
from configs import common, descendant, sws_aux, teacher, tleg_aux
from lgjax import checkpoint
from lgjax.learngene import load_learngene, save_learngene
from lgjax import tree as tree_lib
from lgjax.learngene import condense
from lgjax.models import flops, param_shapes
from lgjax.train.recipe import accuracy_at
from lgjax.train.reporting import eval_curve

PRESET = 'mnist5k'
IMAGE = (28, 28, 1)
ARMS = ('tleg', 'sws', 'condense', 'pretrained', 'scratch')
LEARNGENES = ('tleg', 'sws', 'condense')
ABLATIONS = ('tleg_b0', 'tleg_shuffled', 'tleg_ce', 'tleg_blocks_only', 'tleg_stem_only')
STEM = ['^embedding/', '^pos_embedding$', '^cls$', '^Transformer/encoder_norm/']  # what TLEG shares across depths
REINIT = {'tleg_blocks_only': STEM, 'tleg_stem_only': ['^Transformer/encoderblock']}  # fresh, as scratch's
SWS_STAGES = (3, 3)       # 2 stages, so that a depth-2 descendant still gets one block of each
CONDENSE_LAYERS = (4, 5)  # the teacher's last 2 blocks (the released baseline's rule)
TEACHER_DEPTH = 6
STEPS = (25, 50, 100, 300)
TASKS = {'digits': 'mnist5k', 'shapes': 'shapes'}  # downstream task -> dataset.name (lgjax.data.shapes)


@dataclasses.dataclass(frozen=True)
class Plan:
  upstream_steps: int
  finetune_steps: int
  depths: tuple[int, ...]             # every arm
  grid_depths: tuple[int, ...]        # every upstream seed x every fine-tune seed
  pretrained_depths: tuple[int, ...]  # a plain ViT pretrained at each (6: the teacher)
  ablation_depths: tuple[int, ...]
  study_depth: int                    # few samples and learning rates
  upstream_seeds: tuple[int, ...]
  finetune_seeds: tuple[int, ...]
  few_fraction: float                 # of the 400 training digits per class
  lr_scales: tuple[float, ...]        # besides 1.0
  shapes_depths: tuple[int, ...]      # every arm on the second downstream task (matched seeds)


FULL = Plan(upstream_steps=800, finetune_steps=300, depths=(2, 4, 6, 8, 10, 12), grid_depths=(2, 6, 12),
            pretrained_depths=(2, 4, 6, 8), ablation_depths=(2, 6), study_depth=6, upstream_seeds=(0, 1, 2),
            finetune_seeds=(0, 1, 2), few_fraction=0.1, lr_scales=(0.3, 3.0), shapes_depths=(2, 6))
QUICK = Plan(upstream_steps=200, finetune_steps=100, depths=(2, 6), grid_depths=(2,), pretrained_depths=(2, 6),
             ablation_depths=(2,), study_depth=6, upstream_seeds=(0,), finetune_seeds=(0, 1), few_fraction=0.1,
             lr_scales=(), shapes_depths=(6,))


@dataclasses.dataclass(frozen=True)
class Tune:
  """One fine-tune: an arm at a depth, from upstream seed u, with fine-tune seed f."""
  arm: str
  depth: int
  u: int
  f: int
  lr_scale: float = 1.0
  fraction: float = 1.0
  task: str = 'digits'  # a key of TASKS

  @property
  def name(self) -> str:
    up = '' if self.arm == 'scratch' else f'_u{self.u}'  # scratch needs no upstream
    task = '' if self.task == 'digits' else f'_{self.task}'
    return f'{self.arm}_d{self.depth}{up}_f{self.f}_lr{self.lr_scale:g}_frac{self.fraction:g}{task}'


# -- running ------------------------------------------------------------------

def run(config, workdir: str) -> dict[int, float]:
  """The run's eval curve; a finished run (its export written) is read, not redone."""
  return eval_curve(train_once(config, workdir))


def _init_worker(cache_dir: str) -> None:
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def run_all(jobs: dict, workers: int, cache_dir: str) -> dict:
  """{key: (config, workdir)} -> {key: curve}, in `workers` processes (1: here)."""
  if workers <= 1:
    return {k: run(*job) for k, job in jobs.items()}
  ctx = multiprocessing.get_context('spawn')  # fresh JAX per process
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                              initargs=(cache_dir,)) as pool:
    futures = {k: pool.submit(run, *job) for k, job in jobs.items()}
    return {k: f.result() for k, f in futures.items()}


# -- upstream -----------------------------------------------------------------

def upstream_jobs(work: str, plan: Plan, u: int, stage: str) -> dict:
  """stage 'teacher': the teacher; 'rest': what needs it (aux models, pretrained depths)."""
  up = lambda name: os.path.join(work, 'upstream', f'u{u}', name)
  teacher_export = os.path.join(up('teacher'), 'export')
  steps = dict(total_steps=plan.upstream_steps, seed=u, eval_every=plan.upstream_steps,
               checkpoint_every=plan.upstream_steps)
  if stage == 'teacher':
    c = teacher.get_config(PRESET)
    c.update(**steps)
    return {('teacher', u): (c, up('teacher'))}
  jobs = {}
  for name, module, alpha in (('tleg', tleg_aux, 1.0), ('tleg_ce', tleg_aux, 0.0), ('sws', sws_aux, 1.0)):
    c = module.get_config(PRESET)
    c.update(**steps)
    c.loss.alpha = alpha
    c.teacher.dir = teacher_export if alpha else ''
    if name == 'sws':
      c.learngene.stage_depths = list(SWS_STAGES)
      c.model.depth = sum(SWS_STAGES)
    jobs[name, u] = (c, up(name))
  for depth in plan.pretrained_depths:
    if depth != TEACHER_DEPTH:
      c = teacher.get_config(PRESET)
      c.update(**steps)
      c.model.depth = depth
      jobs[f'pretrained_d{depth}', u] = (c, up(f'pretrained_d{depth}'))
  return jobs


def derived_learngenes(work: str, u: int) -> None:
  """The condense learngene and the TLEG ablations, written next to the upstream runs."""
  up = lambda name: os.path.join(work, 'upstream', f'u{u}', name)
  ancestry, ancestry_cfg = checkpoint.load_params(os.path.join(up('teacher'), 'export'))
  if not os.path.exists(up('condense')):
    save_learngene(up('condense'), condense.condense(ancestry, list(CONDENSE_LAYERS)),
                              method='condense', model_config=ancestry_cfg)
  lg, meta = load_learngene(os.path.join(up('tleg'), 'export'))
  rng = np.random.default_rng(u)
  variants = {'tleg_b0': jax.tree.map(np.zeros_like, lg['slope']),
              'tleg_shuffled': jax.tree.map(lambda b: rng.permutation(np.ravel(b)).reshape(np.shape(b)),
                                            lg['slope'])}
  for name, slope in variants.items():
    if not os.path.exists(up(name)):
      save_learngene(up(name), {**lg, 'slope': slope}, method='tleg',
                                model_config=meta['model_config'])


def learngene_dir(work: str, arm: str, u: int) -> str:
  up = os.path.join(work, 'upstream', f'u{u}')
  if arm in REINIT:
    arm = 'tleg'
  if arm in ('tleg', 'sws', 'tleg_ce'):
    return os.path.join(up, arm, 'export')
  return os.path.join(up, arm)  # condense and the TLEG ablations


# -- downstream ---------------------------------------------------------------

def tune_job(work: str, plan: Plan, t: Tune):
  c = descendant.get_config(PRESET)
  c.update(total_steps=plan.finetune_steps, seed=t.f, checkpoint_every=plan.finetune_steps,
           eval_every=min(25, plan.finetune_steps))
  c.model.depth = t.depth
  c.optimizer.lr *= t.lr_scale
  c.dataset.train_fraction = t.fraction
  c.dataset.name = TASKS[t.task]
  if t.arm == 'scratch':
    c.init.method = 'scratch'
  elif t.arm == 'pretrained':  # the whole pretrained model of this depth, a fresh head
    name = 'teacher' if t.depth == TEACHER_DEPTH else f'pretrained_d{t.depth}'
    c.init.update(method='condense', source=os.path.join(work, 'upstream', f'u{t.u}', name, 'export'),
                  layers=list(range(t.depth)))
  else:
    c.init.update(method='tleg' if t.arm.startswith('tleg') else t.arm,
                  learngene_dir=learngene_dir(work, t.arm, t.u))
    c.init.reinit = (*c.init.reinit, *REINIT.get(t.arm, ()))
  return c, os.path.join(work, 'descendants', t.name)


def tunes(plan: Plan) -> list[Tune]:
  """Every fine-tune of the study (scratch once per fine-tune seed)."""
  out = set()
  matched = [(s, s) for s in plan.upstream_seeds if s in plan.finetune_seeds]
  grid = [(u, f) for u in plan.upstream_seeds for f in plan.finetune_seeds]

  def add(arm, depth, pairs, **kw):
    if arm == 'pretrained' and depth not in plan.pretrained_depths:
      return
    for u, f in pairs:
      out.add(Tune(arm, depth, plan.upstream_seeds[0] if arm == 'scratch' else u, f, **kw))

  for depth in plan.depths:
    for arm in ARMS:
      add(arm, depth, grid if depth in plan.grid_depths else matched)
  for depth in plan.ablation_depths:
    for arm in ABLATIONS:
      add(arm, depth, grid if depth in plan.grid_depths else matched)
  for arm in ARMS:
    add(arm, plan.study_depth, matched, fraction=plan.few_fraction)
    for r in plan.lr_scales:
      add(arm, plan.study_depth, matched, lr_scale=r)
    for depth in plan.shapes_depths:
      add(arm, depth, matched, task='shapes')
  return sorted(out, key=lambda t: (t.depth, t.arm, t.u, t.f, t.lr_scale, t.fraction))


def cell(curves: dict[Tune, dict[int, float]], arm: str, depth: int, **kw) -> list[Tune]:
  """The fine-tunes of one table cell (scratch matches any upstream seed)."""
  kw = {'lr_scale': 1.0, 'fraction': 1.0, 'task': 'digits', **kw}
  return [t for t in curves if t.arm == arm and t.depth == depth
          and all(getattr(t, k) == v for k, v in kw.items())]


def auc(curve: dict[int, float], steps: int) -> float:
  """Mean accuracy over fine-tuning (trapezoid over the eval steps, from step 0 at chance 0.2)."""
  xs = [0] + sorted(s for s in curve if s <= steps)
  ys = [0.2] + [curve[s] for s in xs[1:]]
  return float(np.trapezoid(ys, xs) / steps)


def scratch_of(curves, t: Tune) -> dict[int, float]:
  return curves[next(s for s in cell(curves, 'scratch', t.depth, lr_scale=t.lr_scale, fraction=t.fraction,
                                     task=t.task) if s.f == t.f)]


# -- reporting ----------------------------------------------------------------

def fmt(values) -> str:
  v = np.asarray(values, float)
  return f'{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}' if len(v) else '-'


def accuracy_table(plan: Plan, curves, depths, task: str) -> list[str]:
  """Markdown rows: accuracy at each step, AUC, steps to scratch's final and the gain, per depth and arm."""
  S = plan.finetune_steps
  steps = [s for s in STEPS if s <= S]
  lines = ['| depth | arm | runs | ' + ' | '.join(f'step {s}' for s in steps) + ' | mean over steps (AUC) | '
           f"steps to scratch's final | gain @{steps[0]} / @{S} |", '|---|---|---|' + '---|' * (len(steps) + 3)]
  for depth in depths:
    for arm in ARMS + (ABLATIONS if task == 'digits' and depth in plan.ablation_depths else ()):
      ts = cell(curves, arm, depth, task=task)
      if not ts:
        continue
      reach = [steps_to_reach(curves[t], scratch_of(curves, t)[S]) for t in ts]
      got = [r for r in reach if r is not None]
      reach_txt = (f'{np.mean(got):.0f}' + ('' if len(got) == len(reach) else f' ({len(got)}/{len(reach)})')
                   if got else f'> {S}')
      gain = lambda s: np.mean([accuracy_at(curves[t], s) - accuracy_at(scratch_of(curves, t), s) for t in ts])
      lines.append(f'| {depth} | {arm} | {len(ts)} | '
                   + ' | '.join(fmt([accuracy_at(curves[t], s) for t in ts]) for s in steps)
                   + f' | {fmt([auc(curves[t], S) for t in ts])} | {reach_txt} | '
                   + ('-' if arm == 'scratch' else f'{gain(steps[0]):+.3f} / {gain(S):+.3f}') + ' |')
  return lines


def report(plan: Plan, curves, stored, upstream_flops, minutes) -> list[str]:
  S = plan.finetune_steps
  steps = [s for s in STEPS if s <= S]
  seeds = f'upstream seeds {list(plan.upstream_seeds)} x fine-tune seeds {list(plan.finetune_seeds)}'
  lines = [f'# Learngene claims on MNIST-5k ({"quick" if plan is QUICK else "full"} study)', '',
           __doc__.split('\n\n')[1].replace('\n', ' '), '',
           f'This run: upstream {plan.upstream_steps} steps, fine-tunes {plan.finetune_steps} steps; '
           f'{seeds} at depths {list(plan.grid_depths)}, matched seeds elsewhere; mean ± std over runs. '
           f'Study wall time {minutes:.0f} min (runs resumed from an earlier invocation count as 0).', '']
  lines += ['## Accuracy during fine-tuning', ''] + accuracy_table(plan, curves, plan.depths, 'digits')
  first = steps[0]
  lines += ['', f'## Gain over scratch at step {first} and at the end', '',
            '| depth | ' + ' | '.join(f'{a} @{first} / @{S}' for a in ARMS if a != 'scratch') + ' |',
            '|---|' + '---|' * (len(ARMS) - 1)]
  for depth in plan.depths:
    cells = []
    for arm in ARMS[:-1]:
      ts = cell(curves, arm, depth)
      g = lambda s: [accuracy_at(curves[t], s) - accuracy_at(scratch_of(curves, t), s) for t in ts]
      cells.append(f'{np.mean(g(first)):+.3f} / {np.mean(g(S)):+.3f}' if ts else '-')
    lines.append(f'| {depth} | ' + ' | '.join(cells) + ' |')

  d = plan.study_depth
  for title, kw_list in ((f'## {plan.few_fraction * 400:.0f} samples per class (depth {d})', [dict(fraction=plan.few_fraction)]),
                         (f'## Learning rates (depth {d}; x the preset lr)', [dict(lr_scale=r) for r in sorted((*plan.lr_scales, 1.0))])):
    lines += ['', title, '', '| setting | ' + ' | '.join(f'{a} @{first} / @{S}' for a in ARMS) + ' |',
              '|---|' + '---|' * len(ARMS)]
    for kw in kw_list:
      row = []
      for arm in ARMS:
        ts = [t for t in cell(curves, arm, d, **kw) if t.u == t.f or arm == 'scratch']
        row.append(f'{np.mean([accuracy_at(curves[t], first) for t in ts]):.3f} / '
                   f'{np.mean([curves[t][S] for t in ts]):.3f}' if ts else '-')
      lines.append(f'| {kw} | ' + ' | '.join(row) + ' |')

  lines += ['', '## A second downstream task, farther from the source: generated shapes', '',
            'lgjax.data.shapes: circles, triangles and squares (outlines), crosses and lines at random place, '
            'size, rotation and stroke, over noise (400 train / 100 test per class); the same upstream '
            'learngenes and models, trained on digits 0-4.', '']
  lines += accuracy_table(plan, curves, plan.shapes_depths, 'shapes')
  lines += ['', f'## Parameters stored to initialize every depth {list(plan.depths)}', '',
            '| what is stored | parameters | one pretrained model per depth / this |', '|---|---|---|']
  lines += [f'| {m} learngene | {stored[m]:,} | {stored["pretrained"] / stored[m]:.1f}x |' for m in LEARNGENES]
  lines.append(f'| one pretrained model per depth | {stored["pretrained"]:,} | 1.0x |')

  tune = train_flops([model_cfg(dd) for dd in plan.depths], descendant.get_config(PRESET).batch_size, S)
  fl = upstream_flops
  lines += ['', '## Training compute for descendants of every depth (analytic GFLOPs)', '',
            '| route | upstream (teacher included) | + fine-tuning every depth | pretrained route / this |',
            '|---|---|---|---|']
  total_pre = fl['pretrained'] + tune
  for m in LEARNGENES:
    up = fl[m] + fl['teacher']
    lines.append(f'| {m} | {up / 1e9:,.0f} | {(up + tune) / 1e9:,.0f} | {total_pre / (up + tune):.2f}x |')
  lines.append(f'| pretrain one model per depth | {fl["pretrained"] / 1e9:,.0f} | {total_pre / 1e9:,.0f} | 1.00x |')
  lines.append(f'| scratch | 0 | {tune / 1e9:,.0f} | {total_pre / tune:.2f}x |')
  return lines


def model_cfg(depth: int) -> dict:
  return common.model(PRESET, depth=depth, num_classes=common.dataset(PRESET, 'source').num_classes).to_dict()


def train_flops(configs: list[dict], batch: int, steps: int, teacher_cfg: dict | None = None) -> float:
  """Forward + backward (3x forward) of every trained model, plus a teacher forward when distilling."""
  per_image = sum(3 * flops.forward_flops(c, IMAGE) for c in configs)
  if teacher_cfg:
    per_image += flops.forward_flops(teacher_cfg, IMAGE)
  return float(per_image) * batch * steps


def costs(work: str, plan: Plan) -> tuple[dict, dict]:
  """Parameters stored (upstream seed 0's assets) and analytic upstream FLOPs, per route.
  Pretraining every depth covers all plan.depths, also those the study skips."""
  u = plan.upstream_seeds[0]
  stored = {m: tree_lib.num_params(load_learngene(learngene_dir(work, m, u))[0]) for m in LEARNGENES}
  stored['pretrained'] = sum(tree_lib.num_params(param_shapes(model_cfg(d), IMAGE)) for d in plan.depths)
  teacher_cfg, steps = model_cfg(TEACHER_DEPTH), plan.upstream_steps
  batch = teacher.get_config(PRESET).batch_size
  fl = {'teacher': train_flops([teacher_cfg], batch, steps),
        'tleg': train_flops([teacher_cfg], batch, steps, teacher_cfg),
        'sws': train_flops([model_cfg(sum(SWS_STAGES))], batch, steps, teacher_cfg),
        'condense': 0.0,  # the teacher is the ancestry
        'pretrained': train_flops([model_cfg(d) for d in plan.depths], batch, steps)}
  return stored, fl


def color(arm: str) -> str:
  """One colour per arm on every panel."""
  return f'C{(ARMS + ABLATIONS).index(arm) % 10}'


def plot(plan: Plan, curves, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  S, depths = plan.finetune_steps, plan.depths
  panels = [(d, 'digits') for d in depths] + [(d, 'shapes') for d in plan.shapes_depths]
  fig = plt.figure(figsize=(3.2 * len(panels), 7.5), layout='constrained')
  top, bottom = fig.subfigures(2, 1)
  curve_axes = top.subplots(1, len(panels), squeeze=False)[0]
  for ax, (depth, task) in zip(curve_axes, panels):
    for arm in ARMS + (ABLATIONS if task == 'digits' and depth in plan.ablation_depths else ()):
      ts = cell(curves, arm, depth, task=task)
      if not ts:
        continue
      xs = sorted(curves[ts[0]])
      ys = np.array([[curves[t][s] for s in xs] for t in ts])
      ax.plot(xs, ys.mean(0), marker='.', label=arm, ls='--' if arm in ABLATIONS else '-', color=color(arm))
      ax.fill_between(xs, ys.min(0), ys.max(0), color=color(arm), alpha=0.12)
    ax.set(title=f'digits 5-9, depth {depth}' if task == 'digits' else f'shapes, depth {depth}',
           xlabel='fine-tuning step', ylim=(0.2, 1.0))
    ax.grid(alpha=0.3)
  curve_axes[0].set_ylabel('eval accuracy (mean, band: min-max)')
  curve_axes[0].legend(fontsize=7)
  for ax, step in zip(bottom.subplots(1, 2), (STEPS[0], S)):
    for arm in ARMS[:-1]:
      pts = [(d, np.mean([accuracy_at(curves[t], step) - accuracy_at(scratch_of(curves, t), step)
                          for t in cell(curves, arm, d)])) for d in depths if cell(curves, arm, d)]
      ax.plot(*zip(*pts), marker='o', label=arm, color=color(arm))
    ax.axhline(0, color='gray', lw=0.8)
    ax.set(title=f'digits 5-9: gain over scratch at step {step}', xlabel='descendant depth',
           ylabel='accuracy gain')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def study_args(description: str) -> tuple[argparse.Namespace, str, str]:
  """The studies' command line: (args, work directory of this plan, compilation cache)."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument('--out', default='benchmarks/results')
  p.add_argument('--work', default='/tmp/lgjax_claims')
  p.add_argument('--workers', type=int, default=2, help='processes running fine-tunes side by side')
  p.add_argument('--quick', action='store_true', help='a reduced study: minutes')
  args = p.parse_args()
  cache = os.path.join(args.work, 'jax_cache')
  _init_worker(cache)
  os.makedirs(args.out, exist_ok=True)
  return args, os.path.join(args.work, 'quick' if args.quick else 'full'), cache


def write_report(out: str, name: str, lines: list[str]) -> None:
  text = '\n'.join(lines)
  with open(os.path.join(out, name + '.md'), 'w') as f:
    f.write(text + '\n')
  print(text)


def main():
  args, work, cache = study_args(__doc__.splitlines()[0])
  plan = QUICK if args.quick else FULL
  start = time.perf_counter()
  for stage in ('teacher', 'rest'):
    run_all({k: v for u in plan.upstream_seeds for k, v in upstream_jobs(work, plan, u, stage).items()},
            args.workers, cache)
  for u in plan.upstream_seeds:
    derived_learngenes(work, u)
  todo = tunes(plan)
  results = run_all({t: tune_job(work, plan, t) for t in todo}, args.workers, cache)
  minutes = (time.perf_counter() - start) / 60
  stored, fl = costs(work, plan)
  name = 'claims_quick' if args.quick else 'claims'
  write_report(args.out, name, report(plan, results, stored, fl, minutes))
  plot(plan, results, os.path.join(args.out, name + '.png'))


if __name__ == '__main__':
  main()
