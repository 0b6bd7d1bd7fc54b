"""Images per second of each input pipeline, next to what the SimpleCNN train step consumes.

  python scripts/benchmark_input.py \
    --config.data.source=image_folder --config.data.data_dir=../shared/data/cifar10-jpeg

Measures, on the data that the config names (the train split):

- the jitted train step of the config's model, with batches already on the
  device, without and with augmentation (the in_memory pipeline augments there);
- the in_memory pipeline: batches gathered on the device (and augmented by the
  same jitted code the train step runs, for the augmented row);
- the tf_data pipeline over the loaded arrays, batches placed on the device;
- with --tfds_copy_dir, the tf_data pipeline streaming a TFDS copy of the data
  from disk (the copy is written there on the first run).

Each figure is the best of 3 timed runs, until the batches are on the device
and ready; other work on the machine only lowers figures. The last line
says how many times the train step the config's own pipeline feeds.
"""

import itertools
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax import data, models, optim, parallel, train  # noqa: E402
from cnn_jax.data import augment, pipeline  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments', 'configs',
                           'default.py'), 'Training configuration file.', lock_config=False)
_BATCHES = flags.DEFINE_integer('batches', 400, 'Batches timed per pipeline, after the warm-up.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Train steps timed, after the warm-up.')
_WARMUP = flags.DEFINE_integer('warmup', 20, 'Batches or steps run before timing (compilation, tf.data start).')
_TFDS_COPY_DIR = flags.DEFINE_string(
    'tfds_copy_dir', '', 'Also time tf.data streaming a TFDS copy of the data kept in this folder.')
TFDS_COPY_NAME = 'cnn_jax_benchmark_copy'
REPEATS = 3


def timed_images_per_second(batches, count: int, warmup: int, batch_size: int) -> float:
  """Images/s of an iterator: the best of REPEATS runs of `count` batches, after `warmup` batches.

  The best run is the one least disturbed by other work on the machine.
  """
  for _ in range(warmup):
    jax.block_until_ready(next(batches))
  best = 0.0
  for _ in range(REPEATS):
    start = time.perf_counter()
    for _ in range(count):
      last = next(batches)
    jax.block_until_ready(last)
    best = max(best, count * batch_size / (time.perf_counter() - start))
  return best


def endless(make_epoch):
  """Batches of epoch 0, 1, 2, ... without end."""
  epoch = 0
  while True:
    yield from make_epoch(epoch)
    epoch += 1


def train_step_rate(config, inputs: pipeline.InputPipeline, augmented: bool) -> float:
  """Images/s that the jitted train step consumes, with its batches already on the device."""
  config = config.copy_and_resolve_references()
  config.data.crop_padding, config.data.random_flip = (4, True) if augmented else (0, False)
  config.data.pipeline = 'in_memory'
  tx = optim.create_optimizer(config, optim.create_learning_rate_schedule(config, inputs.steps_per_epoch))
  model = models.create_model(config.model, len(inputs.class_names), config.dtype)
  mesh = parallel.create_mesh()
  state = jax.device_put(train.create_train_state(model, tx, jax.random.key(0), inputs.image_shape),
                         parallel.replicated(mesh))
  step = train.jit_train_step(train.make_preprocess(config.data, inputs.stats))
  batches = list(itertools.islice(inputs.train_batches(0), 16))
  key = jax.random.key(1)
  for i in range(_WARMUP.value):
    state, sums = step(state, batches[i % len(batches)], key)
  jax.block_until_ready(sums)
  best = 0.0
  for _ in range(REPEATS):
    start = time.perf_counter()
    for i in range(_STEPS.value):
      state, sums = step(state, batches[i % len(batches)], key)
    jax.block_until_ready(sums)
    best = max(best, _STEPS.value * config.batch_size / (time.perf_counter() - start))
  return best


def in_memory_rates(config, splits, mesh) -> dict[str, float]:
  inputs = pipeline.InMemoryPipeline(*splits, config.data, config.batch_size, config.eval_batch_size,
                                     config.seed, mesh)
  plain = timed_images_per_second(endless(inputs.train_batches), _BATCHES.value, _WARMUP.value, config.batch_size)
  # The augmentation of the train step, with its per-step key.
  augment_step = jax.jit(lambda key, step, images: augment.augment_batch(
      jax.random.fold_in(key, step), images, 4, 'reflect', True))
  key = jax.random.key(0)

  def augmented_epoch(epoch):
    for index, batch in enumerate(inputs.train_batches(epoch)):
      yield {**batch, 'image': augment_step(key, index, batch['image'])}

  augmented = timed_images_per_second(endless(augmented_epoch), _BATCHES.value, _WARMUP.value, config.batch_size)
  return {'off': plain, 'on': augmented}


