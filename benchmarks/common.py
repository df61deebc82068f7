"""What the benchmarks share: one way to time, to measure the peak, to build a train step.

Run every benchmark from the repository root as a module: python -m benchmarks.NAME
"""

from __future__ import annotations

import functools
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lgjax.models import ViT, param_shapes
from lgjax.models.vit import KERNEL_IMPLS
from lgjax.train import optim, parallel, step, train_and_evaluate


def median_time(fn: Callable[[], object], repeats: int) -> float:
  """Median wall seconds of fn() (results blocked on) after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def interleaved_times(fns: dict[str, Callable[[], object]], rounds: int, repeats: int = 2) -> dict[str, float]:
  """Name -> median over `rounds` of median_time(fn, repeats), the fns taking turns
  each round, so that a machine that slows down or speeds up affects all alike."""
  for fn in fns.values():
    jax.block_until_ready(fn())  # compile / warm up
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      times[name].append(median_time(fn, repeats))
  return {name: float(np.median(t)) for name, t in times.items()}


def matmul(n: int = 2048, dtype: str = 'float32', count: int = 1) -> tuple[Callable[[], jax.Array], float]:
  """(fn, GFLOP): `count` large n x n matmuls in one jitted GEMM (count·n rows), whose rate
  is the machine's practical peak; time it in turns with the steps it is the peak for
  (interleaved_times). On a GPU one 8192² GEMM takes ~1.5 ms, of which the call and the
  wait would be a few percent: count 8 makes them noise."""
  a = jax.random.normal(jax.random.key(0), (count * n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  return (lambda: f(a, a[:n])), 2 * count * n ** 3 / 1e9


def add_model_args(parser, *, width: int = 192, depth: int = 12, heads: int = 3, image: int = 32, patch: int = 4,
                   batch: int = 128, dtype: str = 'float32', attention_impl: str | None = None) -> None:
  """The flags of the ViT a step benchmark runs (square images, mlp_dim = 4 x width)."""
  parser.add_argument('--width', type=int, default=width)
  parser.add_argument('--depth', type=int, default=depth)
  parser.add_argument('--heads', type=int, default=heads)
  parser.add_argument('--image', type=int, default=image)
  parser.add_argument('--patch', type=int, default=patch)
  parser.add_argument('--batch', type=int, default=batch)
  parser.add_argument('--dtype', default=dtype, help='compute dtype (params stay float32)')
  parser.add_argument('--attention-impl', default=attention_impl, choices=('xla', 'cudnn'), help='ViT.attention_impl')
  for field in KERNEL_IMPLS:  # --norm-impl, --mlp-impl, --qkv-impl
    parser.add_argument(f'--{field.replace("_", "-")}', default=None, choices=('pallas',), help=f'ViT.{field}')
  parser.add_argument('--drop-path', type=float, default=0.0, help='ViT.drop_path (the DeiT recipes: 0.1)')


def model_config(dims: dict, num_classes: int, **fields) -> dict:
  """The ViT config of a benchmark's dims (add_model_args' flags as vars(args), or a dict
  with patch, width, depth, heads and optionally dtype, attention_impl, and KERNEL_IMPLS,
  drop_path), `fields` added."""
  return dict(num_classes=num_classes, patch_size=dims['patch'], width=dims['width'], depth=dims['depth'],
              num_heads=dims['heads'], mlp_dim=4 * dims['width'], dtype=dims.get('dtype', 'float32'),
              attention_impl=dims.get('attention_impl'), drop_path=dims.get('drop_path', 0.0),
              **{k: dims.get(k) for k in KERNEL_IMPLS}, **fields)


def kernel_impls(dims: dict) -> str:
  """'norm xla, mlp pallas, qkv xla': which of the model's kernels a benchmark runs."""
  return ', '.join(f'{k.removesuffix("_impl")} {dims.get(k) or "xla"}' for k in KERNEL_IMPLS)


def train_once(config, workdir: str) -> str:
  """Trains `config` into `workdir` unless a finished run (its export written) is there; the workdir."""
  if not os.path.exists(os.path.join(workdir, 'export')):
    train_and_evaluate(config, workdir)
  return workdir


