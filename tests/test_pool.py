import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, random_like, run_config, run_expand
from lgjax import checkpoint, data
from lgjax.learngene import load_learngene, save_learngene
from lgjax.learngene import pool
from lgjax.models import ViT, param_shapes
from lgjax.train import pool_training, reporting, train_and_evaluate

CONFIGS = [dict(num_classes=5, patch_size=4, width=w, depth=2, num_heads=2, mlp_dim=2 * w) for w in (16, 32)]


@pytest.fixture(scope='module')
def tiny_pool():
  instances = [jax.tree.map(lambda x: 0.3 * x, random_like(param_shapes(c, IMAGE_SHAPE), seed=i))
               for i, c in enumerate(CONFIGS)]
  rng = np.random.default_rng(0)
  maps = [{'kernel': jnp.asarray(rng.standard_normal((48, c['width'])), jnp.float32),
           'bias': jnp.asarray(rng.standard_normal(c['width']), jnp.float32)} for c in CONFIGS]
  return {'instances': instances, 'maps': maps}


def test_identity_stitch_reproduces_the_instance(tiny_pool):
  x = jax.random.normal(jax.random.key(0), (3, *IMAGE_SHAPE))
  want = ViT(**CONFIGS[1]).apply({'params': tiny_pool['instances'][1]}, x)
  for j in (0, 1, 2):
    module, params = pool.assemble(tiny_pool, CONFIGS, (1, j, 1, j), stitch={'kernel': jnp.eye(32), 'bias': jnp.zeros(32)})
    np.testing.assert_array_equal(module.apply({'params': params}, x), want)
  module, params = pool.assemble(tiny_pool, CONFIGS, (1, 2, 1, 2))  # the instance alone: no stitch
  assert 'stitch' not in params
  np.testing.assert_array_equal(module.apply({'params': params}, x), want)


def test_lstsq_stitch_matches_numpy(tiny_pool):
  x = jax.random.normal(jax.random.key(1), (4, *IMAGE_SHAPE))
  stitch = pool.init_stitch(tiny_pool, CONFIGS, (0, 1, 1, 1), x)
  a = np.asarray(pool.hidden_states(tiny_pool['instances'][0], CONFIGS[0], x)[1]).reshape(-1, 16)
  b = np.asarray(pool.hidden_states(tiny_pool['instances'][1], CONFIGS[1], x)[1]).reshape(-1, 32)
  solution, *_ = np.linalg.lstsq(np.concatenate([a, np.ones((len(a), 1))], axis=1), b, rcond=None)
  np.testing.assert_allclose(stitch['kernel'], solution[:-1], rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(stitch['bias'], solution[-1], rtol=1e-3, atol=1e-4)
  # The stem output feeds k = 0; block j - 1's output is hidden_states[j].
  _, inter = ViT(**CONFIGS[0]).apply({'params': tiny_pool['instances'][0]}, x, mutable=['intermediates'])
  np.testing.assert_allclose(a, np.asarray(inter['intermediates']['Transformer']['encoderblock_0']['out'][0]).reshape(-1, 16),
                             rtol=1e-4, atol=1e-5)


def test_pool_rule_stitches_narrow_to_wide_at_neighbouring_cuts():
  configs = [{**c, 'depth': 3} for c in CONFIGS]
  tree = {'instances': [random_like(param_shapes(c, IMAGE_SHAPE), seed=i) for i, c in enumerate(configs)],
          'maps': [{}, {}]}
  specs = lambda rule: sorted(r['spec'] for r in pool.enumerate_specs(tree, configs, IMAGE_SHAPE, rule))
  alone = [(0, 3, 0, 3), (1, 3, 1, 3)]
  assert specs('pool') == sorted(alone + [(0, 1, 1, 1), (0, 1, 1, 2), (0, 2, 1, 1), (0, 2, 1, 2)])
  assert specs('snnet') == sorted(alone + [(0, 1, 1, 1), (0, 2, 1, 2), (1, 1, 0, 1), (1, 2, 0, 2)])
  with pytest.raises(ValueError, match=r"stitch rule must be one of \('snnet', 'pool'\), got 'all'"):
    pool.enumerate_specs(tree, configs, IMAGE_SHAPE, 'all')


def test_supervised_pairs():
  config = lambda supervise: run_config('pool_distill', **{'pool.supervise': supervise})
  assert pool_training.supervised_pairs(config('every'), 4, 6) == [(0, 1), (1, 2), (2, 3), (3, 5)]  # round half to even
  assert pool_training.supervised_pairs(config('last'), 4, 6) == [(3, 5)]
  with pytest.raises(ValueError, match=r"pool.supervise must be one of \('every', 'last'\), got 'first'"):
    pool_training.supervised_pairs(config('first'), 4, 6)


def test_param_and_flop_counts_by_hand(tiny_pool):
  rows = {r['spec']: r for r in pool.enumerate_specs(tiny_pool, CONFIGS, IMAGE_SHAPE)}
  assert sorted(rows) == [(0, 1, 1, 1), (0, 2, 0, 2), (1, 1, 0, 1), (1, 2, 1, 2)]
  # Spec 0.1-1.1: stem of 16 (16*16+16 embedding, 16*16 pos), one 16-wide block
  # (2 LNs 4*16 + q,k,v,out 4*(16*16+16) + MLP 16*32+32 + 32*16+16 = 2224),
  # stitch 16*32+32, one 32-wide block (same formula: 8544), norm 64, head 32*5+5.
  block = lambda d, m: 4 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)
  assert block(16, 32) == 2224 and block(32, 64) == 8544
  assert rows[(0, 1, 1, 1)]['params'] == (272 + 256) + 2224 + (512 + 32) + 8544 + 64 + 165
  # FLOPs: 16 tokens; stem 2*16*16*16; block 8*T*d^2 + 4*T^2*d + 4*T*d*m; stitch 2*16*16*32; head 2*32*5.
  fl = lambda d, m: 8 * 16 * d * d + 4 * 256 * d + 4 * 16 * d * m
  assert rows[(0, 1, 1, 1)]['flops'] == 2 * 16 * 16 * 16 + fl(16, 32) + 2 * 16 * 16 * 32 + fl(32, 64) + 320
  assert rows[(0, 2, 0, 2)]['flops'] == 2 * 16 * 16 * 16 + 2 * fl(16, 32) + 160


