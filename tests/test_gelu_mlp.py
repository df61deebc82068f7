"""gelu_mlp: the MLP with its bias and GELU in the matmuls' epilogues against the textbook
formulas, its Pallas kernels (interpreted here; compiled by Triton in gpu_check) against the
jnp ones, and its batch split over 8 devices."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import block_accesses, jaxpr_eqns, pallas_accesses
from lgjax.models import gelu_mlp


def _inputs(dtype, batch=3, tokens=40, width=48, hidden=96, out=32):
  """Widths that are not powers of 2 (48: K steps of 16; 96 columns in a block of 128)
  and tokens that no row block divides: the masks work."""
  k = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(k[0], (batch, tokens, width), dtype)
  w1 = jax.random.normal(k[1], (width, hidden)) / math.sqrt(width)
  b1 = jax.random.normal(k[2], (hidden,))
  w2 = jax.random.normal(k[3], (hidden, out)) / math.sqrt(hidden)
  return x, w1, b1, w2


def _textbook(x, w1, b1, w2, approximate, xp=np):
  """gelu(x w1 + b1) w2 by the GELU's definitions: float64 numpy, or with xp=jnp the plain
  formula jax.grad differentiates."""
  h = x @ w1 + b1
  if approximate:
    g = 0.5 * h * (1 + xp.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
  else:
    erf = np.vectorize(math.erf) if xp is np else jax.scipy.special.erf
    g = 0.5 * h * (1 + erf(h / math.sqrt(2)))
  return g @ w2


@pytest.mark.parametrize('approximate', [True, False])
def test_forward_and_gradients_are_the_textbook_ones(approximate):
  x, w1, b1, w2 = _inputs(jnp.float32)
  mlp = lambda *a: gelu_mlp.mlp(*a, approximate=approximate)
  np.testing.assert_allclose(jax.jit(mlp)(x, w1, b1, w2), _textbook(*map(np.float64, (x, w1, b1, w2)), approximate),
                             atol=2e-5)
  weights = jax.random.normal(jax.random.key(1), x.shape[:2] + (w2.shape[1],))
  grads = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(weights * fn(*a)), argnums=range(4)))(x, w1, b1, w2)
  for name, got, want in zip(('x', 'w1', 'b1', 'w2'), grads(mlp),
                             grads(lambda *a: _textbook(*a, approximate, xp=jnp))):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5, err_msg=name)


def test_gelu_and_its_gradient_match_jax():
  """The kernels' GELU (erf by Abramowitz & Stegun) and its derivative by formula, against
  jax.nn.gelu and its autodiff gradient."""
  h = jnp.linspace(-8.0, 8.0, 2001)
  for approximate in (True, False):
    want = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=approximate)))(h)
    np.testing.assert_allclose(gelu_mlp.gelu(h, approximate), jax.nn.gelu(h, approximate=approximate), atol=1e-6)
    np.testing.assert_allclose(gelu_mlp.gelu_grad(h, approximate), want, atol=5e-6)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('approximate,tiles', [
    (True, gelu_mlp.Tiles(block_m=16)), (False, gelu_mlp.TILES), (True, gelu_mlp.Tiles(32, 32, 16))])
def test_kernels_compute_the_jnp_formulas(dtype, approximate, tiles):
  """The Pallas kernels, interpreted, against reference_forward / reference_backward. With
  16-row blocks, 120 rows make 8 blocks, some straddling two examples, one starting where an
  example does: each block's column sums land in one slot of the example it starts in, and
  they total the reference's. 32 x 32 blocks, 16 deep: 3 column blocks, 3 K steps."""
  x, w1, b1, w2 = _inputs(dtype)
  w1, w2 = w1.astype(dtype), w2.astype(dtype)
  kw = dict(approximate=approximate, tiles=tiles)
  want = gelu_mlp.reference_forward(x, w1, b1, **kw)
  got = gelu_mlp.kernel_forward(x, w1, b1, **kw, interpret=True)
  tol = dict(atol=1e-5, rtol=1e-5) if dtype == jnp.float32 else dict(atol=2 ** -7, rtol=2 ** -7)
  for name, g, w in zip(('h', 'g'), got, want):
    assert g.dtype == w.dtype == dtype, name
    np.testing.assert_allclose(np.float32(g), np.float32(w), **tol, err_msg=name)

  h = want[0]
  dz = jax.random.normal(jax.random.key(2), x.shape[:2] + (w2.shape[1],), dtype)
  (want_dh, want_sums), (got_dh, got_sums) = (
      gelu_mlp.reference_backward(dz, w2, h, **kw), gelu_mlp.kernel_backward(dz, w2, h, **kw, interpret=True))
  assert got_dh.dtype == want_dh.dtype == dtype and got_sums.shape == want_sums.shape
  np.testing.assert_allclose(np.float32(got_dh), np.float32(want_dh), **tol)
  np.testing.assert_allclose(got_sums.sum((0, 1)), want_sums.sum((0, 1)), rtol=1e-4, atol=1e-3)


