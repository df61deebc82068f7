"""Shapes: a generated 5-class task of outlined shapes, farther from MNIST than digits 5-9.

A second downstream task for the learngene story that needs no download:
28x28 grayscale strokes (circle, triangle, square, cross, line) drawn at a
random place, size, rotation, stroke width and brightness, over Gaussian
noise. Same size and layout as mnist5k's downstream role (400 train and 100
test images per class), so every mnist5k descendant preset runs on it by setting
`dataset.name='shapes'` (classes 'downstream' or 'all'; it has no 'source').
Generated once per process from fixed seeds: the same images on every machine.
"""

from __future__ import annotations

import functools

import numpy as np

CLASSES = ('circle', 'triangle', 'square', 'cross', 'line')
SPLITS = ('train', 'test')
CLASS_GROUPS = ('all', 'downstream')
PER_CLASS = {'train': 400, 'test': 100}
IMAGE_SHAPE = (28, 28, 1)
_SEED = {'train': 0, 'test': 1}


def _segments(name: str, radius: float, angle: float) -> np.ndarray:
  """(k, 2, 2) segment end points of one shape centred at 0."""
  if name in ('cross', 'line'):
    ends = radius * np.array([[1, 0], [0, 1]] if name == 'cross' else [[1, 0]])
    segs = np.stack([-ends, ends], axis=1)
  else:
    n = {'triangle': 3, 'square': 4}[name]
    t = angle + 2 * np.pi * np.arange(n) / n
    corners = radius * np.stack([np.cos(t), np.sin(t)], -1)
    return np.stack([corners, np.roll(corners, -1, axis=0)], axis=1)
  c, s = np.cos(angle), np.sin(angle)
  return segs @ np.array([[c, s], [-s, c]])


def _distance(points: np.ndarray, segs: np.ndarray) -> np.ndarray:
  """Distance from each point (P, 2) to the nearest segment (k, 2, 2)."""
  a, b = segs[:, 0][:, None], segs[:, 1][:, None]  # (k, 1, 2)
  ab = b - a
  t = np.clip(np.sum((points - a) * ab, -1) / np.sum(ab * ab, -1), 0.0, 1.0)
  return np.linalg.norm(points - a - t[..., None] * ab, axis=-1).min(0)


def draw(name: str, rng: np.random.Generator) -> np.ndarray:
  """One uint8 (28, 28, 1) image of shape `name`."""
  h, w = IMAGE_SHAPE[:2]
  radius = rng.uniform(6.0, 11.0)
  centre = rng.uniform(radius + 1, np.array([h, w]) - radius - 1)
  yy, xx = np.mgrid[:h, :w] + 0.5
  points = np.stack([yy, xx], -1).reshape(-1, 2) - centre
  if name == 'circle':
    d = np.abs(np.linalg.norm(points, axis=-1) - radius)
  else:
    d = _distance(points, _segments(name, radius, rng.uniform(0, 2 * np.pi)))
  stroke = np.clip(rng.uniform(0.8, 1.6) + 0.5 - d, 0.0, 1.0)  # anti-aliased half-width
  image = rng.uniform(0.5, 1.0) * stroke.reshape(h, w) + rng.normal(0.0, 0.08, (h, w))
  return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)[..., None]


@functools.cache
def _generate(split: str) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(_SEED[split])
  labels = np.tile(np.arange(len(CLASSES), dtype=np.int32), PER_CLASS[split])
  images = np.stack([draw(CLASSES[y], rng) for y in labels])
  images.flags.writeable = False
  return images, labels


def load(split: str, classes: str = 'all') -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, 28, 28, 1), labels int32 (N,)) of one split. Every class is
  downstream: `classes` 'all' and 'downstream' are the same 5."""
  if split not in SPLITS:
    raise ValueError(f'shapes split must be one of {SPLITS}, got {split!r}.')
  if classes not in CLASS_GROUPS:
    raise ValueError(f'shapes classes must be one of {CLASS_GROUPS}, got {classes!r}.')
  return _generate(split)
