"""Pytree helpers over '/'-joined parameter names (big_vision style)."""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np

PyTree = Any


def _key_name(k) -> str:
  for attr in ('key', 'idx', 'name'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def flatten_with_names(tree: PyTree) -> list[tuple[str, Any]]:
  """[('Transformer/encoder_norm/scale', leaf), ...] in tree order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [('/'.join(_key_name(k) for k in path), leaf) for path, leaf in leaves]


def map_with_names(fn: Callable[[str, Any], Any], tree: PyTree) -> PyTree:
  """Like jax.tree.map, but `fn(name, leaf)` also receives the '/'-joined name."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: fn('/'.join(_key_name(k) for k in path), x), tree)


def unflatten_names(flat: dict[str, Any]) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}: the inverse of flatten_with_names for dicts."""
  tree: dict = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f'Key {name!r} nests under the leaf {"/".join(parents[:parents.index(p) + 1])!r}.')
    if isinstance(node.get(leaf), dict):
      raise ValueError(f'Key {name!r} is a leaf and also the parent of other keys.')
    node[leaf] = value
  return tree


def shape_mismatches(got: PyTree, expected: PyTree) -> list[str]:
  """Human-readable differences in names and shapes between two trees."""
  got_shapes = {n: tuple(np.shape(x)) for n, x in flatten_with_names(got)}
  want_shapes = {n: tuple(x.shape) for n, x in flatten_with_names(expected)}
  problems = []
  for name in sorted(want_shapes.keys() - got_shapes.keys()):
    close = difflib.get_close_matches(name, list(got_shapes), n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    problems.append(f'missing {name!r}{hint}')
  for name in sorted(got_shapes.keys() - want_shapes.keys()):
    problems.append(f'unexpected {name!r}')
  for name in sorted(got_shapes.keys() & want_shapes.keys()):
    if got_shapes[name] != want_shapes[name]:
      problems.append(f'{name!r} has shape {got_shapes[name]}, expected {want_shapes[name]}')
  return problems


def check_shapes(got: PyTree, expected: PyTree, what: str) -> None:
  """Raises a ValueError listing every key that does not fit `expected`."""
  problems = shape_mismatches(got, expected)
  if problems:
    raise ValueError(f'{what} does not fit: ' + '; '.join(problems[:20])
                     + (f'; ... {len(problems) - 20} more' if len(problems) > 20 else ''))


def num_params(tree: PyTree) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def merge_reinit(inherited: PyTree, fresh: PyTree, reinit: Sequence[str],
                 what: str = 'The inherited params') -> PyTree:
  """Takes from `fresh` the params whose '/'-name matches a `reinit` regex (e.g. a new
  head for new classes) and the rest from `inherited`, after checking shapes fit."""
  patterns = [re.compile(p) for p in reinit]
  take_fresh = lambda name: any(p.search(name) for p in patterns)
  kept = {n: x for n, x in flatten_with_names(inherited) if not take_fresh(n)}
  fresh_flat = dict(flatten_with_names(fresh))
  expected = {n: fresh_flat[n] for n in fresh_flat if not take_fresh(n)}
  check_shapes(kept, expected, f'{what} (params not matched by init.reinit)')
  return unflatten_names({n: kept.get(n, x) for n, x in fresh_flat.items()})
