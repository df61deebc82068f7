"""Input images/s per host: lgjax's train pipeline on an ImageNet-style array_record set.

The set is generated here (no download): `--examples` JPEGs of ImageNet's typical
size (500x375, or --source-size; quality 90, smooth random content), one array_record file, read
through grain's ArrayRecordDataSource and decoded with PIL per access, as a tfds
array_record source is. The pipelines are lgjax.data's own: train_loader (global
shuffle, this process's rows, Inception crop + flip to 224) and, with --splits eval,
eval_batches (the split once, center crop), in the main process,
in `input_threads` threads, or in `input_workers` grain processes. Each row says
how many images/s one host delivers and how many accelerators' steps that feeds
at a given per-device step rate (--need, e.g. DeiT-S bf16 on an H200: 8,000 img/s).
Each row is read in both formats, in turns: the JPEGs, and the same images written
once as decoded pixels (lgjax.data.pixels, dataset.pixels_dir), which leave only the
crop and resize to the input.

  python -m benchmarks.input_pipeline [--workers 0,2 --threads 0,2 --batch 128 --batches 8 --splits train,eval]
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import tempfile
import time

import grain
import ml_collections
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from lgjax.data import pipeline, pixels


def write_set(path: str, examples: int, size=(500, 375), seed: int = 0) -> None:
  """`examples` records of (label: uint32, JPEG bytes)."""
  rng = np.random.default_rng(seed)
  writer = ArrayRecordWriter(path, 'group_size:1')
  base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
  for i in range(examples):
    noise = rng.normal(0, 20, (-(-size[1] // 8), -(-size[0] // 8), 3)).repeat(8, 0).repeat(8, 1)
    noise = noise[:size[1], :size[0]]
    image = np.clip(np.roll(base, i * 7, axis=1) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='JPEG', quality=90)
    writer.write(struct.pack('<I', i % 1000) + buffer.getvalue())
  writer.close()


class JpegSource:
  """Random access to the set, decoding each JPEG on read (what tfds.data_source does)."""

  def __init__(self, path: str):
    self.records = grain.sources.ArrayRecordDataSource([path])

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    record = self.records[index]
    image = np.asarray(Image.open(io.BytesIO(record[4:])).convert('RGB'))
    return {'image': image, 'label': struct.unpack('<I', record[:4])[0]}


def images_per_second(loader, batch: int, batches: int, **kw) -> float:
  """Rate of `batches` batches of `loader(batch, **kw)` after a first round of one batch
  per worker (which pays for starting the workers and threads)."""
  it = iter(loader(batch, **kw))
  for _ in range(max(1, kw.get('num_workers', 0))):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch / (time.perf_counter() - start)
  it.close()
  return rate


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--examples', type=int, default=2048)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--batches', type=int, default=8, help='timed batches per row')
  p.add_argument('--workers', default='0,2', help='comma-separated input_workers values')
  p.add_argument('--threads', default='0,2', help='comma-separated input_threads values')
  p.add_argument('--splits', default='train', help="comma-separated: 'train' (Inception crop + flip), 'eval' "
                 '(center crop, the whole split once: --batches must fit in --examples)')
  p.add_argument('--need', type=float, default=8000.0, help='images/s one accelerator consumes')
  p.add_argument('--source-size', default='500x375',
                 help="stored JPEGs' WxH: ImageNet's typical 500x375, or e.g. 341x256 for records resized to a "
                      'shorter side of 256 when written')
  p.add_argument('--dir', default='', help='where to write the set (default: a temporary directory)')
  p.add_argument('--formats', default='jpeg,pixels',
                 help="comma-separated: 'jpeg' (the stored JPEGs, decoded on read, as tfds.data_source) and "
                      "'pixels' (the same images written once by lgjax.data.pixels, shorter side 256)")
  args = p.parse_args()
  directory = args.dir or tempfile.mkdtemp(prefix='lgjax_input_')
  os.makedirs(directory, exist_ok=True)
  size = tuple(int(v) for v in args.source_size.split('x'))
  path = os.path.join(directory, f'train_{args.source_size}.array_record')
  if not os.path.exists(path):
    write_set(path, args.examples, size)
  sources = {'jpeg': JpegSource(path)}
  if 'pixels' in args.formats:
    pixels_path = os.path.join(directory, f'pixels_{args.source_size}.array_record')
    if not os.path.exists(pixels_path):
      pixels.write(sources['jpeg'], pixels_path, workers=max(map(int, args.workers.split(','))))
    sources['pixels'] = pixels.PixelSource(pixels_path)
  dataset = ml_collections.ConfigDict(dict(name='generated', train_split='train', eval_split='validation',
                                           image_size=224, augment='inception', train_fraction=1.0))
  loaders = {'train': lambda b, **kw: pipeline.train_loader(dataset, batch_size=b, seed=0, **kw),
             'eval': lambda b, **kw: pipeline.eval_batches(dataset, local_batch_size=b, **kw)}

  cores = len(os.sched_getaffinity(0))
  print(f'{len(sources["jpeg"])} JPEGs {args.source_size} -> Inception crop 224, batch {args.batch}, {cores} cores; '
        f'one accelerator needs {args.need:.0f} images/s')
  print(f'| {"format":<6} | {"split":<5} | {"workers":>7} | {"threads":>7} | {"images/s":>8} | {"accelerators fed":>16} |')
  print(f'|{"-" * 8}|{"-" * 7}|{"-" * 9}|{"-" * 9}|{"-" * 10}|{"-" * 18}|')
  for split in args.splits.split(','):
    for workers in (int(w) for w in args.workers.split(',')):
      for threads in (int(t) for t in args.threads.split(',')):
        for form in args.formats.split(','):  # side by side, in turns
          pipeline.data_source = lambda *_, source=sources[form]: source  # stands in for the prepared splits
          rate = images_per_second(loaders[split], args.batch, args.batches, num_workers=workers,
                                   num_threads=threads)
          print(f'| {form:<6} | {split:<5} | {workers:7d} | {threads:7d} | {rate:8.0f} | {rate / args.need:16.2f} |',
                flush=True)


if __name__ == '__main__':
  main()
