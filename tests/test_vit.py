import dataclasses
import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, TINY, jaxpr_eqns, random_like
from lgjax import checkpoint
from lgjax import tree as tree_lib
from jax.ad_checkpoint import print_saved_residuals

from lgjax.models import ViT, ViTConfig, blocks, check_config, model_config, param_shapes, vit, with_block_outputs

BLOCK_NAMES = {
    'LayerNorm_0/scale', 'LayerNorm_0/bias', 'LayerNorm_1/scale', 'LayerNorm_1/bias',
    *(f'MultiHeadDotProductAttention_0/{m}/{p}' for m in ('query', 'key', 'value', 'out')
      for p in ('kernel', 'bias')),
    *(f'MlpBlock_0/Dense_{i}/{p}' for i in (0, 1) for p in ('kernel', 'bias')),
}


def _names(tree):
  return {n for n, _ in tree_lib.flatten_with_names(tree)}


def test_param_names_follow_big_vision():
  names = _names(param_shapes({**TINY, 'pool_type': 'tok'}, IMAGE_SHAPE))
  want = {'embedding/kernel', 'embedding/bias', 'cls', 'pos_embedding',
          'Transformer/encoder_norm/scale', 'Transformer/encoder_norm/bias',
          'head/kernel', 'head/bias'}
  want |= {f'Transformer/encoderblock_{i}/{b}' for i in range(TINY['depth']) for b in BLOCK_NAMES}
  assert names == want


def test_scanned_names_and_shapes():
  shapes = param_shapes({**TINY, 'scan': True}, IMAGE_SHAPE)
  block = shapes['Transformer']['encoderblock']
  assert _names(block) == BLOCK_NAMES
  assert block['MultiHeadDotProductAttention_0']['query']['kernel'].shape == (3, 32, 4, 8)


def test_optional_parts():
  shapes = param_shapes({**TINY, 'num_classes': None, 'posemb': 'sincos2d'}, IMAGE_SHAPE)
  assert 'head' not in shapes and 'pos_embedding' not in shapes and 'cls' not in shapes
  model = ViT(**{**TINY, 'num_classes': 0})
  x = jnp.ones((2, *IMAGE_SHAPE))
  out = jax.jit(model.apply)(jax.jit(model.init)(jax.random.key(0), x), x)
  assert out.shape == (2, TINY['width'])


@pytest.mark.parametrize('pool_type', ['gap', 'tok'])
def test_scan_and_unscanned_agree(pool_type):
  config = {**TINY, 'pool_type': pool_type}
  params = random_like(param_shapes(config, IMAGE_SHAPE), seed=1)
  params = jax.tree.map(lambda x: 0.2 * x, params)
  x = jax.random.normal(jax.random.key(2), (3, *IMAGE_SHAPE))
  y = jax.jit(ViT(**config).apply)({'params': params}, x)
  y_scan = jax.jit(ViT(**config, scan=True).apply)({'params': blocks.to_scanned(params)}, x)
  np.testing.assert_allclose(y, y_scan, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(y).max()) > 1e-3  # not a vacuous comparison


def _layer_norm(v, params):
  """LayerNorm in numpy (eps 1e-6, big_vision's): the reference the model's is checked against."""
  mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
  return (v - mu) / np.sqrt(var + 1e-6) * np.asarray(params['scale']) + np.asarray(params['bias'])


