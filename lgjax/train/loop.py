"""train_and_evaluate(config, workdir): the whole run, as a few small functions."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lgjax import checkpoint, data
from lgjax import tree as tree_lib
from lgjax.models import ViT, ViTConfig, flops
from lgjax.train import checkpoints, kinds, optim, parallel, reporting, step

COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')
EXPORT_DIR = 'export'


def _positive_int(field: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{field} must be an integer >= 1, got {value!r}.')


def check_config(config: Any) -> None:
  """Everything that can be checked before any work, each error naming its field."""
  for field in ('batch_size', 'checkpoint_every', 'eval_every', 'log_every', 'keep_checkpoints',
                'grad_accum_steps'):
    _positive_int(field, config[field])
  if config.get('total_steps') is not None:
    _positive_int('total_steps', config.total_steps)
  elif not (isinstance(config.get('total_epochs'), (int, float)) and config.total_epochs > 0):
    raise ValueError(f'total_epochs must be > 0 (or set total_steps), got {config.get("total_epochs")!r}.')
  if config.parallelism not in parallel.BACKENDS:
    raise ValueError(f'parallelism must be one of {parallel.BACKENDS}, got {config.parallelism!r}.')
  parallel.check_sharding(config.get('sharding') or {}, config.parallelism)
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype must be one of {COMPUTE_DTYPES}, got {config.compute_dtype!r}.')
  parallel.check_batch_size(config.batch_size, config.grad_accum_steps)
  if not 0.0 <= config.loss.alpha <= 1.0:
    raise ValueError(f'loss.alpha (distillation weight) must be in [0, 1], got {config.loss.alpha!r}.')
  if (config.loss.alpha > 0 or config.kind == 'pool_distill') and not config.teacher.get('dir'):
    raise ValueError(f'loss.alpha={config.loss.alpha} distills from a teacher: set teacher.dir to a '
                     f'params directory (e.g. a teacher run\'s {EXPORT_DIR}/).')
  if config.loss.temperature <= 0:
    raise ValueError(f'loss.temperature must be > 0, got {config.loss.temperature!r}.')
  _check_numbers(config)
  kinds.check_fields(config)
  device = jax.devices()[0]
  if config.model.get('attention_impl') == 'cudnn' and device.platform != 'gpu':
    raise ValueError(f"model.attention_impl='cudnn' is cuDNN's fused attention, for NVIDIA GPUs, but this run's "
                     f"devices are {device.device_kind!r}: set model.attention_impl=None (XLA's attention).")
  classes = data.pipeline.num_classes(config.dataset)
  head = config.model.get('num_classes') or config.dataset.get('num_classes')
  if classes and (head or 0) < classes:
    origin = '' if config.model.get('num_classes') else ' (from dataset.num_classes)'
    raise ValueError(f'model.num_classes={head}{origin} is smaller than the {classes} '
                     f'classes of dataset {config.dataset.name!r} ({config.dataset.get("classes", "all")}).')
  if config.dataset.image_size % _patch(config.model.patch_size):
    raise ValueError(f'dataset.image_size={config.dataset.image_size} must be a multiple of '
                     f'model.patch_size={config.model.patch_size}.')


def _check_numbers(config: Any) -> None:
  """Ranges of the numeric and named fields that would otherwise fail late, or never."""
  o, workers, traced = config.optimizer, config.get('input_workers', 0), config.get('profile_steps', 0)
  name, classes = config.dataset.name, config.dataset.get('classes', 'all')
  groups = data.pipeline.class_groups(name)
  checks = [
      ('seed', config.seed, isinstance(config.seed, int) and config.seed >= 0, 'an integer >= 0'),
      ('input_threads', config.input_threads,
       isinstance(config.input_threads, int) and config.input_threads >= 0, 'an integer >= 0'),
      ('input_workers', workers, isinstance(workers, int) and workers >= 0, 'an integer >= 0'),
      ('profile_steps', traced, isinstance(traced, int) and traced >= 0, 'an integer >= 0'),
      ('optimizer.lr', o.lr, o.lr >= 0, '>= 0'),
      ('optimizer.min_lr', o.min_lr, 0 <= o.min_lr, '>= 0'),
      ('optimizer.warmup_steps', o.get('warmup_steps'),
       o.get('warmup_steps') is None or (isinstance(o.warmup_steps, int) and o.warmup_steps >= 0), 'an integer >= 0'),
      ('optimizer.warmup_epochs', o.get('warmup_epochs', 0.0), o.get('warmup_epochs', 0.0) >= 0, '>= 0'),
      ('optimizer.weight_decay', o.weight_decay, o.weight_decay >= 0, '>= 0'),
      ('optimizer.b1', o.b1, 0 <= o.b1 < 1, 'in [0, 1)'),
      ('optimizer.b2', o.b2, 0 <= o.b2 < 1, 'in [0, 1)'),
      ('optimizer.clip_norm', o.clip_norm, o.clip_norm >= 0, '>= 0 (0: no clipping)'),
      ('loss.label_smoothing', config.loss.label_smoothing, 0 <= config.loss.label_smoothing < 1, 'in [0, 1)'),
      ('dataset.image_size', config.dataset.image_size,
       isinstance(config.dataset.image_size, int) and config.dataset.image_size >= 1, 'an integer >= 1'),
      ('dataset.train_fraction', config.dataset.get('train_fraction', 1.0),
       0 < config.dataset.get('train_fraction', 1.0) <= 1, 'in (0, 1]'),
      ('dataset.augment', config.dataset.augment, config.dataset.augment in data.pipeline.AUGMENTS,
       f'one of {data.pipeline.AUGMENTS}'),
      ('dataset.classes', classes, not groups or classes in groups, f'one of {groups} for dataset {name!r}'),
  ]
  patch = config.model.patch_size
  patches = (patch,) if isinstance(patch, int) else tuple(patch)
  checks.append(('model.patch_size', patch, all(isinstance(p, int) and p >= 1 for p in patches),
                 'an integer >= 1 (or a pair of them)'))
  for field, value, ok, expected in checks:
    if not ok:
      raise ValueError(f'{field} must be {expected}, got {value!r}.')


def resolve(config: Any) -> Any:
  """A copy of `config` with the fields left to run time set. total_steps and
  optimizer.warmup_steps: given in steps they stay, given in epochs they become
  round(epochs · training examples / batch_size), so a changed batch size keeps the
  epochs (big_vision's rule). model.num_classes: the dataset's, unless set."""
  config = ml_collections.ConfigDict(config.to_dict())
  if not config.model.get('num_classes'):
    config.model.num_classes = config.dataset.get('num_classes')
  examples = None

  def steps(epochs: float) -> int:
    nonlocal examples
    if examples is None:
      examples = len(data.train_source(config.dataset))
    return max(1, round(epochs * examples / config.batch_size)) if epochs else 0

  if config.get('total_steps') is None:
    config.total_steps = steps(config.total_epochs)
  if config.optimizer.get('warmup_steps') is None:
    config.optimizer.warmup_steps = steps(config.optimizer.get('warmup_epochs', 0.0))
  return config


def _patch(patch_size) -> int:
  return patch_size if isinstance(patch_size, int) else patch_size[0]


def load_teacher(config: Any, compute_dtype: str) -> tuple[ViT | None, Any]:
  """(teacher module, params) from teacher.dir, or (None, None) without distillation."""
  if config.loss.alpha == 0 and config.kind != 'pool_distill':
    return None, None
  params, teacher_cfg = checkpoint.load_from('teacher.dir', config.teacher.dir, checkpoint.load_params)
  if teacher_cfg.get('num_classes') != config.model.num_classes:
    raise ValueError(f'teacher.dir {config.teacher.dir!r} has num_classes={teacher_cfg.get("num_classes")} '
                     f'but model.num_classes={config.model.num_classes}; distillation needs the same classes.')
  return ViT(**{**teacher_cfg, 'dtype': compute_dtype}), params


def step_flops(model_cfg: Any, teacher: ViT | None, image_shape) -> int:
  """Model FLOPs of one image in a train step: the model's forward and backward (3x the
  forward) and, when distilling, the teacher's forward."""
  teacher_flops = flops.forward_flops(ViTConfig.of(teacher), image_shape) if teacher else 0
  return 3 * flops.forward_flops(model_cfg, image_shape) + teacher_flops


