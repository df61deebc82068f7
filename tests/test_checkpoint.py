import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import IMAGE_SHAPE, TINY, random_like, run_expand
from lgjax import checkpoint
from lgjax.learngene import METHODS, load_learngene, save_learngene
from lgjax.learngene import sws, tleg
from lgjax.models import ViT, blocks, param_shapes


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_params_round_trip(tmp_path):
  params = random_like(param_shapes(TINY, IMAGE_SHAPE))
  checkpoint.save_params(str(tmp_path / 'p'), params, TINY)
  restored, config = checkpoint.load_params(str(tmp_path / 'p'))
  _equal(restored, params)
  assert config == TINY


def test_load_params_names_what_does_not_fit(tmp_path):
  params = random_like(param_shapes(TINY, IMAGE_SHAPE))
  checkpoint.save_params(str(tmp_path / 'p'), params, TINY)
  with open(tmp_path / 'p' / 'model_config.json', 'w') as f:
    json.dump({**TINY, 'mlp_dim': 48}, f)
  with pytest.raises(ValueError, match=r"'Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias' has shape \(64,\), expected \(48,\)"):
    checkpoint.load_params(str(tmp_path / 'p'))
  with pytest.raises(ValueError, match=r'params have depth=3 but model_config has depth=4'):
    checkpoint.save_params(str(tmp_path / 'q'), params, {**TINY, 'depth': 4})
  with pytest.raises(FileNotFoundError, match='model_config.json'):
    checkpoint.load_params(str(tmp_path / 'missing'))


def test_learngene_round_trip_keeps_lists(tmp_path):
  lg = sws.init_learngene(jax.random.key(0), TINY, 2, image_shape=IMAGE_SHAPE)
  save_learngene(str(tmp_path / 'lg'), lg, method='sws', model_config=TINY, aux_stage_depths=[2, 1])
  restored, meta = load_learngene(str(tmp_path / 'lg'))
  assert isinstance(restored['stages'], list)
  _equal(restored, lg)
  assert meta == {'method': 'sws', 'model_config': TINY, 'aux_stage_depths': [2, 1]}
  with pytest.raises(ValueError, match="SWS learngene has width=32 but the requested model has width=64"):
    save_learngene(str(tmp_path / 'x'), lg, method='sws', model_config={**TINY, 'width': 64})
  with pytest.raises(ValueError, match=re.escape(f"method must be one of {sorted(METHODS)}, got 'lora'")):
    save_learngene(str(tmp_path / 'x'), lg, method='lora', model_config=TINY)


def test_npz_round_trip_never_unpickles(tmp_path):
  params = random_like(param_shapes({**TINY, 'scan': True}, IMAGE_SHAPE))
  checkpoint.save_npz(str(tmp_path / 'p.npz'), params)
  with np.load(tmp_path / 'p.npz', allow_pickle=False) as data:
    assert 'Transformer/encoderblock/MlpBlock_0/Dense_0/kernel' in data.files
  _equal(checkpoint.load_npz(str(tmp_path / 'p.npz')), params)


@pytest.mark.slow  # end to end (the CLI in a fresh process): the slow tier
def test_expand_cli_end_to_end(tmp_path):
  lg_dir, out = str(tmp_path / 'tleg'), str(tmp_path / 'desc')
  lg = tleg.init_learngene(jax.random.key(0), TINY, image_shape=IMAGE_SHAPE)
  save_learngene(lg_dir, lg, method='tleg', model_config=TINY)
  result = run_expand(f'--learngene={lg_dir}', '--method=tleg', '--depth=5', f'--out={out}', '--format=npz')
  assert result.returncode == 0, result.stderr
  params, config = checkpoint.load_params(out)
  assert config['depth'] == 5 and 'Descendant: depth 5, width 32' in result.stdout
  assert f'Wrote {os.path.join(out, "params.npz")}' in result.stdout
  _equal(params, jax.device_get(tleg.expand(lg, 5)))
  _equal(checkpoint.load_npz(os.path.join(out, 'params.npz')), params)
  x = jax.random.normal(jax.random.key(1), (2, *IMAGE_SHAPE))
  np.testing.assert_allclose(ViT(**config).apply({'params': params}, x),
                             ViT(**{**TINY, 'depth': 5}).apply({'params': tleg.expand(lg, 5)}, x), rtol=1e-6)


