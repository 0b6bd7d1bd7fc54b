"""The LeNet-style network of the classic PyTorch CIFAR-10 tutorial."""

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax import fast_cpu
from cnn_jax.models.layers import torch_default_bias_init, torch_default_kernel_init


class SimpleCNN(nn.Module):
  """conv 6@5x5, pool, conv 16@5x5, pool, dense 120, 84, num_classes.

  Weights use PyTorch's default initialization so that the tutorial's
  hyperparameters (SGD, lr 0.001, momentum 0.9) train the same way here.
  """

  num_classes: int = 10
  dtype: jnp.dtype = jnp.float32
  # Banded-matmul convolutions, pooled before the bias and ReLU with a
  # scatter-free pool (cnn_jax/fast_cpu.py): the same parameters and outputs,
  # faster on CPU. Set by fast_cpu.specialize.
  cpu_fast_path: bool = False

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or BatchNorm in this network.
    x = x_BxHxWxC.astype(self.dtype)
    in_channels = x.shape[-1]
    for i, (features, fan_in) in enumerate(((6, 5 * 5 * in_channels), (16, 5 * 5 * 6))):
      layer_args = dict(dtype=self.dtype, kernel_init=torch_default_kernel_init(),
                        bias_init=torch_default_bias_init(fan_in), name=f'Conv_{i}')
      if self.cpu_fast_path:
        x = fast_cpu.BandedConvReluPool(features, (5, 5), **layer_args)(x)
      else:
        x = nn.Conv(features, (5, 5), padding='VALID', **layer_args)(x)
        x = nn.max_pool(nn.relu(x), window_shape=(2, 2), strides=(2, 2))

    x = x.reshape((x.shape[0], -1))
    for features in (120, 84):
      x = nn.Dense(
          features,
          dtype=self.dtype,
          kernel_init=torch_default_kernel_init(),
          bias_init=torch_default_bias_init(x.shape[-1]),
      )(x)
      x = nn.relu(x)
    logits_BxK = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        kernel_init=torch_default_kernel_init(),
        bias_init=torch_default_bias_init(x.shape[-1]),
    )(x)
    # Logits in float32 so the loss is computed at full precision.
    return logits_BxK.astype(jnp.float32)