def steps_to_reach(curve: dict[int, float], target: float) -> int | None:
  """The first step whose accuracy reaches `target` (None: never)."""
  return next((s for s in sorted(curve) if curve[s] >= target), None)


def random_batch(batch_size: int, image_shape, num_classes: int, seed: int = 0) -> dict:
  """A train batch as the loaders make it for train.py: uniform uint8 pixels (the step scales
  them on the device, data.to_float), uniform labels, example indices."""
  rng = np.random.default_rng(seed)
  return {'image': jnp.asarray(rng.integers(0, 256, (batch_size, *image_shape), np.uint8)),
          'label': jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32),
          'index': jnp.arange(batch_size, dtype=jnp.int32)}


def train_step(model_cfg: dict, batch_size: int, backend, to_params: Callable | None = None,
               grad_accum_steps: int = 1) -> tuple[Callable, optax.GradientTransformation]:
  """(jitted step(state, batch, None) -> (state, metrics), its optimizer): one lgjax train step
  (cross-entropy, AdamW, no clipping or smoothing, as the PyTorch reference), state donated.
  Lower it on arrays or on shapes (jax.ShapeDtypeStruct, e.g. to compile for a chip that is
  not here)."""
  opt = ml_collections.ConfigDict(dict(lr=5e-4, warmup_steps=0, min_lr=0.0, weight_decay=0.05,
                                       b1=0.9, b2=0.999, clip_norm=0.0))
  loss = ml_collections.ConfigDict(dict(label_smoothing=0.0, alpha=0.0, temperature=1.0))
  optimizer = optim.make_optimizer(opt, batch_size, 1000)
  fn = backend.wrap_train(functools.partial(
      step.make_train_step, example_loss=step.classification_loss(ViT(**model_cfg), loss),
      to_params=to_params or (lambda p: p), optimizer=optimizer,
      schedule=optim.learning_rate(opt, batch_size, 1000), grad_accum_steps=grad_accum_steps))
  return fn, optimizer


def compile_step(model_cfg: dict, image_shape: tuple, batch_size: int, backend) -> jax.stages.Compiled:
  """`train_step` compiled from shapes alone, the state in the backend's shardings and the
  batch (uint8 pixels, as random_batch) split over its rows: for devices that are here, or
  for a chip's or a slice's topology that is not (its HLO: .as_text(); its memory per
  device: .memory_analysis())."""
  fn, optimizer = train_step(model_cfg, batch_size, backend)
  state = jax.eval_shape(lambda p: step.init_state(p, optimizer, jax.random.key(1)),
                         param_shapes(model_cfg, image_shape))
  state = jax.tree.map(lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where),
                       state, backend.shardings(state))
  rows = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=backend.sharded)
  batch = {'image': rows((batch_size, *image_shape), jnp.uint8),
           'label': rows((batch_size,), jnp.int32), 'index': rows((batch_size,), jnp.int32)}
  return fn.lower(state, batch, None).compile()


def step_runner(model_cfg: dict, trainable, batch: dict, to_params: Callable | None = None,
                grad_accum_steps: int = 1, devices=None, backend=None) -> Callable[[], jax.Array]:
  """() -> loss: `train_step` on `batch`, its state kept between calls.

  `backend`: the train loop's (default its jit backend over `devices`, default all:
  state replicated, batch split along its rows). On a CPU, JAX_NUM_CPU_DEVICES makes
  each core a device. `.compiled()` gives the compiled step (memory, HLO)."""
  backend = backend or parallel.JitBackend(devices)
  fn, optimizer = train_step(model_cfg, len(batch['label']), backend, to_params, grad_accum_steps)
  own = lambda tree: jax.tree.map(np.asarray, tree)  # own buffers: the step donates its state
  holder = {'state': backend.place_state(own(step.init_state(trainable, optimizer, jax.random.key(1))))}
  batch = backend.place_batch(own(batch))

  def one():
    holder['state'], metrics = fn(holder['state'], batch, None)
    return metrics['loss']

  one.compiled = lambda: fn.lower(holder['state'], batch, None).compile()
  one.state = lambda: holder['state']
  return one