@pytest.mark.slow  # several expand.py subprocesses: the slow tier
def test_expand_cli_sws_scan_and_errors(tmp_path):
  lg_dir, out = str(tmp_path / 'sws'), str(tmp_path / 'desc')
  lg = sws.init_learngene(jax.random.key(0), TINY, 3, image_shape=IMAGE_SHAPE)
  save_learngene(lg_dir, lg, method='sws', model_config=TINY)
  result = run_expand(f'--learngene={lg_dir}', '--method=sws', '--stage_depths=2,1,1', f'--out={out}', '--scan')
  assert result.returncode == 0, result.stderr
  params, config = checkpoint.load_params(out)
  assert config['scan'] and blocks.depth(params) == 4
  out_ = ViT(**config).apply({'params': params}, jnp.ones((1, *IMAGE_SHAPE)))
  assert out_.shape == (1, TINY['num_classes'])

  wrong = run_expand(f'--learngene={lg_dir}', '--method=tleg', '--depth=3', f'--out={out}')
  assert wrong.returncode != 0 and "--method=tleg but" in wrong.stderr and 'holds a sws learngene' in wrong.stderr
  short = run_expand(f'--learngene={lg_dir}', '--method=sws', '--stage_depths=2,1', f'--out={out}')
  assert short.returncode != 0 and 'stage_depths must be a sequence of 3 integers' in short.stderr
  foreign = run_expand(f'--learngene={lg_dir}', '--method=sws', '--placement=above', f'--out={out}')
  assert foreign.returncode != 0 and '--placement is not an option of --method=sws (its options: --stage_depths)' in foreign.stderr
  split = run_expand(f'--learngene={lg_dir}', '--method=sws', '--depth=5', f'--out={out}')  # sws.split_depth: 2, 2, 1
  assert split.returncode == 0, split.stderr
  _equal(checkpoint.load_params(out)[0], jax.device_get(sws.expand(lg, (2, 2, 1))))
  wide = run_expand(f'--learngene={lg_dir}', '--method=sws', '--width=48', f'--out={tmp_path / "wide"}')
  assert 'SWS learngene has width=32 but the requested model has width=48' in wide.stderr, wide.stderr
  assert not os.path.exists(tmp_path / 'wide')  # refused before anything is written
  other = run_expand(f'--learngene={lg_dir}', '--method=sws', '--num_classes=7', f'--out={out}')
  assert other.returncode == 0 and 'a fresh head for 7 classes' in other.stdout, other.stderr
  params, config = checkpoint.load_params(out)
  head = params.pop('head')
  assert config['num_classes'] == 7 and head['kernel'].shape == (32, 7) and not head['bias'].any()
  assert 0 < np.abs(head['kernel']).max() <= 2 * 0.02 / 0.8796  # the ViT's head init: trunc-normal(0.02)
  _equal(params, {k: v for k, v in jax.device_get(sws.expand(lg, (1, 1, 1))).items() if k != 'head'})
  for failed in (wrong, short, foreign, wide):  # the message alone, on one line: no usage text, no traceback
    assert failed.stderr.startswith('expand.py: ') and failed.stderr.count('\n') == 1, failed.stderr


@pytest.mark.slow  # end to end (the CLI in a fresh process): the slow tier
def test_expand_cli_condense_to_safetensors(tmp_path):
  from lgjax.learngene import condense
  params = random_like(param_shapes({**TINY, 'depth': 4}, IMAGE_SHAPE))
  lg = condense.condense(params, [2, 3])
  save_learngene(str(tmp_path / 'lg'), lg, method='condense', model_config={**TINY, 'depth': 4})
  out = str(tmp_path / 'desc')
  result = run_expand(f'--learngene={tmp_path / "lg"}', '--method=condense', '--depth=3',
                       '--placement=above', '--num_classes=3', f'--out={out}', '--format=safetensors')
  assert result.returncode == 0, result.stderr
  restored, config = checkpoint.load_params(out)
  assert config['depth'] == 3 and config['num_classes'] == 3 and 'Descendant: depth 3' in result.stdout
  jax.tree.map(np.testing.assert_array_equal, restored['Transformer']['encoderblock_1'],
               params['Transformer']['encoderblock_3'])
  timm, _ = checkpoint.load_params(os.path.join(out, 'params.safetensors'), num_heads=TINY['num_heads'])
  jax.tree.map(np.testing.assert_array_equal, timm, restored)
  short = run_expand(f'--learngene={tmp_path / "lg"}', '--method=condense', '--depth=1', f'--out={out}')
  assert short.returncode != 0 and 'depth=1 must be >= the 2 condensed learngene layers' in short.stderr


