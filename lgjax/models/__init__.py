"""Models: the ViT and the helper that splits its params into shared and blocks."""
from lgjax.models import blocks
from lgjax.models.vit import (ViT, ViTConfig, check_config, config_from_params, model_config, param_shapes,
                              with_block_outputs)

__all__ = ['ViT', 'ViTConfig', 'blocks', 'check_config', 'config_from_params', 'model_config', 'param_shapes', 'with_block_outputs']
