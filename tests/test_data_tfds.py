"""TFDS by name, offline failures, and the tf.data pipeline streaming a prepared TFDS copy.

The TFDS copies are written here from real CIFAR-10 images with
`tfds.dataset_builders.store_as_tfds_dataset`, in TFDS's own on-disk format.
"""

import re
import socket

import jax
import numpy as np
import pytest

from cnn_jax import data, parallel
from cnn_jax.data import pipeline, sources
from cnn_jax.data.sources import CIFAR10_CLASSES, DataSourceError, DataWarning, Split
from experiments.configs import default

tfds = pytest.importorskip('tensorflow_datasets')


def data_config(**overrides):
  config = default.get_config().data
  config.unlock()
  config.source = 'tfds'
  config.cache_dir = ''
  config.update(overrides)
  return config


def store_tfds(data_dir, name: str, features, splits: dict[str, dict[str, np.ndarray]]) -> None:
  """Write `splits` as a prepared TFDS data set `name`, keeping the example order."""
  from cnn_jax.data import tfdata

  tf = tfdata.import_tensorflow()
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version='1.0.0', features=features, data_dir=str(data_dir), disable_shuffling=True,
      split_datasets={split: tf.data.Dataset.from_tensor_slices(arrays) for split, arrays in splits.items()},
  )


@pytest.fixture(scope='module')
def reference(tiny_cifar_folder) -> tuple[Split, Split]:
  """200 train and 100 test real images, through the image-folder source."""
  return data.load_splits(data_config(source='image_folder', data_dir=str(tiny_cifar_folder)))


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory, reference):
  """A data directory with `tiny_cifar10`: the reference images as a prepared TFDS data set."""
  data_dir = tmp_path_factory.mktemp('tfds')
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(32, 32, 3)),
      'label': tfds.features.ClassLabel(names=CIFAR10_CLASSES),
  })
  store_tfds(data_dir, 'tiny_cifar10', features, {
      split: {'image': s.images, 'label': s.labels} for split, s in zip(('train', 'test'), reference)})
  return data_dir


def assert_same_split(actual: Split, expected: Split) -> None:
  assert actual.class_names == expected.class_names
  np.testing.assert_array_equal(actual.labels, expected.labels)
  np.testing.assert_array_equal(actual.images, expected.images)


def test_any_tfds_image_classification_set_by_name(tfds_dir, reference):
  train, test = data.load_splits(data_config(name='tiny_cifar10', data_dir=str(tfds_dir)))
  assert_same_split(train, reference[0])
  assert_same_split(test, reference[1])


def test_offline_without_a_prepared_copy_names_the_directory(tmp_path):
  with pytest.raises(DataSourceError) as error:
    data.load_splits(data_config(name='cifar10', data_dir=str(tmp_path)))
  message = str(error.value)
  assert f"not prepared in '{tmp_path}/cifar10/" in message
  for option in ('--config.data.data_dir', '--config.data.download=True',
                 '--config.data.source=cifar_archive', '--config.data.source=image_folder'):
    assert option in message


def test_download_stops_when_servers_unreachable(tmp_path, monkeypatch):
  def unreachable(address, timeout):
    raise OSError(101, 'Network is unreachable')

  def download_and_prepare(self, *args, **kwargs):
    raise AssertionError('must not start a download that would retry for minutes')

  monkeypatch.setattr(socket, 'create_connection', unreachable)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', download_and_prepare)
  with pytest.raises(DataSourceError, match=r"download servers are not reachable: www\.cs\.toronto\.edu:443"):
    sources.tfds_builder('cifar10', str(tmp_path), download=True)


def test_unknown_tfds_name(tmp_path):
  with pytest.raises(DataSourceError, match="TFDS has no data set named 'cifar_ten'"):
    sources.tfds_builder('cifar_ten', str(tmp_path), download=False)


def test_data_set_without_image_and_label_is_refused(tmp_path):
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(8, 8, 3)), 'caption': tfds.features.Text()})
  store_tfds(tmp_path, 'captions', features, {'train': {
      'image': np.zeros((2, 8, 8, 3), np.uint8), 'caption': np.array([b'a', b'b'])}})
  with pytest.raises(DataSourceError, match=re.escape("not an image-classification data set with an `image` and a "
                                                      "`label` feature; its features are ['caption', 'image']")):
    sources.tfds_builder('captions', str(tmp_path), download=False)


@pytest.fixture(scope='module')
def gray_tfds_dir(tmp_path_factory, reference):
  """`tiny_gray`: 28x28 grayscale images, as MNIST-like TFDS data sets store them."""
  data_dir = tmp_path_factory.mktemp('tfds_gray')
  features = tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(28, 28, 1)),
      'label': tfds.features.ClassLabel(num_classes=10),
  })
  gray = reference[1].images[:20, 2:30, 2:30, :1]
  store_tfds(data_dir, 'tiny_gray', features, {
      split: {'image': gray, 'label': reference[1].labels[:20]} for split in ('train', 'test')})
  return data_dir


