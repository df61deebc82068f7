"""Per-example losses: label-smoothed cross-entropy and soft distillation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, label: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """CE of integer `label` against `logits`, targets smoothed as (1-e)·onehot + e/K."""
  targets = optax.smooth_labels(jax.nn.one_hot(label, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def soft_distillation(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float = 1.0) -> jax.Array:
  """KL(softmax(t/τ) || softmax(s/τ)) · τ², the soft KD of DeiT and TLEG."""
  t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return jnp.sum(jnp.exp(t) * (t - s), axis=-1) * temperature ** 2


def classification_loss(logits, label, teacher_logits=None, *, label_smoothing=0.0,
                        alpha=0.0, temperature=1.0) -> jax.Array:
  """(1 - α)·CE + α·KD; α = 1 is pure soft distillation (the TLEG paper), 0 plain CE."""
  ce = cross_entropy(logits, label, label_smoothing)
  if teacher_logits is None:
    return ce
  kd = soft_distillation(logits, jax.lax.stop_gradient(teacher_logits), temperature)
  return (1.0 - alpha) * ce + alpha * kd
