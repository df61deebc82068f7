"""Timing helpers the benchmarks share: one way to time, one way to measure the peak.

Run every benchmark from the repository root as a module: python -m benchmarks.NAME
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lgjax.train import reporting

def median_time(fn: Callable[[], object], repeats: int) -> float:
  """Median wall seconds of fn() (results blocked on) after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak_gflops(n: int = 2048, dtype: str = 'float32', repeats: int = 10) -> float:
  """Achieved GFLOP/s of one large jitted n x n matmul: the machine's practical peak."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x: x @ x)
  return 2 * n ** 3 / median_time(lambda: f(a), repeats) / 1e9


def eval_curve(workdir: str) -> dict[int, float]:
  """Step -> eval accuracy of a finished run."""
  return {s: m['eval_accuracy'] for s, m in reporting.read_metrics(workdir).items() if 'eval_accuracy' in m}


def steps_to_reach(curve: dict[int, float], target: float) -> int | None:
  """The first step whose accuracy reaches `target` (None: never)."""
  return next((s for s in sorted(curve) if curve[s] >= target), None)