def test_grayscale_tfds_set_is_converted_and_resized(gray_tfds_dir):
  with pytest.warns(DataWarning) as caught:
    train, _ = data.load_splits(data_config(name='tiny_gray', data_dir=str(gray_tfds_dir)))
  messages = [str(w.message) for w in caught]
  assert sum('train: 20 of 20 grayscale images were converted to RGB' in m for m in messages) == 1
  assert sum('train: 20 of 20 images were resized to 32x32 (sizes found: 28x28)' in m for m in messages) == 1
  assert train.images.shape == (20, 32, 32, 3)
  np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])

  with pytest.warns(DataWarning) as caught:
    streamed = stream(name='tiny_gray', data_dir=str(gray_tfds_dir), batch_size=8)
  messages = [str(w.message) for w in caught]
  assert sum('TFDS tiny_gray train: 20 of 20 grayscale' in m for m in messages) == 1
  assert sum('TFDS tiny_gray train: 20 of 20 images were resized' in m for m in messages) == 1
  batch = next(streamed.train_dataset(0).as_numpy_iterator())
  assert batch['image'].shape == (8, 32, 32, 3)
  assert batch['image'].dtype == np.uint8


# The tf.data pipeline, streaming the TFDS files.


def stream(batch_size=32, eval_batch_size=48, seed=0, **overrides):
  from cnn_jax.data import tfdata

  config = data_config(pipeline='tf_data', **overrides)
  return tfdata.TfDataPipeline(config, batch_size, eval_batch_size, seed, parallel.create_mesh())


def real_rows(batches) -> tuple[np.ndarray, np.ndarray]:
  """Images and labels of the unmasked rows of host batches."""
  keep = np.concatenate([b['mask'] for b in batches]) > 0
  return np.concatenate([b['image'] for b in batches])[keep], np.concatenate([b['label'] for b in batches])[keep]


def as_sorted_rows(images, labels) -> list[bytes]:
  return sorted(image.tobytes() + bytes([label]) for image, label in zip(images, labels))


def host(batches):
  return [jax.tree.map(np.asarray, b) for b in batches]


def test_streaming_epoch_covers_each_example_once(tfds_dir, reference):
  options = dict(name='tiny_cifar10', data_dir=str(tfds_dir))
  streamed = stream(**options)
  assert (streamed.num_train, streamed.num_test, streamed.steps_per_epoch) == (200, 100, 7)
  epoch0 = host(streamed.train_batches(0))
  assert len(epoch0) == 7 and all(b['image'].shape == (32, 32, 32, 3) for b in epoch0)
  assert as_sorted_rows(*real_rows(epoch0)) == as_sorted_rows(reference[0].images, reference[0].labels)

  again = host(stream(**options).train_batches(0))
  epoch1 = host(streamed.train_batches(1))
  other_seed = host(stream(seed=1, **options).train_batches(0))
  assert all(np.array_equal(a['label'], b['label']) for a, b in zip(epoch0, again))
  assert not np.array_equal(epoch0[0]['label'], epoch1[0]['label'])
  assert not np.array_equal(epoch0[0]['label'], other_seed[0]['label'])


def test_streaming_resume_repeats_the_augmented_batches(tfds_dir):
  options = dict(name='tiny_cifar10', data_dir=str(tfds_dir), crop_padding=4, random_flip=True)
  uninterrupted = list(stream(**options).train_dataset(2).as_numpy_iterator())
  resumed = list(stream(**options).train_dataset(2, first_batch=5).as_numpy_iterator())
  assert len(resumed) == 2
  for a, b in zip(uninterrupted[5:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_streaming_evaluation_covers_every_example_once(tfds_dir, reference):
  streamed = stream(name='tiny_cifar10', data_dir=str(tfds_dir), crop_padding=4, random_flip=True)
  batches = host(streamed.eval_batches())
  assert len(batches) == 3
  images, labels = real_rows(batches)
  np.testing.assert_array_equal(images, reference[1].images)
  np.testing.assert_array_equal(labels, reference[1].labels)


def test_streaming_drop_remainder_and_limit(tfds_dir):
  streamed = stream(name='tiny_cifar10', data_dir=str(tfds_dir), drop_remainder=True, train_limit=150)
  batches = list(streamed.train_dataset(0).as_numpy_iterator())
  assert streamed.num_train == 150
  assert len(batches) == 4
  assert all(b['mask'].all() for b in batches)


def test_streaming_standardize_uses_the_training_split_stats(tfds_dir, reference):
  streamed = stream(name='tiny_cifar10', data_dir=str(tfds_dir), normalization='standardize')
  expected = pipeline.channel_stats(reference[0].images)
  np.testing.assert_allclose(streamed.stats.mean, expected.mean, rtol=1e-12)
  np.testing.assert_allclose(streamed.stats.std, expected.std, rtol=1e-12)


@pytest.mark.parametrize('kind', ['tfds', 'arrays'])
def test_each_process_reads_its_part(tfds_dir, tiny_cifar_folder, reference, monkeypatch, kind):
  """Two JAX processes (simulated) together read every example once, in equally many batches."""
  options = dict(name='tiny_cifar10', data_dir=str(tfds_dir))
  if kind == 'arrays':
    options = dict(source='image_folder', data_dir=str(tiny_cifar_folder))
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  parts = []
  for process in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda process=process: process)
    parts.append(list(stream(batch_size=32, **options).train_dataset(0).as_numpy_iterator()))
  assert len(parts[0]) == len(parts[1]) == 7
  assert all(b['image'].shape[0] == 16 for part in parts for b in part)
  assert as_sorted_rows(*real_rows(parts[0] + parts[1])) == as_sorted_rows(reference[0].images, reference[0].labels)

