"""Learngene (Wang et al., 2023): condense integral layers, inherit by stacking.

Learngene layout (a plain dict, saved as is by `lgjax.checkpoint`):

  {'shared':         every non-block param of the ancestry, nested as in the ViT tree,
   'layers':         [block tree, ...]  k integral, contiguous ancestry blocks, in order,
   'source_indices': int array (k,)     where they sat in the ancestry}

Condensing picks the layers by comparing representations: `layer_similarity`
measures, on a batch of inputs, how similar each ancestry block's output is
to each block output of a second model (a "pseudo descendant", or the
ancestry itself), with linear CKA by default; `select_layers` turns the
matrix into indices. Inheriting (`expand`) stacks freshly initialized blocks
below (the released baseline) or above the learngene layers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgjax.learngene import common, registry
from lgjax.models import ViT, blocks, config_from_params, inits, with_block_outputs

PyTree = Any
KEYS = ('shared', 'layers', 'source_indices')
PLACEMENTS = ('below', 'above')


def linear_cka(x: jax.Array, y: jax.Array) -> jax.Array:
  """Linear CKA of (examples, features) matrices (Kornblith et al., 2019):
  ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), columns centered."""
  x = x - x.mean(axis=0, keepdims=True)
  y = y - y.mean(axis=0, keepdims=True)
  cross = jnp.sum((y.T @ x) ** 2)
  return cross / (jnp.sqrt(jnp.sum((x.T @ x) ** 2)) * jnp.sqrt(jnp.sum((y.T @ y) ** 2)))


def block_features(params: PyTree, model_config: dict, images: jax.Array) -> jax.Array:
  """(depth, examples, width): every block's output, averaged over tokens."""
  _, outputs = with_block_outputs(ViT(**model_config), params, images)
  return jnp.stack([out.mean(axis=1) for out in outputs['out']])


def layer_similarity(params: PyTree, model_config: dict, images: np.ndarray, *,
                     other: tuple[PyTree, dict] | None = None, batch_size: int = 256,
                     criterion: Callable[[jax.Array, jax.Array], jax.Array] = linear_cka) -> np.ndarray:
  """(L_ancestry, L_other) matrix of criterion(block i of params, block j of other).

  Runs the models jitted over `images` in batches of `batch_size`, keeping only
  token-averaged block outputs (examples x width per block), never every
  token of every layer. `other` = (params, model_config) of the pseudo
  descendant; by default the ancestry itself.
  """
  other_params, other_config = other if other is not None else (params, model_config)
  feats_a = jax.jit(lambda x: block_features(params, model_config, x))
  feats_b = jax.jit(lambda x: block_features(other_params, other_config, x))
  chunks_a, chunks_b = [], []
  for start in range(0, len(images), batch_size):
    batch = jnp.asarray(images[start:start + batch_size])
    chunks_a.append(np.asarray(feats_a(batch)))
    chunks_b.append(chunks_a[-1] if other is None else np.asarray(feats_b(batch)))
  fa, fb = np.concatenate(chunks_a, axis=1), np.concatenate(chunks_b, axis=1)
  pairwise = jax.jit(jax.vmap(jax.vmap(criterion, in_axes=(None, 0)), in_axes=(0, None)))
  return np.asarray(pairwise(fa, fb))


def select_layers(similarity: np.ndarray, k: int, rule: str | Sequence[int] = 'best_match') -> list[int]:
  """Indices of k contiguous ancestry layers (rows of `similarity`).

  rule 'best_match': the window [s, s+k) whose layers, aligned in order with
    some k consecutive columns [t, t+k) (the pseudo descendant's layers),
    have the highest mean similarity: max over s, t of mean_j S[s+j, t+j].
  rule 'last': the last k layers (the released baseline).
  a list of ints: exactly those layers (validated).
  """
  similarity = np.asarray(similarity)
  rows, cols = similarity.shape
  k = common.check_positive_int(k, 'k')
  if not isinstance(rule, str):
    indices = [int(i) for i in rule]
    if len(indices) != k or any(not 0 <= i < rows for i in indices) or sorted(set(indices)) != indices:
      raise ValueError(f'rule as a list must hold k={k} increasing layer indices in [0, {rows}), got {list(rule)}.')
    return indices
  if k > rows:
    raise ValueError(f'k={k} must be <= the ancestry depth {rows}.')
  if rule == 'last':
    return list(range(rows - k, rows))
  if rule != 'best_match':
    raise ValueError(f"rule must be 'best_match', 'last' or a list of indices, got {rule!r}.")
  if k > cols:
    raise ValueError(f'k={k} must be <= the pseudo descendant depth {cols} for rule="best_match".')
  scores = {(s, t): np.mean([similarity[s + j, t + j] for j in range(k)])
            for s in range(rows - k + 1) for t in range(cols - k + 1)}
  s, _ = max(scores, key=lambda st: (scores[st], st[0]))  # ties: the deeper window
  return list(range(s, s + k))


def condense(params: PyTree, indices: Sequence[int]) -> PyTree:
  """Ancestry params -> learngene holding blocks `indices` (integral, in order)."""
  shared, block_list = blocks.split(params)
  indices = [int(i) for i in indices]
  if not indices or any(not 0 <= i < len(block_list) for i in indices):
    raise ValueError(f'indices must be non-empty layer indices in [0, {len(block_list)}), got {indices}.')
  return {'shared': shared, 'layers': [block_list[i] for i in indices],
          'source_indices': np.asarray(indices, np.int32)}


