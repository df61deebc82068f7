"""Input pipelines: tfds/embedded random-access sources read through grain."""
from lgjax.data import mnist5k
from lgjax.data.pipeline import data_source, eval_batches, image_shape, to_float, train_loader, train_source

__all__ = ['data_source', 'eval_batches', 'image_shape', 'mnist5k', 'to_float', 'train_loader', 'train_source']
