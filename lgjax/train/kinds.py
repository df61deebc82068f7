"""What is trained, chosen by `config.kind`.

A kind says how to initialize the trainable tree, how to turn it into ViT
params inside the loss (identity for a plain ViT; the learngene expansion for
an auxiliary model, so gradients reach the learngene), and how to export it.

  model       a plain ViT (teacher, or a from-scratch baseline)
  tleg_aux    trainable = TLEG learngene; params = tleg.expand(lg, model.depth)
  sws_aux     trainable = SWS learngene;  params = sws.expand(lg, learngene.stage_depths)
  descendant  a ViT initialized from a learngene (init.method) or from scratch
  pool_distill / stitched   the Learngene Pool (lgjax.train.pool_training)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from lgjax import checkpoint
from lgjax import tree as tree_lib
from lgjax.learngene import METHODS, condense, sws, tleg
from lgjax.learngene import pool as pool_lib
from lgjax.models import ViT, check_config, inits
from lgjax.train import pool_training

KINDS = ('model', 'tleg_aux', 'sws_aux', 'descendant', 'pool_distill', 'stitched')
INIT_METHODS = ('scratch', 'condense', 'sws', 'tleg')  # a pool's models are 'stitched' runs
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


def model_config(config: Any) -> dict:
  """The ViT fields of `config.model` as a plain dict (what checkpoints store)."""
  cfg = config.model.to_dict()
  check_config(cfg)
  return cfg


def _vit_init(model_cfg: dict, image_shape: Sequence[int]) -> Callable[[jax.Array], PyTree]:
  model = ViT(**model_cfg)
  return jax.jit(lambda rng: model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))['params'])


def check_stage_depths(config: Any) -> tuple[int, ...]:
  """learngene.stage_depths: one entry >= 1 per stage, summing to model.depth."""
  depths = tuple(config.learngene.stage_depths)
  sws.check_stage_depths(depths, len(depths) or 1)
  if sum(depths) != config.model.depth:
    raise ValueError(f'learngene.stage_depths {list(depths)} sum to {sum(depths)}, expected '
                     f'model.depth={config.model.depth}.')
  return depths


def _plain(model_cfg: dict, image_shape) -> Kind:
  return Kind('model', _vit_init(model_cfg, image_shape), lambda p: p,
              lambda d, p: checkpoint.save_params(d, p, model_cfg))


def _tleg_aux(config: Any, model_cfg: dict, image_shape) -> Kind:
  depth, scan = model_cfg['depth'], model_cfg.get('scan', False)
  init = lambda rng: tleg.init_learngene(rng, model_cfg, image_shape=image_shape)
  fit_from = config.get('init', {}).get('fit_from')
  if fit_from:  # start from the least-squares fit to an existing ViT's blocks
    learngene = tleg.fit(checkpoint.load_params(fit_from)[0])
    tree_lib.check_shapes(learngene, jax.eval_shape(init, jax.random.key(0)),
                          f'The TLEG fit of init.fit_from={fit_from!r}')
    init = lambda rng: learngene
  return Kind('tleg_aux', init,
              lambda lg: tleg.expand(lg, depth, scan=scan),
              lambda d, lg: checkpoint.save_learngene(d, lg, method='tleg', model_config=model_cfg,
                                                      aux_depth=depth))


def _sws_aux(config: Any, model_cfg: dict, image_shape) -> Kind:
  depths, scan = check_stage_depths(config), model_cfg.get('scan', False)
  return Kind('sws_aux',
              lambda rng: sws.init_learngene(rng, model_cfg, len(depths), image_shape=image_shape),
              lambda lg: sws.expand(lg, depths, scan=scan),
              lambda d, lg: checkpoint.save_learngene(d, lg, method='sws', model_config=model_cfg,
                                                      aux_stage_depths=list(depths)))


def expand_for(config: Any, learngene: PyTree, method: str, scan: bool, rng: jax.Array) -> PyTree:
  """Expands a restored learngene to model.depth: TLEG directly; SWS split over
  stages by init.stage_depths (or sws.split_depth); condense by stacking
  model.depth - k fresh blocks at init.placement."""
  depth = config.model.depth
  if method == 'tleg':
    return tleg.expand(learngene, depth, scan=scan)
  if method == 'condense':
    k = len(learngene['layers'])
    if depth < k:
      raise ValueError(f'model.depth={depth} must be >= the {k} condensed learngene layers.')
    return condense.expand(learngene, depth - k, rng=rng, placement=config.init.get('placement', 'below'),
                           scan=scan, param_init=config.model.get('param_init', inits.DEFAULT))
  stage_depths = tuple(config.init.get('stage_depths') or ()) or sws.split_depth(
      depth, len(learngene['stages']))
  if sum(stage_depths) != depth:
    raise ValueError(f'init.stage_depths {list(stage_depths)} sum to {sum(stage_depths)}, expected '
                     f'model.depth={depth}.')
  return sws.expand(learngene, stage_depths, scan=scan)


def _learngene_for(config: Any) -> tuple[PyTree, str]:
  """The descendant's learngene: from init.learngene_dir, or condensed on the spot
  from init.ancestry (any checkpoint load_params reads) at init.layers."""
  method = config.init.method
  if method == 'condense' and config.init.get('ancestry'):
    params, _ = checkpoint.load_params(config.init.ancestry)
    layers = list(config.init.get('layers') or ())
    if not layers:
      raise ValueError('init.layers must list the ancestry blocks to inherit when init.ancestry is set.')
    return condense.condense(params, layers), method
  learngene, meta = checkpoint.load_learngene(config.init.learngene_dir)
  if meta['method'] != method:
    raise ValueError(f'init.method={method!r} but init.learngene_dir={config.init.learngene_dir!r} '
                     f'holds a {meta["method"]!r} learngene.')
  return learngene, method


def _descendant(config: Any, model_cfg: dict, image_shape) -> Kind:
  fresh_init = _vit_init(model_cfg, image_shape)
  export = lambda d, p: checkpoint.save_params(d, p, model_cfg)
  if config.init.method == 'scratch':
    return Kind('descendant', fresh_init, lambda p: p, export)
  learngene, method = _learngene_for(config)
  METHODS[method].check(learngene, model_cfg)
  reinit = tuple(config.init.get('reinit', ('^head/',)))
  scan = model_cfg.get('scan', False)
  jax.eval_shape(lambda r: expand_for(config, learngene, method, scan, r), jax.random.key(0))  # fail early

  def init(rng):
    fresh_rng, expand_rng = jax.random.split(rng)
    return tree_lib.merge_reinit(expand_for(config, learngene, method, scan, expand_rng), fresh_init(fresh_rng),
                                 reinit, 'The expanded learngene')

  return Kind('descendant', init, lambda p: p, export)


def check_fields(config: Any) -> None:
  """The kind's own fields, checked without reading a file or the data (the loop calls
  this before any work; make_kind checks what needs the learngene or data)."""
  if config.kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {config.kind!r}.')
  model_config(config)
  if config.kind == 'sws_aux':
    check_stage_depths(config)
  elif config.kind == 'pool_distill':
    pool_training.instance_configs(config)
    pool_training.check_supervise(config)
  elif config.kind == 'stitched':
    if config.stitch.get('rule', 'snnet') not in pool_lib.STITCH_RULES:
      raise ValueError(f'stitch.rule must be one of {pool_lib.STITCH_RULES}, got {config.stitch.rule!r}.')
  elif config.kind == 'descendant':
    method = config.init.method
    if method not in INIT_METHODS:
      raise ValueError(f'init.method must be one of {INIT_METHODS}, got {method!r}.')
    if method != 'scratch' and not (config.init.get('learngene_dir') or config.init.get('ancestry')):
      raise ValueError(f'init.learngene_dir must name a learngene directory for init.method={method!r}'
                       + (' (or set init.ancestry)' if method == 'condense' else '') + '.')
    if method == 'condense' and config.init.get('ancestry') and not config.init.get('layers'):
      raise ValueError('init.layers must list the ancestry blocks to inherit when init.ancestry is set.')
    stage_depths = tuple(config.init.get('stage_depths') or ())
    if method == 'sws' and stage_depths and sum(stage_depths) != config.model.depth:
      raise ValueError(f'init.stage_depths {list(stage_depths)} sum to {sum(stage_depths)}, expected '
                       f'model.depth={config.model.depth}.')


def make_kind(config: Any, image_shape: Sequence[int]) -> Kind:
  """The Kind for `config.kind`; raises before any work if the config cannot train."""
  check_fields(config)
  model_cfg = model_config(config)
  if config.kind == 'model':
    return _plain(model_cfg, image_shape)
  if config.kind == 'tleg_aux':
    return _tleg_aux(config, model_cfg, image_shape)
  if config.kind == 'sws_aux':
    return _sws_aux(config, model_cfg, image_shape)
  if config.kind == 'pool_distill':
    return pool_training.distill_kind(config, image_shape, Kind)
  if config.kind == 'stitched':
    return pool_training.stitched_kind(config, image_shape, Kind)
  return _descendant(config, model_cfg, image_shape)
