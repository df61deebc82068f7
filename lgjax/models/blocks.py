"""The one place that knows where a ViT keeps its blocks.

Every learngene method is written on `split` and `join`: a ViT param tree is
(shared, blocks), where `shared` is every non-block param nested as in the
ViT tree (embedding, pos_embedding, cls, Transformer/encoder_norm, head) and
`blocks` is the list of per-block trees in depth order. Both layouts are
handled: unscanned (`Transformer/encoderblock_{i}`) and scanned
(`Transformer/encoderblock`, leaves with a leading layer axis).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
SCANNED = 'encoderblock'
_UNSCANNED = re.compile(r'^encoderblock_(\d+)$')


def block_name(i: int) -> str:
  """The unscanned name of block i: encoderblock_{i} (big_vision's)."""
  return f'encoderblock_{i}'


def _transformer(params: PyTree) -> dict:
  if 'Transformer' not in params:
    raise ValueError(f'Not a ViT param tree: no "Transformer" key among {sorted(params)}.')
  return params['Transformer']


def is_scanned(params: PyTree) -> bool:
  return SCANNED in _transformer(params)


def stack(blocks: list[PyTree]) -> PyTree:
  """List of block trees -> one tree whose leaves have a leading layer axis."""
  if not blocks:
    raise ValueError('blocks must be a non-empty list of block trees.')
  return jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)


def unstack(stacked: PyTree) -> list[PyTree]:
  """Inverse of `stack`."""
  depth = jax.tree.leaves(stacked)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth)]


def _shared(params: PyTree) -> PyTree:
  transformer = _transformer(params)
  shared = {k: v for k, v in params.items() if k != 'Transformer'}
  shared['Transformer'] = {k: v for k, v in transformer.items()
                           if k != SCANNED and not _UNSCANNED.match(k)}
  return shared


def split(params: PyTree) -> tuple[PyTree, list[PyTree]]:
  """ViT params -> (shared, list of block trees), for either layout."""
  transformer = _transformer(params)
  if SCANNED in transformer:
    return _shared(params), unstack(transformer[SCANNED])
  return _shared(params), _numbered_blocks(transformer)


def split_stacked(params: PyTree) -> tuple[PyTree, PyTree]:
  """ViT params -> (shared, stacked blocks), for either layout."""
  transformer = _transformer(params)
  if SCANNED in transformer:
    return _shared(params), transformer[SCANNED]
  shared, blocks = split(params)
  return shared, stack(blocks)


def _numbered_blocks(transformer: dict) -> list[PyTree]:
  found = sorted(int(m.group(1)) for k in transformer if (m := _UNSCANNED.match(k)))
  if found != list(range(len(found))) or not found:
    raise ValueError(f'Transformer blocks must be encoderblock_0..encoderblock_{{L-1}} '
                     f'with no gaps, got indices {found}.')
  return [transformer[block_name(i)] for i in found]


def join(shared: PyTree, blocks: list[PyTree], *, scan: bool = False) -> PyTree:
  """(shared, list of block trees) -> ViT params in the chosen layout."""
  if not blocks:
    raise ValueError('blocks must be a non-empty list of block trees.')
  if scan:
    return join_stacked(shared, stack(blocks), scan=True)
  return _with_blocks(shared, {block_name(i): b for i, b in enumerate(blocks)})


def join_stacked(shared: PyTree, stacked: PyTree, *, scan: bool = False) -> PyTree:
  """(shared, stacked blocks) -> ViT params in the chosen layout."""
  if scan:
    return _with_blocks(shared, {SCANNED: stacked})
  return join(shared, unstack(stacked), scan=False)


def _with_blocks(shared: PyTree, blocks: dict) -> PyTree:
  params = dict(shared)
  params['Transformer'] = {**shared.get('Transformer', {}), **blocks}
  return params


def depth(params: PyTree) -> int:
  """Number of encoder blocks in a ViT param tree of either layout."""
  if is_scanned(params):
    return jax.tree.leaves(_transformer(params)[SCANNED])[0].shape[0]
  return len(_numbered_blocks(_transformer(params)))


def to_scanned(params: PyTree) -> PyTree:
  """Unscanned (or scanned) ViT params -> scanned layout."""
  return join_stacked(*split_stacked(params), scan=True)


def to_unscanned(params: PyTree) -> PyTree:
  """Scanned (or unscanned) ViT params -> unscanned layout."""
  return join(*split(params), scan=False)
