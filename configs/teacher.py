r"""A plain ViT: the teacher / ancestry on the source data, or a scratch baseline.

  python train.py --config=configs/teacher.py:mnist5k --workdir=/tmp/teacher

mnist5k: depth-6 width-64 ViT on digits 0-4. cifar100 / imagenet2012: DeiT-B
('imagenet2012,L': ViT-L/16, ',H': ViT-H/14, the larger ancestry models)
with DeiT's recipe (300 epochs, batch 1024, lr 5e-4·batch/512, 5 warmup
epochs, weight decay 0.05, label smoothing 0.1, drop path 0.1).
"""

from configs import common


def get_config(arg: str = 'mnist5k'):
  preset = common.check_preset(arg, sized=True)
  if preset == 'mnist5k':
    config = common.base(preset, kind='model', batch_size=128,
                         epochs=51.2, lr=4e-3)
    config.model = common.model(preset, depth=6)
  else:
    config = common.base(preset, kind='model', batch_size=1024,
                         epochs=300, lr=5e-4,
                         warmup_epochs=5)
    config.model = common.model(preset, depth=None, size=common.size(arg, 'B'), drop_path=0.1)
  config.dataset = common.dataset(preset, 'source')
  return common.runlocal(config, arg)
