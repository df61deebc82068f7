import jax
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, TINY, random_like
from lgjax.models import blocks, param_shapes


@pytest.fixture
def params():
  return random_like(param_shapes(TINY, IMAGE_SHAPE))


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_split_join_round_trip(params):
  shared, block_list = blocks.split(params)
  assert len(block_list) == TINY['depth']
  assert set(shared) == {'embedding', 'pos_embedding', 'Transformer', 'head'}
  assert set(shared['Transformer']) == {'encoder_norm'}
  _equal(blocks.join(shared, block_list), params)
  np.testing.assert_array_equal(block_list[2]['LayerNorm_0']['scale'],
                                params['Transformer']['encoderblock_2']['LayerNorm_0']['scale'])


def test_layouts_convert_both_ways(params):
  scanned = blocks.to_scanned(params)
  assert blocks.is_scanned(scanned) and blocks.depth(scanned) == TINY['depth']
  np.testing.assert_array_equal(scanned['Transformer']['encoderblock']['MlpBlock_0']['Dense_1']['bias'][1],
                                params['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_1']['bias'])
  _equal(blocks.to_unscanned(scanned), params)
  shared, block_list = blocks.split(scanned)
  _equal(blocks.join(shared, block_list, scan=True), scanned)
  shared_s, stacked = blocks.split_stacked(params)
  _equal(blocks.join_stacked(shared_s, stacked, scan=True), scanned)


def test_gap_in_block_numbers_is_an_error(params):
  del params['Transformer']['encoderblock_1']
  with pytest.raises(ValueError, match=r'encoderblock_0..encoderblock_\{L-1\} with no gaps, got indices \[0, 2\]'):
    blocks.split(params)


def test_not_a_vit():
  with pytest.raises(ValueError, match='no "Transformer" key'):
    blocks.split({'embedding': {}})