@pytest.mark.slow  # two fresh processes: the slow tier
def test_an_export_written_on_two_devices_loads_on_one(tmp_path):
  """Exports keep no topology: params saved sharded over 2 devices load in a 1-device process."""
  import subprocess
  import sys
  from conftest import ROOT
  save = ('import jax, numpy as np\n'
          'from lgjax import checkpoint\n'
          'from lgjax.models import param_shapes\n'
          f'cfg = {TINY!r}\n'
          'mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))\n'
          'rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())\n'
          f'shapes = param_shapes(cfg, {IMAGE_SHAPE!r})\n'
          'params = jax.tree.map(lambda s: jax.device_put(np.ones(s.shape, s.dtype), rep), shapes)\n'
          f'checkpoint.save_params({str(tmp_path / "export")!r}, params, cfg)\n')
  load = ('import jax, numpy as np\n'
          'from lgjax import checkpoint\n'
          f'params, cfg = checkpoint.load_params({str(tmp_path / "export")!r})\n'
          'print(jax.device_count(), sum(float(np.sum(x)) for x in jax.tree.leaves(params)))\n')
  run = lambda code, devices: subprocess.run(
      [sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'})
  saved = run(save, 2)
  assert saved.returncode == 0, saved.stderr[-2000:]
  loaded = run(load, 1)
  assert loaded.returncode == 0, loaded.stderr[-2000:]
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(param_shapes(TINY, IMAGE_SHAPE)))
  assert loaded.stdout.split() == ['1', f'{float(count)}']


def test_broken_files_are_named_with_what_was_expected(tmp_path):
  params = jax.device_get(random_like(param_shapes(TINY, IMAGE_SHAPE)))
  checkpoint.save_params(str(tmp_path / 'm'), params, TINY)
  config_path = tmp_path / 'm' / 'model_config.json'
  for text, message in (('{"mlp_dim": "128"', 'not valid JSON'),
                        ('[1, 2]', 'expected a JSON object, got a list'),
                        (json.dumps({**TINY, 'mlp_dim': '128'}), "mlp_dim must be an integer or None, got '128'")):
    config_path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / 'm')) + '.*' + re.escape(message)):
      checkpoint.load_params(str(tmp_path / 'm'))
  flat = checkpoint.convert.to_big_vision(params)
  np.savez(tmp_path / 'both.npz', **flat, head=np.zeros(3, np.float32))
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'both.npz'}: Key 'head") + '.*leaf'):
    checkpoint.load_params(str(tmp_path / 'both.npz'))
  lg = tleg.init_learngene(jax.random.key(0), TINY, image_shape=IMAGE_SHAPE)
  save_learngene(str(tmp_path / 'lg'), lg, method='tleg', model_config=TINY)
  meta = json.loads((tmp_path / 'lg' / 'learngene.json').read_text())
  del meta['model_config']
  (tmp_path / 'lg' / 'learngene.json').write_text(json.dumps(meta))
  with pytest.raises(ValueError, match='learngene.json has no "model_config" object'):
    load_learngene(str(tmp_path / 'lg'))


def test_a_run_directory_given_for_its_export_gets_a_hint(tmp_path):
  lg = tleg.init_learngene(jax.random.key(0), TINY, image_shape=IMAGE_SHAPE)
  save_learngene(str(tmp_path / 'run' / 'export'), lg, method='tleg', model_config=TINY)
  with pytest.raises(FileNotFoundError, match=re.escape(f"did you mean {str(tmp_path / 'run' / 'export')!r}")):
    load_learngene(str(tmp_path / 'run'))
