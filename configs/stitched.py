r"""Learngene Pool, step 2: train stitched models built from the pool.

  python train.py --config=configs/stitched.py:mnist5k --workdir=/tmp/stitched \
      --config.pool.dir=/tmp/pool/export [--config.stitch.specs='((0,2,2,2),)']

stitch.specs: empty for every spec that stitch.rule offers (one drawn per
step, as SN-Net), or a list of (front, j, end, k). stitch.rule: 'snnet'
(every ordered pair of instances, the end resuming at the same relative
depth) or 'pool' (the official Learngene Pool code: narrower front -> wider
end, neighbouring cuts |k - j| <= 1). Stitch layers start from least squares
on one random training batch (SN-Net).
Instances and stitch layers train together; at the end every spec is
evaluated into workdir/specs.md and specs.png (accuracy vs FLOPs), and the
trained pool with its stitches is exported to workdir/export/.
"""

from configs import common


def get_config(arg: str = 'mnist5k'):
  preset = common.check_preset(arg)
  if preset == 'mnist5k':
    config = common.base(preset, kind='stitched', batch_size=128,
                         epochs=5, lr=4e-3)
    config.model = common.model(preset, depth=4)
  else:
    config = common.base(preset, kind='stitched', batch_size=1024,
                         epochs=50, lr=5e-4,
                         warmup_epochs=5)
    config.model = common.model(preset, depth=6, size='S')
  config.dataset = common.dataset(preset, 'source')
  config.pool = dict(dir='')
  config.stitch = dict(specs=(), rule='snnet')
  # init.reinit: regexes of instance params to initialize fresh, e.g. ['^head/'] to
  # train stitched models on new classes (as a descendant's init.reinit).
  config.init = dict(reinit=())
  return common.runlocal(config, arg)
