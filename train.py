r"""Trains any lgjax model: a ViT, a learngene's auxiliary model, a descendant.

  python train.py --config=configs/teacher.py:mnist5k --workdir=/tmp/teacher \
      [--config.total_steps=100 --config.batch_size=64 ...] [--multihost]

Only parses flags; the run is lgjax.train.train_and_evaluate(config, workdir).
"""

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
flags.mark_flags_as_required(['config', 'workdir'])


# Orbax and grain log every save at INFO; users see the progress bar instead.
flags.FLAGS.set_default('verbosity', logging.WARNING)


def main(argv):
  del argv
  import jax  # after flags, so --multihost can initialize before any device use
  if _MULTIHOST.value or _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from lgjax.train import train_and_evaluate
  logging.info('JAX process %d of %d, %d devices.', jax.process_index(), jax.process_count(),
               jax.device_count())
  metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print('Final: ' + ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                                for k, v in sorted(metrics.items())))


if __name__ == '__main__':
  app.run(main)
