import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, TINY, random_like
from lgjax.learngene import load_learngene, save_learngene
from lgjax.learngene import condense
from lgjax.models import ViT, blocks, param_shapes


def gram_cka(x, y):
  """Linear CKA through centered Gram matrices (the HSIC form), independently of the feature form."""
  n = len(x)
  h = np.eye(n) - np.ones((n, n)) / n
  k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
  return np.sum(k * l) / np.sqrt(np.sum(k * k) * np.sum(l * l))


def test_linear_cka_matches_gram_form_and_invariances():
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((40, 12)), rng.standard_normal((40, 7))
  y = y + x[:, :7] * 0.5
  np.testing.assert_allclose(condense.linear_cka(x, y), gram_cka(x, y), rtol=1e-4)
  np.testing.assert_allclose(condense.linear_cka(x, x), 1.0, rtol=1e-5)
  q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
  np.testing.assert_allclose(condense.linear_cka(x @ q * 3.0, y), condense.linear_cka(x, y), rtol=1e-4)
  assert condense.linear_cka(x, y) < 0.9


def test_select_layers_rules():
  s = np.full((6, 3), 0.1)
  s[2, 0], s[3, 1], s[4, 2] = 0.9, 0.8, 0.9  # ancestry 2..4 align with pseudo-descendant 0..2
  assert condense.select_layers(s, 3) == [2, 3, 4]
  s2 = np.full((6, 3), 0.1)
  s2[4, 1], s2[5, 2] = 0.95, 0.95  # best two-layer window: rows 4, 5 against columns 1, 2
  assert condense.select_layers(s2, 2) == [4, 5]
  assert condense.select_layers(s, 2, 'last') == [4, 5]
  assert condense.select_layers(s, 2, [1, 3]) == [1, 3]
  with pytest.raises(ValueError, match=r'rule as a list must hold k=2 increasing layer indices in \[0, 6\), got \[3, 1\]'):
    condense.select_layers(s, 2, [3, 1])
  with pytest.raises(ValueError, match=r'k=4 must be <= the pseudo descendant depth 3'):
    condense.select_layers(s, 4)
  with pytest.raises(ValueError, match=r"rule must be 'best_match', 'last' or a list of indices, got 'first'"):
    condense.select_layers(s, 2, 'first')


@pytest.fixture(scope='module')
def ancestry():
  config = {**TINY, 'depth': 4}
  return jax.tree.map(lambda x: 0.3 * x, random_like(param_shapes(config, IMAGE_SHAPE), seed=7)), config


def test_layer_similarity(ancestry):
  params, config = ancestry
  images = np.random.default_rng(1).standard_normal((24, *IMAGE_SHAPE)).astype(np.float32)
  sim = condense.layer_similarity(params, config, images, batch_size=8)
  assert sim.shape == (4, 4)
  np.testing.assert_allclose(np.diag(sim), 1.0, rtol=1e-4)
  np.testing.assert_allclose(sim, sim.T, rtol=1e-4)
  whole = condense.layer_similarity(params, config, images, batch_size=24)
  np.testing.assert_allclose(sim, whole, rtol=1e-4, atol=1e-6)
  # The criterion plugs in; a 2-layer pseudo descendant gives a 4 x 2 matrix.
  small = {**config, 'depth': 2}
  other = jax.tree.map(lambda x: 0.3 * x, random_like(param_shapes(small, IMAGE_SHAPE), seed=8))
  mean_gap = lambda x, y: -jnp.abs(x.mean() - y.mean())
  cross = condense.layer_similarity(params, config, images, other=(other, small), criterion=mean_gap)
  assert cross.shape == (4, 2) and (cross <= 0).all()


@pytest.mark.parametrize('placement', ['below', 'above'])
def test_inherit_keeps_layers_and_stacks_random_blocks(ancestry, placement):
  params, _ = ancestry
  lg = condense.condense(params, [2, 3])
  np.testing.assert_array_equal(lg['source_indices'], [2, 3])
  desc = condense.expand(lg, 3, rng=jax.random.key(0), placement=placement, num_classes=7)
  _, desc_blocks = blocks.split(desc)
  _, anc_blocks = blocks.split(params)
  assert len(desc_blocks) == 5
  inherited = desc_blocks[3:] if placement == 'below' else desc_blocks[:2]
  fresh = desc_blocks[:3] if placement == 'below' else desc_blocks[2:]
  for got, want in zip(inherited, anc_blocks[2:]):
    jax.tree.map(np.testing.assert_array_equal, got, want)
  for block in fresh:
    k = block['MlpBlock_0']['Dense_0']['kernel']
    assert not any(np.allclose(k, a['MlpBlock_0']['Dense_0']['kernel']) for a in anc_blocks)
  assert desc['head']['kernel'].shape == (TINY['width'], 7)
  np.testing.assert_array_equal(desc['embedding']['kernel'], params['embedding']['kernel'])
  out = jax.jit(ViT(**condense.descendant_config(lg, 3, 7)).apply)({'params': desc}, jnp.ones((1, *IMAGE_SHAPE)))
  assert out.shape == (1, 7)
  restem = condense.expand(lg, 1, rng=jax.random.key(0), inherit_stem=False)
  assert not np.allclose(restem['embedding']['kernel'], params['embedding']['kernel'])
  np.testing.assert_array_equal(restem['head']['kernel'], params['head']['kernel'])
  # fresh blocks start as the descendant's param_init says: xavier-uniform, not trunc-normal(0.02)
  for scheme, std in (('deit', 0.02), ('big_vision', np.sqrt(2 / (2 * TINY['width'])))):
    fresh = condense.expand(lg, 1, rng=jax.random.key(0), param_init=scheme)
    q = fresh['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']['query']['kernel']
    assert abs(float(np.std(q)) - std) < 0.2 * std, scheme


def test_condense_errors_and_round_trip(ancestry, tmp_path):
  params, config = ancestry
  with pytest.raises(ValueError, match=r'indices must be non-empty layer indices in \[0, 4\), got \[4\]'):
    condense.condense(params, [4])
  lg = condense.condense(params, [1])
  with pytest.raises(ValueError, match=r"placement must be one of \('below', 'above'\), got 'middle'"):
    condense.expand(lg, 1, rng=jax.random.key(0), placement='middle')
  with pytest.raises(ValueError, match='num_random must be an integer >= 0, got -1'):
    condense.expand(lg, -1, rng=jax.random.key(0))
  save_learngene(str(tmp_path / 'lg'), lg, method='condense', model_config=config)
  restored, meta = load_learngene(str(tmp_path / 'lg'))
  assert meta['method'] == 'condense' and list(restored['source_indices']) == [1]
  jax.tree.map(np.testing.assert_array_equal, restored['layers'], lg['layers'])
