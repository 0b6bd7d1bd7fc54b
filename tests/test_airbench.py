"""The airbench network: shapes, parameter count, initialization, whitening."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.models import airbench


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def init(model, batch=2):
  return model.init(jax.random.key(0), jnp.zeros((batch, 32, 32, 3)))


def test_parameter_count_matches_pytorch_airbench94():
  # PyTorch airbench94 has 1,972,792 parameters, of which 1,152 are BatchNorm
  # weights frozen at 1; here BatchNorm has no scale, so 1,971,640 remain.
  variables = init(models.create_model('airbench', 10))
  assert count_params(variables['params']) == 1_971_640
  assert count_params(variables['batch_stats']) == 2 * 2 * (64 + 256 + 256)


def test_output_shape_dtype_and_logit_scale():
  model = models.create_model('airbench', 10)
  variables = init(model)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 3)), jnp.float32)
  logits = model.apply(variables, x)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  unscaled = models.create_model('airbench', 10, logit_scale=1.0).apply(variables, x)
  np.testing.assert_allclose(logits * 9, unscaled, rtol=1e-5, atol=1e-6)


def test_convolutions_start_as_identity_on_their_input_channels():
  params = init(models.create_model('airbench', 10))['params']
  kernel = np.asarray(params['group2']['conv1']['kernel'])  # 64 -> 256
  np.testing.assert_array_equal(kernel[1, 1, :, :64], np.eye(64))
  assert np.abs(kernel[:, :, :, :64]).sum() == 64
  assert np.abs(kernel[:, :, :, 64:]).max() > 0  # The other filters keep the random init.


def test_whitening_kernel_decorrelates_patches():
  rng = np.random.default_rng(0)
  # Correlated channels, so whitening has something to undo.
  base = rng.normal(size=(200, 12, 12, 3))
  images = base @ np.array([[1.0, 0.8, 0.3], [0.0, 0.6, 0.2], [0.0, 0.0, 0.4]])
  kernel = airbench.whitening_kernel(images, 2, eps=1e-6)
  assert kernel.shape == (2, 2, 3, 24)
  out = jax.lax.conv_general_dilated(jnp.asarray(images, jnp.float32), jnp.asarray(kernel), (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  first_half = np.asarray(out[..., :12]).reshape(-1, 12)
  second_moment = first_half.T @ first_half / len(first_half)
  np.testing.assert_allclose(second_moment, np.eye(12), atol=2e-3)
  np.testing.assert_allclose(out[..., 12:], -out[..., :12], rtol=1e-5, atol=1e-5)


def test_init_from_images_sets_only_the_whitening_kernel():
  model = models.create_model('airbench', 10)
  params = init(model)['params']
  images = jnp.asarray(np.random.default_rng(0).normal(size=(20, 32, 32, 3)), jnp.float32)
  new = model.init_from_images(params, images)
  np.testing.assert_allclose(new['whiten']['kernel'], airbench.whitening_kernel(np.asarray(images), 2), rtol=1e-5)
  np.testing.assert_array_equal(new['whiten']['bias'], params['whiten']['bias'])
  np.testing.assert_array_equal(new['group1']['conv1']['kernel'], params['group1']['conv1']['kernel'])
