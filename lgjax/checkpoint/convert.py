"""Converting ViT params between lgjax and the ecosystem's layouts.

big_vision `.npz`: one array per '/'-joined name; lgjax uses the same names,
so reading is unflattening (plus the `params/` prefix of training
checkpoints and the original ViT's `MlpBlock_3`).

timm / DeiT state dicts (safetensors, read and written with numpy, no
PyTorch): torch Linear weights are (out, in) and transpose to Flax kernels;
the fused `attn.qkv` splits into query/key/value with heads = width / head
dim; timm adds pos_embed[:, 0] to the cls token, which lgjax folds into `cls`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from lgjax import tree as tree_lib
from lgjax.models import blocks

PyTree = Any
TIMM_HEAD_DIM = 64  # timm's ViT/DeiT sizes all use 64-dim heads
_UNSUPPORTED_BIG_VISION = ('pre_logits', 'MAPHead_0')
_UNSUPPORTED_TIMM = ('dist_token', 'head_dist', 'reg_token', 'norm_pre', '.ls1.', '.ls2.', 'q_norm',
                     'k_norm', 'attn_pool')


def from_big_vision(flat: dict[str, np.ndarray]) -> PyTree:
  """big_vision flat names -> nested lgjax params."""
  renamed = {}
  for name, value in flat.items():
    for bad in _UNSUPPORTED_BIG_VISION:
      if bad in name:
        raise ValueError(f'big_vision key {name!r}: lgjax ViTs have no {bad} (pool_type "map" or a '
                         f'representation layer); convert a model without it.')
    name = re.sub(r'^(params|opt/target)/', '', name).replace('MlpBlock_3', 'MlpBlock_0')
    renamed[name] = np.asarray(value)
  return tree_lib.unflatten_names(renamed)


def to_big_vision(params: PyTree) -> dict[str, np.ndarray]:
  return {name: np.asarray(x) for name, x in tree_lib.flatten_with_names(params)}


def _take(state: dict, key: str) -> np.ndarray:
  if key not in state:
    raise ValueError(f'timm state dict has no {key!r} (keys start: {sorted(state)[:8]}).')
  return np.asarray(state.pop(key))


def from_timm(state: dict[str, np.ndarray], num_heads: int | None = None) -> tuple[PyTree, dict]:
  """timm VisionTransformer state dict -> (lgjax params, ViT fields timm implies).

  `num_heads` cannot be read off the fused qkv weight: by default width / 64.
  """
  state = dict(state)
  for key in state:
    if any(bad in key for bad in _UNSUPPORTED_TIMM):
      raise ValueError(f'timm key {key!r}: distillation tokens, register tokens, layer scale and qk-norm '
                       f'are not part of lgjax\'s ViT.')
  conv = _take(state, 'patch_embed.proj.weight')  # (D, C, p, p)
  width = conv.shape[0]
  heads = num_heads or max(1, width // TIMM_HEAD_DIM)
  if width % heads:
    raise ValueError(f'num_heads={heads} must divide the timm model width {width}.')
  params: dict = {'embedding': {'kernel': conv.transpose(2, 3, 1, 0), 'bias': _take(state, 'patch_embed.proj.bias')}}
  has_cls = 'cls_token' in state
  pos = _take(state, 'pos_embed')
  if has_cls:
    cls = _take(state, 'cls_token')
    if pos.shape[1] == int(round((pos.shape[1] - 1) ** 0.5)) ** 2 + 1:  # pos_embed covers the cls token
      cls, pos = cls + pos[:, :1], pos[:, 1:]
    params['cls'] = cls
  params['pos_embedding'] = pos
  depth = len({int(m.group(1)) for k in state if (m := re.match(r'blocks\.(\d+)\.', k))})
  block_list = []
  for i in range(depth):
    p = f'blocks.{i}.'
    qkv_w = _take(state, p + 'attn.qkv.weight')
    qkv_b = state.pop(p + 'attn.qkv.bias', np.zeros(qkv_w.shape[0], qkv_w.dtype))
    for key, got, want in (('weight', qkv_w.shape, (3 * width, width)), ('bias', qkv_b.shape, (3 * width,))):
      if tuple(got) != want:
        raise ValueError(f'timm key {p}attn.qkv.{key} has shape {tuple(got)}, expected {want} '
                         f'(q, k and v of width {width}, from patch_embed.proj.weight).')
    attn = {}
    for j, name in enumerate(('query', 'key', 'value')):
      w = qkv_w[j * width:(j + 1) * width]
      attn[name] = {'kernel': w.T.reshape(width, heads, width // heads),
                    'bias': qkv_b[j * width:(j + 1) * width].reshape(heads, width // heads)}
    attn['out'] = {'kernel': _take(state, p + 'attn.proj.weight').T.reshape(heads, width // heads, width),
                   'bias': _take(state, p + 'attn.proj.bias')}
    block_list.append({
        'LayerNorm_0': {'scale': _take(state, p + 'norm1.weight'), 'bias': _take(state, p + 'norm1.bias')},
        'MultiHeadDotProductAttention_0': attn,
        'LayerNorm_1': {'scale': _take(state, p + 'norm2.weight'), 'bias': _take(state, p + 'norm2.bias')},
        'MlpBlock_0': {f'Dense_{d}': {'kernel': _take(state, p + f'mlp.fc{d + 1}.weight').T,
                                      'bias': _take(state, p + f'mlp.fc{d + 1}.bias')} for d in (0, 1)}})
  pooled = 'fc_norm.weight' in state
  norm = 'fc_norm' if pooled else 'norm'
  if has_cls and pooled:
    raise ValueError('timm model averages tokens after a cls token (fc_norm with cls_token): lgjax pools '
                     'either the cls token ("tok") or all tokens of a model without one ("gap").')
  shared = dict(params, Transformer={'encoder_norm': {'scale': _take(state, norm + '.weight'),
                                                      'bias': _take(state, norm + '.bias')}})
  if 'head.weight' in state:
    shared['head'] = {'kernel': _take(state, 'head.weight').T, 'bias': _take(state, 'head.bias')}
  if state:
    raise ValueError(f'timm state dict has keys lgjax does not know: {sorted(state)[:10]}.')
  config = dict(num_heads=heads, gelu_approximate=False, final_norm='pooled' if pooled else 'tokens',
                pool_type='tok' if has_cls else 'gap')
  return blocks.join(shared, block_list), config


def to_timm(params: PyTree, model_config: dict) -> dict[str, np.ndarray]:
  """lgjax params -> timm VisionTransformer state dict (class_token iff pool_type 'tok';
  'norm' or, for final_norm='pooled', 'fc_norm')."""
  shared, block_list = blocks.split(jax_free(params))
  width = shared['embedding']['kernel'].shape[-1]
  state = {'patch_embed.proj.weight': shared['embedding']['kernel'].transpose(3, 2, 0, 1),
           'patch_embed.proj.bias': shared['embedding']['bias']}
  if 'pos_embedding' not in shared:
    raise ValueError('timm ViTs learn their position embedding: posemb="sincos2d" has no pos_embedding to write.')
  pos = shared['pos_embedding']
  if 'cls' in shared:
    state['cls_token'] = shared['cls']
    pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
  state['pos_embed'] = pos
  for i, b in enumerate(block_list):
    p = f'blocks.{i}.'
    a = b['MultiHeadDotProductAttention_0']
    state[p + 'norm1.weight'], state[p + 'norm1.bias'] = b['LayerNorm_0']['scale'], b['LayerNorm_0']['bias']
    state[p + 'attn.qkv.weight'] = np.concatenate([a[n]['kernel'].reshape(width, width).T
                                                   for n in ('query', 'key', 'value')])
    state[p + 'attn.qkv.bias'] = np.concatenate([a[n]['bias'].reshape(width) for n in ('query', 'key', 'value')])
    state[p + 'attn.proj.weight'] = a['out']['kernel'].reshape(width, width).T
    state[p + 'attn.proj.bias'] = a['out']['bias']
    state[p + 'norm2.weight'], state[p + 'norm2.bias'] = b['LayerNorm_1']['scale'], b['LayerNorm_1']['bias']
    for d in (0, 1):
      state[p + f'mlp.fc{d + 1}.weight'] = b['MlpBlock_0'][f'Dense_{d}']['kernel'].T
      state[p + f'mlp.fc{d + 1}.bias'] = b['MlpBlock_0'][f'Dense_{d}']['bias']
  norm = 'fc_norm' if model_config.get('final_norm', 'tokens') == 'pooled' else 'norm'
  state[norm + '.weight'] = shared['Transformer']['encoder_norm']['scale']
  state[norm + '.bias'] = shared['Transformer']['encoder_norm']['bias']
  if 'head' in shared:
    state['head.weight'], state['head.bias'] = shared['head']['kernel'].T, shared['head']['bias']
  return {k: np.ascontiguousarray(v) for k, v in state.items()}


def jax_free(tree: PyTree) -> PyTree:
  """The same tree with numpy leaves."""
  return tree_lib.unflatten_names({n: np.asarray(x) for n, x in tree_lib.flatten_with_names(tree)})
