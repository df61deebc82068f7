"""Optimizer: AdamW with warmup + cosine, decoupled weight decay on kernels only."""

from __future__ import annotations

from typing import Any

import optax

from lgjax import tree as tree_lib

BASE_BATCH = 512  # DeiT's rule: lr = optimizer.lr * batch_size / 512


def learning_rate(opt: Any, batch_size: int, total_steps: int) -> optax.Schedule:
  """Linear warmup to lr·batch/512, then cosine decay to min_lr at total_steps."""
  peak = opt.lr * batch_size / BASE_BATCH
  warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else peak, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=opt.get('min_lr', 0.0))


def decay_mask(params: Any) -> Any:
  """Weight decay on kernels only: not on biases, norms, pos_embedding or cls (as DeiT/timm)."""
  return tree_lib.map_with_names(lambda name, _: name.endswith('kernel'), params)


def make_optimizer(opt: Any, batch_size: int, total_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping (opt.clip_norm, 0 = off), then AdamW."""
  parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm else []
  parts.append(optax.adamw(learning_rate(opt, batch_size, total_steps), b1=opt.b1, b2=opt.b2,
                           weight_decay=opt.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
