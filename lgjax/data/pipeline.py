"""Input: random-access sources (tfds or embedded) read through grain.

Training reads a grain dataset: indices shuffled per epoch from a seed and
cut into global batches, each process reading only its rows, so one process
and many see the same global batches; a run resumed at step s starts the
stream at batch s, so it sees exactly the batches an uninterrupted run would. Evaluation walks the
split once, in order, strided over processes, padded to whole batches with a
`mask` so every example counts exactly once. Both read in the same threads or
worker processes, and yield uint8 pixels that the steps scale on the device
(to_float): a quarter of float32's bytes through shared memory and to the devices.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from PIL import Image

from lgjax.data import mnist5k, shapes

AUGMENTS = ('none', 'inception')
EMBEDDED = {'mnist5k': mnist5k.load, 'shapes': shapes.load}  # offline, in memory


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """In-memory random-access source (grain's RandomAccessDataSource protocol)."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'image': self.images[index], 'label': self.labels[index]}


@dataclasses.dataclass(frozen=True)
class Subset:
  """The records `indices` of `source`, e.g. a fraction of the training set."""
  source: Any
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[int(self.indices[index])]


def data_source(dataset: Any, split: str) -> Any:
  """The split of `dataset` (a config with `name`, ...) as a random-access source: the
  split's decoded pixels where `dataset.pixels_dir` is set (lgjax.data.pixels)."""
  if dataset.get('pixels_dir'):
    from lgjax.data import pixels  # not at import: `python -m lgjax.data.pixels` runs it as __main__
    return pixels.PixelSource(pixels.split_path(dataset.pixels_dir, split))
  if dataset.name in EMBEDDED:
    return ArraySource(*EMBEDDED[dataset.name](split, dataset.get('classes', 'all')))
  import tensorflow_datasets as tfds  # only needed for tfds datasets
  data_dir = dataset.get('data_dir') or None
  try:
    return tfds.data_source(dataset.name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for "not prepared here"
    raise FileNotFoundError(
        f'dataset.name={dataset.name!r}: the tfds split {split!r} is not prepared in dataset.data_dir='
        f'{data_dir or "None (the default TFDS data dir)"} ({type(e).__name__}: '
        f'{str(e).strip().splitlines()[0][:200]}). Prepare it '
        f'once, in the array_record format that random access needs (tfds build needs TensorFlow, '
        f'which the "data" extra brings):\n'
        f'  pip install -e ".[data]"\n'
        f'  tfds build {dataset.name} --file_format=array_record'
        + (f' --data_dir={data_dir}' if data_dir else '')) from None


def class_groups(name: str) -> tuple[str, ...] | None:
  """The values `dataset.classes` takes for embedded dataset `name`; None for tfds ones."""
  return {'mnist5k': tuple(sorted(mnist5k.CLASSES)), 'shapes': shapes.CLASS_GROUPS}.get(name)


def num_classes(dataset: Any) -> int | None:
  """The number of classes of an embedded dataset's chosen group; None for tfds ones."""
  if dataset.name == 'mnist5k':
    group = mnist5k.CLASSES.get(dataset.get('classes', 'all'))
    return len(group) if group else None
  if dataset.name == 'shapes':
    return len(shapes.CLASSES)
  return None


def train_source(dataset: Any) -> Any:
  """The training split, cut to `dataset.train_fraction` by a fixed permutation."""
  source = data_source(dataset, dataset.train_split)
  fraction = dataset.get('train_fraction', 1.0)
  if not 0 < fraction <= 1:
    raise ValueError(f'dataset.train_fraction must be in (0, 1], got {fraction!r}.')
  if fraction < 1:
    keep = max(1, int(round(fraction * len(source))))
    source = Subset(source, np.sort(np.random.default_rng(0).permutation(len(source))[:keep]))
  return source


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """`image` (H, W, C uint8) resized bilinearly to (height, width, C), one channel included."""
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out[..., None] if squeeze else out


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  return resize(image, size, size)


def _random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                         scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style crop (as timm/DeiT and big_vision's inception_crop)."""
  h, w = image.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    ch, cw = int(round(math.sqrt(area / aspect))), int(round(math.sqrt(area * aspect)))
    if 0 < ch <= h and 0 < cw <= w:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      return _resize(image[top:top + ch, left:left + cw], size)
  return _resize(image, size)


def _center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  h, w = image.shape[:2]
  side = int(min(h, w) * crop_fraction)
  top, left = (h - side) // 2, (w - side) // 2
  return _resize(image[top:top + side, left:left + side], size)


def to_float(images: Any) -> jax.Array:
  """Images as models read them: uint8 pixels scaled to float32 in [-1, 1]; float
  images (already scaled) as they are. The loaders yield uint8, 4x fewer bytes from
  the input workers to the devices; the steps scale them there, with this."""
  images = jnp.asarray(images)
  # (x - 127.5) / 127.5 rather than x / 127.5 - 1: exactly ±1 at 0 and 255, and symmetric,
  # also where XLA multiplies by the reciprocal
  return (images.astype(jnp.float32) - 127.5) / 127.5 if images.dtype == jnp.uint8 else images


class Preprocess:
  """uint8 image -> uint8 image at `image_size`, augmented when training (to_float
  scales it on the device)."""

  def __init__(self, image_size: int, augment: str, train: bool):
    if augment not in AUGMENTS:
      raise ValueError(f'dataset.augment must be one of {AUGMENTS}, got {augment!r}.')
    self.image_size, self.augment, self.train = image_size, augment, train

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    image = np.asarray(example['image'])
    if self.augment == 'inception':
      if self.train:
        image = _random_resized_crop(image, self.image_size, rng)
        if rng.uniform() < 0.5:
          image = image[:, ::-1]
      else:
        image = _center_crop(image, self.image_size)
    elif image.shape[0] != self.image_size or image.shape[1] != self.image_size:
      image = _resize(image, self.image_size)
    return {'image': image, 'label': np.int32(example['label'])}


def read_in_parallel(ds: grain.MapDataset, num_threads: int, num_workers: int) -> grain.IterDataset:
  """`ds` read in order by `num_threads` threads of this process, or by `num_workers`
  grain worker processes (element i from worker i mod n, read back in order)."""
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 if num_threads else 0))
  if num_workers:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a library caller has none
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2))
  return ds


