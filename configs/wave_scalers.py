r"""WAVE stage 2: weight scalers for one target size, the templates frozen.

  python train.py --config=configs/wave_scalers.py:mnist5k --workdir=/tmp/wave_w32d4 \
      --config.teacher.dir=/tmp/teacher/export \
      --config.learngene.templates_from=/tmp/wave/export \
      --config.model.width=32 --config.model.num_heads=2 --config.model.mlp_dim=128 \
      --config.model.depth=4

The model is the target size: any depth, any multiple of the templates'
width (heads and mlp_dim scaling with it). Its scalers start selected from
the stage-1 learngene's and train on a little source data, distilled from
the teacher; the templates are kept as they are (the method's `frozen`).
Exports a WAVE learngene for this size, which descendant.py expands
(init.method='wave').
"""

from configs import common


def get_config(arg: str = 'mnist5k'):
  preset = common.check_preset(arg, sized=True)
  if preset == 'mnist5k':
    config = common.base(preset, kind='aux', batch_size=128, epochs=6.4, lr=4e-2)
    config.model = common.model(preset, depth=6)
  else:
    config = common.base(preset, kind='aux', batch_size=1024, epochs=1, lr=5e-3)
    config.model = common.model(preset, depth=12, size=common.size(arg, 'S'))
  config.dataset = common.dataset(preset, 'source')
  config.loss.alpha = 1.0
  config.loss.label_smoothing = 0.0
  config.learngene = dict(method='wave', templates_from='')  # the stage-1 export
  return common.runlocal(config, arg)
