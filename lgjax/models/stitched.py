"""A ViT cut and rejoined: a stem, block ranges, and the stitched model of a
Learngene Pool spec (front blocks, a stitch layer, end blocks).

StitchedViT params: embedding / pos_embedding / cls (the front's),
front/encoderblock_{i}, stitch/{kernel,bias}, end/encoderblock_{i},
encoder_norm, head (the end's). `lgjax.learngene.pool` assembles them from
a pool; `lgjax.checkpoint.load_model` reads them back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lgjax.models import blocks, inits
from lgjax.models.vit import Encoder1DBlock, ViTConfig, added, block_class, embed, gathered, norm_and_pool


class BlockRange(nn.Module):
  """Blocks start..stop-1 of a ViT, named as in the ViT (blocks.block_name)."""
  config: dict
  start: int
  stop: int

  @nn.compact
  def __call__(self, x):
    c = self.config
    mlp_dim = ViTConfig.of(c).mlp_dim
    dtype = jnp.dtype(c.get('dtype', 'float32'))
    block = block_class(Encoder1DBlock, self, c.get('remat_policy'), dtype=dtype)  # one lifted class for every layer
    for i in range(self.start, self.stop):
      x = block(num_heads=c['num_heads'], mlp_dim=mlp_dim, gelu_approximate=c.get('gelu_approximate', True),
                layer_norm_epsilon=c.get('layer_norm_epsilon', 1e-6), attention_impl=c.get('attention_impl'),
                norm_impl=c.get('norm_impl'), mlp_impl=c.get('mlp_impl'), qkv_impl=c.get('qkv_impl'),
                dtype=dtype, name=blocks.block_name(i))(x, 0.0, True)
    return added(x)  # norm_impl's blocks leave their last add to the next LayerNorm


@dataclasses.dataclass(frozen=True)
class _Fields:
  """ViT fields with defaults filled, for `embed`."""
  width: int
  patch_size: Any
  posemb: str = 'learn'
  pool_type: str = 'gap'
  param_init: str = inits.DEFAULT
  dtype: str = 'float32'


STEM_KEYS = ('embedding', 'pos_embedding', 'cls')


def _fields(config: dict) -> _Fields:
  return _Fields(**{f.name: config[f.name] for f in dataclasses.fields(_Fields) if f.name in config})


class Stem(nn.Module):
  """Patch + position embedding (+ cls) of a ViT config: its tokens before block 0."""
  config: dict

  @nn.compact
  def __call__(self, image):
    return embed(self, image, _fields(self.config))


class StitchedViT(nn.Module):
  """front stem + front blocks [0, j) -> stitch -> end blocks [k, D_end) -> norm, head.

  Params: embedding / pos_embedding / cls (front's), front/encoderblock_{i},
  stitch/{kernel,bias}, end/encoderblock_{i}, encoder_norm, head (end's).
  """
  front: dict
  end: dict
  j: int
  k: int
  stitch: bool = True

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    del train  # stitched models train without dropout
    x = embed(self, image, _fields(self.front))
    x = BlockRange(self.front, 0, self.j, name='front')(x)
    if self.stitch:
      x = gathered(nn.Dense, self)(self.end['width'], name='stitch')(x)
    x = BlockRange(self.end, self.k, self.end['depth'], name='end')(x)
    norm = gathered(nn.LayerNorm, self)(epsilon=self.end.get('layer_norm_epsilon', 1e-6), name='encoder_norm')
    x = norm_and_pool(x, norm, self.end.get('pool_type', 'gap'), self.end.get('final_norm', 'tokens'))
    if self.end.get('num_classes'):
      x = gathered(nn.Dense, self)(self.end['num_classes'], name='head')(x)
    return x.astype(jnp.float32)