def test_forward_matches_numpy_reference():
  """One block, gap pooling, written independently in numpy."""
  config = {**TINY, 'depth': 1}
  p = jax.tree.map(lambda x: 0.3 * x, random_like(param_shapes(config, IMAGE_SHAPE), seed=3))
  x = np.asarray(jax.random.normal(jax.random.key(4), (2, *IMAGE_SHAPE)))
  got = ViT(**config).apply({'params': p}, x)
  p = jax.tree.map(np.asarray, p)

  gelu = lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))
  patches = x.reshape(2, 4, 4, 4, 4, 1).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 16)
  h = patches @ p['embedding']['kernel'].reshape(16, 32) + p['embedding']['bias']
  h = h + p['pos_embedding']
  b = p['Transformer']['encoderblock_0']
  a = b['MultiHeadDotProductAttention_0']
  y = _layer_norm(h, b['LayerNorm_0'])
  q, k, v = (np.einsum('ntd,dhk->nthk', y, a[m]['kernel']) + a[m]['bias'] for m in ('query', 'key', 'value'))
  logits = np.einsum('nqhk,nshk->nhqs', q, k) / np.sqrt(8)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  attn = np.einsum('nhqs,nshk->nqhk', w, v)
  h = h + np.einsum('nqhk,hkd->nqd', attn, a['out']['kernel']) + a['out']['bias']
  m = b['MlpBlock_0']
  y = gelu(_layer_norm(h, b['LayerNorm_1']) @ m['Dense_0']['kernel'] + m['Dense_0']['bias'])
  h = h + y @ m['Dense_1']['kernel'] + m['Dense_1']['bias']
  h = _layer_norm(h, p['Transformer']['encoder_norm']).mean(1)
  want = h @ p['head']['kernel'] + p['head']['bias']
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_mlp_keeps_two_hidden_tensors_and_plain_gradients(capsys):
  """The MLP keeps, of its (tokens, mlp_dim) tensors, only the first matmul's output and the
  GELU's output for the backward pass (vit.MLP_SAVED; PallasMlpBlock's custom VJP), and its
  gradients are those of the same MLP written as plain jnp ops, which autodiff keeps more of."""
  mlp = vit.MlpBlock(mlp_dim=64)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  params = mlp.init(jax.random.key(1), x, True)
  loss = lambda p, x: jnp.sum(jnp.sin(mlp.apply(p, x, True)))
  print_saved_residuals(loss, params, x)
  hidden = [line for line in capsys.readouterr().out.splitlines() if '[2,5,64]' in line]
  assert len(hidden) == 2 and {'dot_general' in line for line in hidden} == {True, False}, hidden
  assert sum("'mlp_gelu'" in line for line in hidden) == 1, hidden

  def plain(p, x):
    d0, d1 = p['params']['Dense_0'], p['params']['Dense_1']
    return jnp.sum(jnp.sin(jax.nn.gelu(x @ d0['kernel'] + d0['bias']) @ d1['kernel'] + d1['bias']))

  print_saved_residuals(plain, params, x)
  assert sum('[2,5,64]' in line for line in capsys.readouterr().out.splitlines()) > 2  # what it saves
  got, want = jax.jit(jax.grad(loss, (0, 1)))(params, x), jax.jit(jax.grad(plain, (0, 1)))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  # PallasMlpBlock (mlp_impl): the same two, as its kernel writes them (h and the GELU's g).
  fused = vit.PallasMlpBlock(mlp_dim=64)
  fused_loss = lambda p, x: jnp.sum(jnp.sin(fused.apply(p, x, True)))
  print_saved_residuals(fused_loss, params, x)
  assert sum('[2,5,64]' in line for line in capsys.readouterr().out.splitlines()) == 2
  got = jax.jit(jax.grad(fused_loss, (0, 1)))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_a_scanned_bf16_model_keeps_no_float32_activations(capsys):
  """Under nn.scan, autodiff keeps what the body's backward reads as stacked arrays, with no
  XLA fusion to drop them: the LayerNorms' float32 input, centred input and square, six
  (depth, batch, tokens, width) float32 arrays, 1.7x DeiT-S's unscanned temporaries on an
  H200. Scanned blocks rematerialize their LayerNorms, which keep only their bfloat16 input;
  the unscanned model keeps what it did (vit.Encoder1DBlock.remat_norms)."""
  config = {**TINY, 'dtype': 'bfloat16', 'attention_impl': 'xla'}
  x = jax.random.normal(jax.random.key(0), (16, *IMAGE_SHAPE))
  stacked = f'[{TINY["depth"]},16,16,{TINY["width"]}]'

  def kept(model, params):
    print_saved_residuals(lambda p: jnp.sum(model.apply(p, x) ** 2), params)
    return [line.split()[0] for line in capsys.readouterr().out.splitlines() if stacked in line.split()[0]]

  scanned = ViT(**config, scan=True)
  params = scanned.init(jax.random.key(1), x)
  assert kept(scanned, params) == [f'bf16{stacked}'] * 4  # the LayerNorms' inputs and outputs
  assert not vit.Encoder1DBlock.remat_norms and vit._ScanBlock.remat_norms


