"""FSDP (sharding.fsdp): where leaves live, that a sharded run is the replicated run,
checkpoints that restore into another mesh, and per-array checksums of sharded state."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import IMAGE_SHAPE, losses, params_close, preempted_at, restore_export, run_config, xla_flags
from lgjax.models import ViT
from lgjax.train import checkpoints, loop, optim, parallel, train_and_evaluate
from lgjax.train import step as step_lib


@pytest.mark.parametrize('name, shape, size, min_size, spec', [
    ('head/kernel', (32, 8), 8, 0, P('fsdp')),                        # largest divisible axis
    ('MlpBlock_0/Dense_0/kernel', (32, 64), 8, 0, P(None, 'fsdp')),
    ('out/kernel', (4, 8, 32), 4, 0, P(None, None, 'fsdp')),          # a tie goes to the later axis
    ('pos_embedding', (1, 17, 32), 8, 0, P(None, None, 'fsdp')),      # 17 does not divide
    ('head/bias', (5,), 8, 0, P()),                                   # nothing divides: replicated
    ('head/kernel', (32, 8), 8, 257, P()),                            # under min_size: replicated
    ('head/kernel', (32, 8), 1, 0, P()),                              # fsdp 1: data parallel
    ('Transformer/encoderblock/MlpBlock_0/Dense_0/bias', (16, 8), 8, 0, P(None, 'fsdp')),  # never the layer axis
    ('Transformer/encoderblock/LayerNorm_0/scale', (8, 12), 4, 0, P(None, 'fsdp')),
    ('Transformer/encoderblock/LayerNorm_0/scale', (8, 6), 4, 0, P()),
    ('step', (), 8, 0, P()),
])
def test_fsdp_spec_rule(name, shape, size, min_size, spec):
  assert parallel.fsdp_spec(name, shape, size, min_size) == spec


@pytest.mark.parametrize('scan', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_per_device_state_bytes_drop_by_the_shard_count(scan):
  model = ViT(**{**dict(num_classes=8, patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64), 'scan': scan})
  params = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, *IMAGE_SHAPE)))['params'])(jax.random.key(0))
  tx = optim.make_optimizer(run_config('teacher').optimizer, 16, 10)
  state = step_lib.init_state(params, tx, jax.random.key(1))
  weights = lambda state: (state.params, state.opt_state)  # every axis of width 32 or 64: all split
  total = sum(x.nbytes for x in jax.tree.leaves(weights(state)))
  scalars = sum(x.nbytes for x in jax.tree.leaves(weights(state)) if x.ndim == 0)  # Adam's counts

  def on_device_0(tree):
    d = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == d)

  for fsdp in (1, 2, 8):
    placed = parallel.make_backend('jit', {'fsdp': fsdp, 'min_size': 0}).place_state(state)
    assert on_device_0(weights(placed)) == (total - scalars) // fsdp + scalars
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(placed), jax.device_get(state))


def test_the_state_is_created_in_its_shards():
  """loop.state_init draws each shard on its device: the compiled init's output and
  temporaries per device are a fraction of the state, and its values are the replicated init's."""
  model = ViT(num_classes=8, patch_size=4, width=64, depth=2, num_heads=4, mlp_dim=128)
  init = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, *IMAGE_SHAPE)))['params'])
  tx = optim.make_optimizer(run_config('teacher').optimizer, 16, 10)
  rngs = jax.random.key(0), jax.random.key(1)
  states = {}
  for fsdp in (1, 8):
    create, shardings = loop.state_init(init, tx, parallel.make_backend('jit', {'fsdp': fsdp, 'min_size': 0}), *rngs)
    states[fsdp] = create(*rngs)
    assert jax.tree.map(lambda x: x.sharding, states[fsdp]) == shardings
  total = sum(x.nbytes for x in jax.tree.leaves(states[1]))
  memory = create.lower(*rngs).compile().memory_analysis()  # fsdp 8
  assert memory.output_size_in_bytes + memory.temp_size_in_bytes < total / 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(states[8]), jax.device_get(states[1]))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(states[1].params), jax.device_get(init(rngs[0])))


