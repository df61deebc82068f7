"""Learngene methods, one module each, every one registered in `registry.METHODS`
with the same surface (expand, check, and init or from_source)."""
from lgjax.learngene import condense, pool, registry, sws, tleg, weight_selection
from lgjax.learngene.registry import METHODS, Method

__all__ = ['METHODS', 'Method', 'condense', 'pool', 'registry', 'sws', 'tleg', 'weight_selection']
