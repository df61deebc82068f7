r"""WAVE stage 1: train weight templates through a Kronecker-constrained auxiliary model.

  python train.py --config=configs/wave_aux.py:mnist5k --workdir=/tmp/wave \
      --config.teacher.dir=/tmp/teacher/export

Every param of the auxiliary ViT is sum_n S_n (x) T_n (lgjax.learngene.wave):
learngene.num_templates templates T_n of a learngene.template_width-wide ViT,
shared across layers, and the aux model's own scalers S_n, all distilled
from the teacher (pure soft KD, as TLEG's auxiliary model). Exports
workdir/export/, a WAVE learngene directory; configs/wave_scalers.py then
fits scalers for each target size with these templates frozen.
"""

from configs import common


def get_config(arg: str = 'mnist5k'):
  preset = common.check_preset(arg, sized=True)
  if preset == 'mnist5k':
    config = common.base(preset, kind='aux', batch_size=128, epochs=51.2, lr=4e-3)
    config.model = common.model(preset, depth=6)
    template_width = 16  # width 64 = 4 templates wide; widths 16, 32, 48, 64, ... build
  else:
    config = common.base(preset, kind='aux', batch_size=1024, epochs=150, lr=5e-4, warmup_epochs=5)
    config.model = common.model(preset, depth=12, size=common.size(arg, 'S'), drop_path=0.1)
    template_width = 64  # DeiT-S (384) = 6 templates wide; Ti (192) and B (768) build too
  config.dataset = common.dataset(preset, 'source')
  config.loss.alpha = 1.0
  config.loss.label_smoothing = 0.0
  config.learngene = dict(method='wave', template_width=template_width, num_templates=16,
                          templates_from='')
  if common.is_runlocal(arg):  # width 32
    config.learngene.update(num_templates=4)
  return common.runlocal(config, arg)
