"""The one surface every learngene method offers, and the registry of them.

A method is one module under `lgjax/learngene/` that calls `register(Method(...))`.
Training (`lgjax.train`), `expand.py`, the recipes and the benchmarks reach a
method only through `METHODS[name]`, so adding one touches no other file.

Every callable takes the model config it builds for (`target`, a ViT config
mapping: its depth and width say what to build) and the method's own
options as keywords, named in `Method.options`; the same names are config
fields (`learngene.NAME` for the auxiliary run, `init.NAME` for a
descendant) and expand.py flags.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping


PyTree = Any
Target = Mapping[str, Any]  # a ViT config: the fields of lgjax.models.ViT


@dataclasses.dataclass(frozen=True)
class Method:
  """name: what init.method, learngene.method and expand.py --method say.

  expand(learngene, target, *, rng, **options) -> ViT params of `target`:
    pure; the auxiliary model calls it inside the loss, so gradients reach
    the learngene. `rng` seeds any freshly initialized part.
  check(learngene, target=None): a ValueError, naming the mismatch, if the
    learngene is malformed or cannot build `target`.
  init(rng, target, *, image_shape, **options) -> learngene, for methods
    trained through an auxiliary model whose config is `target`; None for
    methods that take a trained ViT as it is.
  from_source(params, source_config, **options) -> learngene, for methods
    that take a trained ViT as it is (condense, weight selection); None for
    trained learngenes.
  options: the keyword options those callables take.
  check_options(target, **options): a ValueError starting with the option's
    name if the options cannot build `target`; run before any file is read.
  implied_depth(**options) -> int | None: the depth the options fix (SWS's
    stage_depths), for callers that leave the depth unset.
  frozen(**options) -> regexes of learngene params that the auxiliary run
    keeps as they start (WAVE's templates while its scalers train), added to
    optimizer.frozen.
  """
  name: str
  expand: Callable[..., PyTree]
  check: Callable[..., None]
  init: Callable[..., PyTree] | None = None
  from_source: Callable[..., PyTree] | None = None
  options: tuple[str, ...] = ()
  check_options: Callable[..., None] | None = None
  implied_depth: Callable[..., int | None] = lambda **options: None
  frozen: Callable[..., tuple[str, ...]] = lambda **options: ()

  def pick_options(self, fields: Mapping[str, Any] | None) -> dict[str, Any]:
    """This method's options out of a config section (e.g. config.init): the
    fields it names that are set (not None, '' or an empty sequence)."""
    fields = fields or {}
    unset = lambda v: v is None or (isinstance(v, (str, tuple, list)) and not v)
    return {k: (tuple(fields[k]) if isinstance(fields[k], list) else fields[k])
            for k in self.options if k in fields and not unset(fields[k])}


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.name in METHODS:
    raise ValueError(f'A learngene method named {method.name!r} is already registered.')
  METHODS[method.name] = method
  return method


def get(name: str, field: str = 'method') -> Method:
  """The registered method `name`; a ValueError naming `field` and the choices otherwise."""
  if name not in METHODS:
    raise ValueError(f'{field} must be one of {sorted(METHODS)}, got {name!r}.')
  return METHODS[name]


def trained() -> list[str]:
  """Methods whose learngene trains through an auxiliary model."""
  return sorted(n for n, m in METHODS.items() if m.init is not None)
