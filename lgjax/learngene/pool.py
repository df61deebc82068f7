"""Learngene Pool (Shi et al.): small distilled instances, stitched into many sizes.

Pool layout (a plain dict, saved as a learngene directory with method 'pool';
learngene.json keeps each instance's ViT config under 'instance_configs'):

  {'instances': [ViT params, ...]   K students of different widths, distilled
                                    from one teacher (lgjax.train, kind 'pool_distill'),
   'maps':      [{'kernel': (d_teacher, d_i), 'bias': (d_i,)}, ...]
                                    the teacher-width -> student-width maps that
                                    distillation learned (its hidden-state targets),
   'stitches':  {spec_name: {'kernel', 'bias'}}   optional: trained stitch layers
                                    (kind 'stitched'), used by assemble}

A stitched model is a spec (front, j, end, k): the front instance's stem and
blocks [0, j), a stitch layer (linear d_front -> d_end with bias), then the
end instance's blocks [k, D_end), final norm and head. (a, j, a, j) needs no
stitch: it is instance a itself. Stitch layers start from least squares on
one batch of activations (SN-Net). (Composing the distillation maps,
pinv(W_front) @ W_end, was tried and dropped: on mnist5k it predicted the end's
states worse than their mean.)

Which specs a pool offers (`enumerate_specs`, `STITCH_RULES`): 'snnet', every
ordered pair of instances at every cut, the end resuming at the same relative
depth; or 'pool', the official Learngene Pool code's: only from a narrower
front to a wider end, at neighbouring cuts (|k - j| <= 1).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lgjax import tree as tree_lib
from lgjax.learngene import common, registry
from lgjax.models import ViT, ViTConfig, blocks, flops, with_block_outputs
from lgjax.models.stitched import STEM_KEYS, Stem, StitchedViT

PyTree = Any
Spec = tuple[int, int, int, int]
KEYS = ('instances', 'maps')
STITCH_RULES = ('snnet', 'pool')


def check(pool: PyTree, model_config: dict | None = None) -> None:
  """Raises a ValueError if `pool` is not a learngene pool."""
  del model_config  # instances have their own configs
  if not isinstance(pool, dict) or not set(KEYS) <= set(pool) <= {*KEYS, 'stitches'}:
    raise ValueError(f'A learngene pool must be a dict with keys {sorted(KEYS)} (and optionally '
                     f'"stitches"), got {sorted(pool) if isinstance(pool, dict) else type(pool).__name__}.')
  if not pool['instances']:
    raise ValueError('The learngene pool is empty: instances must hold at least one ViT.')
  if len(pool['maps']) != len(pool['instances']):
    raise ValueError(f'The pool has {len(pool["instances"])} instances but {len(pool["maps"])} width maps.')


def check_spec(configs: Sequence[dict], spec: Sequence[int]) -> Spec:
  """A spec names two instances and cut points inside them."""
  if len(spec) != 4:
    raise ValueError(f'spec must be (front_instance, j, end_instance, k), got {tuple(spec)!r}.')
  front, j, end, k = (int(v) for v in spec)
  if not configs:
    raise ValueError('The learngene pool is empty: no instance to stitch.')
  for field, index in (('front_instance', front), ('end_instance', end)):
    if not 0 <= index < len(configs):
      raise ValueError(f'spec {field}={index} must be in [0, {len(configs)}).')
  if not 0 <= j <= configs[front]['depth']:
    raise ValueError(f'spec j={j} must be in [0, {configs[front]["depth"]}] (depth of instance {front}).')
  if not 0 <= k <= configs[end]['depth']:
    raise ValueError(f'spec k={k} must be in [0, {configs[end]["depth"]}] (depth of instance {end}).')
  for field in ('patch_size', 'pool_type', 'posemb'):
    if configs[front].get(field) != configs[end].get(field):
      raise ValueError(f'instances {front} and {end} differ in {field}; only instances with the same '
                       f'tokens can be stitched.')
  return front, j, end, k


def needs_stitch(spec: Spec) -> bool:
  front, j, end, k = spec
  return not (front == end and j == k)


def stitched_params(pool: PyTree, spec: Spec, stitch: PyTree | None) -> PyTree:
  """The StitchedViT param tree of `spec`, sharing arrays with the pool."""
  front, j, end, k = spec
  f_shared, f_blocks = blocks.split(pool['instances'][front])
  e_shared, e_blocks = blocks.split(pool['instances'][end])
  params = {key: f_shared[key] for key in STEM_KEYS if key in f_shared}
  if j:
    params['front'] = {blocks.block_name(i): f_blocks[i] for i in range(j)}
  if stitch is not None:
    params['stitch'] = stitch
  if k < len(e_blocks):
    params['end'] = {blocks.block_name(i): e_blocks[i] for i in range(k, len(e_blocks))}
  params['encoder_norm'] = e_shared['Transformer']['encoder_norm']
  if 'head' in e_shared:
    params['head'] = e_shared['head']
  return params


def lstsq_stitch(x_front: jax.Array, x_end: jax.Array) -> PyTree:
  """SN-Net's init: least squares [x_front, 1] · [kernel; bias] ≈ x_end over (tokens, width) rows."""
  x = x_front.reshape(-1, x_front.shape[-1])
  y = x_end.reshape(-1, x_end.shape[-1])
  solution, *_ = jnp.linalg.lstsq(jnp.concatenate([x, jnp.ones((len(x), 1), x.dtype)], axis=1), y)
  return {'kernel': solution[:-1], 'bias': solution[-1]}


