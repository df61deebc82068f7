"""How a Pallas kernel over a batch of activations runs wherever the model runs.

A kernel here is written for one device's whole batch. `by_example` makes it run on
each device's own examples when the batch is split over devices, and once on the
merged batch under vmap; `on_platform` runs it on CUDA and its jnp reference
elsewhere. residual_norm, gelu_mlp and qkv_projection use both.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

try:  # the kernels' Pallas backend: deprecated in JAX 0.11 (Mosaic GPU is its successor)
  from jax.experimental.pallas import triton
except ImportError:  # a JAX without it: lgjax imports and runs, the kernels' fields say why not
  triton = None


def check_available(field: str, impl: str | None) -> None:
  """Raises a ValueError naming `field` when it asks for a kernel this JAX cannot build."""
  if impl == 'pallas' and triton is None:
    raise ValueError(f"{field}='pallas' needs Pallas's Triton backend (jax.experimental.pallas.triton), "
                     f'which JAX {jax.__version__} does not have; set {field}=None to run XLA\'s ops.')


def is_param(axes: str) -> bool:
  """An operand without a batch axis: a param (vector or matrix), whole on every device."""
  return 'b' not in axes.split()


def by_example(fn, operands: tuple[str, ...], results: tuple[str, ...]):
  """`fn`, per example wherever it runs. `operands` and `results` spell each array's axes
  ('b t d': batch, tokens, width; one without 'b' is a param; a None operand is skipped);
  with one result, fn returns that array, else a tuple.

  Under jit on a batch split over devices (custom_partitioning), each device runs `fn` on
  its own examples: only 'b' is split, the rest is whole everywhere, so XLA never gathers
  the activations around the kernel. Under vmap (a loss written per example, as the
  Learngene Pool's), the mapped axis joins the batch axis: one call on the whole batch,
  not one per example.
  """
  partitioned = custom_partitioning(fn)

  def rule(mesh, operand_types, result_types):
    present = operands if len(operand_types) == len(operands) else [o for o in operands if o != 'b']  # keep=None
    text = f'{", ".join(present)} -> {", ".join(results)}'
    factors = dict.fromkeys(a for a in text.replace(',', ' ').split() if a not in ('b', '->'))  # in order
    return text, {'need_replication_factors': tuple(factors)}

  def partition(mesh, arg_shapes, result_shapes):
    spec = arg_shapes[0].sharding.spec
    batch = spec[0] if len(spec) else None
    sharding = lambda axes: NamedSharding(mesh, P(*(batch if a == 'b' else None for a in axes.split())))
    arg_shardings = tuple(None if a is None else sharding(o) for a, o in zip(arg_shapes, operands))
    result_shardings = tuple(map(sharding, results))
    return mesh, fn, result_shardings[0] if len(results) == 1 else result_shardings, arg_shardings

  partitioned.def_partition(partition, sharding_rule=rule)
  per_example = jax.custom_batching.custom_vmap(lambda *args: partitioned(*args))

  batched = True if len(results) == 1 else (True,) * len(results)  # fn returns one array, or a tuple

  @per_example.def_vmap
  def _(size, in_batched, *args):
    if any(mapped for mapped, o in zip(in_batched, operands) if is_param(o)):  # params differ along the map
      pick = lambda i: [a[i] if mapped else a for a, mapped in zip(args, in_batched)]
      return jax.lax.map(lambda i: per_example(*pick(i)), jnp.arange(size)), batched
    joined = [a if a is None or is_param(o) else
              (a if mapped else jnp.broadcast_to(a, (size, *a.shape))).reshape(-1, *a.shape[1 + mapped:])
              for a, mapped, o in zip(args, in_batched, operands)]
    unjoin = lambda o: o.reshape(size, -1, *o.shape[1:])
    return jax.tree.map(unjoin, per_example(*joined)), batched

  return per_example


def on_platform(kernel, reference, **static):
  """kernel on CUDA, reference elsewhere, chosen where XLA lowers (lax.platform_dependent)."""
  return lambda *args: jax.lax.platform_dependent(
      *args, cuda=functools.partial(kernel, **static), default=functools.partial(reference, **static))
