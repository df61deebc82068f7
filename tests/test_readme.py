"""The README's Python blocks run as written, after the main job (the demo)."""

import os
import re

import jax
import pytest

from conftest import ROOT, random_like
from lgjax import checkpoint
from lgjax.learngene import save_learngene
from lgjax.models import param_shapes

DEMO = '/tmp/lgjax_demo'


def python_blocks() -> list[str]:
  with open(os.path.join(ROOT, 'README.md')) as f:
    return re.findall(r'^```python\n(.*?)^```$', f.read(), re.M | re.S)


def fake_demo(root: str) -> None:
  """The exports the blocks read, as tiny random models with the demo's layout."""
  base = dict(num_classes=5, patch_size=7, width=16, num_heads=2, mlp_dim=32, pool_type='tok')
  for name, depth in (('teacher', 4), ('depth2_tleg', 2), ('depth6_tleg', 6)):
    config = {**base, 'depth': depth}
    params = jax.tree.map(lambda x: 0.1 * x, random_like(param_shapes(config, (28, 28, 1)), seed=depth))
    checkpoint.save_params(os.path.join(root, name, 'export'), jax.device_get(params), config)


@pytest.mark.slow  # trains, expands and converts end to end
def test_every_python_block_of_the_readme_runs(tmp_path):
  fake_demo(str(tmp_path / 'demo'))
  blocks = python_blocks()
  assert len(blocks) >= 5
  for i, block in enumerate(blocks):
    code = block.replace(DEMO, str(tmp_path / 'demo')).replace('/tmp/lgjax_vit', str(tmp_path / 'vit'))
    try:
      exec(compile(code, f'README.md python block {i}', 'exec'), {})
    except Exception as e:
      raise AssertionError(f'README python block {i} fails: {type(e).__name__}: {e}\n{block}') from e


@pytest.mark.slow  # subprocesses
def test_the_readme_train_commands_run_on_tiny_settings(tmp_path):
  """The README's train.py lines (teacher -> TLEG learngene -> descendant), 2 steps each."""
  import subprocess
  import sys
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  block = re.search(r'^```bash\n(python train.py --config=configs/teacher.py.*?)^```$', text, re.M | re.S).group(1)
  commands = [c.split() for c in block.replace('\\\n', ' ').splitlines() if c.strip()]
  assert [c[2] for c in commands] == ['--config=configs/teacher.py:mnist5k', '--config=configs/tleg_aux.py:mnist5k',
                                      '--config=configs/descendant.py:mnist5k']
  tiny = ['--config.total_steps=2', '--config.batch_size=16', '--config.eval_every=2']
  for command in commands:
    command = [a.replace('/tmp/', f'{tmp_path}/') for a in command[1:]]
    result = subprocess.run([sys.executable, *command, *tiny], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (command, result.stderr[-2000:])
  assert os.path.isdir(tmp_path / 'desc' / 'export')


@pytest.mark.slow  # subprocesses
def test_the_readme_expand_commands_run(tmp_path):
  """The expand.py lines of the README (the train.py line between them is run by the recipe tests)."""
  import subprocess
  import sys
  from lgjax.learngene import sws, tleg
  from conftest import TINY, IMAGE_SHAPE
  demo = tmp_path / 'demo'
  save_learngene(str(demo / 'tleg' / 'export'), tleg.init_learngene(jax.random.key(0), TINY, image_shape=IMAGE_SHAPE),
                            method='tleg', model_config=TINY)
  save_learngene(str(tmp_path / 'sws' / 'export'), sws.init_learngene(
      jax.random.key(0), TINY, num_stages=3, image_shape=IMAGE_SHAPE), method='sws', model_config=TINY)
  with open(os.path.join(ROOT, 'README.md')) as f:
    lines = [line for line in f if line.startswith('python expand.py')]
  assert len(lines) == 2
  for line in lines:
    line = line.replace(DEMO, str(demo)).replace('/tmp/lgjax_sws', str(tmp_path / 'sws'))
    line = line.replace('/tmp/lgjax_desc', str(tmp_path / 'desc'))
    result = subprocess.run([sys.executable, *line.split()[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (line, result.stderr[-2000:])


@pytest.mark.slow  # subprocesses
def test_the_readme_wave_commands_run_on_tiny_settings(tmp_path):
  """The README's three WAVE runs (templates -> scalers -> descendant), 2 steps each."""
  import subprocess
  import sys
  fake_demo(str(tmp_path / 'demo'))
  with open(os.path.join(ROOT, 'README.md')) as f:
    block = re.search(r'^```bash\n(# 1\. templates.*?)^```$', f.read(), re.M | re.S).group(1)
  commands = [c.split() for c in block.replace('\\\n', ' ').splitlines() if c.strip() and not c.startswith('#')]
  assert [c[2] for c in commands] == ['--config=configs/wave_aux.py:mnist5k', '--config=configs/wave_scalers.py:mnist5k',
                                      '--config=configs/descendant.py:mnist5k']
  tiny = ['--config.total_steps=2', '--config.batch_size=16', '--config.eval_every=2']
  for command in commands:
    command = [a.replace(DEMO, '@demo').replace('/tmp/', f'{tmp_path}/').replace('@demo', str(tmp_path / 'demo'))
               for a in command[1:]]
    result = subprocess.run([sys.executable, *command, *tiny], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (command, result.stderr[-2000:])
  params, config = checkpoint.load_params(str(tmp_path / 'desc_w32d4' / 'export'))
  assert (config['width'], config['depth']) == (32, 4)
