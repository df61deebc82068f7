"""The one train step and eval step; parallel backends only wrap them.

The loss is written per example and vmapped: example i of a global batch draws
its dropout / drop-path randomness from fold_in(fold_in(rng, step), index_i),
so the numbers do not depend on how the batch is split over devices, hosts
(jit or pmap backend) or gradient-accumulation micro-batches. A loss with a
`.batched` form (classification_loss's) runs on the whole batch instead, its
draws keyed by the same indices (lgjax.models.vit.draws_per_example).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from lgjax.data import to_float
from lgjax.models import vit
from lgjax.train import losses

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar
  params: PyTree         # the trainable tree: ViT params or a learngene
  opt_state: PyTree
  rng: jax.Array         # raw uint32 key data (Orbax-friendly)


def init_state(trainable: PyTree, optimizer: optax.GradientTransformation, seed_rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable,
                    opt_state=optimizer.init(trainable), rng=jax.random.key_data(seed_rng))


ExampleLoss = Callable[..., tuple[jax.Array, jax.Array]]
"""(params, teacher_params, image, label, rng, step_rng) -> (loss, logits) for ONE example.

`params` are the model params (the kind's to_params already applied), `rng`
is the example's own key, `step_rng` the step's (the same for every example,
e.g. to pick one stitched spec per step). A loss may carry
`.batched(params, teacher_params, images, labels, indices, step_rng) -> (losses,
logits)` for a whole batch, drawing example i's randomness from its index alone (so
that, like the vmapped loss, it does not depend on how the batch is split); the step
then uses it: XLA compiles the plain batched model to fewer layout copies than the
vmapped batch of one, and custom VJPs (gelu_mlp's, qkv_projection's) are not batched per example."""


def classification_loss(model, loss_config: Any, teacher=None) -> ExampleLoss:
  """(1 - α)·CE + α·KD of `model`, the teacher (if any) run on the same example."""
  kw = dict(label_smoothing=loss_config.label_smoothing, alpha=loss_config.alpha,
            temperature=loss_config.temperature)

  def apply(params, teacher_params, images, labels, rngs):
    logits = model.apply({'params': params}, images, train=True, rngs=rngs)
    t_logits = None if teacher is None else teacher.apply({'params': teacher_params}, images)
    return losses.classification_loss(logits, labels, t_logits, **kw), logits

  def batched(params, teacher_params, images, labels, indices, step_rng):
    with vit.draws_per_example(indices):  # dropout / drop path: example i's from fold_in(key, index_i)
      return apply(params, teacher_params, images, labels, {'dropout': step_rng})

  def example_loss(params, teacher_params, image, label, rng, step_rng):
    """The loss alone on one example, its draws from its own key: the same numbers as
    .batched without randomness, other draws (as likely) with it."""
    del step_rng
    per_example, logits = apply(params, teacher_params, image[None], label[None], {'dropout': rng})
    return per_example[0], logits[0]

  example_loss.batched = batched
  return example_loss


STATE_FINITE = 'state_finite'  # metric: 1 when the updated params and optimizer state hold no NaN/Inf


def all_finite(tree: PyTree) -> jax.Array:
  """1.0 if every float leaf of `tree` is finite, else 0.0: one fused pass over the state."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])).astype(jnp.float32)


def make_finite_check(*, axis_name: str | None = None) -> Callable:
  """(state) -> {STATE_FINITE: ...} for the params and optimizer state, run where the loop
  reads metrics rather than in every step: inside the step its per-leaf reductions, fused
  into the optimizer's update, made XLA copy every updated leaf into its donated buffer
  (~650 more small kernels a step on a GPU; benchmarks.kernel_bytes)."""
  del axis_name  # the same on every device
  return lambda state: {STATE_FINITE: all_finite((state.params, state.opt_state))}


def make_train_step(*, example_loss: ExampleLoss, to_params: Callable,
                    optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum_steps: int = 1, axis_name: str | None = None) -> Callable:
  """(state, batch, teacher_params) -> (state, metrics). batch: image (uint8 pixels, or
  float images already scaled: data.to_float), label, index.

  With `axis_name` (the pmap backend, or the jit backend's shard_map) gradients
  and metrics are averaged over that axis once per step, after the micro-batches.
  `grad_accum_steps` > 1 runs the batch as that many micro-batches and averages
  their gradients: the same update, in less memory, and on a CPU in less time.
  """

  def batch_loss(params, teacher_params, batch, step_rng):
    def one(image, label, index):
      return example_loss(params, teacher_params, image, label, jax.random.fold_in(step_rng, index), step_rng)

    images = to_float(batch['image'])
    if hasattr(example_loss, 'batched'):
      per_example, logits = example_loss.batched(params, teacher_params, images, batch['label'], batch['index'],
                                                 step_rng)
    else:
      per_example, logits = jax.vmap(one)(images, batch['label'], batch['index'])
    correct = jnp.argmax(logits, -1) == batch['label']
    return per_example.mean(), correct.mean()

  grad_fn = jax.value_and_grad(batch_loss, has_aux=True)

  def accumulated_grads(params, teacher_params, batch, step_rng):
    if grad_accum_steps == 1:
      return grad_fn(params, teacher_params, batch, step_rng)
    # Micro-batch j holds examples j, j+k, ...: each device keeps its own rows.
    micro = jax.tree.map(lambda x: x.reshape(-1, grad_accum_steps, *x.shape[1:]).swapaxes(0, 1), batch)

    def body(acc, mb):
      out = grad_fn(params, teacher_params, mb, step_rng)
      return jax.tree.map(jnp.add, acc, out), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, teacher_params,
                                                        jax.tree.map(lambda x: x[0], micro), step_rng))
    total, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda x: x / grad_accum_steps, total)

  def train_step(state: TrainState, batch: dict, teacher_params: PyTree):
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    # to_params once per step, outside the per-example vmap and the micro-batch
    # loop: gradients are summed on the model params, then pulled back once. The
    # barrier keeps XLA from fusing to_params (e.g. TLEG's expand) into every
    # micro-batch's matmuls, which cost 9 % of a micro-batched step on CPU.
    params, pull_back = jax.vjp(to_params, state.params)
    params = jax.lax.optimization_barrier(params)
    (loss, accuracy), param_grads = accumulated_grads(params, teacher_params, batch, step_rng)
    (grads,) = pull_back(param_grads)
    if axis_name is not None:
      loss, accuracy, grads = jax.lax.pmean((loss, accuracy, grads), axis_name)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'train_accuracy': accuracy, 'grad_norm': optax.tree.norm(grads),
               'learning_rate': schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(*, predict: Callable, axis_name: str | None = None) -> Callable:
  """(state, batch with mask) -> sums of correct predictions, loss and examples.

  `predict(trainable, images)` gives {name: logits}; name '' is the model's
  own, others (e.g. one per stitched spec) get their own sums.
  """

  def eval_step(state: TrainState, batch: dict):
    mask = batch['mask']
    sums = {'count': jnp.sum(mask)}
    for name, logits in predict(state.params, to_float(batch['image'])).items():
      sums['correct' + name] = jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask)
      sums['loss' + name] = jnp.sum(losses.cross_entropy(logits, batch['label']) * mask)
    return sums if axis_name is None else jax.lax.psum(sums, axis_name)

  return eval_step