def check(learngene: PyTree, model_config: dict | None = None) -> None:
  """Raises a ValueError if `learngene` is not a condensed learngene (for this model)."""
  common.check_keys(learngene, KEYS, 'condense')
  layers = learngene['layers']
  if not isinstance(layers, (list, tuple)) or not layers:
    raise ValueError('condense learngene: layers must be a non-empty list of block trees.')
  if len(np.atleast_1d(learngene['source_indices'])) != len(layers):
    raise ValueError(f'condense learngene: source_indices has {len(np.atleast_1d(learngene["source_indices"]))} '
                     f'entries for {len(layers)} layers.')
  common.check_same_blocks({f'layers[{i}]': b for i, b in enumerate(layers)}, 'condense')
  if model_config is not None:
    common.check_fits(layers[0], model_config, 'condense')


def descendant_config(learngene: PyTree, num_random: int, num_classes: int | None = None) -> dict:
  """The descendant's ViT fields: the ancestry's, at depth k + num_random."""
  params = blocks.join(learngene['shared'], list(learngene['layers']))
  overrides = {'depth': len(learngene['layers']) + num_random}
  if num_classes is not None:
    overrides['num_classes'] = num_classes
  return config_from_params(params, **overrides, scan=False)


def expand(learngene: PyTree, num_random: int, *, rng: jax.Array, placement: str = 'below',
           num_classes: int | None = None, inherit_stem: bool = True, scan: bool = False,
           param_init: str = inits.DEFAULT) -> PyTree:
  """A descendant: the learngene layers, bit-identical and in order, with
  `num_random` freshly initialized blocks stacked `placement` them.

  The stem (patch and position embedding, cls) comes from the ancestry unless
  `inherit_stem=False`; `num_classes` gives a new, freshly initialized head
  (otherwise the ancestry's is kept). Fresh parts start as `param_init` says.
  """
  check(learngene)
  if placement not in PLACEMENTS:
    raise ValueError(f'placement must be one of {PLACEMENTS}, got {placement!r}.')
  if isinstance(num_random, bool) or not isinstance(num_random, (int, np.integer)) or num_random < 0:
    raise ValueError(f'num_random must be an integer >= 0, got {num_random!r}.')
  config = {**descendant_config(learngene, int(num_random), num_classes), 'param_init': param_init}
  embedding = learngene['shared']['embedding']['kernel']
  tokens = np.shape(learngene['shared']['pos_embedding'])[1] if 'pos_embedding' in learngene['shared'] else 1
  side = int(round(tokens ** 0.5))
  image = jnp.zeros((1, side * np.shape(embedding)[0], side * np.shape(embedding)[1], np.shape(embedding)[2]))
  fresh_shared, fresh_blocks = blocks.split(jax.jit(ViT(**config).init)(rng, image)['params'])
  random_blocks = fresh_blocks[:num_random]
  layers = list(learngene['layers'])
  stacked = random_blocks + layers if placement == 'below' else layers + random_blocks
  shared = dict(learngene['shared'])
  if not inherit_stem:
    for key in ('embedding', 'pos_embedding', 'cls'):
      if key in fresh_shared:
        shared[key] = fresh_shared[key]
  if num_classes is not None:
    shared['head'] = fresh_shared['head']
  return blocks.join(shared, stacked, scan=scan)


def _expand(learngene: PyTree, target: registry.Target, *, rng: jax.Array, placement: str = 'below',
            layers: Sequence[int] | None = None) -> PyTree:
  """target.depth - k fresh blocks at `placement`; a fresh head when target.num_classes differs."""
  check(learngene, target)
  k = len(learngene['layers'])
  if target['depth'] < k:
    raise ValueError(f'depth={target["depth"]} must be >= the {k} condensed learngene layers.')
  head = learngene['shared'].get('head')
  classes = target.get('num_classes')
  new_head = classes if head is None or np.shape(head['kernel'])[-1] != classes else None
  return expand(learngene, target['depth'] - k, rng=rng, placement=placement, num_classes=new_head,
                scan=target.get('scan', False), param_init=target.get('param_init', inits.DEFAULT))


def _from_source(params: PyTree, source_config: registry.Target, *, layers: Sequence[int] = (),
                 placement: str = 'below') -> PyTree:
  if not layers:
    raise ValueError('layers must list the source blocks to inherit (e.g. (4, 5)).')
  return condense(params, layers)


def _check_options(target: registry.Target, *, layers: Sequence[int] = (), placement: str = 'below') -> None:
  if placement not in PLACEMENTS:
    raise ValueError(f'placement must be one of {PLACEMENTS}, got {placement!r}.')
  if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 for i in layers):
    raise ValueError(f'layers must be block indices >= 0, got {list(layers)}.')
  if len(layers) > target['depth']:
    raise ValueError(f'layers {list(layers)} are more than depth={target["depth"]} blocks.')


METHOD = registry.register(registry.Method(
    name='condense', check=check, expand=_expand, from_source=_from_source, options=('layers', 'placement'),
    check_options=_check_options))