def hidden_states(params: PyTree, config: dict, images: jax.Array) -> list[jax.Array]:
  """[stem output, block 0 output, ...]: (batch, tokens, width) each."""
  stem_params = {k: v for k, v in params.items() if k in STEM_KEYS}
  stem = jax.jit(Stem(config).apply)({'params': stem_params}, images)
  _, outputs = jax.jit(lambda p, x: with_block_outputs(ViT(**config), p, x))(params, images)
  return [stem] + list(outputs['out'])


def init_stitch(pool: PyTree, configs: Sequence[dict], spec: Sequence[int], images: jax.Array) -> PyTree | None:
  """The stitch layer of `spec` (None when the spec needs none) by least squares on
  `images`, front block j-1 -> end block k-1 outputs (SN-Net). Use a batch drawn
  across classes: a one-class batch fits the stitch to that class."""
  spec = check_spec(configs, spec)
  if not needs_stitch(spec):
    return None
  front, j, end, k = spec
  x_front = hidden_states(pool['instances'][front], configs[front], images)[j]
  x_end = hidden_states(pool['instances'][end], configs[end], images)[k]
  return lstsq_stitch(x_front, x_end)


def assemble(pool: PyTree, configs: Sequence[dict], spec: Sequence[int],
             stitch: PyTree | None = None) -> tuple[StitchedViT, PyTree]:
  """(module, params) of the stitched model `spec`; run it as module.apply({'params': params}, x).

  `stitch` gives the stitch layer (e.g. from `init_stitch`); by default it is
  the pool's trained one for this spec (a 'stitched' run's export).
  """
  check(pool)
  spec = check_spec(configs, spec)
  front, j, end, k = spec
  if stitch is None and needs_stitch(spec):
    stitch = pool.get('stitches', {}).get(spec_name(spec))
    if stitch is None:
      raise ValueError(f'The pool has no trained stitch for spec {spec_name(spec)}: pass '
                       f'stitch=init_stitch(pool, configs, {spec}, images), or train the stitches '
                       f'(configs/stitched.py) and use its export.')
  if stitch is not None:
    want = (configs[front]['width'], configs[end]['width'])
    if tuple(np.shape(stitch['kernel'])) != want:
      raise ValueError(f'stitch kernel has shape {tuple(np.shape(stitch["kernel"]))}, expected {want} '
                       f'(front width -> end width).')
  module = StitchedViT(front=dict(configs[front]), end=dict(configs[end]), j=j, k=k, stitch=stitch is not None)
  return module, stitched_params(pool, spec, stitch)


