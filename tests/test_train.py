import asyncio
import functools
import glob
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from conftest import (IMAGE_SHAPE, ROOT, TINY, losses, params_close, preempted_at, random_like, restore_export, run_config,
                      run_expand, xla_flags)
from configs import teacher as teacher_config
from lgjax import checkpoint, data
from lgjax import tree as tree_lib
from lgjax.learngene import METHODS, load_learngene, save_learngene
from lgjax.learngene import registry, sws, tleg
from lgjax.models import ViT, ViTConfig, blocks, flops
from lgjax.train import kinds, loop, optim, parallel, reporting, train_and_evaluate
from lgjax.train import step as step_lib


def test_model_trains_on_embedded_data(tmp_path):
  # 48 steps: a cls-token ViT at the papers' small init needs a few dozen to start
  config = run_config('teacher', total_steps=48, eval_every=24, **{'optimizer.lr': 0.3})
  final = train_and_evaluate(config, str(tmp_path))
  curve = losses(tmp_path)
  assert len(curve) == 48 and curve[-4:].mean() < curve[:2].mean() - 0.1
  assert 0.0 <= final['eval_accuracy'] <= 1.0 and final['step'] == 48
  assert reporting.read_metrics(str(tmp_path))[24]['eval_accuracy'] >= 0
  params, model_cfg = restore_export(tmp_path)
  assert model_cfg['depth'] == 2 and blocks.depth(params) == 2
  assert os.path.getsize(tmp_path / reporting.PLOT_FILE) > 1000
  assert os.listdir(tmp_path / 'tensorboard')
  # the step's rate: model FLOPs (3x the forward) per device; no MFU on a chip without a datasheet peak
  train_flops = 3 * flops.forward_flops(model_cfg, (28, 28, 1))
  for record in reporting.read_metrics(str(tmp_path)).values():
    if 'loss' in record:
      assert record['tflops_per_device'] == pytest.approx(
          record['images_per_sec'] * train_flops / jax.device_count() / 1e12, rel=1e-6)
      assert 'mfu' not in record