def test_checksums_are_a_weighted_sum_of_bits_whatever_the_sharding():
  rng = np.random.default_rng(0)
  tree = {'w': rng.standard_normal((8, 6)).astype(np.float32), 'b': rng.standard_normal(16).astype(jnp.bfloat16),
          'step': np.int32(7), 'rng': np.array([3, 2**31 + 5], np.uint32)}

  def reference(x):
    bits = np.atleast_1d(x).view(f'uint{8 * x.dtype.itemsize}').astype(np.uint64).ravel()
    return int(np.sum(bits * (2 * np.arange(bits.size, dtype=np.uint64) + 1)) % 2**32)

  want = {'algorithm': checkpoints.CHECKSUM, 'arrays': {k: reference(np.asarray(v)) for k, v in tree.items()}}
  replicated = checkpoints.checksums(jax.tree.map(jnp.asarray, tree))
  sharded = checkpoints.checksums(parallel.make_backend('jit', {'fsdp': 8, 'min_size': 0}).place_state(tree))
  assert replicated == sharded == want
  flipped = dict(tree, w=tree['w'].copy())
  flipped['w'].view(np.uint32)[5, 3] ^= 1 << 20
  assert checkpoints._checksum_mismatches(want, jax.tree.map(jnp.asarray, flipped)) == ['w']
  assert checkpoints._checksum_mismatches({'params/w': 1}, flipped) == []  # older CRC-32 sums: not compared


@pytest.mark.slow  # two runs each; the fast tier compares one step (test_train's FSDP HLO test)
@pytest.mark.parametrize('overrides', [
    # hybrid: a 4 x 2 ('data', 'fsdp') mesh; scan gathers one layer at a time
    {'sharding.fsdp': 2, 'model.scan': True, 'grad_accum_steps': 2},
    {'sharding.fsdp': 8},  # all 8 devices
])
def test_a_sharded_run_is_the_replicated_run(tmp_path, overrides):
  base = dict(total_steps=3, **{k: v for k, v in overrides.items() if k != 'sharding.fsdp'})
  train_and_evaluate(run_config('teacher', **base), str(tmp_path / 'replicated'))
  train_and_evaluate(run_config('teacher', **base, **{'sharding.fsdp': overrides['sharding.fsdp'],
                                                      'sharding.min_size': 0}), str(tmp_path / 'sharded'))
  np.testing.assert_allclose(losses(tmp_path / 'sharded'), losses(tmp_path / 'replicated'), rtol=1e-5)
  params_close(restore_export(tmp_path / 'sharded')[0], restore_export(tmp_path / 'replicated')[0])


@pytest.mark.slow  # a teacher and two runs each: the slow tier
@pytest.mark.parametrize('recipe', ['tleg_aux', 'pool_distill'])
def test_a_learngene_and_its_teacher_shard(tmp_path, teacher_dir, recipe):
  """The trained learngene (an aux's, or the pool's instances and width maps) and the
  teacher sharded 8 ways: the replicated run's losses."""
  overrides = {'teacher.dir': teacher_dir, 'total_steps': 3}
  train_and_evaluate(run_config(recipe, **overrides), str(tmp_path / 'replicated'))
  train_and_evaluate(run_config(recipe, **overrides, **{'sharding.fsdp': -1, 'sharding.min_size': 0}),
                     str(tmp_path / 'sharded'))
  np.testing.assert_allclose(losses(tmp_path / 'sharded'), losses(tmp_path / 'replicated'), rtol=1e-5)