def test_blocks_past_the_arrays_end_are_masked():
  """Pallas's Triton lowering neither pads nor masks a block that overhangs its array (the
  interpreter above does): unmasked, the kernels would read and write past the end on a GPU.
  Every load and store of the kernels' blocks is masked where 120 rows and 96 columns leave
  blocks of 128 overhanging, and none where 256 x 128 tile exactly."""
  for tokens, hidden, masked in ((40, 96, True), (64, 128, False)):
    x, w1, b1, w2 = _inputs(jnp.float32, batch=3 if masked else 4, tokens=tokens, hidden=hidden)
    h, _ = gelu_mlp.reference_forward(x, w1, b1, approximate=True)
    # x, w1, b1 read and h, g written; dz, w2, h read and dh, the sums written
    assert pallas_accesses(lambda *a: gelu_mlp.kernel_forward(*a, approximate=True), x, w1, b1) == block_accesses(
        3, 2, masked)
    assert pallas_accesses(lambda *a: gelu_mlp.kernel_backward(*a, approximate=True), x[..., :32], w2, h) == (
        block_accesses(3, 2, masked))


def test_row_blocks_within_examples_sum_per_example():
  """Where row blocks do not straddle examples (32 tokens, blocks of 16), each example's
  slots hold exactly its own column sums."""
  x, w1, b1, w2 = _inputs(jnp.float32, batch=3, tokens=32)
  h, _ = gelu_mlp.reference_forward(x, w1, b1, approximate=True)
  dz = jax.random.normal(jax.random.key(2), x.shape[:2] + (w2.shape[1],))
  dh, sums = gelu_mlp.kernel_backward(dz, w2, h, approximate=True, tiles=gelu_mlp.Tiles(block_m=16), interpret=True)
  assert sums.shape == (3, 2, 96)
  np.testing.assert_allclose(sums.sum(1), dh.sum(1), rtol=1e-5, atol=1e-4)


def test_the_kernels_fit_widths_of_16s():
  """K steps of 64, 32 or 16 (wgmma's bf16 depth) that divide the width, blocks no wider than
  the columns need; other widths run the jnp formulas."""
  tiles = gelu_mlp.TILES
  assert gelu_mlp.fit(tiles, 384, 1536) == tiles
  assert gelu_mlp.fit(tiles, 48, 96) == tiles._replace(block_k=16)
  assert gelu_mlp.fit(tiles._replace(block_n=256), 64, 48) == tiles._replace(block_n=64)
  assert gelu_mlp.fit(tiles, 40, 160) is None
  x, w1, b1, w2 = _inputs(jnp.float32, width=40)
  np.testing.assert_allclose(gelu_mlp.mlp(x, w1, b1, w2), _textbook(*map(np.float64, (x, w1, b1, w2)), True),
                             atol=2e-5)


def test_a_batch_split_over_devices_stays_split():
  """Under jit on 8 devices with the batch split, each device runs its own examples: the
  same numbers as on one device, outputs split like the inputs, no all-gather."""
  x, w1, b1, w2 = _inputs(jnp.float32, batch=16, tokens=5, width=16, hidden=64, out=16)
  def loss(x, w1, b1, w2):
    z = gelu_mlp.mlp(x, w1, b1, w2)
    return jnp.sum(z * x), z
  step = jax.jit(jax.value_and_grad(loss, argnums=range(4), has_aux=True))
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  rows, whole = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  split = [jax.device_put(a, s) for a, s in zip((x, w1, b1, w2), (rows, whole, whole, whole))]
  (got_loss, z), grads = step(*split)
  (want_loss, want_z), want_grads = step(x, w1, b1, w2)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  for got, want in zip((z, *grads), (want_z, *want_grads)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
  assert z.sharding.spec == grads[0].sharding.spec == P('data')
  hlo = step.lower(*split).compile().as_text()
  assert 'all-gather' not in hlo and 'all-reduce' in hlo


def test_under_vmap_the_mapped_axis_joins_the_batch():
  """The train step vmaps a per-example loss: each kernel then runs once on the whole batch
  (one call each way in the jaxpr, on all 8 x 2 examples), with the unmapped call's numbers."""
  x, w1, b1, w2 = _inputs(jnp.float32, batch=16, tokens=5, width=16, hidden=64, out=16)
  fn = lambda x: gelu_mlp.mlp(x, w1, b1, w2)
  split = x.reshape(8, 2, *x.shape[1:])
  np.testing.assert_allclose(jax.vmap(fn)(split), fn(x).reshape(split.shape), rtol=1e-6)
  grad = jax.vmap(jax.grad(lambda x: jnp.sum(fn(x) ** 2)))
  calls = jaxpr_eqns(jax.make_jaxpr(grad)(split).jaxpr, 'custom_partitioning')
  assert [c.invars[0].aval.shape for c in calls] == [x.shape] * 2


def test_mismatched_weights_are_refused():
  x, w1, b1, w2 = _inputs(jnp.float32)
  with pytest.raises(ValueError, match=r'expected w1 \(48, hidden\), b1 \(hidden,\) and w2 \(hidden, out\) for x '
                                       r'of width 48, got \(48, 96\), \(96,\) and \(64, 32\)'):
    gelu_mlp.mlp(x, w1, b1, w2[:64])
