"""Every recipe config trains on real images: a few steps, finite, with the loss going down."""

import importlib
import logging
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from cnn_jax import data, fast_cpu, models, optim, train
from tests.conftest import REPO_ROOT

RECIPES = ('simple_cnn', 'resnet18', 'resnet9', 'airbench94')


def recipe_config(name: str):
  return importlib.import_module(f'experiments.configs.{name}').get_config()


@pytest.fixture(scope='module')
def real_batch(tiny_cifar_folder):
  """32 real training images (a fixed random subset of all classes) as a host batch."""
  config = recipe_config('simple_cnn')
  config.data.source = 'image_folder'
  config.data.data_dir = str(tiny_cifar_folder)
  config.data.cache_dir = ''
  train_split, _ = data.load_splits(config.data)
  subset = train_split.take(32)
  return train_split, {'image': subset.images, 'label': subset.labels, 'mask': np.ones(32, np.float32)}


@pytest.mark.parametrize('name', RECIPES)
def test_recipe_trains_a_few_steps_on_real_images(name, real_batch):
  train_split, batch = real_batch
  config = recipe_config(name)
  # Four steps per "epoch": the test's steps run through the warmups and the
  # rising part of the one-cycle schedules, as a full run's first epochs do.
  steps_per_epoch, num_steps = 4, 8
  stats = data.pipeline.channel_stats(train_split.images)
  preprocess = train.make_preprocess(config.data, stats, steps_per_epoch)
  schedule = optim.create_learning_rate_schedule(config, steps_per_epoch)
  tx = optim.create_optimizer(config, schedule, steps_per_epoch)
  model = fast_cpu.specialize(models.create_model(config.model, 10, config.dtype, **config.model_options),
                              config.cpu_fast_path)
  averaging = train.weight_averaging(config, config.num_epochs * steps_per_epoch)
  init_images = preprocess(jax.random.key(0), train_split.images[:100], False)
  state = train.create_train_state(model, tx, jax.random.key(config.seed), (32, 32, 3), init_images,
                                   weight_averaging=averaging.enabled)
  step = train.jit_train_step(preprocess, config.label_smoothing, averaging)

  losses = []
  for _ in range(num_steps):
    state, sums = step(state, batch, jax.random.key(0))
    losses.append(float(sums['loss_sum']) / float(sums['count']))
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0], losses
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


@pytest.mark.parametrize('name', RECIPES)
def test_recipe_docstring_gives_command_accuracy_epochs_and_time(name):
  module = importlib.import_module(f'experiments.configs.{name}')
  doc = module.__doc__
  assert f'--config=experiments/configs/{name}.py' in doc
  assert 'Expected test accuracy' in doc and 'Epochs:' in doc
  assert re.search(r'[Mm]easured', doc)
  config = module.get_config()
  assert config.model in models.MODELS
  assert (Path(REPO_ROOT) / 'experiments' / 'configs' / f'{name}.py').is_file()


def test_airbench94_hyperparameters_are_the_published_ones():
  config = recipe_config('airbench94')
  # airbench94: lr 11.5 and wd 0.0153 per 1024 examples, divided by 1024 * (1 + 1 / (1 - 0.85)).
  assert config.optimizer.learning_rate == pytest.approx(1.5)
  assert config.optimizer.weight_decay == pytest.approx(0.0153 / (1 + 1 / 0.15))
  assert config.batch_size == 1024 and config.num_epochs <= 10
  assert config.label_smoothing == 0.2 and config.tta == 'flip_translate'
  assert config.data.alternating_flip and config.data.crop_padding == 2
  schedule = optim.create_learning_rate_schedule(config, 48)
  assert float(schedule(0)) == pytest.approx(0.3)
  assert float(schedule(int(0.23 * 480))) == pytest.approx(1.5)


def test_airbench94_end_to_end_with_whitening_init_and_tta(tiny_cifar_folder, tmp_path, caplog):
  config = recipe_config('airbench94')
  config.data.source = 'image_folder'
  config.data.data_dir = str(tiny_cifar_folder)
  config.data.cache_dir = ''
  config.batch_size = 50  # 200 training images: 4 steps per epoch.
  config.eval_batch_size = 50
  config.num_epochs = 2
  config.init_examples = 100
  caplog.set_level(logging.INFO)
  state = train.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert int(state.step) == 8
  match = re.search(r'Final test accuracy with flip_translate test-time augmentation: ([0-9.]+) \(loss ([0-9.]+)',
                    caplog.text)
  assert match and 0.0 <= float(match.group(1)) <= 1.0 and np.isfinite(float(match.group(2)))
  # The whitening kernel was computed from images (the random init is below 1/sqrt(12)).
  assert float(np.abs(np.asarray(state.params['whiten']['kernel'])).max()) > 1.0
