"""A learngene directory: learngene/ (Orbax) + learngene.json.

learngene.json holds {'method': a name in METHODS, 'model_config': the ViT
config it was trained or taken with, ...whatever else the writer adds, e.g.
the aux run's 'options'}. Both directions check the tree with the method's
`check`, so a directory never holds, or yields, a malformed learngene.
"""

from __future__ import annotations

import os
from typing import Any

from lgjax import checkpoint
from lgjax.learngene.registry import METHODS

PyTree = Any
LEARNGENE, LEARNGENE_META = 'learngene', 'learngene.json'


def save_learngene(directory: str, learngene: PyTree, *, method: str, model_config: dict,
                   **meta: Any) -> None:
  """Writes a learngene (Orbax) and what `expand.py` needs to expand it (JSON)."""
  if method not in METHODS:
    raise ValueError(f'method must be one of {sorted(METHODS)}, got {method!r}.')
  METHODS[method].check(learngene, model_config)
  os.makedirs(directory, exist_ok=True)
  checkpoint.save_tree(os.path.join(directory, LEARNGENE), learngene)
  checkpoint.write_json(os.path.join(directory, LEARNGENE_META),
                        {'method': method, 'model_config': dict(model_config), **meta})


def load_learngene(directory: str) -> tuple[PyTree, dict]:
  """(learngene, meta); meta has 'method' and the 'model_config' it was trained with."""
  meta = checkpoint.read_json(os.path.join(directory, LEARNGENE_META))
  method = meta.get('method')
  if method not in METHODS:
    raise ValueError(f'{directory!r}: learngene.json method must be one of {sorted(METHODS)}, '
                     f'got {method!r}.')
  if not isinstance(meta.get('model_config'), dict):
    raise ValueError(f'{directory!r}: learngene.json has no "model_config" object (the ViT config the '
                     f'learngene was trained with).')
  learngene = checkpoint.restore_tree(os.path.join(directory, LEARNGENE))
  METHODS[method].check(learngene, meta['model_config'])
  return learngene, meta
