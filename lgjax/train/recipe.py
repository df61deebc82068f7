"""A recipe: named runs (`config.runs`) trained in `config.order`, each in workdir/NAME.

String fields of a run may say `{workdir}` to point at the recipe's workdir,
e.g. `teacher.dir = '{workdir}/teacher/export'`, so later runs read what
earlier ones exported. Every run is an ordinary config, runnable alone.

At the end the recipe compares its descendants: accuracy at
`config.early_step` (where a learngene acts) and at the end, and the gain
over the scratch descendant of the same depth, printed and written to
workdir/summary.md, with every descendant's curve in workdir/comparison.png.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from lgjax.train import reporting
from lgjax.train.loop import check_config, train_and_evaluate

SUMMARY_FILE = 'summary.md'
COMPARISON_PLOT = 'comparison.png'


def _resolve(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(config.to_dict())

  def walk(node):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value)
      elif isinstance(value, str) and '{workdir}' in value:
        node[key] = value.replace('{workdir}', workdir)

  walk(out)
  return out


def describe_init(config: Any) -> str:
  """The init column: a descendant's init.method, an aux run's 'METHOD_aux', else the kind."""
  if config.kind == 'descendant':
    return config.init.method
  if config.kind == 'aux':
    return f'{config.learngene.method}_aux'
  return config.kind


def check_recipe(config: Any, workdir: str) -> None:
  """Every run's fields, before the first run trains: a bad value in the last run
  fails at once, naming the run, not after the others have trained."""
  missing = [name for name in config.order if name not in config.runs]
  if missing:
    raise ValueError(f'order names runs that runs lacks: {missing}; runs has {sorted(config.runs)}.')
  for name in config.order:
    try:
      check_config(_resolve(config.runs[name], workdir))
    except ValueError as e:
      raise ValueError(f'runs.{name}: {e}') from None


def run_recipe(config: Any, workdir: str) -> list[dict[str, Any]]:
  """Trains config.runs in order; returns one row per run (with its eval curve),
  prints the comparison table and writes summary.md and comparison.png. A run stopped
  by SIGTERM or Ctrl-C (checkpoint saved) ends the recipe there, with the rows of the
  runs before it: the later runs read its export. The same command resumes it."""
  check_recipe(config, workdir)
  rows = []
  for name in config.order:
    run = config.runs[name]
    print(f'== {name} ==', flush=True)
    run_dir = os.path.join(workdir, name)
    metrics = train_and_evaluate(_resolve(run, workdir), run_dir)
    if metrics.get('preempted'):
      return rows
    curve = reporting.eval_curve(run_dir)
    rows.append({'run': name, 'kind': run.kind, 'init': describe_init(run), 'depth': run.model.depth,
                 'classes': run.dataset.get('classes', run.dataset.name), 'steps': metrics['step'],
                 'accuracy': metrics.get('eval_accuracy', float('nan')), 'curve': curve})
  if jax.process_index() == 0:
    early = config.get('early_step')
    table = format_table(rows, early)
    print(table)
    with open(os.path.join(workdir, SUMMARY_FILE), 'w') as f:
      f.write(f'# {config.get("title", "Recipe")}\n\n{table}\n')
    plot_comparison(rows, os.path.join(workdir, COMPARISON_PLOT), early)
  return rows


def accuracy_at(curve: dict[int, float], step: int | None) -> float:
  """Eval accuracy at `step` (the last eval at or before it); nan if none."""
  done = [s for s in curve if step is not None and s <= step]
  return curve[max(done)] if done else float('nan')


def _scratch_of(row: dict, rows: list[dict]) -> dict | None:
  """The scratch descendant with this row's depth and data, if the recipe has one."""
  return next((r for r in rows if r['kind'] == 'descendant' and r['init'] == 'scratch'
               and r['depth'] == row['depth'] and r['classes'] == row['classes']), None)


def format_table(rows: list[dict[str, Any]], early_step: int | None = None) -> str:
  """Markdown: every run's final accuracy; descendants also at `early_step` and
  their gain over the scratch descendant of the same depth."""
  fmt = lambda x: '-' if x != x else f'{x:.3f}'  # nan -> '-'
  gain = lambda a, b: '-' if a != a or b != b else f'{a - b:+.3f}'
  early = f'accuracy at step {early_step}' if early_step else 'early accuracy'
  lines = [f'| run | data | init | depth | steps | {early} | final accuracy | gain over scratch '
           f'(step {early_step or "-"} / final) |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    a_early = accuracy_at(r['curve'], early_step) if r['kind'] == 'descendant' else float('nan')
    scratch = _scratch_of(r, rows) if r['kind'] == 'descendant' and r['init'] != 'scratch' else None
    vs = '-'
    if scratch is not None:
      vs = f'{gain(a_early, accuracy_at(scratch["curve"], early_step))} / {gain(r["accuracy"], scratch["accuracy"])}'
    lines.append(f'| {r["run"]} | {r["classes"]} | {r["init"]} | {r["depth"]} | {r["steps"]} | '
                 f'{fmt(a_early)} | {fmt(r["accuracy"])} | {vs} |')
  return '\n'.join(lines)


def plot_comparison(rows: list[dict[str, Any]], path: str, early_step: int | None = None) -> str | None:
  """Eval accuracy vs step of every descendant, one panel per depth."""
  descendants = [r for r in rows if r['kind'] == 'descendant' and r['curve']]
  depths = sorted({r['depth'] for r in descendants})
  if not depths:
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(depths), figsize=(4.5 * len(depths), 3.6), squeeze=False)
  for ax, depth in zip(axes[0], depths):
    for r in (r for r in descendants if r['depth'] == depth):
      steps = sorted(r['curve'])
      ax.plot(steps, [r['curve'][s] for s in steps], marker='.', label=f'{r["init"]} ({r["classes"]})')
    if early_step:
      ax.axvline(early_step, color='gray', lw=0.8, ls=':')
    ax.set(title=f'depth {depth}', xlabel='fine-tuning step', ylabel='eval accuracy')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle('Descendants: learngene vs scratch')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
