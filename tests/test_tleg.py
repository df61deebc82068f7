import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, TINY
from lgjax import tree as tree_lib
from lgjax.learngene import tleg
from lgjax.models import ViT, blocks


@pytest.fixture(scope='module')
def learngene():
  lg = tleg.init_learngene(jax.random.key(0), TINY, image_shape=IMAGE_SHAPE)
  # Non-trivial slopes everywhere, so the formula is exercised on every leaf.
  rng = np.random.default_rng(1)
  lg['slope'] = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), lg['slope'])
  return lg


def numpy_expand(lg, depth):
  """The formula from the paper's code, independently: block l = A + l/L * B."""
  flat_a = dict(tree_lib.flatten_with_names(lg['base']))
  flat_b = dict(tree_lib.flatten_with_names(lg['slope']))
  out = {f'Transformer/encoderblock_{l}/{n}': np.asarray(flat_a[n]) + (l / depth) * np.asarray(flat_b[n])
         for l in range(depth) for n in flat_a}
  out.update({n: np.asarray(x) for n, x in tree_lib.flatten_with_names(lg['shared'])})
  return out


@pytest.mark.parametrize('depth', [1, 2, 5])
@pytest.mark.parametrize('scan', [False, True])
def test_expand_matches_numpy(learngene, depth, scan):
  params = tleg.expand(learngene, depth, scan=scan)
  got = dict(tree_lib.flatten_with_names(blocks.to_unscanned(params) if scan else params))
  want = numpy_expand(learngene, depth)
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
  assert blocks.is_scanned(params) == scan


def test_expanded_params_run_in_the_vit(learngene):
  params = tleg.expand(learngene, 4)
  out = jax.jit(ViT(**{**TINY, 'depth': 4}).apply)({'params': params}, jnp.ones((2, *IMAGE_SHAPE)))
  assert out.shape == (2, TINY['num_classes'])


def test_jit_equals_eager(learngene):
  eager = tleg.expand(learngene, 3)
  jitted = jax.jit(tleg.expand, static_argnums=1)(learngene, 3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), eager, jitted)


def test_gradient_reaches_base_and_slope(learngene):
  model = ViT(**{**TINY, 'depth': 3})
  x = jax.random.normal(jax.random.key(0), (2, *IMAGE_SHAPE))

  def loss(lg):
    return jnp.sum(model.apply({'params': tleg.expand(lg, 3)}, x) ** 2)

  lg = dict(learngene, shared={**learngene['shared'], 'head': jax.tree.map(
      lambda v: v + 0.1, learngene['shared']['head'])})  # a zero head blocks all gradients
  grads = jax.jit(jax.grad(loss))(lg)
  for part in ('base', 'slope'):
    norms = {n: float(jnp.abs(g).sum()) for n, g in tree_lib.flatten_with_names(grads[part]['MultiHeadDotProductAttention_0'])}
    assert all((v == 0) == (n == 'key/bias') for n, v in norms.items()), (part, norms)  # softmax ignores the key's bias
  # d/dslope = sum_l (l/L) d/dblock_l: check on one leaf against the expanded grads.
  block_grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({'params': p}, x) ** 2)))(tleg.expand(lg, 3))
  per_block = [block_grads['Transformer'][f'encoderblock_{l}']['LayerNorm_1']['bias'] for l in range(3)]
  np.testing.assert_allclose(grads['slope']['LayerNorm_1']['bias'],
                             sum((l / 3) * g for l, g in enumerate(per_block)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads['base']['LayerNorm_1']['bias'], sum(per_block), rtol=1e-4, atol=1e-6)


def test_init_follows_the_paper():
  lg = tleg.init_learngene(jax.random.key(3), {**TINY, 'width': 64, 'mlp_dim': 256}, image_shape=IMAGE_SHAPE)
  for part, ln_scale in (('base', 1.0), ('slope', 0.0)):
    for name, x in tree_lib.flatten_with_names(lg[part]):
      x = np.asarray(x)
      if name.endswith('scale'):
        np.testing.assert_array_equal(x, ln_scale)
      elif name.endswith('bias'):
        np.testing.assert_array_equal(x, 0.0)
      else:
        # std 0.02 (timm's trunc_normal_(std=.02)), cut at +-2 of the untruncated normal's std
        assert abs(x.std() - 0.02) < 0.002 and np.abs(x).max() <= 2 * 0.02 / 0.8796 + 1e-6, name
  assert not np.allclose(lg['base']['MlpBlock_0']['Dense_0']['kernel'], lg['slope']['MlpBlock_0']['Dense_0']['kernel'])


@pytest.mark.parametrize('depth', [1, 4])
@pytest.mark.parametrize('scan', [False, True])
def test_fit_round_trip(learngene, depth, scan):
  params = tleg.expand(learngene, depth, scan=scan)
  refit = tleg.fit(params)
  again = tleg.expand(refit, depth, scan=scan)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), again, params)
  if depth > 1:  # with several blocks the fit recovers the learngene itself
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 refit['slope'], learngene['slope'])


def test_fit_is_least_squares():
  rng = np.random.default_rng(0)
  stacked = rng.standard_normal((5, 7)).astype(np.float32)
  params = {'Transformer': {f'encoderblock_{l}': {'w': stacked[l]} for l in range(5)}}
  lg = tleg.fit(params)
  t = np.arange(5) / 5
  design = np.stack([np.ones(5), t], axis=1)
  (a, b), *_ = np.linalg.lstsq(design, stacked, rcond=None)
  np.testing.assert_allclose(lg['base']['w'], a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(lg['slope']['w'], b, rtol=1e-5, atol=1e-5)


def test_errors(learngene):
  with pytest.raises(ValueError, match=r'depth must be an integer >= 1, got 0'):
    tleg.expand(learngene, 0)
  with pytest.raises(ValueError, match=r"missing \['slope'\], extra \[\]"):
    tleg.expand({k: v for k, v in learngene.items() if k != 'slope'}, 2)
  with pytest.raises(ValueError, match=r"missing \[\], extra \['stages'\]"):
    tleg.expand({**learngene, 'stages': []}, 2)
  bad_slope = jax.tree.map(lambda x: x, learngene['slope'])
  bad_slope['MlpBlock_0']['Dense_0']['kernel'] = jnp.zeros((32, 65))
  with pytest.raises(ValueError, match=r"'slope' does not match 'base': 'MlpBlock_0/Dense_0/kernel' has shape \(32, 65\), expected \(32, 64\)"):
    tleg.expand({**learngene, 'slope': bad_slope}, 2)
  del bad_slope['LayerNorm_0']
  with pytest.raises(ValueError, match=r"missing 'LayerNorm_0/bias'"):
    tleg.check({**learngene, 'slope': bad_slope})
  with pytest.raises(ValueError, match=r'TLEG learngene has width=32 but the requested model has width=64'):
    tleg.check(learngene, {**TINY, 'width': 64})
  with pytest.raises(ValueError, match=r'num_heads must be a positive divisor of width=32, got 3'):
    tleg.init_learngene(jax.random.key(0), {**TINY, 'num_heads': 3}, image_shape=IMAGE_SHAPE)
