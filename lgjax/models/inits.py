"""How a ViT's parameters start: named schemes, chosen by `ViT.param_init`.

With Adam, the head's start decides whether an inherited body keeps what it
knows: a zero head passes it no gradient for the first steps, and Adam's
steps do not shrink with the gradient. The scheme decides how fast a model
from scratch starts. The learngene papers' code (TLEG, SWS) builds on
DeiT/timm, which start every Linear kernel, the position embedding and the
cls token at trunc-normal(0.02); big_vision starts kernels xavier-uniform
(~6x larger at width 64), the patch kernel lecun-normal and the position
embedding N(0, 1/sqrt(width)). `benchmarks/transfer.py` measures what each
does to a descendant's early training (`benchmarks/results/transfer.md`).

  deit        the papers' (DeiT/timm): kernels and embeddings trunc-normal(0.02),
              biases 0, the patch conv as PyTorch's Conv2d default
              (U(+-1/sqrt(fan_in)) for kernel and bias). The default.
  torch       PyTorch's layer defaults: kernels U(+-1/sqrt(fan_in)) (nn.Linear,
              nn.Conv2d), biases 0 but the patch conv's (as deit), position
              embedding and cls trunc-normal(0.02);
              what a plain PyTorch ViT starts from.
  big_vision  big_vision's ViT: xavier-uniform kernels, MLP biases N(0, 1e-6),
              lecun-normal patch kernel, position embedding N(0, 1/sqrt(width)), cls 0.

The head starts at `head_kernel` unless the ViT's `head_zeroinit` is set. A
scheme only sets how params *start*; loading a checkpoint ignores it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Initializer = Callable[..., jax.Array]
DEIT_STD = 0.02


def torch_uniform(fan_in: int) -> Initializer:
  """PyTorch's Linear/Conv default for a bias (and, in effect, a kernel): U(+-1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def trunc_normal(std: float) -> Initializer:
  """Normal with standard deviation `std`, truncated at +-2 std (timm's trunc_normal_
  draws N(0, std) cut at +-2 absolute, which at std 0.02 is the same distribution up
  to the tails); jax's truncated_normal takes the std before truncation."""
  return nn.initializers.truncated_normal(std / 0.87962566103423978)


def _pos_big_vision(key, shape, dtype=jnp.float32):
  """N(0, 1/sqrt(width)), width the last axis."""
  return jax.random.normal(key, shape, dtype) / np.sqrt(shape[-1])


@dataclasses.dataclass(frozen=True)
class Scheme:
  """Initializers by the role a param plays; `patch_bias` takes the patch's fan-in."""
  kernel: Initializer                     # attention query/key/value/out and MLP kernels
  mlp_bias: Initializer                   # MLP biases (attention biases start at 0 in both)
  patch_kernel: Initializer               # the patch-embedding conv
  patch_bias: Callable[[int], Initializer]
  pos_embedding: Initializer              # a learned position embedding, (1, tokens, width)
  cls: Initializer
  head_kernel: Initializer                # when the ViT's head_zeroinit is False


SCHEMES: dict[str, Scheme] = {
    'deit': Scheme(
        kernel=trunc_normal(DEIT_STD),
        mlp_bias=nn.initializers.zeros,
        patch_kernel=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
        patch_bias=torch_uniform,
        pos_embedding=trunc_normal(DEIT_STD),
        cls=trunc_normal(DEIT_STD),
        head_kernel=trunc_normal(DEIT_STD)),
    'big_vision': Scheme(
        kernel=nn.initializers.xavier_uniform(),
        mlp_bias=nn.initializers.normal(stddev=1e-6),
        patch_kernel=nn.initializers.lecun_normal(),
        patch_bias=lambda fan_in: nn.initializers.zeros,
        pos_embedding=_pos_big_vision,
        cls=nn.initializers.zeros,
        head_kernel=nn.initializers.lecun_normal()),
}
SCHEMES['torch'] = dataclasses.replace(
    SCHEMES['deit'], kernel=SCHEMES['deit'].patch_kernel, head_kernel=SCHEMES['deit'].patch_kernel)
DEFAULT = 'deit'


def get(name: str) -> Scheme:
  """The scheme called `name`; a ValueError lists the known ones."""
  try:
    return SCHEMES[name]
  except (KeyError, TypeError):
    raise ValueError(f'param_init must be one of {sorted(SCHEMES)}, got {name!r}.') from None
