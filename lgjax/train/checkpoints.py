"""Training checkpoints: Orbax CheckpointManager over (train state, data iterator).

Every process calls save (Orbax coordinates multi-host writes). A step is
only visible once Orbax has committed it, so a process killed mid-write
leaves a temporary directory that is never taken for a checkpoint; on
resume, a committed step that still fails to restore is reported, moved
aside to `damaged-STEP`, and the next older one is used. A step whose params
differ in names or shapes from the run's (a changed model) is not damage:
restore raises StructureMismatch and touches nothing. Each step carries a
CRC-32 per array; a step whose restored arrays do not match is damaged.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from lgjax import tree as tree_lib

PyTree = Any


class StructureMismatch(ValueError):
  """The saved state's params differ in names or shapes from this run's: a changed
  model, not a damaged checkpoint. Carries the differing param names."""

  def __init__(self, step: int, differing: list[str]):
    self.step, self.differing = step, differing
    super().__init__(f'checkpoint step {step} holds params of other names or shapes: {differing[:6]}'
                     + (f' and {len(differing) - 6} more' if len(differing) > 6 else ''))


def _param_shapes(tree: PyTree) -> dict[str, tuple]:
  return {name: tuple(leaf.shape) for name, leaf in tree_lib.flatten_with_names(tree)}


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler(),
                       'checksums': ocp.JsonCheckpointHandler()})

  def save(self, step: int, state: PyTree, data_iterator: Any) -> None:
    """Starts an (async) save of `state`, its checksums and the iterator position at `step`."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
        checksums=ocp.args.JsonSave(checksums(state))), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore_latest(self, abstract_state: PyTree, data_iterator: Any) -> tuple[PyTree, int] | None:
    """(state, step) from the newest intact checkpoint, or None for a fresh run.

    `abstract_state` gives shapes, dtypes and shardings; `data_iterator` is
    moved to the saved position in place (after a failed restore it may be
    anywhere: with None, start a new one). `self.damaged` lists the steps set aside.
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
        items = dict(state=ocp.args.StandardRestore(abstract_state),
                     data=grain.checkpoint.CheckpointRestore(data_iterator))
        has_sums = os.path.isdir(os.path.join(self.directory, str(step), 'checksums'))
        if has_sums:  # older checkpoints have none
          items['checksums'] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if has_sums:
          bad = sorted(k for k, v in checksums(restored['state']).items() if restored['checksums'].get(k) != v)
          if bad:
            raise ValueError(f'checksum mismatch in {bad[:4]}' + (f' and {len(bad) - 4} more' if len(bad) > 4 else ''))
      except Exception as e:  # a damaged step: say so, set it aside, fall back to an older one
        aside = os.path.join(self.directory, f'damaged-{step}')
        logging.warning('Checkpoint step %d in %s cannot be restored (%s: %s); moved to %s, '
                        'trying an older one.', step, self.directory, type(e).__name__, str(e)[:300], aside)
        self.damaged.append(step)
        if jax.process_index() == 0:
          os.replace(os.path.join(self.directory, str(step)), aside)
        multihost_utils.sync_global_devices(f'lgjax_damaged_{step}')
        self.manager.reload()
        continue
      return restored['state'], step
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def checksums(state: PyTree) -> dict[str, int]:
  """CRC-32 of every array's bytes, by '/'-name: written with each step, compared on restore,
  so that flipped bytes make a step damaged instead of a silently wrong model."""
  host = jax.device_get(state)  # one transfer for the whole state, not one per array
  return {name: zlib.crc32(np.ascontiguousarray(x).tobytes()) for name, x in tree_lib.flatten_with_names(host)}


def abstract(state: PyTree, sharding: jax.sharding.Sharding) -> PyTree:
  """ShapeDtypeStructs of `state` placed with `sharding`: the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