@pytest.mark.slow  # two runs with the profiler: the slow tier (the StepTrace logic is checked below)
def test_profile_steps_traces_steps_after_the_compiling_one(tmp_path, monkeypatch):
  windows = []

  class Recorded(reporting.StepTrace):
    def __init__(self, log_dir, steps):
      windows.append(steps)
      super().__init__(log_dir, steps)

  monkeypatch.setattr(reporting, 'StepTrace', Recorded)
  train_and_evaluate(run_config('teacher', total_steps=4, profile_steps=2), str(tmp_path))
  assert windows == [range(2, 4)]  # step 1 compiles
  assert glob.glob(str(tmp_path / reporting.TENSORBOARD_DIR / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  train_and_evaluate(run_config('teacher', total_steps=6, profile_steps=9), str(tmp_path))  # resumes at 4
  assert windows[1] == range(6, 7)  # cut at the last step


def test_a_step_trace_stops_once_its_steps_ran_or_the_loop_ends(monkeypatch):
  events = []
  monkeypatch.setattr(jax.profiler, 'start_trace', lambda log_dir: events.append('start'))
  monkeypatch.setattr(jax.profiler, 'stop_trace', lambda: events.append('stop'))
  trace = reporting.StepTrace('logs', range(3, 5))
  for step_num in range(1, 7):
    trace.before(step_num)
    events.append(step_num)
    trace.after(step_num, jnp.zeros(()))
  trace.close()
  assert events == [1, 2, 'start', 3, 4, 'stop', 5, 6]
  events.clear()
  trace = reporting.StepTrace('logs', range(2, 9))
  for step_num in (1, 2):  # the loop fails in step 2
    trace.before(step_num)
  trace.close()
  trace.close()
  assert events == ['start', 'stop']
  reporting.StepTrace('logs', range(2, 2)).before(2)  # profile_steps 0
  assert events == ['start', 'stop']
  assert reporting.trace_dir('run') == os.path.join('run', 'tensorboard')
  monkeypatch.setattr(jax, 'process_index', lambda: 3)  # one host, a process per GPU: a folder each
  assert reporting.trace_dir('run') == os.path.join('run', 'tensorboard', 'process_3')


def test_logged_rates_start_after_the_compiling_step(tmp_path, monkeypatch):
  clock_starts = []
  monkeypatch.setattr(reporting.Reporter, 'start_clock', lambda self, step: clock_starts.append(step))
  train_and_evaluate(run_config('teacher', total_steps=3), str(tmp_path))
  assert clock_starts == [1]
  monkeypatch.undo()
  reporter = reporting.Reporter(str(tmp_path), total_steps=9, start_step=0, batch_size=4, enabled=False)
  time.sleep(0.2)  # as a compile would
  reporter.start_clock(1)
  assert reporter.throughput(3) > 2 * 4 / 0.2  # 2 steps of 4 images, the 0.2 s before them not counted


def test_speed_is_model_flops_per_device_over_the_chips_datasheet_peak():
  from types import SimpleNamespace
  h200s = [SimpleNamespace(device_kind='NVIDIA H200')] * 8
  got = reporting.speed(1000.0, 27.4e9, 'bfloat16', h200s)  # DeiT-S: 27.4 GFLOP per trained image
  assert got == pytest.approx({'images_per_sec': 1000.0, 'tflops_per_device': 3.425, 'mfu': 3.425 / 989})
  assert reporting.speed(1000.0, 27.4e9, 'float32', h200s).keys() == {'images_per_sec', 'tflops_per_device'}
  assert reporting.speed(1000.0, None, 'bfloat16', h200s) == {'images_per_sec': 1000.0}
  peaks = {kind: flops.chip_peak(kind, 'bfloat16') for kind in
           ('NVIDIA H100 PCIe', 'NVIDIA H100 80GB HBM3', 'TPU v5 lite', 'TPU v5', 'cpu')}
  assert peaks == {'NVIDIA H100 PCIe': 756e12, 'NVIDIA H100 80GB HBM3': 989e12, 'TPU v5 lite': 197e12,
                   'TPU v5': 459e12, 'cpu': None}  # the first name found wins


def test_a_distilling_steps_flops_add_the_teachers_forward():
  student, teacher = dict(TINY), {**TINY, 'width': 64, 'mlp_dim': 128}
  # by hand (flops.block_flops' formula): 16 tokens of 4x4x1 patches, 5 classes
  forward = lambda w, m: 2 * 16 * 16 * w + 3 * (8 * 16 * w ** 2 + 4 * 16 ** 2 * w + 4 * 16 * w * m) + 2 * w * 5
  assert loop.step_flops(ViTConfig.of(student), None, IMAGE_SHAPE) == 3 * forward(32, 64)
  assert loop.step_flops(ViTConfig.of(student), ViT(**teacher), IMAGE_SHAPE) == 3 * forward(32, 64) + forward(64, 128)


def test_trains_on_mock_tfds_data(tmp_path):
  config = run_config('teacher', total_steps=3, **{'model.num_classes': 10, 'model.patch_size': 8})
  config.dataset.update(name='cifar10', image_size=32, num_classes=10, augment='inception',
                        train_split='train', eval_split='test')
  with tfds.testing.mock_data(num_examples=48):
    final = train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(final['loss']) and 'eval_accuracy' in final


KEY_BIAS = 'MultiHeadDotProductAttention_0/key/bias'  # its gradient is 0: softmax ignores it (vit.py)


def _moved(final, initial) -> dict[str, bool]:
  """Param name -> whether it differs from its initial value."""
  return {n: bool(np.any(np.asarray(a) != np.asarray(b)))
          for (n, a), (_, b) in zip(tree_lib.flatten_with_names(final), tree_lib.flatten_with_names(initial))}


def _trained_as_expected(final, initial) -> bool:
  """Every param moved from its initial value, but the attention's key biases, which stay."""
  moved = _moved(final, initial)
  return moved and all(v != n.endswith(KEY_BIAS) for n, v in moved.items())


def test_tleg_aux_trains_the_learngene_and_expands(tmp_path, random_teacher_dir):
  config = run_config('tleg_aux', **{'teacher.dir': random_teacher_dir})
  train_and_evaluate(config, str(tmp_path / 'aux'))
  learngene, meta = load_learngene(str(tmp_path / 'aux' / loop.EXPORT_DIR))
  assert meta['method'] == 'tleg' and meta['model_config']['depth'] == 2 and meta['options'] == {}
  kind = kinds.make_kind(loop.resolve(config), data.image_shape(config.dataset))
  initial = kind.init(jax.random.split(jax.random.key(config.seed))[0])
  assert _trained_as_expected(learngene['base'], initial['base'])
  assert _trained_as_expected(learngene['slope'], initial['slope'])

  out = tmp_path / 'desc'
  result = run_expand(f'--learngene={tmp_path / "aux" / "export"}', '--method=tleg', '--depth=3', f'--out={out}')
  assert result.returncode == 0, result.stderr
  params, model_cfg = checkpoint.load_params(str(out))
  logits = ViT(**model_cfg).apply({'params': params}, np.zeros((2, 28, 28, 1), np.float32))
  assert logits.shape == (2, 5) and np.isfinite(logits).all()


@pytest.mark.slow  # end to end: the slow tier
def test_sws_aux_and_descendant(tmp_path, teacher_dir):
  config = run_config('sws_aux', total_steps=2, **{'teacher.dir': teacher_dir})
  train_and_evaluate(config, str(tmp_path / 'aux'))
  learngene, meta = load_learngene(str(tmp_path / 'aux' / loop.EXPORT_DIR))
  assert meta['options'] == {'stage_depths': [1, 1]} and len(learngene['stages']) == 2
  desc = run_config('descendant', total_steps=2, **{
      'init.method': 'sws', 'init.learngene_dir': str(tmp_path / 'aux' / loop.EXPORT_DIR),
      'model.depth': 3, 'init.stage_depths': [2, 1]})
  kind = kinds.make_kind(loop.resolve(desc), data.image_shape(desc.dataset))
  params = kind.init(jax.random.key(0))
  expected = sws.expand(learngene, (2, 1))
  for i, stage in ((0, 0), (1, 0), (2, 1)):
    jax.tree.map(np.testing.assert_array_equal, params['Transformer'][f'encoderblock_{i}'],
                 learngene['stages'][stage])
  np.testing.assert_array_equal(params['embedding']['kernel'], expected['embedding']['kernel'])
  final = train_and_evaluate(desc, str(tmp_path / 'desc'))
  assert np.isfinite(final['loss'])


def test_descendant_inherits_all_but_a_new_head(tmp_path):
  lg = tleg.init_learngene(jax.random.key(5), loop.resolve(run_config('tleg_aux')).model.to_dict(), image_shape=(28, 28, 1))
  lg['shared']['head']['kernel'] = lg['shared']['head']['kernel'] + 1.0  # tell heads apart
  save_learngene(str(tmp_path / 'lg'), lg, method='tleg', model_config=loop.resolve(run_config('tleg_aux')).model.to_dict())
  config = run_config('descendant', **{'init.learngene_dir': str(tmp_path / 'lg'), 'model.depth': 3})
  params = kinds.make_kind(loop.resolve(config), (28, 28, 1)).init(jax.random.key(0))
  expected = tleg.expand(lg, 3)
  for name in ('Transformer', 'embedding', 'pos_embedding'):
    jax.tree.map(np.testing.assert_array_equal, params[name], expected[name])
  head = np.abs(np.asarray(params['head']['kernel']))  # fresh: trunc-normal(0.02), not the learngene's (+1)
  assert 0 < head.max() <= 2 * 0.02 / 0.8796 and head.std() > 0.01

  config.init.reinit = []
  config.model.num_classes = 7
  with pytest.raises(ValueError, match=r"'head/kernel' has shape \(32, 5\), expected \(32, 7\)"):
    kinds.make_kind(loop.resolve(config), (28, 28, 1)).init(jax.random.key(0))
  config = run_config('descendant', **{'init.learngene_dir': str(tmp_path / 'lg'), 'init.method': 'sws'})
  with pytest.raises(ValueError, match="init.method='sws' but init.learngene_dir=.* holds a 'tleg' learngene"):
    kinds.make_kind(loop.resolve(config), (28, 28, 1))
  config.init.learngene_dir = str(tmp_path / 'nowhere')  # a wrong path: said before the workdir is made
  with pytest.raises(FileNotFoundError, match=re.escape(f"Missing {str(tmp_path / 'nowhere' / 'learngene.json')!r}")):
    train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def _one_device_losses(tmp_path, overrides):
  """The same run in a fresh process that sees a single CPU device."""
  script = ('import json, sys; sys.path.insert(0, "tests"); from conftest import run_config; '
            'from lgjax.train import train_and_evaluate; from test_train import losses; '
            f'train_and_evaluate(run_config("teacher", **{overrides!r}), {str(tmp_path / "one")!r}); '
            f'print(json.dumps(losses({str(tmp_path / "one")!r}).tolist()))')
  env = {**os.environ, 'XLA_FLAGS': xla_flags(1)}
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return np.array(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.slow  # end to end: the slow tier
def test_jit_pmap_one_device_and_accumulation_agree(tmp_path):
  overrides = {'model.drop_path': 0.2, 'model.dropout': 0.1}  # randomness keyed per example
  assert jax.device_count() == 8
  jit = losses_of(tmp_path / 'jit', parallelism='jit', **overrides)
  pmap = losses_of(tmp_path / 'pmap', parallelism='pmap', **overrides)
  accum = losses_of(tmp_path / 'accum', grad_accum_steps=2, **overrides)
  one = _one_device_losses(tmp_path, overrides)
  np.testing.assert_allclose(pmap, jit, rtol=1e-5)
  # 8 per-device partial gradients sum in another order than one device's; Adam's
  # first steps (~ lr * sign(g)) turn that into ~1e-5 of the loss, other dropout masks ~1e-2.
  np.testing.assert_allclose(one, jit, rtol=1e-4)
  np.testing.assert_allclose(accum, jit, rtol=1e-5)
  assert len(set(np.round(jit, 4))) > 1  # the loss moves: the comparison is not vacuous


def losses_of(workdir, **overrides):
  train_and_evaluate(run_config('teacher', **overrides), str(workdir))
  return losses(workdir)


@pytest.mark.slow  # four runs each: the slow tier
@pytest.mark.parametrize('kernels,fields', [
    ({'model.norm_impl': 'pallas', 'model.qkv_impl': 'pallas'}, {'model.dropout': 0.1}),  # (dropout inside
    ({'model.norm_impl': 'pallas', 'model.mlp_impl': 'pallas', 'model.qkv_impl': 'pallas'}, {}),  # the MLP: XLA's)
    ({'model.norm_impl': 'pallas', 'model.mlp_impl': 'pallas', 'model.qkv_impl': 'pallas'}, {'model.scan': True}),
])
def test_pallas_kernels_train_as_xla_ops_do(tmp_path, kernels, fields):
  """model.norm_impl, mlp_impl and qkv_impl='pallas' (the jnp formulas on CPU, split per example over
  the 8 devices by custom_partitioning, inside the scan body when scanned) give XLA's ops' losses with
  data parallelism, FSDP over all 8 devices (its params gathered) and pmap, drop path and dropout
  included."""
  overrides = {'model.drop_path': 0.2, 'total_steps': 4, **fields}
  want = losses_of(tmp_path / 'xla', **overrides)
  for name, more in [('jit', {}), ('fsdp', {'sharding.fsdp': 8, 'sharding.min_size': 0}),
                     ('pmap', {'parallelism': 'pmap'})]:
    got = losses_of(tmp_path / name, **overrides, **more, **kernels)
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)


@pytest.mark.slow  # two runs; the fast tier resumes in test_resume_skips_a_damaged_checkpoint
def test_resume_is_bitwise_identical(tmp_path, monkeypatch):
  overrides = dict(total_steps=6, checkpoint_every=2, **{'model.drop_path': 0.1})
  train_and_evaluate(run_config('teacher', **overrides), str(tmp_path / 'straight'))

  with monkeypatch.context() as m:
    m.setattr(loop, 'preemption_guard', preempted_at(3))
    first = train_and_evaluate(run_config('teacher', **overrides), str(tmp_path / 'resumed'))
  assert first['preempted'] and first['step'] == 3
  assert not os.path.exists(tmp_path / 'resumed' / loop.EXPORT_DIR)
  train_and_evaluate(run_config('teacher', **overrides), str(tmp_path / 'resumed'))
  straight, _ = restore_export(tmp_path / 'straight')
  resumed, _ = restore_export(tmp_path / 'resumed')
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)
  np.testing.assert_array_equal(losses(tmp_path / 'resumed'), losses(tmp_path / 'straight'))


@pytest.mark.slow  # fault injection: the slow tier
def test_resume_skips_a_damaged_checkpoint(tmp_path, capsys):
  config = run_config('teacher', total_steps=4, checkpoint_every=2)
  train_and_evaluate(config, str(tmp_path))
  ckpt_dir = tmp_path / 'checkpoints'
  assert sorted(os.listdir(ckpt_dir)) == ['2', '4']
  # Damage the newest step, as a crash mid-write on a filesystem without atomic renames would.
  for root, _, files in os.walk(ckpt_dir / '4' / 'state'):
    for f in files:
      os.remove(os.path.join(root, f))
  config.total_steps = 5
  train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert 'Resuming from checkpoint step 2' in out
  assert "the config differs from the one this run was started with in ['total_steps']" in out
  assert sorted(os.listdir(ckpt_dir)) == ['4', '5', 'damaged-4']
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  loss_steps = [r['step'] for r in records if 'loss' in r]
  assert loss_steps == sorted(set(loss_steps)) == list(range(1, 6))  # steps 3-4, redone, logged once


@pytest.mark.slow  # fault injection: the slow tier
def test_all_checkpoints_damaged_starts_exactly_as_a_fresh_run(tmp_path, capsys):
  config = run_config('teacher', total_steps=3, checkpoint_every=1, keep_checkpoints=2)
  train_and_evaluate(config, str(tmp_path / 'run'))
  for step in ('2', '3'):  # damage every kept step
    for root, _, files in os.walk(tmp_path / 'run' / 'checkpoints' / step / 'state'):
      for f in files:
        os.remove(os.path.join(root, f))
  config.total_steps = 4
  train_and_evaluate(config, str(tmp_path / 'run'))
  assert 'Every checkpoint in' in capsys.readouterr().out
  train_and_evaluate(config, str(tmp_path / 'fresh'))  # the same config, from nothing
  got, want = (checkpoint.load_params(str(tmp_path / d / 'export'))[0] for d in ('run', 'fresh'))
  jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.slow  # fault injection: the slow tier
@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')  # the reads that end late
@pytest.mark.parametrize('fault', ['flipped_byte', 'checksum'])
def test_a_corrupt_checkpoint_is_damaged_not_restored(tmp_path, capsys, caplog, fault):
  """A flipped byte in the stored state (compressed: OCDBT's reader reports DATA_LOSS or a
  decode error, by where the byte falls), or arrays that no longer match the checksums
  written with them: the step is set aside, an older one used, and the one warning says
  so (not the tracebacks of every read of the step that fails after the first)."""
  config = run_config('teacher', total_steps=4, checkpoint_every=2)
  train_and_evaluate(config, str(tmp_path))
  step_dir = tmp_path / 'checkpoints' / '4'
  if fault == 'flipped_byte':
    path = max((os.path.join(root, f) for root, _, files in os.walk(step_dir / 'state' / 'd') for f in files),
               key=os.path.getsize)
    with open(path, 'r+b') as f:
      f.seek(os.path.getsize(path) // 2)
      byte = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte[0] ^ 0x10]))
  else:
    sums = json.loads((step_dir / 'checksums' / 'metadata').read_text())
    sums['arrays']['params/head/kernel'] ^= 1
    (step_dir / 'checksums' / 'metadata').write_text(json.dumps(sums))
  config.total_steps = 5
  train_and_evaluate(config, str(tmp_path))
  assert 'Resuming from checkpoint step 2' in capsys.readouterr().out
  reason = r'Error reading .*/4/state/' if fault == 'flipped_byte' else r"checksum mismatch in \['params/head/kernel'\]"
  assert re.search(r'Checkpoint step 4 in .* cannot be restored \(\w+: .*' + reason, caplog.text), caplog.text
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '5', 'damaged-4']