def test_errors(tiny_pool):
  with pytest.raises(ValueError, match=r'spec j=3 must be in \[0, 2\] \(depth of instance 0\)'):
    pool.assemble(tiny_pool, CONFIGS, (0, 3, 1, 1))
  with pytest.raises(ValueError, match=r'spec end_instance=2 must be in \[0, 2\)'):
    pool.assemble(tiny_pool, CONFIGS, (0, 1, 2, 1))
  with pytest.raises(ValueError, match=r'no trained stitch for spec 0.1-1.1: pass stitch=init_stitch'):
    pool.assemble(tiny_pool, CONFIGS, (0, 1, 1, 1))
  with pytest.raises(ValueError, match=r'stitch kernel has shape \(16, 16\), expected \(16, 32\)'):
    pool.assemble(tiny_pool, CONFIGS, (0, 1, 1, 1), stitch={'kernel': jnp.zeros((16, 16)), 'bias': jnp.zeros(16)})
  with pytest.raises(ValueError, match='The learngene pool is empty'):
    pool.enumerate_specs({'instances': [], 'maps': []}, [], IMAGE_SHAPE)
  with pytest.raises(ValueError, match='differ in patch_size'):
    pool.check_spec([CONFIGS[0], {**CONFIGS[1], 'patch_size': 2}], (0, 1, 1, 1))
  assert pool_training.layer_map('uniform', 2, 6) == [2, 5]
  with pytest.raises(ValueError, match=r"pool.layer_map must be 'uniform' or 2 teacher layer indices in \[0, 6\)"):
    pool_training.layer_map([0, 6], 2, 6)


