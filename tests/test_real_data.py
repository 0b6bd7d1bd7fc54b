"""Training on real CIFAR-10 images and the end-to-end experiment script."""

import subprocess
import sys

import jax
import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from cnn_jax import data, metrics, models, optim, parallel, train
from cnn_jax.data import pipeline
from experiments.configs import default
from tests.conftest import REPO_ROOT


def test_image_folder_uses_cifar10_label_order(tiny_cifar_folder):
  split = data.sources.load_image_folder(str(tiny_cifar_folder), 'test')
  assert split.class_names[:3] == ('airplane', 'automobile', 'bird')
  assert split.images.shape == (100, 32, 32, 3)
  assert split.images.dtype == np.uint8
  assert np.bincount(split.labels).tolist() == [10] * 10


def test_short_run_beats_chance_on_real_images(small_cifar_folder):
  config = default.get_config()
  config.unlock()
  config.data.source = 'image_folder'
  config.data.data_dir = str(small_cifar_folder)
  config.data.cache_dir = ''
  config.optimizer.learning_rate = 0.01
  train_split, test_split = data.load_splits(config.data)
  assert len(test_split) == 1000

  mesh = parallel.create_mesh()
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, 80))
  model = models.create_model('simple_cnn', 10)
  state = train.create_train_state(model, tx, jax.random.key(0), (32, 32, 3))
  preprocess = train.make_preprocess(config.data)
  step = train.jit_train_step(preprocess)
  for epoch in range(5):  # 5 epochs of 79 batches: 395 steps.
    for batch in pipeline.train_batches(train_split, 64, 0, epoch, False):
      state, _ = step(state, parallel.shard_batch(batch, mesh), jax.random.key(0))

  result = train.evaluate(train.jit_eval_step(preprocess), state, test_split, 500, mesh)
  assert result['count'] == 1000
  assert result['accuracy'] > 0.30


def test_experiment_script_writes_checkpoints_and_events(tiny_cifar_folder, tmp_path):
  workdir = tmp_path / 'workdir'
  command = [
      sys.executable, str(REPO_ROOT / 'experiments' / 'cifar.py'),
      f'--workdir={workdir}',
      '--config.data.source=image_folder',
      f'--config.data.data_dir={tiny_cifar_folder}',
      '--config.data.cache_dir=',
      '--config.num_epochs=2',
      '--config.batch_size=32',
      '--config.log_every_steps=2',
  ]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Train Epoch: 1 [64/200 (32%)]' in result.stdout
  assert 'Epoch: 2 | train loss:' in result.stdout
  assert 'Compiling' in result.stdout

  # 200 images at batch 32: 7 steps per epoch, the last one partial.
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['14', '7']
  assert any(p.name.isdigit() for p in (workdir / 'best').iterdir())

  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  tags = set(events.Tags()['scalars'])
  assert {'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'learning_rate'} <= tags
  assert [e.step for e in events.Scalars('test_accuracy')] == [1, 2]