@pytest.mark.slow  # end to end (runs, resumed or in bfloat16): the slow tier
def test_resume_with_a_changed_model_refuses_and_touches_nothing(tmp_path):
  config = run_config('teacher', total_steps=2, checkpoint_every=1)
  train_and_evaluate(config, str(tmp_path))
  before = {p: os.path.getmtime(tmp_path / p) for p in ('config.json', 'checkpoints/1', 'checkpoints/2')}
  config.model.depth = 3
  config.total_steps = 4
  with pytest.raises(ValueError, match=re.escape(
      "holds checkpoints of another model: checkpoint step 2 holds params of other names or shapes: "
      "['Transformer/encoderblock_2/LayerNorm_0/bias'") + r".*Config fields changed since the run started: "
      r"\['model/depth', 'total_steps'\]. Use a new --workdir"):
    train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']  # nothing set aside as damaged
  assert before == {p: os.path.getmtime(tmp_path / p) for p in before}


@pytest.mark.slow  # end to end: the slow tier
@pytest.mark.parametrize('signum, said', [(signal.SIGTERM, 'Preempted'), (signal.SIGINT, 'Interrupted')])
def test_sigterm_or_ctrl_c_saves_a_checkpoint_and_exits(tmp_path, signum, said):
  workdir = tmp_path / 'run'
  # SIGINT as a terminal's Ctrl-C sends it: where these tests run as a background job, which
  # ignores it, the child gets it back (preexec_fn forks, which JAX warns of: only then).
  ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  proc = subprocess.Popen(
      [sys.executable, 'train.py', '--config=configs/teacher.py:mnist5k', f'--workdir={workdir}',
       '--config.total_steps=100000', '--config.log_every=1', '--config.model.depth=1',
       '--config.batch_size=16', '--config.checkpoint_every=100000'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if ignored else None)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and len(reporting.read_metrics(str(workdir))) < 2:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      time.sleep(0.5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 0, err[-2000:]
  assert f'{said} at step' in out and 'Traceback' not in err, (out, err[-2000:])
  step = int(out.split(f'{said} at step ')[1].split(':')[0])
  assert os.listdir(workdir / 'checkpoints') == [str(step)]


@pytest.mark.parametrize('preset,lr,cause', [
    (False, 1e35, 'loss is (nan|inf); .*'),
    pytest.param(True, 1e6, 'grad_norm is nan; the updated params or optimizer state hold NaN/Inf',  # the loss still finite
                 marks=pytest.mark.slow),  # the full mnist5k teacher: the slow tier
])
def test_divergence_stops_and_keeps_only_finite_checkpoints(tmp_path, preset, lr, cause):
  config = run_config('teacher', total_steps=8, checkpoint_every=1, **{'optimizer.lr': lr, 'optimizer.clip_norm': 0.0})
  if preset:  # the case: the mnist5k teacher, batch 32
    config.model = teacher_config.get_config('mnist5k').model
    config.batch_size = 32
  with pytest.raises(FloatingPointError, match=rf'^{cause} at step \d: stopping without saving it. The last good checkpoint'):
    train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  assert steps
  for s in steps:  # every kept checkpoint holds finite params and optimizer state
    state = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / str(s) / 'state')
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state) if np.issubdtype(np.asarray(x).dtype, np.floating)), s


