"""WAVE: weight templates for variable-sized models (Feng et al., CVPR 2025).

Every ViT param is a sum of Kronecker products of small size-specific weight
scalers with size-agnostic weight templates:

  W = sum_n  S_n (x) T_n        n = 0..N-1 (num_templates)

T_n has the shape the param has in a ViT of width `template_width` (heads
and mlp_dim scaled by the same ratio, head_dim kept); S_n has, per axis,
target size / template size (1 on axes that do not grow with the width,
e.g. the patch and head_dim). Templates are shared across layers: each block
param has one set of templates and per-layer scalers, so any depth works,
and any width that is a multiple of `template_width` (heads and mlp_dim
scaling with it). At the template width every S_n is a scalar and a block is
a learned per-layer mix of N templates: TLEG is the case N = 2 with the
mix fixed to (1, l / L).

Learngene layout:

  {'templates': {'shared': every non-block param with a leading N axis,
                 'block':  one block tree with a leading N axis},
   'scalers':   {'shared': tree of (N, *factors),
                 'blocks': block tree of (depth, N, *factors)}}

The three stages of the paper, each an lgjax run:
  1. templates: the `aux` kind with learngene.method='wave', distilled from
     an ancestry model through an auxiliary model of any size whose weights
     follow the rule above (templates and its scalers train).
  2. scalers: the `aux` kind with learngene.templates_from=<stage 1 export>
     and the target size as the model: the templates are kept frozen
     (`Method.frozen`) while the target's scalers train on a little data.
  3. the descendant, init.method='wave' from stage 2's export, trains whole.

Scalers for a size they were not trained for (stage 2's start, or expand.py
to any size) are selected from the learngene's: layer l of L takes layer
floor(l * L' / L) of L', and on each width axis block i of r takes block
floor(i * r' / r) of r', so a learngene expanded to its own size is itself.

The paper's released code was not reachable; the auxiliary model's scaler
init (S_0 the identity over the width blocks, T_0 the ViT's init; the other
templates' LayerNorm scales 0, their scalers N(0, 1/N)) is ours.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgjax import checkpoint
from lgjax import tree as tree_lib
from lgjax.learngene import common, directory, registry
from lgjax.models import ViT, ViTConfig, blocks

PyTree = Any
KEYS = ('templates', 'scalers')
_HEAD = 'head/'


def template_config(target: registry.Target, template_width: int) -> dict:
  """The ViT config of one template: `target` at width template_width, its heads and
  mlp_dim divided by the same ratio (head_dim kept)."""
  template_width = common.check_positive_int(template_width, 'template_width')
  width, heads = target['width'], target['num_heads']
  mlp = ViTConfig.of(target).mlp_dim
  ratio, rest = divmod(width, template_width)
  if rest or not ratio:
    raise ValueError(f'template_width={template_width} must divide the model width {width}.')
  for field, value in (('num_heads', heads), ('mlp_dim', mlp)):
    if value % ratio:
      raise ValueError(f'template_width={template_width} makes width {width} {ratio} templates wide, '
                       f'but {field}={value} is not a multiple of {ratio}: heads and mlp_dim scale '
                       f'with the width.')
  return {**dict(target), 'width': template_width, 'num_heads': heads // ratio,
          'mlp_dim': mlp // ratio, 'depth': 1, 'scan': False}


def kron_sum(scalers: jax.Array, templates: jax.Array) -> jax.Array:
  """sum_n kron(scalers[n], templates[n]): (N, *f) and (N, *t) -> (f_1 t_1, ..., f_k t_k)."""
  factors, shape = scalers.shape[1:], templates.shape[1:]
  outer = jnp.tensordot(scalers, templates.astype(scalers.dtype), axes=([0], [0]))  # (*f, *t)
  k = len(shape)
  interleave = [axis for pair in zip(range(k), range(k, 2 * k)) for axis in pair]
  return outer.transpose(interleave).reshape([f * t for f, t in zip(factors, shape)])


def _first(templates: PyTree) -> PyTree:
  return jax.tree.map(lambda x: x[0], templates)


def _template_params(learngene: PyTree) -> PyTree:
  """Template 0 as ViT params (depth 1): what the templates' shapes say of the model."""
  return blocks.join(_first(learngene['templates']['shared']), [_first(learngene['templates']['block'])])


def _target_shapes(learngene: PyTree, target: registry.Target) -> tuple[PyTree, PyTree]:
  """(shared, block) shape trees of a ViT of `target`, for the templates' input."""
  image = checkpoint.image_shape_of(_template_params(learngene), {})
  config = {**dict(target), 'scan': False}
  shapes = jax.eval_shape(lambda: ViT(**config).init(jax.random.key(0), jnp.zeros((1, *image))))['params']
  shared, block_list = blocks.split(shapes)
  return shared, block_list[0]


