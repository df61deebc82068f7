r"""TLEG: train a learngene (base, slope) through its auxiliary model.

  python train.py --config=configs/tleg_aux.py:mnist5k --workdir=/tmp/tleg \
      --config.teacher.dir=/tmp/teacher/export

The auxiliary ViT's blocks are tleg.expand(learngene, model.depth), computed
inside the loss; the paper distills (pure soft KD, α = 1, τ = 1) from a
teacher into a 12-layer DeiT-S aux model with AdamW lr 5e-4·batch/512,
weight decay 0.05, cosine, 5 warmup epochs. Exports workdir/export/ as a
learngene directory that expand.py and descendant.py read.
"""

from configs import common


def get_config(arg: str = 'mnist5k'):
  preset = common.check_preset(arg, sized=True)
  if preset == 'mnist5k':
    config = common.base(preset, kind='aux', batch_size=128,
                         epochs=51.2, lr=4e-3)
    config.model = common.model(preset, depth=6)
  else:
    config = common.base(preset, kind='aux', batch_size=1024,
                         epochs=150, lr=5e-4,
                         warmup_epochs=5)
    config.model = common.model(preset, depth=12, size=common.size(arg, 'S'), drop_path=0.1)
  config.dataset = common.dataset(preset, 'source')
  config.loss.alpha = 1.0  # pure soft distillation, as the paper
  config.loss.label_smoothing = 0.0
  # learngene.fit_from: start the learngene from tleg.fit of an existing ViT (any
  # checkpoint load_params reads) instead of the paper's random init.
  config.learngene = dict(method='tleg', fit_from='')
  return common.runlocal(config, arg)