def tf_data_rates(config, mesh, splits=None) -> dict[str, float]:
  from cnn_jax.data import tfdata

  rates = {}
  for name, (pad, flip) in (('off', (0, False)), ('on', (4, True))):
    data_config = config.data.copy_and_resolve_references()
    data_config.crop_padding, data_config.random_flip, data_config.pipeline = pad, flip, 'tf_data'
    inputs = tfdata.TfDataPipeline(data_config, config.batch_size, config.eval_batch_size, config.seed, mesh,
                                   splits=splits)
    rates[name] = timed_images_per_second(
        endless(inputs.train_batches), _BATCHES.value, _WARMUP.value, config.batch_size)
  return rates


def write_tfds_copy(splits, data_dir: str) -> None:
  """Store the loaded splits as a prepared TFDS data set, once."""
  import tensorflow_datasets as tfds

  from cnn_jax.data import tfdata

  if os.path.isdir(os.path.join(data_dir, TFDS_COPY_NAME)):
    return
  tf = tfdata.import_tensorflow()
  print(f'Writing a TFDS copy of the data to {data_dir} (once) ...', flush=True)
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=splits[0].images.shape[1:]),
      'label': tfds.features.ClassLabel(names=splits[0].class_names),
  })
  tfds.dataset_builders.store_as_tfds_dataset(
      name=TFDS_COPY_NAME, version='1.0.0', features=features, data_dir=data_dir,
      split_datasets={
          name: tf.data.Dataset.from_tensor_slices({'image': s.images, 'label': s.labels})
          for name, s in zip(('train', 'test'), splits)
      },
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.basicConfig(level=logging.WARNING, format='%(message)s', force=True)
  logging.getLogger('absl').setLevel(logging.ERROR)
  config = _CONFIG.value
  mesh = parallel.create_mesh()
  start = time.perf_counter()
  splits = data.load_splits(config.data)
  print(f'Data: {config.data.source} {config.data.data_dir or config.data.name}: {len(splits[0])} train images '
        f'{splits[0].images.shape[1:]}, loaded in {time.perf_counter() - start:.1f} s.')
  print(f'Machine: {jax.default_backend()} backend, {jax.device_count()} devices, {os.cpu_count()} CPUs; '
        f'model {config.model}, batch {config.batch_size}.\n')

  in_memory_inputs = pipeline.InMemoryPipeline(*splits, config.data, config.batch_size,
                                               config.eval_batch_size, config.seed, mesh)
  step = {name: train_step_rate(config, in_memory_inputs, name == 'on') for name in ('off', 'on')}
  rows = [('train step (consumes)', step)]
  rows.append(('in_memory', in_memory_rates(config, splits, mesh)))
  rows.append(('tf_data (arrays in memory)', tf_data_rates(config, mesh, splits)))
  if _TFDS_COPY_DIR.value:
    write_tfds_copy(splits, _TFDS_COPY_DIR.value)
    tfds_config = config.copy_and_resolve_references()
    tfds_config.data.source, tfds_config.data.name = 'tfds', TFDS_COPY_NAME
    tfds_config.data.data_dir = _TFDS_COPY_DIR.value
    rows.append(('tf_data (TFDS streamed)', tf_data_rates(tfds_config, mesh)))

  print(f'{"images/s":<28}{"no augmentation":>18}{"crop+flip":>18}')
  for name, rates in rows:
    cells = ''.join(
        f'{rates[k]:>10,.0f}' + (f' ({rates[k] / step[k]:>4.1f}x)' if name != rows[0][0] else ' ' * 8)
        for k in ('off', 'on'))
    print(f'{name:<28}{cells}')
  augmenting = 'on' if config.data.crop_padding > 0 or config.data.random_flip else 'off'
  default_name = 'in_memory' if config.data.pipeline == 'in_memory' else 'tf_data (arrays in memory)'
  ratio = dict(rows)[default_name][augmenting] / step[augmenting]
  print(f'\nThe config\'s pipeline ({config.data.pipeline}, augmentation {augmenting}) delivers {ratio:.1f}x what '
        f'the train step consumes' + (' (at least 5x: the step never waits).' if ratio >= 5 else ' (below 5x).'))


if __name__ == '__main__':
  app.run(main)