def test_attention_drops_the_key_bias_and_folds_the_value_bias_with_the_textbook_gradients():
  """Attention with every bias applied where the textbook applies it has the same outputs and
  gradients as ours, which skips the key's bias (softmax ignores it) and adds the value's
  through the output projection's bias; the key's bias gets no gradient."""
  attention = vit.MultiHeadDotProductAttention(num_heads=2)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  params = jax.tree.map(lambda v: v + 0.5 * jax.random.normal(jax.random.key(1), v.shape),  # biases not 0
                        attention.init(jax.random.key(2), x))
  loss = lambda p, x: jnp.sum(jnp.sin(attention.apply(p, x)))

  def textbook(p, x):
    q, k, v = (jnp.einsum('btd,dhk->bthk', x, p['params'][n]['kernel']) + p['params'][n]['bias']
               for n in ('query', 'key', 'value'))
    w = jax.nn.softmax(jnp.einsum('bqhk,bshk->bhqs', q, k) / np.sqrt(4), axis=-1)
    y = jnp.einsum('bhqs,bshk->bqhk', w, v)
    return jnp.sum(jnp.sin(jnp.einsum('bqhk,hkd->bqd', y, p['params']['out']['kernel']) + p['params']['out']['bias']))

  np.testing.assert_allclose(jax.jit(loss)(params, x), jax.jit(textbook)(params, x), rtol=1e-5)
  got, want = jax.jit(jax.grad(loss, (0, 1)))(params, x), jax.jit(jax.grad(textbook, (0, 1)))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want)
  assert not np.any(got[0]['params']['key']['bias']) and np.abs(want[0]['params']['value']['bias']).max() > 0.1


def test_bfloat16_block_norms_output_bfloat16_of_the_float32_statistics():
  """In bfloat16 a block's LayerNorms write bfloat16 (half the bytes of float32, and the
  gradient that flows back through them too): the float32 formula, rounded once."""
  config = {**TINY, 'depth': 1, 'dtype': 'bfloat16'}
  x = jax.random.normal(jax.random.key(0), (2, *IMAGE_SHAPE))
  params = jax.tree.map(lambda v: 0.3 * v, random_like(param_shapes(config, IMAGE_SHAPE), seed=2))
  _, state = ViT(**config).apply({'params': params}, x, capture_intermediates=True, mutable=['intermediates'])
  (conv,) = state['intermediates']['embedding']['__call__']
  (got,) = state['intermediates']['Transformer']['encoderblock_0']['LayerNorm_0']['__call__']
  assert got.dtype == jnp.bfloat16
  tokens = conv.reshape(2, -1, 32) + params['pos_embedding'].astype(jnp.bfloat16)  # the block's input
  tokens = np.asarray(tokens, np.float32)
  want = _layer_norm(tokens, params['Transformer']['encoderblock_0']['LayerNorm_0'])
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2 ** -8, atol=1e-6)  # one rounding


def test_drop_path_and_dropout_only_in_training():
  model = ViT(**TINY, drop_path=0.5, dropout=0.1)
  x = jax.random.normal(jax.random.key(0), (4, *IMAGE_SHAPE))
  params = jax.tree.map(lambda v: 0.2 * v, random_like(param_shapes(TINY, IMAGE_SHAPE)))
  apply = jax.jit(lambda x, train, rng: model.apply({'params': params}, x, train=train, rngs={'dropout': rng}),
                  static_argnums=1)
  np.testing.assert_array_equal(apply(x, False, jax.random.key(1)), apply(x, False, jax.random.key(2)))
  train = lambda s: apply(x, True, jax.random.key(s))
  assert not np.allclose(train(1), train(2))
  np.testing.assert_array_equal(train(1), train(1))


def test_model_config_rebuilds():
  model = ViT(**{**TINY, 'patch_size': (4, 4)})
  config = model_config(model)
  assert config['patch_size'] == (4, 4) and config.to_json()['patch_size'] == [4, 4]
  assert config['width'] == TINY['width']
  assert ViT(**config) == model


