import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, TINY
from lgjax import tree as tree_lib
from lgjax.learngene import sws
from lgjax.models import ViT, blocks


@pytest.fixture(scope='module')
def learngene():
  return sws.init_learngene(jax.random.key(0), TINY, 3, image_shape=IMAGE_SHAPE)


def numpy_expand(lg, stage_depths):
  """Stage s copied stage_depths[s] times, in order, written independently."""
  out = {n: np.asarray(x) for n, x in tree_lib.flatten_with_names(lg['shared'])}
  layer = 0
  for stage, d in zip(lg['stages'], stage_depths):
    for _ in range(d):
      out.update({f'Transformer/encoderblock_{layer}/{n}': np.asarray(x)
                  for n, x in tree_lib.flatten_with_names(stage)})
      layer += 1
  return out


@pytest.mark.parametrize('stage_depths', [(1, 1, 1), (3, 1, 2), (2, 2, 1)])
@pytest.mark.parametrize('scan', [False, True])
def test_expand_matches_numpy(learngene, stage_depths, scan):
  params = sws.expand(learngene, stage_depths, scan=scan)
  got = dict(tree_lib.flatten_with_names(blocks.to_unscanned(params) if scan else params))
  want = numpy_expand(learngene, stage_depths)
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_stages_differ_and_jit_matches(learngene):
  assert not np.allclose(learngene['stages'][0]['MlpBlock_0']['Dense_0']['kernel'],
                         learngene['stages'][1]['MlpBlock_0']['Dense_0']['kernel'])
  eager = sws.expand(learngene, (2, 1, 1))
  jitted = jax.jit(sws.expand, static_argnums=1)(learngene, (2, 1, 1))
  jax.tree.map(np.testing.assert_array_equal, eager, jitted)
  out = jax.jit(ViT(**{**TINY, 'depth': 4}).apply)({'params': eager}, jnp.ones((1, *IMAGE_SHAPE)))
  assert out.shape == (1, TINY['num_classes'])


def test_gradient_sums_over_copies(learngene):
  model = ViT(**{**TINY, 'depth': 3})
  x = jax.random.normal(jax.random.key(0), (2, *IMAGE_SHAPE))
  lg = dict(learngene, shared={**learngene['shared'], 'head': jax.tree.map(lambda v: v + 0.1, learngene['shared']['head'])})
  f = lambda p: jnp.sum(model.apply({'params': p}, x) ** 2)
  grads = jax.jit(jax.grad(lambda l: f(sws.expand(l, (1, 1, 1)))))(lg)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads['stages'][0]['MlpBlock_0']))
  lg2 = {'shared': lg['shared'], 'stages': lg['stages'][:2]}
  g2 = jax.jit(jax.grad(lambda l: f(sws.expand(l, (2, 1)))))(lg2)
  gp = jax.jit(jax.grad(f))(sws.expand(lg2, (2, 1)))['Transformer']
  np.testing.assert_allclose(g2['stages'][0]['LayerNorm_0']['bias'],
                             gp['encoderblock_0']['LayerNorm_0']['bias'] + gp['encoderblock_1']['LayerNorm_0']['bias'],
                             rtol=1e-4, atol=1e-6)


def test_paper_defaults_and_split_rule():
  assert sum(sws.AUX_STAGE_DEPTHS) == 16 and len(sws.AUX_STAGE_DEPTHS) == 5
  assert sws.split_depth(12, 5) == sws.DESCENDANT_STAGE_DEPTHS == (3, 3, 2, 2, 2)
  assert sws.split_depth(5, 5) == (1, 1, 1, 1, 1)
  assert sws.split_depth(7, 3) == (3, 2, 2)
  for depth in range(3, 20):
    parts = sws.split_depth(depth, 3)
    assert sum(parts) == depth and max(parts) - min(parts) <= 1
  with pytest.raises(ValueError, match='depth must be >= num_stages=5 so that every stage gets a block, got depth=4'):
    sws.split_depth(4, 5)


def test_errors(learngene):
  with pytest.raises(ValueError, match=r'stage_depths must be a sequence of 3 integers >= 1 \(one per stage\), got \(1, 1\)'):
    sws.expand(learngene, (1, 1))
  with pytest.raises(ValueError, match=r'stage_depths\[1\] must be an integer >= 1, got 0'):
    sws.expand(learngene, (1, 0, 1))
  with pytest.raises(ValueError, match=r"SWS learngene must have keys \['shared', 'stages'\]; missing \['stages'\], extra \['base'\]"):
    sws.expand({'shared': learngene['shared'], 'base': {}}, (1, 1, 1))
  stages = list(learngene['stages'])
  stages[2] = {k: v for k, v in stages[2].items() if k != 'MlpBlock_0'}
  with pytest.raises(ValueError, match=r"'stages\[2\]' does not match 'stages\[0\]': missing 'MlpBlock_0/Dense_0/bias'"):
    sws.expand({**learngene, 'stages': stages}, (1, 1, 1))
  with pytest.raises(ValueError, match='stages must be a non-empty list'):
    sws.expand({**learngene, 'stages': []}, ())
  with pytest.raises(ValueError, match=r'SWS learngene has num_heads=4 but the requested model has num_heads=8'):
    sws.check(learngene, {**TINY, 'num_heads': 8})
