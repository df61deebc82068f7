"""Learngene methods, one module each: init_learngene / condense, check, expand."""
from lgjax.learngene import condense, sws, tleg

METHODS = {'tleg': tleg, 'sws': sws, 'condense': condense}

__all__ = ['METHODS', 'condense', 'sws', 'tleg']
