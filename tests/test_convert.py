import re

import jax
import numpy as np
import pytest
import safetensors.numpy
from scipy.special import erf

from conftest import IMAGE_SHAPE, TINY, random_like, run_config
from lgjax import checkpoint
from lgjax.checkpoint import convert
from lgjax.models import ViT, param_shapes
from lgjax.train import loop, train_and_evaluate


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('extra', [{}, {'pool_type': 'tok'}, {'scan': True, 'num_classes': None}])
def test_big_vision_npz_round_trip(tmp_path, extra):
  config = {**TINY, **extra}
  params = jax.device_get(random_like(param_shapes(config, IMAGE_SHAPE)))
  checkpoint.save_params(str(tmp_path / 'm.npz'), params, config, format='npz')
  restored, inferred = checkpoint.load_params(str(tmp_path / 'm.npz'))
  _equal(restored, params)
  assert {k: inferred[k] for k in config} == config


def test_big_vision_training_checkpoint_names(tmp_path):
  params = jax.device_get(random_like(param_shapes(TINY, IMAGE_SHAPE)))
  flat = {'params/' + k.replace('MlpBlock_0', 'MlpBlock_3'): v for k, v in convert.to_big_vision(params).items()}
  np.savez(tmp_path / 'bv.npz', **flat)
  restored, _ = checkpoint.load_params(str(tmp_path / 'bv.npz'))
  _equal(restored, params)
  np.savez(tmp_path / 'map.npz', **{**flat, 'params/MAPHead_0/probe': np.zeros((1, 1, 32))})
  with pytest.raises(ValueError, match=r"big_vision key 'params/MAPHead_0/probe': lgjax ViTs have no MAPHead_0"):
    checkpoint.load_params(str(tmp_path / 'map.npz'))


@pytest.mark.parametrize('extra', [{'pool_type': 'tok'}, {'final_norm': 'pooled'}, {}])
def test_timm_round_trip(tmp_path, extra):
  config = {**TINY, 'num_heads': 1, **extra}  # width 32 = one 32-wide head: give num_heads on read
  params = jax.device_get(random_like(param_shapes(config, IMAGE_SHAPE)))
  path = str(tmp_path / 'm.safetensors')
  checkpoint.save_params(path, params, config, format='safetensors')
  state = safetensors.numpy.load_file(path)
  assert state['blocks.0.attn.qkv.weight'].shape == (96, 32)
  assert ('cls_token' in state) == (extra.get('pool_type') == 'tok')
  assert ('fc_norm.weight' in state) == (extra.get('final_norm') == 'pooled')
  restored, inferred = checkpoint.load_params(path)  # lgjax's export carries its config: num_heads=1 too
  _equal(restored, params)
  assert inferred == config
  safetensors.numpy.save_file(state, str(tmp_path / 'plain.safetensors'))  # a timm file: no lgjax header
  restored, inferred = checkpoint.load_params(str(tmp_path / 'plain.safetensors'), num_heads=1)
  _equal(restored, params)
  assert inferred['gelu_approximate'] is False and inferred['pool_type'] == config.get('pool_type', 'gap')


def timm_state(rng, width=64, depth=2, heads=2, mlp=96, patch=4, channels=1, tokens=16, classes=5, cls=True,
               fc_norm=False):
  """A timm VisionTransformer state dict of random weights, built with numpy."""
  n = lambda *s: (0.2 * rng.standard_normal(s)).astype(np.float32)
  state = {'patch_embed.proj.weight': n(width, channels, patch, patch), 'patch_embed.proj.bias': n(width),
           'pos_embed': n(1, tokens + cls, width), 'head.weight': n(classes, width), 'head.bias': n(classes)}
  if cls:
    state['cls_token'] = n(1, 1, width)
  norm = 'fc_norm' if fc_norm else 'norm'
  state[norm + '.weight'], state[norm + '.bias'] = 1 + n(width), n(width)
  for i in range(depth):
    p = f'blocks.{i}.'
    state.update({p + 'norm1.weight': 1 + n(width), p + 'norm1.bias': n(width),
                  p + 'attn.qkv.weight': n(3 * width, width), p + 'attn.qkv.bias': n(3 * width),
                  p + 'attn.proj.weight': n(width, width), p + 'attn.proj.bias': n(width),
                  p + 'norm2.weight': 1 + n(width), p + 'norm2.bias': n(width),
                  p + 'mlp.fc1.weight': n(mlp, width), p + 'mlp.fc1.bias': n(mlp),
                  p + 'mlp.fc2.weight': n(width, mlp), p + 'mlp.fc2.bias': n(width)})
  return state


