r"""SWS: train stage-shared weights through the auxiliary model.

  python train.py --config=configs/sws_aux.py:mnist5k --workdir=/tmp/sws \
      --config.teacher.dir=/tmp/teacher/export

The auxiliary ViT is stage s repeated learngene.stage_depths[s] times (the
paper: 16 layers as [3, 3, 4, 3, 3], distilled from a teacher). Exports
workdir/export/ as an SWS learngene directory.
"""

from configs import common
from lgjax.learngene import sws


def get_config(arg: str = 'mnist5k'):
  preset = common.check_preset(arg, sized=True)
  if preset == 'mnist5k':
    config = common.base(preset, kind='aux', batch_size=128,
                         epochs=51.2, lr=4e-3)
    stage_depths = (2, 2, 2)
    config.model = common.model(preset, depth=sum(stage_depths))
  else:
    config = common.base(preset, kind='aux', batch_size=1024,
                         epochs=150, lr=5e-4,
                         warmup_epochs=5)
    stage_depths = sws.AUX_STAGE_DEPTHS
    config.model = common.model(preset, depth=sum(stage_depths), size=common.size(arg, 'S'), drop_path=0.1)
  if common.is_runlocal(arg):  # depth 2
    stage_depths = (1, 1)
  config.learngene = dict(method='sws', stage_depths=tuple(stage_depths))
  config.dataset = common.dataset(preset, 'source')
  config.loss.alpha = 1.0
  config.loss.label_smoothing = 0.0
  return common.runlocal(config, arg)
