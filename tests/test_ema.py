"""Weight averaging (EMA and lookahead) in cnn_jax.ema and the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import ema, models, optim, train
from experiments.configs import default


def tree(value):
  return {'params': {'w': jnp.full((2,), value)}, 'batch_stats': {'mean': jnp.full((1,), value)}}


def test_lerp():
  out = ema.lerp(tree(1.0), tree(3.0), 0.75)
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 1.5), out)


def test_decay_warms_up_with_the_power():
  averaging = ema.WeightAveraging('lookahead', decay=0.95, every_steps=5, warmup_power=3.0, total_steps=100)
  assert float(averaging.decay_at(100)) == pytest.approx(0.95**5)
  assert float(averaging.decay_at(50)) == pytest.approx(0.95**5 * 0.125)
  assert float(averaging.decay_at(0)) == 0.0


def test_ema_updates_the_average_on_schedule_and_leaves_the_weights():
  averaging = ema.WeightAveraging('ema', decay=0.5, every_steps=2, total_steps=10)
  weights, average = ema.update(averaging, jnp.array(3), tree(4.0), tree(0.0))
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 0.0), average)  # Step 3: off schedule.
  weights, average = ema.update(averaging, jnp.array(4), tree(4.0), tree(0.0))
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 4.0 * (1 - 0.25)), average)  # 0.5**2 per 2 steps.
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 4.0), weights)


def test_lookahead_resets_weights_on_schedule_and_at_the_end():
  averaging = ema.WeightAveraging('lookahead', decay=0.5, every_steps=4, total_steps=10)
  weights, average = ema.update(averaging, jnp.array(3), tree(4.0), tree(0.0))
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 4.0), weights)
  weights, average = ema.update(averaging, jnp.array(8), tree(4.0), tree(0.0))
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 4.0 * (1 - 0.5**4)), weights)
  jax.tree.map(np.testing.assert_allclose, weights, average)
  # The last step is off schedule (10 % 4 != 0): the weights become the average unchanged.
  weights, average = ema.update(averaging, jnp.array(10), tree(4.0), tree(1.0))
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 1.0), weights)
  jax.tree.map(lambda leaf: np.testing.assert_allclose(leaf, 1.0), average)


def test_unknown_mode_lists_valid_ones():
  with pytest.raises(ValueError, match='Valid: none, ema, lookahead'):
    ema.WeightAveraging('swa')


def _state_and_batch():
  config = default.get_config()
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  model = models.create_model('resnet9', 10, widths=(8, 8, 8, 8))
  state = train.create_train_state(model, tx, jax.random.key(0), (16, 16, 3), weight_averaging=True)
  rng = np.random.default_rng(0)
  batch = {
      'image': rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
      'label': rng.integers(0, 10, (4,), dtype=np.int32),
      'mask': np.ones(4, np.float32),
  }
  return config, state, batch


def test_train_step_keeps_an_ema_of_params_and_batch_stats():
  config, state, batch = _state_and_batch()
  averaging = ema.WeightAveraging('ema', decay=0.9, every_steps=1, total_steps=10)
  step = train.jit_train_step(train.make_preprocess(config.data), averaging=averaging)
  initial = jax.tree.map(np.array, {'params': state.params, 'batch_stats': state.batch_stats})
  state, _ = step(state, batch, jax.random.key(0))
  expected = ema.lerp(initial, {'params': state.params, 'batch_stats': state.batch_stats}, 0.9)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.weight_average, expected)
  assert not np.allclose(state.weight_average['batch_stats']['prep']['BatchNorm_0']['mean'],
                         state.batch_stats['prep']['BatchNorm_0']['mean'])


def test_eval_step_can_use_the_average():
  config, state, batch = _state_and_batch()
  preprocess = train.make_preprocess(config.data)
  shifted = state.replace(weight_average=jax.tree.map(lambda x: x * 0.5, state.weight_average))
  plain = train.eval_step(shifted, batch, preprocess=preprocess)
  averaged = train.eval_step(shifted, batch, preprocess=preprocess, use_average=True)
  assert float(plain['loss_sum']) != pytest.approx(float(averaged['loss_sum']))
  half = state.replace(params=shifted.weight_average['params'], batch_stats=shifted.weight_average['batch_stats'])
  assert float(averaged['loss_sum']) == pytest.approx(float(train.eval_step(half, batch, preprocess=preprocess)['loss_sum']))
