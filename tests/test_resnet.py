"""ResNet-18 (pre-activation) and ResNet-9: parameter counts, shapes, BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def init(name, size=32, **options):
  model = models.create_model(name, 10, **options)
  return model, model.init(jax.random.key(0), jnp.zeros((2, size, size, 3)))


def test_resnet18_parameter_count():
  # kuangliu/pytorch-cifar's PreActResNet18 has 11,171,146 parameters; this one
  # adds the final BatchNorm of He et al.'s pre-activation design (2 * 512).
  _, variables = init('resnet18')
  assert count_params(variables['params']) == 11_171_146 + 1_024


def test_resnet9_parameter_count():
  # The DAWNBench ResNet-9 (Page, 2018): 6,573,120 parameters with a bias-free head.
  _, variables = init('resnet9')
  assert count_params(variables['params']) == 6_573_120


@pytest.mark.parametrize('name', ['resnet18', 'resnet9'])
def test_output_shape_and_batchnorm_statistics(name):
  model, variables = init(name, size=32)
  x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'], updates['batch_stats'])
  assert all(jax.tree.leaves(changed))
  eval_logits = model.apply(variables, x, train=False)
  assert eval_logits.shape == (3, 10)


def test_resnet18_has_no_stem_pooling():
  model, variables = init('resnet18')
  # 3x3 stem at full resolution, then three stride-2 stages: 32 -> 4.
  features = model.apply(variables, jnp.zeros((1, 32, 32, 3)), capture_intermediates=True,
                         mutable=['intermediates'])[1]['intermediates']
  assert features['stem']['__call__'][0].shape == (1, 32, 32, 64)
  assert features['stage4_block2']['__call__'][0].shape == (1, 4, 4, 512)
