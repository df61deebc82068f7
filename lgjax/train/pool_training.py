"""Learngene Pool training kinds: 'pool_distill' and 'stitched'.

pool_distill: K student ViTs ("instances") and their teacher-width maps train
  together in one jitted step, sharing one teacher forward per example (the
  teacher is the expensive model, so running it once for all students is the
  cheaper choice). Student i's loss:
    (1-α)·CE + α·(KD(teacher ‖ student)·τ² + Σ_l MSE(map_i(h_T[m(l)]), h_i[l])
                  + Σ_l MSE(map_i(a_T[m(l)]), a_i[l])) / (number of layers for the MSE sums)
  with h the block outputs, a the attention outputs, and m(l) the teacher
  layer that supervises student layer l: pool.layer_map, or 'uniform'
  (m(l) = round((l+1)·L_T/L_S) - 1, the last layers paired). The sums run
  over pool.supervise: 'every' student layer, or the 'last' one only (the
  official code's recipe for all but its smallest instance).
stitched: trains the pool's instances and stitch layers jointly, one spec
  per step drawn from the step's key (SN-Net), or one spec alone; the specs
  are stitch.specs, or every spec of stitch.rule (pool.STITCH_RULES).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgjax import checkpoint, data
from lgjax.learngene import load_learngene, save_learngene
from lgjax import tree as tree_lib
from lgjax.learngene import pool as pool_lib
from lgjax.models import ViT, vit, with_block_outputs
from lgjax.train import losses

PyTree = Any


def instance_configs(config: Any) -> list[dict]:
  """One ViT config per pool.instances entry, on top of config.model."""
  base = config.model.to_dict()
  out = []
  for i, inst in enumerate(config.pool.instances):
    cfg = {**base, **dict(inst), 'depth': config.pool.depth}
    ViT(**cfg)  # raises a ValueError naming the field
    out.append(cfg)
  if not out:
    raise ValueError('pool.instances must list at least one instance (width, num_heads, mlp_dim).')
  return out


SUPERVISE = ('every', 'last')


def check_supervise(config: Any) -> str:
  supervise = config.pool.get('supervise', 'every')
  if supervise not in SUPERVISE:
    raise ValueError(f'pool.supervise must be one of {SUPERVISE}, got {supervise!r}.')
  return supervise


def supervised_pairs(config: Any, student_depth: int, teacher_depth: int) -> list[tuple[int, int]]:
  """(student layer, teacher layer) pairs whose states the distillation matches."""
  mapping = layer_map(config.pool.get('layer_map', 'uniform'), student_depth, teacher_depth)
  supervise = check_supervise(config)
  pairs = list(enumerate(mapping))
  return pairs if supervise == 'every' else pairs[-1:]


def layer_map(spec: Any, student_depth: int, teacher_depth: int) -> list[int]:
  """Teacher layer supervising each student layer."""
  if spec == 'uniform':
    return [int(round((l + 1) * teacher_depth / student_depth)) - 1 for l in range(student_depth)]
  layers = [int(i) for i in spec]
  if len(layers) != student_depth or any(not 0 <= i < teacher_depth for i in layers):
    raise ValueError(f"pool.layer_map must be 'uniform' or {student_depth} teacher layer indices in "
                     f'[0, {teacher_depth}), got {list(spec)}.')
  return layers


def _forward(model: ViT, params, image):
  logits, outputs = with_block_outputs(model, params, image[None])
  return logits[0], [h[0] for h in outputs['out']], [a[0] for a in outputs['attn']]


def distill_kind(config: Any, image_shape: Sequence[int], Kind) -> Any:
  configs = instance_configs(config)
  _, teacher_cfg = checkpoint.load_from('teacher.dir', config.teacher.dir, checkpoint.load_params)
  pairs = supervised_pairs(config, config.pool.depth, teacher_cfg['depth'])
  students = [ViT(**{**c, 'dtype': config.compute_dtype}) for c in configs]
  d_teacher = teacher_cfg['width']

  def init(rng):
    keys = jax.random.split(rng, 2 * len(configs))
    x = jnp.zeros((1, *image_shape), jnp.float32)
    instances = [jax.jit(ViT(**c).init)(keys[i], x)['params'] for i, c in enumerate(configs)]
    maps = [{'kernel': jax.nn.initializers.lecun_normal()(keys[len(configs) + i], (d_teacher, c['width'])),
             'bias': jnp.zeros((c['width'],))} for i, c in enumerate(configs)]
    return {'instances': instances, 'maps': maps}

  alpha, tau = config.loss.alpha, config.loss.temperature

  def example_loss(teacher):
    def loss(params, teacher_params, image, label, rng, step_rng):
      del rng, step_rng
      t_logits, t_hidden, t_attn = _forward(teacher, teacher_params, image)
      t_logits = jax.lax.stop_gradient(t_logits)
      total, first = 0.0, None
      for model, inst, wmap in zip(students, params['instances'], params['maps']):
        logits, hidden, attn = _forward(model, inst, image)
        wmap = vit.as_used(wmap)
        project = lambda h: jax.lax.stop_gradient(h) @ wmap['kernel'] + wmap['bias']
        mse = sum(jnp.mean((project(t_hidden[m]) - hidden[l]) ** 2) + jnp.mean((project(t_attn[m]) - attn[l]) ** 2)
                  for l, m in pairs) / len(pairs)
        kd = losses.soft_distillation(logits, t_logits, tau)
        total = total + (1 - alpha) * losses.cross_entropy(logits, label) + alpha * (kd + mse)
        first = logits if first is None else first
      return total / len(students), first
    return loss

  def predict(params, images):
    out = {f'_inst{i}': m.apply({'params': p}, images) for i, (m, p) in enumerate(zip(students, params['instances']))}
    return {'': out['_inst0'], **out}

  def export(directory, params):
    save_learngene(directory, params, method='pool', model_config=configs[0],
                              instance_configs=configs, teacher_width=d_teacher,
                              supervised_pairs=[list(p) for p in pairs])

  return Kind('pool_distill', init, lambda p: p, export, example_loss=example_loss, predict=predict)


def stitch_batch(config: Any) -> jax.Array:
  """SN-Net's one batch for the least-squares stitch init: batch_size training
  images drawn at random (seeded by config.seed). Not the split's first rows: a
  class-sorted split would fit every stitch to one class."""
  source = data.data_source(config.dataset, config.dataset.train_split)
  prep = data.pipeline.Preprocess(config.dataset.image_size, config.dataset.augment, train=False)
  rng = np.random.default_rng(config.seed)
  picked = rng.choice(len(source), size=min(config.batch_size, len(source)), replace=False)
  return data.to_float(np.stack([prep(source[int(i)], rng)['image'] for i in np.sort(picked)]))


def stitched_accuracy(pool: PyTree, configs: Sequence[dict], specs: Sequence[Sequence[int]],
                      stitch_images: jax.Array, dataset: Any) -> dict[str, float]:
  """Spec name -> accuracy on dataset's eval split, each stitch fit by least squares
  on `stitch_images`: what the pool's specs are worth before any stitched training."""
  batches = list(data.eval_batches(dataset, local_batch_size=256))
  out = {}
  for spec in specs:
    module, params = pool_lib.assemble(pool, configs, spec, pool_lib.init_stitch(pool, configs, spec, stitch_images))
    apply = jax.jit(lambda p, images: module.apply({'params': p}, data.to_float(images)))
    correct = sum(float(np.sum((np.argmax(apply(params, b['image']), -1) == b['label']) * b['mask']))
                  for b in batches)
    out[pool_lib.spec_name(pool_lib.check_spec(configs, spec))] = correct / sum(float(b['mask'].sum()) for b in batches)
  return out


