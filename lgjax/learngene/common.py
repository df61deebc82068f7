"""What every learngene method shares: block init, structural checks, dims."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgjax import tree as tree_lib
from lgjax.models import ViT, blocks, check_config, inits

PyTree = Any


def vit_parts(rng: jax.Array, model_config: dict, image_shape: Sequence[int]) -> tuple[PyTree, PyTree]:
  """Initializes a depth-1 ViT: (shared params, one block tree) of this config."""
  check_config(model_config)
  config = {**model_config, 'depth': 1, 'scan': False}
  params = ViT(**config).init(rng, jnp.zeros((1, *image_shape), jnp.float32))['params']
  shared, (block,) = blocks.split(params)
  return shared, block


def init_block(rng: jax.Array, template: PyTree, *, ln_scale: float = 1.0) -> PyTree:
  """The papers' init (timm/DeiT): kernels trunc-normal(0.02), biases 0, LN scale `ln_scale`."""
  names = [n for n, _ in tree_lib.flatten_with_names(template)]
  keys = dict(zip(names, jax.random.split(rng, len(names))))
  trunc = inits.SCHEMES['deit'].kernel

  def init(name, x):
    if name.endswith('kernel'):
      return trunc(keys[name], x.shape, jnp.float32)
    if name.endswith('scale'):
      return jnp.full(x.shape, ln_scale, jnp.float32)
    return jnp.zeros(x.shape, jnp.float32)

  return tree_lib.map_with_names(init, template)


def check_keys(learngene: Any, expected: Sequence[str], method: str) -> None:
  """The learngene is a dict with exactly the `expected` top-level keys."""
  if not isinstance(learngene, dict):
    raise ValueError(f'A {method} learngene must be a dict with keys {sorted(expected)}, '
                     f'got {type(learngene).__name__}.')
  missing, extra = set(expected) - set(learngene), set(learngene) - set(expected)
  if missing or extra:
    raise ValueError(f'A {method} learngene must have keys {sorted(expected)}; '
                     f'missing {sorted(missing)}, extra {sorted(extra)}.')


def check_same_blocks(named_blocks: dict[str, PyTree], method: str) -> None:
  """All block trees share one structure and shapes (e.g. TLEG base and slope)."""
  (first_name, first), *rest = named_blocks.items()
  for name, block in rest:
    problems = tree_lib.shape_mismatches(block, first)
    if problems:
      raise ValueError(f'{method} learngene: {name!r} does not match {first_name!r}: '
                       + '; '.join(problems[:10]))


def block_dims(block: PyTree) -> dict[str, int]:
  """width, num_heads and mlp_dim of a ViT block tree, read from its shapes."""
  try:
    width, heads, _ = np.shape(block['MultiHeadDotProductAttention_0']['query']['kernel'])
    mlp_dim = np.shape(block['MlpBlock_0']['Dense_0']['kernel'])[1]
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'Not a ViT block tree (expected MultiHeadDotProductAttention_0/query/kernel '
                     f'of rank 3 and MlpBlock_0/Dense_0/kernel): {e!r}') from None
  return {'width': int(width), 'num_heads': int(heads), 'mlp_dim': int(mlp_dim)}


def check_fits(block: PyTree, model_config: dict, method: str) -> None:
  """A learngene block fits the requested model: same width, heads and mlp_dim."""
  dims = block_dims(block)
  want = {'width': model_config.get('width'), 'num_heads': model_config.get('num_heads'),
          'mlp_dim': model_config.get('mlp_dim') or 4 * model_config.get('width', 0)}
  for field, value in dims.items():
    if want[field] is not None and want[field] != value:
      raise ValueError(f'{method} learngene has {field}={value} but the requested model has '
                       f'{field}={want[field]}; expected a learngene of the same {field}.')


def check_positive_int(value: Any, field: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{field} must be an integer >= 1, got {value!r}.')
  return int(value)


def fresh_head(rng: jax.Array, target: dict) -> PyTree:
  """A new classifier for `target` (its num_classes, from its width), as the ViT inits one."""
  shape = (target['width'], target['num_classes'])
  kernel = (jnp.zeros(shape, jnp.float32) if target.get('head_zeroinit') else
            inits.get(target.get('param_init', inits.DEFAULT)).head_kernel(rng, shape, jnp.float32))
  return {'kernel': kernel, 'bias': jnp.zeros(shape[-1:], jnp.float32)}
