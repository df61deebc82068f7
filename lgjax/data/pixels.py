"""Decoded pixels as array_record: the input format that keeps GPUs fed.

JPEG decoding bounds the input: PIL decodes about 150 ImageNet-sized images/s per
core, so a GPU host's cores feed a fraction of one H200 training DeiT-S
(benchmarks/results/gpu_h200.md). This module decodes a prepared split once and
writes it as records of uint8 pixels, each image resized so that its shorter side is
`shorter_side` (256 by default: ImageNet's evaluation resize), and reads them back
with nothing to decode: only the crop and resize of the augmentation are left.

The trade, as FFCV's stored resolution makes it: a training crop keeps its fraction
of the image, but not the detail of an original larger than the stored copy; an
evaluation center crop of 87.5 % of a 256-pixel copy is ImageNet's resize-256,
crop-224. A record is (height, width, channels: uint16; label: int32) then the pixels.

  python -m lgjax.data.pixels --dataset=imagenet2012 --out=DIR
      [--splits=train,validation] [--shorter_side=256] [--data_dir=TFDS_DIR] [--workers=N]
  python train.py ... --config.dataset.pixels_dir=DIR
"""

from __future__ import annotations

import argparse
import functools
import os
import struct
from typing import Any

import grain
import ml_collections
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from lgjax.data import pipeline

_HEADER = '<HHHi'  # height, width, channels, label (a format string: a Struct does not pickle)


def split_path(directory: str, split: str) -> str:
  """The file that holds `split` in a pixels directory."""
  return os.path.join(directory, f'{split}.array_record')


def shrink(image: np.ndarray, shorter_side: int) -> np.ndarray:
  """`image` (H, W, C uint8) resized (bilinear, aspect kept) so that its shorter side is
  `shorter_side`; an image already that small, as it is."""
  h, w = image.shape[:2]
  if min(h, w) <= shorter_side:
    return image
  scale = shorter_side / min(h, w)
  return pipeline.resize(image, max(shorter_side, round(w * scale)), max(shorter_side, round(h * scale)))


def encode(image: np.ndarray, label: int) -> bytes:
  image = np.ascontiguousarray(image, np.uint8)
  return struct.pack(_HEADER, *image.shape, int(label)) + image.tobytes()


def decode(record: bytes) -> dict[str, Any]:
  h, w, c, label = struct.unpack_from(_HEADER, record)
  image = np.frombuffer(record, np.uint8, h * w * c, struct.calcsize(_HEADER)).reshape(h, w, c)
  return {'image': image, 'label': label}


class PixelSource:
  """A split written by this module, as a random-access source (grain's protocol)."""

  def __init__(self, path: str):
    if not os.path.exists(path):
      directory, split = os.path.dirname(path), os.path.basename(path).rsplit('.', 1)[0]
      raise FileNotFoundError(
          f'dataset.pixels_dir={directory!r} has no {os.path.basename(path)}. Write the split once, '
          f'from the prepared tfds dataset:\n  python -m lgjax.data.pixels --dataset=NAME '
          f'--splits={split} --out={directory}')
    self.records = grain.sources.ArrayRecordDataSource([path])

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return decode(self.records[index])


def _record(source: Any, shorter_side: int, index: int) -> bytes:
  example = source[index]
  return encode(shrink(np.asarray(example['image']), shorter_side), example['label'])


def write(source: Any, path: str, *, shorter_side: int = 256, workers: int = 0) -> int:
  """Writes every example of `source` (a random-access source of {'image': uint8 (H, W, C),
  'label'}) to `path`, shrunk to `shorter_side`, in order; returns how many. The file is
  written under a temporary name and renamed when whole: a failure leaves no split."""
  if shorter_side < 1 or shorter_side >= 2 ** 16:
    raise ValueError(f'shorter_side must be in [1, 65535], got {shorter_side!r}.')
  records = grain.MapDataset.range(len(source)).map(functools.partial(_record, source, shorter_side))
  writer = ArrayRecordWriter(path + '.tmp', 'group_size:1,uncompressed')  # zstd: ~10 % smaller, 2.2x slower reads
  count, whole = 0, False
  try:  # in order, decoded and shrunk in grain's worker processes
    for count, record in enumerate(pipeline.read_in_parallel(records, 0, workers), 1):
      writer.write(record)
    whole = True
  finally:
    writer.close()
    if not whole:
      os.remove(path + '.tmp')
  os.replace(path + '.tmp', path)
  return count


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--dataset', required=True, help='a tfds name prepared as array_record (or an embedded one)')
  p.add_argument('--out', required=True, help='the pixels directory (dataset.pixels_dir)')
  p.add_argument('--splits', default='train,validation')
  p.add_argument('--shorter_side', type=int, default=256)
  p.add_argument('--data_dir', default='', help='the tfds data dir (default: TFDS\'s)')
  p.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='decoding processes (0: this one)')
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  dataset = ml_collections.ConfigDict(dict(name=args.dataset, data_dir=args.data_dir))
  for split in args.splits.split(','):
    source = pipeline.data_source(dataset, split)
    count = write(source, split_path(args.out, split), shorter_side=args.shorter_side, workers=args.workers)
    print(f'{args.dataset} {split}: {count} images -> {split_path(args.out, split)}')


if __name__ == '__main__':
  from lgjax.data import pixels  # the importable module, so that grain's workers unpickle its functions by name
  pixels.main()