@pytest.mark.parametrize('overrides,error,message', [
    (dict(batch_size=12), ValueError, r'batch_size=12 must be a positive multiple of the number of devices \(8\)'),
    (dict(batch_size=16, grad_accum_steps=4), ValueError, r'times grad_accum_steps \(4\) = 32'),
    (dict(kind='student'), ValueError, r"kind must be one of \('model', 'aux', 'descendant', 'pool_distill', 'stitched'\), got 'student'"),
    (dict(parallelism='pjit'), ValueError, r"parallelism must be one of \('jit', 'pmap'\)"),
    ({'loss.alpha': 0.5}, ValueError, r'loss.alpha=0.5 distills from a teacher: set teacher.dir'),
    ({'loss.alpha': 0.5, 'teacher.dir': '/nonexistent/teacher'}, FileNotFoundError, r"/nonexistent/teacher/model_config.json"),
    ({'dataset.name': 'cifar10', 'dataset.image_size': 28}, FileNotFoundError,
     r'pip install -e "\.\[data\]"\n  tfds build cifar10 --file_format=array_record'),
    ({'total_steps': 0}, ValueError, r'total_steps must be an integer >= 1, got 0'),
    ({'total_steps': None, 'total_epochs': 0.0}, ValueError, r'total_epochs must be > 0 \(or set total_steps\), got 0.0'),
    ({'model.patch_size': 5}, ValueError, r'dataset.image_size=28 must be a multiple of model.patch_size=5'),
    ({'model.patch_size': 0}, ValueError, r'model.patch_size must be an integer >= 1 \(or a pair of them\), got 0'),
    ({'dataset.image_size': 0}, ValueError, r'dataset.image_size must be an integer >= 1, got 0'),
    ({'seed': -1}, ValueError, r'seed must be an integer >= 0, got -1'),
    ({'dataset.classes': 'all'}, ValueError, r"model.num_classes=5 \(from dataset.num_classes\) is smaller than the 10 classes of dataset 'mnist5k' \(all\)"),
    ({'input_threads': -2}, ValueError, r'input_threads must be an integer >= 0, got -2'),
    ({'profile_steps': -1}, ValueError, r'profile_steps must be an integer >= 0, got -1'),
    ({'dataset.pixels_dir': '/nonexistent/pixels'}, FileNotFoundError,
     r"dataset.pixels_dir='/nonexistent/pixels' has no train.array_record"),
    ({'dataset.name': 'shapes'}, ValueError,  # the teacher preset's 'source' digits: shapes has none
     r"dataset.classes must be one of \('all', 'downstream'\) for dataset 'shapes', got 'source'"),
    ({'dataset.classes': 'odd'}, ValueError,
     r"dataset.classes must be one of \('all', 'downstream', 'source'\) for dataset 'mnist5k', got 'odd'"),
    ({'optimizer.lr': -0.1}, ValueError, r'optimizer.lr must be >= 0, got -0.1'),
    ({'optimizer.warmup_steps': -1}, ValueError, r'optimizer.warmup_steps must be an integer >= 0, got -1'),
    ({'optimizer.b2': 1.5}, ValueError, r'optimizer.b2 must be in \[0, 1\), got 1.5'),
    ({'optimizer.clip_norm': -1.0}, ValueError, r'optimizer.clip_norm must be >= 0 \(0: no clipping\), got -1.0'),
    ({'dataset.train_fraction': 0.0}, ValueError, r'dataset.train_fraction must be in \(0, 1\], got 0.0'),
    ({'dataset.augment': 'autoaug'}, ValueError, r"dataset.augment must be one of \('none', 'inception'\), got 'autoaug'"),
    ({'model.remat_policy': 'all'}, ValueError, r"^model.remat_policy must be one of \(None, 'nothing_saveable', "),
    ({'model.num_heads': 5}, ValueError, r'^model.num_heads must be a positive divisor of width=32, got 5'),
    ({'model.param_init': 'xavier'}, ValueError, r"^model.param_init must be one of \['big_vision', "),
    ({'model.attention_impl': 'cudnn'}, ValueError,  # a GPU recipe on a TPU or CPU: said before any work
     r"^model.attention_impl='cudnn' is cuDNN's fused attention, for NVIDIA GPUs, but this run's devices are 'cpu'"),
])
def test_bad_configs_fail_before_training(tmp_path, overrides, error, message):
  with pytest.raises(error, match=message):
    train_and_evaluate(run_config('teacher', **overrides), str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints') and not os.path.exists(tmp_path / 'config.json')


@pytest.mark.parametrize('recipe, overrides, message', [
    ('descendant', {}, r"init.learngene_dir must name a learngene directory for init.method='tleg'"),
    ('descendant', {'init.method': 'lora'},
     re.escape(f"init.method must be one of {['scratch', *sorted(METHODS)]}, got 'lora'")),
    ('descendant', {'init.method': 'tleg', 'init.source': '/some/vit'},
     r"init.method='tleg' expands a trained learngene: set init.learngene_dir"),
    ('descendant', {'init.method': 'condense', 'init.source': '/some/vit', 'init.placement': 'middle'},
     r"init.placement must be one of \('below', 'above'\), got 'middle'"),
    ('sws_aux', {'learngene.stage_depths': (1, 2), 'teacher.dir': '/some/teacher'},
     r'learngene.stage_depths \[1, 2\] sum to 3, expected depth=2'),
    ('sws_aux', {'learngene.method': 'condense', 'teacher.dir': '/some/teacher'},
     re.escape(f"learngene.method='condense' trains no learngene; expected one of {registry.trained()}")),
    ('pool_distill', {'pool.supervise': 'first', 'teacher.dir': '/some/teacher'},
     r"pool.supervise must be one of \('every', 'last'\), got 'first'"),
    ('stitched', {'stitch.rule': 'all', 'pool.dir': '/some/pool'}, r"stitch.rule must be one of \('snnet', 'pool'\)"),
])
def test_kind_fields_fail_before_any_file_or_data_is_read(tmp_path, monkeypatch, recipe, overrides, message):
  def no_io(*args, **kwargs):
    raise AssertionError('read a file or the data before checking the config')

  from lgjax.train import pool_training
  for module, name in ((data, 'image_shape'), (checkpoint, 'load_params'), (kinds, 'load_learngene'),
                       (pool_training, 'load_learngene')):
    monkeypatch.setattr(module, name, no_io)
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(run_config(recipe, **overrides), str(tmp_path))
  assert not os.listdir(tmp_path)


@pytest.mark.slow  # end to end: the slow tier
@pytest.mark.parametrize('sharding', [[], ['--config.sharding.fsdp=-1', '--config.sharding.min_size=0']])
def test_two_processes_match_one(tmp_path, sharding):
  """Two processes of 2 devices each, against one of 4; sharded (FSDP), no process holds the
  state whole: checkpoints, checksums, metrics and the export work on non-addressable arrays."""
  args = ['train.py', '--config=configs/teacher.py:mnist5k', '--config.total_steps=3', '--config.log_every=1',
          '--config.batch_size=16', '--config.model.depth=1', '--config.model.drop_path=0.1',
          '--config.checkpoint_every=2', '--config.profile_steps=1', *sharding]
  port = 20000 + os.getpid() % 20000
  env = {**os.environ, 'XLA_FLAGS': xla_flags(2)}
  procs = [subprocess.Popen([sys.executable, *args, f'--workdir={tmp_path / "two"}',
                             f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  single = subprocess.run([sys.executable, *args, f'--workdir={tmp_path / "one"}'], cwd=ROOT, env={
      **os.environ, 'XLA_FLAGS': xla_flags(4)},
                          capture_output=True, text=True, timeout=400)
  assert single.returncode == 0, single.stderr[-3000:]
  np.testing.assert_allclose(losses(tmp_path / 'two'), losses(tmp_path / 'one'), rtol=1e-5)
  assert len(losses(tmp_path / 'two')) == 3
  params_close(restore_export(tmp_path / 'two')[0], restore_export(tmp_path / 'one')[0])
  for trace in ('', 'process_1'):  # each process traced step 2 of its own devices
    assert glob.glob(str(tmp_path / 'two' / 'tensorboard' / trace / 'plugins' / 'profile' / '*' / '*.xplane.pb'))


@pytest.mark.slow  # end to end: the slow tier
def test_demo_recipe_chains_runs(tmp_path, capsys):
  import importlib
  from lgjax.train import recipe
  config = importlib.import_module('configs.demo').get_config('mnist5k,runlocal')
  assert config.order[:2] == ('teacher', 'tleg') and set(config.order) == set(config.runs)
  for name in config.order:
    config.runs[name].total_steps = 2
  config.order = ('teacher', 'tleg', 'depth2_tleg', 'depth2_scratch')
  with pytest.MonkeyPatch.context() as m:  # stopped in the teacher: the recipe ends there
    m.setattr(loop, 'preemption_guard', preempted_at(1))
    assert recipe.run_recipe(config, str(tmp_path)) == []
  assert os.listdir(tmp_path) == ['teacher'] and os.listdir(tmp_path / 'teacher' / 'checkpoints') == ['1']
  rows = recipe.run_recipe(config, str(tmp_path))  # resumes the teacher, then the rest
  assert [r['run'] for r in rows] == list(config.order)
  assert [r['init'] for r in rows] == ['model', 'tleg_aux', 'tleg', 'scratch']
  assert os.path.exists(tmp_path / 'depth2_tleg' / loop.EXPORT_DIR / 'model_config.json')
  # the descendant's row: accuracy at the early step (here the last eval, step 2), final
  # accuracy, and its gain over the scratch descendant of the same depth
  tleg_acc, scratch_acc = rows[2]['accuracy'], rows[3]['accuracy']
  gain = f'{tleg_acc - scratch_acc:+.3f}'
  line = (f'| depth2_tleg | downstream | tleg | 2 | 2 | {tleg_acc:.3f} | {tleg_acc:.3f} | '
          f'{gain} / {gain} |')
  assert line in capsys.readouterr().out
  assert line in (tmp_path / recipe.SUMMARY_FILE).read_text()
  assert os.path.getsize(tmp_path / recipe.COMPARISON_PLOT) > 1000


@pytest.mark.slow  # end to end (runs, resumed or in bfloat16): the slow tier
def test_bfloat16_compute_keeps_float32_state(tmp_path):
  final = train_and_evaluate(run_config('teacher', total_steps=2, compute_dtype='bfloat16'), str(tmp_path))
  assert np.isfinite(final['loss'])
  params, _ = restore_export(tmp_path)
  assert {np.asarray(x).dtype for x in jax.tree.leaves(params)} == {np.dtype('float32')}
  model = ViT(**{**loop.resolve(run_config('teacher')).model.to_dict(), 'dtype': 'bfloat16'})
  x = np.zeros((1, 28, 28, 1), np.float32)
  hidden = model.apply({'params': params}, x, capture_intermediates=True, mutable=['intermediates'])[1]
  dense = hidden['intermediates']['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['__call__'][0]
  assert dense.dtype == jnp.bfloat16


STEP_OPT = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, min_lr=0.0, weight_decay=0.05,
                                          b1=0.9, b2=0.999, clip_norm=1.0))


def _random_batch(size: int) -> dict:
  rng = np.random.default_rng(0)
  return {'image': jnp.asarray(rng.standard_normal((size, *IMAGE_SHAPE)), jnp.float32),
          'label': jnp.asarray(rng.integers(0, TINY['num_classes'], size), jnp.int32),
          'index': jnp.arange(size)}


def _train_step(loss, trainable, batch, to_params=lambda p: p, grad_accum_steps=1, backend=None):
  """(jitted train step, its initial state, the batch), data parallel under `backend`."""
  optimizer = optim.make_optimizer(STEP_OPT, len(batch['label']), 10)
  make_step = functools.partial(
      step_lib.make_train_step, example_loss=loss, to_params=to_params, optimizer=optimizer,
      grad_accum_steps=grad_accum_steps, schedule=optim.learning_rate(STEP_OPT, len(batch['label']), 10))
  state = step_lib.init_state(trainable, optimizer, jax.random.key(1))
  if backend is None:
    return jax.jit(make_step()), state, batch
  return (backend.wrap_train(make_step), backend.place_state(state),
          backend.place_batch(jax.tree.map(np.asarray, batch)))


def _one_step(*args, **kwargs):
  """(state after one train step, its metrics); arguments as _train_step."""
  fn, state, batch = _train_step(*args, **kwargs)
  return fn(state, batch, None)


def _collectives_in_loops(hlo: str) -> list[str]:
  """The all-reduce / all-gather / reduce-scatter instructions of an HLO module that
  run inside a while loop's body (directly or in a computation it calls)."""
  bodies = {}  # computation name -> its lines
  for block in re.split(r'\n(?=\S)', hlo):
    head = re.match(r'(?:ENTRY )?%?([\w.-]+) ', block)
    if head:
      bodies[head.group(1)] = block.splitlines()[1:]
  called = lambda line: re.findall(r'(?:body|condition|calls|to_apply|branch_computations)=\{?%([\w.-]+)', line)
  todo = [name for lines in bodies.values() for line in lines if ' while(' in line
          for name in re.findall(r'body=%([\w.-]+)', line)]
  seen = set()
  while todo:
    name = todo.pop()
    if name not in seen and name in bodies:
      seen.add(name)
      todo += [c for line in bodies[name] for c in called(line)]
  return [line.strip() for name in seen for line in bodies[name]
          if re.search(r'(all-reduce|all-gather|reduce-scatter)(-start)?\(', line)]


def test_a_random_model_runs_the_batch_at_once_its_draws_per_example():
  """With dropout and drop path the loss still runs batched (.batched), each example's draws
  from its index (vit.draws_per_example): its losses are the same beside other examples, in
  any order, and another step's key draws others (the draws happen)."""
  smoothing = ml_collections.ConfigDict(dict(label_smoothing=0.1, alpha=0.0, temperature=1.0))
  model = ViT(**TINY, drop_path=0.3, dropout=0.1)
  batch = _random_batch(12)
  params = model.init(jax.random.key(0), batch['image'][:1])['params']
  losses = jax.jit(step_lib.classification_loss(model, smoothing).batched)
  rows = lambda index, key=5: losses(params, None, batch['image'][index], batch['label'][index],
                                     batch['index'][index], jax.random.key(key))[0]
  whole = rows(np.arange(8))
  np.testing.assert_allclose(rows(np.r_[8:12, 4:8])[4:], whole[4:], rtol=1e-5)
  np.testing.assert_allclose(rows(np.arange(8)[::-1]), whole[::-1], rtol=1e-5)
  assert np.abs(whole - rows(np.arange(8), key=6)).max() > 1e-3


def test_a_model_without_randomness_runs_the_batch_at_once():
  """No dropout or drop path: the loss runs batched, with the per-example path's numbers."""
  smoothing = ml_collections.ConfigDict(dict(label_smoothing=0.1, alpha=0.0, temperature=1.0))
  fast = step_lib.classification_loss(ViT(**TINY), smoothing)
  assert hasattr(fast, 'batched')
  per_example = lambda *args: fast(*args)  # the same loss without .batched: the vmapped path
  batch = _random_batch(8)
  params = ViT(**TINY).init(jax.random.key(0), batch['image'][:1])['params']
  (a, metrics_a), (b, metrics_b) = (_one_step(loss, params, batch) for loss in (fast, per_example))
  np.testing.assert_allclose(metrics_a['loss'], metrics_b['loss'], rtol=1e-5)
  assert float(metrics_a['loss']) > 0.5  # a real loss of an untrained model on 5 classes
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a.params, b.params)


def test_state_finite_is_checked_where_metrics_are_read_not_in_the_step():
  loss = step_lib.classification_loss(ViT(**TINY), ml_collections.ConfigDict(
      dict(label_smoothing=0.0, alpha=0.0, temperature=1.0)))
  batch = _random_batch(8)
  state, metrics = _one_step(loss, ViT(**TINY).init(jax.random.key(0), batch['image'][:1])['params'], batch)
  assert step_lib.STATE_FINITE not in metrics  # the step does no per-leaf pass over the state
  check = jax.jit(step_lib.make_finite_check())
  assert float(check(state)[step_lib.STATE_FINITE]) == 1.0

  def poisoned(tree):  # NaN in the largest leaf (a moment or a kernel)
    leaves, treedef = jax.tree.flatten(tree)
    i = max(range(len(leaves)), key=lambda i: np.size(leaves[i]))
    leaves[i] = leaves[i].at[(0,) * leaves[i].ndim].set(np.nan)
    return jax.tree.unflatten(treedef, leaves)

  assert float(check(state.replace(opt_state=poisoned(state.opt_state)))[step_lib.STATE_FINITE]) == 0.0
  assert float(check(state.replace(params=poisoned(state.params)))[step_lib.STATE_FINITE]) == 0.0


def test_jit_backend_averages_gradients_once_per_step():
  """8 devices, 2 micro-batches each: one device's step on the whole batch, and the
  gradients cross devices once per step, not once per micro-batch (as DDP's no_sync)."""
  loss = step_lib.classification_loss(ViT(**TINY), ml_collections.ConfigDict(
      dict(label_smoothing=0.0, alpha=0.0, temperature=1.0)))
  batch = _random_batch(32)
  params = ViT(**TINY).init(jax.random.key(0), batch['image'][:1])['params']
  params['head']['kernel'] = 0.1 * jax.random.normal(jax.random.key(2), params['head']['kernel'].shape)
  one, metrics = _one_step(loss, params, batch)
  fn, state, placed = _train_step(loss, params, batch, grad_accum_steps=2, backend=parallel.JitBackend())
  hlo = fn.lower(state, placed, None).compile().as_text()
  split, split_metrics = fn(state, placed, None)
  assert jax.device_count() == 8 and len(split.params['head']['kernel'].sharding.device_set) == 8
  for name in ('loss', 'grad_norm', 'train_accuracy'):
    np.testing.assert_allclose(split_metrics[name], metrics[name], rtol=1e-5)
  # atol: params whose gradient is 0 up to rounding move by lr * noise / (|noise| + eps) in
  # Adam's first step, ~1e-6 here; a real error moves lr = 1e-3.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), split.params, one.params)
  assert ' while(' in hlo and 'all-reduce' in hlo
  assert _collectives_in_loops(hlo) == []


@pytest.mark.parametrize('scan, dtype', [(True, 'float32'), (False, 'bfloat16'),
                                         pytest.param(False, 'float32', marks=pytest.mark.slow)])
def test_fsdp_gathers_weights_where_each_layer_runs_and_never_the_batch(scan, dtype):
  """Sharded 8 ways, the step all-gathers weights, one layer's inside the scan loop's body,
  and keeps the batch split: no all-gather returns an array with the 48 examples' axis.
  In bfloat16 the kernels are cast on their shards before the gather (vit.as_used): the
  numbers are still the one-device step's."""
  cfg = {**TINY, 'depth': 2, 'scan': scan, 'dtype': dtype}
  loss = step_lib.classification_loss(ViT(**cfg), ml_collections.ConfigDict(
      dict(label_smoothing=0.0, alpha=0.0, temperature=1.0)))
  batch = _random_batch(48)
  params = ViT(**cfg).init(jax.random.key(0), batch['image'][:1])['params']
  params = jax.tree.map(lambda p, r: p + 0.1 * r, params, random_like(params))  # no bf16-exact 0s and 1s
  fn, state, placed = _train_step(loss, params, batch, backend=parallel.FsdpBackend(8, min_size=0))
  hlo = fn.lower(state, placed, None).compile().as_text()
  gathers = [line for line in hlo.splitlines() if re.search(r' all-gather(-start)?\(', line)]
  assert gathers and not [g for g in gathers if re.search(r'= \S+\[48[,\]]', g)]
  in_loops = [g for g in _collectives_in_loops(hlo) if 'all-gather' in g]
  if scan:  # each iteration gathers its own layer, never a stack of them
    layer_sizes = {math.prod(x.shape[1:]) for x in jax.tree.leaves(params['Transformer']['encoderblock'])}
    sizes = [math.prod(int(d) for d in re.search(r'= \w+\[([\d,]*)\]', g).group(1).split(',') if d) for g in in_loops]
    assert in_loops and set(sizes) <= layer_sizes, in_loops[:3]
  (one, one_metrics), (sharded, metrics) = _one_step(loss, params, batch), fn(state, placed, None)
  if dtype == 'float32':
    params_close(sharded.params, one.params)
  else:  # a bf16 gradient summed in another order: Adam's first step (lr · sign g) may flip where g ~ 0
    np.testing.assert_allclose(metrics['loss'], one_metrics['loss'], rtol=1e-5)  # the forward: the same casts
    np.testing.assert_allclose(metrics['grad_norm'], one_metrics['grad_norm'], rtol=1e-3)
    step_lr = STEP_OPT.lr * len(batch['label']) / 512
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2.01 * step_lr), sharded.params, one.params)


