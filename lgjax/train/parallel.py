"""Parallel backends: they only place data and state and wrap the one train step.

  'jit'   (default) one device mesh over all devices of all processes; the
          batch is a global array sharded along 'data', state replicated.
          The step runs under shard_map: each device sums its micro-batches'
          gradients and they are averaged over devices once per step (auto
          sharding all-reduced them once per micro-batch).
  'jit' with sharding.fsdp = k > 1: FSDP / ZeRO-3. The mesh is
          ('data', 'fsdp') = (devices / k, k); the batch is split over both
          axes, and params, optimizer state and teacher are sharded over
          'fsdp' (each leaf on its largest axis that k divides; a scanned
          stack never on its layer axis, so scan gathers one layer at a time).
          The step is plain jit, the model traced in vit.gathered_weights: each
          module's weights are all-gathered where it runs (one layer per scan
          iteration), activations stay split over the batch, and gradients are
          reduced back to the shards.
  'pmap'  jax.pmap over local devices, gradients averaged with pmean.

Between steps the state lives in the backend's own placement; `canonical`
turns it into the jit form (global arrays placed by `shardings`), which is
what checkpoints store, so a run can resume under either backend and on any
mesh: Orbax reads each saved array into whatever sharding the restore asks for.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lgjax import tree as tree_lib
from lgjax.models import blocks, vit

BACKENDS = ('jit', 'pmap')
AXIS = 'data'
FSDP_AXIS = 'fsdp'
MIN_SHARD_SIZE = 2 ** 14  # sharding.min_size default: smaller leaves (biases, norms) stay replicated
PyTree = Any


def global_mesh(devices=None) -> jax.sharding.Mesh:
  """The data axis over `devices` (default: all devices of all processes)."""
  devices = devices or jax.devices()
  return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def fsdp_size(fsdp: int, devices: int | None = None) -> int:
  """Devices each param is split over: sharding.fsdp, with -1 meaning all of them."""
  devices = devices or jax.device_count()
  return devices if fsdp == -1 else fsdp


def check_sharding(sharding: Any, parallelism: str) -> None:
  """sharding.fsdp and sharding.min_size, against the devices, before any work."""
  fsdp, min_size, devices = sharding.get('fsdp', 1), sharding.get('min_size', MIN_SHARD_SIZE), jax.device_count()
  if isinstance(fsdp, bool) or not isinstance(fsdp, int) or not (fsdp == -1 or 1 <= fsdp <= devices) \
      or devices % fsdp_size(fsdp, devices):
    raise ValueError(f'sharding.fsdp must be -1 (all devices) or an integer in [1, {devices}] that divides the '
                     f'{devices} devices, got {fsdp!r}.')
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ValueError(f'sharding.min_size must be an integer >= 0 (elements), got {min_size!r}.')
  if fsdp_size(fsdp, devices) > 1 and parallelism != 'jit':
    raise ValueError(f'sharding.fsdp={fsdp} shards the state over devices, which needs parallelism=\'jit\', '
                     f'got {parallelism!r}.')


def fsdp_spec(name: str, shape: Sequence[int], size: int, min_size: int = MIN_SHARD_SIZE) -> P:
  """Where leaf `name` of `shape` lives: its largest axis that `size` divides is split
  over 'fsdp' (the later one on ties); a scanned block stack never on its layer axis
  (axis 0), so that scan gathers one layer per iteration. Replicated when the leaf has
  fewer than `min_size` elements or no axis divides."""
  if size == 1 or math.prod(shape) < max(min_size, 1):
    return P()
  first = 1 if blocks.SCANNED in name.split('/') else 0
  axes = [a for a in range(first, len(shape)) if shape[a] % size == 0]
  if not axes:
    return P()
  axis = max(axes, key=lambda a: (shape[a], a))
  return P(*(FSDP_AXIS if a == axis else None for a in range(axis + 1)))


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

  def shardings(self, tree: PyTree) -> PyTree:
    """The NamedSharding of every leaf of `tree` (arrays or shapes): where it lives."""
    return jax.tree.map(lambda _: self.replicated, tree)

  def place_state(self, state: PyTree) -> PyTree:
    return jax.device_put(state, self.shardings(state))

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


class FsdpBackend(JitBackend):
  """State sharded over the 'fsdp' axis of a ('data', 'fsdp') mesh; see the module doc."""

  def __init__(self, fsdp: int, min_size: int = MIN_SHARD_SIZE, devices=None):
    devices = devices or jax.devices()
    self.size, self.min_size = fsdp_size(fsdp, len(devices)), min_size
    self.mesh = jax.make_mesh((len(devices) // self.size, self.size), (AXIS, FSDP_AXIS),
                              axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P((AXIS, FSDP_AXIS)))

  def shardings(self, tree: PyTree) -> PyTree:
    return tree_lib.map_with_names(
        lambda name, x: NamedSharding(self.mesh, fsdp_spec(name, x.shape, self.size, self.min_size)), tree)

  def _gathering(self, make_step: Callable[..., Callable]) -> Callable:
    """The step, its model traced inside vit.gathered_weights (weights gathered where used)."""
    step = make_step(axis_name=None)
    # A param's shard, from its shape: inside a scanned stack's loop body a layer's slice
    # has the stack's split axis (the layer axis is never split).
    stored = lambda shape: NamedSharding(self.mesh, fsdp_spec('', shape, self.size, self.min_size))

    def run(*args):
      with vit.gathered_weights(self.replicated, stored):
        return step(*args)
    return run

  def wrap_train(self, make_step: Callable[..., Callable]) -> Callable:
    step = self._gathering(make_step)

    def sharded_step(state, batch, teacher_params):  # the new state stays where the old one was
      state, metrics = step(state, batch, teacher_params)
      return jax.lax.with_sharding_constraint(state, self.shardings(state)), metrics
    return jax.jit(sharded_step, donate_argnums=(0,))

  def wrap_eval(self, make_step: Callable[..., Callable]) -> Callable:
    return jax.jit(self._gathering(make_step))


class PmapBackend:
  name = 'pmap'

  def __init__(self):
    self.mesh = global_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.n = jax.local_device_count()
    self._replicate = jax.pmap(lambda x: x)

  def shardings(self, tree: PyTree) -> PyTree:
    return jax.tree.map(lambda _: self.replicated, tree)

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


def make_backend(name: str, sharding: Any = None):
  """The backend of config.parallelism and config.sharding (None: data parallel)."""
  if name not in BACKENDS:
    raise ValueError(f'parallelism must be one of {BACKENDS}, got {name!r}.')
  sharding = sharding or {}
  check_sharding(sharding, name)
  if name == 'pmap':
    return PmapBackend()
  fsdp = fsdp_size(sharding.get('fsdp', 1))
  return FsdpBackend(fsdp, sharding.get('min_size', MIN_SHARD_SIZE)) if fsdp > 1 else JitBackend()
