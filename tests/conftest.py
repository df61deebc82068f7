"""Test setup: 8 fake CPU devices (set before jax is imported), tiny models."""
import os

# Fast compiles matter more than fast kernels for tiny test models.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TFDS_DATA_DIR', os.path.join(os.path.dirname(__file__), '_no_tfds_data'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY = dict(num_classes=5, patch_size=4, width=32, depth=3, num_heads=4, mlp_dim=64)
IMAGE_SHAPE = (16, 16, 1)


@pytest.fixture
def tiny_config():
  return dict(TINY)


def random_like(tree, seed=0):
  """Random values in the shapes of `tree`, so no test passes by zeros."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), tree)