def stitched_kind(config: Any, image_shape: Sequence[int], Kind) -> Any:
  trained_pool, meta = checkpoint.load_from('pool.dir', config.pool.dir, load_learngene)
  if meta['method'] != 'pool':
    raise ValueError(f'pool.dir={config.pool.dir!r} holds a {meta["method"]!r} learngene, not a pool.')
  configs = meta['instance_configs']
  rule = config.stitch.get('rule', 'snnet')  # checked in kinds.check_fields
  specs = [pool_lib.check_spec(configs, s) for s in config.stitch.specs] or [
      r['spec'] for r in pool_lib.enumerate_specs(trained_pool, configs, image_shape, rule)]
  images = stitch_batch(config)
  stitches = {pool_lib.spec_name(s): pool_lib.init_stitch(trained_pool, configs, s, images)
              for s in specs if pool_lib.needs_stitch(s)}
  modules = [pool_lib.assemble({**trained_pool, 'stitches': stitches}, configs, s)[0] for s in specs]

  def params_of(trainable, index):
    tree = {**trainable, 'maps': trained_pool['maps']}
    return pool_lib.stitched_params(tree, specs[index], trainable['stitches'].get(pool_lib.spec_name(specs[index])))

  def example_loss(teacher):
    kw = dict(label_smoothing=config.loss.label_smoothing, alpha=config.loss.alpha,
              temperature=config.loss.temperature)

    def loss(params, teacher_params, image, label, rng, step_rng):
      del rng
      index = jax.random.randint(step_rng, (), 0, len(specs))  # one spec per step, as SN-Net
      branches = [lambda p, x, i=i: modules[i].apply({'params': params_of(p, i)}, x)[0] for i in range(len(specs))]
      logits = jax.lax.switch(index, branches, params, image[None])
      t_logits = None if teacher is None else teacher.apply({'params': teacher_params}, image[None])[0]
      return losses.classification_loss(logits, label, t_logits, **kw), logits
    return loss

  def predict(params, images):
    out = {'_' + pool_lib.spec_name(s): m.apply({'params': params_of(params, i)}, images)
           for i, (s, m) in enumerate(zip(specs, modules))}
    return {'': next(iter(out.values())), **out}

  def export(directory, params):
    save_learngene(directory, {**params, 'maps': trained_pool['maps']}, method='pool',
                              model_config=configs[0], instance_configs=configs,
                              specs=[list(s) for s in specs])

  def report(workdir, final):
    rows = [{'spec': s, 'params': pool_lib.spec_params(trained_pool, configs, s),
             'flops': pool_lib.spec_flops(configs, s, image_shape),
             'accuracy': final.get('eval_accuracy_' + pool_lib.spec_name(s), float('nan'))} for s in specs]
    write_spec_report(rows, os.path.join(workdir, 'specs'))

  reinit = tuple(config.get('init', {}).get('reinit', ()))
  for i, c in enumerate(configs):
    if reinit and c.get('num_classes') != config.model.num_classes:
      raise ValueError(f'pool instance {i} has num_classes={c.get("num_classes")} but model.num_classes='
                       f'{config.model.num_classes}; stitched models keep the instances\' head sizes.')

  def init(rng):
    """The pool's instances, with the params matching init.reinit (e.g. heads for a
    new task) freshly initialized, and the stitch layers."""
    if not reinit:
      return {'instances': trained_pool['instances'], 'stitches': stitches}
    x = jnp.zeros((1, *image_shape), jnp.float32)
    fresh = [jax.jit(ViT(**c).init)(k, x)['params'] for c, k in zip(configs, jax.random.split(rng, len(configs)))]
    return {'instances': [tree_lib.merge_reinit(inst, f, reinit, f'pool instance {i}')
                          for i, (inst, f) in enumerate(zip(trained_pool['instances'], fresh))],
            'stitches': stitches}

  return Kind('stitched', init, lambda p: p, export, example_loss=example_loss, predict=predict,
              report=report)


def write_spec_report(rows: list[dict], path_prefix: str, title: str = 'stitched models') -> str:
  """Markdown table (spec, params, FLOPs, accuracy) and an accuracy-vs-FLOPs PNG."""
  lines = ['| spec (front.j-end.k) | params | MFLOPs | accuracy |', '|---|---|---|---|']
  lines += [f'| {pool_lib.spec_name(r["spec"])} | {r["params"]:,} | {r["flops"] / 1e6:.2f} | {r["accuracy"]:.3f} |'
            for r in sorted(rows, key=lambda r: r['flops'])]
  table = '\n'.join(lines)
  with open(path_prefix + '.md', 'w') as f:
    f.write(table + '\n')
  print(table)
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.scatter([r['flops'] / 1e6 for r in rows], [r['accuracy'] for r in rows])
  for r in rows:
    ax.annotate(pool_lib.spec_name(r['spec']), (r['flops'] / 1e6, r['accuracy']), fontsize=7)
  ax.set(xlabel='forward MFLOPs per image', ylabel='eval accuracy', title=title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path_prefix + '.png', dpi=100)
  plt.close(fig)
  return table
