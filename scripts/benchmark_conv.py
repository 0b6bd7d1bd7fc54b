"""Time each part of a 3x3 convolution's train step, per layer shape, in several lowerings.

  python scripts/benchmark_conv.py --model=airbench --batch_size=256

For every distinct 3x3 'SAME' convolution of the model (input size, input and
output features), prints one JSON line with the milliseconds and GFLOP/s of:

- `forward`: XLA's convolution (`xla`), one matmul over 9-tap im2col columns
  (`im2col`), three matmuls over 3-tap rows (`rows3`), nine tap matmuls (`taps9`);
- `input_grad`: XLA's transposed convolution (`xla`), matmul then col2im sums
  of shifted slices (`col2im`);
- `kernel_grad`: XLA's backward-filter convolution (`xla`), nine tap matmuls
  x^T g (`taps`), the same as (g^T x)^T (`taps_gt`).

On the CPU, `xla_fast` is XLA's operation compiled with the fast path's
compiler options (cnn_jax.fast_cpu.compiler_options: XLA's own kernels, no
YNNPACK fusions), as the train step compiles it with config.cpu_fast_path on.

Every lowering is checked against XLA's result first. A float32 matmul of
--matmul_size gives the machine's ceiling. Timings on a shared machine vary by
20% or more between runs, so compare lowerings of one run.
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from cnn_jax import fast_cpu  # noqa: E402

_MODEL = flags.DEFINE_enum('model', 'airbench', ['airbench', 'resnet9'], 'Model whose conv shapes are timed.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Images per timed call.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per lowering (after one warm-up call).')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 2048, 'Size of the float32 matmul timed; 0 skips it.')

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# (input height and width, input features, output features) of each 3x3 conv.
LAYER_SHAPES = {
    'airbench': [(31, 24, 64), (15, 64, 64), (15, 64, 256), (7, 256, 256), (3, 256, 256)],
    'resnet9': [(32, 3, 64), (32, 64, 128), (16, 128, 128), (16, 128, 256), (8, 256, 512), (4, 512, 512)],
}


def _pad(x):
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def _shifted(x, i, j):
  """Slice the zero-padded input that kernel tap (i, j) reads, with the height and width of `x`."""
  height, width = x.shape[1:3]
  return _pad(x)[:, i:i + height, j:j + width, :]


def forward_xla(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=_NHWC)


def forward_im2col(x, kernel):
  batch, height, width, channels = x.shape
  columns = jnp.concatenate([_shifted(x, i, j) for i in range(3) for j in range(3)], axis=-1)
  return (columns.reshape(-1, 9 * channels) @ kernel.reshape(9 * channels, -1)).reshape(batch, height, width, -1)


def forward_rows3(x, kernel):
  batch, height, width, channels = x.shape
  padded = _pad(x)
  rows = jnp.concatenate([padded[:, :, j:j + width, :] for j in range(3)], axis=-1)
  out = sum(rows[:, i:i + height].reshape(-1, 3 * channels) @ kernel[i].reshape(3 * channels, -1) for i in range(3))
  return out.reshape(batch, height, width, -1)


def forward_taps9(x, kernel):
  batch, height, width, channels = x.shape
  out = sum(_shifted(x, i, j).reshape(-1, channels) @ kernel[i, j] for i in range(3) for j in range(3))
  return out.reshape(batch, height, width, -1)


def input_grad_xla(kernel, grad):
  x = jnp.zeros(grad.shape[:3] + (kernel.shape[2],), grad.dtype)
  return jax.vjp(lambda inputs: forward_xla(inputs, kernel), x)[1](grad)[0]


def input_grad_col2im(kernel, grad):
  batch, height, width, out_features = grad.shape
  in_features = kernel.shape[2]
  columns = (grad.reshape(-1, out_features) @ kernel.reshape(9 * in_features, out_features).T)
  columns = columns.reshape(batch, height, width, 9, in_features)
  out = jnp.zeros((batch, height + 2, width + 2, in_features), grad.dtype)
  for tap in range(9):
    i, j = divmod(tap, 3)
    out = out.at[:, i:i + height, j:j + width, :].add(columns[..., tap, :])
  return out[:, 1:-1, 1:-1]


def kernel_grad_xla(x, grad):
  kernel = jnp.zeros((3, 3, x.shape[-1], grad.shape[-1]), x.dtype)
  return jax.vjp(lambda k: forward_xla(x, k), kernel)[1](grad)[0]


def kernel_grad_taps(x, grad):
  channels = x.shape[-1]
  grad_NxO = grad.reshape(-1, grad.shape[-1])
  taps = [_shifted(x, i, j).reshape(-1, channels).T @ grad_NxO for i in range(3) for j in range(3)]
  return jnp.stack(taps).reshape(3, 3, channels, -1)


def kernel_grad_taps_gt(x, grad):
  channels = x.shape[-1]
  grad_OxN = grad.reshape(-1, grad.shape[-1]).T
  taps = [(grad_OxN @ _shifted(x, i, j).reshape(-1, channels)).T for i in range(3) for j in range(3)]
  return jnp.stack(taps).reshape(3, 3, channels, -1)


PARTS = {
    'forward': {'xla': forward_xla, 'im2col': forward_im2col, 'rows3': forward_rows3, 'taps9': forward_taps9},
    'input_grad': {'xla': input_grad_xla, 'col2im': input_grad_col2im},
    'kernel_grad': {'xla': kernel_grad_xla, 'taps': kernel_grad_taps, 'taps_gt': kernel_grad_taps_gt},
}


def time_call(fn, *args) -> float:
  """Seconds per call of the jitted `fn`, after one warm-up call."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(_REPEATS.value):
    result = fn(*args)
  jax.block_until_ready(result)
  return (time.perf_counter() - start) / _REPEATS.value


