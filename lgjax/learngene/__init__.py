"""Learngene methods, one module each, every one registered in `registry.METHODS`
with the same surface (expand, check, and init or from_source); learngene
directories are written and read by `save_learngene` / `load_learngene`.

Every module of this package is imported here, so a new method is one file:
its import registers it.
"""
import importlib
import pkgutil

from lgjax.learngene.directory import load_learngene, save_learngene
from lgjax.learngene.registry import METHODS, Method

_MODULES = sorted(m.name for m in pkgutil.iter_modules(__path__))
for _name in _MODULES:
  importlib.import_module(f'{__name__}.{_name}')

__all__ = ['METHODS', 'Method', 'load_learngene', 'save_learngene', *_MODULES]
