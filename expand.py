r"""Expands a saved learngene into a descendant ViT checkpoint.

  python expand.py --learngene=DIR --method=tleg --depth=8 --out=DIR
  python expand.py --learngene=DIR --method=sws --stage_depths=3,3,2 --out=DIR
  python expand.py --learngene=POOL_DIR --method=pool --spec=0,3,2,3 --out=DIR
  python expand.py --learngene=DIR --method=condense --num_random=4 --placement=below \
      [--num_classes=10 --seed=0] --out=DIR

Writes DIR/params (Orbax) and DIR/model_config.json, so that
`ViT(**config).apply({'params': params}, x)` runs after
`lgjax.checkpoint.load_params(DIR)` (a pool spec writes stitched_config.json
instead: `module, params = lgjax.checkpoint.load_model(DIR)`); `--format=npz` also writes
DIR/params.npz in big_vision's flat '/'-keyed layout.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging

from lgjax import checkpoint
from lgjax import tree as tree_lib
from lgjax.learngene import METHODS, condense, pool

_LEARNGENE = flags.DEFINE_string('learngene', None, 'Learngene directory (learngene/ + learngene.json).')
_METHOD = flags.DEFINE_enum('method', None, sorted(METHODS), 'Learngene method; must match learngene.json.')
_DEPTH = flags.DEFINE_integer('depth', None, 'Descendant depth (tleg).')
_STAGE_DEPTHS = flags.DEFINE_list('stage_depths', None, 'Blocks per stage, e.g. 3,3,2,2,2 (sws).')
_NUM_RANDOM = flags.DEFINE_integer('num_random', None, 'Fresh blocks stacked on the layers (condense).')
_PLACEMENT = flags.DEFINE_enum('placement', 'below', ['below', 'above'], 'Where fresh blocks go (condense).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', None, 'A new head with this many classes (condense).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of freshly initialized parts (condense).')
_SPEC = flags.DEFINE_list('spec', None, 'front_instance,j,end_instance,k of a stitched model (pool).')
_OUT = flags.DEFINE_string('out', None, 'Output directory for the descendant checkpoint.')
_FORMAT = flags.DEFINE_enum('format', 'orbax', ['orbax', 'npz', 'safetensors'],
                            'npz / safetensors also write params.npz (big_vision) / '
                            'params.safetensors (timm) beside the Orbax checkpoint.')
_SCAN = flags.DEFINE_bool('scan', False, 'Write the scanned (stacked-blocks) layout.')
flags.mark_flags_as_required(['learngene', 'method', 'out'])


def expand_args(method: str, depth: int | None, stage_depths: list[str] | None) -> object:
  """The method's second expand argument, from the flags, with the flag named on error."""
  if method == 'pool':
    if not _SPEC.value or depth is not None or stage_depths:
      raise app.UsageError('--method=pool needs --spec=front,j,end,k (and no --depth or --stage_depths).')
    try:
      return tuple(int(v) for v in _SPEC.value)
    except ValueError:
      raise app.UsageError(f'--spec must be four integers, got {",".join(_SPEC.value)!r}.') from None
  if method == 'condense':
    if _NUM_RANDOM.value is None or depth is not None or stage_depths:
      raise app.UsageError('--method=condense needs --num_random (and no --depth or --stage_depths).')
    return _NUM_RANDOM.value
  if method == 'tleg':
    if depth is None or stage_depths:
      raise app.UsageError('--method=tleg needs --depth (and no --stage_depths).')
    return depth
  if not stage_depths or depth is not None:
    raise app.UsageError('--method=sws needs --stage_depths (and no --depth).')
  try:
    return [int(d) for d in stage_depths]
  except ValueError:
    raise app.UsageError(f'--stage_depths must be integers, got {",".join(stage_depths)!r}.') from None


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # Orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    expand()
  except (app.UsageError, ValueError, FileNotFoundError) as e:  # the message alone, first and only
    sys.exit(f'expand.py: {e} (python expand.py --helpshort lists the flags.)')


def expand():
  arg = expand_args(_METHOD.value, _DEPTH.value, _STAGE_DEPTHS.value)
  learngene, meta = checkpoint.load_learngene(_LEARNGENE.value)
  if meta['method'] != _METHOD.value:
    raise app.UsageError(f'--method={_METHOD.value} but {_LEARNGENE.value!r} holds a '
                         f'{meta["method"]} learngene.')
  if _METHOD.value == 'pool':
    configs = meta['instance_configs']
    module, params = pool.assemble(learngene, configs, arg)
    checkpoint.save_stitched(_OUT.value, module, params)
    print(f'Stitched model {pool.spec_name(pool.check_spec(configs, arg))}: '
          f'{tree_lib.num_params(params):,} params ({_LEARNGENE.value}).')
    print(f'Wrote {_OUT.value}')
    return
  config = {**meta['model_config'], 'scan': _SCAN.value}
  if _METHOD.value == 'condense':
    params = condense.expand(learngene, arg, rng=jax.random.key(_SEED.value), placement=_PLACEMENT.value,
                             num_classes=_NUM_CLASSES.value, scan=_SCAN.value)
    config = {**config, **condense.descendant_config(learngene, arg, _NUM_CLASSES.value), 'scan': _SCAN.value}
  else:
    params = METHODS[_METHOD.value].expand(learngene, arg, scan=_SCAN.value)
    config['depth'] = arg if _METHOD.value == 'tleg' else sum(arg)
  depth = config['depth']
  checkpoint.save_params(_OUT.value, params, config)
  written = [os.path.join(_OUT.value, checkpoint.PARAMS), os.path.join(_OUT.value, checkpoint.MODEL_CONFIG)]
  if _FORMAT.value != 'orbax':
    written.append(os.path.join(_OUT.value, f'params.{_FORMAT.value}'))
    checkpoint.save_params(written[-1], params, config, format=_FORMAT.value)
  print(f'Descendant: depth {depth}, width {config["width"]}, '
        f'{tree_lib.num_params(params):,} params ({_METHOD.value} from {_LEARNGENE.value}).')
  for path in written:
    print(f'Wrote {path}')


if __name__ == '__main__':
  app.run(main)
