"""lgjax: learngene methods (TLEG, SWS, Learngene Pool, condense) in JAX/Flax."""

__version__ = '0.1.0'
