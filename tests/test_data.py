import os

import jax
import ml_collections
import numpy as np
import pytest

from lgjax import data
from lgjax.data import mnist5k, pipeline, shapes


def dataset(**kw):
  return ml_collections.ConfigDict(dict(dict(name='mnist5k', classes='downstream', train_split='train',
                                             eval_split='test', image_size=28, augment='none',
                                             train_fraction=1.0), **kw))


def test_mnist5k_splits_are_deterministic_disjoint_and_relabelled():
  train, train_labels = mnist5k.load('train', 'downstream')
  test, test_labels = mnist5k.load('test', 'downstream')
  assert train.shape == (2000, 28, 28, 1) and test.shape == (500, 28, 28, 1) and train.dtype == np.uint8
  assert np.bincount(train_labels).tolist() == [400] * 5 and np.bincount(test_labels).tolist() == [100] * 5
  rows = lambda a: {r.tobytes() for r in a}
  assert not rows(train) & rows(test)
  all_train, all_labels = mnist5k.load('train', 'all')
  assert rows(train) <= rows(all_train)  # the same split whichever class group is asked for
  np.testing.assert_array_equal(mnist5k.load('train', 'downstream')[0], train)
  with pytest.raises(ValueError, match=r"mnist5k classes must be one of \['all', 'downstream', 'source'\], got 'odd'"):
    mnist5k.load('train', 'odd')


def test_train_fraction_and_eval_padding():
  assert len(pipeline.train_source(dataset())) == 2000
  small = dataset()
  small.train_fraction = 0.25
  assert len(pipeline.train_source(small)) == 500
  batches = list(data.eval_batches(dataset(), local_batch_size=16))
  assert len(batches) == 32 and sum(b['mask'].sum() for b in batches) == 500
  assert batches[-1]['mask'].tolist() == [1.0] * 4 + [0.0] * 12
  assert batches[0]['image'].dtype == np.uint8  # pixels as stored: the step scales them on the device
  np.testing.assert_array_equal(batches[0]['image'], mnist5k.load('test', 'downstream')[0][:16])
  small.train_fraction = 0.0
  with pytest.raises(ValueError, match=r'dataset.train_fraction must be in \(0, 1\], got 0.0'):
    pipeline.train_source(small)


def test_to_float_scales_pixels_to_the_unit_range_and_keeps_floats():
  pixels = np.arange(256, dtype=np.uint8).reshape(2, 128)
  for scale in (data.to_float, jax.jit(data.to_float)):  # the steps call it jitted
    got = np.asarray(scale(pixels)).ravel()
    assert got.dtype == np.float32 and got[0] == -1 and got[-1] == 1
    np.testing.assert_allclose(got, np.arange(256) / 127.5 - 1, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(got, -got[::-1])
  scaled = np.array([-0.5, 0.25], np.float32)
  np.testing.assert_array_equal(data.to_float(scaled), scaled)


def test_train_stream_is_deterministic_and_resumable():
  def take(n, **kw):
    it = iter(data.train_loader(dataset(), batch_size=8, seed=3, **kw))
    batches = [next(it) for _ in range(n)]
    it.close()
    return batches

  first = take(3)
  for a, b in zip(first, take(3)):
    np.testing.assert_array_equal(a['image'], b['image'])
  straight = take(5)
  resumed = take(2, start=3)  # a run resumed at step 3 reads batches 3, 4
  for a, b in zip(resumed, straight[3:]):
    np.testing.assert_array_equal(a['image'], b['image'])
  epoch = np.concatenate([b['label'] for b in take(250)])  # 2000 examples: one epoch
  assert np.bincount(epoch).tolist() == [400] * 5


@pytest.mark.slow  # grain worker processes
def test_worker_processes_read_the_same_stream():
  """Augmented batches from 2 grain worker processes (and from 2 threads) are the
  in-process stream, from the start and from a resumed position; so is the eval split."""
  augmented = dataset()
  augmented.augment = 'inception'

  def take(start, **kw):
    it = iter(data.train_loader(augmented, batch_size=8, seed=3, start=start, **kw))
    batches = [next(it) for _ in range(5)]
    it.close()
    return batches

  for start in (0, 3):
    want = take(start)
    for kw in ({'num_workers': 2}, {'num_threads': 2}):
      for a, b in zip(take(start, **kw), want):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])
  want = list(data.eval_batches(augmented, local_batch_size=64))  # 500 images: 8 batches, the last padded
  for kw in ({'num_workers': 2}, {'num_threads': 2}):
    got = list(data.eval_batches(augmented, local_batch_size=64, **kw))
    assert len(got) == len(want) == 8
    for a, b in zip(got, want):
      for key in ('image', 'label', 'mask'):
        np.testing.assert_array_equal(a[key], b[key])


