r"""The learngene story end to end, as one recipe of ordinary runs.

  python train.py --config=configs/demo.py:mnist5k --workdir=/tmp/lgjax_demo

1. teacher     a ViT on the source classes (digits 0-4);
2. tleg        a TLEG learngene distilled from it through the auxiliary model;
3. descendants of two depths on the downstream classes (digits 5-9), each
   initialized from the learngene and from scratch, with equal budgets.
Prints a table with each descendant's accuracy at step 25 (where a learngene
acts) and at the end, and its gain over scratch; writes it to
workdir/summary.md and the descendants' curves to workdir/comparison.png.
Each run is also runnable alone with its recipe file (teacher.py,
tleg_aux.py, descendant.py).
"""

import ml_collections

from configs import common, descendant, teacher, tleg_aux

DEPTHS = (2, 6)


def get_config(arg: str = 'mnist5k'):
  common.check_preset(arg)
  runs = ml_collections.ConfigDict()
  runs.teacher = teacher.get_config(arg)
  runs.tleg = tleg_aux.get_config(arg)
  runs.tleg.teacher.dir = '{workdir}/teacher/export'
  for depth in DEPTHS:
    for method in ('tleg', 'scratch'):
      run = descendant.get_config(arg)
      run.model.depth = depth
      run.init.method = method
      run.init.learngene_dir = '{workdir}/tleg/export' if method != 'scratch' else ''
      runs[f'depth{depth}_{method}'] = run
  config = ml_collections.ConfigDict()
  config.kind = 'recipe'
  config.title = 'lgjax demo: TLEG descendants vs scratch on MNIST-5k digits 5-9'
  config.early_step = 25
  config.runs = runs
  config.order = ('teacher', 'tleg', *(f'depth{d}_{m}' for d in DEPTHS for m in ('tleg', 'scratch')))
  return config
