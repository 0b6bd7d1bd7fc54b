"""scripts/benchmark_conv.py: every lowering computes XLA's convolution or gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scripts import benchmark_conv


def random_operands(batch=2, size=5, in_features=3, out_features=4):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (batch, size, size, in_features))
  kernel = jax.random.normal(keys[1], (3, 3, in_features, out_features))
  grad = jax.random.normal(keys[2], (batch, size, size, out_features))
  return x, kernel, grad


@pytest.mark.parametrize('part', sorted(benchmark_conv.PARTS))
def test_lowerings_match_xla(part):
  x, kernel, grad = random_operands()
  args = benchmark_conv.part_arguments(part, x, kernel, grad)
  lowerings = benchmark_conv.PARTS[part]
  expected = np.asarray(jax.jit(lowerings['xla'])(*args))
  for name, fn in lowerings.items():
    np.testing.assert_allclose(jax.jit(fn)(*args), expected, rtol=1e-4, atol=1e-4, err_msg=name)


def test_xla_gradients_are_the_autodiff_gradients():
  x, kernel, grad = random_operands()
  _, vjp = jax.vjp(benchmark_conv.forward_xla, x, kernel)
  grad_x, grad_kernel = vjp(grad)
  np.testing.assert_allclose(benchmark_conv.input_grad_xla(kernel, grad), grad_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(benchmark_conv.kernel_grad_xla(x, grad), grad_kernel, rtol=1e-5, atol=1e-5)


def test_layer_shapes_are_valid_convs():
  for model, shapes in benchmark_conv.LAYER_SHAPES.items():
    for size, in_features, out_features in shapes:
      x = jax.ShapeDtypeStruct((1, size, size, in_features), jnp.float32)
      kernel = jax.ShapeDtypeStruct((3, 3, in_features, out_features), jnp.float32)
      for fn in benchmark_conv.PARTS['forward'].values():
        assert jax.eval_shape(fn, x, kernel).shape == (1, size, size, out_features), (model, fn.__name__)