def timm_forward(s, images, heads, depth, cls=True, fc_norm=False):
  """timm's VisionTransformer.forward in numpy (exact GELU, eps 1e-6), on the original weights."""
  def ln(x, w, b):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) * w + b
  w = s['patch_embed.proj.weight']
  p = w.shape[-1]
  b_, h_, w_, c_ = images.shape
  patches = images.reshape(b_, h_ // p, p, w_ // p, p, c_).transpose(0, 1, 3, 5, 2, 4).reshape(b_, -1, c_ * p * p)
  x = patches @ w.reshape(w.shape[0], -1).T + s['patch_embed.proj.bias']
  if cls:
    x = np.concatenate([np.broadcast_to(s['cls_token'], (b_, 1, x.shape[-1])), x], axis=1)
  x = x + s['pos_embed']
  d = x.shape[-1]
  for i in range(depth):
    q = f'blocks.{i}.'
    y = ln(x, s[q + 'norm1.weight'], s[q + 'norm1.bias'])
    qkv = (y @ s[q + 'attn.qkv.weight'].T + s[q + 'attn.qkv.bias']).reshape(b_, -1, 3, heads, d // heads)
    qq, kk, vv = qkv.transpose(2, 0, 3, 1, 4)
    att = qq @ kk.transpose(0, 1, 3, 2) / np.sqrt(d // heads)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = (att @ vv).transpose(0, 2, 1, 3).reshape(b_, -1, d)
    x = x + y @ s[q + 'attn.proj.weight'].T + s[q + 'attn.proj.bias']
    y = ln(x, s[q + 'norm2.weight'], s[q + 'norm2.bias']) @ s[q + 'mlp.fc1.weight'].T + s[q + 'mlp.fc1.bias']
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    x = x + y @ s[q + 'mlp.fc2.weight'].T + s[q + 'mlp.fc2.bias']
  if fc_norm:
    x = ln(x.mean(1), s['fc_norm.weight'], s['fc_norm.bias'])
  else:
    x = ln(x, s['norm.weight'], s['norm.bias'])
    x = x[:, 0] if cls else x.mean(1)
  return x @ s['head.weight'].T + s['head.bias']


@pytest.mark.parametrize('cls,fc_norm', [(True, False), (False, True)])
def test_timm_checkpoint_computes_what_timm_computes(tmp_path, cls, fc_norm):
  rng = np.random.default_rng(0)
  state = timm_state(rng, cls=cls, fc_norm=fc_norm)
  path = str(tmp_path / 'deit.safetensors')
  safetensors.numpy.save_file(state, path)
  params, config = checkpoint.load_params(path, num_heads=2)
  assert config['depth'] == 2 and config['width'] == 64 and config['mlp_dim'] == 96
  images = rng.standard_normal((3, 16, 16, 1)).astype(np.float32)
  got = ViT(**config).apply({'params': params}, images)
  np.testing.assert_allclose(got, timm_forward(state, images, 2, 2, cls, fc_norm), rtol=2e-4, atol=2e-4)
  # Default heads: width / 64, timm's rule.
  assert checkpoint.load_params(path)[1]['num_heads'] == 1


def test_timm_errors_name_the_key(tmp_path):
  rng = np.random.default_rng(0)
  state = timm_state(rng)
  safetensors.numpy.save_file({**state, 'dist_token': np.zeros((1, 1, 64), np.float32)}, str(tmp_path / 'a.safetensors'))
  with pytest.raises(ValueError, match=r"timm key 'dist_token'"):
    checkpoint.load_params(str(tmp_path / 'a.safetensors'))
  state['blocks.1.mlp.fc1.weight'] = np.zeros((80, 64), np.float32)
  state['blocks.1.mlp.fc1.bias'] = np.zeros(80, np.float32)
  state['blocks.1.mlp.fc2.weight'] = np.zeros((64, 80), np.float32)
  safetensors.numpy.save_file(state, str(tmp_path / 'b.safetensors'))
  with pytest.raises(ValueError, match=r"'Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel' has shape \(64, 80\), expected \(64, 96\)"):
    checkpoint.load_params(str(tmp_path / 'b.safetensors'))


def test_params_files_are_checked_by_file_and_key(tmp_path):
  rng = np.random.default_rng(0)
  state = timm_state(rng)
  bad_qkv = {**state, 'blocks.0.attn.qkv.weight': np.zeros((200, 64), np.float32)}  # 8 extra rows
  safetensors.numpy.save_file(bad_qkv, str(tmp_path / 'qkv.safetensors'))
  with pytest.raises(ValueError, match=re.escape("timm key blocks.0.attn.qkv.weight has shape (200, 64), expected (192, 64)")):
    checkpoint.load_params(str(tmp_path / 'qkv.safetensors'))
  for name, value, message in (('int', np.ones((64,), np.int32), "has dtype int32; params must be floating point"),
                               ('nan', np.full((64,), np.nan, np.float32), 'holds NaN or Inf')):
    path = str(tmp_path / f'{name}.safetensors')
    safetensors.numpy.save_file({**state, 'norm.bias': value}, path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: 'norm.bias' ") + message):
      checkpoint.load_params(path)
  half = {k: v.astype(np.float16) for k, v in state.items()}  # timm's half-precision files load as float32
  safetensors.numpy.save_file(half, str(tmp_path / 'half.safetensors'))
  params, _ = checkpoint.load_params(str(tmp_path / 'half.safetensors'))
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  np.savez(tmp_path / 'int.npz', **{'embedding/kernel': np.ones((4, 4, 1, 32), np.int64)})
  with pytest.raises(ValueError, match=r"int.npz: 'embedding/kernel' has dtype int64"):
    checkpoint.load_params(str(tmp_path / 'int.npz'))


@pytest.mark.slow  # end to end: the slow tier
def test_files_serve_as_teacher_fit_source_and_ancestry(tmp_path):
  model = loop.resolve(run_config('teacher')).model.to_dict()
  params = jax.device_get(random_like(param_shapes(model, (28, 28, 1))))
  params = jax.tree.map(lambda x: 0.1 * x, params)
  checkpoint.save_params(str(tmp_path / 'teacher.npz'), params, model, format='npz')
  checkpoint.save_params(str(tmp_path / 'teacher.safetensors'), params, model, format='safetensors')
  final = train_and_evaluate(run_config('tleg_aux', total_steps=2, **{
      'teacher.dir': str(tmp_path / 'teacher.safetensors'), 'learngene.fit_from': str(tmp_path / 'teacher.npz')}),
      str(tmp_path / 'aux'))
  assert np.isfinite(final['loss'])
  desc = run_config('descendant', total_steps=2, **{
      'init.method': 'condense', 'init.source': str(tmp_path / 'teacher.npz'), 'init.layers': [1],
      'init.placement': 'above', 'model.depth': 3})
  from lgjax.train import kinds
  init = kinds.make_kind(loop.resolve(desc), (28, 28, 1)).init(jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, init['Transformer']['encoderblock_0'],
               params['Transformer']['encoderblock_1'])
  assert np.isfinite(train_and_evaluate(desc, str(tmp_path / 'desc'))['loss'])
