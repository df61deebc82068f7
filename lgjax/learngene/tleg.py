"""TLEG: a Transformer as a linear expansion of its learngene (Xia et al.).

Learngene layout (a plain dict, saved as is by `lgjax.checkpoint`):

  {'shared': every non-block ViT param, nested as in the ViT tree
             (embedding, pos_embedding, cls, Transformer/encoder_norm, head),
   'base':   one ViT block tree  (A),
   'slope':  one ViT block tree  (B, same structure and shapes as base)}

A descendant of depth L has block l (0-based) = A + (l / L) * B. The ratio is
l / L, not l / (L - 1), as in the official code. `expand` is pure and
differentiable, so the auxiliary model computes its params with it inside
the loss and gradients reach A and B.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from lgjax import tree as tree_lib
from lgjax.learngene import common, registry
from lgjax.models import blocks

PyTree = Any
KEYS = ('shared', 'base', 'slope')
AUX_DEPTH = 12  # depth of the paper's auxiliary model


def init_learngene(rng: jax.Array, model_config: dict, *,
                   image_shape: Sequence[int] = (224, 224, 3)) -> PyTree:
  """The paper's init: base and slope kernels trunc-normal(0.02), LayerNorm
  scale base 1 and slope 0, biases 0; shared params as the ViT initializes them."""
  def init(rng):
    k_shared, k_base, k_slope = jax.random.split(rng, 3)
    shared, template = common.vit_parts(k_shared, model_config, image_shape)
    return {'shared': shared,
            'base': common.init_block(k_base, template, ln_scale=1.0),
            'slope': common.init_block(k_slope, template, ln_scale=0.0)}

  return jax.jit(init)(rng)


def check(learngene: PyTree, model_config: dict | None = None) -> None:
  """Raises a ValueError if `learngene` is not a TLEG learngene (for this model)."""
  common.check_keys(learngene, KEYS, 'TLEG')
  common.check_same_blocks({'base': learngene['base'], 'slope': learngene['slope']}, 'TLEG')
  if model_config is not None:
    common.check_fits(learngene['base'], model_config, 'TLEG')


def coefficients(depth: int) -> jax.Array:
  """l / L for l = 0..L-1: where each block sits on the line from A towards A + B."""
  return jnp.arange(depth, dtype=jnp.float32) / depth


def expand(learngene: PyTree, depth: int, *, scan: bool = False) -> PyTree:
  """Learngene -> ViT params of `depth` blocks; block l = base + (l / depth) * slope."""
  depth = common.check_positive_int(depth, 'depth')
  check(learngene)
  c = coefficients(depth)
  stacked = jax.tree.map(
      lambda a, b: a[None] + c.reshape((depth,) + (1,) * a.ndim).astype(a.dtype) * b[None],
      learngene['base'], learngene['slope'])
  return blocks.join_stacked(learngene['shared'], stacked, scan=scan)


def fit(params: PyTree) -> PyTree:
  """Least-squares base and slope for an existing ViT's blocks over t = l / L.

  Per parameter entry, minimizes sum_l (A + t_l B - p_l)^2, so a learngene can
  start from any trained ViT; `expand(fit(expand(lg, L)), L)` gives back the
  params. A depth-1 model has no slope to fit: B = 0.
  """
  shared, stacked = blocks.split_stacked(params)
  depth = blocks.depth(params)
  t = coefficients(depth)
  t_centered = t - t.mean()
  denom = jnp.sum(t_centered ** 2)

  def fit_leaf(p):
    p = p.astype(jnp.float32)
    mean = p.mean(axis=0)
    if depth == 1:
      return mean, jnp.zeros_like(mean)
    slope = jnp.tensordot(t_centered, p - mean, axes=1) / denom
    return mean - t.mean() * slope, slope

  fitted = jax.tree.map(fit_leaf, stacked)
  is_pair = lambda x: isinstance(x, tuple)
  return {'shared': shared,
          'base': jax.tree.map(lambda ab: ab[0], fitted, is_leaf=is_pair),
          'slope': jax.tree.map(lambda ab: ab[1], fitted, is_leaf=is_pair)}


def _init(rng: jax.Array, target: registry.Target, *, image_shape: Sequence[int],
          fit_from: str | None = None) -> PyTree:
  """The paper's init, or (fit_from: any ViT that load_params reads) the least-squares
  fit to that ViT's blocks, so a learngene can start from a trained model."""
  init = lambda rng: init_learngene(rng, dict(target), image_shape=image_shape)
  if not fit_from:
    return init(rng)
  from lgjax import checkpoint
  fitted = fit(checkpoint.load_params(fit_from)[0])
  tree_lib.check_shapes(fitted, jax.eval_shape(init, rng), f'The TLEG fit of fit_from={fit_from!r}')
  return fitted


METHOD = registry.register(registry.Method(
    name='tleg', check=check, init=_init, options=('fit_from',),
    expand=lambda learngene, target, *, rng=None, fit_from=None: expand(
        learngene, target['depth'], scan=target.get('scan', False))))
