import jax
import jax.numpy as jnp
import pytest

from cnn_jax import models


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def test_simple_cnn_parameter_count():
  model = models.create_model('simple_cnn', num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert count_params(variables['params']) == 62_006


@pytest.mark.parametrize('batch', [1, 7])
def test_simple_cnn_output_shape(batch):
  model = models.create_model('simple_cnn', num_classes=10)
  images = jnp.zeros((batch, 32, 32, 3))
  variables = model.init(jax.random.key(0), images)
  logits = model.apply(variables, images)
  assert logits.shape == (batch, 10)
  assert logits.dtype == jnp.float32


def test_simple_cnn_pytorch_init_range():
  model = models.create_model('simple_cnn', num_classes=10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  # PyTorch bounds: 1/sqrt(fan_in), fan_in = 5*5*3 for the first conv.
  bound = 1 / (5 * 5 * 3) ** 0.5
  assert float(jnp.max(jnp.abs(params['Conv_0']['kernel']))) <= bound
  assert float(jnp.max(jnp.abs(params['Conv_0']['bias']))) <= bound
  assert float(jnp.max(jnp.abs(params['Conv_0']['kernel']))) > 0.8 * bound


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match='Valid models: .*simple_cnn'):
    models.create_model('lenet7', num_classes=10)