def test_vit_config_is_frozen_validated_and_resolves_defaults(tmp_path):
  config = ViTConfig.of({**TINY, 'mlp_dim': None})
  assert config.mlp_dim == 4 * TINY['width'] and config['depth'] == TINY['depth']
  assert config.pool_type == ViT.pool_type and len(config) == len(dict(config))
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.width = 64
  with pytest.raises(ValueError, match='num_heads must be a positive divisor of width=32, got 5'):
    config.replace(num_heads=5)
  with pytest.raises(ValueError, match=r"Unknown ViT field\(s\) \['widht'\]"):
    ViTConfig.of({**TINY, 'widht': 3})
  # The same ViT, however it is written; another one is not equal.
  assert config == {**TINY, 'mlp_dim': None} and config == {**TINY, 'mlp_dim': 4 * TINY['width']}
  assert config != TINY and config != {**TINY, 'mlp_dim': None, 'depth': 5}  # TINY's mlp_dim is 2 x width
  # JSON round trip, through a checkpoint as through json itself.
  assert ViTConfig.of(json.loads(json.dumps(config.to_json()))) == config
  checkpoint.save_params(str(tmp_path / 'p'), param_shapes_as_zeros(config), config)
  _, loaded = checkpoint.load_params(str(tmp_path / 'p'))
  assert isinstance(loaded, ViTConfig) and loaded == config
  with open(tmp_path / 'p' / 'model_config.json') as f:
    assert json.load(f) == config.to_json()


def param_shapes_as_zeros(config):
  return jax.tree.map(lambda s: np.zeros(s.shape, np.float32), param_shapes(config, IMAGE_SHAPE))


@pytest.mark.parametrize('field,value,message', [
    ('depth', 0, 'depth must be an integer >= 1, got 0'),
    ('num_heads', 5, 'num_heads must be a positive divisor of width=32, got 5'),
    ('pool_type', 'map', "pool_type must be one of ('gap', 'tok'), got 'map'"),
    ('posemb', 'sincos1d', "posemb must be one of"),
    ('drop_path', 1.0, 'drop_path must be in [0, 1), got 1.0'),
    ('attention_impl', 'flash', "attention_impl must be one of (None, 'xla', 'cudnn'), got 'flash'"),
    ('norm_impl', 'triton', "norm_impl must be one of (None, 'pallas'), got 'triton'"),
    ('mlp_impl', 'cublaslt', "mlp_impl must be one of (None, 'pallas'), got 'cublaslt'"),
    ('qkv_impl', 'cublas', "qkv_impl must be one of (None, 'pallas'), got 'cublas'"),
    ('remat_policy', 'everything', "remat_policy must be one of (None, 'nothing_saveable', 'dots_saveable', "
                                   "'dots_with_no_batch_dims_saveable'), got 'everything'"),
])
def test_bad_config_names_the_field(field, value, message):
  with pytest.raises(ValueError, match=r'^' + re.escape(message)):
    ViT(**{**TINY, field: value})


def test_a_jax_without_pallas_triton_runs_xlas_ops_and_names_each_kernel_field():
  """JAX 0.11 deprecated Pallas's Triton backend: once it is gone lgjax still imports and
  trains, and asking for a kernel is a config error, before any work."""
  import subprocess
  import sys
  from conftest import ROOT
  script = """if True:
    import json, sys
    sys.modules['jax.experimental.pallas.triton'] = None  # import fails, as in a JAX without it
    import jax, jax.numpy as jnp
    from lgjax.models import ViT
    tiny = dict(num_classes=5, patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64)
    x = jnp.ones((2, 16, 16, 1))
    logits = ViT(**tiny).apply(ViT(**tiny).init(jax.random.key(0), x), x)
    errors = []
    for field in ('norm_impl', 'mlp_impl', 'qkv_impl'):
      try:
        ViT(**tiny, **{field: 'pallas'})
      except ValueError as e:
        errors.append(str(e))
    print(json.dumps([logits.shape, errors]))
  """
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  shape, errors = json.loads(result.stdout.splitlines()[-1])
  assert shape == [2, 5]
  assert errors == [f"{field}='pallas' needs Pallas's Triton backend (jax.experimental.pallas.triton), which JAX "
                    f"{jax.__version__} does not have; set {field}=None to run XLA's ops."
                    for field in ('norm_impl', 'mlp_impl', 'qkv_impl')]


