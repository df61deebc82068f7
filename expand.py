r"""Expands a learngene (or selects from a trained ViT) into a descendant ViT checkpoint.

  python expand.py --learngene=DIR --method=tleg --depth=8 --out=DIR
  python expand.py --learngene=DIR --method=sws --stage_depths=3,3,2 --out=DIR
  python expand.py --learngene=DIR --method=condense --depth=6 --placement=below \
      [--num_classes=10 --seed=0] --out=DIR
  python expand.py --source=DIR_OR_FILE --method=condense --layers=4,5 --depth=6 --out=DIR
  python expand.py --learngene=POOL_DIR --spec=0,3,2,3 --out=DIR          # a stitched model

Any registered method (lgjax.learngene.METHODS) works the same way: the
descendant is the learngene's model config with the sizes given here
(--depth, --width, --num_heads, --mlp_dim, --num_classes) replaced, and the
method's own options are flags of the same names. A --num_classes other than
the learngene head's gives the descendant a fresh head (seeded by --seed). A
learngene comes from --learngene (a trained learngene directory) or, for methods
that take a trained ViT as it is, --source (anything load_params reads).

Writes DIR/params (Orbax) and DIR/model_config.json, so that
`ViT(**config).apply({'params': params}, x)` runs after
`lgjax.checkpoint.load_params(DIR)` (a pool spec writes stitched_config.json
instead: `module, params = lgjax.checkpoint.load_model(DIR)`); `--format=npz`
also writes DIR/params.npz in big_vision's flat '/'-keyed layout.
"""

from __future__ import annotations

import ast
import os
import sys

import jax
from absl import app, flags, logging

from lgjax import checkpoint
from lgjax.learngene import load_learngene
from lgjax import tree as tree_lib
from lgjax.learngene import METHODS, common, pool

_METHOD = flags.DEFINE_enum('method', None, sorted(METHODS), 'Learngene method; must match learngene.json.')
_LEARNGENE = flags.DEFINE_string('learngene', None, 'Learngene directory (learngene/ + learngene.json).')
_SOURCE = flags.DEFINE_string('source', None, 'A trained ViT (directory, .npz or .safetensors), for methods '
                              'that take one as it is.')
SIZES = ('depth', 'width', 'num_heads', 'mlp_dim', 'num_classes')
_SIZES = {name: flags.DEFINE_integer(name, None, f'Descendant {name} (default: the learngene\'s).') for name in SIZES}
_OPTIONS = {name: flags.DEFINE_string(name, None, f'Option of method(s) {", ".join(sorted(m.name for m in METHODS.values() if name in m.options))}: '
                                      'a value, or comma-separated values for a sequence.')
            for name in sorted({o for m in METHODS.values() for o in m.options})}
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of freshly initialized parts.')
_SPEC = flags.DEFINE_list('spec', None, 'front_instance,j,end_instance,k of a pool\'s stitched model.')
_OUT = flags.DEFINE_string('out', None, 'Output directory for the descendant checkpoint.')
_FORMAT = flags.DEFINE_enum('format', 'orbax', ['orbax', 'npz', 'safetensors'],
                            'npz / safetensors also write params.npz (big_vision) / '
                            'params.safetensors (timm) beside the Orbax checkpoint.')
_SCAN = flags.DEFINE_bool('scan', False, 'Write the scanned (stacked-blocks) layout.')
flags.mark_flags_as_required(['out'])


def parse_option(name: str, text: str):
  """'3' -> 3, '3,3,2' -> (3, 3, 2), 'below' -> 'below'."""
  values = []
  for part in text.split(','):
    try:
      values.append(ast.literal_eval(part.strip()))
    except (ValueError, SyntaxError):
      values.append(part.strip())
  return tuple(values) if ',' in text else values[0]


def method_options(method) -> dict:
  """The method's options from their flags; a flag of another method's option is an error."""
  given = {name: flag.value for name, flag in _OPTIONS.items() if flag.value is not None}
  foreign = sorted(set(given) - set(method.options))
  if foreign:
    raise app.UsageError(f'--{foreign[0]} is not an option of --method={method.name} '
                         f'(its options: {", ".join("--" + o for o in method.options) or "none"}).')
  return {name: parse_option(name, text) for name, text in given.items()}


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # Orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    if _SPEC.value:
      stitch()
    else:
      expand()
  except (app.UsageError, ValueError, FileNotFoundError) as e:  # the message alone, first and only
    sys.exit(f'expand.py: {e} (python expand.py --helpshort lists the flags.)')


