"""Data-parallel backends: they only place data and wrap the one train step.

  'jit'   (default) one device mesh over all devices of all processes; the
          batch is a global array sharded along 'data', state replicated.
          The step runs under shard_map: each device sums its micro-batches'
          gradients and they are averaged over devices once per step (auto
          sharding all-reduced them once per micro-batch).
  'pmap'  jax.pmap over local devices, gradients averaged with pmean.

Between steps the state lives in the backend's own placement; `canonical`
turns it into the jit form (global, replicated), which is what checkpoints
store, so a run can resume under either backend.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BACKENDS = ('jit', 'pmap')
AXIS = 'data'
PyTree = Any


def global_mesh(devices=None) -> jax.sharding.Mesh:
  """The data axis over `devices` (default: all devices of all processes)."""
  devices = devices or jax.devices()
  return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def check_batch_size(batch_size: int, grad_accum_steps: int = 1) -> None:
  """The global batch must split evenly over devices and accumulation steps."""
  devices = jax.device_count()
  if batch_size < 1 or batch_size % (devices * grad_accum_steps):
    raise ValueError(f'batch_size={batch_size} must be a positive multiple of the number of devices '
                     f'({devices}) times grad_accum_steps ({grad_accum_steps}) = {devices * grad_accum_steps}.')


def to_host(x: jax.Array) -> np.ndarray:
  """A replicated value as numpy, read from this process's first device."""
  return np.asarray(x.addressable_data(0))


class JitBackend:
  name = 'jit'

  def __init__(self, devices=None):
    self.mesh = global_mesh(devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(AXIS))

  def place_state(self, state: PyTree) -> PyTree:
    return jax.device_put(state, self.replicated)

  def canonical(self, state: PyTree) -> PyTree:
    return state

  def place_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in local.items()}

  def wrap_train(self, make_step: Callable[..., Callable]) -> Callable:
    # (state, batch, teacher_params): state and teacher replicated, batch split.
    # check_vma=False: gradients stay per device (with it, grad of a replicated
    # input is psum-ed inside every micro-batch) until the step's one pmean.
    step = jax.shard_map(make_step(axis_name=AXIS), mesh=self.mesh,
                         in_specs=(P(), P(AXIS), P()), out_specs=P(), check_vma=False)
    return jax.jit(step, donate_argnums=(0,))

  def wrap_eval(self, make_step: Callable[..., Callable]) -> Callable:
    return jax.jit(make_step(axis_name=None))

  def metrics(self, metrics: PyTree) -> dict[str, float]:
    return {k: float(to_host(v)) for k, v in metrics.items()}


class PmapBackend:
  name = 'pmap'

  def __init__(self):
    self.mesh = global_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.n = jax.local_device_count()
    self._replicate = jax.pmap(lambda x: x)

  def place_state(self, state: PyTree) -> PyTree:
    host = jax.tree.map(lambda x: np.broadcast_to(to_host(x), (self.n, *np.shape(x))), state)
    return self._replicate(host)

  def canonical(self, state: PyTree) -> PyTree:
    def one(x):
      value = to_host(x)[0]
      return jax.make_array_from_callback(value.shape, self.replicated, lambda idx: value[idx])
    return jax.tree.map(one, state)

  def place_batch(self, local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.reshape(self.n, -1, *v.shape[1:]) for k, v in local.items()}

  def wrap_train(self, make_step: Callable[..., Callable]) -> Callable:
    return jax.pmap(make_step(axis_name=AXIS), axis_name=AXIS, donate_argnums=(0,))

  def wrap_eval(self, make_step: Callable[..., Callable]) -> Callable:
    return jax.pmap(make_step(axis_name=AXIS), axis_name=AXIS)

  def metrics(self, metrics: PyTree) -> dict[str, float]:
    return {k: float(to_host(v)[0]) for k, v in metrics.items()}


def make_backend(name: str):
  if name not in BACKENDS:
    raise ValueError(f'parallelism must be one of {BACKENDS}, got {name!r}.')
  return JitBackend() if name == 'jit' else PmapBackend()