def test_attention_impl_xla_is_the_default_computation():
  x = jax.random.normal(jax.random.key(0), (2, *IMAGE_SHAPE))
  params = ViT(**TINY).init(jax.random.key(1), x)
  np.testing.assert_array_equal(ViT(**TINY).apply(params, x),
                                ViT(**TINY, attention_impl='xla').apply(params, x))


ALL = dict(norm_impl='pallas', mlp_impl='pallas', qkv_impl='pallas')


@pytest.mark.parametrize('fields,kernels', [
    (dict(drop_path=0.5, dropout=0.1), dict(norm_impl='pallas')),  # (random in training: XLA's MLP)
    (dict(), dict(mlp_impl='pallas', qkv_impl='pallas')),  # nothing random in training: their kernels run there too
    pytest.param(dict(), ALL, marks=pytest.mark.slow),  # norm_impl apart from the others in the fast tier
    pytest.param(dict(scan=True, drop_path=0.5, remat_policy='nothing_saveable', final_norm='pooled'), ALL,
                 marks=pytest.mark.slow),  # the same blocks under scan and remat: the slow tier
])
def test_pallas_kernels_make_the_same_model(fields, kernels):
  """norm_impl='pallas' (each residual add in residual_norm's kernel with the LayerNorm
  after it, the last one in encoder_norm's, or before it when it norms the pooled vector),
  mlp_impl='pallas' (gelu_mlp's matmuls with the bias and GELU in them) and qkv_impl='pallas'
  (qkv_projection's, with the query's bias and the input's gradient sum) make the same
  params and, in training, the same loss and gradients, drop-path and dropout draws
  included; the blocks' sown outputs (with_block_outputs) are the same too."""
  x = jax.random.normal(jax.random.key(0), (4, *IMAGE_SHAPE))
  plain, fused = ViT(**TINY, **fields), ViT(**TINY, **fields, **kernels)
  params = plain.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, params, fused.init(jax.random.key(1), x))
  params = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(2), v.shape), params)  # LN params too
  loss = lambda model: jax.jit(jax.value_and_grad(lambda p: jnp.mean(jnp.square(
      model.apply(p, x, train=True, rngs={'dropout': jax.random.key(3)})))))
  (want, want_grads), (got, got_grads) = loss(plain)(params), loss(fused)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5), got_grads, want_grads)
  _, want_blocks = with_block_outputs(plain, params['params'], x)
  _, got_blocks = with_block_outputs(fused, params['params'], x)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-5), got_blocks, want_blocks)
  # Params in bfloat16 (as some users serve them): a scanned model's carried bias stays float32.
  half = jax.tree.map(lambda v: v.astype(jnp.bfloat16), params)
  np.testing.assert_allclose(fused.apply(half, x), plain.apply(half, x), atol=1e-2)


def test_kernels_run_in_training_where_draws_are_per_example():
  """With drop path in training, mlp_impl's and qkv_impl's kernels (a custom VJP each a
  block) run where the draws are per example in a batch (draws_per_example: the train
  step's batched loss), and not bare, where a train step vmaps the model one example at a
  time. With dropout, qkv_impl's still run (no dropout inside the projections), mlp_impl's
  not (XLA's MLP drops between its matmuls)."""
  x = jnp.zeros((4, *IMAGE_SHAPE))

  def kernels(**fields):
    model = ViT(**TINY, drop_path=0.3, mlp_impl='pallas', qkv_impl='pallas', **fields)
    params = model.init(jax.random.key(0), x)
    train = lambda p, x: model.apply(p, x, train=True, rngs={'dropout': jax.random.key(1)})

    def batched(p, x):
      with vit.draws_per_example(jnp.arange(4)):
        return train(p, x)
    return [len(jaxpr_eqns(jax.make_jaxpr(fn)(params, x).jaxpr, 'custom_vjp_call')) for fn in (batched, train)]

  assert kernels() == [2 * TINY['depth'], 0]
  assert kernels(dropout=0.1) == [TINY['depth'], 0]
  model = ViT(**TINY, drop_path=0.3, mlp_impl='pallas')
  params = model.init(jax.random.key(0), x)
  train = lambda p, x: model.apply(p, x, train=True, rngs={'dropout': jax.random.key(1)})
  with pytest.raises(ValueError, match=r'ids must be shaped \(batch,\) = \(4,\), got \(3,\)'):
    with vit.draws_per_example(jnp.arange(3)):
      train(params, x)