def part_arguments(part: str, x, kernel, grad) -> tuple:
  return {'forward': (x, kernel), 'input_grad': (kernel, grad), 'kernel_grad': (x, grad)}[part]


def main(argv):
  del argv
  batch = _BATCH_SIZE.value
  rng = np.random.default_rng(0)
  if _MATMUL_SIZE.value:
    n = _MATMUL_SIZE.value
    a = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
    seconds = time_call(jax.jit(lambda m: m @ m), a)
    print(json.dumps({'measurement': 'matmul', 'size': n, 'gflops_per_s': round(2 * n**3 / seconds / 1e9, 1)}))
  fast_options = fast_cpu.compiler_options(True)
  for size, in_features, out_features in LAYER_SHAPES[_MODEL.value]:
    x = jnp.asarray(rng.normal(size=(batch, size, size, in_features)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, in_features, out_features)) * 0.05, jnp.float32)
    grad = jnp.asarray(rng.normal(size=(batch, size, size, out_features)), jnp.float32)
    flops = 2 * batch * size * size * 9 * in_features * out_features
    for part, lowerings in PARTS.items():
      args = part_arguments(part, x, kernel, grad)
      reference = np.asarray(jax.jit(lowerings['xla'])(*args))
      record = {'measurement': part, 'layer': f'{size}x{size} {in_features}->{out_features}', 'batch_size': batch}
      compiled = {name: jax.jit(fn) for name, fn in lowerings.items()}
      if fast_options:
        compiled['xla_fast'] = jax.jit(lowerings['xla'], compiler_options=fast_options)
      for name, jitted in compiled.items():
        np.testing.assert_allclose(np.asarray(jitted(*args)), reference, rtol=2e-3, atol=2e-3 * np.abs(reference).max())
        seconds = time_call(jitted, *args)
        record[name] = {'ms': round(seconds * 1e3, 1), 'gflops_per_s': round(flops / seconds / 1e9, 1)}
      print(json.dumps(record), flush=True)


if __name__ == '__main__':
  app.run(main)
