"""A recipe: named runs (`config.runs`) trained in `config.order`, each in workdir/NAME.

String fields of a run may say `{workdir}` to point at the recipe's workdir,
e.g. `teacher.dir = '{workdir}/teacher/export'`, so later runs read what
earlier ones exported. Every run is an ordinary config, runnable alone.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from lgjax.train.loop import train_and_evaluate


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
  if config.kind != 'descendant':
    return config.kind
  return config.init.method


def run_recipe(config: Any, workdir: str) -> list[dict[str, Any]]:
  """Trains config.runs in order; returns (and prints) one row per run."""
  rows = []
  for name in config.order:
    run = config.runs[name]
    print(f'== {name} ==', flush=True)
    metrics = train_and_evaluate(_resolve(run, workdir), os.path.join(workdir, name))
    rows.append({'run': name, 'kind': run.kind, 'init': describe_init(run), 'depth': run.model.depth,
                 'classes': run.dataset.get('classes', run.dataset.name), 'steps': metrics['step'],
                 'accuracy': metrics.get('eval_accuracy', float('nan'))})
  if jax.process_index() == 0:
    print(format_table(rows))
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  header = '| run | data | init | depth | steps | eval accuracy |\n|---|---|---|---|---|---|'
  lines = [f'| {r["run"]} | {r["classes"]} | {r["init"]} | {r["depth"]} | {r["steps"]} | {r["accuracy"]:.3f} |'
           for r in rows]
  return '\n'.join([header, *lines])