def test_dropout_is_flax_dropout_outside_draws_per_example():
  """vit.Dropout outside draws_per_example is nn.Dropout: inside a module, the same
  automatic name, hence the same key, hence the same mask."""
  class Twice(nn.Module):
    dropout: type

    @nn.compact
    def __call__(self, x):
      return self.dropout(0.3)(x, False) + self.dropout(0.3)(x, False)

  x = jnp.ones((4, 5, 8))
  got, want = (Twice(cls).apply({}, x, rngs={'dropout': jax.random.key(1)}) for cls in (vit.Dropout, nn.Dropout))
  np.testing.assert_array_equal(got, want)
  assert 0 < float((got == 0).mean()) < 1


def test_draws_per_example_do_not_depend_on_the_batch():
  """Within draws_per_example, row i's dropout and drop-path draws come from its id alone:
  the same outputs beside other examples and in any order (scanned: each layer its own key;
  unscanned in test_train's loss), and other draws than the whole-batch ones."""
  model = ViT(**TINY, drop_path=0.3, dropout=0.2, scan=True)
  x = jax.random.normal(jax.random.key(0), (6, *IMAGE_SHAPE))
  params = model.init(jax.random.key(1), x)

  @jax.jit
  def train(x, ids):
    with vit.draws_per_example(ids):
      return model.apply(params, x, train=True, rngs={'dropout': jax.random.key(2)})
  ids = jnp.array([5, 9, 2, 11, 7, 3])
  whole = train(x, ids)
  np.testing.assert_allclose(train(x[::-1], ids[::-1])[::-1], whole, atol=1e-6)
  np.testing.assert_allclose(train(x.at[:3].set(0.0), ids.at[:3].set(40))[3:], whole[3:], atol=1e-6)
  assert np.abs(whole - model.apply(params, x, train=True, rngs={'dropout': jax.random.key(2)})).max() > 1e-3


def test_pallas_kernels_in_bfloat16_are_as_accurate_as_xla_ops():
  """In bfloat16 the kernels round in other places than XLA's ops (once, from float32 sums):
  the gradients stay as close to the float32 model's as XLA's are."""
  x = jax.random.normal(jax.random.key(0), (4, *IMAGE_SHAPE))
  params = ViT(**TINY).init(jax.random.key(1), x)
  params = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(2), v.shape), params)
  grads = lambda model: jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(model.apply(p, x)))))(params)
  want = grads(ViT(**TINY))
  error = lambda got: max(jax.tree.leaves(jax.tree.map(
      lambda g, w: float(jnp.linalg.norm(g - w) / jnp.linalg.norm(w)), got, want)))
  xla, ours = error(grads(ViT(**TINY, dtype='bfloat16'))), error(grads(ViT(**TINY, dtype='bfloat16', **ALL)))
  assert xla < 0.03 and ours < 1.5 * xla, (ours, xla)


@pytest.mark.parametrize('scan,policy', [(False, 'dots_saveable'), (True, 'nothing_saveable')])
def test_remat_gives_the_same_gradients_in_less_memory(scan, policy):
  """Remat changes what the backward pass keeps, not the numbers: the same loss and gradients
  (drop-path draws included), and with scan under half the step's temporaries (XLA:CPU's
  scheduler runs an unscanned model's recomputations early, so only scan saves memory there)."""
  config = {**TINY, 'depth': 2, 'drop_path': 0.2, 'scan': scan}
  x = jax.random.normal(jax.random.key(0), (16, *IMAGE_SHAPE))
  params = ViT(**config).init(jax.random.key(1), x)['params']

  def grad_fn(remat_policy):
    model = ViT(**config, remat_policy=remat_policy)
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(model.apply(
        {'params': p}, x, train=True, rngs={'dropout': jax.random.key(2)}) ** 2)))

  plain, remat = grad_fn(None), grad_fn(policy)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat(params), plain(params))
  if scan:
    temp = lambda fn: fn.lower(params).compile().memory_analysis().temp_size_in_bytes
    assert temp(remat) < temp(plain) / 2