def test_shapes_is_balanced_deterministic_and_drawn_where_expected():
  images, labels = shapes.load('train')
  test_images, _ = shapes.load('test', 'downstream')
  assert images.shape == (2000, 28, 28, 1) and images.dtype == np.uint8 and test_images.shape[0] == 500
  assert np.bincount(labels).tolist() == [400] * 5
  assert not np.array_equal(images[:500], test_images)  # other seeds
  # a circle of radius r around c lights pixels at distance ~r from c, not c itself
  circle = shapes.draw('circle', np.random.default_rng(3))[..., 0].astype(float)
  bright = circle > 0.6 * circle.max()
  ys, xs = np.nonzero(bright)
  r = np.hypot(ys - ys.mean(), xs - xs.mean())
  assert r.std() < 1.0 and 5 < r.mean() < 11 and not bright[int(ys.mean()), int(xs.mean())]
  shapes._generate.cache_clear()
  assert np.array_equal(shapes.load('train')[0], images)  # regenerated from the same seeds
  source = pipeline.data_source(dataset(name='shapes', classes='downstream'), 'test')
  assert len(source) == 500 and source[7]['label'] == 2
  with pytest.raises(ValueError, match="shapes classes must be one of .*got 'source'"):
    shapes.load('train', 'source')


def test_pixel_records_hold_the_images_shrunk_to_their_shorter_side(tmp_path):
  from PIL import Image
  from lgjax.data import pixels
  rng = np.random.default_rng(0)
  shapes_hw = [(40, 30, 3), (47, 41, 3), (10, 12, 1), (60, 40, 1)]
  source = [{'image': rng.integers(0, 256, s, dtype=np.uint8), 'label': 7 * i} for i, s in enumerate(shapes_hw)]
  path = pixels.split_path(str(tmp_path), 'train')
  assert pixels.write(source, path, shorter_side=32) == 4 and path.endswith('train.array_record')
  got = pixels.PixelSource(path)
  assert len(got) == 4 and [got[i]['label'] for i in range(4)] == [0, 7, 14, 21]
  # aspect kept, by hand: 47x41 -> 41 becomes 32, 47 * 32 / 41 = 36.7 -> 37; 60x40 -> 48x32
  assert [got[i]['image'].shape for i in range(4)] == [(40, 30, 3), (37, 32, 3), (10, 12, 1), (48, 32, 1)]
  for i in (0, 2):  # as small as asked already: kept byte for byte
    np.testing.assert_array_equal(got[i]['image'], source[i]['image'])
  want = np.asarray(Image.fromarray(source[1]['image']).resize((32, 37), Image.BILINEAR))
  np.testing.assert_array_equal(got[1]['image'], want)
  assert pixels.write(source, str(tmp_path / 'by_workers.array_record'), shorter_side=32, workers=2) == 4
  assert (tmp_path / 'by_workers.array_record').read_bytes() == open(path, 'rb').read()  # same order, same bytes
  assert not list(tmp_path.glob('*.tmp'))

  class Unreadable(list):
    def __getitem__(self, index):
      if index == 2:
        raise OSError('a damaged record')
      return super().__getitem__(index)

  with pytest.raises(OSError, match='a damaged record'):
    pixels.write(Unreadable(source), str(tmp_path / 'broken.array_record'), shorter_side=32)
  assert not list(tmp_path.glob('broken*'))  # no split, whole or partial
  with pytest.raises(FileNotFoundError, match=r"dataset.pixels_dir='/no/pixels' has no validation.array_record"
                                              r"(.|\n)*python -m lgjax.data.pixels --dataset=NAME --splits=validation"):
    pipeline.data_source(dataset(pixels_dir='/no/pixels'), 'validation')


@pytest.mark.slow  # a subprocess with worker processes
def test_the_pixels_command_writes_every_split_in_worker_processes(tmp_path):
  import subprocess
  import sys
  from conftest import ROOT
  from lgjax.data import pixels
  result = subprocess.run([sys.executable, '-m', 'lgjax.data.pixels', '--dataset=shapes', f'--out={tmp_path}',
                           '--splits=train,test', '--shorter_side=20', '--workers=2'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'shapes test: 500 images' in result.stdout and 'RuntimeWarning' not in result.stderr
  images, labels = shapes.load('test', 'all')
  written = pixels.PixelSource(pixels.split_path(str(tmp_path), 'test'))
  assert len(written) == 500 and [written[i]['label'] for i in (0, 499)] == [labels[0], labels[499]]
  np.testing.assert_array_equal(written[7]['image'], pixels.shrink(images[7], 20))


@pytest.mark.slow  # writes, then trains end to end
def test_a_prepared_dataset_trains_from_its_pixel_records(tmp_path):
  """The tool writes a (mock) tfds dataset's splits once; a run then reads only them."""
  import tensorflow_datasets as tfds
  from conftest import run_config
  from lgjax.data import pixels
  from lgjax.train import train_and_evaluate
  with tfds.testing.mock_data(num_examples=24):  # 32x32 images
    pixels.main(['--dataset=cifar10', f'--out={tmp_path / "pixels"}', '--splits=train,test', '--shorter_side=24',
                 '--workers=0'])
  assert len(pixels.PixelSource(pixels.split_path(str(tmp_path / 'pixels'), 'test'))) == 24
  first = pixels.PixelSource(pixels.split_path(str(tmp_path / 'pixels'), 'train'))[0]
  assert first['image'].shape == (24, 24, 3) and 0 <= first['label'] < 10
  config = run_config('teacher', total_steps=2, **{'model.num_classes': 10, 'model.patch_size': 8})
  config.dataset.update(name='cifar10', image_size=16, num_classes=10, augment='inception', train_split='train',
                        eval_split='test', pixels_dir=str(tmp_path / 'pixels'))
  final = train_and_evaluate(config, str(tmp_path / 'run'))  # outside mock_data: tfds is not read
  assert np.isfinite(final['loss']) and 'eval_accuracy' in final
