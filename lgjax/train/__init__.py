"""Training: losses, optimizer, the one train step, parallel backends, the loop."""
from lgjax.train.loop import train_and_evaluate

__all__ = ['train_and_evaluate']
