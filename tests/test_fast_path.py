"""The CPU fast path (cnn_jax/fast_cpu.py) computes what the plain XLA path computes."""

import functools
import io

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from cnn_jax import fast_cpu, metrics, models, optim, train
from experiments.configs import default

NHWC = ('NHWC', 'HWIO', 'NHWC')


def xla_conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=NHWC)


def normal(seed, shape, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(0.0, scale, shape), jnp.float32)


# (height, width, in channels, kernel, features, strip width): SimpleCNN's two
# layers, a strip that needs the input padded on the right, a 3x3 kernel.
CONV_CASES = [
    (32, 32, 3, 5, 6, 4),
    (14, 14, 6, 5, 16, 2),
    (13, 13, 4, 5, 8, 3),
    (10, 12, 5, 3, 4, 5),
]


@pytest.mark.parametrize('height, width, channels, size, features, strip', CONV_CASES)
def test_banded_conv_matches_xla_conv_and_its_gradients(height, width, channels, size, features, strip):
  x = normal(0, (2, height, width, channels))
  kernel = normal(1, (size, size, channels, features), 0.2)
  chex.assert_trees_all_close(fast_cpu.banded_conv(x, kernel, strip), xla_conv(x, kernel), atol=1e-5, rtol=1e-5)

  def loss(conv, x, kernel):
    return jnp.sum(jnp.sin(conv(x, kernel)))

  banded_grads = jax.grad(functools.partial(loss, lambda x, k: fast_cpu.banded_conv(x, k, strip)), (0, 1))(x, kernel)
  xla_grads = jax.grad(functools.partial(loss, xla_conv), (0, 1))(x, kernel)
  chex.assert_trees_all_close(banded_grads, xla_grads, atol=1e-4, rtol=1e-5)


def test_banded_conv_rejects_a_strip_that_does_not_divide_the_output():
  with pytest.raises(ValueError, match='block_width=3 does not divide the output width 28'):
    fast_cpu.banded_conv(jnp.zeros((1, 32, 32, 3)), jnp.zeros((5, 5, 3, 6)), 3)


def test_strip_width_fits_the_strip_and_leaves_wide_layers_to_xla():
  assert fast_cpu.strip_width(28, 6) == 4  # 24 outputs per row.
  assert fast_cpu.strip_width(10, 16) == 2  # 32 outputs per row.
  assert fast_cpu.strip_width(32, 64) is None  # Wider than a strip: XLA's convolution.
  assert fast_cpu.strip_width(7, 8) is None  # 7 pixels hold 56 values; single pixels gain nothing.


def test_max_pool_matches_nn_max_pool_and_its_gradient_with_ties():
  # Few distinct values, so most windows hold several equal maxima.
  x = jnp.asarray(np.random.default_rng(0).integers(-2, 3, (3, 8, 10, 4)), jnp.float32)
  cotangent = normal(1, (3, 4, 5, 4))

  def plain_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))

  chex.assert_trees_all_equal(fast_cpu.max_pool_2x2(x), plain_pool(x))
  _, fast_vjp = jax.vjp(fast_cpu.max_pool_2x2, x)
  _, plain_vjp = jax.vjp(plain_pool, x)
  chex.assert_trees_all_equal(fast_vjp(cotangent), plain_vjp(cotangent))


@pytest.mark.parametrize('height, channels, features', [(32, 3, 6), (14, 6, 16), (12, 2, 40)])
def test_conv_relu_pool_matches_plain_layers(height, channels, features):
  """Pooling before the bias and ReLU gives the same values, and the same gradients on tied windows."""
  rng = np.random.default_rng(0)
  # Small integers: sums are exact in float32, so windows tie exactly as in the plain layers.
  x = jnp.asarray(rng.integers(-2, 3, (2, height, height, channels)), jnp.float32)
  variables = {'params': {'kernel': jnp.asarray(rng.integers(-1, 2, (5, 5, channels, features)), jnp.float32),
                          'bias': jnp.asarray(rng.integers(-3, 4, (features,)), jnp.float32)}}
  fast = fast_cpu.BandedConvReluPool(features, (5, 5))
  plain = nn.Conv(features, (5, 5), padding='VALID')

  def plain_apply(variables, x):
    return nn.max_pool(nn.relu(plain.apply(variables, x)), (2, 2), strides=(2, 2))

  fast_out, fast_vjp = jax.vjp(jax.jit(fast.apply), variables, x)
  plain_out, plain_vjp = jax.vjp(jax.jit(plain_apply), variables, x)
  chex.assert_trees_all_equal(fast_out, plain_out)
  cotangent = normal(1, plain_out.shape)
  chex.assert_trees_all_close(fast_vjp(cotangent), plain_vjp(cotangent), atol=1e-5, rtol=1e-6)


def test_enabled_only_on_cpu_and_when_the_config_allows():
  assert fast_cpu.enabled(True, 'cpu')
  assert not fast_cpu.enabled(False, 'cpu')
  assert not fast_cpu.enabled(True, 'gpu')
  assert not fast_cpu.enabled(True, 'tpu')


def test_compiler_options_only_for_cpu_fast_path():
  assert fast_cpu.compiler_options(False, 'cpu') is None
  assert fast_cpu.compiler_options(True, 'gpu') is None
  assert fast_cpu.compiler_options(True, 'tpu') is None


