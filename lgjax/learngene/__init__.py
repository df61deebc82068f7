"""Learngene methods, one module each: init_learngene(...), expand(learngene, ...)."""
from lgjax.learngene import sws, tleg

METHODS = {'tleg': tleg, 'sws': sws}

__all__ = ['METHODS', 'sws', 'tleg']
