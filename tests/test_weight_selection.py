import jax
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, TINY, random_like, run_config, run_expand
from lgjax import checkpoint
from lgjax.learngene import METHODS, weight_selection
from lgjax.models import ViT, blocks, param_shapes

SOURCE = {**TINY, 'width': 64, 'num_heads': 4, 'mlp_dim': 128, 'depth': 4, 'pool_type': 'tok'}  # head_dim 16

@pytest.fixture(scope='module')
def source():
  return jax.device_get(random_like(param_shapes(SOURCE, IMAGE_SHAPE), seed=3))

def test_uniform_indices_by_hand():
  np.testing.assert_array_equal(weight_selection.uniform_indices(8, 4), [0, 2, 4, 6])
  np.testing.assert_array_equal(weight_selection.uniform_indices(10, 4), [0, 3, 6, 9])  # round(linspace(0, 9, 4))
  np.testing.assert_array_equal(weight_selection.uniform_indices(7, 3), [0, 3, 6])
  np.testing.assert_array_equal(weight_selection.uniform_indices(5, 5), np.arange(5))
  with pytest.raises(ValueError, match='cannot select 6 of 5 elements: Weight Selection only shrinks'):
    weight_selection.uniform_indices(5, 6)

def test_same_size_returns_the_source_exactly(source):
  out = METHODS['weight_selection'].expand(source, SOURCE, rng=jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out), source)

def test_selection_matches_numpy_slicing(source):
  """Width 64 -> 32 (stride 2), heads 4 -> 2 at head_dim 16, mlp 128 -> 64, depth 4 -> 2."""
  target = {**SOURCE, 'width': 32, 'num_heads': 2, 'mlp_dim': 64, 'depth': 2}
  out = jax.device_get(METHODS['weight_selection'].expand(source, target, rng=jax.random.key(0)))
  for i in range(2):  # first-N layers: block i of the source
    s, o = source['Transformer'][f'encoderblock_{i}'], out['Transformer'][f'encoderblock_{i}']
    np.testing.assert_array_equal(o['MlpBlock_0']['Dense_0']['kernel'], s['MlpBlock_0']['Dense_0']['kernel'][::2, ::2])
    np.testing.assert_array_equal(o['MlpBlock_0']['Dense_1']['bias'], s['MlpBlock_0']['Dense_1']['bias'][::2])
    np.testing.assert_array_equal(o['LayerNorm_0']['scale'], s['LayerNorm_0']['scale'][::2])
    attn_s, attn_o = s['MultiHeadDotProductAttention_0'], o['MultiHeadDotProductAttention_0']
    q = attn_s['query']['kernel'].reshape(64, 64)[::2, ::2].reshape(32, 2, 16)  # flattened heads x head_dim
    np.testing.assert_array_equal(attn_o['query']['kernel'], q)
    np.testing.assert_array_equal(attn_o['value']['bias'], attn_s['value']['bias'].reshape(64)[::2].reshape(2, 16))
    np.testing.assert_array_equal(attn_o['out']['kernel'],
                                  attn_s['out']['kernel'].reshape(64, 64)[::2, ::2].reshape(2, 16, 32))
  np.testing.assert_array_equal(out['embedding']['kernel'], source['embedding']['kernel'][..., ::2])
  np.testing.assert_array_equal(out['pos_embedding'], source['pos_embedding'][..., ::2])
  np.testing.assert_array_equal(out['cls'], source['cls'][..., ::2])
  np.testing.assert_array_equal(out['head']['kernel'], source['head']['kernel'][::2])  # same classes: kept
  assert blocks.depth(out) == 2
  logits = ViT(**target).apply({'params': out}, np.zeros((2, *IMAGE_SHAPE), np.float32))
  assert logits.shape == (2, TINY['num_classes']) and np.isfinite(logits).all()

def test_other_classes_get_a_fresh_head_and_scan_is_honoured(source):
  target = {**SOURCE, 'width': 48, 'num_heads': 3, 'mlp_dim': 96, 'num_classes': 7, 'scan': True}
  out = jax.device_get(METHODS['weight_selection'].expand(source, target, rng=jax.random.key(1)))
  assert out['head']['kernel'].shape == (48, 7) and not np.any(out['head']['bias'])
  assert blocks.is_scanned(out) and blocks.depth(out) == 4
  idx = np.round(np.linspace(0, 63, 48)).astype(int)  # 64 -> 48 does not divide
  np.testing.assert_array_equal(out['Transformer']['encoderblock']['LayerNorm_1']['bias'][3],
                                source['Transformer']['encoderblock_3']['LayerNorm_1']['bias'][idx])

@pytest.mark.parametrize('change, message', [
    (dict(width=128, num_heads=4, mlp_dim=128), r"only shrinks: target width=128 > the source's 64"),
    (dict(depth=5), r"only shrinks: target depth=5 > the source's 4"),
    (dict(mlp_dim=256), r"only shrinks: target mlp_dim=256 > the source's 128"),
    (dict(patch_size=8), r"keeps the source's stem: target patch_size=8, source 4"),
])
def test_larger_or_other_stem_targets_are_refused(source, change, message):
  with pytest.raises(ValueError, match=message):
    METHODS['weight_selection'].expand(source, {**SOURCE, **change}, rng=jax.random.key(0))

@pytest.mark.slow  # end to end (the CLI in a fresh process): the slow tier
def test_cli_and_descendant_init_select_from_a_file(tmp_path, source):
  checkpoint.save_params(str(tmp_path / 'big.npz'), source, SOURCE, format='npz')
  out = tmp_path / 'small'
  result = run_expand('--method=weight_selection', f'--source={tmp_path / "big.npz"}', '--width=32', '--depth=3',
                      '--num_heads=2', f'--out={out}')
  assert result.returncode == 0, result.stderr
  assert 'Descendant: depth 3, width 32' in result.stdout
  params, config = checkpoint.load_params(str(out))
  assert (config['width'], config['depth'], config['num_heads'], config['mlp_dim']) == (32, 3, 2, 128)
  want = METHODS['weight_selection'].expand(source, config, rng=None)
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(want))
  bigger = run_expand('--method=weight_selection', f'--source={tmp_path / "big.npz"}', '--width=96',
                      '--num_heads=4', f'--out={tmp_path / "x"}')
  assert bigger.returncode != 0 and "only shrinks: target width=96 > the source's 64" in bigger.stderr

  # A descendant run starts from the same selection (the head fresh: init.reinit's default).
  from lgjax.train import kinds, loop
  desc = run_config('descendant', **{'init.method': 'weight_selection', 'init.source': str(tmp_path / 'big.npz'),
                                     'model.width': 32, 'model.num_heads': 2, 'model.mlp_dim': 64, 'model.depth': 2,
                                     'model.patch_size': 4, 'model.pool_type': 'tok'})
  desc.dataset.image_size = IMAGE_SHAPE[0]
  init = kinds.make_kind(loop.resolve(desc), IMAGE_SHAPE).init(jax.random.key(0))
  np.testing.assert_array_equal(init['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0']['kernel'],
                                source['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_0']['kernel'][::2, ::2])