@pytest.mark.slow  # end to end: the slow tier
def test_distillation_lowers_every_student_loss_then_stitched_training(tmp_path, teacher_dir):
  config = run_config('pool_distill', total_steps=12, eval_every=2, **{
      'teacher.dir': teacher_dir, 'optimizer.lr': 0.1})
  train_and_evaluate(config, str(tmp_path / 'pool'))
  by_step = reporting.read_metrics(str(tmp_path / 'pool'))
  for i in range(2):
    assert by_step[12][f'eval_loss_inst{i}'] < by_step[2][f'eval_loss_inst{i}']
  trained, meta = load_learngene(str(tmp_path / 'pool' / 'export'))
  assert meta['supervised_pairs'] == [[0, 0], [1, 1]] and [c['width'] for c in meta['instance_configs']] == [16, 32]

  stitched = run_config('stitched', total_steps=3, **{'pool.dir': str(tmp_path / 'pool' / 'export')})
  final = train_and_evaluate(stitched, str(tmp_path / 'stitched'))
  assert {k for k in final if k.startswith('eval_accuracy_')} == {
      'eval_accuracy_' + n for n in ('0.1-1.1', '0.2-0.2', '1.1-0.1', '1.2-1.2')}
  table = open(tmp_path / 'stitched' / 'specs.md').read()
  assert '| 0.1-1.1 |' in table and os.path.getsize(tmp_path / 'stitched' / 'specs.png') > 1000

  out = tmp_path / 'model'
  result = run_expand(f'--learngene={tmp_path / "stitched" / "export"}', '--method=pool', '--spec=1,1,0,1',
                      f'--out={out}')
  assert result.returncode == 0, result.stderr
  module, params = checkpoint.load_model(str(out))
  trained_stitch, _ = load_learngene(str(tmp_path / 'stitched' / 'export'))
  np.testing.assert_array_equal(params['stitch']['kernel'], trained_stitch['stitches']['1.1-0.1']['kernel'])
  assert module.apply({'params': params}, np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 5)


def test_distillation_map_gradients(random_teacher_dir):
  """The hidden/attention MSE runs through the width maps: with α = 0 (CE only) the maps get
  no gradient; with α = 0.9 they do. (α weighs distillation in every kind.)"""
  from lgjax.train import kinds, loop
  grads = {}
  for alpha in (0.0, 0.9):
    config = run_config('pool_distill', **{'teacher.dir': random_teacher_dir, 'loss.alpha': alpha})
    kind = kinds.make_kind(loop.resolve(config), (28, 28, 1))
    trainable = kind.init(jax.random.key(0))
    teacher_params, teacher_cfg = checkpoint.load_params(random_teacher_dir)
    loss = kind.example_loss(ViT(**teacher_cfg))
    image = jnp.asarray(np.random.default_rng(0).standard_normal((28, 28, 1)), jnp.float32)
    grads[alpha] = jax.jit(jax.grad(lambda p: loss(p, teacher_params, image, 1, jax.random.key(0),
                                                   jax.random.key(1))[0]))(trainable)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads[0.0]['maps']))
  assert all(float(jnp.abs(g['kernel']).max()) > 0 for g in grads[0.9]['maps'])


def test_lstsq_stitch_batch_spans_the_classes():
  """The least-squares stitch fits on a random batch, not the class-sorted split's first rows."""
  from lgjax import data
  config = run_config('stitched', batch_size=32)
  images = np.asarray(pool_training.stitch_batch(config))
  source = data.data_source(config.dataset, config.dataset.train_split)
  all_images = np.asarray(data.to_float(source.images))
  rows = [int(np.flatnonzero((all_images == x).all(axis=(1, 2, 3)))[0]) for x in images]
  assert len(set(rows)) == 32
  assert len(set(source.labels[rows])) == 5  # every source class, where the first 32 rows hold one
  assert len(set(source.labels[:32])) == 1


def test_stitched_init_reinit_gives_fresh_heads(tmp_path):
  """init.reinit=['^head/'] (new classes): every instance keeps its blocks and stem and
  gets a freshly initialized head."""
  image = (28, 28, 1)
  configs = [dict(c, patch_size=7) for c in CONFIGS]
  instances = [jax.tree.map(lambda x: 0.3 * x + 1.0, random_like(param_shapes(c, image), seed=i))
               for i, c in enumerate(configs)]
  maps = [{'kernel': jnp.ones((48, c['width'])), 'bias': jnp.zeros(c['width'])} for c in configs]
  save_learngene(str(tmp_path / 'pool'), {'instances': instances, 'maps': maps}, method='pool',
                            model_config=configs[0], instance_configs=configs)
  from lgjax.train import kinds, loop
  config = run_config('stitched', **{'pool.dir': str(tmp_path / 'pool'), 'stitch.specs': [[0, 1, 1, 1]],
                                     'init.reinit': ['^head/']})
  got = kinds.make_kind(loop.resolve(config), image).init(jax.random.key(0))['instances']
  for inst, new in zip(instances, got):
    assert np.abs(np.asarray(new['head']['kernel'])).max() < 0.1  # fresh; the pool's are ~1
    jax.tree.map(np.testing.assert_array_equal, new['Transformer'], inst['Transformer'])
    np.testing.assert_array_equal(new['embedding']['kernel'], inst['embedding']['kernel'])
  config.model.num_classes = 7
  with pytest.raises(ValueError, match=r'pool instance 0 has num_classes=5 but model.num_classes=7'):
    kinds.make_kind(loop.resolve(config), image)


