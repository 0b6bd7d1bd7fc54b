"""CPU fast path: small convolutions as banded matrix multiplies, and a 2x2 max pool.

XLA:CPU runs convolutions with few channels (SimpleCNN's 3->6 and 6->16) far
below the speed of its matrix multiplies, and lowers the gradient of a max pool
to a scatter. Here a convolution becomes one matrix multiply whose rows are
strips of `block_width` output pixels: the left operand holds the input window
of each strip, the right one is the kernel laid out as a banded (Toeplitz)
matrix, so each row of the product is `block_width * features` outputs. The
result is the same sum of the same products as `nn.Conv`, added in another
order, so values agree to float32 rounding; the pool is exact.

The jitted train and eval steps also compile with `compiler_options`: XLA's
own convolution and matmul kernels in place of its YNNPACK library fusions,
which ran convolutions at about half the speed on a 2-core AVX2 CPU (see
docs/benchmarks.md). Models without a `cpu_fast_path` field (airbench, the
ResNets) get only these options.

`enabled` is the one place that decides whether a run uses this path: only on
the CPU backend, and only when the config allows it. GPU and TPU always run the
plain XLA convolution and pooling.
"""

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

# Largest output strip, in values (pixels * features), that a row of the banded
# multiply computes. Wider strips waste work on the zeros of the band; narrower
# ones give the multiply too few columns. 32 was fastest when SimpleCNN's layers
# were timed on a 2-core CPU; layers with more than 16 features keep the XLA convolution.
MAX_STRIP_VALUES = 32


def enabled(cpu_fast_path: bool, backend: str | None = None) -> bool:
  """Whether to use the CPU specializations: `cpu_fast_path` is on and the backend is CPU."""
  return cpu_fast_path and (backend or jax.default_backend()) == 'cpu'


def specialize(model: nn.Module, cpu_fast_path: bool, backend: str | None = None) -> nn.Module:
  """`model` with its CPU specializations on when `enabled` says so and it has them.

  A model that has them declares a `cpu_fast_path` field; others come back unchanged.
  """
  if enabled(cpu_fast_path, backend) and hasattr(model, 'cpu_fast_path'):
    return model.clone(cpu_fast_path=True)
  return model


# An XLA:CPU compiler option that lists no kinds of YNNPACK fusion, so no operation goes to YNNPACK.
NO_YNNPACK = {'xla_cpu_experimental_ynn_fusion_type': ''}


