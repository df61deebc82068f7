"""Training checkpoints: Orbax CheckpointManager over the train state.

The data stream needs no state of its own: batch i is a pure function of (seed, i),
and a run resumed at step s reads from batch s (lgjax.data.train_loader). So a
checkpoint restores with any number of processes, devices or input workers.

Every process calls save (Orbax coordinates multi-host writes). A step is
only visible once Orbax has committed it, so a process killed mid-write
leaves a temporary directory that is never taken for a checkpoint; on
resume, a committed step that still fails to restore is reported, moved
aside to `damaged-STEP`, and the next older one is used. A step whose params
differ in names or shapes from the run's (a changed model) is not damage:
restore raises StructureMismatch and touches nothing. Each step carries a
checksum per array; a step whose restored arrays do not match is damaged.
A full disk ends the run with one OSError(ENOSPC) that names the directory and
the newest complete step, instead of Orbax's tracebacks from every writer thread;
a damaged step is one warning, without the tracebacks of its reads still in flight.
"""

from __future__ import annotations

import contextlib
import errno
import logging as py_logging
import math
import os
import shutil
import sys
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from lgjax import tree as tree_lib
from lgjax.train import parallel

PyTree = Any


class StructureMismatch(ValueError):
  """The saved state's params differ in names or shapes from this run's: a changed
  model, not a damaged checkpoint. Carries the differing param names."""

  def __init__(self, step: int, differing: list[str]):
    self.step, self.differing = step, differing
    super().__init__(f'checkpoint step {step} holds params of other names or shapes: {differing[:6]}'
                     + (f' and {len(differing) - 6} more' if len(differing) > 6 else ''))


def _no_space(text: str) -> bool:
  return 'No space left on device' in text or "os_error_code='28'" in text


class _DropOrbaxDiskFull(py_logging.Filter):
  """Orbax logs a full traceback per writer thread when the disk fills; the run reports it once."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if 'orbax' not in record.pathname:
      return True
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    return not _no_space(text)


def _quiet_orbax_disk_full() -> None:
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _DropOrbaxDiskFull) for f in absl_logger.filters):
    absl_logger.addFilter(_DropOrbaxDiskFull())


def _late_read(unraisable: Any) -> bool:
  """Whether an unraisable exception is a read that finished after its restore failed:
  Orbax's run_sync closes its event loop as the first read fails, and each tensorstore
  read still in flight then wakes that loop (call_soon_threadsafe) and prints a traceback,
  hundreds for one damaged step."""
  return (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == 'Event loop is closed'
          and any(frame.name == 'call_soon_threadsafe' for frame in traceback.extract_tb(unraisable.exc_traceback)))


class _DropFailedReads(py_logging.Filter):
  """asyncio logs each read of a damaged step that failed after the first one ("Future
  exception was never retrieved", as the reads are collected); restore_latest reports the
  step once. Drops those records for the step directories in `steps`."""

  def __init__(self):
    super().__init__()
    self.steps: set[str] = set()

  def filter(self, record: py_logging.LogRecord) -> bool:
    text = record.getMessage()
    return not ('exception was never retrieved' in text and any(step in text for step in self.steps))


_FAILED_READS = _DropFailedReads()


def _quiet_late_reads(step_dir: str) -> None:
  """Keeps a failed restore of `step_dir` to restore_latest's one warning: drops the
  tracebacks of its reads that end after the failure (some after the restore has returned,
  so for the rest of the process). Other unraisable exceptions go to the hook that was there."""
  _FAILED_READS.steps.add(step_dir + os.sep)
  asyncio_logger = py_logging.getLogger('asyncio')
  if _FAILED_READS not in asyncio_logger.filters:
    asyncio_logger.addFilter(_FAILED_READS)
  if getattr(sys.unraisablehook, 'drops_late_reads', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _late_read(unraisable):
      previous(unraisable)
  hook.drops_late_reads = True
  sys.unraisablehook = hook


def _param_shapes(tree: PyTree) -> dict[str, tuple]:
  return {name: tuple(leaf.shape) for name, leaf in tree_lib.flatten_with_names(tree)}


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'checksums': ocp.JsonCheckpointHandler()})
    self.disk_full = False
    _quiet_orbax_disk_full()

  def _no_space_error(self) -> OSError:
    steps = [s for s in self.manager.all_steps() if os.path.isdir(os.path.join(self.directory, str(s)))]
    kept = (f'the newest complete checkpoint, step {max(steps)}, is intact: free space (or move the workdir) '
            f'and rerun to resume from it' if steps else 'no checkpoint was completed: free space and rerun')
    return OSError(errno.ENOSPC, f'No space left on device for checkpoints in {self.directory}; {kept}.')

  def _check_room(self, state: PyTree) -> None:
    """Refuses a save the disk cannot hold before writing a byte: Orbax fails such a write
    late, from many threads at once. Old steps are only deleted after the new one commits."""
    need = sum(x.nbytes for x in jax.tree.leaves(state)) * 1.05 + (1 << 20)
    try:
      room = shutil.disk_usage(self.directory).free >= need
    except OSError:  # not a local filesystem (e.g. a bucket): nothing to ask
      room = True
    if jax.process_count() > 1:  # every process must take the same branch
      room = bool(np.all(multihost_utils.process_allgather(np.array(room))))
    if not room:
      self.disk_full = True
      raise self._no_space_error()

  @contextlib.contextmanager
  def _writing(self):
    """Turns Orbax's out-of-space errors (raised late, by the next save or wait) into one OSError."""
    try:
      yield
    except Exception as e:
      if self.disk_full or not _no_space(str(e)):
        raise
      self.disk_full = True
      if jax.process_index() == 0:  # the uncommitted step only takes space: Orbax never reads it
        for name in os.listdir(self.directory):
          if '.orbax-checkpoint-tmp' in name:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      raise self._no_space_error() from None

  def save(self, step: int, state: PyTree) -> None:
    """Starts an (async) save of `state` and its checksums at `step`."""
    with self._writing():
      self.manager.wait_until_finished()  # a late failure of the previous save surfaces here
      self._check_room(state)
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), checksums=ocp.args.JsonSave(checksums(state))), force=True)

  def wait(self) -> None:
    with self._writing():
      self.manager.wait_until_finished()

  def restore_latest(self, abstract_state: PyTree) -> tuple[PyTree, int] | None:
    """(state, step) from the newest intact checkpoint, or None for a fresh run.

    `abstract_state` gives shapes, dtypes and shardings. `self.damaged` lists
    the steps set aside.
    """
    self.manager.reload()
    self.damaged = []
    want = _param_shapes(abstract_state.params)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = _param_shapes(self.manager.item_metadata(step)['state']['params'])
      except Exception:  # unreadable metadata: the restore below says what is damaged
        saved = want
      if saved != want:  # a changed model is not damage: touch nothing
        raise StructureMismatch(step, sorted(k for k in saved.keys() | want.keys() if saved.get(k) != want.get(k)))
      try:
        _quiet_late_reads(os.path.join(self.directory, str(step)))  # before: they print as the failure unwinds
        items = dict(state=ocp.args.StandardRestore(abstract_state))
        has_sums = os.path.isdir(os.path.join(self.directory, str(step), 'checksums'))
        if has_sums:  # older checkpoints have none
          items['checksums'] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if has_sums:
          bad = _checksum_mismatches(restored['checksums'], restored['state'])
          if bad:
            raise ValueError(f'checksum mismatch in {bad[:4]}' + (f' and {len(bad) - 4} more' if len(bad) > 4 else ''))
      except Exception as e:  # a damaged step: say so, set it aside, fall back to an older one
        aside = os.path.join(self.directory, f'damaged-{step}')
        logging.warning('Checkpoint step %d in %s cannot be restored (%s: %s); moved to %s, '
                        'trying an older one.', step, self.directory, type(e).__name__, str(e)[:2000], aside)
        self.damaged.append(step)
        if jax.process_index() == 0:
          os.replace(os.path.join(self.directory, str(step)), aside)
        multihost_utils.sync_global_devices(f'lgjax_damaged_{step}')
        self.manager.reload()
        continue
      return restored['state'], step
    return None

  def close(self) -> None:
    """Waits for the last save and releases Orbax; after a full disk (already reported) quietly."""
    for finish in (self.wait, self.manager.close):
      try:
        finish()
      except Exception:
        if not self.disk_full:
          raise