@pytest.mark.slow
def test_cross_specs_keep_their_instances_accuracy_at_step_0(tmp_path):
  """A distilled pool's cross specs, stitched by least squares on a random batch, keep
  most of their instances' source accuracy before any stitched training; fit on
  the class-sorted split's first rows (one class), they lose most of it."""
  fast = {'model.param_init': 'big_vision', 'optimizer.lr': 0.05}  # big_vision's init: a fast start
  train_and_evaluate(run_config('teacher', total_steps=300, batch_size=64, **fast), str(tmp_path / 'teacher'))
  train_and_evaluate(run_config('pool_distill', total_steps=300, batch_size=64, **{
      **fast, 'teacher.dir': str(tmp_path / 'teacher' / 'export')}), str(tmp_path / 'pool'))
  tree, meta = load_learngene(str(tmp_path / 'pool' / 'export'))
  stitched = run_config('stitched', batch_size=128)  # the lstsq batch: 128 x 17 token rows
  acc = pool_training.stitched_accuracy(tree, meta['instance_configs'],
                                        [(0, 2, 0, 2), (1, 2, 1, 2), (0, 1, 1, 1), (1, 1, 0, 1)],
                                        pool_training.stitch_batch(stitched), stitched.dataset)
  source = data.data_source(stitched.dataset, 'train')  # sorted by class: its first rows are all zeros
  prep = data.pipeline.Preprocess(stitched.dataset.image_size, 'none', train=False)
  first_rows = data.to_float(np.stack([prep(source[i], None)['image'] for i in range(128)]))
  one_class = pool_training.stitched_accuracy(tree, meta['instance_configs'], [(0, 1, 1, 1), (1, 1, 0, 1)],
                                              first_rows, stitched.dataset)
  alone = min(acc['0.2-0.2'], acc['1.2-1.2'])
  assert alone > 0.9, acc  # the instances learned the source digits
  for spec in ('0.1-1.1', '1.1-0.1'):  # measured: 0.72 from instances of 0.95-0.98; 0.37-0.43 one-class
    assert acc[spec] > alone - 0.3 and acc[spec] > one_class[spec] + 0.2, (acc, one_class)


def test_stitched_blocks_take_the_vits_runtime_fields(monkeypatch):
  """A stitched model's blocks honour remat_policy, norm_impl, mlp_impl, qkv_impl and
  attention_impl as a ViT's do: remat puts each block under jax.checkpoint and keeps the
  numbers, so do norm_impl (each block range adds its last branch before the stitch layer or
  the norm), mlp_impl and qkv_impl; 'cudnn' reaches every block's attention."""
  from lgjax.models.stitched import StitchedViT
  x = jax.random.normal(jax.random.key(0), (4, *IMAGE_SHAPE))
  model = lambda **fields: StitchedViT({**CONFIGS[0], **fields}, {**CONFIGS[1], **fields}, j=1, k=1)
  params = model().init(jax.random.key(1), x)['params']
  forward = lambda m: lambda p: jnp.sum(m.apply({'params': p}, x) ** 2)
  remat = model(remat_policy='nothing_saveable')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.jit(jax.value_and_grad(forward(remat)))(params),
               jax.jit(jax.value_and_grad(forward(model())))(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.jit(jax.value_and_grad(forward(model(norm_impl='pallas', mlp_impl='pallas', qkv_impl='pallas'))))(params),
               jax.jit(jax.value_and_grad(forward(model())))(params))
  remat_name = jax.make_jaxpr(jax.checkpoint(jnp.sin))(1.0).eqns[0].primitive.name  # e.g. 'remat2'
  checkpoints = lambda m: str(jax.make_jaxpr(forward(m))(params)).count(f'{remat_name}[')
  # front block 0 and end block 1 under jax.checkpoint, beyond each MLP's own (vit.MLP_SAVED)
  assert (checkpoints(remat), checkpoints(model())) == (4, 2)
  asked = []

  def attention(*args, implementation=None, **kw):  # records the field, runs XLA's (no cuDNN on a CPU)
    asked.append(implementation)
    return dot_product_attention(*args, **kw)

  dot_product_attention = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, 'dot_product_attention', attention)
  model(attention_impl='cudnn').apply({'params': params}, x)
  assert asked == ['cudnn'] * 2  # each stitched block's attention
