"""A fast VGG-style CIFAR network in the spirit of the airbench speedrun record.

The network (Jordan, 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"):
a frozen 2x2 patch-whitening convolution initialized from training-image
statistics, GELU, then three conv groups (conv, max-pool, BatchNorm, GELU,
conv, BatchNorm, GELU) of widths 64/256/256 with identity-initialized
convolutions, a global max-pool and a bias-free linear head whose logits are
scaled by 1/9. The frozen whitening kernel and the short training of its bias
are optimizer settings (the `airbench94` config's parameter groups).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from cnn_jax.models import layers


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU, PyTorch's nn.GELU default."""
  return nn.gelu(x, approximate=False)


def whitening_kernel(images_NxHxWxC: np.ndarray, kernel_size: int, eps: float = 5e-4) -> np.ndarray:
  """A (k, k, C, 2*k*k*C) kernel that whitens the k x k patches of the images.

  Each filter is an eigenvector of the (uncentered) patch covariance divided by
  the square root of its eigenvalue plus `eps`, sorted by decreasing eigenvalue;
  the second half holds the negated filters, so a following GELU keeps both
  signs of every whitened component.
  """
  images = np.asarray(images_NxHxWxC, np.float64)
  n, height, width, channels = images.shape
  k = kernel_size
  out_h, out_w = height - k + 1, width - k + 1
  windows = [images[:, i:i + out_h, j:j + out_w, :] for i in range(k) for j in range(k)]
  # (N, out_h, out_w, k*k, C) flattened in (i, j, c) order, the order of an HWIO kernel.
  patches_PxD = np.stack(windows, axis=3).reshape(-1, k * k * channels)
  covariance_DxD = patches_PxD.T @ patches_PxD / len(patches_PxD)
  eigenvalues_D, eigenvectors_DxD = np.linalg.eigh(covariance_DxD)
  order = np.argsort(eigenvalues_D)[::-1]
  filters_DxD = eigenvectors_DxD[:, order].T / np.sqrt(eigenvalues_D[order] + eps)[:, None]
  filters_2DxD = np.concatenate([filters_DxD, -filters_DxD])
  return filters_2DxD.T.reshape(k, k, channels, 2 * k * k * channels).astype(np.float32)


class ConvGroup(nn.Module):
  """conv, max-pool 2, BatchNorm, GELU, conv, BatchNorm, GELU."""

  features: int
  batchnorm_momentum: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def conv(name):
      return nn.Conv(
          self.features, (3, 3), padding='SAME', use_bias=False, dtype=self.dtype, name=name,
          kernel_init=layers.identity_conv_init(layers.torch_default_kernel_init()),
      )

    def norm(name):
      # PyTorch momentum 1 - m; a fixed scale of 1 and a trained bias.
      return nn.BatchNorm(
          use_running_average=not train, momentum=self.batchnorm_momentum, epsilon=1e-12,
          use_scale=False, dtype=self.dtype, name=name,
      )

    x = conv('conv1')(x)
    x = layers.max_pool(x, 2)
    x = gelu(norm('norm1')(x))
    x = conv('conv2')(x)
    return gelu(norm('norm2')(x))


class Airbench(nn.Module):
  """Whitening conv, GELU, three ConvGroups, global max-pool, linear * logit_scale."""

  num_classes: int = 10
  widths: Sequence[int] = (64, 256, 256)
  whiten_kernel_size: int = 2
  batchnorm_momentum: float = 0.6  # Flax convention: the weight of the old running average.
  logit_scale: float = 1.0 / 9.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    x = x_BxHxWxC.astype(self.dtype)
    k = self.whiten_kernel_size
    in_channels = x.shape[-1]
    x = nn.Conv(
        2 * k * k * in_channels, (k, k), padding='VALID', dtype=self.dtype, name='whiten',
        kernel_init=layers.torch_default_kernel_init(),
        bias_init=layers.torch_default_bias_init(k * k * in_channels),
    )(x)
    x = gelu(x)
    for i, width in enumerate(self.widths):
      x = ConvGroup(width, self.batchnorm_momentum, self.dtype, name=f'group{i + 1}')(x, train)
    # The last group leaves 3x3 maps (from 32x32 inputs): MaxPool2d(3) is a global max.
    x = layers.max_pool(x, 3)
    x = x.reshape((x.shape[0], -1))
    logits_BxK = nn.Dense(
        self.num_classes, use_bias=False, dtype=self.dtype, name='head',
        kernel_init=layers.torch_default_kernel_init(),
    )(x)
    return (logits_BxK * self.logit_scale).astype(jnp.float32)

  def init_from_images(self, params, images_NxHxWxC: jax.Array):
    """Return `params` with the whitening kernel computed from normalized training images."""
    kernel = whitening_kernel(np.asarray(jax.device_get(images_NxHxWxC)), self.whiten_kernel_size)
    whiten = dict(params['whiten'], kernel=jnp.asarray(kernel, params['whiten']['kernel'].dtype))
    return dict(params, whiten=whiten)
