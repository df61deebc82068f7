"""What is trained, chosen by `config.kind`.

A kind says how to initialize the trainable tree, how to turn it into ViT
params inside the loss (identity for a plain ViT; the learngene expansion for
an auxiliary model, so gradients reach the learngene), and how to export it.

  model       a plain ViT (teacher, or a from-scratch baseline)
  aux         trainable = the learngene of learngene.method (any method that
              trains one); params = the method's expansion to model
  descendant  a ViT initialized by init.method: a learngene expanded to it,
              or 'scratch'
  pool_distill / stitched   the Learngene Pool (lgjax.train.pool_training)

Methods are reached only through lgjax.learngene.registry: none is named here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from lgjax import checkpoint
from lgjax.learngene import load_learngene, save_learngene
from lgjax import tree as tree_lib
from lgjax.learngene import pool as pool_lib
from lgjax.learngene import registry
from lgjax.models import ViT, ViTConfig
from lgjax.train import pool_training

KINDS = ('model', 'aux', 'descendant', 'pool_distill', 'stitched')
SCRATCH = 'scratch'  # init.method of a descendant that inherits nothing
PyTree = Any


@dataclasses.dataclass(frozen=True)
class Kind:
  name: str
  init: Callable[[jax.Array], PyTree]          # rng -> trainable tree
  to_params: Callable[[PyTree], PyTree]        # trainable -> ViT params (pure, in the loss)
  export: Callable[[str, PyTree], None]        # (directory, trainable) -> files expand.py/load_params read
  example_loss: Callable | None = None         # teacher -> step.ExampleLoss; None: classification
  predict: Callable | None = None              # (trainable, images) -> {name: logits}; None: the ViT's
  report: Callable | None = None               # (workdir, final metrics) -> None, after training
  frozen: tuple[str, ...] = ()                 # regexes of trainable params kept as they start


def model_config(config: Any) -> ViTConfig:
  """The ViT of `config.model` (what checkpoints store). Its errors name the field as the
  config does (model.remat_policy), where the ViT's name it bare (remat_policy)."""
  try:
    return ViTConfig.of(config.model.to_dict())
  except ValueError as e:
    named = str(e).split(' ', 1)[0] in ViTConfig.__dataclass_fields__
    raise ValueError(f'model.{e}' if named else f'model: {e}') from None


def _vit_init(model_cfg: dict, image_shape: Sequence[int]) -> Callable[[jax.Array], PyTree]:
  model = ViT(**model_cfg)
  return jax.jit(lambda rng: model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))['params'])


def _plain(model_cfg: dict, image_shape) -> Kind:
  return Kind('model', _vit_init(model_cfg, image_shape), lambda p: p,
              lambda d, p: checkpoint.save_params(d, p, model_cfg))


def _aux(config: Any, model_cfg: dict, image_shape) -> Kind:
  """The learngene trains; the auxiliary model's params are its expansion to `model`."""
  method = registry.get(config.learngene.method, 'learngene.method')
  options = method.pick_options(config.learngene)
  return Kind('aux', lambda rng: method.init(rng, model_cfg, image_shape=image_shape, **options),
              lambda lg: method.expand(lg, model_cfg, rng=None, **options),
              lambda d, lg: save_learngene(d, lg, method=method.name, model_config=model_cfg,
                                           options=options),  # JSON writes tuples as lists
              frozen=tuple(method.frozen(**options)))


def descendant_learngene(config: Any, method: registry.Method, options: dict) -> PyTree:
  """The descendant's learngene: read from init.learngene_dir, or made here by the
  method from init.source (any ViT that load_params reads)."""
  if config.init.get('source'):
    params, source_config = checkpoint.load_from('init.source', config.init.source, checkpoint.load_params)
    try:
      return method.from_source(params, source_config, **options)
    except ValueError as e:
      raise ValueError(f'init.method={method.name!r} from init.source={config.init.source!r}: {e}') from None
  learngene, meta = checkpoint.load_from('init.learngene_dir', config.init.learngene_dir, load_learngene)
  if meta['method'] != method.name:
    raise ValueError(f'init.method={method.name!r} but init.learngene_dir={config.init.learngene_dir!r} '
                     f'holds a {meta["method"]!r} learngene.')
  return learngene


