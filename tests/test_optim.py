"""Schedules, parameter groups and weight decay of cnn_jax.optim."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import optim
from experiments.configs import default


def make_config(**optimizer):
  config = default.get_config()
  for name, value in optimizer.items():
    setattr(config.optimizer, name, value)
  return config


PARAMS = {
    'conv': {'kernel': jnp.ones((3,)), 'bias': jnp.ones((3,))},
    'norm': {'bias': jnp.ones((2,)), 'scale': jnp.ones((2,))},
}


def one_update(tx, params, grads, steps=1):
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_one_cycle_schedule_is_piecewise_linear():
  config = make_config(schedule='one_cycle', learning_rate=2.0, one_cycle_start=0.2, one_cycle_peak_at=0.25,
                       one_cycle_end=0.1)
  config.num_epochs = 10
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=10)  # 100 steps, peak at 25.
  assert float(schedule(0)) == pytest.approx(0.4)
  assert float(schedule(25)) == pytest.approx(2.0)
  assert float(schedule(100)) == pytest.approx(0.2)
  assert float(schedule(12.5)) == pytest.approx(0.4 + 0.5 * 1.6)
  assert float(schedule(62.5)) == pytest.approx(2.0 - 0.5 * 1.8)


@pytest.mark.parametrize('name, middle', [('cosine', 0.5), ('linear', 0.5), ('constant', 1.0)])
def test_warmup_then_decay(name, middle):
  config = make_config(schedule=name, learning_rate=1.0, warmup_epochs=1.0)
  config.num_epochs = 3
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=10)  # 10 warmup, 20 decay steps.
  assert float(schedule(0)) == pytest.approx(0.0)
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(20)) == pytest.approx(middle, abs=1e-6)


def test_one_cycle_rejects_warmup_and_unknown_schedule_lists_valid_ones():
  with pytest.raises(ValueError, match='warmup_epochs=0'):
    optim.create_learning_rate_schedule(make_config(schedule='one_cycle', warmup_epochs=1.0), 10)
  with pytest.raises(ValueError, match='Valid: constant, cosine, linear, one_cycle'):
    optim.create_learning_rate_schedule(make_config(schedule='step'), 10)


def test_default_optimizer_matches_optax_sgd():
  config = make_config(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
  schedule = optim.create_learning_rate_schedule(config, 10)
  reference = optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.1, momentum=0.9, nesterov=True))
  grads = jax.tree.map(lambda p: 0.3 * p + 0.1, PARAMS)
  ours = one_update(optim.create_optimizer(config, schedule), PARAMS, grads, steps=3)
  expected = one_update(reference, PARAMS, grads, steps=3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, expected)


def test_nesterov_matches_torch_sgd_by_hand():
  config = make_config(learning_rate=0.5, momentum=0.8, nesterov=True, weight_decay=0.0)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  params = {'w': jnp.array(1.0)}
  state = tx.init(params)
  buffer, w = 0.0, 1.0
  for g in (1.0, -2.0, 0.5):
    # torch.optim.SGD(nesterov=True): buf = m * buf + g; step = g + m * buf.
    buffer = 0.8 * buffer + g
    w -= 0.5 * (g + 0.8 * buffer)
    updates, state = tx.update({'w': jnp.array(g)}, state, params)
    params = optax.apply_updates(params, updates)
  assert float(params['w']) == pytest.approx(w, rel=1e-6)


def test_param_group_labels_take_the_first_matching_pattern():
  groups = optim.check_param_groups([{'pattern': r'norm/bias$'}, {'pattern': r'bias'}])
  labels = optim.param_group_labels(PARAMS, groups)
  assert labels == {'conv': {'kernel': 'default', 'bias': 'group1'}, 'norm': {'bias': 'group0', 'scale': 'default'}}


def test_frozen_group_and_lr_scale():
  config = make_config(learning_rate=0.1, momentum=0.0, param_groups=(
      {'pattern': r'^conv/kernel$', 'lr_scale': 0.0},
      {'pattern': r'^norm/bias$', 'lr_scale': 64.0},
  ))
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  new = one_update(tx, PARAMS, grads)
  np.testing.assert_allclose(new['conv']['kernel'], 1.0)  # Frozen.
  np.testing.assert_allclose(new['conv']['bias'], 1.0 - 0.1)
  np.testing.assert_allclose(new['norm']['bias'], 1.0 - 6.4)
  np.testing.assert_allclose(new['norm']['scale'], 1.0 - 0.1)


def test_weight_decay_masking_excludes_batchnorm_and_biases():
  config = make_config(learning_rate=0.1, momentum=0.0, weight_decay=0.5,
                       param_groups=({'pattern': r'bias|scale', 'weight_decay': False},))
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  new = one_update(tx, PARAMS, jax.tree.map(jnp.zeros_like, PARAMS))  # Zero gradients: only decay moves.
  np.testing.assert_allclose(new['conv']['kernel'], 1.0 - 0.1 * 0.5)
  for leaf in (new['conv']['bias'], new['norm']['bias'], new['norm']['scale']):
    np.testing.assert_allclose(leaf, 1.0)


@pytest.mark.parametrize('learning_rate', [0.1, 3.0])
def test_decoupled_weight_decay_ignores_learning_rate_and_lr_scale(learning_rate):
  config = make_config(learning_rate=learning_rate, momentum=0.0, weight_decay=0.01, weight_decay_mode='decoupled',
                       schedule='one_cycle', one_cycle_start=0.5, one_cycle_peak_at=0.5, one_cycle_end=0.5,
                       param_groups=({'pattern': r'^norm/', 'lr_scale': 64.0},))
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  new = one_update(tx, PARAMS, jax.tree.map(jnp.zeros_like, PARAMS))
  # The schedule is at half its peak, so the step decays by 0.5 * 0.01 in every group.
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 1.0 - 0.005, rtol=1e-6), new)


def test_coupled_weight_decay_scales_with_learning_rate():
  config = make_config(learning_rate=0.2, momentum=0.0, weight_decay=0.01)
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  new = one_update(tx, PARAMS, jax.tree.map(jnp.zeros_like, PARAMS))
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 1.0 - 0.2 * 0.01, rtol=1e-6), new)


def test_group_train_epochs_stops_updates():
  config = make_config(learning_rate=0.1, momentum=0.9, param_groups=({'pattern': r'^conv/bias$', 'train_epochs': 1},))
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 2), steps_per_epoch=2)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  after_epoch = one_update(tx, PARAMS, grads, steps=2)
  later = one_update(tx, PARAMS, grads, steps=5)
  np.testing.assert_allclose(later['conv']['bias'], after_epoch['conv']['bias'])
  assert float(later['conv']['kernel'][0]) < float(after_epoch['conv']['kernel'][0])
  with pytest.raises(ValueError, match='steps_per_epoch'):
    optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 2))


def test_bad_groups_and_modes_fail_with_the_values():
  with pytest.raises(ValueError, match=r'param_groups\[0\].*unknown: lr'):
    optim.create_optimizer(make_config(param_groups=({'pattern': 'x', 'lr': 2.0},)), optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match='Valid: coupled, decoupled'):
    optim.create_optimizer(make_config(weight_decay_mode='adamw'), optax.constant_schedule(0.1))