def test_micro_batches_sum_gradients_through_to_params():
  """A TLEG learngene trained through expand: 4 micro-batches give the whole batch's
  step, and the gradient norm is that of jax.grad of the plain composed loss."""
  plain = ml_collections.ConfigDict(dict(label_smoothing=0.0, alpha=0.0, temperature=1.0))
  model = ViT(**{**TINY, 'depth': 3})
  loss = step_lib.classification_loss(model, plain)
  batch = _random_batch(8)
  lg = tleg.init_learngene(jax.random.key(0), {**TINY, 'depth': 3}, image_shape=IMAGE_SHAPE)
  head = lg['shared']['head']['kernel']  # zero-initialized: make the blocks' gradients nonzero
  lg['shared']['head']['kernel'] = 0.1 * jax.random.normal(jax.random.key(2), head.shape)
  expand = lambda l: tleg.expand(l, 3)
  whole, metrics = _one_step(loss, lg, batch, expand)
  micro, micro_metrics = _one_step(loss, lg, batch, expand, grad_accum_steps=4)

  def reference_loss(l):
    logits = model.apply({'params': expand(l)}, batch['image'])
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, batch['label'][:, None], axis=1))

  grads = jax.jit(jax.grad(reference_loss))(lg)
  norm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(metrics['grad_norm'], norm, rtol=1e-4)
  np.testing.assert_allclose(micro_metrics['grad_norm'], norm, rtol=1e-4)
  np.testing.assert_allclose(micro_metrics['loss'], metrics['loss'], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), micro.params, whole.params)
  assert not np.allclose(whole.params['slope']['MlpBlock_0']['Dense_0']['kernel'],
                         lg['slope']['MlpBlock_0']['Dense_0']['kernel'])  # the slope learns