def spec_flops(configs: Sequence[dict], spec: Spec, image_shape: Sequence[int]) -> int:
  front, j, end, k = spec
  fc, ec = configs[front], configs[end]
  tokens = flops.num_tokens(fc, image_shape)
  mlp = lambda c: ViTConfig.of(c).mlp_dim
  total = flops.stem_flops(fc, image_shape) + j * flops.block_flops(tokens, fc['width'], mlp(fc))
  total += (ec['depth'] - k) * flops.block_flops(tokens, ec['width'], mlp(ec)) + flops.head_flops(ec)
  if needs_stitch(spec):
    total += 2 * tokens * fc['width'] * ec['width']
  return total


def spec_params(pool: PyTree, configs: Sequence[dict], spec: Spec) -> int:
  front, _, end, _ = spec
  stitch = ({'kernel': np.zeros((configs[front]['width'], configs[end]['width'])),
             'bias': np.zeros(configs[end]['width'])} if needs_stitch(spec) else None)
  return tree_lib.num_params(stitched_params(pool, spec, stitch))


def enumerate_specs(pool: PyTree, configs: Sequence[dict], image_shape: Sequence[int],
                    rule: str = 'snnet') -> list[dict]:
  """Every stitched model the pool offers, with its parameter count and forward FLOPs.

  Each instance alone, and by `rule`: 'snnet', for every ordered pair of
  different instances every cut j in [1, D_front) with k = round(j · D_end /
  D_front) (the end resumes at the same relative depth); 'pool', for every
  pair with the front narrower than the end, every cut j in [1, D_front) and
  k in [1, D_end) with |k - j| <= 1 (the official code's neighbouring cuts).
  Sorted by FLOPs.
  """
  check(pool)
  if rule not in STITCH_RULES:
    raise ValueError(f'stitch rule must be one of {STITCH_RULES}, got {rule!r}.')
  specs = [(a, configs[a]['depth'], a, configs[a]['depth']) for a in range(len(configs))]
  for a, ca in enumerate(configs):
    for b, cb in enumerate(configs):
      if rule == 'snnet' and a != b:
        specs += [(a, j, b, int(round(j * cb['depth'] / ca['depth']))) for j in range(1, ca['depth'])]
      elif rule == 'pool' and ca['width'] < cb['width']:
        specs += [(a, j, b, k) for j in range(1, ca['depth']) for k in range(1, cb['depth']) if abs(k - j) <= 1]
  rows = [{'spec': check_spec(configs, s), 'params': spec_params(pool, configs, s),
           'flops': spec_flops(configs, s, image_shape)} for s in specs]
  return sorted(rows, key=lambda r: (r['flops'], r['spec']))


def spec_name(spec: Spec) -> str:
  return '{}.{}-{}.{}'.format(*spec)


def _instance_dims(params: PyTree) -> dict[str, int]:
  _, (block, *_) = blocks.split(params)
  return {**common.block_dims(block), 'depth': blocks.depth(params)}


def _expand(pool: PyTree, target: Any, *, rng: jax.Array | None = None) -> PyTree:
  """The pool's instance of the target's width, heads, mlp_dim and depth (a ViT as it
  is). Sizes between instances are stitched models: `assemble` a spec."""
  check(pool)
  want = {'width': target['width'], 'num_heads': target['num_heads'],
          'mlp_dim': ViTConfig.of(target).mlp_dim, 'depth': target['depth']}
  sizes = [_instance_dims(p) for p in pool['instances']]
  for params, dims in zip(pool['instances'], sizes):
    if dims == want:
      return blocks.join(*blocks.split(params), scan=target.get('scan', False))
  raise ValueError(f'The pool has no instance of {want}; its instances are {sizes}. Sizes between '
                   f'them are stitched models: pool.assemble(pool, configs, spec) or expand.py --spec.')


METHOD = registry.register(registry.Method(name='pool', check=check, expand=_expand))