def train_loader(dataset: Any, *, batch_size: int, seed: int, start: int = 0, num_threads: int = 0,
                 num_workers: int = 0) -> grain.IterDataset:
  """Endless batches from global batch `start` on: this process's rows of each.

  The global stream is the same for any number of processes (indices shuffled
  per epoch from `seed`, cut into global batches); process p reads only rows
  [p·b, (p+1)·b) of each. Example k of the stream is augmented with a
  generator seeded by (seed, k). Batch i is a pure function of (seed, i), so a
  run resumed at step s reads from `start=s` the batches an uninterrupted run
  would, whatever the number of processes, threads or workers before and after.
  `num_threads` read and augment in this process; `num_workers` > 0 do it in
  that many grain worker processes (batch i from worker i mod n, read back in order).
  """
  source = train_source(dataset)
  processes, me = jax.process_count(), jax.process_index()
  if batch_size % processes:
    raise ValueError(f'batch_size={batch_size} must be a multiple of the number of processes ({processes}).')
  local = batch_size // processes
  preprocess = Preprocess(dataset.image_size, dataset.augment, train=True)

  def read(batch_index: int, indices: np.ndarray) -> dict[str, np.ndarray]:
    first = batch_index * batch_size + me * local
    examples = [preprocess(source[int(i)], np.random.default_rng((seed, first + j)))
                for j, i in enumerate(indices[me * local:(me + 1) * local])]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
  return read_in_parallel(ds.batch(batch_size, drop_remainder=True).map_with_index(read)[start:],
                          num_threads, num_workers)


def eval_batches(dataset: Any, *, local_batch_size: int, num_threads: int = 0,
                 num_workers: int = 0) -> grain.IterDataset:
  """The eval split once, strided over processes; every process yields the same
  number of batches, padding marked by mask == 0. Read and preprocessed as
  train_loader reads, in `num_threads` threads or `num_workers` processes (decoding
  a 50,000-image validation split in one thread would stall the devices for minutes)."""
  source = data_source(dataset, dataset.eval_split)
  preprocess = Preprocess(dataset.image_size, dataset.augment, train=False)
  mine = np.arange(jax.process_index(), len(source), jax.process_count())
  per_process = math.ceil(len(source) / jax.process_count())
  rng = np.random.default_rng(0)  # unused by eval preprocessing

  def read(b: int) -> dict[str, np.ndarray]:
    idx = mine[b * local_batch_size:(b + 1) * local_batch_size]
    examples = [preprocess(source[int(i)], rng) for i in idx]
    pad = local_batch_size - len(examples)
    template = examples[0] if examples else preprocess(source[0], rng)
    examples += [template] * pad
    return {'image': np.stack([e['image'] for e in examples]),
            'label': np.stack([e['label'] for e in examples]),
            'mask': np.array([1.0] * (local_batch_size - pad) + [0.0] * pad, np.float32)}

  return read_in_parallel(grain.MapDataset.range(math.ceil(per_process / local_batch_size)).map(read),
                          num_threads, num_workers)


def image_shape(dataset: Any) -> tuple[int, int, int]:
  """(H, W, C) of preprocessed images, read off the first training example."""
  example = data_source(dataset, dataset.train_split)[0]
  return dataset.image_size, dataset.image_size, int(np.shape(example['image'])[-1])