@pytest.mark.slow
def test_killed_at_random_points_still_ends_bit_identical(tmp_path):
  """SIGKILL at seeded random steps (between steps, during saves: a checkpoint every 7),
  again and again: the run still ends with the params and losses of an uninterrupted run."""
  import random
  args = [sys.executable, 'train.py', '--config=configs/teacher.py:mnist5k', '--config.total_steps=400',
          '--config.checkpoint_every=7', '--config.log_every=1', '--config.eval_every=400',
          '--config.batch_size=16', '--config.model.depth=1', '--config.model.width=32',
          '--config.model.num_heads=2', '--config.model.mlp_dim=64']
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  straight = subprocess.run([*args, f'--workdir={tmp_path / "straight"}'], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
  assert straight.returncode == 0, straight.stderr[-2000:]
  metrics = tmp_path / 'killed' / 'metrics.jsonl'

  def last_step() -> int:
    if not metrics.exists():
      return 0
    steps = [0]
    for line in metrics.read_text().splitlines():
      try:
        steps.append(json.loads(line)['step'])
      except ValueError:  # a line being written
        pass
    return max(steps)

  kills = 0
  for target in sorted(random.Random(0).sample(range(5, 390), 5)):  # kill once the run logs this step
    proc = subprocess.Popen([*args, f'--workdir={tmp_path / "killed"}'], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and last_step() < target and time.time() < deadline:
      time.sleep(0.01)
    if proc.poll() is None:
      proc.kill()
      kills += 1
    proc.wait()
  final = subprocess.run([*args, f'--workdir={tmp_path / "killed"}'], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
  assert final.returncode == 0, final.stderr[-2000:]
  assert kills == 5  # the run was really interrupted, at 5 seeded steps
  jax.tree.map(np.testing.assert_array_equal, restore_export(tmp_path / 'killed')[0],
               restore_export(tmp_path / 'straight')[0])
  np.testing.assert_array_equal(losses(tmp_path / 'killed'), losses(tmp_path / 'straight'))


def test_progress_in_a_log_is_lines_not_carriage_returns(tmp_path, capsys):
  reporter = reporting.Reporter(str(tmp_path), total_steps=40, start_step=0, batch_size=8)
  for step in range(1, 41):
    reporter.write(step, {'loss': 1.0 / step})
  reporter.write(40, {'eval_accuracy': 0.5})
  reporter.close()
  err = capsys.readouterr().err  # not a terminal under pytest
  assert '\r' not in err
  assert err.splitlines() == [f'step {s}/40: loss={1.0 / s:.4g}' for s in range(2, 41, 2)] + [
      'step 40/40: eval_accuracy=0.5']


def test_curves_are_titled_with_the_run(tmp_path):
  config = run_config('teacher', total_steps=2)
  train_and_evaluate(config, str(tmp_path / 'my_run'))
  assert reporting.run_title(str(tmp_path / 'my_run')) == 'my_run: model, depth 2, width 32 on mnist5k (source)'


def _files(root):
  """path -> (size, mtime) of every file under root: what a rerun must leave as it was."""
  return {os.path.relpath(os.path.join(d, f), root): (os.path.getsize(os.path.join(d, f)),
                                                       os.path.getmtime(os.path.join(d, f)))
          for d, _, files in os.walk(root) for f in files}


@pytest.mark.slow  # fault injection: the slow tier
def test_a_finished_run_reruns_without_writing_anything(tmp_path):
  config = run_config('teacher', total_steps=2, checkpoint_every=1)
  first = train_and_evaluate(config, str(tmp_path))
  before = _files(tmp_path)
  again = train_and_evaluate(config, str(tmp_path))  # as on read-only storage: nothing may be written
  assert _files(tmp_path) == before
  assert again['eval_accuracy'] == first['eval_accuracy'] and again['step'] == 2


@pytest.mark.slow  # fault injection: the slow tier
def test_a_full_disk_stops_with_one_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
  from lgjax.train import checkpoints
  real = checkpoints.shutil.disk_usage
  saves = []

  def disk_usage(path):  # room for the first save only
    saves.append(path)
    usage = real(path)
    return usage._replace(free=usage.free if len(saves) == 1 else 1000)

  monkeypatch.setattr(checkpoints.shutil, 'disk_usage', disk_usage)
  with pytest.raises(OSError, match=r'No space left on device for checkpoints in .*checkpoints; the newest '
                     r'complete checkpoint, step 1, is intact: free space') as e:
    train_and_evaluate(run_config('teacher', total_steps=3, checkpoint_every=1), str(tmp_path))
  assert e.value.errno == 28
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']
  monkeypatch.setattr(checkpoints.shutil, 'disk_usage', real)
  train_and_evaluate(run_config('teacher', total_steps=3, checkpoint_every=1), str(tmp_path))  # resumes
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '3']  # keep_checkpoints=2


def test_running_out_of_device_memory_says_which_fields_to_change(tmp_path, monkeypatch):
  def fails_with(message):  # as a step too big for the devices fails (the run's checkpoints are kept)
    error = jax.errors.JaxRuntimeError(message)

    def train(*args):
      raise error
    monkeypatch.setattr(loop, '_train', train)
    return error

  config = run_config('teacher')
  fails_with('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12884901888 bytes.\n'
             'BufferAssignment OOM Debugging.')
  with pytest.raises(MemoryError) as raised:
    train_and_evaluate(config, str(tmp_path))
  assert str(raised.value) == (
      'The devices ran out of memory (RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12884901888 '
      f'bytes.). To fit, lower batch_size={config.batch_size} (or raise grad_accum_steps=1: the same batch in '
      "parts); or set model.remat_policy='nothing_saveable' (recompute activations; with model.scan=True, one "
      f'block at a time); or shard params and optimizer state over the {jax.device_count()} devices with '
      "sharding.fsdp=-1; or compute in compute_dtype='bfloat16'. Checkpoints already saved are kept: the same "
      'command resumes from the newest.')
  assert 'BufferAssignment' in str(raised.value.__cause__)  # XLA's whole message, for the reader
  other = fails_with('INTERNAL: an XLA error that is not about memory')
  with pytest.raises(jax.errors.JaxRuntimeError) as raised:
    train_and_evaluate(config, str(tmp_path))
  assert raised.value is other


def test_orbax_out_of_space_errors_become_one_oserror(tmp_path, caplog):
  from absl import logging as absl_logging
  from lgjax.train import checkpoints
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=2)
  os.makedirs(os.path.join(ckpt.directory, '3.orbax-checkpoint-tmp-1'))  # an uncommitted step
  orbax_error = ValueError("RESOURCE_EXHAUSTED: Error writing ... No space left on device [os_error_code='28']")

  def fail(*args, **kwargs):
    raise orbax_error

  ckpt.manager.wait_until_finished = fail
  with pytest.raises(OSError, match='no checkpoint was completed: free space and rerun'):
    ckpt.wait()
  assert os.listdir(ckpt.directory) == []  # the uncommitted step is removed: it only took space
  ckpt.close()  # the error is not raised twice
  # Orbax's own log records of it (one traceback per writer thread) are dropped, others kept.
  logger = absl_logging.get_absl_logger()
  with caplog.at_level('ERROR', logger=logger.name):
    for path, message, error in (('/x/orbax/checkpoint/future.py', 'thread failed', orbax_error),
                                 ('/x/orbax/other.py', 'other', ValueError('other')),
                                 ('/x/mine.py', 'No space left on device', orbax_error)):
      logger.handle(logger.makeRecord(logger.name, 40, path, 1, message, (), (ValueError, error, None)))
  assert [r.getMessage() for r in caplog.records] == ['other', 'No space left on device']


def test_a_failed_restores_late_reads_are_quiet_and_other_errors_are_not(tmp_path, monkeypatch, caplog):
  """What a damaged step's reads print after the first has failed: tracebacks of reads that
  wake Orbax's closed event loop, asyncio's error for each failed read's future. Both are
  dropped for a step restore_latest tried; anything else goes where it went."""
  from lgjax.train import checkpoints
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  step_dir = os.path.join(str(tmp_path), 'checkpoints', '4')
  checkpoints._quiet_late_reads(step_dir)
  checkpoints._quiet_late_reads(step_dir)  # installs its hook once

  def unraisable(error):  # what sys.unraisablehook is given
    try:
      raise error
    except Exception as e:
      return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__)

  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:  # what a late read's callback meets
    late = types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__)
  other = unraisable(RuntimeError('Event loop is closed'))  # the same words, raised elsewhere
  for args in (late, other, unraisable(ValueError('a real one'))):
    sys.unraisablehook(args)
  assert [str(a.exc_value) for a in seen] == ['Event loop is closed', 'a real one']
  logger = logging.getLogger('asyncio')
  with caplog.at_level('ERROR', logger='asyncio'):
    for where in (step_dir, os.path.join(str(tmp_path), 'checkpoints', '2')):
      logger.error('Future exception was never retrieved\nfuture: <Future finished exception=ValueError('
                   '\'DATA_LOSS: Error reading "params/.zarray" in OCDBT database at local file "%s/state/"\')>', where)
    logger.error('Task was destroyed but it is pending! %s', step_dir)
  assert [r.getMessage().split()[0] for r in caplog.records] == ['Future', 'Task']
  assert caplog.records[0].getMessage().endswith('checkpoints/2/state/"\')>')