@contextlib.contextmanager
def preemption_guard():
  """Yields a function step -> why to save and stop now, or None: 'Preempted' on SIGTERM
  (one process) or at JAX's preemption sync point (all processes agree); 'Interrupted' on
  a first Ctrl-C in a one-process run, whose second Ctrl-C aborts as Python's does."""
  got: list[str] = []
  previous = {}

  def interrupted(*_):  # os.write: a print here could land inside another print and raise
    os.write(2, b'Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again aborts).\n')
    got.append('Interrupted')
    signal.signal(signal.SIGINT, signal.default_int_handler)

  handlers = {signal.SIGTERM: lambda *_: got.append('Preempted')}
  if jax.process_count() == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    handlers[signal.SIGINT] = interrupted  # not where SIGINT is ignored (a background job) or taken
  try:
    for number, handler in handlers.items():
      previous[number] = signal.signal(number, handler)
  except ValueError:  # not the main thread: no signal handling
    pass

  def stop(step_num: int) -> str | None:
    if jax.process_count() > 1:
      return 'Preempted' if multihost_utils.reached_preemption_sync_point(step_num) else None
    return got[0] if got else None

  try:
    yield stop
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)


def evaluate(config, backend, eval_step, state) -> dict[str, float]:
  """Accuracy and loss over the whole eval split (padding masked out):
  eval_accuracy / eval_loss, with a suffix for each extra prediction."""
  totals: dict[str, float] = {}
  # Each batch's sums are read back as it ends; the next batches are read and preprocessed
  # meanwhile by the input threads or workers. (Summing on the devices instead, with eager
  # adds between pmap eval steps, deadlocked XLA:CPU's psum rendezvous on 2 loaded cores.)
  batches = data.eval_batches(config.dataset, local_batch_size=config.batch_size // jax.process_count(),
                              num_threads=config.input_threads, num_workers=config.get('input_workers', 0))
  for batch in batches:
    sums = backend.metrics(eval_step(state, backend.place_batch(batch)))
    totals = {k: totals.get(k, 0.0) + v for k, v in sums.items()}
  count = max(totals.pop('count'), 1.0)
  rename = lambda k: 'eval_accuracy' + k[len('correct'):] if k.startswith('correct') else 'eval_' + k
  return {rename(k): v / count for k, v in totals.items()}