def read_learngene(method, options: dict) -> tuple[object, dict, str]:
  """(learngene, its model config, where it came from), from --learngene or --source."""
  if bool(_LEARNGENE.value) == bool(_SOURCE.value):
    raise app.UsageError('give exactly one of --learngene (a learngene directory) and --source (a trained ViT).')
  if _SOURCE.value:
    if method.from_source is None:
      raise app.UsageError(f'--method={method.name} expands a trained learngene: give --learngene, not --source.')
    params, source_config = checkpoint.load_from('--source', _SOURCE.value, checkpoint.load_params)
    return method.from_source(params, source_config, **options), source_config, _SOURCE.value
  learngene, meta = checkpoint.load_from('--learngene', _LEARNGENE.value, load_learngene)
  if meta['method'] != method.name:
    raise app.UsageError(f'--method={method.name} but {_LEARNGENE.value!r} holds a {meta["method"]} learngene.')
  return learngene, meta['model_config'], _LEARNGENE.value


def expand():
  if not _METHOD.value:
    raise app.UsageError('--method is required (one of ' + ', '.join(sorted(METHODS)) + ').')
  method = METHODS[_METHOD.value]
  options = method_options(method)
  learngene, base_config, origin = read_learngene(method, options)
  sizes = {name: flag.value for name, flag in _SIZES.items() if flag.value is not None}
  if 'depth' not in sizes and method.implied_depth(**options):
    sizes['depth'] = method.implied_depth(**options)
  if 'width' in sizes and 'mlp_dim' not in sizes:
    sizes['mlp_dim'] = 4 * sizes['width']  # the ViT default, written out
  target = {**base_config, **sizes, 'scan': _SCAN.value}
  method.check(learngene, target)
  rng = jax.random.key(_SEED.value)
  params = method.expand(learngene, target, rng=rng, **options)
  fresh = params['head']['bias'].shape != (target['num_classes'],)
  if fresh:  # another task's classes: a new head, as training's init.reinit gives one
    params = {**params, 'head': common.fresh_head(rng, target)}
  checkpoint.save_params(_OUT.value, params, target)
  written = [os.path.join(_OUT.value, checkpoint.PARAMS), os.path.join(_OUT.value, checkpoint.MODEL_CONFIG)]
  if _FORMAT.value != 'orbax':
    written.append(os.path.join(_OUT.value, f'params.{_FORMAT.value}'))
    checkpoint.save_params(written[-1], params, target, format=_FORMAT.value)
  print(f'Descendant: depth {target["depth"]}, width {target["width"]}, '
        f'{tree_lib.num_params(params):,} params ({method.name} from {origin}'
        + (f'; a fresh head for {target["num_classes"]} classes' if fresh else '') + ').')
  for path in written:
    print(f'Wrote {path}')


def stitch():
  """--spec: a stitched model of a Learngene Pool."""
  if not _LEARNGENE.value:
    raise app.UsageError('--spec needs --learngene=POOL_DIR (a pool_distill or stitched run\'s export/).')
  try:
    spec = tuple(int(v) for v in _SPEC.value)
  except ValueError:
    raise app.UsageError(f'--spec must be four integers, got {",".join(_SPEC.value)!r}.') from None
  learngene, meta = checkpoint.load_from('--learngene', _LEARNGENE.value, load_learngene)
  if 'instance_configs' not in meta:
    raise app.UsageError(f'--spec stitches a pool, but {_LEARNGENE.value!r} holds a {meta["method"]} learngene.')
  configs = meta['instance_configs']
  module, params = pool.assemble(learngene, configs, spec)
  checkpoint.save_stitched(_OUT.value, module, params)
  print(f'Stitched model {pool.spec_name(pool.check_spec(configs, spec))}: '
        f'{tree_lib.num_params(params):,} params ({_LEARNGENE.value}).')
  print(f'Wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
