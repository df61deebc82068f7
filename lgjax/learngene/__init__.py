"""Learngene methods, one module each, every one registered in `registry.METHODS`
with the same surface (expand, check, and init or from_source); learngene
directories are written and read by `save_learngene` / `load_learngene`."""
from lgjax.learngene import condense, pool, registry, sws, tleg, weight_selection
from lgjax.learngene.directory import load_learngene, save_learngene
from lgjax.learngene.registry import METHODS, Method

__all__ = ['METHODS', 'Method', 'condense', 'load_learngene', 'pool', 'registry', 'save_learngene', 'sws',
           'tleg', 'weight_selection']
