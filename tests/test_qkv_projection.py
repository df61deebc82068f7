"""qkv_projection: attention's projections with the query's bias in its matmul and the
input's three gradients summed in one, against the textbook einsums, its Pallas kernels
(interpreted here; compiled by Triton in gpu_check) against the jnp ones, and its batch
split over 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import block_accesses, jaxpr_eqns, pallas_accesses
from lgjax.models import qkv_projection
from lgjax.models.pallas_gemm import Tiles, TILES


def _inputs(dtype=jnp.float32, batch=3, tokens=40, width=48, heads=2, head_dim=24):
  """Widths that are not powers of 2 (48: K steps of 16; 48 columns in a block of 128) and
  tokens that no row block divides: the masks work."""
  k = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(k[0], (batch, tokens, width), dtype)
  wq, wk, wv = (jax.random.normal(key, (width, heads, head_dim)) / np.sqrt(width) for key in k[1:4])
  return x, wq, jax.random.normal(k[4], (heads, head_dim)), wk, wv


def _textbook(x, wq, bq, wk, wv, xp=np):
  """q, k, v by Flax's DenseGeneral formula: float64 numpy, or with xp=jnp what jax.grad
  differentiates."""
  project = lambda w: xp.einsum('btd,dhk->bthk', x, w)
  return project(wq) + bq, project(wk), project(wv)


def test_projections_and_gradients_are_the_textbook_ones():
  args = _inputs()
  for got, want in zip(jax.jit(qkv_projection.project)(*args), _textbook(*map(np.float64, args))):
    np.testing.assert_allclose(got, want, atol=2e-5)
  weights = [jax.random.normal(jax.random.key(i), (3, 40, 2, 24)) for i in range(3)]
  grads = lambda fn: jax.jit(jax.grad(lambda *a: sum(jnp.sum(w * o) for w, o in zip(weights, fn(*a))),
                                      argnums=range(5)))(*args)
  for name, got, want in zip(('x', 'wq', 'bq', 'wk', 'wv'), grads(qkv_projection.project),
                             grads(lambda *a: _textbook(*a, xp=jnp))):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize('dtype,tiles', [
    (jnp.float32, Tiles(block_m=16)), (jnp.bfloat16, TILES), (jnp.float32, Tiles(32, 32, 16))])
def test_kernels_compute_the_jnp_formulas(dtype, tiles):
  """The Pallas kernels, interpreted, against reference_forward / reference_backward: 120
  rows in blocks of 16 or 128, 48 columns in one block of 64 or two of 32, 16 deep (3 K
  steps over the width forward, 3 over each of the three gradients backward)."""
  x, wq, bq, wk, wv = _inputs(dtype)
  wq, wk, wv = (w.reshape(48, 48).astype(dtype) for w in (wq, wk, wv))
  bq = bq.reshape(48)
  tol = dict(atol=1e-5, rtol=1e-5) if dtype == jnp.float32 else dict(atol=2 ** -7, rtol=2 ** -7)
  want, got = (qkv_projection.reference_forward(x, wq, bq),
               qkv_projection.kernel_forward(x, wq, bq, tiles=tiles, interpret=True))
  assert got.dtype == want.dtype == dtype
  np.testing.assert_allclose(np.float32(got), np.float32(want), **tol)
  grads = [jax.random.normal(jax.random.key(i), x.shape, dtype) for i in (1, 2, 3)]
  want, got = (qkv_projection.reference_backward(*grads, wq, wk, wv),
               qkv_projection.kernel_backward(*grads, wq, wk, wv, tiles=tiles, interpret=True))
  assert got.dtype == want.dtype == dtype
  np.testing.assert_allclose(np.float32(got), np.float32(want), **tol)


def test_blocks_past_the_arrays_end_are_masked():
  """Pallas's Triton lowering neither pads nor masks a block that overhangs its array (the
  interpreter above does): every load and store is masked where 120 rows and 48 columns
  leave blocks of 128 and 64 overhanging, and none where 256 rows and 64 columns tile
  exactly."""
  for batch, tokens, width, masked in ((3, 40, 48, True), (4, 64, 64, False)):
    x, wq, bq, _, _ = _inputs(batch=batch, tokens=tokens, width=width, head_dim=width // 2)
    wq, bq = wq.reshape(width, width), bq.reshape(width)
    # x, wq, bq read and q written; dq, dk, dv and the three weights read, dx written
    assert pallas_accesses(qkv_projection.kernel_forward, x, wq, bq) == block_accesses(3, 1, masked)
    assert pallas_accesses(qkv_projection.kernel_backward, x, x, x, wq, wq, wq) == block_accesses(6, 1, masked)


def test_a_batch_split_over_devices_stays_split_and_vmap_joins_the_batch():
  """Under jit on 8 devices with the batch split, each device runs its own examples: the
  same numbers as on one device, outputs split like the input, no all-gather. Under vmap
  (a per-example loss), each kernel runs once on the whole batch."""
  args = _inputs(batch=16, tokens=5, width=16, head_dim=8)
  loss = lambda *a: sum(jnp.sum(o * o) for o in qkv_projection.project(*a))
  step = jax.jit(jax.value_and_grad(loss, argnums=range(5)))
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  split = [jax.device_put(a, NamedSharding(mesh, P('data') if i == 0 else P())) for i, a in enumerate(args)]
  (got_loss, got_grads), (want_loss, want_grads) = step(*split), step(*args)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  for got, want in zip(got_grads, want_grads):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
  assert got_grads[0].sharding.spec == P('data')
  hlo = step.lower(*split).compile().as_text()
  assert 'all-gather' not in hlo and 'all-reduce' in hlo

  x, rest = args[0], args[1:]
  grad = jax.vmap(jax.grad(lambda x: loss(x, *rest)))
  per_example = x.reshape(8, 2, *x.shape[1:])
  np.testing.assert_allclose(grad(per_example), want_grads[0].reshape(per_example.shape), atol=1e-4, rtol=1e-5)
  calls = jaxpr_eqns(jax.make_jaxpr(grad)(per_example).jaxpr, 'custom_partitioning')
  assert [c.invars[0].aval.shape for c in calls] == [x.shape, (16, 5, 16)]


def test_mismatched_weights_are_refused():
  x, wq, bq, wk, wv = _inputs()
  with pytest.raises(ValueError, match=r'expected wq, wk and wv \(width, heads, head_dim\) with width 48 and bq '
                                       r'\(heads, head_dim\), got \(48, 2, 24\), \(48, 2, 24\), \(48, 2, 24\) and '
                                       r'\(2, 12\)'):
    qkv_projection.project(x, wq, bq[:, :12], wk, wv)
