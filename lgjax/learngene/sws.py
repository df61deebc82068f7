"""SWS: stage-wise weight sharing (Xia et al., 2024).

Learngene layout (a plain dict, saved as is by `lgjax.checkpoint`):

  {'shared': every non-block ViT param, nested as in the ViT tree,
   'stages': [block tree, ...]   one weight set per stage, all the same shapes}

A model with per-stage depths [d_0, ..., d_{S-1}] is stage 0 repeated d_0
times, then stage 1 d_1 times, and so on: copies, no interpolation. The
auxiliary model that trains the learngene is such a model (the paper: 16
layers as [3, 3, 4, 3, 3]); descendants pick their own depths per stage.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgjax.learngene import common, registry
from lgjax.models import blocks

PyTree = Any
KEYS = ('shared', 'stages')
AUX_STAGE_DEPTHS = (3, 3, 4, 3, 3)         # the paper's 16-layer auxiliary model
DESCENDANT_STAGE_DEPTHS = (3, 3, 2, 2, 2)  # the paper's 12-layer descendant


def init_learngene(rng: jax.Array, model_config: dict, num_stages: int = len(AUX_STAGE_DEPTHS), *,
                   image_shape: Sequence[int] = (224, 224, 3)) -> PyTree:
  """Shared params as the ViT initializes them; each stage with the papers'
  block init (kernels trunc-normal(0.02), LayerNorm scale 1, biases 0)."""
  num_stages = common.check_positive_int(num_stages, 'num_stages')

  def init(rng):
    k_shared, k_stages = jax.random.split(rng)
    shared, template = common.vit_parts(k_shared, model_config, image_shape)
    stages = [common.init_block(k, template) for k in jax.random.split(k_stages, num_stages)]
    return {'shared': shared, 'stages': stages}

  return jax.jit(init)(rng)


def check(learngene: PyTree, model_config: dict | None = None) -> None:
  """Raises a ValueError if `learngene` is not an SWS learngene (for this model)."""
  common.check_keys(learngene, KEYS, 'SWS')
  stages = learngene['stages']
  if not isinstance(stages, (list, tuple)) or not stages:
    raise ValueError(f'SWS learngene: stages must be a non-empty list of block trees, '
                     f'got {type(stages).__name__} of length {len(stages) if hasattr(stages, "__len__") else "?"}.')
  common.check_same_blocks({f'stages[{i}]': s for i, s in enumerate(stages)}, 'SWS')
  if model_config is not None:
    common.check_fits(stages[0], model_config, 'SWS')


def check_stage_depths(stage_depths: Sequence[int], num_stages: int) -> tuple[int, ...]:
  """stage_depths has one integer >= 1 per stage."""
  if isinstance(stage_depths, (str, bytes)) or not isinstance(stage_depths, Sequence) \
      or len(stage_depths) != num_stages:
    raise ValueError(f'stage_depths must be a sequence of {num_stages} integers >= 1 '
                     f'(one per stage), got {stage_depths!r}.')
  for i, d in enumerate(stage_depths):
    common.check_positive_int(d, f'stage_depths[{i}]')
  return tuple(int(d) for d in stage_depths)


def split_depth(depth: int, num_stages: int) -> tuple[int, ...]:
  """Spreads `depth` blocks over the stages: depth // S each, and the remainder
  one more each to the earliest stages (12 over 5 -> the paper's [3, 3, 2, 2, 2])."""
  depth = common.check_positive_int(depth, 'depth')
  num_stages = common.check_positive_int(num_stages, 'num_stages')
  if depth < num_stages:
    raise ValueError(f'depth must be >= num_stages={num_stages} so that every stage gets a '
                     f'block, got depth={depth}.')
  q, r = divmod(depth, num_stages)
  return tuple(q + 1 if s < r else q for s in range(num_stages))


def expand(learngene: PyTree, stage_depths: Sequence[int], *, scan: bool = False) -> PyTree:
  """Learngene -> ViT params: stage s repeated stage_depths[s] times, in order."""
  check(learngene)
  stage_depths = check_stage_depths(stage_depths, len(learngene['stages']))
  repeats = np.asarray(stage_depths)
  stacked = jax.tree.map(
      lambda x: jnp.repeat(x, repeats, axis=0, total_repeat_length=int(repeats.sum())),
      blocks.stack(list(learngene['stages'])))
  return blocks.join_stacked(learngene['shared'], stacked, scan=scan)



def stage_depths_for(learngene: PyTree, depth: int, stage_depths: Sequence[int] | None = None) -> tuple[int, ...]:
  """`stage_depths` when given (they must sum to `depth`), else `split_depth` over the learngene's stages."""
  if not stage_depths:
    return split_depth(depth, len(learngene['stages']))
  return _check_sum(check_stage_depths(stage_depths, len(learngene['stages'])), depth)


def _check_sum(stage_depths: tuple[int, ...], depth: int) -> tuple[int, ...]:
  if sum(stage_depths) != depth:
    raise ValueError(f'stage_depths {list(stage_depths)} sum to {sum(stage_depths)}, expected depth={depth}.')
  return stage_depths


def _init(rng: jax.Array, target: registry.Target, *, image_shape: Sequence[int],
          stage_depths: Sequence[int] | None = None) -> PyTree:
  """One weight set per stage of `stage_depths` (default: the paper's five stages)."""
  num_stages = len(stage_depths) if stage_depths else len(AUX_STAGE_DEPTHS)
  return init_learngene(rng, dict(target), num_stages, image_shape=image_shape)


def _check_options(target: registry.Target, *, stage_depths: Sequence[int] | None = None) -> None:
  if stage_depths:
    _check_sum(check_stage_depths(stage_depths, len(stage_depths)), target['depth'])


METHOD = registry.register(registry.Method(
    name='sws', check=check, init=_init, options=('stage_depths',), check_options=_check_options,
    implied_depth=lambda stage_depths=None: sum(stage_depths) if stage_depths else None,
    expand=lambda learngene, target, *, rng=None, stage_depths=None: expand(
        learngene, stage_depths_for(learngene, target['depth'], stage_depths), scan=target.get('scan', False))))
