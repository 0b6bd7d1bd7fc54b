"""Batch order, resume, evaluation coverage and augmentation of both pipelines."""

import jax
import numpy as np
import pytest

from cnn_jax import data, parallel
from cnn_jax.data import augment, pipeline
from cnn_jax.data.sources import Split
from experiments.configs import default

PIPELINES = ['in_memory', 'tf_data']


def data_config(**overrides):
  config = default.get_config().data
  config.unlock()
  config.cache_dir = ''
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def real_splits(tiny_cifar_folder) -> tuple[Split, Split]:
  """200 train and 100 test real CIFAR-10 images."""
  return data.load_splits(data_config(source='image_folder', data_dir=str(tiny_cifar_folder)))


def build(kind: str, splits, batch_size=32, eval_batch_size=64, seed=0, **overrides) -> pipeline.InputPipeline:
  config = data_config(pipeline=kind, **overrides)
  mesh = parallel.create_mesh()
  if kind == 'in_memory':
    return pipeline.InMemoryPipeline(*splits, config, batch_size, eval_batch_size, seed, mesh)
  from cnn_jax.data import tfdata

  return tfdata.TfDataPipeline(config, batch_size, eval_batch_size, seed, mesh, splits=splits)


def host(batches) -> list[dict[str, np.ndarray]]:
  return [jax.tree.map(np.asarray, b) for b in batches]


def assert_same_batches(a, b) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batch_rebuilds_from_seed_and_step():
  for drop_remainder in (False, True):
    uninterrupted = np.concatenate(
        [pipeline.epoch_order(103, 10, 7, epoch, drop_remainder) for epoch in range(3)])
    for step, expected in enumerate(uninterrupted):
      np.testing.assert_array_equal(pipeline.batch_indices(103, 10, 7, step, drop_remainder), expected)
  first_epoch = pipeline.epoch_order(103, 10, 7, 0, False).ravel()
  assert sorted(first_epoch[first_epoch >= 0].tolist()) == list(range(103))
  assert not np.array_equal(pipeline.epoch_order(103, 10, 7, 0, False), pipeline.epoch_order(103, 10, 7, 1, False))
  assert not np.array_equal(pipeline.epoch_order(103, 10, 7, 0, False), pipeline.epoch_order(103, 10, 8, 0, False))


def test_in_memory_batches_equal_host_batches(real_splits):
  train, test = real_splits
  batches = build('in_memory', real_splits)
  for epoch in (0, 1):
    assert_same_batches(host(batches.train_batches(epoch)), list(pipeline.train_batches(train, 32, 0, epoch, False)))
  assert_same_batches(host(batches.eval_batches()), list(pipeline.eval_batches(test, 64)))


def test_in_memory_batches_stay_on_the_devices(real_splits):
  batch = next(build('in_memory', real_splits).train_batches(0))
  assert isinstance(batch['image'], jax.Array)
  assert batch['image'].dtype == np.uint8
  assert batch['image'].shape == (32, 32, 32, 3)
  assert batch['image'].sharding == parallel.batch_sharded(parallel.create_mesh())


def test_tf_data_matches_in_memory_unaugmented(real_splits):
  in_memory, tf_data = build('in_memory', real_splits), build('tf_data', real_splits)
  for epoch in (0, 3):
    assert_same_batches(host(tf_data.train_batches(epoch)), host(in_memory.train_batches(epoch)))
  assert_same_batches(host(tf_data.eval_batches()), host(in_memory.eval_batches()))


@pytest.mark.parametrize('kind', PIPELINES)
def test_same_seed_same_batches_other_seed_other_batches(real_splits, kind):
  options = dict(crop_padding=4, random_flip=True)
  first = host(build(kind, real_splits, seed=5, **options).train_batches(2))
  again = host(build(kind, real_splits, seed=5, **options).train_batches(2))
  other = host(build(kind, real_splits, seed=6, **options).train_batches(2))
  assert_same_batches(first, again)
  assert not np.array_equal(first[0]['label'], other[0]['label'])


