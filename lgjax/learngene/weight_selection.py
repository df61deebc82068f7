"""Weight Selection (Xu et al., ICLR 2024, "Initializing Models with Larger Ones").

Training-free: a smaller ViT starts from elements of a larger trained one.
The learngene is the source ViT's params as they are (`from_source`).

- Layer selection, first-N: descendant block i is source block i.
- Uniform element selection: every axis of every param keeps evenly spaced
  indices, `uniform_indices(source size, target size)`: a stride when the
  sizes divide (64 -> 32 keeps 0, 2, 4, ...), else the rounded points of
  linspace(0, n - 1, m). The indices depend only on the two sizes, so a
  dimension (the token width, the MLP width) is selected the same way in
  every layer and every param it appears in: the paper's consistency. (The
  released code spaces linspace up to n, which indexes past the end; we stop
  at n - 1.)
- Attention heads: as the paper's code, which selects rows of timm's fused
  qkv Linear, each of query, key and value keeps uniformly selected features
  of its flattened (heads x head_dim) outputs, regrouped into the target's
  heads; `out` is selected the same way on its inputs. Halving the width
  at a fixed head count halves head_dim; halving heads and width at a fixed
  head_dim gives target head h every other feature of source heads 2h and
  2h + 1.
- The head: selected along the width when the class count is the source's;
  freshly initialized (`rng`) otherwise, as the paper drops it.
Selecting to the same size returns the source params exactly. The patch
size, channels, tokens and layout (cls token, position embedding) must be
the source's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lgjax import tree as tree_lib
from lgjax.learngene import common, registry
from lgjax.models import ViT, ViTConfig, blocks, config_from_params

PyTree = Any
_FLAT_OUT = ('query', 'key', 'value')  # kernel (width, heads, head_dim), bias (heads, head_dim)


def uniform_indices(source: int, target: int) -> np.ndarray:
  """`target` evenly spaced indices into `source` elements (the paper's uniform selection)."""
  if not 1 <= target <= source:
    raise ValueError(f'cannot select {target} of {source} elements: Weight Selection only shrinks.')
  if source % target == 0:
    return np.arange(target) * (source // target)
  return np.round(np.linspace(0, source - 1, target)).astype(np.int64)


def select(x: np.ndarray, shape: tuple[int, ...], name: str = 'param') -> np.ndarray:
  """Uniform selection on every axis of `x` down to `shape`."""
  if np.ndim(x) != len(shape):
    raise ValueError(f'{name}: source has shape {np.shape(x)}, target {shape}: ranks differ.')
  for axis, (n, m) in enumerate(zip(np.shape(x), shape)):
    if m > n:
      raise ValueError(f'{name}: target shape {shape} is larger than the source {np.shape(x)} on axis {axis}; '
                       f'Weight Selection only shrinks.')
    x = np.take(x, uniform_indices(n, m), axis=axis)
  return x


def _select_param(name: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """One param: attention projections are selected on their flattened heads x head_dim features."""
  parts = name.split('/')
  if len(parts) >= 2 and parts[-2] in _FLAT_OUT:
    if parts[-1] == 'kernel':  # (width, heads, head_dim)
      flat = select(x.reshape(x.shape[0], -1), (shape[0], shape[1] * shape[2]), name)
    else:  # bias (heads, head_dim)
      flat = select(x.reshape(-1), (shape[0] * shape[1],), name)
    return flat.reshape(shape)
  if len(parts) >= 2 and parts[-2] == 'out' and parts[-1] == 'kernel':  # (heads, head_dim, width)
    flat = select(x.reshape(-1, x.shape[-1]), (shape[0] * shape[1], shape[2]), name)
    return flat.reshape(shape)
  return select(x, shape, name)


def _image_shape(params: PyTree) -> tuple[int, int, int]:
  """An image with the source's patch, channels and token count (shapes are all that matter)."""
  ph, pw, channels, _ = np.shape(params['embedding']['kernel'])
  tokens = np.shape(params['pos_embedding'])[1] if 'pos_embedding' in params else 1
  return int(ph), int(pw) * int(tokens), int(channels)


def check(learngene: PyTree, target: registry.Target | None = None) -> None:
  """The learngene is a ViT param tree; `target` is no larger than it and shares its stem."""
  source = config_from_params(learngene)
  if target is None:
    return
  for field in ('depth', 'width'):
    if target[field] > source[field]:
      raise ValueError(f'Weight Selection only shrinks: target {field}={target[field]} > the source\'s '
                       f'{source[field]}.')
  mlp = ViTConfig.of(target).mlp_dim
  if mlp > source['mlp_dim']:
    raise ValueError(f'Weight Selection only shrinks: target mlp_dim={mlp} > the source\'s {source["mlp_dim"]}.')
  patch = lambda p: tuple(p) if isinstance(p, (list, tuple)) else (p, p)
  for field, same in (('patch_size', patch(target.get('patch_size', 16)) == patch(source['patch_size'])),
                      ('pool_type', target.get('pool_type', 'gap') == source['pool_type']),
                      ('posemb', target.get('posemb', 'learn') == source['posemb'])):
    if not same:
      raise ValueError(f'Weight Selection keeps the source\'s stem: target {field}={target.get(field)!r}, '
                       f'source {source[field]!r}.')


def expand(learngene: PyTree, target: registry.Target, *, rng: jax.Array | None = None) -> PyTree:
  """Source ViT params -> params of `target`: its first target.depth blocks, every
  param uniformly selected down to the target's shapes (module docstring)."""
  check(learngene, target)
  source = jax.device_get(blocks.to_unscanned(learngene))
  scan = bool(target.get('scan', False))
  target = {**dict(target), 'scan': False}
  image = jnp.zeros((1, *_image_shape(source)), jnp.float32)
  shapes = jax.eval_shape(lambda: ViT(**target).init(jax.random.key(0), image))['params']
  flat_source = dict(tree_lib.flatten_with_names(source))
  fresh_head = 'head' in shapes and ('head' not in source or np.shape(source['head']['kernel'])[-1]
                                      != shapes['head']['kernel'].shape[-1])

  def pick(name, leaf):
    if fresh_head and name.startswith('head/'):
      return None
    if name not in flat_source:
      raise ValueError(f'The source ViT has no {name!r}, which the target needs.')
    return jnp.asarray(_select_param(name, np.asarray(flat_source[name]), tuple(leaf.shape)))

  params = tree_lib.map_with_names(pick, shapes)
  if fresh_head:
    if rng is None:
      raise ValueError('The target has other classes than the source: pass rng for its fresh head.')
    params['head'] = common.fresh_head(rng, target)
  return blocks.to_scanned(params) if scan else params


METHOD = registry.register(registry.Method(
    name='weight_selection', check=check, expand=expand,
    from_source=lambda params, source_config: blocks.to_unscanned(params)))
