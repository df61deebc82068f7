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
