"""Learngene methods, one module each: init_learngene / condense, check, expand."""
from lgjax.learngene import condense, pool, sws, tleg

METHODS = {'tleg': tleg, 'sws': sws, 'condense': condense, 'pool': pool}

__all__ = ['METHODS', 'condense', 'pool', 'sws', 'tleg']