@pytest.mark.parametrize('kind', PIPELINES)
def test_resume_mid_epoch_repeats_the_remaining_batches(real_splits, kind):
  batches = build(kind, real_splits, crop_padding=2, random_flip=True)
  uninterrupted = host(batches.train_batches(1))
  resumed = host(build(kind, real_splits, crop_padding=2, random_flip=True).train_batches(1, first_batch=4))
  assert len(uninterrupted) == 7
  assert_same_batches(resumed, uninterrupted[4:])


@pytest.mark.parametrize('kind', PIPELINES)
@pytest.mark.parametrize('drop_remainder', [False, True])
def test_last_partial_batch_kept_or_dropped(real_splits, kind, drop_remainder):
  train, _ = real_splits
  batches = host(build(kind, real_splits, batch_size=64, drop_remainder=drop_remainder).train_batches(0))
  masks = np.stack([b['mask'] for b in batches])
  if drop_remainder:
    assert masks.shape == (3, 64)
    assert masks.all()
  else:
    assert masks.shape == (4, 64)
    assert masks.sum() == len(train)
    assert masks[-1].tolist() == [1.0] * 8 + [0.0] * 56
  seen = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
  assert len(seen) == int(masks.sum())


@pytest.mark.parametrize('kind', PIPELINES)
def test_evaluation_covers_every_example_once_and_never_augments(real_splits, kind):
  _, test = real_splits
  batches = host(build(kind, real_splits, eval_batch_size=48, crop_padding=4, random_flip=True).eval_batches())
  masks = np.concatenate([b['mask'] for b in batches])
  assert len(batches) == 3
  assert masks.sum() == len(test)
  images = np.concatenate([b['image'] for b in batches])[masks > 0]
  labels = np.concatenate([b['label'] for b in batches])[masks > 0]
  np.testing.assert_array_equal(images, test.images)
  np.testing.assert_array_equal(labels, test.labels)


def test_channel_stats_are_the_training_split_statistics(real_splits):
  train, _ = real_splits
  stats = pipeline.channel_stats(train.images)
  pixels = train.images.reshape(-1, 3).astype(np.float64) / 255
  np.testing.assert_allclose(stats.mean, pixels.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.std, pixels.std(0), rtol=1e-12)
  standardized = np.asarray(augment.normalize(train.images, 'standardize', stats.mean, stats.std), np.float64)
  np.testing.assert_allclose(standardized.reshape(-1, 3).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(standardized.reshape(-1, 3).std(0), 1, atol=1e-5)


@pytest.mark.parametrize('kind', PIPELINES)
def test_pipelines_compute_stats_only_for_standardize(real_splits, kind):
  assert build(kind, real_splits).stats is None
  stats = build(kind, real_splits, normalization='standardize').stats
  assert stats == pipeline.channel_stats(real_splits[0].images)


@pytest.mark.parametrize('field,value,message', [
    ('pipeline', 'torch', "pipeline='torch'"),
    ('crop_mode', 'edge', "crop_mode='edge'"),
    ('crop_padding', 32, 'crop_padding=32'),
    ('normalization', 'imagenet', "normalization='imagenet'"),
])
def test_bad_pipeline_settings_fail_fast(field, value, message):
  with pytest.raises(ValueError, match=message):
    pipeline.check_data_config(data_config(**{field: value}))


# Augmentation statistics: every augmented image is matched to the crop offset
# and flip that produced it from its source image.


def recover_offsets_and_flips(augmented_BxHxWxC, source_BxHxWxC, pad: int, mode: str):
  padded = np.pad(source_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                  mode='reflect' if mode == 'reflect' else 'constant')
  height, width = source_BxHxWxC.shape[1:3]
  offsets, flips = np.full((len(source_BxHxWxC), 2), -1), np.full(len(source_BxHxWxC), -1)
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[:, dy:dy + height, dx:dx + width]
      for flip, candidate in ((0, crop), (1, crop[:, :, ::-1])):
        match = (augmented_BxHxWxC == candidate).all(axis=(1, 2, 3))
        offsets[match] = (dy, dx)
        flips[match] = flip
  assert (flips >= 0).all(), 'an augmented image is no crop of its source'
  return offsets, flips


def jax_augmented(images, pad, mode):
  step = jax.jit(augment.augment_batch, static_argnums=(2, 3, 4))
  batches = np.array_split(np.arange(len(images)), len(images) // 256)
  return np.concatenate([
      np.asarray(step(jax.random.fold_in(jax.random.key(0), i), images[rows], pad, mode, True))
      for i, rows in enumerate(batches)
  ])


def tf_data_augmented(images, pad, mode):
  split = Split(images, np.zeros(len(images), np.int32), ('a',))
  batches = build('tf_data', (split, split), batch_size=256, crop_padding=pad, crop_mode=mode, random_flip=True)
  order = pipeline.epoch_order(len(images), 256, 0, 0, False).ravel()
  return np.concatenate([b['image'] for b in batches.train_dataset(0).as_numpy_iterator()]), images[order]


@pytest.mark.parametrize('mode', ['reflect', 'zeros'])
def test_pipelines_share_augmentation_statistics(mode):
  pad, count = 4, 4096
  images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), np.uint8)
  tf_images, tf_sources = tf_data_augmented(images, pad, mode)
  jax_images = jax_augmented(images, pad, mode)
  results = {}
  for name, augmented, sources in (('jax', jax_images, images), ('tf_data', tf_images, tf_sources)):
    assert augmented.shape == images.shape
    assert augmented.dtype == np.uint8
    offsets, flips = recover_offsets_and_flips(augmented, sources, pad, mode)
    assert offsets.min() >= 0  # Moved by at most the pad.
    assert offsets.max() <= 2 * pad
    # 4,096 fair coin flips: the rate is within 0.05 of 1/2 with overwhelming probability.
    assert abs(flips.mean() - 0.5) < 0.05, (name, flips.mean())
    frequencies = np.stack([np.bincount(offsets[:, axis], minlength=2 * pad + 1) / count for axis in (0, 1)])
    np.testing.assert_allclose(frequencies, 1 / (2 * pad + 1), atol=0.03, err_msg=name)
    results[name] = (flips.mean(), frequencies)
  assert abs(results['jax'][0] - results['tf_data'][0]) < 0.06
  np.testing.assert_allclose(results['jax'][1], results['tf_data'][1], atol=0.04)