def _factors(template: Sequence[int], target: Sequence[int], name: str) -> tuple[int, ...]:
  if len(template) != len(target) or any(b % a for a, b in zip(template, target)):
    raise ValueError(f'WAVE: {name} has shape {tuple(target)} in the model, which is not a whole number '
                     f'of templates of shape {tuple(template)}.')
  return tuple(b // a for a, b in zip(template, target))


def _new_head(learngene: PyTree, target: registry.Target) -> bool:
  """The target has another class count than the templates: its head starts fresh."""
  template_head = learngene['templates']['shared'].get('head')
  want = target.get('num_classes')
  return bool(want) and (template_head is None or template_head['kernel'].shape[-1] != want)


def scaler_shapes(learngene: PyTree, target: registry.Target) -> PyTree:
  """The scalers `target` needs: {'shared': (N, *factors), 'blocks': (depth, N, *factors)}
  (no head scalers when the head starts fresh)."""
  shared_t, block_t = learngene['templates']['shared'], learngene['templates']['block']
  shared_s, block_s = _target_shapes(learngene, target)
  num = jax.tree.leaves(block_t)[0].shape[0]
  drop_head = _new_head(learngene, target)
  flat_shared = dict(tree_lib.flatten_with_names(shared_t))

  def shared(name, leaf):
    if drop_head and name.startswith(_HEAD):
      return None
    if name not in flat_shared:
      raise ValueError(f'WAVE: the model needs {name!r}, which the templates do not have.')
    return (num, *_factors(flat_shared[name].shape[1:], leaf.shape, name))

  flat_block = dict(tree_lib.flatten_with_names(block_t))
  block = lambda name, leaf: (target['depth'], num, *_factors(flat_block[name].shape[1:], leaf.shape, name))
  out = {'shared': tree_lib.map_with_names(shared, shared_s),
         'blocks': tree_lib.map_with_names(block, block_s)}
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), out,
                      is_leaf=lambda x: isinstance(x, tuple))


