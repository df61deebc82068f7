r"""Learngene Pool, step 1: distill one teacher into K small instances.

  python train.py --config=configs/pool_distill.py:mnist5k --workdir=/tmp/pool \
      --config.teacher.dir=/tmp/teacher/export

All instances train in one jitted step sharing the teacher's forward pass.
Loss per instance: (1-α)·CE + α·(soft KD + hidden-state MSE + attention-output
MSE through a learned teacher->instance width map), α = 0.9 (CE weight 0.1) as the paper;
pool.layer_map picks the teacher layer that supervises each instance layer
('uniform' or a list); pool.supervise = 'every' supervises the states of
every instance layer, 'last' only the last block's (the official code's
recipe). ImageNet preset: DeiT-Ti/S/B widths, 6 blocks each.
Exports workdir/export/ as a pool learngene directory.
"""

from configs import common


def get_config(arg: str = 'mnist5k'):
  preset = common.check_preset(arg)
  if preset == 'mnist5k':
    config = common.base(preset, kind='pool_distill', batch_size=128,
                         epochs=15, lr=8e-3,
                         warmup_epochs=1)
    config.model = common.model(preset, depth=4)
    widths = [(32, 2, 64), (48, 3, 96), (64, 4, 128)]
    depth = 4
  else:
    config = common.base(preset, kind='pool_distill', batch_size=1024,
                         epochs=100, lr=5e-4,
                         warmup_epochs=5)
    config.model = common.model(preset, depth=6, size='S')
    widths = [common.SIZES[s][:3] for s in ('Ti', 'S', 'B')]
    depth = 6
  if common.is_runlocal(arg):
    widths, depth = [(16, 2, 32), (32, 2, 64)], 2
  config.dataset = common.dataset(preset, 'source')
  config.pool = dict(depth=depth, layer_map='uniform', supervise='every',
                     instances=tuple(dict(width=w, num_heads=h, mlp_dim=m) for w, h, m in widths))
  config.loss.alpha = 0.9  # the distillation terms' weight, as in every kind (1 - α weighs CE)
  config.loss.label_smoothing = 0.0
  return common.runlocal(config, arg)
