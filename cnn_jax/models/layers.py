"""Layers shared by the model families: PyTorch-style initializers and a conv fast path."""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def torch_default_kernel_init() -> nn.initializers.Initializer:
  """PyTorch's default Conv2d/Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def identity_conv_init(base_init: nn.initializers.Initializer) -> nn.initializers.Initializer:
  """`base_init`, then the first min(in, out) filters set to the identity (torch.nn.init.dirac_).

  At initialization such a convolution passes its input channels through
  unchanged, which lets deep plain (non-residual) networks train fast.
  """

  def init(key, shape, dtype=jnp.float32):
    kernel_HxWxIxO = base_init(key, shape, dtype)
    height, width, in_features, out_features = shape
    n = min(in_features, out_features)
    kernel_HxWxIxO = kernel_HxWxIxO.at[:, :, :, :n].set(0.0)
    return kernel_HxWxIxO.at[height // 2, width // 2, jnp.arange(n), jnp.arange(n)].set(1.0)

  return init


def max_pool(x_BxHxWxC: jax.Array, window: int) -> jax.Array:
  """Max-pool with a square window and stride `window`, dropping the remainder rows (PyTorch's floor mode).

  The same forward as nn.max_pool, written as a reshape and a max reduction:
  its gradient avoids XLA's select-and-scatter, which is 2-4x slower on CPU.
  NOTE: where a window holds several equal maxima, the gradient is split
  among them (nn.max_pool and PyTorch give it all to one).
  """
  batch, height, width, channels = x_BxHxWxC.shape
  h, w = height // window, width // window
  x = x_BxHxWxC[:, :h * window, :w * window]
  return x.reshape(batch, h, window, w, window, channels).max(axis=(2, 4))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_fast_kernel_grad(x_BxHxWxI, kernel_KxKxIxO, padding):
  return jax.lax.conv_general_dilated(x_BxHxWxI, kernel_KxKxIxO, (1, 1), padding, dimension_numbers=_NHWC)


def _conv_forward(x_BxHxWxI, kernel_KxKxIxO, padding):
  return _conv_fast_kernel_grad(x_BxHxWxI, kernel_KxKxIxO, padding), (x_BxHxWxI, kernel_KxKxIxO)


def _conv_backward(padding, residuals, grad_BxHxWxO):
  x_BxHxWxI, kernel_KxKxIxO = residuals
  # The input gradient is XLA's own transposed convolution.
  _, input_vjp = jax.vjp(
      lambda x: jax.lax.conv_general_dilated(x, kernel_KxKxIxO, (1, 1), padding, dimension_numbers=_NHWC),
      x_BxHxWxI,
  )
  (grad_x,) = input_vjp(grad_BxHxWxO)
  # The kernel gradient as one matmul per kernel tap: on CPU, XLA's
  # backward-filter convolution runs 2-4x slower than these matmuls.
  kh, kw, in_features, out_features = kernel_KxKxIxO.shape
  x_padded = jnp.pad(x_BxHxWxI, ((0, 0), *padding, (0, 0)))
  out_h, out_w = grad_BxHxWxO.shape[1:3]
  grad_NxO = grad_BxHxWxO.reshape(-1, out_features)
  taps = []
  for i in range(kh):
    for j in range(kw):
      window_NxI = x_padded[:, i:i + out_h, j:j + out_w, :].reshape(-1, in_features)
      taps.append(window_NxI.T @ grad_NxO)
  grad_kernel = jnp.stack(taps).reshape(kh, kw, in_features, out_features)
  return grad_x, grad_kernel.astype(kernel_KxKxIxO.dtype)


_conv_fast_kernel_grad.defvjp(_conv_forward, _conv_backward)


def conv_with_matmul_kernel_grad(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
):
  """A drop-in `lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`.

  Same forward and input gradient; the kernel gradient is computed with
  matmuls. Only stride-1, undilated, ungrouped NHWC convolutions take the fast
  path; anything else falls back to XLA's convolution.
  """
  simple = (
      tuple(window_strides) == (1, 1)
      and not any(d != 1 for d in (lhs_dilation or ()))
      and not any(d != 1 for d in (rhs_dilation or ()))
      and feature_group_count == 1
      and batch_group_count == 1
      and preferred_element_type is None
      and dimension_numbers is not None
      and tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2)
      and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
      and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2)
  )
  if not simple:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type,
    )
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv_fast_kernel_grad(lhs, rhs, padding)


def conv_general_dilated_for(cpu_fast_path: bool):
  """The convolution for `nn.Conv(conv_general_dilated=...)`: the matmul kernel gradient on the CPU fast path.

  Models take `cpu_fast_path` as a field that cnn_jax.fast_cpu.specialize turns
  on for CPU runs (config.cpu_fast_path); otherwise XLA's own convolution.
  """
  return conv_with_matmul_kernel_grad if cpu_fast_path else jax.lax.conv_general_dilated
