"""residual_norm: the fused residual add + LayerNorm against the textbook formulas, its
Pallas kernels (interpreted here; compiled by Triton in gpu_check) against the jnp ones,
and its batch split over 8 devices."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import jaxpr_eqns
from lgjax.models import residual_norm

EPS = 1e-6


def _inputs(dtype, batch=3, tokens=70, width=48, drop_path=False):
  """Tokens not a multiple of the kernels' 8 rows, over two backward chunks of 64 (the second
  mostly past the end), and a width not a power of 2: the masks work."""
  k = jax.random.split(jax.random.key(0), 6)
  x, h = (jax.random.normal(key, (batch, tokens, width), dtype) for key in k[:2])
  b, bias = (jax.random.normal(key, (width,)) for key in k[2:4])
  scale = 1.0 + jax.random.normal(k[4], (width,))
  keep = jnp.where(jnp.arange(batch) % 3 == 0, 0.0, 1.25) if drop_path else None
  return x, h, b, keep, scale, bias


def _textbook(x, h, b, keep, scale, bias, xp=np):
  """The residual sum, then LayerNorm with the variance about the mean: float64 numpy,
  or with xp=jnp the plain formula jax.grad differentiates."""
  s = x + (1.0 if keep is None else keep[:, None, None]) * (h + b)
  mean = s.mean(-1, keepdims=True)
  return s, (s - mean) / xp.sqrt(((s - mean) ** 2).mean(-1, keepdims=True) + EPS) * scale + bias


@pytest.mark.parametrize('drop_path', [False, True])
def test_forward_and_gradients_are_the_textbook_ones(drop_path):
  """x' and y against float64 numpy; the custom VJP's gradients (the LayerNorm's added to
  the residual's, split over x, h, b, scale and bias) against jax.grad of the plain formula."""
  x, h, b, keep, scale, bias = _inputs(jnp.float32, drop_path=drop_path)
  new_x, y = jax.jit(lambda *a: residual_norm.add_layer_norm(*a, epsilon=EPS, dtype=jnp.float32))(
      x, h, b, keep, scale, bias)
  want_x, want_y = _textbook(*(None if a is None else np.float64(a) for a in (x, h, b, keep, scale, bias)))
  np.testing.assert_allclose(new_x, want_x, atol=1e-5)
  np.testing.assert_allclose(y, want_y, atol=1e-4)

  k1, k2 = jax.random.split(jax.random.key(1))
  w1, w2 = jax.random.normal(k1, x.shape), jax.random.normal(k2, x.shape)
  def loss(fn):
    return lambda x, h, b, scale, bias: sum(jnp.sum(w * o) for w, o in zip((w1, w2), fn(x, h, b, keep, scale, bias)))

  ours = jax.jit(jax.grad(loss(lambda *a: residual_norm.add_layer_norm(*a, epsilon=EPS, dtype=jnp.float32)),
                          argnums=range(5)))(x, h, b, scale, bias)
  want = jax.jit(jax.grad(loss(functools.partial(_textbook, xp=jnp)), argnums=range(5)))(x, h, b, scale, bias)
  for name, got, expected in zip(('x', 'h', 'b', 'scale', 'bias'), ours, want):
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('drop_path', [False, True])
def test_kernels_compute_the_jnp_formulas(dtype, drop_path):
  """The Pallas kernels, interpreted, against reference_forward / reference_backward:
  float32 to rounding; bfloat16 outputs to one bfloat16 step (the same float32 math,
  rounded once, in another order)."""
  x, h, b, keep, scale, bias = _inputs(dtype, drop_path=drop_path)
  want = residual_norm.reference_forward(x, h, b, keep, scale, bias, epsilon=EPS, dtype=dtype)
  got = residual_norm.kernel_forward(x, h, b, keep, scale, bias, epsilon=EPS, dtype=dtype, interpret=True)
  tol = dict(atol=1e-5) if dtype == jnp.float32 else dict(atol=2 ** -7, rtol=2 ** -7)
  for name, g, w in zip(('new_x', 'y', 'mean', 'rstd'), got, want):
    assert g.dtype == w.dtype, name
    np.testing.assert_allclose(np.float32(g), np.float32(w), **tol, err_msg=name)

  new_x, _, mean, rstd = want
  k1, k2 = jax.random.split(jax.random.key(2))
  dnew_x, dy = jax.random.normal(k1, x.shape, dtype), jax.random.normal(k2, x.shape, dtype)
  want = residual_norm.reference_backward(new_x, mean, rstd, keep, scale, dnew_x, dy, h_dtype=dtype)
  got = residual_norm.kernel_backward(new_x, mean, rstd, keep, scale, dnew_x, dy, h_dtype=dtype, interpret=True)
  for name, g, w in zip(('dx', 'dh', 'sums'), got, want):
    assert g.shape == w.shape and g.dtype == w.dtype, name
    np.testing.assert_allclose(np.float32(g), np.float32(w), atol=1e-4 if name == 'sums' else tol['atol'],
                               rtol=tol.get('rtol', 1e-5), err_msg=name)


def test_a_batch_split_over_devices_stays_split():
  """Under jit on 8 devices with the batch split, each device normalizes its own examples:
  the same numbers as on one device, outputs split like the inputs, and no all-gather
  in the compiled program (only the all-reduce of the column sums)."""
  x, h, b, keep, scale, bias = _inputs(jnp.float32, batch=16, tokens=5, width=16, drop_path=True)
  def loss(x, h, b, scale, bias):
    new_x, y = residual_norm.add_layer_norm(x, h, b, keep, scale, bias, epsilon=EPS, dtype=jnp.float32)
    return jnp.sum(new_x * y), (new_x, y)
  step = jax.jit(jax.value_and_grad(loss, argnums=range(5), has_aux=True))
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  rows, whole = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  split = [jax.device_put(a, s) for a, s in zip((x, h, b, scale, bias), (rows, rows, whole, whole, whole))]
  (got_loss, (new_x, y)), grads = step(*split)
  (want_loss, want_outs), want_grads = step(x, h, b, scale, bias)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  for got, want in zip((new_x, y, *grads), (*want_outs, *want_grads)):
    np.testing.assert_allclose(got, want, atol=1e-4)
  assert new_x.sharding.spec == y.sharding.spec == grads[0].sharding.spec == P('data')
  hlo = step.lower(*split).compile().as_text()
  assert 'all-gather' not in hlo and 'all-reduce' in hlo


def test_mismatched_inputs_are_refused():
  x, h, b, keep, scale, bias = _inputs(jnp.float32)
  with pytest.raises(ValueError, match=r'x and h must have one shape and dtype, got \(3, 70, 48\) float32 '
                                       r'and \(3, 70, 48\) bfloat16'):
    residual_norm.add_layer_norm(x, h.astype(jnp.bfloat16), b, keep, scale, bias, epsilon=EPS, dtype=jnp.float32)


def test_under_vmap_the_mapped_axis_joins_the_batch():
  """The train step vmaps a per-example loss: the op then runs once on the whole batch
  (one call in the jaxpr, on all 8 x 2 examples), with the numbers of the unmapped call;
  params that differ along the map (an ensemble) take one call per mapped element."""
  x, h, b, keep, scale, bias = _inputs(jnp.float32, batch=16, tokens=5, width=16, drop_path=True)
  fn = lambda x, h, keep, scale: residual_norm.add_layer_norm(x, h, b, keep, scale, bias, epsilon=EPS,
                                                              dtype=jnp.float32)
  split = lambda a: a.reshape(8, 2, *a.shape[1:])
  mapped = jax.vmap(fn, in_axes=(0, 0, 0, None))
  for got, want in zip(mapped(split(x), split(h), split(keep), scale), fn(x, h, keep, scale)):
    np.testing.assert_allclose(got, split(want), rtol=1e-6)
  calls = jaxpr_eqns(jax.make_jaxpr(mapped)(split(x), split(h), split(keep), scale).jaxpr, 'custom_partitioning')
  assert [c.invars[0].aval.shape for c in calls] == [x.shape]
  scales = jnp.stack([scale, 2 * scale])
  got = jax.vmap(fn, in_axes=(None, None, None, 0))(x, h, keep, scales)
  for i in range(2):
    np.testing.assert_allclose(got[1][i], fn(x, h, keep, scales[i])[1], rtol=1e-6)