def _check_finite(metrics: dict[str, float], step_num: int, ckpt: checkpoints.Checkpointer) -> None:
  """Stops a diverged run before it saves: the loss, the gradient norm and the updated
  state (params, optimizer moments) must be finite. Pops the state flag from `metrics`."""
  state_finite = metrics.pop(step.STATE_FINITE)
  bad = [f'{k} is {metrics[k]}' for k in ('loss', 'grad_norm') if not math.isfinite(metrics[k])]
  if not state_finite:
    bad.append('the updated params or optimizer state hold NaN/Inf')
  if bad:
    raise FloatingPointError(
        f'{"; ".join(bad)} at step {step_num}: stopping without saving it. The last good checkpoint '
        f'is kept in {ckpt.directory} (steps {ckpt.manager.all_steps()}).')


def _say(message: str) -> None:
  logging.info(message)
  if jax.process_index() == 0:
    print(message, flush=True)


def config_changes(config: Any, workdir: str) -> list[str]:
  """'/'-names of the fields where `config` differs from the run's saved config.json."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    old = dict(tree_lib.flatten_with_names(json.load(f)))
  new = dict(tree_lib.flatten_with_names(json.loads(config.to_json_best_effort())))
  return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _save_config(config: Any, workdir: str) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def state_init(init: Callable, optimizer: Any, backend: Any, init_rng: jax.Array,
               seed_rng: jax.Array) -> tuple[Callable, Any]:
  """A jitted (init_rng, seed_rng) -> TrainState that builds `init`'s trainable tree and its
  optimizer state directly in the backend's shardings, and those shardings. Under FSDP each
  device draws and keeps only its shards (random bits are partitionable), so no device ever
  holds the whole state, and no unsharded copy outlives the start of a run."""
  make = lambda rng, seed: step.init_state(init(rng), optimizer, seed)
  shardings = backend.shardings(jax.eval_shape(make, init_rng, seed_rng))
  return jax.jit(make, out_shardings=shardings), shardings


def out_of_memory(config: Any, error: Exception) -> MemoryError:
  """XLA's RESOURCE_EXHAUSTED as the fields that trade memory for time, with its first line."""
  fsdp = (config.get('sharding') or {}).get('fsdp', 1)
  changes = [f'lower batch_size={config.batch_size} (or raise grad_accum_steps={config.grad_accum_steps}: '
             'the same batch in parts)']
  if not config.model.get('remat_policy'):
    changes.append("set model.remat_policy='nothing_saveable' (recompute activations; with model.scan=True, "
                   'one block at a time)')
  if fsdp == 1 and jax.device_count() > 1:
    changes.append(f'shard params and optimizer state over the {jax.device_count()} devices with sharding.fsdp=-1')
  if config.compute_dtype == 'float32':
    changes.append("compute in compute_dtype='bfloat16'")
  first = str(error).strip().splitlines()[0][:300]
  return MemoryError(f'The devices ran out of memory ({first}). To fit, {"; or ".join(changes)}. '
                     'Checkpoints already saved are kept: the same command resumes from the newest.')


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
  """Trains `config.kind` for config.total_steps, resuming from workdir, and exports
  the result to workdir/export/. Returns the final metrics. Raises MemoryError, saying
  which fields to change, when XLA runs out of device memory."""
  check_config(config)
  config = resolve(config)
  try:
    return _train(config, workdir)
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    raise out_of_memory(config, e) from e