CHECKSUM = 'weighted-sum32'  # the algorithm, recorded with the sums


@jax.jit
def _sums(state: PyTree) -> PyTree:
  """Per array: sum over elements of bits(x_i) · (2i + 1) mod 2^32, i the flat index.
  Exact integer arithmetic, so the value does not depend on how the array is sharded,
  and computed where the shards are: no host needs the whole state. An odd weight
  makes any change of one element (a flipped bit) change the sum."""
  def one(x):
    if x.dtype == np.bool_:
      bits = x.astype(np.uint32)
    else:
      bits = jax.lax.bitcast_convert_type(x, np.dtype(f'uint{8 * x.dtype.itemsize}')).astype(np.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    for axis in range(x.ndim):
      index += jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * np.uint32(math.prod(x.shape[axis + 1:]))
    return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)
  return jax.tree.map(one, state)


def checksums(state: PyTree) -> dict[str, Any]:
  """A 32-bit checksum of every array by '/'-name, written with each step and compared on
  restore, so that flipped bytes make a step damaged instead of a silently wrong model.
  Works on sharded state that no one process holds whole (multi-host FSDP)."""
  sums = jax.tree.map(lambda x: int(parallel.to_host(x)), _sums(state))
  return {'algorithm': CHECKSUM, 'arrays': dict(tree_lib.flatten_with_names(sums))}


def _checksum_mismatches(saved: dict, state: PyTree) -> list[str]:
  """Names whose checksum differs from `saved`'s; none for sums of another algorithm
  (older lgjax wrote CRC-32s): Orbax's own checks still guard those steps."""
  if saved.get('algorithm') != CHECKSUM:
    return []
  now = checksums(state)['arrays']
  return sorted(k for k, v in now.items() if saved['arrays'].get(k) != v)


def abstract(state: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs of `state` placed with the tree `shardings`: the restore target.
  Orbax reads each array into its sharding, whatever mesh wrote it."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