def test_unknown_field_is_named():
  with pytest.raises(ValueError, match=re.escape("Unknown ViT field(s) ['mlp_dims']")):
    check_config({**TINY, 'mlp_dims': 3})


def test_forward_flops_by_hand():
  from lgjax.models import flops
  # 16 patches of 4x4x1; per block: qkvo 8*16*32^2 = 131072, attention 4*16^2*32 = 32768,
  # MLP 4*16*32*64 = 131072; stem 2*16*16*32 = 16384; head 2*32*5 = 320.
  assert flops.forward_flops(TINY, IMAGE_SHAPE) == 16384 + 3 * (131072 + 32768 + 131072) + 320
  assert flops.num_tokens({**TINY, 'pool_type': 'tok'}, IMAGE_SHAPE) == 17


def _init(param_init, **overrides):
  config = {**TINY, 'width': 64, 'mlp_dim': 256, 'pool_type': 'tok', 'param_init': param_init,
            **overrides}
  return dict(tree_lib.flatten_with_names(
      ViT(**config).init(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))['params']))


def test_deit_init_is_the_papers():
  """timm's DeiT: Linear kernels and pos/cls N(0, 0.02) (truncated at 2 std), biases 0,
  the patch conv as PyTorch's default, U(+-1/sqrt(fan_in)), LayerNorm 1/0."""
  p = _init('deit')
  bound = 1 / np.sqrt(4 * 4 * 1)  # patch 4x4, one channel
  for name, x in p.items():
    x = np.asarray(x)
    if name.startswith('embedding/'):
      assert np.abs(x).max() <= bound and abs(x.std() - bound / np.sqrt(3)) < 0.1 * bound, name
    elif name.endswith('kernel') or name in ('pos_embedding', 'cls'):
      assert abs(x.std() - 0.02) < 0.003 and np.abs(x).max() <= 2 * 0.02 / 0.8796 + 1e-6, name
    elif name.endswith('scale'):
      np.testing.assert_array_equal(x, 1.0)
    else:
      np.testing.assert_array_equal(x, 0.0, err_msg=name)


def test_big_vision_init_is_big_vision():
  p = _init('big_vision', head_zeroinit=True)
  xavier = np.sqrt(6 / (64 + 64))  # query kernel: fan_in 64, fan_out 4 heads x 16
  q = np.asarray(p['Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel'])
  assert np.abs(q).max() <= xavier and abs(q.std() - xavier / np.sqrt(3)) < 0.01
  assert abs(np.std(p['pos_embedding']) - 1 / np.sqrt(64)) < 0.02
  np.testing.assert_array_equal(p['cls'], 0.0)
  np.testing.assert_array_equal(p['head/kernel'], 0.0)
  assert abs(np.std(p['embedding/kernel']) - 1 / np.sqrt(16)) < 0.05  # lecun normal


def test_unknown_param_init_is_refused():
  with pytest.raises(ValueError, match=r"param_init must be one of \['big_vision', 'deit'"):
    ViT(**{**TINY, 'param_init': 'xavier'})


def test_a_fresh_head_lets_gradients_reach_the_body():
  """Why heads start random: a zero head passes no gradient to the blocks, so
  under Adam the first updates of an inherited body follow noise, not the task."""
  x = jax.random.normal(jax.random.key(1), (4, *IMAGE_SHAPE))
  labels = jnp.arange(4) % TINY['num_classes']

  def body_grad(**overrides):
    model = ViT(**{**TINY, **overrides})
    params = model.init(jax.random.key(0), x)['params']
    loss = lambda p: -jnp.mean(jax.nn.log_softmax(model.apply({'params': p}, x))[jnp.arange(4), labels])
    return jax.jit(jax.grad(loss))(params)['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']

  assert float(jnp.abs(body_grad()).max()) > 1e-6  # the default: a random head
  np.testing.assert_array_equal(body_grad(head_zeroinit=True), 0.0)