def _train(config: Any, workdir: str) -> dict[str, float]:
  """train_and_evaluate's run, on the resolved config."""
  backend = parallel.make_backend(config.parallelism, config.get('sharding'))
  teacher, teacher_params = load_teacher(config, config.compute_dtype)
  image_shape = data.image_shape(config.dataset)
  kind = kinds.make_kind(config, image_shape)
  model_cfg = kinds.model_config(config)
  model = ViT(**{**model_cfg, 'dtype': config.compute_dtype})
  schedule = optim.learning_rate(config.optimizer, config.batch_size, config.total_steps)
  frozen = tuple(config.optimizer.get('frozen', ())) + kind.frozen
  optimizer = optim.make_optimizer(config.optimizer, config.batch_size, config.total_steps, frozen)
  os.makedirs(workdir, exist_ok=True)  # after reading the teacher and learngene: a wrong path writes nothing
  changes = config_changes(config, workdir)

  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  optim.check_frozen(frozen, jax.eval_shape(kind.init, init_rng))
  create, shardings = state_init(kind.init, optimizer, backend, init_rng, train_rng)
  state = create(init_rng, train_rng)

  local_batch = config.batch_size // jax.process_count()
  ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    restored = ckpt.restore_latest(checkpoints.abstract(state, shardings))
  except checkpoints.StructureMismatch as e:
    ckpt.close()
    raise ValueError(
        f'{workdir} holds checkpoints of another model: {e}. Config fields changed since the run '
        f'started: {changes or "none recorded"}. Use a new --workdir (or move {ckpt.directory} '
        f'away) to start this model; nothing was changed in {workdir}.') from None
  start = 0
  if restored is None and ckpt.damaged:
    _say(f'Every checkpoint in {ckpt.directory} was damaged (steps {ckpt.damaged}, set aside as '
         f'damaged-STEP); starting from step 0 as a fresh run would.')
  if restored is not None:
    state, start = restored
    _say(f'Resuming from checkpoint step {start} in {ckpt.directory}.')
    if changes:
      _say(f'Note: the config differs from the one this run was started with in {changes}.')
  # A finished run only reports: it writes nothing that exists (read-only storage works).
  finished = start >= config.total_steps
  if not finished:  # after the restore check: a refused run leaves the workdir as it was
    _save_config(config, workdir)

  example_loss = (kind.example_loss(teacher) if kind.example_loss
                  else step.classification_loss(model, config.loss, teacher))
  predict = kind.predict or (lambda p, x: {'': model.apply({'params': kind.to_params(p)}, x)})
  flops_per_image = None if kind.example_loss else step_flops(model_cfg, teacher, image_shape)
  train_step = backend.wrap_train(functools.partial(
      step.make_train_step, example_loss=example_loss, to_params=kind.to_params,
      optimizer=optimizer, schedule=schedule, grad_accum_steps=config.grad_accum_steps))
  eval_step = backend.wrap_eval(functools.partial(step.make_eval_step, predict=predict))
  finite_check = backend.wrap_eval(step.make_finite_check)
  dstate = backend.place_state(state)
  dteacher = None if teacher is None else backend.place_state(teacher_params)
  offset = jax.process_index() * local_batch
  reporter = reporting.Reporter(workdir, total_steps=config.total_steps, start_step=start,
                                batch_size=config.batch_size, enabled=False if finished else None)
  final: dict[str, float] = {}
  compiling = start + 1  # this process's first step compiles: trace, and time, the steps after it
  trace = reporting.StepTrace(reporting.trace_dir(workdir), range(
      compiling + 1, min(compiling + 1 + config.get('profile_steps', 0), config.total_steps + 1)))
  iterator = iter(data.train_loader(config.dataset, batch_size=config.batch_size, seed=config.seed, start=start,
                                    num_threads=config.input_threads, num_workers=config.get('input_workers', 0)))
  try:
    with preemption_guard() as stop_reason:
      for step_num in range(start + 1, config.total_steps + 1):
        trace.before(step_num)
        batch = next(iterator)
        batch['index'] = np.arange(offset, offset + local_batch, dtype=np.int32)
        dstate, metrics = train_step(dstate, backend.place_batch(batch), dteacher)
        trace.after(step_num, dstate)
        stop = stop_reason(step_num)
        save = stop or step_num % config.checkpoint_every == 0 or step_num == config.total_steps
        if save or step_num % config.log_every == 0:
          final = backend.metrics({**metrics, **finite_check(dstate)})
          _check_finite(final, step_num, ckpt)
          reporter.write(step_num, {**final, **reporting.speed(reporter.throughput(step_num), flops_per_image,
                                                               config.compute_dtype)})
        if step_num % config.eval_every == 0 or step_num == config.total_steps:
          final.update(evaluate(config, backend, eval_step, dstate))
          reporter.write(step_num, {k: v for k, v in final.items() if k.startswith('eval')})
        if save:
          ckpt.save(step_num, backend.canonical(dstate))
        if stop:
          _say(f'{stop} at step {step_num}: checkpoint saved, exiting (the same command resumes).')
          ckpt.wait()
          return {**final, 'step': step_num, 'preempted': True}
        if step_num == compiling:  # the rates logged after it are the step's own
          jax.block_until_ready(dstate)
          reporter.start_clock(step_num)
    ckpt.wait()
    if finished:  # report the final eval again
      final.update(evaluate(config, backend, eval_step, dstate))
    if not (finished and os.path.isdir(os.path.join(workdir, EXPORT_DIR))):
      export(kind, workdir, backend.canonical(dstate).params)
  finally:
    trace.close()
    ckpt.close()
    reporter.close()
    iterator.close()  # stops grain's worker processes, if any
  if jax.process_index() == 0 and not (finished and os.path.exists(os.path.join(workdir, reporting.PLOT_FILE))):
    reporting.plot_curves(workdir)
    if kind.report:
      kind.report(workdir, final)
  return {**final, 'step': config.total_steps}


def export(kind: kinds.Kind, workdir: str, trainable: Any) -> str:
  """Writes workdir/export/ whole or not at all: into export.partial/, then renamed, so a
  crash mid-export never leaves an export/ that loads wrong."""
  final, partial = os.path.join(workdir, EXPORT_DIR), os.path.join(workdir, EXPORT_DIR + '.partial')
  if jax.process_index() == 0:
    shutil.rmtree(partial, ignore_errors=True)
  multihost_utils.sync_global_devices('lgjax_export_begin')
  kind.export(partial, trainable)
  multihost_utils.sync_global_devices('lgjax_export_written')
  if jax.process_index() == 0:
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
  multihost_utils.sync_global_devices('lgjax_export_done')
  return final