def test_augmentation_off_leaves_images_alone(real_splits):
  train, _ = real_splits
  same = augment.augment_batch(jax.random.key(0), train.images[:64], 0, 'reflect', False)
  np.testing.assert_array_equal(np.asarray(same), train.images[:64])


def test_train_step_augments_only_for_in_memory(real_splits):
  from cnn_jax import train

  images = real_splits[0].images[:64]
  key = jax.random.key(0)
  plain = np.asarray(augment.normalize(images, 'minus_one_to_one'))
  for kind, augments in (('in_memory', True), ('tf_data', False)):
    preprocess = train.make_preprocess(data_config(pipeline=kind, crop_padding=4, random_flip=True))
    np.testing.assert_array_equal(np.asarray(preprocess(key, images, False)), plain)  # Evaluation.
    trained = np.asarray(preprocess(key, images, True))
    assert trained.min() >= -1.0
    assert trained.max() <= 1.0
    assert (not np.array_equal(trained, plain)) == augments, kind


def test_standardize_needs_the_training_stats(real_splits):
  from cnn_jax import train

  with pytest.raises(ValueError, match='standardize needs the mean and std of the training split'):
    train.make_preprocess(data_config(normalization='standardize'))
  stats = pipeline.channel_stats(real_splits[0].images)
  preprocess = train.make_preprocess(data_config(normalization='standardize'), stats)
  standardized = np.asarray(preprocess(jax.random.key(0), real_splits[0].images, False), np.float64)
  np.testing.assert_allclose(standardized.reshape(-1, 3).mean(0), 0, atol=1e-5)


@pytest.mark.parametrize('kind', PIPELINES)
def test_create_input_pipeline_from_config(tiny_cifar_folder, kind):
  config = data_config(source='image_folder', data_dir=str(tiny_cifar_folder), pipeline=kind)
  inputs = pipeline.create_input_pipeline(config, 32, 64, 0, parallel.create_mesh())
  assert inputs.num_train == 200
  assert inputs.num_test == 100
  assert inputs.steps_per_epoch == 7
  assert inputs.image_shape == (32, 32, 3)
  assert inputs.class_names[:2] == ('airplane', 'automobile')