def test_specialize_switches_only_models_that_have_a_fast_path():
  simple = models.create_model('simple_cnn', 10)
  assert fast_cpu.specialize(simple, True, 'cpu').cpu_fast_path
  assert not fast_cpu.specialize(simple, False, 'cpu').cpu_fast_path
  assert not fast_cpu.specialize(simple, True, 'gpu').cpu_fast_path
  without_fast_path = nn.Dense(3)
  assert fast_cpu.specialize(without_fast_path, True, 'cpu') is without_fast_path


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the compiler options are for the CPU backend')
@pytest.mark.parametrize('name, widths, size', [('airbench', (8, 16, 16), 32), ('resnet9', (8, 8, 16, 16), 16),
                                                ('resnet18', (8, 8, 16, 16), 16)])
def test_fast_compiler_options_give_same_gradients(name, widths, size):
  options = fast_cpu.compiler_options(True, 'cpu')
  if options is None:
    pytest.skip('this jax or XLA does not accept the fast path\'s compiler options')
  model = models.create_model(name, 10, widths=widths)
  variables = model.init(jax.random.key(0), jnp.zeros((2, size, size, 3)))
  x = jax.random.normal(jax.random.key(1), (4, size, size, 3))

  def grads(params):
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
      return jnp.sum(logits ** 2)

    return jax.grad(loss)(params)

  fast = jax.jit(grads, compiler_options=options)
  assert '__ynn_fusion' not in fast.lower(variables['params']).compile().as_text()
  # Gradients are of order 1, and the two compilations add the same products in other orders.
  chex.assert_trees_all_close(fast(variables['params']), jax.jit(grads)(variables['params']), rtol=1e-4, atol=1e-4)


def make_states():
  config = default.get_config()
  config.unlock()
  config.optimizer.learning_rate = 0.01
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 10))
  plain = models.create_model('simple_cnn', 10)
  fast = fast_cpu.specialize(plain, True, 'cpu')
  key = jax.random.key(0)
  return (train.create_train_state(plain, tx, key, (32, 32, 3)),
          train.create_train_state(fast, tx, key, (32, 32, 3)), config)


def random_batch(seed, batch_size=16):
  rng = np.random.default_rng(seed)
  mask = np.ones(batch_size, np.float32)
  mask[-3:] = 0.0  # A padded tail, as in the last batch of an epoch.
  return {
      'image': rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8),
      'label': rng.integers(0, 10, (batch_size,), dtype=np.int32),
      'mask': mask,
  }


def test_simple_cnn_fast_path_has_the_same_parameters_and_logits():
  plain_state, fast_state, _ = make_states()
  chex.assert_trees_all_equal(plain_state.params, fast_state.params)
  images = normal(2, (8, 32, 32, 3))
  variables = {'params': plain_state.params}
  chex.assert_trees_all_close(fast_state.apply_fn(variables, images), plain_state.apply_fn(variables, images),
                              atol=1e-6, rtol=1e-5)


def test_fast_train_step_matches_plain_train_step_on_the_same_batch():
  plain_state, fast_state, config = make_states()
  step = jax.jit(functools.partial(train.train_step, preprocess=train.make_preprocess(config.data)))
  batch, key = random_batch(0), jax.random.key(1)
  plain_state, plain_sums = step(plain_state, batch, key)
  fast_state, fast_sums = step(fast_state, batch, key)
  chex.assert_trees_all_close(fast_state.params, plain_state.params, atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(fast_state.opt_state, plain_state.opt_state, atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(fast_sums, plain_sums, atol=1e-5, rtol=1e-5)


def test_fast_and_plain_training_stay_together_over_many_steps():
  plain_state, fast_state, config = make_states()
  step = jax.jit(functools.partial(train.train_step, preprocess=train.make_preprocess(config.data)),
                 donate_argnums=0)
  key = jax.random.key(1)
  for seed in range(30):
    batch = random_batch(seed)
    plain_state, plain_sums = step(plain_state, batch, key)
    fast_state, fast_sums = step(fast_state, batch, key)
  chex.assert_trees_all_close(fast_state.params, plain_state.params, atol=1e-5, rtol=1e-4)
  chex.assert_trees_all_close(fast_sums, plain_sums, atol=1e-4, rtol=1e-5)


@pytest.fixture
def compiled_functions():
  """Names of the functions XLA compiles while the test runs."""
  names = []

  def listener(event, duration, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration':
      names.append(kwargs.get('fun_name', ''))

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield names
  jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the fast path runs on the CPU backend only')
def test_training_run_uses_the_fast_path_and_compiles_the_train_step_once(
    tiny_cifar_folder, tmp_path, monkeypatch, compiled_functions):
  banded_calls = []
  banded_conv = fast_cpu.banded_conv

  def counting_banded_conv(*args):
    banded_calls.append(args[2])
    return banded_conv(*args)

  monkeypatch.setattr(fast_cpu, 'banded_conv', counting_banded_conv)
  config = default.get_config()
  config.unlock()
  config.data.source, config.data.data_dir, config.data.cache_dir = 'image_folder', str(tiny_cifar_folder), ''
  config.batch_size, config.eval_batch_size, config.num_epochs, config.log_every_steps = 64, 50, 2, 2
  config.checkpoint.async_save = False

  state = train.train_and_evaluate(config, str(tmp_path), metrics.Writers(None, stream=io.StringIO(),
                                                                          progress_bar=False))
  assert int(state.step) == 8  # 200 images, batch 64: 4 steps an epoch, the last one padded.
  assert config.cpu_fast_path and banded_calls  # The step was traced with the banded convolutions.
  assert compiled_functions.count('jit(train_step)') == 1
