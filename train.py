r"""Trains any lgjax model: a ViT, a learngene's auxiliary model, a descendant,
or a recipe of such runs (configs/demo.py).

  python train.py --config=configs/teacher.py:mnist5k --workdir=/tmp/teacher \
      [--config.total_steps=100 --config.batch_size=64 ...] [--multihost]
  python train.py --config=configs/teacher.py:mnist5k --print_config   # the fields, values, meaning

Only parses flags; the run is lgjax.train.train_and_evaluate(config, workdir).
"""

import errno
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Recipe file: configs/NAME.py:PRESET.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the export go.')
_MULTIHOST = flags.DEFINE_bool('multihost', False,
                               'Call jax.distributed.initialize() (TPU pods, GPU clusters).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, where the cluster cannot be detected.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --coordinator_address.')
_PRINT_CONFIG = flags.DEFINE_bool('print_config', False,
                                   "Print the recipe's fields (value and meaning) and exit.")
flags.mark_flags_as_required(['config'])
flags.register_multi_flags_validator(['workdir', 'print_config'], lambda f: f['workdir'] or f['print_config'],
                                     message='--workdir is required (unless --print_config)')


def unloadable(error: OSError) -> str:
  """One line for a --config file that cannot be loaded, naming the recipes there are."""
  here = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
  recipes = sorted(f'configs/{n}' for n in os.listdir(here) if n.endswith('.py') and n not in ('__init__.py', 'common.py'))
  return f"train.py: --config: {str(error).strip().splitlines()[-1].strip()}; the recipes are {', '.join(recipes)}."


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, but a bad --config (a missing file, a bad preset) or --config.FIELD (a
  typo, a wrong type) ends in one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except OSError as e:  # a missing recipe file, met by a --config.FIELD override
    sys.exit(unloadable(e))
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e)
    if 'Error whilst parsing config file' in message:  # the recipe's get_config raised: keep its last line
      head, tail = message.split('Error whilst parsing config file', 1)
      message = head + tail.replace('\\n', '\n').strip().splitlines()[-1].split(': ', 1)[-1]
    while len(message) > 1 and message[0] == message[-1] and message[0] in '\'"':  # KeyError quotes its text
      message = message[1:-1]
    message = message.replace('\\n', ' ').replace('\n', ' ').replace("\\'", "'")
    if 'Did you mean' in message:
      message = 'unknown config field ' + message.replace("' Did", "'. Did")
    elif message.isidentifier():  # a field the recipe lacks, with no close name: name the whole flag
      flag = next((a.split('=')[0] for a in argv if a.startswith('--config.') and a.split('=')[0].endswith('.' + message)),
                  message)
      message = f"unknown config field {flag.removeprefix('--config.')!r}"
    sys.exit(f'train.py: {message} (--helpshort lists the flags, --print_config a recipe\'s fields).')


def main(argv):
  del argv
  try:
    _CONFIG.value.kind  # ml_collections reports a recipe file it cannot load on the first read
  except OSError as e:
    sys.exit(unloadable(e))
  if _PRINT_CONFIG.value:
    from configs import common
    print(common.describe(_CONFIG.value))
    return
  if not flags.FLAGS['verbosity'].present:  # Orbax logs every save at INFO; the bar says enough
    logging.set_verbosity(logging.WARNING)
  import jax  # after flags, so --multihost can initialize before any device use
  if _MULTIHOST.value or _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from lgjax.train import loop, recipe, train_and_evaluate
  logging.info('JAX process %d of %d, %d devices.', jax.process_index(), jax.process_count(),
               jax.device_count())
  try:  # what is wrong with the config is one line too, said before any work
    if _CONFIG.value.kind == 'recipe':
      recipe.check_recipe(_CONFIG.value, _WORKDIR.value)
    else:
      loop.check_config(_CONFIG.value)
  except ValueError as e:
    sys.exit(f'train.py: {e}')
  try:
    if _CONFIG.value.kind == 'recipe':
      recipe.run_recipe(_CONFIG.value, _WORKDIR.value)
      return
    metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (MemoryError, FileNotFoundError) as e:  # a batch too big for the devices, a wrong path: one
    sys.exit(f'train.py: {e}')                   # line naming the fields to change, not a traceback
  except OSError as e:  # so is a full disk
    if e.errno != errno.ENOSPC:
      raise
    sys.exit(f'train.py: {e}')
  if jax.process_index() == 0:
    print('Final: ' + ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                                for k, v in sorted(metrics.items())))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