@functools.cache
def _accepts(option: str, value: str) -> bool:
  """Return whether this jax and XLA compile a function with the compiler option `option=value`."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={option: value}).lower(jnp.zeros(())).compile()
  except (TypeError, RuntimeError):  # A jax.jit without compiler_options, or an XLA without the option.
    return False
  return True


def compiler_options(cpu_fast_path: bool, backend: str | None = None) -> dict[str, str] | None:
  """Return the XLA compiler options for jitted steps: NO_YNNPACK when `enabled` and supported, else None."""
  if enabled(cpu_fast_path, backend) and all(_accepts(k, v) for k, v in NO_YNNPACK.items()):
    return dict(NO_YNNPACK)
  return None


def jit(fn, compiler_options: dict[str, str] | None, **jit_kwargs):
  """Return `jax.jit(fn, **jit_kwargs)`, compiled with `compiler_options` when they are not empty.

  Empty options are not passed on, so jax versions without the argument still work.
  """
  if compiler_options:
    jit_kwargs['compiler_options'] = compiler_options
  return jax.jit(fn, **jit_kwargs)


def strip_width(out_width: int, features: int) -> int | None:
  """The widest strip of output pixels that divides `out_width` and fits MAX_STRIP_VALUES.

  None when only single pixels fit: a banded multiply then has no advantage.
  """
  widths = [w for w in range(2, out_width + 1) if out_width % w == 0 and w * features <= MAX_STRIP_VALUES]
  return max(widths) if widths else None


def _band(in_size: int, out_size: int, taps: int, dtype) -> jax.Array:
  """0/1 array [taps, in_size, out_size]: 1 where input index == output index + tap."""
  tap = jnp.arange(taps)[:, None, None]
  return (jnp.arange(in_size)[None, :, None] == jnp.arange(out_size)[None, None, :] + tap).astype(dtype)


def banded_conv(x_BxHxWxC: jax.Array, kernel_HxWxCxF: jax.Array, block_width: int) -> jax.Array:
  """VALID, stride-1 convolution as one matrix multiply over strips of `block_width` pixels.

  The output width must be a multiple of `block_width`.
  """
  batch, height, width, channels = x_BxHxWxC.shape
  kernel_h, kernel_w, _, features = kernel_HxWxCxF.shape
  out_h, out_w = height - kernel_h + 1, width - kernel_w + 1
  if out_w % block_width:
    raise ValueError(f'block_width={block_width} does not divide the output width {out_w}.')
  strips = out_w // block_width
  # Each strip reads `blocks` consecutive input blocks of block_width pixels.
  blocks = -(-(block_width + kernel_w - 1) // block_width)
  padded_w = (strips + blocks - 1) * block_width
  x = x_BxHxWxC[:, :, :padded_w]
  x = jnp.pad(x, ((0, 0), (0, 0), (0, padded_w - x.shape[2]), (0, 0)))
  x_blocks = x.reshape(batch, height, strips + blocks - 1, block_width * channels)
  windows = jnp.stack(
      [jnp.stack([x_blocks[:, dy:dy + out_h, b:b + strips] for b in range(blocks)], axis=3)
       for dy in range(kernel_h)],
      axis=3,
  )  # [batch, out_h, strips, kernel_h, blocks, block_width * channels]
  rows_MxK = windows.reshape(batch * out_h * strips, -1)
  band_KxN = jnp.einsum(
      'yxcf,xiw->yicwf', kernel_HxWxCxF,
      _band(blocks * block_width, block_width, kernel_w, kernel_HxWxCxF.dtype),
      precision=lax.Precision.HIGHEST,
  ).reshape(rows_MxK.shape[1], block_width * features)
  return (rows_MxK @ band_KxN).reshape(batch, out_h, out_w, features)


class BandedConvReluPool(nn.Module):
  """Convolution, bias, ReLU and 2x2 max pool with the parameters of `nn.Conv(features, kernel_size, padding='VALID')`.

  Computes `nn.max_pool(nn.relu(conv(x) + bias), (2, 2), (2, 2))`. The
  convolution is `banded_conv` when `strip_width` finds a strip for the layer,
  XLA's otherwise. It pools before adding the bias and applying the ReLU: both
  are non-decreasing, so the maximum of a window is the same, and they then
  run on a quarter of the values. Gradients match too, except where rounding
  the bias addition ties two values of a window that differed before it. The
  gradient then goes to the larger of them, not to the first.
  """

  features: int
  kernel_size: tuple[int, int]
  dtype: jnp.dtype | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (*self.kernel_size, x_BxHxWxC.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    x, kernel, bias = nn.dtypes.promote_dtype(x_BxHxWxC, kernel, bias, dtype=self.dtype)
    block_width = strip_width(x.shape[2] - self.kernel_size[1] + 1, self.features)
    if block_width is None:
      y = lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    else:
      y = banded_conv(x, kernel, block_width)
    return nn.relu(max_pool_2x2(y) + bias)


def _windows(x_BxHxWxC: jax.Array) -> jax.Array:
  batch, height, width, channels = x_BxHxWxC.shape
  if height % 2 or width % 2:
    raise ValueError(f'max_pool_2x2 needs an even height and width, got {height}x{width}.')
  return x_BxHxWxC.reshape(batch, height // 2, 2, width // 2, 2, channels)


def _positions(dtype) -> jax.Array:
  """Index of each place in a 2x2 window, row-major: the order in which XLA scans it."""
  return jnp.arange(4, dtype=dtype).reshape(1, 1, 2, 1, 2, 1)


@jax.custom_vjp
def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` with a gradient that needs no scatter.

  As in XLA's select-and-scatter, the gradient goes to the first maximum of each
  window in row-major order, so it equals `nn.max_pool`'s exactly, ties included.
  """
  return jnp.max(_windows(x_BxHxWxC), axis=(2, 4))


def _max_pool_forward(x_BxHxWxC):
  windows = _windows(x_BxHxWxC)
  pooled = jnp.max(windows, axis=(2, 4))
  is_max = windows == pooled[:, :, None, :, None, :]
  first_max = jnp.min(jnp.where(is_max, _positions(jnp.int32), 4), axis=(2, 4)).astype(jnp.int8)
  return pooled, (first_max, x_BxHxWxC.shape)


def _max_pool_backward(residuals, grad_pooled):
  first_max, shape = residuals
  chosen = _positions(jnp.int8) == first_max[:, :, None, :, None, :]
  grad = jnp.where(chosen, grad_pooled[:, :, None, :, None, :], jnp.zeros((), grad_pooled.dtype))
  return (grad.reshape(shape),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)