def test_an_export_is_whole_or_absent(tmp_path):
  def crashing(directory, trainable):
    os.makedirs(directory)
    open(os.path.join(directory, 'half'), 'w').close()
    raise KeyboardInterrupt

  kind = kinds.Kind('descendant', None, lambda p: p, crashing)
  with pytest.raises(KeyboardInterrupt):
    loop.export(kind, str(tmp_path), {})
  assert not os.path.exists(tmp_path / loop.EXPORT_DIR)
  params = {'w': jnp.arange(3.0)}
  kind = kinds.Kind('descendant', None, lambda p: p, lambda d, p: checkpoint.save_tree(os.path.join(d, 'p'), p))
  loop.export(kind, str(tmp_path), params)
  assert sorted(os.listdir(tmp_path)) == [loop.EXPORT_DIR]
  np.testing.assert_array_equal(checkpoint.restore_tree(str(tmp_path / loop.EXPORT_DIR / 'p'))['w'], params['w'])


@pytest.mark.slow  # end to end (runs, resumed or in bfloat16): the slow tier
def test_frozen_params_stay_put_through_a_resume(tmp_path):
  frozen = ('^Transformer/encoderblock_0/', '^embedding/')
  config = run_config('teacher', total_steps=2, checkpoint_every=1, **{'optimizer.frozen': frozen})
  train_and_evaluate(config, str(tmp_path))
  config.total_steps = 3
  train_and_evaluate(config, str(tmp_path))  # resumes: the optimizer state of a frozen tree restores
  resolved = loop.resolve(config)
  initial = kinds.make_kind(resolved, data.image_shape(resolved.dataset)).init(
      jax.random.split(jax.random.key(config.seed))[0])
  final, _ = restore_export(tmp_path)
  moved = _moved(final, initial)
  assert not any(v for n, v in moved.items() if n.startswith(('Transformer/encoderblock_0/', 'embedding/')))
  assert all(v != n.endswith(KEY_BIAS) for n, v in moved.items() if n.startswith(('Transformer/encoderblock_1/', 'head/')))


@pytest.mark.parametrize('frozen, message', [
    (('^templates/',), r"optimizer.frozen: '\^templates/' matches no trainable param; names look like"),
    (('(',), r"optimizer.frozen: '\(' is not a regex"),
])
def test_frozen_patterns_must_match(tmp_path, frozen, message):
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(run_config('teacher', **{'optimizer.frozen': frozen}), str(tmp_path))
