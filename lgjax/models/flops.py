"""Forward FLOPs of ViT parts, counted as 2 x multiply-adds of the matmuls, and
the datasheet peaks of the chips they run on: the two halves of MFU.

LayerNorm, softmax, GELU and residual adds are left out, as is usual for
model-FLOPs utilization; a training step costs about 3x the forward pass.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lgjax.models.vit import ViTConfig


def _pair(patch_size) -> tuple[int, int]:
  return (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)


def num_tokens(config: dict, image_shape: Sequence[int]) -> int:
  """Tokens the encoder sees: patches plus the cls token for pool_type 'tok'."""
  ph, pw = _pair(config['patch_size'])
  return (image_shape[0] // ph) * (image_shape[1] // pw) + (config.get('pool_type', 'gap') == 'tok')


def stem_flops(config: dict, image_shape: Sequence[int]) -> int:
  ph, pw = _pair(config['patch_size'])
  patches = (image_shape[0] // ph) * (image_shape[1] // pw)
  return 2 * patches * ph * pw * image_shape[2] * config['width']


def block_flops(tokens: int, width: int, mlp_dim: int) -> int:
  """q, k, v and out projections 8·T·d², scores and weighted values 4·T²·d, MLP 4·T·d·m."""
  return 8 * tokens * width ** 2 + 4 * tokens ** 2 * width + 4 * tokens * width * mlp_dim


def head_flops(config: dict) -> int:
  return 2 * config['width'] * (config.get('num_classes') or 0)


def forward_flops(config: dict, image_shape: Sequence[int]) -> int:
  """FLOPs of one image through ViT(**config)."""
  mlp = ViTConfig.of(config).mlp_dim
  blocks = config['depth'] * block_flops(num_tokens(config, image_shape), config['width'], mlp)
  return stem_flops(config, image_shape) + blocks + head_flops(config)


# Datasheet dense bfloat16 matmul TFLOP/s per chip, by device kind (the first name found in
# jax's device_kind wins): the fixed denominator of MFU, where a measured peak moves with
# the chip's clocks and power (541-698 TFLOP/s on one H200 kind, benchmarks/results/gpu_h200.md).
CHIP_BF16_TFLOPS = (('H100 PCIe', 756), ('H100', 989), ('H200', 989), ('A100', 312),
                    ('TPU v4', 275), ('TPU v5 lite', 197), ('TPU v5', 459), ('TPU v6 lite', 918))


def chip_peak(device_kind: str, dtype) -> float | None:
  """FLOP/s of the chip's datasheet for dense `dtype` matmuls; None for a chip or dtype the
  table lacks (a float32 step's peak depends on whether its matmuls use TF32 or bf16 passes)."""
  if np.dtype(dtype) != np.dtype('bfloat16'):
    return None
  return next((1e12 * tflops for name, tflops in CHIP_BF16_TFLOPS if name in device_kind), None)