def _select(x: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Block i of m on each axis takes block floor(i * n / m) of n (shrinks or repeats)."""
  for axis, (n, m) in enumerate(zip(x.shape, shape)):
    if n != m:
      x = jnp.take(x, np.arange(m) * n // m, axis=axis)
  return x


def scalers_for(learngene: PyTree, target: registry.Target) -> PyTree:
  """The learngene's scalers if they are `target`'s; else selected from them (module doc)."""
  want = scaler_shapes(learngene, target)
  have = learngene['scalers']
  if not tree_lib.shape_mismatches(have, want):
    return have
  flat_have = dict(tree_lib.flatten_with_names(have))
  return tree_lib.map_with_names(lambda name, s: _select(flat_have[name], s.shape), want)


def expand(learngene: PyTree, target: registry.Target, *, rng: jax.Array | None = None,
           **options: Any) -> PyTree:
  """Templates and scalers -> params of `target`; pure and differentiable (the auxiliary
  model calls it inside the loss). `rng` seeds a fresh head for other classes."""
  check(learngene)
  scalers = scalers_for(learngene, target)
  templates = learngene['templates']
  flat_t = dict(tree_lib.flatten_with_names(templates['shared']))
  shared = tree_lib.map_with_names(lambda name, s: kron_sum(s, flat_t[name]), scalers['shared'])
  stacked = jax.tree.map(jax.vmap(kron_sum, in_axes=(0, None)), scalers['blocks'], templates['block'])
  if _new_head(learngene, target):
    if rng is None:
      raise ValueError('The target has other classes than the templates: pass rng for its fresh head.')
    shared['head'] = common.fresh_head(rng, target)
  return blocks.join_stacked(shared, stacked, scan=bool(target.get('scan', False)))


def check(learngene: PyTree, target: registry.Target | None = None) -> None:
  """A WAVE learngene; with `target`, one whose templates build it."""
  common.check_keys(learngene, KEYS, 'WAVE')
  for part, keys in (('templates', ('shared', 'block')), ('scalers', ('shared', 'blocks'))):
    common.check_keys(learngene[part], keys, f'WAVE {part}')
  counts = {np.shape(x)[0] for x in jax.tree.leaves(learngene['templates'])}
  counts |= {np.shape(x)[0] for x in jax.tree.leaves(learngene['scalers']['shared'])}
  counts |= {np.shape(x)[1] for x in jax.tree.leaves(learngene['scalers']['blocks'])}
  if len(counts) != 1:
    raise ValueError(f'WAVE learngene: templates and scalers disagree on the number of templates: '
                     f'{sorted(counts)}.')
  common.block_dims(_first(learngene['templates']['block']))
  if target is not None:
    scaler_shapes(learngene, target)


def init_templates(rng: jax.Array, template: dict, image_shape: Sequence[int], num: int) -> PyTree:
  """N templates: T_0 as the ViT initializes its params (blocks as TLEG's base); the others
  random kernels with LayerNorm scales 0, so that S_0 = identity starts from a plain ViT."""
  def one(rng, base):
    k_shared, k_block = jax.random.split(rng)
    shared, block = common.vit_parts(k_shared, template, image_shape)
    block = common.init_block(k_block, block, ln_scale=1.0 if base else 0.0)
    if not base:
      shared = tree_lib.map_with_names(lambda n, x: jnp.zeros_like(x) if n.endswith('scale') else x, shared)
    return {'shared': shared, 'block': block}

  keys = jax.random.split(rng, num)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *[one(k, n == 0) for n, k in enumerate(keys)])


def _init_scaler(key: jax.Array, shape: Sequence[int], lead: int) -> jax.Array:
  """One leaf whose template axis is lead - 1: S_0 the identity over its growing axes,
  S_n (n >= 1) N(0, 1/N)."""
  grid = np.indices(shape)
  axes = [a for a in range(lead, len(shape)) if shape[a] > 1]
  diag = np.all([grid[a] == grid[axes[0]] for a in axes], axis=0) if axes else np.ones(shape, bool)
  noise = jax.random.normal(key, shape) / np.sqrt(shape[lead - 1])
  return jnp.where(grid[lead - 1] == 0, diag.astype(np.float32), noise)


def init_scalers(rng: jax.Array, shapes: PyTree) -> PyTree:
  """Scalers of `shapes` (scaler_shapes) for an auxiliary model that starts as a plain ViT
  plus random template mixes (see _init_scaler)."""
  def part(key, tree, lead):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [_init_scaler(k, s.shape, lead) for k, s in zip(keys, leaves)])

  k_shared, k_blocks = jax.random.split(rng)
  return {'shared': part(k_shared, shapes['shared'], 1), 'blocks': part(k_blocks, shapes['blocks'], 2)}


def _check_options(target: registry.Target, *, template_width: int | None = None,
                   num_templates: int | None = None, templates_from: str | None = None) -> None:
  """The options that are set fit `target` (expand needs none of them)."""
  if template_width is not None:
    template_config(target, template_width)
  if num_templates is not None:
    common.check_positive_int(num_templates, 'num_templates')


def _init(rng: jax.Array, target: registry.Target, *, image_shape: Sequence[int],
          template_width: int | None = None, num_templates: int | None = None,
          templates_from: str | None = None) -> PyTree:
  """Stage 1: fresh templates and scalers. Stage 2 (templates_from): the templates of that
  learngene directory, and its scalers selected for `target`."""
  _check_options(target, template_width=template_width, num_templates=num_templates)
  if not templates_from and (template_width is None or num_templates is None):
    raise ValueError('WAVE templates need template_width and num_templates (learngene.template_width '
                     'and learngene.num_templates in an aux run), or templates_from: a WAVE learngene '
                     'directory whose templates to keep while scalers train.')
  if templates_from:
    learngene, meta = directory.load_learngene(templates_from)
    if meta['method'] != METHOD.name:
      raise ValueError(f'templates_from={templates_from!r} holds a {meta["method"]!r} learngene, '
                       f'not a WAVE one.')
    have = {'template_width': common.block_dims(_first(learngene['templates']['block']))['width'],
            'num_templates': jax.tree.leaves(learngene['templates']['block'])[0].shape[0]}
    for field, value in (('template_width', template_width), ('num_templates', num_templates)):
      if value is not None and value != have[field]:
        raise ValueError(f'{field}={value}, but templates_from={templates_from!r} has {field}={have[field]}.')
    check(learngene, target)
    return {'templates': learngene['templates'], 'scalers': scalers_for(learngene, target)}
  template = template_config(target, template_width)

  def init(rng):  # jitted: one compile instead of N eager ViT inits
    k_templates, k_scalers = jax.random.split(rng)
    templates = init_templates(k_templates, template, image_shape, num_templates)
    return {'templates': templates,
            'scalers': init_scalers(k_scalers, scaler_shapes({'templates': templates}, target))}

  return jax.jit(init)(rng)


METHOD = registry.register(registry.Method(
    name='wave', expand=expand, check=check, init=_init,
    options=('template_width', 'num_templates', 'templates_from'), check_options=_check_options,
    frozen=lambda *, templates_from=None, **_: ('^templates/',) if templates_from else ()))
