"""Model registry: every model is built by name through `create_model`."""

import functools
from typing import Any, Callable

import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.models.airbench import Airbench
from cnn_jax.models.resnet import PreActResNet, ResNet9
from cnn_jax.models.simple_cnn import SimpleCNN

# Each entry builds a module from (num_classes, dtype, **options); the options
# are the module's own fields (for example airbench's widths or logit_scale).
MODELS: dict[str, Callable[..., nn.Module]] = {
    'simple_cnn': SimpleCNN,
    'resnet18': functools.partial(PreActResNet, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    'resnet9': ResNet9,
    'airbench': Airbench,
}


class UnknownModelError(ValueError):
  """A model name that is not in the registry; the message lists the valid ones."""


def check_model_name(name: str) -> None:
  """Raise UnknownModelError unless `name` is a registered model."""
  if name not in MODELS:
    raise UnknownModelError(
        f'Unknown model {name!r}. Valid models: {", ".join(sorted(MODELS))}; '
        'set one with --config.model.'
    )


def create_model(name: str, num_classes: int, dtype: str = 'float32', **options: Any) -> nn.Module:
  """Build the registered model `name`; raises UnknownModelError listing valid names."""
  check_model_name(name)
  return MODELS[name](num_classes=num_classes, dtype=jnp.dtype(dtype), **options)
