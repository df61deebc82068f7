r"""A descendant ViT on the downstream data, initialized from a learngene.

  python train.py --config=configs/descendant.py:mnist5k --workdir=/tmp/desc \
      --config.init.method=tleg --config.init.learngene_dir=/tmp/tleg/export \
      --config.model.depth=4

init.method: any registered learngene method (lgjax.learngene.METHODS), or
'scratch'. 'tleg' | 'sws' expand the learngene to model.depth (SWS splits
it over stages by init.stage_depths, or sws.split_depth when empty);
'condense' stacks model.depth - k fresh blocks at init.placement 'below' |
'above' on the learngene layers. The learngene is read from
init.learngene_dir, or, for methods that take a trained ViT as it is
(condense), made here from init.source (any checkpoint file or directory;
condense inherits its blocks init.layers). Params matching an init.reinit regex (default: the head, since
the downstream classes are new) are freshly initialized. The paper trains
descendants 35-40 epochs with CE, lr 5e-4, no warmup, drop path 0.1.
"""

import ml_collections

from configs import common


def get_config(arg: str = 'mnist5k'):
  preset = common.check_preset(arg, sized=True)
  if preset == 'mnist5k':
    config = common.base(preset, kind='descendant', batch_size=64,
                         epochs=9.6, lr=8e-3)
    config.eval_every = 25  # a learngene acts in the first ~100 steps
    config.model = common.model(preset, depth=4)
  else:
    config = common.base(preset, kind='descendant', batch_size=1024,
                         epochs=40, lr=5e-4)
    config.model = common.model(preset, depth=12, size=common.size(arg, 'S'), drop_path=0.1)
  config.dataset = common.dataset(preset, 'downstream')
  config.init = ml_collections.ConfigDict(dict(
      method='tleg', learngene_dir='', stage_depths=(), placement='below', source='',
      layers=(), reinit=('^head/',)))  # tuples: settable from the command line, e.g. --config.init.layers='(4, 5)'
  return common.runlocal(config, arg)
