"""Model registry: every model is built by name through `create_model`."""

from typing import Callable

import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.models.simple_cnn import SimpleCNN

# Each entry builds a module from (num_classes, dtype).
MODELS: dict[str, Callable[..., nn.Module]] = {
    'simple_cnn': SimpleCNN,
}


def create_model(name: str, num_classes: int, dtype: str = 'float32') -> nn.Module:
  """Build the registered model `name`; raises ValueError listing valid names."""
  if name not in MODELS:
    raise ValueError(
        f'Unknown model {name!r}. Valid models: {", ".join(sorted(MODELS))}.'
    )
  return MODELS[name](num_classes=num_classes, dtype=jnp.dtype(dtype))
