import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, TINY, random_like, run_config, run_expand
from lgjax import checkpoint
from lgjax import tree as tree_lib
from lgjax.learngene import METHODS, load_learngene, save_learngene, tleg, wave
from lgjax.models import ViT, blocks, param_shapes

WAVE = METHODS['wave']
AUX = {**TINY, 'depth': 4, 'pool_type': 'tok'}  # width 32, 4 heads of 8, mlp 64
TEMPLATE_WIDTH, NUM = 8, 3  # 4 templates wide: templates have 1 head, mlp 16


def np_kron_sum(s, t):
  return sum(np.kron(s[n], t[n]) for n in range(len(s)))


@pytest.fixture(scope='module')
def learngene():
  """A WAVE learngene for AUX with random (not init-structured) templates and scalers."""
  init = WAVE.init(jax.random.key(0), AUX, image_shape=IMAGE_SHAPE, template_width=TEMPLATE_WIDTH,
                   num_templates=NUM)
  return jax.device_get(random_like(init, seed=1))


@pytest.mark.parametrize('s_shape, t_shape', [((3, 2, 2), (3, 5, 4)), ((2, 4, 4, 1), (2, 8, 1, 8)), ((4, 3), (4, 7))])
def test_kron_sum_matches_numpy(s_shape, t_shape):
  rng = np.random.default_rng(0)
  s, t = rng.standard_normal(s_shape), rng.standard_normal(t_shape)
  np.testing.assert_allclose(wave.kron_sum(jnp.asarray(s), jnp.asarray(t)), np_kron_sum(s, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('scan', [False, True])
def test_expand_to_its_own_size_is_the_kronecker_rule(learngene, scan):
  out = jax.device_get(WAVE.expand(learngene, {**AUX, 'scan': scan}))
  out = blocks.to_unscanned(out)
  t, s = learngene['templates'], learngene['scalers']
  for l in range(AUX['depth']):
    got = out['Transformer'][f'encoderblock_{l}']
    for name, leaf in tree_lib.flatten_with_names(got):
      t_leaf = dict(tree_lib.flatten_with_names(t['block']))[name]
      s_leaf = dict(tree_lib.flatten_with_names(s['blocks']))[name][l]
      np.testing.assert_allclose(leaf, np_kron_sum(s_leaf, t_leaf), rtol=1e-5, atol=1e-5, err_msg=name)
  np.testing.assert_allclose(out['embedding']['kernel'],
                             np_kron_sum(s['shared']['embedding']['kernel'], t['shared']['embedding']['kernel']),
                             rtol=1e-5, atol=1e-5)
  assert out['pos_embedding'].shape == (1, 16, 32) and out['head']['kernel'].shape == (32, 5)


def test_tleg_is_wave_with_two_templates_and_fixed_mixes():
  """At the template width, scalers (1, l / L) over templates (A, B) give TLEG's blocks."""
  config = {**AUX, 'depth': 5}
  lg = jax.device_get(random_like(tleg.init_learngene(jax.random.key(0), config, image_shape=IMAGE_SHAPE), seed=2))
  templates = {'shared': jax.tree.map(lambda x: np.stack([x, np.zeros_like(x)]), lg['shared']),
               'block': jax.tree.map(lambda a, b: np.stack([a, b]), lg['base'], lg['slope'])}
  mix = np.stack([np.ones(5), np.arange(5) / 5], axis=1)  # (depth, 2)
  shapes = wave.scaler_shapes({'templates': templates}, config)
  scalers = {'shared': jax.tree.map(lambda s: np.array([1.0, 0.0]).reshape(s.shape), shapes['shared']),
             'blocks': jax.tree.map(lambda s: mix.reshape(s.shape), shapes['blocks'])}
  got = jax.device_get(WAVE.expand({'templates': templates, 'scalers': scalers}, config))
  want = jax.device_get(tleg.expand(lg, 5))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)


def test_scalers_for_another_size_are_selected(learngene):
  """Depth 4 -> 2 takes layers 0 and 2; width 32 -> 16 (4 -> 2 templates wide) blocks 0 and 2."""
  target = {**AUX, 'depth': 2, 'width': 16, 'num_heads': 2, 'mlp_dim': 32}
  got = jax.device_get(wave.scalers_for(learngene, target))
  have = learngene['scalers']['blocks']['MlpBlock_0']['Dense_0']['kernel']  # (4, N, 4, 4)
  np.testing.assert_array_equal(got['blocks']['MlpBlock_0']['Dense_0']['kernel'], have[[0, 2]][:, :, [0, 2]][..., [0, 2]])
  have_q = learngene['scalers']['blocks']['MultiHeadDotProductAttention_0']['query']['kernel']  # (4, N, 4, 4, 1)
  np.testing.assert_array_equal(got['blocks']['MultiHeadDotProductAttention_0']['query']['kernel'],
                                have_q[[0, 2]][:, :, [0, 2]][:, :, :, [0, 2]])
  deeper = jax.device_get(wave.scalers_for(learngene, {**AUX, 'depth': 8}))  # layer l takes l // 2
  np.testing.assert_array_equal(deeper['blocks']['LayerNorm_0']['scale'],
                                learngene['scalers']['blocks']['LayerNorm_0']['scale'][np.arange(8) // 2])
  assert wave.scalers_for(learngene, AUX) is learngene['scalers']


@pytest.mark.parametrize('width, heads, depth', [(8, 1, 1), (16, 2, 3), (24, 3, 2), (32, 4, 6), (64, 8, 2)])
def test_any_width_and_depth_within_the_rules_builds_a_vit(learngene, width, heads, depth):
  target = {**AUX, 'width': width, 'num_heads': heads, 'mlp_dim': 2 * width, 'depth': depth}
  params = jax.jit(lambda lg: WAVE.expand(lg, target))(learngene)
  tree_lib.check_shapes(params, param_shapes(target, IMAGE_SHAPE), 'expanded')
  logits = jax.jit(ViT(**target).apply)({'params': params}, jnp.ones((2, *IMAGE_SHAPE)))
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


def test_init_starts_as_a_plain_vit():
  """S_0 = identity, T_n>0 LayerNorm scales 0: the aux model's norms are 1 and biases 0,
  its diagonal kernel blocks T_0 plus random mixes of the other templates."""
  lg = jax.device_get(WAVE.init(jax.random.key(3), AUX, image_shape=IMAGE_SHAPE,
                                template_width=TEMPLATE_WIDTH, num_templates=NUM))
  params = jax.device_get(WAVE.expand(lg, AUX))
  for name, leaf in tree_lib.flatten_with_names(params):
    if name.endswith('scale'):
      np.testing.assert_array_equal(leaf, 1.0, err_msg=name)
    elif name.endswith('bias') and 'embedding' not in name:
      np.testing.assert_array_equal(leaf, 0.0, err_msg=name)
  s0 = lg['scalers']['blocks']['MlpBlock_0']['Dense_0']['kernel'][:, 0]  # (depth, 4, 4)
  np.testing.assert_array_equal(s0, np.broadcast_to(np.eye(4), s0.shape))
  s0_out = lg['scalers']['blocks']['MultiHeadDotProductAttention_0']['out']['kernel'][:, 0]  # (depth, 4, 1, 4)
  np.testing.assert_array_equal(s0_out[:, :, 0], np.broadcast_to(np.eye(4), (4, 4, 4)))
  rest = lg['scalers']['blocks']['MlpBlock_0']['Dense_0']['kernel'][:, 1:]
  assert 0.3 < rest.std() * np.sqrt(NUM) < 2.0


def test_gradient_reaches_templates_and_scalers(learngene):
  def loss(lg):
    return jnp.sum(ViT(**AUX).apply({'params': WAVE.expand(lg, AUX)}, jnp.ones((1, *IMAGE_SHAPE))) ** 2)
  grads = jax.jit(jax.grad(loss))(learngene)
  for part in ('templates', 'scalers'):
    norms = {n: float(jnp.abs(g).sum())
             for n, g in tree_lib.flatten_with_names(grads[part]['block' if part == 'templates' else 'blocks'])}
    key_bias = [n for n in norms if n.endswith('key/bias')]  # softmax ignores it: its gradient is 0 (vit.py)
    assert len(key_bias) == 1 and all((v == 0) == (n in key_bias) for n, v in norms.items()), (part, norms)


def test_fresh_head_for_other_classes(learngene):
  params = WAVE.expand(learngene, {**AUX, 'num_classes': 7}, rng=jax.random.key(0))
  assert params['head']['kernel'].shape == (32, 7)
  with pytest.raises(ValueError, match='pass rng for its fresh head'):
    WAVE.expand(learngene, {**AUX, 'num_classes': 7})


@pytest.mark.parametrize('change, message', [
    ({'width': 20, 'num_heads': 4}, r'template_width=8 must divide the model width 20'),
    ({'width': 24, 'num_heads': 4, 'mlp_dim': 48}, r'num_heads=4 is not a multiple of 3: heads and mlp_dim scale'),
    ({'width': 16, 'num_heads': 2, 'mlp_dim': 33}, r'mlp_dim=33 is not a multiple of 2'),
])
def test_sizes_outside_the_rules_are_refused_before_work(change, message):
  with pytest.raises(ValueError, match=message):
    WAVE.check_options({**AUX, **change}, template_width=8, num_templates=2)


def test_option_errors():
  with pytest.raises(ValueError, match='WAVE templates need template_width and num_templates'):
    WAVE.init(jax.random.key(0), AUX, image_shape=IMAGE_SHAPE, template_width=8)
  with pytest.raises(ValueError, match='num_templates must be an integer >= 1, got 0'):
    WAVE.check_options(AUX, template_width=8, num_templates=0)
  assert WAVE.frozen(templates_from='/x') == ('^templates/',) and WAVE.frozen() == ()


def test_malformed_learngenes_are_named(learngene):
  with pytest.raises(ValueError, match=r"WAVE learngene must have keys \['scalers', 'templates'\]"):
    WAVE.check({'templates': learngene['templates']})
  bad = {**learngene, 'scalers': {**learngene['scalers'],
                                  'shared': jax.tree.map(lambda x: x[:1], learngene['scalers']['shared'])}}
  with pytest.raises(ValueError, match=r'disagree on the number of templates: \[1, 3\]'):
    WAVE.check(bad)


def test_templates_from_keeps_the_templates_and_selects_scalers(tmp_path, learngene):
  save_learngene(str(tmp_path / 'lg'), learngene, method='wave', model_config=AUX)
  target = {**AUX, 'width': 16, 'num_heads': 2, 'mlp_dim': 32, 'depth': 3}
  got = jax.device_get(WAVE.init(jax.random.key(9), target, image_shape=IMAGE_SHAPE,
                                 templates_from=str(tmp_path / 'lg')))
  jax.tree.map(np.testing.assert_array_equal, got['templates'], learngene['templates'])
  jax.tree.map(np.testing.assert_array_equal, got['scalers'], jax.device_get(wave.scalers_for(learngene, target)))
  with pytest.raises(ValueError, match=r"num_templates=2, but templates_from=.* has num_templates=3"):
    WAVE.init(jax.random.key(9), target, image_shape=IMAGE_SHAPE, templates_from=str(tmp_path / 'lg'),
              num_templates=2)
  tleg_dir = str(tmp_path / 'tleg')
  save_learngene(tleg_dir, tleg.init_learngene(jax.random.key(0), AUX, image_shape=IMAGE_SHAPE),
                 method='tleg', model_config=AUX)
  with pytest.raises(ValueError, match=r"holds a 'tleg' learngene, not a WAVE one"):
    WAVE.init(jax.random.key(9), target, image_shape=IMAGE_SHAPE, templates_from=tleg_dir)


@pytest.mark.slow  # a subprocess
def test_expand_cli_builds_any_size(tmp_path, learngene):
  save_learngene(str(tmp_path / 'lg'), learngene, method='wave', model_config=AUX)
  out = tmp_path / 'out'
  proc = run_expand('--method=wave', f'--learngene={tmp_path / "lg"}', '--width=16', '--num_heads=2',
                    '--depth=3', f'--out={out}')
  assert proc.returncode == 0, proc.stderr
  params, config = checkpoint.load_params(str(out))
  assert (config['width'], config['depth'], config['mlp_dim']) == (16, 3, 64)
  want = WAVE.expand(learngene, {**AUX, 'width': 16, 'num_heads': 2, 'mlp_dim': 64, 'depth': 3})
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(want))


@pytest.mark.slow  # three training runs
def test_three_stages_train(tmp_path, teacher_dir):
  """Templates through the aux model; scalers for another size with the templates frozen;
  a descendant from them. The templates come out of stage 2 bit for bit as they went in."""
  from lgjax.train import train_and_evaluate
  stage1, stage2, desc = (str(tmp_path / n) for n in ('templates', 'scalers', 'descendant'))
  train_and_evaluate(run_config('wave_aux', **{'teacher.dir': teacher_dir}), stage1)
  target = dict(width=16, num_heads=1, mlp_dim=32, depth=3)
  train_and_evaluate(run_config('wave_scalers', **{'teacher.dir': teacher_dir, 'total_steps': 3,
                                                   'learngene.templates_from': os.path.join(stage1, 'export'),
                                                   **{f'model.{k}': v for k, v in target.items()}}), stage2)
  first, _ = load_learngene(os.path.join(stage1, 'export'))
  second, meta = load_learngene(os.path.join(stage2, 'export'))
  jax.tree.map(np.testing.assert_array_equal, second['templates'], first['templates'])
  start = wave.scalers_for(first, {**meta['model_config']})
  moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(second['scalers']), jax.tree.leaves(start))]
  assert max(moved) > 0
  final = train_and_evaluate(run_config('descendant', **{
      'init.method': 'wave', 'init.learngene_dir': os.path.join(stage2, 'export'),
      **{f'model.{k}': v for k, v in target.items()}}), desc)
  assert np.isfinite(final['eval_loss'])
  params, _ = checkpoint.load_params(os.path.join(desc, 'export'))
  assert params['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel'].shape == (16, 32)