@pytest.mark.slow  # several runs: the slow tier
def test_resume_into_another_mesh(tmp_path, monkeypatch, capsys):
  """A checkpoint saved sharded 8 ways resumes 2 ways, replicated, or under pmap, and the
  run goes on as the uninterrupted one; the restored state lands in the new mesh."""
  common = dict(total_steps=4, checkpoint_every=2, **{'sharding.min_size': 0, 'model.drop_path': 0.1})
  train_and_evaluate(run_config('teacher', **common, **{'sharding.fsdp': 8}), str(tmp_path / 'straight'))

  placed = []
  restore = checkpoints.Checkpointer.restore_latest
  monkeypatch.setattr(checkpoints.Checkpointer, 'restore_latest',
                      lambda self, *a: placed.append(restore(self, *a)) or placed[-1])
  for name, new in [('fsdp2', {'sharding.fsdp': 2}), ('replicated', {'sharding.fsdp': 1}),
                    ('pmap', {'sharding.fsdp': 1, 'parallelism': 'pmap'})]:
    with monkeypatch.context() as m:
      m.setattr(loop, 'preemption_guard', preempted_at(2))
      assert train_and_evaluate(run_config('teacher', **common, **{'sharding.fsdp': 8}),
                                str(tmp_path / name))['preempted']
    train_and_evaluate(run_config('teacher', **common, **new), str(tmp_path / name))
    assert 'Resuming from checkpoint step 2' in capsys.readouterr().out
    state, _ = placed[-1]
    kernel = state.params['head']['kernel']
    assert kernel.sharding.spec == (P('fsdp') if name == 'fsdp2' else P())
    assert len(kernel.sharding.device_set) == 8
    np.testing.assert_allclose(losses(tmp_path / name), losses(tmp_path / 'straight'), rtol=1e-5)
    params_close(restore_export(tmp_path / name)[0], restore_export(tmp_path / 'straight')[0])


@pytest.mark.slow  # a second process
def test_resume_on_another_device_count(tmp_path, monkeypatch):
  """Saved sharded 8 ways on 8 devices, resumed in a process that has 2 (sharded 2 ways)."""
  import json
  import subprocess
  import sys
  from conftest import ROOT
  common = dict(total_steps=4, checkpoint_every=2, **{'sharding.min_size': 0, 'sharding.fsdp': -1})
  train_and_evaluate(run_config('teacher', **common), str(tmp_path / 'straight'))

  with monkeypatch.context() as m:
    m.setattr(loop, 'preemption_guard', preempted_at(2))
    train_and_evaluate(run_config('teacher', **common), str(tmp_path / 'moved'))
  script = ('import json, sys; sys.path.insert(0, "tests"); from conftest import run_config; '
            'from lgjax.train import train_and_evaluate; import jax; '
            f'train_and_evaluate(run_config("teacher", **{common!r}), {str(tmp_path / "moved")!r}); '
            'print(json.dumps(jax.device_count()))')
  env = {**os.environ, 'XLA_FLAGS': xla_flags(2)}
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == 2
  assert 'Resuming from checkpoint step 2' in result.stdout
  np.testing.assert_allclose(losses(tmp_path / 'moved'), losses(tmp_path / 'straight'), rtol=1e-5)
  params_close(restore_export(tmp_path / 'moved')[0], restore_export(tmp_path / 'straight')[0])


@pytest.mark.parametrize('overrides, message', [
    ({'sharding.fsdp': 3}, r'sharding.fsdp must be -1 \(all devices\) or an integer in \[1, 8\] that divides '
                           r'the 8 devices, got 3'),
    ({'sharding.fsdp': 16}, r'sharding.fsdp must be .* got 16'),
    ({'sharding.fsdp': 4, 'parallelism': 'pmap'}, r"sharding.fsdp=4 shards the state over devices, which needs "
                                                  r"parallelism='jit', got 'pmap'"),
    ({'sharding.min_size': -1}, r'sharding.min_size must be an integer >= 0 \(elements\), got -1'),
])
def test_bad_sharding_fails_before_any_work(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(run_config('teacher', **overrides), str(tmp_path))
  assert not os.listdir(tmp_path)
