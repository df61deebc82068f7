"""Test setup: 8 fake CPU devices (set before jax is imported), tiny models, one XLA
compilation cache per test run."""
import importlib.metadata
import os
import shutil
import tempfile

# jaxlib's (major, minor), read before jax is imported: XLA_FLAGS must name flags it knows.
_JAXLIB = tuple(int(n) for n in importlib.metadata.version('jaxlib').split('.')[:2])


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for test processes: `devices` fake CPU devices, and fast compiles, which matter
  more than fast kernels for tiny models (compiling is half the suite's time). Without the
  fusion emitters a tiny train step compiles ~40 % faster; jaxlib 0.11 always uses them,
  and exits on the flag."""
  emitters = ' --xla_cpu_use_fusion_emitters=false' if _JAXLIB < (0, 11) else ''
  return f'--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0' + emitters


os.environ.setdefault('XLA_FLAGS', xla_flags(8))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TFDS_DATA_DIR', os.path.join(os.path.dirname(__file__), '_no_tfds_data'))
# The tests compile the same tiny programs many times over (every run of a recipe, every
# resume): one persistent cache for the run, made fresh here and read by the xdist workers
# and the processes tests start, which inherit the environment. (An entry read while another
# process writes it fails to decompress, and JAX compiles afresh with a warning. A max size
# would lock the cache instead, but each write then lists the whole cache: 1.6x slower.)
_OWN_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _OWN_CACHE = tempfile.mkdtemp(prefix='lgjax-tests-xla-cache-')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


TINY = dict(num_classes=5, patch_size=4, width=32, depth=3, num_heads=4, mlp_dim=64)
IMAGE_SHAPE = (16, 16, 1)


@pytest.fixture
def tiny_config():
  return dict(TINY)


def random_like(tree, seed=0):
  """Random values in the shapes of `tree`, so no test passes by zeros."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), tree)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in __import__('sys').path:
  __import__('sys').path.insert(0, ROOT)


def jaxpr_eqns(jaxpr, name):
  """The `name` equations of `jaxpr` and of the jaxprs inside it."""
  found = []
  for eqn in jaxpr.eqns:
    found += [eqn] if eqn.primitive.name == name else []
    for param in eqn.params.values():
      inner = getattr(param, 'jaxpr', param)
      if hasattr(inner, 'eqns'):
        found += jaxpr_eqns(inner, name)
  return found


def pallas_accesses(fn, *args) -> dict[str, int]:
  """How the one pallas_call of fn(*args) reads and writes its blocks: plain loads (get),
  stores (swap), and masked ones, counted in its kernel's jaxpr."""
  (call,) = jaxpr_eqns(jax.make_jaxpr(fn)(*args).jaxpr, 'pallas_call')
  return {name: len(jaxpr_eqns(call.params['jaxpr'], name)) for name in ('get', 'swap', 'masked_load', 'masked_swap')}


def block_accesses(reads: int, writes: int, masked: bool) -> dict[str, int]:
  """pallas_accesses of a kernel that reads `reads` blocks and writes `writes`, all masked or none."""
  return dict(get=0 if masked else reads, swap=0 if masked else writes,
              masked_load=reads if masked else 0, masked_swap=writes if masked else 0)


def losses(workdir):
  """The training loss of every logged step of the run in `workdir`, in step order."""
  from lgjax.train import reporting
  by_step = reporting.read_metrics(str(workdir))
  return np.array([by_step[s]['loss'] for s in sorted(by_step) if 'loss' in by_step[s]])


def restore_export(workdir):
  """(params, model config) of the run's export/."""
  from lgjax import checkpoint
  from lgjax.train import loop
  return checkpoint.load_params(os.path.join(str(workdir), loop.EXPORT_DIR))


def params_close(got, want):
  """The same params up to the order gradients were summed in (devices, shards): Adam's
  first steps (~ lr · sign(g)) can move a param whose gradient is ~0 the other way."""
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want)


def preempted_at(step: int):
  """A stand-in for lgjax.train.loop.preemption_guard that stops the run after `step`, as a
  SIGTERM would (monkeypatch it in: the run saves a checkpoint and returns)."""
  import contextlib

  @contextlib.contextmanager
  def guard():
    yield lambda s: 'Preempted' if s == step else None
  return guard


def run_expand(*args):
  """Runs expand.py with `args` in a fresh process; returns the CompletedProcess."""
  import subprocess
  import sys
  return subprocess.run([sys.executable, os.path.join(ROOT, 'expand.py'), *map(str, args)],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


def run_config(recipe: str, **overrides):
  """A recipe's 'mnist5k,runlocal' config (a seconds-long run, configs.common.runlocal)
  with '.'-named `overrides`."""
  import importlib
  config = importlib.import_module(f'configs.{recipe}').get_config('mnist5k,runlocal')
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope='module')
def random_teacher_dir(tmp_path_factory):
  """The teacher recipe's model (width 32, depth 2) with random params, saved as a run
  exports it: for tests that need a teacher to read, not a trained one."""
  from lgjax import checkpoint, data
  from lgjax.models import param_shapes
  from lgjax.train import kinds, loop
  path = str(tmp_path_factory.mktemp('random_teacher') / 'export')
  run = loop.resolve(run_config('teacher'))
  config = kinds.model_config(run)
  checkpoint.save_params(path, random_like(param_shapes(config, data.image_shape(run.dataset))), config)
  return path


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  """A tiny teacher (width 32, depth 2) trained 3 steps on mnist5k source digits: its export dir."""
  from lgjax.train import train_and_evaluate
  workdir = tmp_path_factory.mktemp('teacher')
  train_and_evaluate(run_config('teacher', total_steps=3), str(workdir))
  return os.path.join(str(workdir), 'export')