def _descendant(config: Any, model_cfg: dict, image_shape) -> Kind:
  fresh_init = _vit_init(model_cfg, image_shape)
  export = lambda d, p: checkpoint.save_params(d, p, model_cfg)
  if config.init.method == SCRATCH:
    return Kind('descendant', fresh_init, lambda p: p, export)
  method = registry.get(config.init.method, 'init.method')
  options = method.pick_options(config.init)
  learngene = descendant_learngene(config, method, options)
  method.check(learngene, model_cfg)
  reinit = tuple(config.init.get('reinit', ('^head/',)))
  expand = lambda rng: method.expand(learngene, model_cfg, rng=rng, **options)
  jax.eval_shape(expand, jax.random.key(0))  # fail before any work

  def init(rng):
    fresh_rng, expand_rng = jax.random.split(rng)
    return tree_lib.merge_reinit(expand(expand_rng), fresh_init(fresh_rng), reinit, 'The expanded learngene')

  return Kind('descendant', init, lambda p: p, export)


def check_fields(config: Any) -> None:
  """The kind's own fields, checked without reading a file or the data (the loop calls
  this before any work; make_kind checks what needs the learngene or data)."""
  if config.kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {config.kind!r}.')
  model_cfg = model_config(config)
  if config.kind == 'aux':
    method = registry.get(config.learngene.get('method'), 'learngene.method')
    if method.init is None:
      raise ValueError(f'learngene.method={method.name!r} trains no learngene; expected one of '
                       f'{registry.trained()}.')
    _check_options(method, model_cfg, config.learngene, 'learngene')
  elif config.kind == 'pool_distill':
    pool_training.instance_configs(config)
    pool_training.check_supervise(config)
  elif config.kind == 'stitched':
    if config.stitch.get('rule', 'snnet') not in pool_lib.STITCH_RULES:
      raise ValueError(f'stitch.rule must be one of {pool_lib.STITCH_RULES}, got {config.stitch.rule!r}.')
  elif config.kind == 'descendant' and config.init.method != SCRATCH:
    if config.init.method not in registry.METHODS:
      raise ValueError(f'init.method must be one of {[SCRATCH, *sorted(registry.METHODS)]}, '
                       f'got {config.init.method!r}.')
    method = registry.METHODS[config.init.method]
    if config.init.get('source'):
      if method.from_source is None:
        raise ValueError(f'init.method={method.name!r} expands a trained learngene: set init.learngene_dir '
                         f'(an aux run\'s export/), not init.source.')
    elif not config.init.get('learngene_dir'):
      raise ValueError(f'init.learngene_dir must name a learngene directory for init.method={method.name!r}'
                       + (' (or set init.source to a ViT)' if method.from_source else '') + '.')
    _check_options(method, model_cfg, config.init, 'init')


def _check_options(method: registry.Method, model_cfg: dict, section: Any, name: str) -> None:
  """The method's options in config.`name`, against the model, naming the section on error."""
  if method.check_options is None:
    return
  try:
    method.check_options(model_cfg, **method.pick_options(section))
  except ValueError as e:
    raise ValueError(f'{name}.{e}') from None


def make_kind(config: Any, image_shape: Sequence[int]) -> Kind:
  """The Kind for `config.kind`; raises before any work if the config cannot train."""
  check_fields(config)
  model_cfg = model_config(config)
  if config.kind == 'model':
    return _plain(model_cfg, image_shape)
  if config.kind == 'aux':
    return _aux(config, model_cfg, image_shape)
  if config.kind == 'pool_distill':
    return pool_training.distill_kind(config, image_shape, Kind)
  if config.kind == 'stitched':
    return pool_training.stitched_kind(config, image_shape, Kind)
  return _descendant(config, model_cfg, image_shape)
