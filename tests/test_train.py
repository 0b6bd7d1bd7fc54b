import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models, train
from cnn_jax.data import pipeline
from cnn_jax.data.sources import Split
from experiments.configs import default


def make_state(learning_rate=0.01):
  config = default.get_config()
  config.unlock()
  config.optimizer.learning_rate = learning_rate
  from cnn_jax import optim

  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  model = models.create_model('simple_cnn', 10)
  return train.create_train_state(model, tx, jax.random.key(0), (32, 32, 3)), config


def random_batch(seed, batch_size=8):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8),
      'label': rng.integers(0, 10, (batch_size,), dtype=np.int32),
      'mask': np.ones(batch_size, np.float32),
  }


def tree_equal(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def test_train_step_is_pure_and_deterministic():
  state, config = make_state()
  preprocess = train.make_preprocess(config.data)
  step = jax.jit(functools.partial(train.train_step, preprocess=preprocess))
  batch = random_batch(0)
  params_before = jax.tree.map(np.array, state.params)

  state_a, metrics_a = step(state, batch, jax.random.key(1))
  state_b, metrics_b = step(state, batch, jax.random.key(1))

  assert tree_equal(state_a.params, state_b.params)
  assert tree_equal(metrics_a, metrics_b)
  assert tree_equal(state.params, params_before)
  assert not tree_equal(state_a.params, params_before)
  assert int(state_a.step) == 1


def test_jitted_and_plain_train_step_agree():
  state, config = make_state()
  preprocess = train.make_preprocess(config.data)
  batch = random_batch(0)
  plain_state, plain_metrics = train.train_step(state, batch, jax.random.key(1), preprocess=preprocess)
  jit_state, jit_metrics = jax.jit(functools.partial(train.train_step, preprocess=preprocess))(
      state, batch, jax.random.key(1))
  chex.assert_trees_all_close(plain_state.params, jit_state.params, atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(plain_metrics, jit_metrics, atol=1e-5, rtol=1e-5)


def test_train_step_compiles_once():
  state, config = make_state()
  preprocess = train.make_preprocess(config.data)

  @chex.assert_max_traces(n=1)
  def train_step(state, batch, key):
    return train.train_step(state, batch, key, preprocess=preprocess)

  step = jax.jit(train_step, donate_argnums=0)
  for seed in range(3):
    state, _ = step(state, random_batch(seed), jax.random.key(1))
  assert int(state.step) == 3


def test_train_step_lowers_loss_on_fixed_batch():
  state, config = make_state(learning_rate=0.05)
  step = train.jit_train_step(train.make_preprocess(config.data))
  batch = random_batch(0, batch_size=32)
  _, first = step(state, batch, jax.random.key(0))
  state, _ = make_state(learning_rate=0.05)
  for _ in range(100):
    state, last = step(state, batch, jax.random.key(0))
  # 32 random images with random labels: the step must be able to memorize them.
  assert float(last['loss_sum']) < 0.25 * float(first['loss_sum'])


def test_masked_examples_do_not_change_gradient():
  state, config = make_state()
  preprocess = train.make_preprocess(config.data)
  full = random_batch(0, batch_size=8)
  padded = {k: v.copy() for k, v in full.items()}
  padded['image'][6:] = 255
  padded['label'][6:] = 3
  padded['mask'][6:] = 0
  short = {k: v[:6] for k, v in full.items()}
  state_padded, metrics_padded = train.train_step(state, padded, jax.random.key(1), preprocess=preprocess)
  state_short, _ = train.train_step(state, short, jax.random.key(1), preprocess=preprocess)
  chex.assert_trees_all_close(state_padded.params, state_short.params, atol=1e-6)
  assert float(metrics_padded['count']) == 6


def test_eval_counts_every_example_once():
  state, config = make_state()
  rng = np.random.default_rng(0)
  split = Split(
      rng.integers(0, 256, (1003, 32, 32, 3), dtype=np.uint8),
      rng.integers(0, 10, (1003,), dtype=np.int32),
      tuple(str(i) for i in range(10)),
  )
  from cnn_jax import parallel

  mesh = parallel.create_mesh()
  eval_step = train.jit_eval_step(train.make_preprocess(config.data))
  batched = train.evaluate(eval_step, state, split, 64, mesh)
  single = train.evaluate(eval_step, state, split, 1003, mesh)
  assert batched['count'] == 1003
  assert single['count'] == 1003
  assert batched['accuracy'] == pytest.approx(single['accuracy'], abs=1e-9)
  assert batched['loss'] == pytest.approx(single['loss'], rel=1e-5)


def test_pipeline_pads_last_batch():
  split = Split(np.zeros((10, 4, 4, 3), np.uint8), np.arange(10, dtype=np.int32), ('a',))
  batches = list(pipeline.train_batches(split, 4, seed=0, epoch=0, drop_remainder=False))
  assert len(batches) == 3
  assert batches[-1]['mask'].tolist() == [1, 1, 0, 0]
  seen = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
  assert sorted(seen.tolist()) == list(range(10))
  dropped = list(pipeline.train_batches(split, 4, seed=0, epoch=0, drop_remainder=True))
  assert len(dropped) == 2


def test_batch_order_depends_on_seed_and_epoch_only():
  split = Split(np.zeros((100, 4, 4, 3), np.uint8), np.arange(100, dtype=np.int32), ('a',))
  first = [b['label'] for b in pipeline.train_batches(split, 10, 0, 3, True)]
  again = [b['label'] for b in pipeline.train_batches(split, 10, 0, 3, True)]
  resumed = [b['label'] for b in pipeline.train_batches(split, 10, 0, 3, True, start_batch=4)]
  other_seed = [b['label'] for b in pipeline.train_batches(split, 10, 1, 3, True)]
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert all(np.array_equal(a, b) for a, b in zip(first[4:], resumed))
  assert not np.array_equal(first[0], other_seed[0])
