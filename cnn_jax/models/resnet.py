"""ResNets for 32x32 inputs: pre-activation ResNet-18 and the DAWNBench ResNet-9."""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cnn_jax.models import layers


def _batch_norm(train: bool, momentum: float, dtype, name: str | None = None) -> nn.BatchNorm:
  # PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here, eps 1e-5).
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5, dtype=dtype, name=name)


class PreActBlock(nn.Module):
  """BN, ReLU, conv 3x3, BN, ReLU, conv 3x3, plus a 1x1-conv shortcut when the shape changes."""

  features: int
  stride: int = 1
  batchnorm_momentum: float = 0.9
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def conv(features, kernel, stride, name):
      return nn.Conv(features, (kernel, kernel), (stride, stride), padding='SAME' if kernel > 1 else 'VALID',
                     use_bias=False, dtype=self.dtype, kernel_init=nn.initializers.he_normal(), name=name)

    out = nn.relu(_batch_norm(train, self.batchnorm_momentum, self.dtype, 'norm1')(x))
    # The shortcut branches off after the first pre-activation, as in He et al. (2016).
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.stride, 'shortcut')(out)
    else:
      shortcut = x
    out = conv(self.features, 3, self.stride, 'conv1')(out)
    out = nn.relu(_batch_norm(train, self.batchnorm_momentum, self.dtype, 'norm2')(out))
    out = conv(self.features, 3, 1, 'conv2')(out)
    return out + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet for CIFAR: 3x3 stem, no max-pool, four stages, final BN-ReLU."""

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: int = 10
  batchnorm_momentum: float = 0.9
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    x = x_BxHxWxC.astype(self.dtype)
    x = nn.Conv(self.widths[0], (3, 3), padding='SAME', use_bias=False, dtype=self.dtype,
                kernel_init=nn.initializers.he_normal(), name='stem')(x)
    for stage, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = PreActBlock(width, stride, self.batchnorm_momentum, self.dtype,
                        name=f'stage{stage + 1}_block{block + 1}')(x, train)
    x = nn.relu(_batch_norm(train, self.batchnorm_momentum, self.dtype, 'final_norm')(x))
    x = jnp.mean(x, axis=(1, 2))
    logits_BxK = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return logits_BxK.astype(jnp.float32)


class ConvBNReLU(nn.Module):
  features: int
  batchnorm_momentum: float = 0.9
  dtype: jnp.dtype = jnp.float32
  pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(self.features, (3, 3), padding='SAME', use_bias=False, dtype=self.dtype,
                kernel_init=layers.torch_default_kernel_init())(x)
    x = _batch_norm(train, self.batchnorm_momentum, self.dtype)(x)
    x = nn.relu(x)
    if self.pool:
      x = layers.max_pool(x, 2)
    return x


class ResNet9(nn.Module):
  """The fast ResNet-9 of the DAWNBench CIFAR-10 entries (Page, 2018, "How to train your ResNet").

  prep conv 64; conv 128 + pool + residual(2 convs); conv 256 + pool; conv 512
  + pool + residual(2 convs); global max-pool; linear without bias; logits
  scaled by 0.125.
  """

  num_classes: int = 10
  widths: Sequence[int] = (64, 128, 256, 512)
  batchnorm_momentum: float = 0.9
  logit_scale: float = 0.125
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    x = x_BxHxWxC.astype(self.dtype)
    prep, w1, w2, w3 = self.widths

    def block(features, name, pool=False):
      return ConvBNReLU(features, self.batchnorm_momentum, self.dtype, pool, name=name)

    x = block(prep, 'prep')(x, train)
    x = block(w1, 'layer1', pool=True)(x, train)
    x = x + block(w1, 'res1b')(block(w1, 'res1a')(x, train), train)
    x = block(w2, 'layer2', pool=True)(x, train)
    x = block(w3, 'layer3', pool=True)(x, train)
    x = x + block(w3, 'res3b')(block(w3, 'res3a')(x, train), train)
    x = jnp.max(x, axis=(1, 2))
    logits_BxK = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, name='head',
                          kernel_init=layers.torch_default_kernel_init())(x)
    return (logits_BxK * self.logit_scale).astype(jnp.float32)
