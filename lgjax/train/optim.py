"""Optimizer: AdamW with warmup + cosine, decoupled weight decay on kernels only; params
matching an `optimizer.frozen` regex are not updated (and keep no Adam moments)."""

from __future__ import annotations

import re
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


def frozen_labels(frozen: Any, params: Any) -> Any:
  """'frozen' for the params whose '/'-name matches a regex of `frozen`, 'train' for the rest."""
  patterns = [re.compile(p) for p in frozen]
  return tree_lib.map_with_names(
      lambda name, _: 'frozen' if any(p.search(name) for p in patterns) else 'train', params)


def check_frozen(frozen: Any, params: Any) -> None:
  """Every optimizer.frozen regex compiles and matches some param (a typo would freeze nothing)."""
  names = [n for n, _ in tree_lib.flatten_with_names(params)]
  for pattern in frozen:
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f'optimizer.frozen: {pattern!r} is not a regex ({e}).') from None
    if not any(regex.search(n) for n in names):
      raise ValueError(f'optimizer.frozen: {pattern!r} matches no trainable param; names look like '
                       f'{names[:3]}.')


def make_optimizer(opt: Any, batch_size: int, total_steps: int,
                   frozen: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """Global-norm clipping (opt.clip_norm, 0 = off), then AdamW; params matching a `frozen`
  regex (optimizer.frozen and the kind's own) get no update."""
  parts = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm else []
  parts.append(optax.adamw(learning_rate(opt, batch_size, total_steps), b1=opt.b1, b2=opt.b2,
                           weight_decay=opt.weight_decay, mask=decay_mask))
  if not frozen:
    return optax.chain(*parts)
  return optax.multi_transform({'train': optax.chain(*parts), 'frozen': optax.set_to_zero()},
                               lambda params: frozen_labels(frozen, params))
